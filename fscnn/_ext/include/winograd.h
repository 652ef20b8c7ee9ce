/* Winograd convolution F(4x4, 3x3) for 3x3, stride-1, dilation-1, ungrouped layers.
 *
 * Design: output tiles of 4x4 pixels read 6x6 input tiles d; with the transforms below
 *     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
 * so the 9*16 multiply-adds per tile and channel pair of a direct convolution become 36
 * element-wise products, which over all channels are 36 independent GEMMs
 * (O x C) . (C x tiles), run by the caller (fscnn/_ext/_conv.pyx winograd_conv2d) through BLAS.
 * The weight transform U = G g G^T is done once in Python (fscnn.ops). Interpolation points
 * 0, 1, -1, 1/2, -1/2 and infinity (Cook-Toom): with +-1/2 instead of Lavin's +-2 the
 * transform entries stay small; both measured ~1e-5 relative error (float32) on 512-channel
 * layers, well inside the 1e-4 budget.
 *     B^T = [ 1/4    0  -5/4    0   1  0 ]     A^T = [ 1  1   1    1     1   0 ]
 *           [   0 -1/4  -1/4    1   1  0 ]           [ 0  1  -1  1/2  -1/2   0 ]
 *           [   0  1/4  -1/4   -1   1  0 ]           [ 0  1   1  1/4   1/4   0 ]
 *           [   0 -1/2    -1  1/2   1  0 ]           [ 0  1  -1  1/8  -1/8   1 ]
 *           [   0  1/2    -1 -1/2   1  0 ]
 *           [   0  1/4     0 -5/4   0  1 ]
 * (G is in fscnn.ops.WINOGRAD_G.) Non-finite inputs: a NaN or infinity spreads to every output
 * of the tiles that read it (and infinities may become NaN), unlike a direct convolution.
 */
#ifndef FSCNN_WINOGRAD_H
#define FSCNN_WINOGRAD_H
#include "fscnn_common.h"

/* floats per row buffer for a row of tiles_w tiles (6x6 tiles overlap by 2) */
static inline int64_t wino_row_len(int64_t tiles_w) { return (4 * tiles_w + 2 + 15) & ~(int64_t)15; }

/* scratch floats the transforms need per thread, besides V and M */
static inline int64_t wino_tmp_len(int64_t tiles_w) { return 28 * wino_row_len(tiles_w); }

/* (o0..o5) = B^T (d0..d5) */
#define WINO_BT(o0, o1, o2, o3, o4, o5, d0, d1, d2, d3, d4, d5) do { \
    (o0) = 0.25f * (d0) - 1.25f * (d2) + (d4);                       \
    (o1) = -0.25f * ((d1) + (d2)) + ((d3) + (d4));                   \
    (o2) = 0.25f * ((d1) - (d2)) + ((d4) - (d3));                    \
    (o3) = -0.5f * ((d1) - (d3)) + ((d4) - (d2));                    \
    (o4) = 0.5f * ((d1) - (d3)) + ((d4) - (d2));                     \
    (o5) = 0.25f * (d1) - 1.25f * (d3) + (d5);                       \
} while (0)

/* (o0..o3) = A^T (m0..m5) */
#define WINO_AT(o0, o1, o2, o3, m0, m1, m2, m3, m4, m5) do {           \
    const float wp1 = (m1) + (m2), wm1 = (m1) - (m2);                  \
    const float wp2 = (m3) + (m4), wm2 = (m3) - (m4);                  \
    (o0) = (m0) + wp1 + wp2;                                           \
    (o1) = wm1 + 0.5f * wm2;                                           \
    (o2) = wp1 + 0.25f * wp2;                                          \
    (o3) = wm1 + 0.125f * wm2 + (m5);                                  \
} while (0)

#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline
#include "winograd_impl.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2
#include "winograd_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512
#include "winograd_impl.h"
#endif

static inline void wino_input(int level, const float *x, int64_t C, int64_t H, int64_t W,
        int64_t pad_top, int64_t pad_left, int64_t tiles_w, int64_t t0, int64_t cnt, float *V,
        float *tmp)
{
    FSCNN_SIMD_CALL(level, wino_input, x, C, H, W, pad_top, pad_left, tiles_w, t0, cnt, V, tmp);
}

static inline void wino_output(int level, const float *M, int64_t O, int64_t tiles_w,
        int64_t t0, int64_t cnt, const float *bias, int act, int64_t H_out, int64_t W_out,
        float *out, float *tmp)
{
    FSCNN_SIMD_CALL(level, wino_output, M, O, tiles_w, t0, cnt, bias, act, H_out, W_out, out,
                    tmp);
}
#endif
