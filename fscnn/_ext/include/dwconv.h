/* Depthwise convolution (one input channel per group, any multiplier): the SIMD-dispatched
 * kernel. See dwconv_impl.h for the design.
 *
 * Why a kernel of its own: the general sparse kernel walks a tile of positions across all
 * output channels of the image, which for a depthwise layer means a different input plane per
 * channel streamed from L3 (MobileNetV2's 96x112x112 stride-2 layer: 1.46 ms, 3.7 GFLOP/s).
 * Here a work item is one input channel of one image: packed into a per-thread buffer that stays
 * in cache, then every tap of its output channels reads it there.
 */
#ifndef FSCNN_DWCONV_H
#define FSCNN_DWCONV_H
#include "fscnn_common.h"

/* A layer as the depthwise kernel reads it, filled once per plan
 * (fscnn.kernels.depthwise_conv). ptr: (O+1,), the taps of output channel o are
 * ptr[o] .. ptr[o+1] of offsets (positions in the channel's packed planes) and values;
 * bias: (O,) or NULL; Wq: positions per output row, W_out of them outputs; act: FSCNN_ACT_*,
 * level: FSCNN_SIMD_*. */
typedef struct {
    const int64_t *ptr;
    const int32_t *offsets;
    const float *values;
    const float *bias;
    int64_t Wq, H_out, W_out;
    int act, level;
} dwconv_layer;

#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline
#define DW_NV 8
#include "dwconv_impl.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2
#define DW_NV 8
#include "dwconv_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512
#define DW_NV 4
#include "dwconv_impl.h"
#endif

#if FSCNN_X86
/* The lanes j < 16 whose column lo + j lies inside [0, W): the mask of a load at row + lo. */
static inline __mmask16 dwconv_cols_mask(int64_t lo, int64_t W)
{
    const int64_t j0 = lo >= 0 ? 0 : (-lo < 16 ? -lo : 16);
    const int64_t j1 = W - lo < 16 ? (W - lo > 0 ? W - lo : 0) : 16;
    if (j1 <= j0) return 0;
    return (__mmask16)((((uint32_t)1 << j1) - 1) & ~(((uint32_t)1 << j0) - 1));
}

/* Output rows of one 16-column chunk of the direct 3x3 kernel below, DW3_RB rows at a time
 * with the strides SH and SW constants (1 or 2): each input row the block reads is loaded
 * once per tap column and feeds every output row of the block that uses it, DW3_RB
 * independent FMA chains (one row at a time was bound by the latency of its chain of 9).
 * lo[kx]: the column that tap kx of lane 0 reads; m0/m1: the lanes of the one (SW 1) or two
 * (SW 2) loads per tap that fall inside the row. A load is made at row + lo even where lo < 0
 * or the vector passes the row's end: its lanes outside the row are masked off, and a
 * masked-off lane reads no memory (AVX-512 suppresses its faults). */
#define DW3_RB 4
FSCNN_ATTR_avx512 static inline __attribute__((always_inline)) void dwconv3x3_chunk_avx512(
        const float *restrict in, int64_t H, int64_t W, int64_t pt,
        const __m512 *wv, float bias, int act, float *restrict out, int64_t H_out,
        int64_t W_out, int64_t x0, const int64_t *lo, const __mmask16 *m0,
        const __mmask16 *m1, __mmask16 mout, const int SH, const int SW)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    for (int64_t y = 0; y < H_out; y += DW3_RB) {
        const int64_t nrows = H_out - y < DW3_RB ? H_out - y : DW3_RB;
        __m512 acc[DW3_RB];
#pragma GCC unroll 8
        for (int i = 0; i < DW3_RB; i++) acc[i] = _mm512_set1_ps(bias);
        /* input rows r0 + t, t < (DW3_RB - 1) * SH + 3; output row y + i reads t = i SH + ky */
        const int64_t r0 = y * SH - pt;
#pragma GCC unroll 16
        for (int t = 0; t < (DW3_RB - 1) * SH + 3; t++) {
            const int64_t r = r0 + t;
            if (r < 0 || r >= H) continue;
            const float *row = in + r * W;
#pragma GCC unroll 3
            for (int kx = 0; kx < 3; kx++) {
                __m512 v = _mm512_maskz_loadu_ps(m0[kx], row + lo[kx]);
                if (SW == 2)
                    v = _mm512_permutex2var_ps(
                        v, even, _mm512_maskz_loadu_ps(m1[kx], row + lo[kx] + 16));
#pragma GCC unroll 8
                for (int i = 0; i < DW3_RB; i++) {
                    const int ky = t - i * SH;
                    if (ky >= 0 && ky < 3) acc[i] = _mm512_fmadd_ps(wv[3 * ky + kx], v, acc[i]);
                }
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < DW3_RB; i++) {
            if (i >= nrows) break;
            if (act != FSCNN_ACT_NONE)
                acc[i] = (__m512)fscnn_vact_avx512((fscnn_vf_avx512)acc[i], act);
            _mm512_mask_storeu_ps(out + (y + i) * W_out + x0, mout, acc[i]);
        }
    }
}
#undef DW3_RB

/* A 3x3 depthwise channel straight from its unpacked (H, W) plane, AVX-512 only: out (H_out,
 * W_out) = act(bias + sum_{ky,kx} w[3 ky + kx] * in[y sh + ky - pt, x sw + kx - pl]), reads
 * outside the plane being zeros, for strides 1 and 2 (each axis) and any padding.
 *
 * Why: the packed kernel above copies each channel into zero-padded phase planes first and
 * copies its output rows out of a wider tile after; on MobileNetV2's 14x14 and 7x7 planes that
 * packing and copying was 3-4x the arithmetic (576x14x14 stride 2: 140 us, 3.6 GFLOP/s). Here
 * AVX-512's masked loads do the padding (see dwconv3x3_chunk_avx512), so nothing is copied. A
 * vector holds 16 outputs of a row; at stride 2 two loads are merged into their even lanes.
 * Taps pruned to zero are multiplied like the others (9 fixed taps cost less than a gather of
 * the non-zero ones). */
FSCNN_ATTR_avx512 static void dwconv3x3_direct_avx512(
        const float *restrict in, int64_t H, int64_t W, int64_t pt, int64_t pl, int64_t sh,
        int64_t sw, const float *restrict w, float bias, int act, float *restrict out,
        int64_t H_out, int64_t W_out)
{
    __m512 wv[9];
    for (int k = 0; k < 9; k++) wv[k] = _mm512_set1_ps(w[k]);
    for (int64_t x0 = 0; x0 < W_out; x0 += 16) {
        const int64_t nx = W_out - x0 < 16 ? W_out - x0 : 16;
        const __mmask16 mout = (__mmask16)(((uint32_t)1 << nx) - 1);
        int64_t lo[3];
        __mmask16 m0[3], m1[3];
        for (int kx = 0; kx < 3; kx++) {
            lo[kx] = x0 * sw + kx - pl;
            m0[kx] = dwconv_cols_mask(lo[kx], W);
            m1[kx] = dwconv_cols_mask(lo[kx] + 16, W);
        }
#define DW3_CHUNK(SH, SW) dwconv3x3_chunk_avx512(in, H, W, pt, wv, bias, act, out, H_out, \
                                                 W_out, x0, lo, m0, m1, mout, SH, SW)
        if (sh == 1 && sw == 1) DW3_CHUNK(1, 1);
        else if (sh == 1) DW3_CHUNK(1, 2);
        else if (sw == 1) DW3_CHUNK(2, 1);
        else DW3_CHUNK(2, 2);
#undef DW3_CHUNK
    }
}
#endif

/* Whether the direct 3x3 kernel runs at SIMD level `level`. */
static inline int dwconv3x3_direct_available(int level)
{
#if FSCNN_X86
    return level >= FSCNN_SIMD_AVX512;
#else
    (void)level;
    return 0;
#endif
}

/* dwconv3x3_direct_avx512 where the level has it; callers check dwconv3x3_direct_available. */
static inline void dwconv3x3_direct(const float *in, int64_t H, int64_t W, int64_t pt,
                                    int64_t pl, int64_t sh, int64_t sw, const float *w,
                                    float bias, int act, float *out, int64_t H_out,
                                    int64_t W_out)
{
#if FSCNN_X86
    dwconv3x3_direct_avx512(in, H, W, pt, pl, sh, sw, w, bias, act, out, H_out, W_out);
#else
    (void)in; (void)H; (void)W; (void)pt; (void)pl; (void)sh; (void)sw; (void)w; (void)bias;
    (void)act; (void)out; (void)H_out; (void)W_out;
#endif
}

/* Output positions per tile at each SIMD level. */
static inline int64_t dwconv_tile_size(int level) {
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX512) return 16 * 4;
    if (level == FSCNN_SIMD_AVX2) return 8 * 8;
#endif
    (void)level;
    return 4 * 8;
}

/* Output channels [o0, o1) of one image from the input channel packed in `in` (see
 * dwconv_impl.h). */
static inline void dwconv_channels(const dwconv_layer *lay, const float *in, int64_t o0,
                                   int64_t o1, float *wide, float *out)
{
    FSCNN_SIMD_CALL(lay->level, dwconv_channels, lay, in, o0, o1, wide, out);
}

/* The expanded plane of one channel of a 1x1 layer that feeds a depthwise layer (see
 * dwconv_impl.h). */
static inline void dwconv_expand(int level, const int32_t *offsets, const float *values,
                                 int64_t k0, int64_t k1, float bias, int act, const float *x,
                                 int64_t HW, float *dst)
{
    FSCNN_SIMD_CALL(level, dwconv_expand, offsets, values, k0, k1, bias, act, x, HW, dst);
}
#endif
