/* Input layout shared by the sparse and dense convolution paths, and the output epilogue.
 *
 * Design: one zero-padded NCHW image becomes sh*sw "phase planes" per channel, so stride (sh, sw)
 * turns into stride-1 work (no scalar fallback): plane (c, py, px) element (i, j) holds padded
 * input (i*sh + py, j*sw + px). Planes are Hq x Wq with Hq = H_out + (dh*(KH-1))/sh + 1 and
 * Wq = W_out + (dw*(KW-1))/sw; then tap (kh, kw) of output (y, x) sits at flat position
 * (y + kh*dh/sh)*Wq + x + kw*dw/sw of plane (c, kh*dh%sh, kw*dw%sw), and all outputs of one tap
 * form one contiguous run of H_out*Wq positions (the Wq-W_out extra columns per row are computed
 * and dropped by the epilogue). The sparse kernel rounds Wq, and the distance between planes,
 * up to a whole number of vectors (see spconv_impl.h). The extra plane row plus a zeroed tail of one tile after the last
 * plane keep every read in bounds.
 */
#ifndef FSCNN_CONV_PACK_H
#define FSCNN_CONV_PACK_H
#include "fscnn_common.h"

/* How an image is packed: its size (H, W), the padding before it, the stride, planes of Hq
 * rows of Wq floats, `plane` >= Hq*Wq floats apart (the sparse kernel rounds it up to its
 * vector length), and one_phase: only phase (0, 0) is packed, at plane c (a strided 1x1
 * layer reads no other phase). Filled once per plan (fscnn.kernels.base.Packing). */
typedef struct {
    int64_t H, W, pad_top, pad_left, sh, sw, Hq, Wq, plane;
    int one_phase;
    int level;  /* FSCNN_SIMD_*: the copy of conv_deinterleave2 that splits stride-2 rows */
} conv_packing;

/* Planes of at most this many floats (32x32) are zeroed whole before the input is copied in
 * (see conv_pack). */
#define CONV_PACK_ZERO_FIRST 1024

/* The columns [j0, j1) of a packed row of Wq that read an input column j*sw + off inside
 * [0, W) (the others are padding zeros); j0 <= j1 <= Wq. */
static inline void conv_pack_columns(int64_t off, int64_t sw, int64_t W, int64_t Wq,
                                     int64_t *j0, int64_t *j1)
{
    int64_t a = off >= 0 ? 0 : (-off + sw - 1) / sw;
    int64_t b = off >= W ? 0 : (W - 1 - off) / sw + 1;
    if (a > Wq) a = Wq;
    if (b > Wq) b = Wq;
    if (b < a) b = a;
    *j0 = a;
    *j1 = b;
}

/* Zero p[0 .. n): stores for the one or two padding columns of a packed row, whose memset
 * calls (four per row of a stride-2 layer) cost more than splitting the row itself. */
static inline void conv_zero(float *p, int64_t n)
{
    if (n > 4) {
        memset(p, 0, (size_t)n * sizeof(float));
        return;
    }
    if (n > 0) p[0] = 0.0f;
    if (n > 1) p[1] = 0.0f;
    if (n > 2) p[2] = 0.0f;
    if (n > 3) p[3] = 0.0f;
}

/* e[j] = s[2j], o[j] = s[2j+1] for j < n: a row split into its even and odd columns. */
static inline void conv_deinterleave2_baseline(const float *restrict s, int64_t n,
                                               float *restrict e, float *restrict o)
{
    int64_t j = 0;
#if FSCNN_X86
    /* SSE2, which every x86-64 has */
    for (; j + 4 <= n; j += 4) {
        const __m128 a = _mm_loadu_ps(s + 2 * j), b = _mm_loadu_ps(s + 2 * j + 4);
        _mm_storeu_ps(e + j, _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm_storeu_ps(o + j, _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
#endif
    for (; j < n; j++) {
        e[j] = s[2 * j];
        o[j] = s[2 * j + 1];
    }
}

#if FSCNN_X86
/* The same, 8 and 16 columns at a time: the SSE copy's 4 made the split most of a stride-2
 * depthwise layer's packing. */
FSCNN_ATTR_avx2 static void conv_deinterleave2_avx2(const float *restrict s, int64_t n,
                                                    float *restrict e, float *restrict o)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 a = _mm256_loadu_ps(s + 2 * j), b = _mm256_loadu_ps(s + 2 * j + 8);
        /* per 128-bit lane: (a0 a2 b0 b2 | a4 a6 b4 b6); then its 64-bit pairs in order */
        const __m256 ev = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        const __m256 od = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        _mm256_storeu_ps(e + j, _mm256_castpd_ps(_mm256_permute4x64_pd(
            _mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0))));
        _mm256_storeu_ps(o + j, _mm256_castpd_ps(_mm256_permute4x64_pd(
            _mm256_castps_pd(od), _MM_SHUFFLE(3, 1, 2, 0))));
    }
    conv_deinterleave2_baseline(s + 2 * j, n - j, e + j, o + j);
}

FSCNN_ATTR_avx512 static void conv_deinterleave2_avx512(const float *restrict s, int64_t n,
                                                        float *restrict e, float *restrict o)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 a = _mm512_loadu_ps(s + 2 * j), b = _mm512_loadu_ps(s + 2 * j + 16);
        _mm512_storeu_ps(e + j, _mm512_permutex2var_ps(a, even, b));
        _mm512_storeu_ps(o + j, _mm512_permutex2var_ps(a, odd, b));
    }
    conv_deinterleave2_avx2(s + 2 * j, n - j, e + j, o + j);
}
#endif

static inline void conv_deinterleave2(int level, const float *restrict s, int64_t n,
                                      float *restrict e, float *restrict o)
{
    FSCNN_SIMD_CALL(level, conv_deinterleave2, s, n, e, o);
}

/* Rows of the two column phases (py, 0) and (py, 1) of channel xc with sw == 2, into planes
 * dst0 and dst1 (see conv_pack): each input row is read once and split into its even and odd
 * columns. Packing each phase by itself read every row twice with stride-2 loads, and was
 * most of a 90%-sparse stride-2 depthwise layer's time (MobileNetV2's 96x112x112: 0.63 ms). */
static inline void conv_pack_pair_s2(const conv_packing *pk, const float *xc, int64_t py,
                                     int zeroed, float *dst0, float *dst1)
{
    const int64_t H = pk->H, W = pk->W, pad_top = pk->pad_top, pad_left = pk->pad_left,
                  sh = pk->sh, Hq = pk->Hq, Wq = pk->Wq;
    const int64_t gap = pk->plane - Hq * Wq;
    int64_t a0, b0, a1, b1;  /* plane columns [a, b) reading the input, per phase */
    conv_pack_columns(-pad_left, 2, W, Wq, &a0, &b0);
    conv_pack_columns(1 - pad_left, 2, W, Wq, &a1, &b1);
    const int64_t m0 = a0 > a1 ? a0 : a1;  /* [m0, m1): both phases read the input */
    int64_t m1 = b0 < b1 ? b0 : b1;
    if (m1 < m0) m1 = m0;
    if (!zeroed) {
        memset(dst0 + Hq * Wq, 0, (size_t)gap * sizeof(float));
        memset(dst1 + Hq * Wq, 0, (size_t)gap * sizeof(float));
    }
    for (int64_t i = 0; i < Hq; i++) {
        float *r0 = dst0 + i * Wq, *r1 = dst1 + i * Wq;
        const int64_t yin = i * sh + py - pad_top;
        if (yin < 0 || yin >= H) {
            if (!zeroed) {
                memset(r0, 0, (size_t)Wq * sizeof(float));
                memset(r1, 0, (size_t)Wq * sizeof(float));
            }
            continue;
        }
        /* phase px's column j reads input column 2j + px - pad_left */
        const float *srow = xc + yin * W;
        if (!zeroed) {
            conv_zero(r0, a0);
            conv_zero(r1, a1);
            conv_zero(r0 + b0, Wq - b0);
            conv_zero(r1 + b1, Wq - b1);
        }
        for (int64_t j = a0; j < m0; j++) r0[j] = srow[2 * j - pad_left];
        for (int64_t j = a1; j < m0; j++) r1[j] = srow[2 * j + 1 - pad_left];
        if (m1 > m0)
            conv_deinterleave2(pk->level, srow + 2 * m0 - pad_left, m1 - m0, r0 + m0,
                               r1 + m0);
        for (int64_t j = m1; j < b0; j++) r0[j] = srow[2 * j - pad_left];
        for (int64_t j = m1; j < b1; j++) r1[j] = srow[2 * j + 1 - pad_left];
    }
}

/* Pack channels [c0, c1) of one image x (C, H, W) into phase planes (see above).
 * buf: (C*phases*plane + tail) floats, phases = 1 if one_phase else sh*sw; the caller zeroes
 * the tail once. Every plane element is written, the plane's last plane - Hq*Wq floats too
 * (zeros where the padded input is out of range). O(C*phases*plane). */
static inline void conv_pack(const conv_packing *pk, const float *x, int64_t c0, int64_t c1,
                             float *buf)
{
    const int64_t H = pk->H, W = pk->W, pad_top = pk->pad_top, pad_left = pk->pad_left,
                  sh = pk->sh, sw = pk->sw, Hq = pk->Hq, Wq = pk->Wq, plane = pk->plane;
    const int one_phase = pk->one_phase;
    const int64_t gap = plane - Hq * Wq;
    const int64_t phy = one_phase ? 1 : sh, phx = one_phase ? 1 : sw;
    if (sh == 1 && sw == 1 && pad_left == 0 && Wq == W) {
        /* rows are contiguous in both layouts (e.g. unpadded 1x1 convolutions): one block copy
         * per channel instead of a copy per row */
        for (int64_t c = c0; c < c1; c++) {
            float *dst = buf + c * plane;
            const int64_t i0 = pad_top < Hq ? pad_top : Hq;
            const int64_t rows = (H < Hq - i0) ? H : Hq - i0;
            memset(dst, 0, (size_t)(i0 * Wq) * sizeof(float));
            memcpy(dst + i0 * Wq, x + c * H * W, (size_t)(rows * W) * sizeof(float));
            memset(dst + (i0 + rows) * Wq, 0, (size_t)((Hq - i0 - rows) * Wq + gap) * sizeof(float));
        }
        return;
    }
    /* Small planes are zeroed whole, once per channel, and then only the input is copied in:
     * the memset calls for each row's few padding columns cost more than the copy there
     * (MobileNetV2's 960 channels of 7x7: 23 libc calls per channel). Large planes are not,
     * to write them once. */
    const int zeroed = Hq * Wq <= CONV_PACK_ZERO_FIRST;
    for (int64_t c = c0; c < c1; c++) {
        const float *xc = x + c * H * W;
        if (zeroed)
            memset(buf + c * phy * phx * plane, 0, (size_t)(phy * phx * plane) * sizeof(float));
        for (int64_t py = 0; py < phy; py++) {
            if (phx == 2 && sw == 2) {
                float *dst = buf + (c * phy + py) * 2 * plane;
                conv_pack_pair_s2(pk, xc, py, zeroed, dst, dst + plane);
                continue;
            }
            for (int64_t px = 0; px < phx; px++) {
                float *dst = buf + ((c * phy + py) * phx + px) * plane;
                if (!zeroed) memset(dst + Hq * Wq, 0, (size_t)gap * sizeof(float));
                for (int64_t i = 0; i < Hq; i++) {
                    float *drow = dst + i * Wq;
                    const int64_t yin = i * sh + py - pad_top;
                    if (yin < 0 || yin >= H) {
                        if (!zeroed) memset(drow, 0, (size_t)Wq * sizeof(float));
                        continue;
                    }
                    const float *srow = xc + yin * W;
                    if (sw == 1) {
                        /* contiguous: zeros, a copy of the row, zeros */
                        int64_t j0 = pad_left - px, j1 = W + pad_left - px;  /* plane cols holding input */
                        if (j0 < 0) j0 = 0;
                        if (j1 > Wq) j1 = Wq;
                        if (j1 < j0) j1 = j0;
                        if (!zeroed) conv_zero(drow, j0);
                        fscnn_copy_small(drow + j0, srow + (j0 + px - pad_left), j1 - j0);
                        if (!zeroed) conv_zero(drow + j1, Wq - j1);
                    } else {
                        /* plane cols j in [j0, j1) read input column j*sw + px - pad_left in
                         * [0, W): zeros around a strided copy without bounds tests */
                        const int64_t off = px - pad_left;
                        int64_t j0, j1;
                        conv_pack_columns(off, sw, W, Wq, &j0, &j1);
                        if (!zeroed) conv_zero(drow, j0);
                        if (sw == 2) {
                            /* a constant stride lets the compiler vectorise the copy
                             * (shuffles); with a variable one it copies a float at a time,
                             * which made packing MobileNetV2's stride-2 layers 4x slower */
                            const float *restrict s2 = srow + off;
                            float *restrict d2 = drow;
                            for (int64_t j = j0; j < j1; j++) d2[j] = s2[2 * j];
                        } else {
                            for (int64_t j = j0; j < j1; j++) drow[j] = srow[j * sw + off];
                        }
                        if (!zeroed) conv_zero(drow + j1, Wq - j1);
                    }
                }
            }
        }
    }
}

/* The valid outputs of a tile of T consecutive flat positions [p0, p0+T) of an output of
 * H_out rows of Wq positions, W_out of them valid per row: runs of positions that are
 * columns x < W_out of one row, run q being output element dst[q] (y*W_out + x) .. + len[q]-1
 * from tile position src[q]; positions at or past L = H_out*Wq are none. Returns the number
 * of runs (at most T); dst, src, len hold T entries. Kernels compute it once per tile and
 * store every output channel's accumulators through it. */
static inline int conv_tile_runs(int64_t p0, int64_t T, int64_t L, int64_t Wq, int64_t W_out,
                                 int64_t *dst, int64_t *src, int64_t *len)
{
    const int64_t pend = (p0 + T < L) ? p0 + T : L;
    int64_t p = p0, y = p / Wq, x = p - y * Wq;
    int n = 0;
    while (p < pend) {
        int64_t run = Wq - x;
        if (p + run > pend) run = pend - p;
        if (x < W_out) {
            dst[n] = y * W_out + x;
            src[n] = p - p0;
            len[n] = (x + run <= W_out) ? run : W_out - x;
            n++;
        }
        p += run;
        y++;
        x = 0;
    }
    return n;
}

/* Epilogue of the dense path (activation at SIMD level `level`): wide (n_out, ld) holds positions [q0, q0+n) of the flat output
 * of n_out channels starting at channel o0; add bias, apply the activation and store columns
 * x < W_out into out (O, H_out, W_out); wide may be the output itself (when Wq == W_out, so the
 * store is in place). Walks the chunk row by row: a division per element to
 * find (y, x) cost more than the GEMM on large planes (1x1 16->96 channels at 112x112: 9.6 ms,
 * the GEMM a fraction of that). */
static void conv_scatter(const float *wide, int64_t ld, int64_t n_out, int64_t o0, int64_t q0,
                         int64_t n, const float *bias, int act, int level, int64_t Wq,
                         int64_t H_out, int64_t W_out, float *out)
{
    const int64_t plane = H_out * W_out, L = H_out * Wq;
    const int64_t qend = (q0 + n < L) ? q0 + n : L;
    for (int64_t oo = 0; oo < n_out; oo++) {
        const float b = bias ? bias[o0 + oo] : 0.0f;
        const float *src = wide + oo * ld - q0;  /* src[q]: position q */
        float *orow = out + (o0 + oo) * plane;
        int64_t y = q0 / Wq, x = q0 - y * Wq;
        for (int64_t q = q0; q < qend; y++, x = 0) {
            /* positions q .. q+run-1 are columns x .. x+run-1 of output row y */
            const int64_t run = (Wq - x < qend - q) ? Wq - x : qend - q;
            const int64_t valid = (x < W_out) ? ((x + run <= W_out) ? run : W_out - x) : 0;
            float *dst = orow + y * W_out + x;
            const float *s = src + q;
            for (int64_t j = 0; j < valid; j++) dst[j] = s[j] + b;
            /* the level's vector epilogue over the run just stored (still in L1) */
            if (act != FSCNN_ACT_NONE && valid > 0) fscnn_act_array(level, dst, valid, act);
            q += run;
        }
    }
}
#endif
