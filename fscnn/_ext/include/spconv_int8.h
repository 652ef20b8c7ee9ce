/* Sparse INT8 convolution and linear layers: quantizing packers and the SIMD-dispatched tile
 * kernel.
 *
 * Design: weights are int8 (symmetric, one scale per output channel), activations are
 * quantized to int8 ([-127, 127]) or uint8 ([0, 255]) with one scale per layer, and the
 * products are summed in int32, exactly. Every non-zero of a layer is a *pair*: the weights of
 * two consecutive input channels (2p, 2p+1) of one group at one tap, the missing one zero, as
 * two int16 halves of an int32 (channel 2p in the low half). The input is packed as int16
 * pairs of the same channels, one int32 per position, in conv_pack.h's phase-plane layout
 * (stride and dilation become stride-1 work, every tap of a tile of consecutive flat output
 * positions is one contiguous run): an odd channel count per group gets a zero channel. So one
 * AVX2 `vpmaddwd` (_mm256_madd_epi16) of the broadcast weight pair with 8 positions' input
 * pairs adds x_2p*w_2p + x_2p+1*w_2p+1 to 8 int32 accumulators: no saturation (|products| <=
 * 127*255, unlike vpmaddubsw's int16 sums). The baseline copy does the same arithmetic in
 * plain C int32. Integer sums do not depend on their order, so every level and thread count
 * gives the same accumulators, and the float epilogue out = act(fmaf((float)acc, scale[o],
 * bias[o])) (one rounding, fmaf at every level, the scalar activation) gives bit-identical
 * outputs. The caller checks that no accumulator can leave int32 (sum of |w| * 255 per output
 * channel).
 * Tiles: T = 8*SPQ_NV consecutive flat positions (6 vectors of 8 int32 accumulators, 48
 * positions; a one-vector "narrow" tile of 8 for short outputs such as a linear layer's small
 * batch, and a "wide" one of 64 for 7x7 and 8x8 planes), kept in registers across the output
 * channel's whole non-zero list (one broadcast, one unaligned load and one madd + add per
 * vector and non-zero). Work items are (group of consecutive tiles, block of output
 * channels), handed to threads dynamically, as for the float kernel (spconv_impl.h).
 * A linear layer is the same kernel over a single "row" of N positions: its input is packed
 * transposed (pair or quad j of every batch row contiguous), so the batch plays the part of
 * the output positions.
 * The AVX-512 level runs the 256-bit path too, unless the CPU has AVX512-VNNI: then
 * `vpdpwssd` (multiply-add of the int16 pairs and the accumulation in one instruction, the
 * same wrapping int32 sum) on 512-bit vectors (the same tiles, so the plan does not depend on
 * it; the layer's `vnni` flag, set once when the kernel is built, picks that copy).
 * Quads: where the input is unsigned (after a ReLU), four consecutive input channels can be
 * one non-zero instead, their int8 weights the four bytes of an int32 and the input packed as
 * four uint8 per position: VNNI's `vpdpbusd` then adds 4 products per lane per instruction
 * (vpdpwssd on pairs: 2), exact (4 * 255 * 128 per step). Without VNNI the same sums come
 * from two vpmaddwd on the bytes split into int16 pairs (twice the pair kernel's work per
 * non-zero), in plain C at the baseline level. fscnn.kernels.int8 picks quads where they
 * are fewer than the pairs by enough for the level's cost (weights pruned in 1x4 blocks).
 */
#ifndef FSCNN_SPCONV_INT8_H
#define FSCNN_SPCONV_INT8_H
#include "fscnn_common.h"
#include "conv_pack.h"

/* A layer as the int8 kernel reads it, filled once per plan (fscnn.kernels.int8).
 * ptr:     (O+1,) the non-zero pairs of output channel o are ptr[o] .. ptr[o+1]-1.
 * offsets: (npairs,) position of each pair's input run in the packed input, in units of
 *          `ostride` positions (a convolution: positions, ostride 1; a linear layer: the
 *          pair's index, ostride the packed batch length).
 * wpairs:  (npairs,) the two int16 weights of each pair (channel 2p low, 2p+1 high).
 * scale:   (O,) input scale * weight scale of the channel. bias: (O,) or NULL.
 * oblk:    (n_oblk+1,) boundaries of the output-channel blocks of the work items.
 * Wq, W_out: flat positions per output row, and how many of them are outputs.
 * group:   tiles per work item (1 .. SPQ_GROUP_MAX): an item computes a group of consecutive
 *          tiles channel by channel, so each channel's pairs are read once per group (from L1
 *          for the group's later tiles) rather than once per tile.
 * act: FSCNN_ACT_*; level: FSCNN_SIMD_*; nv: vectors of 8 int32 per tile, SPQ_NV_FULL,
 *          SPQ_NV_NARROW or SPQ_NV_WIDE (spq_tile_size); vnni: run the AVX512-VNNI copy
 *          (level AVX-512 on a CPU with it, spq_cpu_vnni).
 * res:     NULL, or the residual added to this image's output (O, H_out, W_out) after act,
 *          then res_act: a residual connection (set per image on the caller's copy).
 * quads:   0: wpairs and the input hold int16 pairs (above); 1: quads of four consecutive
 *          input channels (4q .. 4q+3, the missing ones zero) as the four bytes of an int32,
 *          channel 4q in the low byte: int8 weights, and the input quantized to uint8 (an
 *          unsigned input only), multiplied with vpdpbusd on VNNI (see spq_pack4). */
typedef struct {
    const int64_t *ptr;
    const int32_t *offsets;
    const int32_t *wpairs;
    const float *scale;
    const float *bias;
    const int64_t *oblk;
    const float *res;
    int64_t ostride, n_oblk, Wq, W_out, group;
    int act, level, nv, vnni, quads, res_act;
} spq_layer;

/* Tile widths, in vectors of 8 positions: the full tile (48 positions), the narrow one for
 * short outputs (a linear layer's small batch) and the wide one that covers the 7x7 and 8x8
 * planes of a network's last stage in one tile (two full tiles computed 96 positions for 49
 * or 63, and 7-8 narrow tiles walked the weights 7-8 times). */
#define SPQ_NV_FULL 6
#define SPQ_NV_NARROW 1
#define SPQ_NV_WIDE 8

#define SPQ_GROUP_MAX 16

/* Input quantization: q = clamp(round_half_even(x * inv_scale), lo, hi), NaN -> 0; the
 * float32 product is rounded once, as numpy's float32 `x * inv_scale`. */
typedef struct {
    float inv_scale;
    int32_t lo, hi;
} spq_quant;

static inline int32_t spq_quantize(float x, const spq_quant *q)
{
    float v = x * q->inv_scale;
    if (v != v) return 0;
    if (v < (float)q->lo) v = (float)q->lo;
    if (v > (float)q->hi) v = (float)q->hi;
#if FSCNN_X86
    return _mm_cvtss_si32(_mm_set_ss(v));  /* the default rounding: to nearest, ties to even */
#else
    return (int32_t)lrintf(v);
#endif
}

/* The residual connection of one tile of output channel o (its row orow, at `at` in the
 * residual), after the epilogue stored the tile's runs: out = res_act(out + res), in one pass
 * over the tile when its runs are one stretch of the output (Wq == W_out, where
 * fscnn.kernels.int8 has the kernel add it: runs are output rows, 14 positions on a 14x14
 * plane, and a pass per run made those layers ~1.7x slower than a separate add), else run by
 * run. */
static inline void spq_add_residual(const spq_layer *k, float *orow, int64_t at, int n_runs,
                                    const int64_t *rdst, const int64_t *rlen)
{
    if (n_runs == 0) return;
    if (k->Wq == k->W_out) {
        const int64_t d0 = rdst[0], n = rdst[n_runs - 1] + rlen[n_runs - 1] - d0;
        fscnn_add_residual(k->level, orow + d0, k->res + at + d0, n, k->res_act);
        return;
    }
    for (int q = 0; q < n_runs; q++)
        fscnn_add_residual(k->level, orow + rdst[q], k->res + at + rdst[q], rlen[q],
                           k->res_act);
}

static inline int32_t spq_pair(int32_t lo, int32_t hi)
{
    return (int32_t)(((uint32_t)(uint16_t)lo) | ((uint32_t)(uint16_t)hi << 16));
}

/* dst[j] = pair(q(x0[j*sx]), q(x1[j*sx])) for j < n, the high half zero when x1 is NULL: the
 * scalar definition (every level's tail, and the whole run at the baseline level). */
static inline void spq_pack_run_baseline(const float *x0, const float *x1, int64_t n, int64_t sx,
                                         const spq_quant *q, int32_t *dst)
{
    for (int64_t j = 0; j < n; j++)
        dst[j] = spq_pair(spq_quantize(x0[j * sx], q), x1 ? spq_quantize(x1[j * sx], q) : 0);
}

#if FSCNN_X86
/* 8 quantized lanes, as spq_quantize: NaN -> 0 (masked before the clamp, since maxps returns
 * its second operand for a NaN), clamp, then vcvtps2dq, which rounds with the default mode
 * (to nearest, ties to even) as cvtss2si does. */
FSCNN_ATTR_avx2 static inline __m256i spq_quantize8(__m256 x, __m256 inv, __m256 lo, __m256 hi)
{
    __m256 v = _mm256_mul_ps(x, inv);
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    return _mm256_cvtps_epi32(v);
}

/* Elements 0, 2, ..., 14 of x (16 floats readable). */
FSCNN_ATTR_avx2 static inline __m256 spq_even8(const float *x)
{
    const __m256 e = _mm256_shuffle_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8),
                                       _MM_SHUFFLE(2, 0, 2, 0));  /* 0 2 8 10 | 4 6 12 14 */
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e),
                                                  _MM_SHUFFLE(3, 1, 2, 0)));
}

/* The pairs of 8 quantized lanes of each channel (b: the high halves, zero without x1). */
FSCNN_ATTR_avx2 static inline __m256i spq_pair8(__m256i a, __m256i b)
{
    return _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi32(0xFFFF)),
                           _mm256_slli_epi32(b, 16));
}

/* spq_pack_run_baseline with 8 positions per step where the run is contiguous (sx == 1) or
 * every other element (sx == 2, stride-2 layers' phase planes): packing quantizes every input
 * element, and one at a time it cost as much as a pruned layer's multiply-adds (ResNet-50's
 * stride-2 layers ran INT8 x0.44-0.61 the float32 speed on it). Bit-identical to the scalar
 * form. */
FSCNN_ATTR_avx2 static void spq_pack_run_avx2(const float *x0, const float *x1, int64_t n,
                                              int64_t sx, const spq_quant *q, int32_t *dst)
{
    int64_t j = 0;
    const __m256 inv = _mm256_set1_ps(q->inv_scale);
    const __m256 lo = _mm256_set1_ps((float)q->lo), hi = _mm256_set1_ps((float)q->hi);
    if (sx == 1) {
        for (; j + 8 <= n; j += 8) {
            const __m256i a = spq_quantize8(_mm256_loadu_ps(x0 + j), inv, lo, hi);
            const __m256i b = x1 ? spq_quantize8(_mm256_loadu_ps(x1 + j), inv, lo, hi)
                                 : _mm256_setzero_si256();
            _mm256_storeu_si256((__m256i *)(dst + j), spq_pair8(a, b));
        }
    } else if (sx == 2) {
        /* 16 floats read from 2j: the run's last element is 2(n-1), so j + 8 < n keeps the
         * loads inside it */
        for (; j + 8 < n; j += 8) {
            const __m256i a = spq_quantize8(spq_even8(x0 + 2 * j), inv, lo, hi);
            const __m256i b = x1 ? spq_quantize8(spq_even8(x1 + 2 * j), inv, lo, hi)
                                 : _mm256_setzero_si256();
            _mm256_storeu_si256((__m256i *)(dst + j), spq_pair8(a, b));
        }
    }
    spq_pack_run_baseline(x0 + j * sx, x1 ? x1 + j * sx : NULL, n - j, sx, q, dst + j);
}
#endif

static inline void spq_pack_run(int level, const float *x0, const float *x1, int64_t n,
                                int64_t sx, const spq_quant *q, int32_t *dst)
{
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX2) {
        spq_pack_run_avx2(x0, x1, n, sx, q, dst);
        return;
    }
#endif
    (void)level;
    spq_pack_run_baseline(x0, x1, n, sx, q, dst);
}

/* dst[j] = quad(q(xs[0][j*sx]), .., q(xs[3][j*sx])) for j < n, a channel's byte zero where
 * xs[c] is NULL; the input is unsigned (q in [0, 255]): the scalar definition. */
static inline void spq_pack4_run_baseline(const float *const xs[4], int64_t n, int64_t sx,
                                          const spq_quant *q, int32_t *dst)
{
    for (int64_t j = 0; j < n; j++) {
        uint32_t v = 0;
        for (int c = 0; c < 4; c++)
            if (xs[c]) v |= (uint32_t)spq_quantize(xs[c][j * sx], q) << (8 * c);
        dst[j] = (int32_t)v;
    }
}

#if FSCNN_X86
/* spq_pack4_run_baseline 8 positions per step where the run is contiguous or every other
 * element (as spq_pack_run_avx2); bit-identical to it. */
FSCNN_ATTR_avx2 static void spq_pack4_run_avx2(const float *const xs[4], int64_t n, int64_t sx,
                                               const spq_quant *q, int32_t *dst)
{
    int64_t j = 0;
    const __m256 inv = _mm256_set1_ps(q->inv_scale);
    const __m256 lo = _mm256_set1_ps((float)q->lo), hi = _mm256_set1_ps((float)q->hi);
    if (sx == 1 || sx == 2) {
        for (; (sx == 1 && j + 8 <= n) || (sx == 2 && j + 8 < n); j += 8) {
            __m256i v = _mm256_setzero_si256();
            /* byte c of each lane: channel c (constant shifts, as the intrinsic wants) */
#define SPQ_QUAD_BYTE(c) do {                                                               \
                if (xs[c]) {                                                                \
                    const __m256 x_ = sx == 1 ? _mm256_loadu_ps(xs[c] + j)                   \
                                              : spq_even8(xs[c] + 2 * j);                    \
                    v = _mm256_or_si256(v, _mm256_slli_epi32(spq_quantize8(x_, inv, lo, hi), \
                                                             8 * (c)));                     \
                }                                                                           \
            } while (0)
            SPQ_QUAD_BYTE(0);
            SPQ_QUAD_BYTE(1);
            SPQ_QUAD_BYTE(2);
            SPQ_QUAD_BYTE(3);
#undef SPQ_QUAD_BYTE
            _mm256_storeu_si256((__m256i *)(dst + j), v);
        }
    }
    const float *rest[4];
    for (int c = 0; c < 4; c++) rest[c] = xs[c] ? xs[c] + j * sx : NULL;
    spq_pack4_run_baseline(rest, n - j, sx, q, dst + j);
}
#endif

#if FSCNN_X86
/* The AVX-512 packer: 16 positions per step and the run's tail in one masked step, for a
 * contiguous run (sx == 1) or every other element (sx == 2), G = 2 or 4 channels; bit-
 * identical to the scalar definition (the same product, NaN -> 0, clamp and vcvtps2dq).
 * The AVX2 packer handed every run's last n % 8 positions to the scalar loop: the 7- and
 * 14-position rows of ResNet-50's last stages went (nearly) all scalar, and its packing took
 * 15% of the INT8 model's time. */
FSCNN_ATTR_avx512 static inline __attribute__((always_inline)) void spq_pack_run_avx512_g(
        const int64_t G, const float *const xs[4], int64_t n, int64_t sx, const spq_quant *q,
        int32_t *dst)
{
    const __m512 inv = _mm512_set1_ps(q->inv_scale);
    const __m512 lo = _mm512_set1_ps((float)q->lo), hi = _mm512_set1_ps((float)q->hi);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    const __m512i half = _mm512_set1_epi32(0xFFFF);
    const int bits = G == 2 ? 16 : 8;
    /* full steps read inside the run: 16 floats from j, or 32 from 2j (the run's last element
     * is 2(n-1), so j + 16 < n) */
    const int64_t full = sx == 1 ? n - n % 16 : (n > 16 ? ((n - 1) / 16) * 16 : 0);
    for (int64_t j = 0; j < n; j += 16) {
        const int64_t r = n - j < 16 ? n - j : 16;
        const __mmask16 m = (__mmask16)((1u << r) - 1u);
        /* sx == 2: source elements 2j .. 2j + 2r - 2, split over the two loads */
        const int64_t e = 2 * r - 1;
        const __mmask16 m0 = (__mmask16)(e >= 16 ? 0xFFFFu : (1u << e) - 1u);
        const __mmask16 m1 = (__mmask16)(e > 16 ? (1u << (e - 16)) - 1u : 0u);
        __m512i v = _mm512_setzero_si512();
        for (int c = 0; c < G; c++) {
            if (!xs[c]) continue;
            __m512 x;
            if (sx == 1)
                x = j < full ? _mm512_loadu_ps(xs[c] + j) : _mm512_maskz_loadu_ps(m, xs[c] + j);
            else if (j < full)
                x = _mm512_permutex2var_ps(_mm512_loadu_ps(xs[c] + 2 * j), even,
                                           _mm512_loadu_ps(xs[c] + 2 * j + 16));
            else
                x = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m0, xs[c] + 2 * j), even,
                                           _mm512_maskz_loadu_ps(m1, xs[c] + 2 * j + 16));
            __m512 y = _mm512_mul_ps(x, inv);
            y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, y, _CMP_ORD_Q), y);  /* NaN -> 0 */
            __m512i b = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(y, lo), hi));
            if (G == 2 && c == 0) b = _mm512_and_si512(b, half);  /* int16: sign bits off */
            v = _mm512_or_si512(v, _mm512_sllv_epi32(b, _mm512_set1_epi32(bits * c)));
        }
        if (j < full && r == 16)
            _mm512_storeu_si512((void *)(dst + j), v);
        else
            _mm512_mask_storeu_epi32(dst + j, m, v);
    }
}

/* spq_pack_run_avx512_g with G a constant (the channel loop unrolled) */
FSCNN_ATTR_avx512 static void spq_pack_group_run_avx512(int64_t G, const float *const xs[4],
                                                        int64_t n, int64_t sx,
                                                        const spq_quant *q, int32_t *dst)
{
    if (G == 2)
        spq_pack_run_avx512_g(2, xs, n, sx, q, dst);
    else
        spq_pack_run_avx512_g(4, xs, n, sx, q, dst);
}
#endif

/* A run of G = 2 channels (int16 pairs) or 4 (uint8 quads) packed with SIMD level `level`. */
static inline void spq_pack_group_run(int level, int64_t G, const float *const xs[4], int64_t n,
                                      int64_t sx, const spq_quant *q, int32_t *dst)
{
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX512 && (sx == 1 || sx == 2)) {
        spq_pack_group_run_avx512(G, xs, n, sx, q, dst);
        return;
    }
#endif
    if (G == 2) {
        spq_pack_run(level, xs[0], xs[1], n, sx, q, dst);
        return;
    }
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX2) {
        spq_pack4_run_avx2(xs, n, sx, q, dst);
        return;
    }
#endif
    spq_pack4_run_baseline(xs, n, sx, q, dst);
}

/* Quantize and pack the channel groups [p0, p1) of one image x (C, H, W) into phase planes
 * (conv_pack.h's layout, one int32 per position) with SIMD level `level`: G = 2, int16 pairs,
 * or G = 4, uint8 quads (an unsigned input). Group gp is channels g*Cg + G*p + c (c < G) with
 * g = gp / Pg, p = gp % Pg, Pg = ceil(Cg / G); those past Cg are zero. buf: (G*Pg*phases*plane
 * + tail) int32, the caller zeroes the tail. Every plane element is written.
 * O(groups * phases * plane). */
static inline void spq_pack(const conv_packing *pk, const spq_quant *q, int level,
                            const float *x, int64_t Cg, int64_t G, int64_t Pg, int64_t p0,
                            int64_t p1, int32_t *buf)
{
    const int64_t H = pk->H, W = pk->W, pad_top = pk->pad_top, pad_left = pk->pad_left,
                  sh = pk->sh, sw = pk->sw, Hq = pk->Hq, Wq = pk->Wq, plane = pk->plane;
    const int64_t phy = pk->one_phase ? 1 : sh, phx = pk->one_phase ? 1 : sw;
    for (int64_t gp = p0; gp < p1; gp++) {
        const int64_t g = gp / Pg, p = gp - g * Pg;
        const float *xc[4] = {NULL, NULL, NULL, NULL};
        for (int64_t c = 0; c < G; c++)
            if (G * p + c < Cg) xc[c] = x + (g * Cg + G * p + c) * H * W;
        for (int64_t py = 0; py < phy; py++) {
            for (int64_t px = 0; px < phx; px++) {
                int32_t *dst = buf + ((gp * phy + py) * phx + px) * plane;
                memset(dst + Hq * Wq, 0, (size_t)(plane - Hq * Wq) * sizeof(int32_t));
                /* plane columns j in [j0, j1) read input column j*sw + off in [0, W) */
                const int64_t off = px - pad_left;
                int64_t j0, j1;
                conv_pack_columns(off, sw, W, Wq, &j0, &j1);
                /* rows whose runs join up in the input and in the plane (an unpadded
                 * stride-1 layer's, as 1x1 convolutions have) are one run: the 7- and
                 * 14-position rows of a last stage are short for the vector packer */
                const int contiguous = sh == 1 && sw == 1 && j0 == 0 && j1 == Wq && Wq == W;
                for (int64_t i = 0; i < Hq; i++) {
                    int32_t *drow = dst + i * Wq;
                    const int64_t yin = i * sh + py - pad_top;
                    if (yin < 0 || yin >= H) {
                        memset(drow, 0, (size_t)Wq * sizeof(int32_t));
                        continue;
                    }
                    int64_t rows = 1;
                    if (contiguous)
                        while (i + rows < Hq && yin + rows < H) rows++;
                    const int64_t e = yin * W + j0 * sw + off;
                    const float *xs[4];
                    for (int c = 0; c < 4; c++) xs[c] = xc[c] ? xc[c] + e : NULL;
                    for (int64_t j = 0; j < j0; j++) drow[j] = 0;
                    spq_pack_group_run(level, G, xs, (rows - 1) * Wq + j1 - j0, sw, q, drow + j0);
                    for (int64_t j = j1; j < Wq; j++) drow[(rows - 1) * Wq + j] = 0;
                    i += rows - 1;
                }
            }
        }
    }
}

/* Quantize and pack groups [j0, j1) of G = 2 (int16 pairs) or 4 (uint8 quads, an unsigned
 * input) consecutive features of the rows of x (N, I) transposed: buf[j*plane + n] holds
 * features G*j .. G*j + G-1 of row n (those past I zero), zeros for n in [N, plane). */
static inline void spq_pack_rows(const spq_quant *q, const float *x, int64_t N, int64_t I,
                                 int64_t G, int64_t plane, int64_t j0, int64_t j1,
                                 int32_t *buf)
{
    for (int64_t j = j0; j < j1; j++) {
        int32_t *dst = buf + j * plane;
        const float *xs[4] = {NULL, NULL, NULL, NULL};
        for (int64_t c = 0; c < G; c++)
            if (G * j + c < I) xs[c] = x + G * j + c;
        if (G == 2)
            spq_pack_run_baseline(xs[0], xs[1], N, I, q, dst);
        else
            spq_pack4_run_baseline(xs, N, I, q, dst);
        memset(dst + N, 0, (size_t)(plane - N) * sizeof(int32_t));
    }
}

/* How a level's copy accumulates: 0 plain C, 1 256-bit vpmaddwd, 2 VNNI vpdpwssd. */
#define SPQ_SIMD_baseline 0
#define SPQ_SIMD_avx2 1
#define SPQ_SIMD_avx512 1
#define SPQ_SIMD_avx512vnni 2
/* Whether a level's copy may use AVX-512F (its masked epilogue) */
#define SPQ_AVX512_baseline 0
#define SPQ_AVX512_avx2 0
#define SPQ_AVX512_avx512 1
#define SPQ_AVX512_avx512vnni 1
#if FSCNN_X86
#define FSCNN_ATTR_avx512vnni __attribute__((target("avx512f,avx512vl,avx512vnni,avx2,fma")))
#endif

/* Whether the AVX-512 level runs the VNNI copy: the CPU has AVX512-VNNI (and AVX-512). */
static inline int spq_cpu_vnni(void)
{
#if FSCNN_X86
    __builtin_cpu_init();
    return fscnn_cpu_simd_level() >= FSCNN_SIMD_AVX512 && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline
#define SPQ_NV SPQ_NV_FULL
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX narrow_baseline
#define SPQ_NV SPQ_NV_NARROW
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX wide_baseline
#define SPQ_NV SPQ_NV_WIDE
#include "spconv_int8_impl.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2
#define SPQ_NV SPQ_NV_FULL
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX narrow_avx2
#define SPQ_NV SPQ_NV_NARROW
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX wide_avx2
#define SPQ_NV SPQ_NV_WIDE
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512
#define SPQ_NV SPQ_NV_FULL
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX narrow_avx512
#define SPQ_NV SPQ_NV_NARROW
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX wide_avx512
#define SPQ_NV SPQ_NV_WIDE
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512vnni
#define FSCNN_SUFFIX avx512vnni
#define SPQ_NV SPQ_NV_FULL
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512vnni
#define FSCNN_SUFFIX narrow_avx512vnni
#define SPQ_NV SPQ_NV_NARROW
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512vnni
#define FSCNN_SUFFIX wide_avx512vnni
#define SPQ_NV SPQ_NV_WIDE
#include "spconv_int8_impl.h"
#endif

/* The same kernels on quads (spq_layer.quads): VNNI's vpdpbusd, an exact emulation with
 * vpmaddwd at the AVX2 level (the AVX-512 level without VNNI runs it too), plain C. */
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX quad_baseline
#define SPQ_NV SPQ_NV_FULL
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX quad_narrow_baseline
#define SPQ_NV SPQ_NV_NARROW
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX quad_wide_baseline
#define SPQ_NV SPQ_NV_WIDE
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX quad_avx2
#define SPQ_NV SPQ_NV_FULL
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX quad_narrow_avx2
#define SPQ_NV SPQ_NV_NARROW
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX quad_wide_avx2
#define SPQ_NV SPQ_NV_WIDE
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512vnni
#define FSCNN_SUFFIX quad_avx512vnni
#define SPQ_NV SPQ_NV_FULL
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512vnni
#define FSCNN_SUFFIX quad_narrow_avx512vnni
#define SPQ_NV SPQ_NV_NARROW
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512vnni
#define FSCNN_SUFFIX quad_wide_avx512vnni
#define SPQ_NV SPQ_NV_WIDE
#define SPQ_QUAD 1
#include "spconv_int8_impl.h"
#endif

/* Output positions per tile of nv vectors (the same at every level). */
static inline int64_t spq_tile_size(int nv) { return 8 * (int64_t)nv; }

/* Work items of an output of L flat positions: (groups of tiles) x (output blocks). */
static inline int64_t spq_n_items(const spq_layer *k, int64_t L)
{
    const int64_t T = spq_tile_size(k->nv), n_tiles = (L + T - 1) / T;
    return (n_tiles + k->group - 1) / k->group * k->n_oblk;
}

/* Work items [i0, i1) of one image, item i = (group of tiles i / n_oblk, output block
 * i % n_oblk).
 * in:  the packed input, readable to max(offsets)*ostride + (tiles * T) positions;
 * out: (O, H_out, W_out) float outputs, or raw (same shape, int32) the accumulators when
 *      raw is not NULL (out is then unused). */
static inline void spq_items(const spq_layer *k, const int32_t *in, float *out, int32_t *raw,
                             int64_t H_out, int64_t i0, int64_t i1)
{
    /* the copy of the layer's tile: spq_items_<quad_><narrow_|wide_|><level> */
#define SPQ_CALL_TILE(quad, lvl) do {                                                     \
        if (k->nv == SPQ_NV_NARROW)                                                      \
            spq_items_##quad##narrow_##lvl(k, in, out, raw, H_out, i0, i1);              \
        else if (k->nv == SPQ_NV_WIDE)                                                   \
            spq_items_##quad##wide_##lvl(k, in, out, raw, H_out, i0, i1);                \
        else                                                                             \
            spq_items_##quad##lvl(k, in, out, raw, H_out, i0, i1);                       \
    } while (0)
#if FSCNN_X86
    if (k->vnni) {
        if (k->quads)
            SPQ_CALL_TILE(quad_, avx512vnni);
        else
            SPQ_CALL_TILE(, avx512vnni);
        return;
    }
    if (k->quads && k->level >= FSCNN_SIMD_AVX2) {  /* AVX-512 without VNNI: the AVX2 copy */
        SPQ_CALL_TILE(quad_, avx2);
        return;
    }
    if (!k->quads && k->level >= FSCNN_SIMD_AVX512) {
        SPQ_CALL_TILE(, avx512);
        return;
    }
    if (!k->quads && k->level == FSCNN_SIMD_AVX2) {
        SPQ_CALL_TILE(, avx2);
        return;
    }
#endif
    if (k->quads)
        SPQ_CALL_TILE(quad_, baseline);
    else
        SPQ_CALL_TILE(, baseline);
#undef SPQ_CALL_TILE
}
#endif
