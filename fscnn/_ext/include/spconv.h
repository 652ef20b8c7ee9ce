/* Direct sparse convolution: the SIMD-dispatched tile kernel.
 *
 * Design: see spconv_impl.h for the micro-kernel and conv_pack.h for the input layout. Tile
 * sizes (vector length x accumulator vectors): baseline 4x6 (SSE), AVX2 8x6, AVX-512 16x8; a
 * residue segment needs one more vector of accumulators, so 6 + 7 of AVX2's 16 registers.
 * Every load is aligned (spconv_impl.h): on this project's AVX-512 machine an FMA with an
 * aligned 64-byte load from L1 ran at 4.0-4.3 G/s, with an unaligned one (a split cache line
 * 15 times in 16) at 2.2-2.4 G/s. The kernel that did unaligned loads ran VGG16's 3x3 layers
 * at 90% x2.74 PyTorch (geometric mean), this one x3.3-3.9 (bench/bench_layers.py).
 */
#ifndef FSCNN_SPCONV_H
#define FSCNN_SPCONV_H
#include "fscnn_common.h"
#include "conv_pack.h"

/* Each target is instantiated with a full tile and a half tile (suffix half_<level>): layers
 * whose flat output is short (7x7, 14x14 planes) waste less of a half tile on positions past the
 * end. */
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline
#define SPCONV_NV 6
#include "spconv_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX half_baseline
#define SPCONV_NV 3
#include "spconv_impl.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2
#define SPCONV_NV 6
#include "spconv_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX half_avx2
#define SPCONV_NV 3
#include "spconv_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512
#define SPCONV_NV 8
#include "spconv_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX half_avx512
#define SPCONV_NV 4
#include "spconv_impl.h"
#endif

/* Output positions per tile at each SIMD level, full or half tile. */
static inline int64_t spconv_tile_size(int level, int half) {
    int64_t t = 4 * 6;
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX512) t = 16 * 8;
    else if (level == FSCNN_SIMD_AVX2) t = 8 * 6;
#endif
    (void)level;
    return half ? t / 2 : t;
}

/* Floats per vector at each SIMD level: the alignment, in floats, of the packed rows and of
 * every load the kernel makes. */
static inline int64_t spconv_vector_len(int level) {
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX512) return 16;
    if (level == FSCNN_SIMD_AVX2) return 8;
#endif
    (void)level;
    return 4;
}

static inline void spconv_items(int level, int half,
        const float *in, const int64_t *ptr, int64_t ncb, int64_t R, const int32_t *offsets,
        const float *values, const float *bias, float *out, float *partial, const int64_t *oblk,
        int64_t n_oblk, int64_t i0, int64_t i1, int64_t Wq, int64_t H_out, int64_t W_out, int act)
{
    if (half)
        FSCNN_SIMD_CALL(level, spconv_items_half, in, ptr, ncb, R, offsets, values, bias, out,
                        partial, oblk, n_oblk, i0, i1, Wq, H_out, W_out, act);
    else
        FSCNN_SIMD_CALL(level, spconv_items, in, ptr, ncb, R, offsets, values, bias, out,
                        partial, oblk, n_oblk, i0, i1, Wq, H_out, W_out, act);
}
#endif
