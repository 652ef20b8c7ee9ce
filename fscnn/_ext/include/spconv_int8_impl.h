/* Sparse INT8 tile kernel: one SIMD target's copy (see spconv_int8.h for the design).
 *
 * Included once per instantiation by spconv_int8.h with FSCNN_LEVEL, FSCNN_SUFFIX (see
 * fscnn_common.h), SPQ_NV (vectors of 8 int32 accumulators per tile) and optionally SPQ_QUAD
 * (1: the weights and the input are quads of bytes, not pairs of int16) defined; they are
 * undefined again at the end of this file. The AVX2 and AVX-512 copies accumulate with
 * 256-bit vpmaddwd, the AVX-512 VNNI copy with vpdpwssd (512-bit, 256-bit for the narrow
 * tile); the baseline copy (the portable path) with the same arithmetic in C.
 */

#define SPQ_T (8 * SPQ_NV)
#ifndef SPQ_QUAD
#define SPQ_QUAD 0  /* 1: quads of uint8 input and int8 weights (spconv_int8.h) */
#endif

/* Tiles [t0, t1) (at most SPQ_GROUP_MAX) of T flat positions each, for output channels
 * [o0, o1) of one image, channel by channel (each channel's pairs stay in L1 across the
 * group's tiles).
 * in:  packed input pairs (read-only), readable up to max(offsets)*ostride + t1*T.
 * out: (O, H_out, W_out) floats, or raw (the same, int32 accumulators) when raw != NULL.
 * Only positions p < H_out*Wq whose column p % Wq is < W_out are stored. */
FSCNN_TARGET static void FSCNN_FN(spq_group)(
        const spq_layer *k, const int32_t *restrict in, float *restrict out,
        int32_t *restrict raw, int64_t o0, int64_t o1, int64_t t0, int64_t t1, int64_t H_out)
{
    int32_t acc[SPQ_T] __attribute__((aligned(64)));
    const int64_t Wq = k->Wq, W_out = k->W_out, ostride = k->ostride;
    const int64_t plane = H_out * W_out, L = H_out * Wq;
    int64_t run_dst[SPQ_GROUP_MAX][SPQ_T], run_src[SPQ_GROUP_MAX][SPQ_T];
    int64_t run_len[SPQ_GROUP_MAX][SPQ_T];
    int n_runs_of[SPQ_GROUP_MAX];
    for (int64_t t = t0; t < t1; t++)
        n_runs_of[t - t0] = conv_tile_runs(t * SPQ_T, SPQ_T, L, Wq, W_out, run_dst[t - t0],
                                           run_src[t - t0], run_len[t - t0]);
    for (int64_t o = o0; o < o1; o++)
    for (int64_t t = t0; t < t1; t++) {
        const int32_t *restrict base = in + t * SPQ_T;
        const int n_runs = n_runs_of[t - t0];
        const int64_t *rdst = run_dst[t - t0], *rsrc = run_src[t - t0], *rlen = run_len[t - t0];
        const int64_t kend = k->ptr[o + 1];
#if FSCNN_PASTE(SPQ_SIMD, FSCNN_LEVEL) == 2
        /* VNNI: vpdpwssd is vpmaddwd and the add in one instruction, but with the latency of
         * the multiply on the accumulator: SPQ_NA sets of accumulators take consecutive pairs
         * in turn (one set ran the narrow tile x0.6 the vpmaddwd + add copy), summed at the
         * end (integer sums: the same result in any order). 512-bit vectors of 16 positions
         * for the full tile, one 256-bit vector for the narrow one. */
#if SPQ_NV % 2 == 0
#define SPQ_VI __m512i
#define SPQ_NZ (SPQ_NV / 2)
#define SPQ_NA 2
#define SPQ_ZERO _mm512_setzero_si512
#define SPQ_SET1 _mm512_set1_epi32
#if SPQ_QUAD  /* vpdpbusd: the input's unsigned bytes times the weights' signed ones */
#define SPQ_DP(a, p, w) _mm512_dpbusd_epi32(a, _mm512_loadu_si512((const void *)(p)), w)
#else
#define SPQ_DP(a, p, w) _mm512_dpwssd_epi32(a, _mm512_loadu_si512((const void *)(p)), w)
#endif
#define SPQ_ADD _mm512_add_epi32
#define SPQ_STORE(d, a) _mm512_store_si512((void *)(d), a)
#else
#define SPQ_VI __m256i
#define SPQ_NZ SPQ_NV
#define SPQ_NA 4
#define SPQ_ZERO _mm256_setzero_si256
#define SPQ_SET1 _mm256_set1_epi32
#if SPQ_QUAD
#define SPQ_DP(a, p, w) _mm256_dpbusd_epi32(a, _mm256_loadu_si256((const __m256i *)(p)), w)
#else
#define SPQ_DP(a, p, w) _mm256_dpwssd_epi32(a, _mm256_loadu_si256((const __m256i *)(p)), w)
#endif
#define SPQ_ADD _mm256_add_epi32
#define SPQ_STORE(d, a) _mm256_store_si256((__m256i *)(d), a)
#endif
#define SPQ_VL (SPQ_T / SPQ_NZ)
        SPQ_VI a[SPQ_NA][SPQ_NZ];
#pragma GCC unroll 8
        for (int u = 0; u < SPQ_NA; u++)
#pragma GCC unroll 8
            for (int v = 0; v < SPQ_NZ; v++) a[u][v] = SPQ_ZERO();
        int64_t kk = k->ptr[o];
        for (; kk + SPQ_NA <= kend; kk += SPQ_NA) {
#pragma GCC unroll 8
            for (int u = 0; u < SPQ_NA; u++) {
                const SPQ_VI w = SPQ_SET1(k->wpairs[kk + u]);
                const int32_t *restrict p = base + (int64_t)k->offsets[kk + u] * ostride;
#pragma GCC unroll 8
                for (int v = 0; v < SPQ_NZ; v++) a[u][v] = SPQ_DP(a[u][v], p + SPQ_VL * v, w);
            }
        }
        for (; kk < kend; kk++) {
            const SPQ_VI w = SPQ_SET1(k->wpairs[kk]);
            const int32_t *restrict p = base + (int64_t)k->offsets[kk] * ostride;
#pragma GCC unroll 8
            for (int v = 0; v < SPQ_NZ; v++) a[0][v] = SPQ_DP(a[0][v], p + SPQ_VL * v, w);
        }
#pragma GCC unroll 8
        for (int v = 0; v < SPQ_NZ; v++) {
#pragma GCC unroll 8
            for (int u = 1; u < SPQ_NA; u++) a[0][v] = SPQ_ADD(a[0][v], a[u][v]);
            SPQ_STORE(acc + SPQ_VL * v, a[0][v]);
        }
#undef SPQ_VI
#undef SPQ_NZ
#undef SPQ_NA
#undef SPQ_ZERO
#undef SPQ_SET1
#undef SPQ_DP
#undef SPQ_ADD
#undef SPQ_STORE
#undef SPQ_VL
#elif FSCNN_PASTE(SPQ_SIMD, FSCNN_LEVEL)
        __m256i a[SPQ_NV];
#pragma GCC unroll 8
        for (int v = 0; v < SPQ_NV; v++) a[v] = _mm256_setzero_si256();
        for (int64_t kk = k->ptr[o]; kk < kend; kk++) {
            const __m256i w = _mm256_set1_epi32(k->wpairs[kk]);
            const int32_t *restrict p = base + (int64_t)k->offsets[kk] * ostride;
#if SPQ_QUAD
            /* without VNNI: bytes 0 and 2, then 1 and 3, as int16 pairs (the input's zero-
             * extended, the weights' sign-extended) through vpmaddwd: exact, no saturation */
            const __m256i w02 = _mm256_srai_epi16(_mm256_slli_epi16(w, 8), 8);
            const __m256i w13 = _mm256_srai_epi16(w, 8);
            const __m256i low = _mm256_set1_epi32(0x00FF00FF);
#pragma GCC unroll 8
            for (int v = 0; v < SPQ_NV; v++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(p + 8 * v));
                const __m256i s02 = _mm256_madd_epi16(_mm256_and_si256(xv, low), w02);
                const __m256i s13 = _mm256_madd_epi16(_mm256_srli_epi16(xv, 8), w13);
                a[v] = _mm256_add_epi32(a[v], _mm256_add_epi32(s02, s13));
            }
#else
#pragma GCC unroll 8
            for (int v = 0; v < SPQ_NV; v++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(p + 8 * v));
                a[v] = _mm256_add_epi32(a[v], _mm256_madd_epi16(xv, w));
            }
#endif
        }
#pragma GCC unroll 8
        for (int v = 0; v < SPQ_NV; v++) _mm256_store_si256((__m256i *)(acc + 8 * v), a[v]);
#else
        for (int j = 0; j < SPQ_T; j++) acc[j] = 0;
        for (int64_t kk = k->ptr[o]; kk < kend; kk++) {
            const uint32_t w = (uint32_t)k->wpairs[kk];
            const int32_t *restrict p = base + (int64_t)k->offsets[kk] * ostride;
#if SPQ_QUAD
            const int32_t w0 = (int8_t)(w & 0xFFu), w1 = (int8_t)((w >> 8) & 0xFFu);
            const int32_t w2 = (int8_t)((w >> 16) & 0xFFu), w3 = (int8_t)(w >> 24);
            for (int j = 0; j < SPQ_T; j++) {
                const uint32_t xv = (uint32_t)p[j];
                acc[j] += (int32_t)(xv & 0xFFu) * w0 + (int32_t)((xv >> 8) & 0xFFu) * w1
                          + (int32_t)((xv >> 16) & 0xFFu) * w2 + (int32_t)(xv >> 24) * w3;
            }
#else
            const int32_t wl = (int16_t)(w & 0xFFFFu), wh = (int16_t)(w >> 16);
            for (int j = 0; j < SPQ_T; j++) {
                const uint32_t xv = (uint32_t)p[j];
                acc[j] += (int16_t)(xv & 0xFFFFu) * wl + (int16_t)(xv >> 16) * wh;
            }
#endif
        }
#endif
        if (raw) {
            int32_t *restrict rrow = raw + o * plane;
            for (int q = 0; q < n_runs; q++)
                memcpy(rrow + rdst[q], acc + rsrc[q], (size_t)rlen[q] * sizeof(int32_t));
            continue;
        }
        const float s = k->scale[o], b = k->bias ? k->bias[o] : 0.0f;
        const int act = k->act;
        float *restrict orow = out + o * plane;
#if FSCNN_PASTE(SPQ_AVX512, FSCNN_LEVEL)
        /* 16 outputs a step, each run's tail masked: the loops below leave a run's last
         * n % 16 outputs to scalar code, and a padded layer's runs are its output rows (7,
         * 14, 28 positions in ResNet-50). The same operations: vcvtdq2ps, one fused
         * multiply-add, the ReLU/ReLU6 comparisons of the scalar form (NaN and -0 alike). */
        if (act == FSCNN_ACT_NONE || act == FSCNN_ACT_RELU || act == FSCNN_ACT_RELU6) {
            const __m512 vs = _mm512_set1_ps(s), vb = _mm512_set1_ps(b);
            const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
            /* The residual connection in registers too, where its activation is one of these:
             * the sum, then VACT's clamps (v < 0 -> 0, v > 6 -> 6: NaN and -0 pass), as
             * fscnn_vadd_residual computes it, so the results are the same bits. Against
             * the pass over each stored tile: ResNet-50 at 90% (1x4, one thread, VNNI) spent
             * 11% of its time in that pass. */
            const int ract = k->res_act;
            const float *restrict res_row = (k->res && (ract == FSCNN_ACT_NONE
                                                     || ract == FSCNN_ACT_RELU
                                                     || ract == FSCNN_ACT_RELU6))
                                         ? k->res + o * plane : NULL;
            for (int q = 0; q < n_runs; q++) {
                float *restrict dst = orow + rdst[q];
                const float *restrict res_run = res_row ? res_row + rdst[q] : NULL;
                const int32_t *restrict src = acc + rsrc[q];
                const int64_t n = rlen[q];
                for (int64_t j = 0; j < n; j += 16) {
                    const __mmask16 m = (__mmask16)(n - j >= 16 ? 0xFFFFu
                                                                : (1u << (n - j)) - 1u);
                    __m512 v = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, src + j)), vs, vb);
                    if (act == FSCNN_ACT_RELU) {
                        v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, zero, _CMP_NLE_UQ), v);
                    } else if (act == FSCNN_ACT_RELU6) {
                        v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
                        v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, six, _CMP_GT_OQ), six);
                    }
                    if (res_run) {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res_run + j));
                        if (ract != FSCNN_ACT_NONE)
                            v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ),
                                                   zero);
                        if (ract == FSCNN_ACT_RELU6)
                            v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, six, _CMP_GT_OQ),
                                                   six);
                    }
                    _mm512_mask_storeu_ps(dst + j, m, v);
                }
            }
            if (k->res && !res_row)
                spq_add_residual(k, orow, o * plane, n_runs, rdst, rlen);
            continue;
        }
#endif
        for (int q = 0; q < n_runs; q++) {
            float *restrict dst = orow + rdst[q];
            const int32_t *restrict src = acc + rsrc[q];
            const int64_t n = rlen[q];
            /* ReLU and ReLU6 in the same vectorised pass as the fmaf, branch-free: the
             * scalar fscnn_act per output (a switch and a branch that half the outputs
             * mispredict) took 4.2 of ResNet-50's INT8 stem's 5.2 ms. Both are exact, so
             * every level's results stay identical. The others: two passes, so that the
             * first vectorises, and the scalar activation (sigmoid's expf too). */
            if (act == FSCNN_ACT_RELU) {
                for (int64_t j = 0; j < n; j++) {
                    const float v = fmaf((float)src[j], s, b);
                    dst[j] = (v > 0.0f || v != v) ? v : 0.0f;  /* fscnn_act: -0 -> 0 */
                }
            } else if (act == FSCNN_ACT_RELU6) {
                for (int64_t j = 0; j < n; j++) {
                    const float v = fmaf((float)src[j], s, b), r = v < 0.0f ? 0.0f : v;
                    dst[j] = r > 6.0f ? 6.0f : r;  /* NaN and -0 pass, as fscnn_relu6f */
                }
            } else {
                for (int64_t j = 0; j < n; j++) dst[j] = fmaf((float)src[j], s, b);
                if (act != FSCNN_ACT_NONE)
                    for (int64_t j = 0; j < n; j++) dst[j] = fscnn_act(dst[j], act);
            }
        }
        if (k->res)
            spq_add_residual(k, orow, o * plane, n_runs, rdst, rlen);
    }
}

/* Work items [i0, i1) of one image (see spq_items in spconv_int8.h). */
FSCNN_TARGET static void FSCNN_FN(spq_items)(
        const spq_layer *k, const int32_t *restrict in, float *restrict out,
        int32_t *restrict raw, int64_t H_out, int64_t i0, int64_t i1)
{
    const int64_t n_oblk = k->n_oblk, G = k->group;
    const int64_t n_tiles = (H_out * k->Wq + SPQ_T - 1) / SPQ_T;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t g = i / n_oblk, b = i - g * n_oblk;
        const int64_t t0 = g * G, t1 = t0 + G < n_tiles ? t0 + G : n_tiles;
        FSCNN_FN(spq_group)(k, in, out, raw, k->oblk[b], k->oblk[b + 1], t0, t1, H_out);
    }
}

#undef SPQ_T
#undef SPQ_NV
#undef SPQ_QUAD
#undef FSCNN_SUFFIX
#undef FSCNN_LEVEL
