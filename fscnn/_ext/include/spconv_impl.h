/* Direct sparse convolution micro-kernel: one SIMD target's copy.
 *
 * Included once per instantiation by spconv.h with SPCONV_SUFFIX (name suffix), SPCONV_TARGET
 * (target attribute), SPCONV_VL (floats per vector: 4, 8 or 16) and SPCONV_NV (accumulator
 * vectors) defined; they are undefined again at the end of this file.
 *
 * Design: the input of one image has been packed (spconv_pack) into "phase planes" of Hq x Wq floats:
 * for stride (sh, sw) there are sh*sw planes per channel and tap (kh, kw) of output pixel (y, x)
 * reads plane (c, kh*dh % sh, kw*dw % sw) at flat position (y + kh*dh/sh)*Wq + x + kw*dw/sw. The
 * per-non-zero constant part of that position is precomputed into `offsets`, so output pixels
 * (y, x) at flat position p = y*Wq + x form ONE contiguous run of length H_out*Wq for every tap: a
 * tile of T = NV*VL consecutive positions is computed with NV vector accumulators that stay in
 * registers across the whole non-zero list of an output channel (broadcast weight, one load, one
 * FMA per vector), then bias and activation are applied and only the columns x < W_out are stored.
 * Loop order: a work item is (tile, block of output channels); inside it the tile's input window
 * (all channels) is reused from cache by every output channel of the block. Items are handed to
 * threads dynamically (prange schedule "dynamic"), so a thread that the OS deschedules on a busy
 * machine does not hold the others back at the barrier (with a static split, ResNet-18 ran 40x
 * slower on 2 threads while another process used one core). Each output element is computed by
 * the same instruction sequence whatever thread runs it, so results do not depend on the
 * thread count.
 */

#if SPCONV_VL == 4
#define SPCONV_BCAST(v) v, v, v, v
#elif SPCONV_VL == 8
#define SPCONV_BCAST(v) v, v, v, v, v, v, v, v
#else
#define SPCONV_BCAST(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
#endif
#define SPCONV_CAT2(a, b) a##_##b
#define SPCONV_CAT(a, b) SPCONV_CAT2(a, b)
#define SPCONV_FN(name) SPCONV_CAT(name, SPCONV_SUFFIX)

typedef float SPCONV_CAT(spconv_vec, SPCONV_SUFFIX) __attribute__((vector_size(SPCONV_VL * 4)));
typedef int32_t SPCONV_CAT(spconv_ivec, SPCONV_SUFFIX) __attribute__((vector_size(SPCONV_VL * 4)));
#define SPVEC SPCONV_CAT(spconv_vec, SPCONV_SUFFIX)
#define SPIVEC SPCONV_CAT(spconv_ivec, SPCONV_SUFFIX)
#define SPCONV_T (SPCONV_VL * SPCONV_NV)

/* One tile of T output positions [p0, p0+T) for output channels [o0, o1) of one image.
 * in:      packed planes (read-only), readable up to max(offsets) + p0 + T.
 *          p0 need not be a multiple of T (see spconv_items).
 * blkptr:  (O, ncb+1) row-major: non-zeros of output channel o that read input-channel block b
 *          are blkptr[o*(ncb+1)+b] .. blkptr[o*(ncb+1)+b+1] (offsets/values are sorted by channel).
 * offsets, values: (nnz,). bias: (O,) or NULL. out: (O, H_out, W_out) of this image.
 * partial: scratch of (o1-o0)*T floats holding the accumulators between channel blocks.
 * Channel blocks keep the tile's input window in L1 while every output channel of the block
 * reads it; the accumulators go to `partial` (L1/L2) between blocks. */
SPCONV_TARGET static void SPCONV_FN(spconv_tile)(
        const float *restrict in, const int64_t *restrict blkptr, int64_t ncb,
        const int32_t *restrict offsets, const float *restrict values, const float *restrict bias,
        float *restrict out, float *restrict partial,
        int64_t o0, int64_t o1, int64_t p0, int64_t Wq, int64_t H_out, int64_t W_out, int act)
{
    float tmp[SPCONV_T] __attribute__((aligned(64)));
    const int64_t plane = H_out * W_out;
    const int64_t L = H_out * Wq;
    const float *restrict base = in + p0;
    /* The tile's valid outputs: runs of columns x < W_out within each output row it touches,
     * computed once per tile and reused by every output channel. */
    int64_t run_dst[SPCONV_T], run_src[SPCONV_T], run_len[SPCONV_T];
    int n_runs = 0;
    {
        const int64_t pend = (p0 + SPCONV_T < L) ? p0 + SPCONV_T : L;
        int64_t p = p0, y = p0 / Wq, x = p0 - y * Wq;
        while (p < pend) {
            int64_t run = Wq - x;
            if (p + run > pend) run = pend - p;
            if (x < W_out) {
                run_dst[n_runs] = y * W_out + x;
                run_src[n_runs] = p - p0;
                run_len[n_runs] = (x + run <= W_out) ? run : W_out - x;
                n_runs++;
            }
            p += run;
            y++;
            x = 0;
        }
    }
    const int whole = n_runs == 1 && run_len[0] == SPCONV_T;
    for (int64_t b = 0; b < ncb; b++) {
        const int first = b == 0, last = b == ncb - 1;
        for (int64_t o = o0; o < o1; o++) {
            SPVEC acc[SPCONV_NV];
            float *restrict part = partial + (o - o0) * SPCONV_T;
            if (first) {
                const float bo = bias ? bias[o] : 0.0f;
#pragma GCC unroll 16
                for (int v = 0; v < SPCONV_NV; v++) acc[v] = (SPVEC){0} + bo;
            } else {
#pragma GCC unroll 16
                for (int v = 0; v < SPCONV_NV; v++) memcpy(&acc[v], part + v * SPCONV_VL, sizeof(SPVEC));
            }
            const int64_t *bp = blkptr + o * (ncb + 1) + b;
            const int64_t kend = bp[1];
            for (int64_t k = bp[0]; k < kend; k++) {
                const float wk = values[k];
            const SPVEC w = {SPCONV_BCAST(wk)};
                const float *restrict p = base + offsets[k];
#pragma GCC unroll 16
                for (int v = 0; v < SPCONV_NV; v++) {
                    SPVEC x;
                    memcpy(&x, p + v * SPCONV_VL, sizeof x);
                    acc[v] += w * x;
                }
            }
            if (!last) {
#pragma GCC unroll 16
                for (int v = 0; v < SPCONV_NV; v++) memcpy(part + v * SPCONV_VL, &acc[v], sizeof(SPVEC));
                continue;
            }
            if (act != FSCNN_ACT_NONE) {
                /* Blend through integer masks (C has no vector ?:). Comparisons with NaN are
                 * false, so NaN passes through both clamps, as in PyTorch. */
                const SPVEC zero = (SPVEC){0};
                const SPVEC six = zero + 6.0f;
#pragma GCC unroll 16
                for (int v = 0; v < SPCONV_NV; v++) {
                    SPIVEC r = (SPIVEC)acc[v];
                    r &= ~(SPIVEC)(acc[v] < zero);
                    if (act == FSCNN_ACT_RELU6) {
                        const SPIVEC big = (SPIVEC)(acc[v] > six);
                        r = (r & ~big) | ((SPIVEC)six & big);
                    }
                    acc[v] = (SPVEC)r;
                }
            }
            float *restrict orow = out + o * plane;
            if (whole) {
                /* the tile is one run of valid outputs (always when Wq == W_out, e.g. 1x1
                 * layers): store the accumulators straight to the output */
#pragma GCC unroll 16
                for (int v = 0; v < SPCONV_NV; v++)
                    memcpy(orow + run_dst[0] + v * SPCONV_VL, &acc[v], sizeof(SPVEC));
                continue;
            }
            memcpy(tmp, acc, sizeof tmp);
            for (int r = 0; r < n_runs; r++)
                memcpy(orow + run_dst[r], tmp + run_src[r], (size_t)run_len[r] * sizeof(float));
        }
    }
}

/* All items [i0, i1) of one image; item i = (tile i / n_oblk, output block i % n_oblk). */
SPCONV_TARGET static void SPCONV_FN(spconv_items)(
        const float *restrict in, const int64_t *restrict blkptr, int64_t ncb,
        const int32_t *restrict offsets, const float *restrict values, const float *restrict bias,
        float *restrict out, float *restrict partial, const int64_t *restrict oblk, int64_t n_oblk,
        int64_t i0, int64_t i1, int64_t Wq, int64_t H_out, int64_t W_out, int act)
{
    const int64_t L = H_out * Wq;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t t = i / n_oblk, b = i - t * n_oblk;
        /* The last tile is moved back to end at L when the flat output holds a whole tile, so
         * no read goes past position L-1+max(offsets): an unpadded 1x1 layer then reads its
         * input in place (no packing). The positions it recomputes get bit-identical values:
         * each is the same sequence of FMAs whatever its lane. */
        int64_t p0 = t * SPCONV_T;
        if (p0 + SPCONV_T > L && L >= SPCONV_T) p0 = L - SPCONV_T;
        SPCONV_FN(spconv_tile)(in, blkptr, ncb, offsets, values, bias, out, partial, oblk[b],
                               oblk[b + 1], p0, Wq, H_out, W_out, act);
    }
}

#undef SPVEC
#undef SPIVEC
#undef SPCONV_T
#undef SPCONV_FN
#undef SPCONV_CAT
#undef SPCONV_CAT2
#undef SPCONV_BCAST
#undef SPCONV_SUFFIX
#undef SPCONV_TARGET
#undef SPCONV_VL
#undef SPCONV_NV
