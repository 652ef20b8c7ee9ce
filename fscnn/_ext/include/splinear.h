/* Sparse Linear (CSR weights times a batch of vectors): the SIMD-dispatched row kernel.
 *
 * Design: at batch 1 a sparse Linear layer is a stream over the weights (4-byte value plus a
 * 2- or 4-byte column index per non-zero) and scattered reads of the input vector x. Two things
 * keep that stream at the memory bandwidth:
 *  - column panels: the columns are cut into panels of at most SPLIN_PANEL floats of x (24 KB,
 *    half of L1d); a block of rows is swept panel by panel, so the scattered reads of x hit L1
 *    instead of L2 (VGG16's classifier.0 has a 100 KB input). The weights are laid out
 *    panel-major (all rows of panel 0, then panel 1, ...) so that each panel is one contiguous
 *    stream for the hardware prefetcher: row segments cut out of a plain CSR (a jump per row and
 *    panel) ran 6.2-7.0 ms against 3.2-4.3 ms for contiguous panels.
 *  - gathers: AVX-512 and AVX2 load 16 (8) indices, gather the x values and FMA with 16 (8)
 *    weights at once, with software prefetch of the weight stream ahead of use.
 * Measured on VGG16's classifier.0 (4096 x 25088, 90% sparse, one thread): scalar 10.4 ms,
 * gather 7.2 ms, gather + prefetch + panels 5.5 ms (~11 GB/s, the machine streams ~12.5 GB/s).
 *
 * Each output is summed panel by panel in a fixed order, whatever the thread count, so results
 * do not depend on the thread count (they do depend on the SIMD level, within float rounding).
 */
#ifndef FSCNN_SPLINEAR_H
#define FSCNN_SPLINEAR_H
#include "fscnn_common.h"

#define SPLIN_PANEL 6144

/* Dot products of one row segment (val, idx: n non-zeros, indices relative to x) with x, one
 * per SIMD level. Scalar: four partial sums break the dependency chain. */
static inline float splin_dot_baseline(const float *restrict val, const uint16_t *restrict idx,
                                       int64_t n, const float *restrict x)
{
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        a0 += val[k] * x[idx[k]];
        a1 += val[k + 1] * x[idx[k + 1]];
        a2 += val[k + 2] * x[idx[k + 2]];
        a3 += val[k + 3] * x[idx[k + 3]];
    }
    for (; k < n; k++) a0 += val[k] * x[idx[k]];
    return (a0 + a1) + (a2 + a3);
}

#if FSCNN_X86
/* A short tail's indices and values, copied into zero-padded arrays so that no load reads past
 * the end of the arrays: padded lanes gather x[0] and multiply it by 0. */
#define SPLIN_TAIL(W, n, idx, val)                                                                 \
    uint16_t tidx[W] = {0};                                                                    \
    float tval[W] = {0};                                                                       \
    memcpy(tidx, idx, (size_t)(n) * sizeof(uint16_t));                                         \
    memcpy(tval, val, (size_t)(n) * sizeof(float));

#define SPLIN_IDX16(p) _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p)))
FSCNN_ATTR_avx512 static inline float splin_dot_avx512(const float *restrict val,
                                                         const uint16_t *restrict idx,
                                                         int64_t n, const float *restrict x)
{
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        _mm_prefetch((const char *)(val + k + 512), _MM_HINT_T0);
        _mm_prefetch((const char *)(val + k + 528), _MM_HINT_T0);
        _mm_prefetch((const char *)(idx + k + 512), _MM_HINT_T0);
        a = _mm512_fmadd_ps(_mm512_loadu_ps(val + k),
                            _mm512_i32gather_ps(SPLIN_IDX16(idx + k), x, 4), a);
        b = _mm512_fmadd_ps(_mm512_loadu_ps(val + k + 16),
                            _mm512_i32gather_ps(SPLIN_IDX16(idx + k + 16), x, 4), b);
    }
    for (; k + 16 <= n; k += 16)
        a = _mm512_fmadd_ps(_mm512_loadu_ps(val + k),
                            _mm512_i32gather_ps(SPLIN_IDX16(idx + k), x, 4), a);
    if (k < n) {
        SPLIN_TAIL(16, n - k, idx + k, val + k)
        const __mmask16 m = (__mmask16)((1u << (n - k)) - 1);
        a = _mm512_fmadd_ps(_mm512_loadu_ps(tval),
                            _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, SPLIN_IDX16(tidx),
                                                     x, 4), a);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a, b));
}

#define SPLIN_IDX8(p) _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p)))
FSCNN_ATTR_avx2 static inline float splin_dot_avx2(const float *restrict val,
                                                     const uint16_t *restrict idx, int64_t n,
                                                     const float *restrict x)
{
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        _mm_prefetch((const char *)(val + k + 512), _MM_HINT_T0);
        _mm_prefetch((const char *)(idx + k + 512), _MM_HINT_T0);
        a = _mm256_fmadd_ps(_mm256_loadu_ps(val + k),
                            _mm256_i32gather_ps(x, SPLIN_IDX8(idx + k), 4), a);
        b = _mm256_fmadd_ps(_mm256_loadu_ps(val + k + 8),
                            _mm256_i32gather_ps(x, SPLIN_IDX8(idx + k + 8), 4), b);
    }
    for (; k + 8 <= n; k += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(val + k),
                            _mm256_i32gather_ps(x, SPLIN_IDX8(idx + k), 4), a);
    if (k < n) {
        SPLIN_TAIL(8, n - k, idx + k, val + k)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(tval), _mm256_i32gather_ps(x, SPLIN_IDX8(tidx), 4), a);
    }
    a = _mm256_add_ps(a, b);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* A layer as the sparse linear kernel reads it, filled once per plan
 * (fscnn.kernels.sparse_linear). W (O, I) is stored panel-major: the columns are cut into P
 * panels of `width` columns, and panel p of row o is row p*O + o of a CSR matrix (indptr,
 * idx, val) whose column indices are relative to the panel (so they always fit 16 bits).
 * n_in, n_out: I and O (the name I is complex.h's); bias: (O,) or NULL; act: FSCNN_ACT_*;
 * level: FSCNN_SIMD_*. */
typedef struct {
    const int64_t *indptr;
    const uint16_t *idx;
    const float *val;
    const float *bias;
    int64_t n_in, n_out, P, width;
    int act, level;
} splin_layer;

/* Rows [r0, r1) of out (N, O) = act(x (N, I) . W^T + bias). The rows are swept panel by panel,
 * each panel's weights being one contiguous stream; out holds the partial sums between
 * panels. */
#define SPLIN_ROWS(NAME, TARGET, DOT, ACT_ARRAY)                                                              \
TARGET static void NAME(const splin_layer *lay, const float *restrict x, int64_t N,            \
                        float *restrict out, int64_t r0, int64_t r1)                           \
{                                                                                              \
    const int64_t *restrict indptr = lay->indptr;                                              \
    const uint16_t *restrict idx = lay->idx;                                                   \
    const float *restrict val = lay->val, *restrict bias = lay->bias;                          \
    const int64_t n_in = lay->n_in, O = lay->n_out, P = lay->P, width = lay->width;            \
    const int act = lay->act;                                                                  \
    for (int64_t p = 0; p < P; p++) {                                                          \
        for (int64_t o = r0; o < r1; o++) {                                                    \
            const int64_t k0 = indptr[p * O + o], k1 = indptr[p * O + o + 1];                  \
            for (int64_t n = 0; n < N; n++) {                                                  \
                const float s = DOT(val + k0, idx + k0, k1 - k0, x + n * n_in + p * width);    \
                float v = p == 0 ? s : out[n * O + o] + s;                                     \
                if (p == P - 1 && bias) v += bias[o];                                          \
                out[n * O + o] = v;                                                            \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    /* the level's vector epilogue, over each sample's finished rows */                        \
    if (act != FSCNN_ACT_NONE && r1 > r0)                                                      \
        for (int64_t n = 0; n < N; n++) ACT_ARRAY(out + n * O + r0, r1 - r0, act);            \
}
SPLIN_ROWS(splin_rows_baseline, FSCNN_ATTR_baseline, splin_dot_baseline, fscnn_vact_array_baseline)
#if FSCNN_X86
SPLIN_ROWS(splin_rows_avx2, FSCNN_ATTR_avx2, splin_dot_avx2, fscnn_vact_array_avx2)
SPLIN_ROWS(splin_rows_avx512, FSCNN_ATTR_avx512, splin_dot_avx512, fscnn_vact_array_avx512)
#endif

/* Batched path: a sparse-dense product vectorised over the batch. The caller transposes x
 * into xt (I, Np), Np = N rounded up to the vector width: a non-zero w[o, i] then multiplies
 * the contiguous row xt[i, :] (a broadcast and NV fused multiply-adds per non-zero and block of
 * NV*W images) instead of being multiplied with N gathered scalars, one image at a time. Each
 * row's NV accumulators stay in registers across all its panels; its weights are re-read (from
 * L1) once per block of images. Each output is summed over panels and non-zeros in storage
 * order, whatever the thread count. */
#define SPLIN_BLOCK(NAME, TARGET, VEC, W, NV, LOAD, STORE, FMA, SET1, ZERO)                        \
TARGET static inline void NAME(const splin_layer *lay, int64_t o, const float *restrict xt,    \
                               int64_t Np, float *restrict lanes)                              \
{                                                                                              \
    const int64_t *restrict indptr = lay->indptr;                                              \
    const uint16_t *restrict idx = lay->idx;                                                   \
    const float *restrict val = lay->val;                                                      \
    const int64_t O = lay->n_out, P = lay->P, width = lay->width;                              \
    VEC a[NV];                                                                                 \
    for (int j = 0; j < NV; j++) a[j] = ZERO;                                                  \
    for (int64_t p = 0; p < P; p++) {                                                          \
        const float *restrict xp = xt + p * width * Np;                                        \
        const int64_t k1 = indptr[p * O + o + 1];                                              \
        for (int64_t k = indptr[p * O + o]; k < k1; k++) {                                     \
            const VEC w = SET1(val[k]);                                                        \
            const float *restrict xr = xp + (int64_t)idx[k] * Np;                              \
            for (int j = 0; j < NV; j++) a[j] = FMA(w, LOAD(xr + j * W), a[j]);                \
        }                                                                                      \
    }                                                                                          \
    for (int j = 0; j < NV; j++) STORE(lanes + j * W, a[j]);                                   \
}

/* Rows [r0, r1) of out (N, O) from xt (I, Np): blocks of 4, 2 or 1 vectors of images. */
#define SPLIN_BATCH_ROWS(NAME, TARGET, W, BLOCK)                                                   \
TARGET static void NAME(const splin_layer *lay, const float *restrict xt, int64_t N,           \
                        int64_t Np, float *restrict out, int64_t r0, int64_t r1)               \
{                                                                                              \
    const float *restrict bias = lay->bias;                                                    \
    const int64_t O = lay->n_out;                                                              \
    const int act = lay->act;                                                                  \
    float lanes[4 * W];                                                                        \
    for (int64_t o = r0; o < r1; o++) {                                                        \
        for (int64_t nb = 0; nb < Np;) {                                                       \
            const int64_t left = (Np - nb) / W, nv = left >= 4 ? 4 : (left >= 2 ? 2 : 1);      \
            if (nv == 4) BLOCK##4(lay, o, xt + nb, Np, lanes);                                 \
            else if (nv == 2) BLOCK##2(lay, o, xt + nb, Np, lanes);                            \
            else BLOCK##1(lay, o, xt + nb, Np, lanes);                                         \
            const int64_t n_end = nb + nv * W < N ? nb + nv * W : N;                           \
            for (int64_t n = nb; n < n_end; n++)                                               \
                out[n * O + o] = fscnn_act(bias ? lanes[n - nb] + bias[o] : lanes[n - nb], act); \
            nb += nv * W;                                                                      \
        }                                                                                      \
    }                                                                                          \
}

#define SPLIN_F_LOAD(p) (*(p))
#define SPLIN_F_STORE(p, v) (*(p) = (v))
#define SPLIN_F_FMA(a, b, c) ((a) * (b) + (c))
#define SPLIN_F_SET1(v) (v)
SPLIN_BLOCK(splin_block_baseline4, FSCNN_ATTR_baseline, float, 1, 4, SPLIN_F_LOAD, SPLIN_F_STORE,
            SPLIN_F_FMA, SPLIN_F_SET1, 0.0f)
SPLIN_BLOCK(splin_block_baseline2, FSCNN_ATTR_baseline, float, 1, 2, SPLIN_F_LOAD, SPLIN_F_STORE,
            SPLIN_F_FMA, SPLIN_F_SET1, 0.0f)
SPLIN_BLOCK(splin_block_baseline1, FSCNN_ATTR_baseline, float, 1, 1, SPLIN_F_LOAD, SPLIN_F_STORE,
            SPLIN_F_FMA, SPLIN_F_SET1, 0.0f)
SPLIN_BATCH_ROWS(splin_batch_rows_baseline, FSCNN_ATTR_baseline, 1, splin_block_baseline)
#if FSCNN_X86
SPLIN_BLOCK(splin_block_avx24, FSCNN_ATTR_avx2, __m256, 8, 4, _mm256_loadu_ps, _mm256_storeu_ps,
            _mm256_fmadd_ps, _mm256_set1_ps, _mm256_setzero_ps())
SPLIN_BLOCK(splin_block_avx22, FSCNN_ATTR_avx2, __m256, 8, 2, _mm256_loadu_ps, _mm256_storeu_ps,
            _mm256_fmadd_ps, _mm256_set1_ps, _mm256_setzero_ps())
SPLIN_BLOCK(splin_block_avx21, FSCNN_ATTR_avx2, __m256, 8, 1, _mm256_loadu_ps, _mm256_storeu_ps,
            _mm256_fmadd_ps, _mm256_set1_ps, _mm256_setzero_ps())
SPLIN_BATCH_ROWS(splin_batch_rows_avx2, FSCNN_ATTR_avx2, 8, splin_block_avx2)
SPLIN_BLOCK(splin_block_avx5124, FSCNN_ATTR_avx512, __m512, 16, 4, _mm512_loadu_ps,
            _mm512_storeu_ps, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_setzero_ps())
SPLIN_BLOCK(splin_block_avx5122, FSCNN_ATTR_avx512, __m512, 16, 2, _mm512_loadu_ps,
            _mm512_storeu_ps, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_setzero_ps())
SPLIN_BLOCK(splin_block_avx5121, FSCNN_ATTR_avx512, __m512, 16, 1, _mm512_loadu_ps,
            _mm512_storeu_ps, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_setzero_ps())
SPLIN_BATCH_ROWS(splin_batch_rows_avx512, FSCNN_ATTR_avx512, 16, splin_block_avx512)
#endif

/* Floats per vector of the batched path at `level`: xt's rows are padded to a multiple. */
static inline int64_t splin_batch_width(int level)
{
#if FSCNN_X86
    if (level >= FSCNN_SIMD_AVX512) return 16;
    if (level == FSCNN_SIMD_AVX2) return 8;
#endif
    (void)level;
    return 1;
}

/* Rows [r0, r1) of out (N, O) = act(x . W^T + bias), x given transposed as xt (I, Np). */
static inline void splin_batch_rows(const splin_layer *lay, const float *xt, int64_t N,
                                    int64_t Np, float *out, int64_t r0, int64_t r1)
{
    FSCNN_SIMD_CALL(lay->level, splin_batch_rows, lay, xt, N, Np, out, r0, r1);
}

/* Column panel width in input features (the caller lays the weights out with it). */
static inline int64_t splin_panel_width(void) { return SPLIN_PANEL; }

/* Rows [r0, r1) of out (N, O) = act(x (N, I) . W^T + bias). */
static inline void splin_rows(const splin_layer *lay, const float *x, int64_t N, float *out,
                              int64_t r0, int64_t r1)
{
    FSCNN_SIMD_CALL(lay->level, splin_rows, lay, x, N, out, r0, r1);
}
#endif
