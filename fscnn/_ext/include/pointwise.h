/* Dense 1x1 convolution (pointwise GEMM): the SIMD-dispatched kernel. See pointwise_impl.h.
 *
 * Why not BLAS: scipy's SGEMM packs both operands on every call and leaves bias and activation
 * to a second pass over the output; on MobileNetV2's and ResNet-50's 1x1 layers this kernel
 * took 15.8 ms where the GEMM path took 20.6 (25 layer shapes, one thread).
 *
 * Each SIMD level has variants of different tile shapes (MR output channels x T positions):
 * tall tiles waste less on short planes (7x7: 49 positions) and stream the weights fewer times,
 * wide ones load fewer weights per FMA. The one-vector tiles (T = VL) are for panels of a
 * few positions: the dense 3x3 kernel's panels of a batch's 2x2 planes (two images: 16
 * positions, half of the 12x2 tile). Every variant sums each output in the same order
 * (bias, then input channels ascending, one FMA chain), so they give bit-identical results and
 * the planner may pick one by timing.
 */
#ifndef FSCNN_POINTWISE_H
#define FSCNN_POINTWISE_H
#include "fscnn_common.h"

/* A layer as the pointwise kernel reads it, filled once per plan
 * (fscnn.kernels.pointwise_conv): wpack, the (O, K) weights packed (ceil(O/MR), K, MR) for
 * the variant's MR; bias: (O,) or NULL; act: FSCNN_ACT_*. res: NULL, or a residual of the
 * output's layout (O, ldo) added after act, then res_act: out = res_act(act(W.X + bias) + res)
 * (set per image by the caller, on its own copy of the layer). */
typedef struct {
    const float *wpack;
    const float *bias;
    const float *res;
    int64_t K, O;
    int act, res_act;
} pw_layer;

#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline_4x3
#define PW_NV 3
#define PW_MR 4
#include "pointwise_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline_6x2
#define PW_NV 2
#define PW_MR 6
#include "pointwise_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline_12x1
#define PW_NV 1
#define PW_MR 12
#include "pointwise_impl.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2_4x3
#define PW_NV 3
#define PW_MR 4
#include "pointwise_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2_6x2
#define PW_NV 2
#define PW_MR 6
#include "pointwise_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2_12x1
#define PW_NV 1
#define PW_MR 12
#include "pointwise_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512_8x3
#define PW_NV 3
#define PW_MR 8
#include "pointwise_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512_6x4
#define PW_NV 4
#define PW_MR 6
#include "pointwise_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512_12x2
#define PW_NV 2
#define PW_MR 12
#include "pointwise_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512_24x1
#define PW_NV 1
#define PW_MR 24
#include "pointwise_impl.h"
#endif

/* Output blocks [b0, b1) x position tile t of one image: x (K, ldx) input planes of L
 * positions, out (O, ldo), strip NULL or K*T floats of scratch (see pw_items in
 * pointwise_impl.h). */
typedef void (*pw_items_fn)(const pw_layer *lay, const float *x, int64_t ldx, float *out,
                            int64_t ldo, int64_t L, int64_t t, int64_t b0, int64_t b1,
                            float *strip);
typedef struct { int64_t mr, t; pw_items_fn fn; } pw_variant;

static const pw_variant pw_baseline[] = {
    {4, 12, pw_items_baseline_4x3}, {6, 8, pw_items_baseline_6x2},
    {12, 4, pw_items_baseline_12x1}};
#if FSCNN_X86
static const pw_variant pw_avx2[] = {{4, 24, pw_items_avx2_4x3}, {6, 16, pw_items_avx2_6x2},
                                     {12, 8, pw_items_avx2_12x1}};
static const pw_variant pw_avx512[] = {
    {8, 48, pw_items_avx512_8x3}, {6, 64, pw_items_avx512_6x4}, {12, 32, pw_items_avx512_12x2},
    {24, 16, pw_items_avx512_24x1}};
#endif

/* The variants of a SIMD level; *n receives their count. */
static inline const pw_variant *pointwise_variants(int level, int *n) {
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX512) { *n = 4; return pw_avx512; }
    if (level == FSCNN_SIMD_AVX2) { *n = 3; return pw_avx2; }
#endif
    (void)level;
    *n = 3;
    return pw_baseline;
}
#endif
