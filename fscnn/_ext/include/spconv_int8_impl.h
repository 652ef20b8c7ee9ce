/* Sparse INT8 tile kernel: one SIMD target's copy (see spconv_int8.h for the design).
 *
 * Included once per instantiation by spconv_int8.h with FSCNN_LEVEL, FSCNN_SUFFIX (see
 * fscnn_common.h) and SPQ_NV (vectors of 8 int32 accumulators per tile) defined; they are
 * undefined again at the end of this file. The AVX2 and AVX-512 copies accumulate with
 * 256-bit vpmaddwd; the baseline copy (the portable path) with the same arithmetic in C.
 */

#define SPQ_T (8 * SPQ_NV)

/* One tile of T flat positions [p0, p0+T) for output channels [o0, o1) of one image.
 * in:  packed input pairs (read-only), readable up to max(offsets)*ostride + p0 + T.
 * out: (O, H_out, W_out) floats, or raw (the same, int32 accumulators) when raw != NULL.
 * Only positions p < H_out*Wq whose column p % Wq is < W_out are stored. */
FSCNN_TARGET static void FSCNN_FN(spq_tile)(
        const spq_layer *k, const int32_t *restrict in, float *restrict out,
        int32_t *restrict raw, int64_t o0, int64_t o1, int64_t p0, int64_t H_out)
{
    int32_t acc[SPQ_T] __attribute__((aligned(32)));
    const int64_t Wq = k->Wq, W_out = k->W_out, ostride = k->ostride;
    const int64_t plane = H_out * W_out, L = H_out * Wq;
    const int32_t *restrict base = in + p0;
    int64_t run_dst[SPQ_T], run_src[SPQ_T], run_len[SPQ_T];
    const int n_runs = conv_tile_runs(p0, SPQ_T, L, Wq, W_out, run_dst, run_src, run_len);
    for (int64_t o = o0; o < o1; o++) {
        const int64_t kend = k->ptr[o + 1];
#if FSCNN_PASTE(SPQ_SIMD, FSCNN_LEVEL)
        __m256i a[SPQ_NV];
#pragma GCC unroll 8
        for (int v = 0; v < SPQ_NV; v++) a[v] = _mm256_setzero_si256();
        for (int64_t kk = k->ptr[o]; kk < kend; kk++) {
            const __m256i w = _mm256_set1_epi32(k->wpairs[kk]);
            const int32_t *restrict p = base + (int64_t)k->offsets[kk] * ostride;
#pragma GCC unroll 8
            for (int v = 0; v < SPQ_NV; v++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(p + 8 * v));
                a[v] = _mm256_add_epi32(a[v], _mm256_madd_epi16(xv, w));
            }
        }
#pragma GCC unroll 8
        for (int v = 0; v < SPQ_NV; v++) _mm256_store_si256((__m256i *)(acc + 8 * v), a[v]);
#else
        for (int j = 0; j < SPQ_T; j++) acc[j] = 0;
        for (int64_t kk = k->ptr[o]; kk < kend; kk++) {
            const uint32_t w = (uint32_t)k->wpairs[kk];
            const int32_t wl = (int16_t)(w & 0xFFFFu), wh = (int16_t)(w >> 16);
            const int32_t *restrict p = base + (int64_t)k->offsets[kk] * ostride;
            for (int j = 0; j < SPQ_T; j++) {
                const uint32_t xv = (uint32_t)p[j];
                acc[j] += (int16_t)(xv & 0xFFFFu) * wl + (int16_t)(xv >> 16) * wh;
            }
        }
#endif
        if (raw) {
            int32_t *restrict rrow = raw + o * plane;
            for (int q = 0; q < n_runs; q++)
                memcpy(rrow + run_dst[q], acc + run_src[q], (size_t)run_len[q] * sizeof(int32_t));
            continue;
        }
        const float s = k->scale[o], b = k->bias ? k->bias[o] : 0.0f;
        const int act = k->act;
        float *restrict orow = out + o * plane;
        for (int q = 0; q < n_runs; q++) {
            float *restrict dst = orow + run_dst[q];
            const int32_t *restrict src = acc + run_src[q];
            const int64_t n = run_len[q];
            /* two passes, so that the first vectorises (vfmadd on AVX2); the scalar
             * activation keeps every level's results identical (sigmoid too) */
            for (int64_t j = 0; j < n; j++) dst[j] = fmaf((float)src[j], s, b);
            if (act != FSCNN_ACT_NONE)
                for (int64_t j = 0; j < n; j++) dst[j] = fscnn_act(dst[j], act);
        }
    }
}

/* Work items [i0, i1) of one image (see spq_items in spconv_int8.h). */
FSCNN_TARGET static void FSCNN_FN(spq_items)(
        const spq_layer *k, const int32_t *restrict in, float *restrict out,
        int32_t *restrict raw, int64_t H_out, int64_t i0, int64_t i1)
{
    const int64_t n_oblk = k->n_oblk;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t t = i / n_oblk, b = i - t * n_oblk;
        FSCNN_FN(spq_tile)(k, in, out, raw, k->oblk[b], k->oblk[b + 1], t * SPQ_T, H_out);
    }
}

#undef SPQ_T
#undef SPQ_NV
#undef FSCNN_SUFFIX
#undef FSCNN_LEVEL
