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

/* A layer as the sparse kernel reads it, filled once per plan (fscnn.kernels.sparse_conv).
 * ptr:     (O, ncb*R+1) row-major: the non-zeros of output channel o that read input-channel
 *          block b with residue r are ptr[o*(ncb*R+1) + b*R + r] .. that + 1.
 * offsets: (nnz,) aligned part of each non-zero's position in the packed image.
 * values:  (nnz,) in the order of offsets. bias: (O,) or NULL.
 * oblk:    (n_oblk+1,) boundaries of the blocks of output channels that work items cover.
 * Wq, W_out: flat positions per output row, and how many of them are outputs.
 * act: FSCNN_ACT_*; level: FSCNN_SIMD_*; half: the half tile (see below).
 * res_act: FSCNN_ACT_* applied after the residual that spconv_items adds (when it gets one):
 *          out = res_act(act(conv + bias) + res), a residual connection in the epilogue.
 * block: 1, or SPCONV_B: the non-zeros are stored in blocks of SPCONV_B consecutive output
 *          channels at one tap (the block kernel, spconv_tile_block): ptr's rows, offsets and
 *          oblk then count blocks, values are (blocks, SPCONV_B) and O is the channel count.
 * group:   tiles per work item (at most SPCONV_GROUP_MAX): an item computes a group of tiles
 *          for a block of output channels (blocks). */
typedef struct {
    const int64_t *ptr;
    const int32_t *offsets;
    const float *values;
    const float *bias;
    const int64_t *oblk;
    int64_t ncb, R, n_oblk, Wq, W_out, O, group;
    int act, level, half, block, res_act;
} spconv_layer;

/* Rows per block of the block kernel, and its accumulator vectors per row: 4*NVB
 * accumulators + 4 broadcast weights + the loaded vector in 16 registers (baseline, AVX2) or
 * 32 (AVX-512). The block kernel has one tile size (the half-tile copies compile it too, and
 * never run it): on AVX2, 3 vectors (one accumulator spilled to the stack) ran ResNet-shaped
 * layers at 90% in 4x1 blocks 1.2-1.5x slower than 2 vectors (56x56 to 7x7 planes). */
#define SPCONV_B 4
#define SPCONV_GROUP_MAX 16
#define SPCONV_NVB_BASELINE 2
#define SPCONV_NVB_HALF_BASELINE SPCONV_NVB_BASELINE
#define SPCONV_NVB_AVX2 2
#define SPCONV_NVB_HALF_AVX2 SPCONV_NVB_AVX2
#define SPCONV_NVB_AVX512 4
#define SPCONV_NVB_HALF_AVX512 SPCONV_NVB_AVX512

/* Each target is instantiated with a full tile and a half tile (suffix half_<level>): layers
 * whose flat output is short (7x7, 14x14 planes) waste less of a half tile on positions past the
 * end. */
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline
#define SPCONV_NV 6
#define SPCONV_NVB SPCONV_NVB_BASELINE
#include "spconv_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX half_baseline
#define SPCONV_NV 3
#define SPCONV_NVB SPCONV_NVB_HALF_BASELINE
#include "spconv_impl.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2
#define SPCONV_NV 6
#define SPCONV_NVB SPCONV_NVB_AVX2
#include "spconv_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX half_avx2
#define SPCONV_NV 3
#define SPCONV_NVB SPCONV_NVB_HALF_AVX2
#include "spconv_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512
#define SPCONV_NV 8
#define SPCONV_NVB SPCONV_NVB_AVX512
#include "spconv_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX half_avx512
#define SPCONV_NV 4
#define SPCONV_NVB SPCONV_NVB_HALF_AVX512
#include "spconv_impl.h"
#endif

/* Output positions per tile at each SIMD level, full or half tile, of the plain kernel
 * (block 1) or the block kernel (block SPCONV_B). */
static inline int64_t spconv_tile_size(int level, int half, int block) {
    int64_t t = block > 1 ? 4 * (half ? SPCONV_NVB_HALF_BASELINE : SPCONV_NVB_BASELINE)
                          : 4 * (half ? 3 : 6);
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX512)
        t = block > 1 ? 16 * (half ? SPCONV_NVB_HALF_AVX512 : SPCONV_NVB_AVX512)
                      : 16 * (half ? 4 : 8);
    else if (level == FSCNN_SIMD_AVX2)
        t = block > 1 ? 8 * (half ? SPCONV_NVB_HALF_AVX2 : SPCONV_NVB_AVX2) : 8 * (half ? 3 : 6);
#endif
    (void)level;
    return t;
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

/* Work items of one image whose output has H_out rows (of Wq positions). */
static inline int64_t spconv_n_items(const spconv_layer *k, int64_t H_out) {
    const int64_t T = spconv_tile_size(k->level, k->half, k->block);
    const int64_t n_tiles = (H_out * k->Wq + T - 1) / T;
    return (n_tiles + k->group - 1) / k->group * k->n_oblk;
}

/* Work items [i0, i1) of one image, item i = (group of tiles i / n_oblk, output block
 * i % n_oblk).
 * in: the packed image (vector-aligned, readable to max(offsets) + H_out*Wq + T + VL);
 * out: (O, H_out, W_out); res: NULL, or the residual added to out, (O, H_out, W_out) (not
 * overlapping out: a moved-back tile stores some outputs twice); partial: scratch of
 * (largest block) * T floats. */
static inline void spconv_items(const spconv_layer *k, const float *in, float *out,
                                const float *res, float *partial, int64_t H_out, int64_t i0,
                                int64_t i1)
{
    if (k->half)
        FSCNN_SIMD_CALL(k->level, spconv_items_half, k, in, out, res, partial, H_out, i0, i1);
    else
        FSCNN_SIMD_CALL(k->level, spconv_items, k, in, out, res, partial, H_out, i0, i1);
}
#endif
