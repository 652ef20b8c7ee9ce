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
