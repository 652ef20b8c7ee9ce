/* Direct sparse convolution: the SIMD-dispatched tile kernel.
 *
 * Design: see spconv_impl.h for the micro-kernel and conv_pack.h for the input layout. Tile sizes: baseline 4x8
 * floats (SSE), AVX2 8x12 (256-bit, 12 of the 16 registers accumulate), AVX-512 16x8 (512-bit).
 * With input-channel blocking (spconv_impl.h) 16x8 measured 1.2x faster than 8x8 and 1.1x than
 * 8x16 or 8x12 (geometric mean over VGG16's 3x3 layers at 90%, one thread, interleaved runs);
 * without blocking KERNELS.md had found 512-bit loads slower. Copies of the input shifted so that
 * every load is 64-byte aligned were tried and did not pay for the extra window and columns.
 */
#ifndef FSCNN_SPCONV_H
#define FSCNN_SPCONV_H
#include "fscnn_common.h"
#include "conv_pack.h"

/* Each target is instantiated with a full tile and a half tile (suffix half_<level>): layers
 * whose flat output is short (7x7, 14x14 planes) waste less of a half tile on positions past the
 * end. */
#define SPCONV_SUFFIX baseline
#define SPCONV_TARGET FSCNN_TARGET_BASELINE
#define SPCONV_VL 4
#define SPCONV_NV 8
#include "spconv_impl.h"
#define SPCONV_SUFFIX half_baseline
#define SPCONV_TARGET FSCNN_TARGET_BASELINE
#define SPCONV_VL 4
#define SPCONV_NV 4
#include "spconv_impl.h"
#if FSCNN_X86
#define SPCONV_SUFFIX avx2
#define SPCONV_TARGET FSCNN_TARGET_AVX2
#define SPCONV_VL 8
#define SPCONV_NV 12
#include "spconv_impl.h"
#define SPCONV_SUFFIX half_avx2
#define SPCONV_TARGET FSCNN_TARGET_AVX2
#define SPCONV_VL 8
#define SPCONV_NV 6
#include "spconv_impl.h"
#define SPCONV_SUFFIX avx512
#define SPCONV_TARGET FSCNN_TARGET_AVX512
#define SPCONV_VL 16
#define SPCONV_NV 8
#include "spconv_impl.h"
#define SPCONV_SUFFIX half_avx512
#define SPCONV_TARGET FSCNN_TARGET_AVX512
#define SPCONV_VL 16
#define SPCONV_NV 4
#include "spconv_impl.h"
#endif

/* Output positions per tile at each SIMD level, full or half tile. */
static inline int64_t spconv_tile_size(int level, int half) {
    int64_t t = 4 * 8;
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX512) t = 16 * 8;
    else if (level == FSCNN_SIMD_AVX2) t = 8 * 12;
#endif
    (void)level;
    return half ? t / 2 : t;
}

static inline void spconv_items(int level, int half,
        const float *in, const int64_t *blkptr, int64_t ncb, const int32_t *offsets,
        const float *values, const float *bias, float *out, float *partial, const int64_t *oblk,
        int64_t n_oblk, int64_t i0, int64_t i1, int64_t Wq, int64_t H_out, int64_t W_out, int act)
{
    if (half)
        FSCNN_SIMD_CALL(level, spconv_items_half, in, blkptr, ncb, offsets, values, bias, out,
                        partial, oblk, n_oblk, i0, i1, Wq, H_out, W_out, act);
    else
        FSCNN_SIMD_CALL(level, spconv_items, in, blkptr, ncb, offsets, values, bias, out,
                        partial, oblk, n_oblk, i0, i1, Wq, H_out, W_out, act);
}
#endif
