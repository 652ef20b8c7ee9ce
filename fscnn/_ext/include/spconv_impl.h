/* Direct sparse convolution micro-kernel: one SIMD target's copy.
 *
 * Included three times by spconv.h with SPCONV_SUFFIX / SPCONV_TARGET / SPCONV_VL / SPCONV_NV set.
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
 * (all channels) is reused from cache by every output channel of the block. Items are distributed
 * over threads statically; each output element is computed by the same instruction sequence
 * whatever the thread count, so results do not depend on it.
 */

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
 * indptr:  (O+1,) non-zero ranges per output channel; offsets, values: (nnz,).
 * bias:    (O,) or NULL. out: (O, H_out, W_out) of this image. */
SPCONV_TARGET static void SPCONV_FN(spconv_tile)(
        const float *restrict in, const int64_t *restrict indptr, const int32_t *restrict offsets,
        const float *restrict values, const float *restrict bias, float *restrict out,
        int64_t o0, int64_t o1, int64_t p0, int64_t Wq, int64_t H_out, int64_t W_out, int act)
{
    float tmp[SPCONV_T] __attribute__((aligned(64)));
    const int64_t plane = H_out * W_out;
    const int64_t L = H_out * Wq;
    const float *restrict base = in + p0;
    for (int64_t o = o0; o < o1; o++) {
        const float b = bias ? bias[o] : 0.0f;
        SPVEC acc[SPCONV_NV];
#pragma GCC unroll 16
        for (int v = 0; v < SPCONV_NV; v++) acc[v] = (SPVEC){0} + b;
        const int64_t kend = indptr[o + 1];
        for (int64_t k = indptr[o]; k < kend; k++) {
            const SPVEC w = (SPVEC){0} + values[k];
            const float *restrict p = base + offsets[k];
#pragma GCC unroll 16
            for (int v = 0; v < SPCONV_NV; v++) {
                SPVEC x;
                memcpy(&x, p + v * SPCONV_VL, sizeof x);
                acc[v] += w * x;
            }
        }
        if (act != FSCNN_ACT_NONE) {
            /* Blend through integer masks (C has no vector ?:). Comparisons with NaN are false,
             * so NaN passes through both clamps, as in PyTorch. */
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
        memcpy(tmp, acc, sizeof tmp);
        /* scatter the valid columns of each output row the tile touches */
        float *restrict orow = out + o * plane;
        int64_t p = p0;
        const int64_t pend = (p0 + SPCONV_T < L) ? p0 + SPCONV_T : L;
        while (p < pend) {
            const int64_t y = p / Wq, x = p - y * Wq;
            int64_t run = Wq - x;
            if (p + run > pend) run = pend - p;
            if (x < W_out) {
                const int64_t n = (x + run <= W_out) ? run : W_out - x;
                memcpy(orow + y * W_out + x, tmp + (p - p0), (size_t)n * sizeof(float));
            }
            p += run;
        }
    }
}

/* All items [i0, i1) of one image; item i = (tile i / n_oblk, output block i % n_oblk). */
SPCONV_TARGET static void SPCONV_FN(spconv_items)(
        const float *restrict in, const int64_t *restrict indptr, const int32_t *restrict offsets,
        const float *restrict values, const float *restrict bias, float *restrict out,
        const int64_t *restrict oblk, int64_t n_oblk, int64_t i0, int64_t i1,
        int64_t Wq, int64_t H_out, int64_t W_out, int act)
{
    for (int64_t i = i0; i < i1; i++) {
        const int64_t t = i / n_oblk, b = i - t * n_oblk;
        SPCONV_FN(spconv_tile)(in, indptr, offsets, values, bias, out, oblk[b], oblk[b + 1],
                               t * SPCONV_T, Wq, H_out, W_out, act);
    }
}

#undef SPVEC
#undef SPIVEC
#undef SPCONV_T
#undef SPCONV_FN
#undef SPCONV_CAT
#undef SPCONV_CAT2
