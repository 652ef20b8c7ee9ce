/* Winograd convolution F(4x4, 3x3) for 3x3, stride-1, dilation-1, ungrouped layers.
 *
 * Design: output tiles of 4x4 pixels read 6x6 input tiles d; with the transforms below
 *     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
 * so the 9*16 multiply-adds per tile and channel pair of a direct convolution become 36
 * element-wise products, which over all channels are 36 independent GEMMs
 * (O x C) . (C x tiles), run by the caller (WinogradConv in fscnn/_ext/_conv.pyx) through BLAS.
 * The weight transform U = G g G^T is done once in Python (fscnn.kernels.winograd_conv).
 * Interpolation points 0, 1, -1, 1/2, -1/2 and infinity (Cook-Toom): with +-1/2 instead of
 * Lavin's +-2 the transform entries stay small; both measured ~1e-5 relative error (float32)
 * on 512-channel layers, well inside the 1e-4 budget.
 *     B^T = [ 1/4    0  -5/4    0   1  0 ]     A^T = [ 1  1   1    1     1   0 ]
 *           [   0 -1/4  -1/4    1   1  0 ]           [ 0  1  -1  1/2  -1/2   0 ]
 *           [   0  1/4  -1/4   -1   1  0 ]           [ 0  1   1  1/4   1/4   0 ]
 *           [   0 -1/2    -1  1/2   1  0 ]           [ 0  1  -1  1/8  -1/8   1 ]
 *           [   0  1/2    -1 -1/2   1  0 ]
 *           [   0  1/4     0 -5/4   0  1 ]
 * (G is fscnn.kernels.winograd_conv.WINOGRAD_G.) Non-finite inputs: a NaN or infinity spreads
 * to every output of the tiles that read it (and infinities may become NaN), unlike a direct
 * convolution.
 */
#ifndef FSCNN_WINOGRAD_H
#define FSCNN_WINOGRAD_H
#include "fscnn_common.h"

/* A layer as the Winograd transforms read it, filled once per plan
 * (fscnn.kernels.winograd_conv): the input (C, H, W) and its padding before (pad_top,
 * pad_left), the output (O, H_out, W_out) of tiles_w tiles per row, bias (O,) or NULL,
 * act: FSCNN_ACT_*, level: FSCNN_SIMD_*. */
typedef struct {
    const float *bias;
    int64_t C, H, W, O, H_out, W_out, pad_top, pad_left, tiles_w;
    int act, level;
} wino_layer;

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

/* Input transform of tiles [t0, t0+cnt) of image x into V (36, C, cnt). */
static inline void wino_input(const wino_layer *lay, const float *x, int64_t t0, int64_t cnt,
                              float *V, float *tmp)
{
    FSCNN_SIMD_CALL(lay->level, wino_input, lay, x, t0, cnt, V, tmp);
}

/* Output transform of tiles [t0, t0+cnt) from M (36, O, cnt) into out (O, H_out, W_out). */
static inline void wino_output(const wino_layer *lay, const float *M, int64_t t0, int64_t cnt,
                               float *out, float *tmp)
{
    FSCNN_SIMD_CALL(lay->level, wino_output, lay, M, t0, cnt, out, tmp);
}
#endif
