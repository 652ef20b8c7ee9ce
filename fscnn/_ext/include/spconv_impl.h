/* Direct sparse convolution micro-kernel: one SIMD target's copy.
 *
 * Included once per instantiation by spconv.h with FSCNN_LEVEL, FSCNN_SUFFIX (see
 * fscnn_common.h), SPCONV_NV (accumulator vectors) and SPCONV_NVB (those of the block kernel,
 * per output channel of a block) defined; they are undefined again at the
 * end of this file.
 *
 * Design: the input of one image has been packed (conv_pack) into "phase planes" of Hq rows of
 * Wq floats: for stride (sh, sw) there are sh*sw planes per channel and tap (kh, kw) of output
 * pixel (y, x) reads plane (c, kh*dh % sh, kw*dw % sw) at flat position
 * (y + kh*dh/sh)*Wq + x + kw*dw/sw. The per-non-zero constant part of that position is
 * precomputed, so output pixels (y, x) at flat position p = y*Wq + x form ONE contiguous run of
 * length H_out*Wq for every tap: a tile of T = NV*VL consecutive positions is computed with NV
 * vector accumulators that stay in registers across the whole non-zero list of an output
 * channel (broadcast weight, one load, one FMA per vector), then bias and activation are applied
 * and only the columns x < W_out are stored.
 * Aligned loads: rows (Wq) and planes are padded to a whole number of vectors and the packed
 * buffer is vector-aligned, so a non-zero's position is a + r with a aligned and r (its
 * "residue", 0 <= r < VL) fixed by the tap's column alone. The non-zeros of an output channel
 * are grouped by residue: residue 0 loads at a + p0 + v*VL, all aligned, into the
 * accumulators; residue r > 0 accumulates NV+1 aligned vectors from a + p0 into a temporary
 * and adds it shifted down by r lanes (one two-source shuffle per vector) at the end of its
 * segment. An unaligned load of VL floats at a random position splits a cache line VL-1 times
 * in VL, and the kernel was bound by those loads (spconv.h). The cost: the padding columns
 * (6-12% more positions on VGG16's planes), a ninth vector per non-zero of residue r > 0,
 * and the shuffles.
 * Loop order: a work item is (group of consecutive tiles, block of output channels); inside it
 * the group's input window (all channels of an input-channel block) is reused from cache by
 * every output channel of the block, and each output channel's non-zeros are read once per
 * group and its outputs written position after position (spconv_tile). Items are handed to
 * threads dynamically (prange schedule "dynamic"), so a thread that the OS deschedules on a busy
 * machine does not hold the others back at the barrier (with a static split, ResNet-18 ran 40x
 * slower on 2 threads while another process used one core). Each output element is computed by
 * the same instruction sequence whatever thread runs it, so results do not depend on the
 * thread count.
 */

#define SPVEC FSCNN_VEC
#define SPCONV_VL FSCNN_VL
#define SPCONV_T (SPCONV_VL * SPCONV_NV)

/* acc[v] += lanes r .. r+VL-1 of (t[v], t[v+1]) for v < NV: the sum of a residue-r segment
 * shifted into place, one two-source shuffle per vector. The index r is known only at run
 * time: AVX-512 and AVX2 permute by a vector of indices (the instructions GCC chose for the
 * generic `__builtin_shuffle` that this replaces, which clang lacks); the 4-float baseline
 * (also the portable path of other architectures) switches to constant shuffles. */
#if SPCONV_VL == 16
#define SPCONV_SHIFT_IN(acc, t, r) do {                                                     \
        const __m512i idx_ = _mm512_add_epi32(                                             \
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),       \
            _mm512_set1_epi32((int)(r)));                                                  \
        _Pragma("GCC unroll 16")                                                           \
        for (int v = 0; v < SPCONV_NV; v++)                                                \
            (acc)[v] += (SPVEC)_mm512_permutex2var_ps((__m512)(t)[v], idx_,                \
                                                      (__m512)(t)[v + 1]);                 \
    } while (0)
#elif SPCONV_VL == 8
#define SPCONV_SHIFT_IN(acc, t, r) do {                                                     \
        const __m256i idx_ = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),   \
                                              _mm256_set1_epi32((int)(r)));                \
        const __m256 upper_ =                                                              \
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx_, _mm256_set1_epi32(7)));           \
        _Pragma("GCC unroll 16")                                                           \
        for (int v = 0; v < SPCONV_NV; v++)                                                \
            (acc)[v] += (SPVEC)_mm256_blendv_ps(                                           \
                _mm256_permutevar8x32_ps((__m256)(t)[v], idx_),                           \
                _mm256_permutevar8x32_ps((__m256)(t)[v + 1], idx_), upper_);               \
    } while (0)
#else
#define SPCONV_SHIFT_BY(acc, t, r)                                                          \
        _Pragma("GCC unroll 16")                                                           \
        for (int v = 0; v < SPCONV_NV; v++)                                                \
            (acc)[v] += FSCNN_SHUFFLE4((t)[v], (t)[v + 1], r, r + 1, r + 2, r + 3);
#define SPCONV_SHIFT_IN(acc, t, r) do {                                                     \
        switch (r) {                                                                       \
        case 1: SPCONV_SHIFT_BY(acc, t, 1) break;                                          \
        case 2: SPCONV_SHIFT_BY(acc, t, 2) break;                                          \
        default: SPCONV_SHIFT_BY(acc, t, 3) break;                                         \
        }                                                                                  \
    } while (0)
#endif

/* The valid outputs of the tile of T positions at p0 whose first `skip` are not stored: its
 * runs (conv_tile_runs) with their sources counted from p0. */
static inline int FSCNN_FN(spconv_runs)(int64_t p0, int64_t skip, int64_t T, int64_t Wq,
                                        int64_t H_out, int64_t W_out, int64_t *run_dst,
                                        int64_t *run_src, int64_t *run_len)
{
    const int n = conv_tile_runs(p0 + skip, T - skip, H_out * Wq, Wq, W_out, run_dst, run_src,
                                 run_len);
    for (int q = 0; q < n; q++) run_src[q] += skip;
    return n;
}

/* The tile at index t of a flat output of L positions: its start p0 and the positions it
 * skips. The last tile is moved back to end at L when the flat output holds a whole tile, so
 * no read goes past position L-1+max(offsets): an unpadded 1x1 layer then reads its input in
 * place (no packing). It stores only the positions past the tile before it, which may be
 * another work item's: two threads never write the same output. */
static inline void FSCNN_FN(spconv_tile_start)(int64_t t, int64_t T, int64_t L, int64_t *p0,
                                               int64_t *skip)
{
    *p0 = t * T;
    *skip = 0;
    if (*p0 + T > L && L >= T) {
        *skip = *p0 - (L - T);
        *p0 = L - T;
    }
}

/* A group of G <= SPCONV_GROUP_MAX tiles of T <= SPCONV_T positions from tile t0 on: each
 * tile's start, and its valid-output runs (spconv_runs) at [g*SPCONV_T, g*SPCONV_T + n_runs[g])
 * of dst, src and len; whole[g]: the tile is one run of T outputs. Computed once per work
 * item and reused by every output channel. */
typedef struct {
    int64_t p0[SPCONV_GROUP_MAX];
    int64_t dst[SPCONV_GROUP_MAX * SPCONV_T], src[SPCONV_GROUP_MAX * SPCONV_T];
    int64_t len[SPCONV_GROUP_MAX * SPCONV_T];
    int n_runs[SPCONV_GROUP_MAX], whole[SPCONV_GROUP_MAX];
} FSCNN_FN(spconv_group);

static inline void FSCNN_FN(spconv_group_init)(FSCNN_FN(spconv_group) *grp, int64_t t0,
                                               int64_t G, int64_t T, int64_t Wq,
                                               int64_t H_out, int64_t W_out)
{
    for (int64_t g = 0; g < G; g++) {
        int64_t skip;
        int64_t *dst = grp->dst + g * SPCONV_T, *src = grp->src + g * SPCONV_T;
        int64_t *len = grp->len + g * SPCONV_T;
        FSCNN_FN(spconv_tile_start)(t0 + g, T, H_out * Wq, &grp->p0[g], &skip);
        grp->n_runs[g] = FSCNN_FN(spconv_runs)(grp->p0[g], skip, T, Wq, H_out, W_out, dst,
                                               src, len);
        grp->whole[g] = grp->n_runs[g] == 1 && len[0] == T;
    }
}

/* The residual connection in registers: acc[0 .. nv) += the nv vectors at r, then res_act
 * (the epilogues' act(conv + bias) is in acc already). */
FSCNN_TARGET static inline __attribute__((always_inline)) void FSCNN_FN(spconv_add_res)(
        SPVEC *acc, int nv, const float *restrict r, int res_act)
{
#pragma GCC unroll 16
    for (int v = 0; v < nv; v++) {
        SPVEC x;
        memcpy(&x, r + v * SPCONV_VL, sizeof x);
        acc[v] += x;
        if (res_act != FSCNN_ACT_NONE) acc[v] = FSCNN_VACT(acc[v], res_act);
    }
}

/* The residual of tile g of grp (its runs from entry r0) gathered from rrow, the output
 * channel's residual plane, into rtile at the tile's positions, for spconv_add_res: a tile
 * that is not one run of the output. Only the last tile of a flat layer takes this path in
 * fscnn's own use (SparseConv.adds_residual): on a 3x3 layer, whose tiles are all runs of
 * output rows, the gathers made it 3-5% slower on 28x28 to 7x7 planes than the separate
 * pass after the kernel. */
FSCNN_TARGET static inline __attribute__((always_inline)) void FSCNN_FN(spconv_gather_res)(
        float *restrict rtile, const float *restrict rrow, const FSCNN_FN(spconv_group) *grp,
        int64_t r0, int64_t g)
{
    for (int q = 0; q < grp->n_runs[g]; q++)
        fscnn_copy_small(rtile + grp->src[r0 + q], rrow + grp->dst[r0 + q], grp->len[r0 + q]);
}

/* A group of tiles [t0, t0+G) (G <= SPCONV_GROUP_MAX) of T output positions each, for output
 * channels [o0, o1) of one image. Tile t covers positions [p0, p0+T) of which [p0 + skip,
 * p0+T) are stored (spconv_tile_start). Channels outermost, tiles innermost: an output
 * channel's non-zeros are read once per group, and its outputs written position after
 * position (see spconv_tile_block for what writing every channel per tile cost).
 * in:      packed planes (read-only), SPCONV_VL-aligned, readable up to max(offsets) + p0 + T
 *          (+ SPCONV_VL when R > 1) for every tile's p0, a multiple of SPCONV_VL.
 * ptr, offsets, values, bias, ncb, R: see spconv_layer (spconv.h); an offset is a multiple
 *          of SPCONV_VL, its residue r (0 <= r < R) the segment it sits in.
 * out:     (O, H_out, W_out) of this image.
 * partial: scratch of (o1-o0)*G*T floats holding the accumulators between channel blocks.
 * Residue 0 accumulates straight into the tile's accumulators. A residue r > 0 accumulates
 * T + SPCONV_VL positions (from the aligned position below) and is shifted into them by r
 * lanes at the end of its segment, so every load of the input is aligned. */
FSCNN_TARGET static void FSCNN_FN(spconv_tile)(
        const float *restrict in, const int64_t *restrict ptr, int64_t ncb, int64_t R,
        const int32_t *restrict offsets, const float *restrict values, const float *restrict bias,
        float *restrict out, const float *restrict res, float *restrict partial,
        int64_t o0, int64_t o1, int64_t t0, int64_t G, int64_t Wq, int64_t H_out,
        int64_t W_out, int act, int res_act)
{
    float tmp[SPCONV_T] __attribute__((aligned(64)));
    /* the residual of a tile that is not one run, gathered (positions outside its runs stay
     * finite: zeros or another tile's residual, never stored) */
    float rtile[SPCONV_T] __attribute__((aligned(64)));
    if (res) memset(rtile, 0, sizeof rtile);
    const int64_t plane = H_out * W_out;
    const int64_t stride = ncb * R + 1;
    FSCNN_FN(spconv_group) grp;
    FSCNN_FN(spconv_group_init)(&grp, t0, G, SPCONV_T, Wq, H_out, W_out);
    for (int64_t b = 0; b < ncb; b++) {
        const int first = b == 0, last = b == ncb - 1;
        for (int64_t o = o0; o < o1; o++) {
            const int64_t *bp = ptr + o * stride + b * R;
            for (int64_t g = 0; g < G; g++) {
                SPVEC acc[SPCONV_NV];
                float *restrict part = partial + ((o - o0) * G + g) * SPCONV_T;
                const float *restrict base = in + grp.p0[g];
                if (first) {
                    const float bo = bias ? bias[o] : 0.0f;
#pragma GCC unroll 16
                    for (int v = 0; v < SPCONV_NV; v++) acc[v] = (SPVEC){0} + bo;
                } else {
#pragma GCC unroll 16
                    for (int v = 0; v < SPCONV_NV; v++)
                        memcpy(&acc[v], part + v * SPCONV_VL, sizeof(SPVEC));
                }
                for (int64_t k = bp[0], kend = bp[1]; k < kend; k++) {
                    const SPVEC w = {FSCNN_BCAST(values[k])};
                    const float *restrict p = base + offsets[k];
#pragma GCC unroll 16
                    for (int v = 0; v < SPCONV_NV; v++) {
                        SPVEC x;
                        memcpy(&x, p + v * SPCONV_VL, sizeof x);
                        acc[v] += w * x;
                    }
                }
                for (int64_t r = 1; r < R; r++) {
                    const int64_t kend = bp[r + 1];
                    int64_t k = bp[r];
                    if (k == kend) continue;
                    SPVEC t[SPCONV_NV + 1];
#pragma GCC unroll 17
                    for (int v = 0; v <= SPCONV_NV; v++) t[v] = (SPVEC){0};
                    for (; k < kend; k++) {
                        const SPVEC w = {FSCNN_BCAST(values[k])};
                        const float *restrict p = base + offsets[k];
#pragma GCC unroll 17
                        for (int v = 0; v <= SPCONV_NV; v++) {
                            SPVEC x;
                            memcpy(&x, p + v * SPCONV_VL, sizeof x);
                            t[v] += w * x;
                        }
                    }
                    /* lanes r .. r+VL-1 of (t[v], t[v+1]): positions p0 + v*VL + [0, VL) */
                    SPCONV_SHIFT_IN(acc, t, r);
                }
                if (!last) {
#pragma GCC unroll 16
                    for (int v = 0; v < SPCONV_NV; v++)
                        memcpy(part + v * SPCONV_VL, &acc[v], sizeof(SPVEC));
                    continue;
                }
                if (act != FSCNN_ACT_NONE) {
#pragma GCC unroll 16
                    for (int v = 0; v < SPCONV_NV; v++) acc[v] = FSCNN_VACT(acc[v], act);
                }
                float *restrict orow = out + o * plane;
                const int64_t r0 = g * SPCONV_T;
                if (grp.whole[g]) {
                    /* the tile is one run of valid outputs (always when Wq == W_out, e.g. 1x1
                     * layers): add the residual and store straight from the accumulators */
                    if (res)
                        FSCNN_FN(spconv_add_res)(acc, SPCONV_NV, res + o * plane + grp.dst[r0],
                                                 res_act);
#pragma GCC unroll 16
                    for (int v = 0; v < SPCONV_NV; v++)
                        memcpy(orow + grp.dst[r0] + v * SPCONV_VL, &acc[v], sizeof(SPVEC));
                    continue;
                }
                if (res) {
                    FSCNN_FN(spconv_gather_res)(rtile, res + o * plane, &grp, r0, g);
                    FSCNN_FN(spconv_add_res)(acc, SPCONV_NV, rtile, res_act);
                }
                memcpy(tmp, acc, sizeof tmp);
                for (int q = 0; q < grp.n_runs[g]; q++)
                    memcpy(orow + grp.dst[r0 + q], tmp + grp.src[r0 + q],
                           (size_t)grp.len[r0 + q] * sizeof(float));
            }
        }
    }
}

/* The block kernel: spconv_tile for a layer whose non-zeros are stored in blocks of
 * SPCONV_B = 4 consecutive output channels at one tap (4x1 blocks; a block's missing entries
 * are zeros). Each input vector loaded feeds 4 FMAs, one per channel of the block, instead of
 * one: the plain kernel does a load per FMA and is bound by loads (spconv.h).
 * A call computes a group of tiles [t0, t0+G) (G <= SPCONV_GROUP_MAX) for output blocks
 * [ob0, ob1) (channels [4*ob0, 4*ob1) that are < O), tiles innermost: a block's weights are
 * read once per group rather than once per tile, and its 4 channels' outputs are written
 * position after position. Tiles outermost (as spconv_tile does) wrote a line of every output
 * channel per tile; planes a multiple of 1 KiB apart (112x112 floats) put 64 channels' lines
 * in 4 of the 64 sets of a 32 KiB L1, and the kernel with no weights at all took 1.85 ms on
 * a 64-channel 112x112 output (0.15 ms to fill it).
 * ptr and offsets index blocks, values are (blocks, 4); partial: scratch of
 * (ob1-ob0)*G*4*SPCONV_TB floats. The tile is SPCONV_TB = SPCONV_NVB vectors of positions:
 * 4*SPCONV_NVB accumulators, plus 4 broadcast weights and the loaded vector, must stay in
 * registers. The input is packed unaligned (VL 1): its offsets have no residues, ptr's
 * segments are per (block row, input-channel block). */
#define SPCONV_TB (SPCONV_VL * SPCONV_NVB)
FSCNN_TARGET static void FSCNN_FN(spconv_tile_block)(
        const float *restrict in, const int64_t *restrict ptr, int64_t ncb,
        const int32_t *restrict offsets, const float *restrict values, const float *restrict bias,
        float *restrict out, const float *restrict res, float *restrict partial, int64_t O,
        int64_t ob0, int64_t ob1, int64_t t0, int64_t G, int64_t Wq, int64_t H_out,
        int64_t W_out, int act, int res_act)
{
    float tmp[SPCONV_TB] __attribute__((aligned(64)));
    float rtile[SPCONV_TB] __attribute__((aligned(64)));  /* as in spconv_tile */
    if (res) memset(rtile, 0, sizeof rtile);
    const int64_t plane = H_out * W_out;
    const int64_t stride = ncb + 1;
    FSCNN_FN(spconv_group) grp;
    FSCNN_FN(spconv_group_init)(&grp, t0, G, SPCONV_TB, Wq, H_out, W_out);
    for (int64_t b = 0; b < ncb; b++) {
        const int first = b == 0, last = b == ncb - 1;
        for (int64_t ob = ob0; ob < ob1; ob++) {
            const int64_t o_base = ob * SPCONV_B;
            const int64_t *bp = ptr + ob * stride + b;
            for (int64_t g = 0; g < G; g++) {
                SPVEC acc[SPCONV_B][SPCONV_NVB];
                float *restrict part = partial + ((ob - ob0) * G + g) * SPCONV_B * SPCONV_TB;
                const float *restrict base = in + grp.p0[g];
                if (first) {
#pragma GCC unroll 4
                    for (int j = 0; j < SPCONV_B; j++) {
                        const float bo = (bias && o_base + j < O) ? bias[o_base + j] : 0.0f;
#pragma GCC unroll 16
                        for (int v = 0; v < SPCONV_NVB; v++) acc[j][v] = (SPVEC){0} + bo;
                    }
                } else {
                    memcpy(acc, part, sizeof acc);
                }
                for (int64_t k = bp[0], kend = bp[1]; k < kend; k++) {
                    const float *restrict wk = values + SPCONV_B * k;
                    const SPVEC w0 = {FSCNN_BCAST(wk[0])}, w1 = {FSCNN_BCAST(wk[1])};
                    const SPVEC w2 = {FSCNN_BCAST(wk[2])}, w3 = {FSCNN_BCAST(wk[3])};
                    const float *restrict p = base + offsets[k];
#pragma GCC unroll 16
                    for (int v = 0; v < SPCONV_NVB; v++) {
                        SPVEC x;
                        memcpy(&x, p + v * SPCONV_VL, sizeof x);
                        acc[0][v] += w0 * x;
                        acc[1][v] += w1 * x;
                        acc[2][v] += w2 * x;
                        acc[3][v] += w3 * x;
                    }
                }
                if (!last) {
                    memcpy(part, acc, sizeof acc);
                    continue;
                }
#pragma GCC unroll 4
                for (int j = 0; j < SPCONV_B; j++) {
                    const int64_t o = o_base + j;
                    if (o >= O) break;
                    if (act != FSCNN_ACT_NONE) {
#pragma GCC unroll 16
                        for (int v = 0; v < SPCONV_NVB; v++)
                            acc[j][v] = FSCNN_VACT(acc[j][v], act);
                    }
                    float *restrict orow = out + o * plane;
                    const int64_t r0 = g * SPCONV_T;
                    if (grp.whole[g]) {
                        if (res)
                            FSCNN_FN(spconv_add_res)(acc[j], SPCONV_NVB,
                                                     res + o * plane + grp.dst[r0], res_act);
#pragma GCC unroll 16
                        for (int v = 0; v < SPCONV_NVB; v++)
                            memcpy(orow + grp.dst[r0] + v * SPCONV_VL, &acc[j][v],
                                   sizeof(SPVEC));
                        continue;
                    }
                    if (res) {
                        FSCNN_FN(spconv_gather_res)(rtile, res + o * plane, &grp, r0, g);
                        FSCNN_FN(spconv_add_res)(acc[j], SPCONV_NVB, rtile, res_act);
                    }
                    memcpy(tmp, acc[j], sizeof tmp);
                    for (int q = 0; q < grp.n_runs[g]; q++)
                        memcpy(orow + grp.dst[r0 + q], tmp + grp.src[r0 + q],
                               (size_t)grp.len[r0 + q] * sizeof(float));
                }
            }
        }
    }
}

/* Work items [i0, i1) of one image (see spconv_items in spconv.h). */
FSCNN_TARGET static void FSCNN_FN(spconv_items)(
        const spconv_layer *k, const float *restrict in, float *restrict out,
        const float *restrict res, float *restrict partial, int64_t H_out, int64_t i0,
        int64_t i1)
{
    const int64_t n_oblk = k->n_oblk, Wq = k->Wq;
    const int64_t L = H_out * Wq;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t t = i / n_oblk, b = i - t * n_oblk;  /* group t, output block b */
        const int64_t T = k->block > 1 ? SPCONV_TB : SPCONV_T;
        const int64_t n_tiles = (L + T - 1) / T, t0 = t * k->group;
        const int64_t G = t0 + k->group <= n_tiles ? k->group : n_tiles - t0;
        if (k->block > 1)
            FSCNN_FN(spconv_tile_block)(in, k->ptr, k->ncb, k->offsets, k->values, k->bias,
                                        out, res, partial, k->O, k->oblk[b], k->oblk[b + 1], t0,
                                        G, Wq, H_out, k->W_out, k->act, k->res_act);
        else
            FSCNN_FN(spconv_tile)(in, k->ptr, k->ncb, k->R, k->offsets, k->values, k->bias,
                                  out, res, partial, k->oblk[b], k->oblk[b + 1], t0, G, Wq,
                                  H_out, k->W_out, k->act, k->res_act);
    }
}

#undef SPCONV_SHIFT_IN
#undef SPCONV_SHIFT_BY
#undef SPVEC
#undef SPCONV_T
#undef SPCONV_TB
#undef SPCONV_NVB
#undef SPCONV_VL
#undef SPCONV_NV
#undef FSCNN_SUFFIX
#undef FSCNN_LEVEL
