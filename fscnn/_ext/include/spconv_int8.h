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
 * batch), kept in registers across the output channel's whole non-zero list (one broadcast,
 * one unaligned load and one madd + add per vector and non-zero). Work items are (tile, block
 * of output channels), handed to threads dynamically, as for the float kernel (spconv_impl.h).
 * A linear layer is the same kernel over a single "row" of N positions: its input is packed
 * transposed (pair j of every batch row contiguous), so the batch plays the part of the
 * output positions.
 * This stage has one 256-bit path: the AVX-512 level runs it too (a 512-bit and a VNNI
 * `vpdpwssd` path are later work).
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
 * act: FSCNN_ACT_*; level: FSCNN_SIMD_*; narrow: the one-vector tile. */
typedef struct {
    const int64_t *ptr;
    const int32_t *offsets;
    const int32_t *wpairs;
    const float *scale;
    const float *bias;
    const int64_t *oblk;
    int64_t ostride, n_oblk, Wq, W_out;
    int act, level, narrow;
} spq_layer;

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

static inline int32_t spq_pair(int32_t lo, int32_t hi)
{
    return (int32_t)(((uint32_t)(uint16_t)lo) | ((uint32_t)(uint16_t)hi << 16));
}

/* Quantize and pack the channel pairs [p0, p1) of one image x (C, H, W) into phase planes
 * (conv_pack.h's layout, one int32 pair per position). Pair gp is channels (g*Cg + 2p,
 * g*Cg + 2p + 1) with g = gp / Pg, p = gp % Pg, Pg = ceil(Cg / 2); the second is zero when
 * 2p + 1 == Cg. buf: (G*Pg*phases*plane + tail) int32, the caller zeroes the tail. Every
 * plane element is written. O(pairs * phases * plane). */
static inline void spq_pack(const conv_packing *pk, const spq_quant *q, const float *x,
                            int64_t Cg, int64_t Pg, int64_t p0, int64_t p1, int32_t *buf)
{
    const int64_t H = pk->H, W = pk->W, pad_top = pk->pad_top, pad_left = pk->pad_left,
                  sh = pk->sh, sw = pk->sw, Hq = pk->Hq, Wq = pk->Wq, plane = pk->plane;
    const int64_t phy = pk->one_phase ? 1 : sh, phx = pk->one_phase ? 1 : sw;
    for (int64_t gp = p0; gp < p1; gp++) {
        const int64_t g = gp / Pg, p = gp - g * Pg;
        const float *x0 = x + (g * Cg + 2 * p) * H * W;
        const float *x1 = (2 * p + 1 < Cg) ? x0 + H * W : NULL;
        for (int64_t py = 0; py < phy; py++) {
            for (int64_t px = 0; px < phx; px++) {
                int32_t *dst = buf + ((gp * phy + py) * phx + px) * plane;
                memset(dst + Hq * Wq, 0, (size_t)(plane - Hq * Wq) * sizeof(int32_t));
                for (int64_t i = 0; i < Hq; i++) {
                    int32_t *drow = dst + i * Wq;
                    const int64_t yin = i * sh + py - pad_top;
                    if (yin < 0 || yin >= H) {
                        memset(drow, 0, (size_t)Wq * sizeof(int32_t));
                        continue;
                    }
                    for (int64_t j = 0; j < Wq; j++) {
                        const int64_t xin = j * sw + px - pad_left;
                        if (xin < 0 || xin >= W) {
                            drow[j] = 0;
                            continue;
                        }
                        const int64_t e = yin * W + xin;
                        drow[j] = spq_pair(spq_quantize(x0[e], q),
                                           x1 ? spq_quantize(x1[e], q) : 0);
                    }
                }
            }
        }
    }
}

/* Quantize and pack pairs [j0, j1) of the rows of x (N, I) transposed: buf[j*plane + n] holds
 * (x[n, 2j], x[n, 2j+1]) (the second zero when 2j+1 == I), zeros for n in [N, plane). */
static inline void spq_pack_rows(const spq_quant *q, const float *x, int64_t N, int64_t I,
                                 int64_t plane, int64_t j0, int64_t j1, int32_t *buf)
{
    for (int64_t j = j0; j < j1; j++) {
        int32_t *dst = buf + j * plane;
        const int has1 = 2 * j + 1 < I;
        for (int64_t n = 0; n < N; n++) {
            const float *row = x + n * I + 2 * j;
            dst[n] = spq_pair(spq_quantize(row[0], q), has1 ? spq_quantize(row[1], q) : 0);
        }
        memset(dst + N, 0, (size_t)(plane - N) * sizeof(int32_t));
    }
}

/* Whether a level's copy accumulates with 256-bit vpmaddwd (else plain C). */
#define SPQ_SIMD_baseline 0
#define SPQ_SIMD_avx2 1
#define SPQ_SIMD_avx512 1

#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX baseline
#define SPQ_NV 6
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL baseline
#define FSCNN_SUFFIX narrow_baseline
#define SPQ_NV 1
#include "spconv_int8_impl.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX avx2
#define SPQ_NV 6
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx2
#define FSCNN_SUFFIX narrow_avx2
#define SPQ_NV 1
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX avx512
#define SPQ_NV 6
#include "spconv_int8_impl.h"
#define FSCNN_LEVEL avx512
#define FSCNN_SUFFIX narrow_avx512
#define SPQ_NV 1
#include "spconv_int8_impl.h"
#endif

/* Output positions per tile (the same at every level), full or narrow. */
static inline int64_t spq_tile_size(int narrow) { return narrow ? 8 : 48; }

/* Work items [i0, i1) of one image, item i = (tile i / n_oblk, output block i % n_oblk).
 * in:  the packed input, readable to max(offsets)*ostride + (tiles * T) positions;
 * out: (O, H_out, W_out) float outputs, or raw (same shape, int32) the accumulators when
 *      raw is not NULL (out is then unused). */
static inline void spq_items(const spq_layer *k, const int32_t *in, float *out, int32_t *raw,
                             int64_t H_out, int64_t i0, int64_t i1)
{
    if (k->narrow)
        FSCNN_SIMD_CALL(k->level, spq_items_narrow, k, in, out, raw, H_out, i0, i1);
    else
        FSCNN_SIMD_CALL(k->level, spq_items, k, in, out, raw, H_out, i0, i1);
}
#endif
