/* Reductions of contiguous float runs, used by the pooling kernels (_pool.pyx).
 *
 * Design: a pooling window is one contiguous run when it spans whole rows (global average
 * pooling, the common case) and otherwise one run per row. A scalar reduction is a chain of
 * dependent adds or compares, one per element, and GCC will not vectorise a float reduction
 * without -ffast-math; so runs are reduced in two 4-float vectors (fscnn_common.h's baseline
 * vectors: SSE2 on x86-64, no target attribute needed), 8 independent lanes, and the
 * remainder in scalars. Sums combine the lanes in double.
 * Max is NaN-sticky: a NaN anywhere in the run gives NaN, as in torch's max pooling. It is
 * written as a bitwise blend because C has no `?:` on vectors.
 */
#ifndef FSCNN_POOL_H
#define FSCNN_POOL_H

#include <math.h>
#include "fscnn_common.h"

typedef fscnn_vf_baseline fscnn_v4f;
typedef fscnn_vi_baseline fscnn_v4i;

/* max(m, v) where a NaN in either argument wins. A bitwise blend: written as `?:` on floats,
 * GCC emits a branch, which mispredicts on short runs of random data. */
static inline float fscnn_nanmax(float m, float v) {
    uint32_t take = -(uint32_t)((v > m) | (v != v)), vb, mb;
    memcpy(&vb, &v, sizeof vb);
    memcpy(&mb, &m, sizeof mb);
    vb = (vb & take) | (mb & ~take);
    memcpy(&v, &vb, sizeof v);
    return v;
}

static inline fscnn_v4f fscnn_nanmax4(fscnn_v4f m, fscnn_v4f v) {
    fscnn_v4i take = (v > m) | (v != v);
    return (fscnn_v4f)(((fscnn_v4i)v & take) | ((fscnn_v4i)m & ~take));
}

static inline fscnn_v4f fscnn_load4(const float* p) {
    fscnn_v4f v;
    memcpy(&v, p, sizeof v);  /* unaligned load */
    return v;
}

/* Sum of p[0..n); 0 when n <= 0. */
static inline double fscnn_run_sum(const float* p, ptrdiff_t n) {
    fscnn_v4f a = {0.0f, 0.0f, 0.0f, 0.0f}, b = a;
    ptrdiff_t i = 0;
    double s = 0.0;
    int l;
    for (; i + 8 <= n; i += 8) {
        a += fscnn_load4(p + i);
        b += fscnn_load4(p + i + 4);
    }
    for (l = 0; l < 4; l++) s += (double)a[l] + (double)b[l];
    for (; i < n; i++) s += p[i];
    return s;
}

/* NaN-sticky maximum of p[0..n); -inf when n <= 0. */
static inline float fscnn_run_max(const float* p, ptrdiff_t n) {
    fscnn_v4f a = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, b = a;
    float m = -INFINITY;
    ptrdiff_t i = 0;
    int l;
    for (; i + 8 <= n; i += 8) {
        a = fscnn_nanmax4(a, fscnn_load4(p + i));
        b = fscnn_nanmax4(b, fscnn_load4(p + i + 4));
    }
    for (l = 0; l < 4; l++) m = fscnn_nanmax(fscnn_nanmax(m, a[l]), b[l]);
    for (; i < n; i++) m = fscnn_nanmax(m, p[i]);
    return m;
}

/* dst[i] = max(dst[i], src[i]) for i < n, NaN-sticky: the vertical pass of separable max pooling. */
static inline void fscnn_rows_nanmax(float* dst, const float* src, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const fscnn_v4f a = fscnn_nanmax4(fscnn_load4(dst + i), fscnn_load4(src + i));
        const fscnn_v4f b = fscnn_nanmax4(fscnn_load4(dst + i + 4), fscnn_load4(src + i + 4));
        memcpy(dst + i, &a, sizeof a);
        memcpy(dst + i + 4, &b, sizeof b);
    }
    for (; i < n; i++) dst[i] = fscnn_nanmax(dst[i], src[i]);
}

/* out[i] = max(out[i], src[i*stride]) for i < n, NaN-sticky: one tap of the column pass of
 * separable max pooling (src: the window rows' maximum at the tap's first column). Strides 1
 * and 2 run in vectors, stride 2 as two contiguous loads whose even lanes a shuffle keeps (as
 * fscnn_maxpool2x2_row); other strides and the tail run in scalars. `avail`: the floats
 * readable from src; the stride-2 loads stop before passing it. The compilers leave the
 * strided scalar loop (a bitwise blend per output) unvectorised. */
static inline void fscnn_cols_nanmax(float* out, const float* src, ptrdiff_t n, ptrdiff_t stride,
                                     ptrdiff_t avail) {
    ptrdiff_t i = 0;
    if (stride == 1) {
        for (; i + 4 <= n; i += 4) {
            const fscnn_v4f m = fscnn_nanmax4(fscnn_load4(out + i), fscnn_load4(src + i));
            memcpy(out + i, &m, sizeof m);
        }
    } else if (stride == 2) {
        for (; i + 4 <= n && 2 * i + 8 <= avail; i += 4) {
            const fscnn_v4f a = fscnn_load4(src + 2 * i), b = fscnn_load4(src + 2 * i + 4);
            const fscnn_v4f m = fscnn_nanmax4(fscnn_load4(out + i), FSCNN_SHUFFLE4(a, b, 0, 2, 4, 6));
            memcpy(out + i, &m, sizeof m);
        }
    }
    for (; i < n; i++) out[i] = fscnn_nanmax(out[i], src[i * stride]);
}

/* Max pooling 2x2 with stride 2, no padding or dilation (VGG's pools), one output row:
 * out[i] = max(r0[2i], r0[2i+1], r1[2i], r1[2i+1]), NaN-sticky, for i < n. The general kernel
 * reads with stride 2, which does not vectorise; here the two rows are combined with contiguous
 * vector loads and the even and odd lanes are then split with a shuffle. */
static inline void fscnn_maxpool2x2_row(const float* r0, const float* r1, float* out, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const fscnn_v4f a = fscnn_nanmax4(fscnn_load4(r0 + 2 * i), fscnn_load4(r1 + 2 * i));
        const fscnn_v4f b = fscnn_nanmax4(fscnn_load4(r0 + 2 * i + 4), fscnn_load4(r1 + 2 * i + 4));
        const fscnn_v4f m = fscnn_nanmax4(FSCNN_SHUFFLE4(a, b, 0, 2, 4, 6),
                                          FSCNN_SHUFFLE4(a, b, 1, 3, 5, 7));
        memcpy(out + i, &m, sizeof m);
    }
    for (; i < n; i++)
        out[i] = fscnn_nanmax(fscnn_nanmax(r0[2 * i], r0[2 * i + 1]),
                              fscnn_nanmax(r1[2 * i], r1[2 * i + 1]));
}

#endif
