/* Shared definitions for fscnn's C micro-kernels.
 *
 * Design: every kernel family is written once as a template header (*_impl.h) and compiled
 * once per SIMD level in the same translation unit, each copy tagged with a GCC/Clang `target`
 * attribute (baseline x86-64, AVX2+FMA, AVX-512F). The copy to run is chosen at run time from
 * the CPU's features, so a default build never needs -march=native and never executes an
 * instruction the CPU lacks. On non-x86 targets only the baseline copy exists. What the
 * templates share is defined here once: the per-level vector types, the activation epilogue
 * (on vectors and on scalars), the name pasting and the dispatch. Everything compiles with GCC
 * and clang (CI builds with both).
 */
#ifndef FSCNN_COMMON_H
#define FSCNN_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#ifdef _OPENMP
#include <omp.h>
#define FSCNN_HAVE_OPENMP 1
#else
#define FSCNN_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_procs(void) { return 1; }
static inline void omp_set_num_threads(int n) { (void)n; }
#endif

#ifndef FSCNN_BUILD_COMPILER
#define FSCNN_BUILD_COMPILER "unknown"
#endif

/* SIMD levels, in increasing order; the values are part of the Python API (fscnn._config). */
enum { FSCNN_SIMD_BASELINE = 0, FSCNN_SIMD_AVX2 = 1, FSCNN_SIMD_AVX512 = 2 };

/* Per SIMD level: the target attribute of its copies (FSCNN_ATTR_<level>) and the floats per
 * vector its kernels use (FSCNN_VLEN_<level>). */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FSCNN_X86 1
#include <immintrin.h>
#define FSCNN_ATTR_baseline
#define FSCNN_ATTR_avx2 __attribute__((target("avx2,fma")))
#define FSCNN_ATTR_avx512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#else
#define FSCNN_X86 0
#define FSCNN_ATTR_baseline
#endif
#define FSCNN_VLEN_baseline 4
#define FSCNN_VLEN_avx2 8
#define FSCNN_VLEN_avx512 16

/* Highest SIMD level this CPU (and its OS, which must save the wide registers) supports. */
static inline int fscnn_cpu_simd_level(void) {
#if FSCNN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return FSCNN_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return FSCNN_SIMD_AVX2;
#endif
    return FSCNN_SIMD_BASELINE;
}

/* Call the copy of kernel `fn` (fn_avx512, fn_avx2 or fn_baseline) for SIMD level `level`. */
#if FSCNN_X86
#define FSCNN_SIMD_CALL(level, fn, ...) do {                                  \
        if ((level) >= FSCNN_SIMD_AVX512) fn##_avx512(__VA_ARGS__);           \
        else if ((level) == FSCNN_SIMD_AVX2) fn##_avx2(__VA_ARGS__);          \
        else fn##_baseline(__VA_ARGS__);                                      \
    } while (0)
#else
#define FSCNN_SIMD_CALL(level, fn, ...) do { (void)(level); fn##_baseline(__VA_ARGS__); } while (0)
#endif

/* Activation fused into kernel epilogues; the Python layer takes the codes from
 * fscnn._ext._runtime.ACTIVATION_CODES. Each is evaluated as torch evaluates it, so NaN
 * propagates and the infinities give torch's results (silu(-inf) and hardswish(-inf) are
 * -inf * 0 = NaN in torch too). */
enum {
    FSCNN_ACT_NONE = 0, FSCNN_ACT_RELU = 1, FSCNN_ACT_RELU6 = 2, FSCNN_ACT_SIGMOID = 3,
    FSCNN_ACT_SILU = 4, FSCNN_ACT_HARDSWISH = 5, FSCNN_ACT_HARDSIGMOID = 6
};

static inline float fscnn_relu6f(float v) {
    return v != v ? v : (v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v));
}

/* 1/(1+e) or e/(1+e) with e = exp(-|v|) <= 1: never overflows, and stays a subnormal rather
 * than 0 for large negative v; NaN stays NaN. */
static inline float fscnn_sigmoidf(float v) {
    const float e = expf(-fabsf(v)), r = 1.0f / (1.0f + e);
    return v < 0.0f ? e * r : r;
}

/* The scalar form, the baseline level's definition: plain C, the C library's expf. */
static inline float fscnn_act(float v, int act) {
    switch (act) {
    case FSCNN_ACT_RELU: return v > 0.0f ? v : (v != v ? v : 0.0f);
    case FSCNN_ACT_RELU6: return fscnn_relu6f(v);
    case FSCNN_ACT_SIGMOID: return fscnn_sigmoidf(v);
    case FSCNN_ACT_SILU: return v * fscnn_sigmoidf(v);
    case FSCNN_ACT_HARDSWISH: return v * fscnn_relu6f(v + 3.0f) / 6.0f;
    case FSCNN_ACT_HARDSIGMOID: return fscnn_relu6f(v + 3.0f) / 6.0f;
    default: return v;
    }
}

/* Copy n floats of a short row (a packed row or an output row of a small plane) with
 * 16-byte moves, the last one overlapping, and memcpy beyond 64: a memcpy call per 7-float row
 * cost more than the rest of packing MobileNetV2's 7x7 planes. */
static inline void fscnn_copy_small(float *restrict dst, const float *restrict src, int64_t n)
{
    if (n > 64) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (n >= 4) {
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) memcpy(dst + i, src + i, 4 * sizeof(float));
        if (i < n) memcpy(dst + n - 4, src + n - 4, 4 * sizeof(float));
    } else {
        if (n > 0) dst[0] = src[0];
        if (n > 1) dst[1] = src[1];
        if (n > 2) dst[2] = src[2];
    }
}

/* Kernel templates. A family's *_impl.h is included once per copy with FSCNN_LEVEL (baseline,
 * avx2 or avx512) and FSCNN_SUFFIX (the copy's name suffix, e.g. half_avx2) defined, and
 * undefines both at its end. Within it: */
#define FSCNN_PASTE_(a, b) a##_##b
#define FSCNN_PASTE(a, b) FSCNN_PASTE_(a, b)
#define FSCNN_FN(name) FSCNN_PASTE(name, FSCNN_SUFFIX)     /* the copy's function names */
#define FSCNN_TARGET FSCNN_PASTE(FSCNN_ATTR, FSCNN_LEVEL)  /* its target attribute */
#define FSCNN_VL FSCNN_PASTE(FSCNN_VLEN, FSCNN_LEVEL)      /* floats per vector */
#define FSCNN_VEC FSCNN_PASTE(fscnn_vf, FSCNN_LEVEL)       /* vector of FSCNN_VL floats */
#define FSCNN_IVEC FSCNN_PASTE(fscnn_vi, FSCNN_LEVEL)      /* ... of int32: masks */
#define FSCNN_VACT FSCNN_PASTE(fscnn_vact, FSCNN_LEVEL)    /* the activation on a vector */
#define FSCNN_VACT_ARRAY FSCNN_PASTE(fscnn_vact_array, FSCNN_LEVEL) /* ... on a run, in place */
#define FSCNN_VSEL FSCNN_PASTE(fscnn_vsel, FSCNN_LEVEL)
#define FSCNN_VRELU6 FSCNN_PASTE(fscnn_vrelu6, FSCNN_LEVEL)
#define FSCNN_VEXPNEG FSCNN_PASTE(fscnn_vexpneg, FSCNN_LEVEL)
#define FSCNN_VSIGMOID FSCNN_PASTE(fscnn_vsigmoid, FSCNN_LEVEL)
/* Whether a level evaluates exp with vector arithmetic (else with expf per lane). */
#define FSCNN_VMATH_baseline 0
#define FSCNN_VMATH_avx2 1
#define FSCNN_VMATH_avx512 1
/* {FSCNN_BCAST(w)} initialises a vector with w in every lane (one broadcast instruction). */
#define FSCNN_BCAST(w) FSCNN_PASTE(FSCNN_SPLAT, FSCNN_LEVEL)(w)
#define FSCNN_SPLAT_baseline(w) w, w, w, w
#define FSCNN_SPLAT_avx2(w) w, w, w, w, w, w, w, w
#define FSCNN_SPLAT_avx512(w) w, w, w, w, w, w, w, w, w, w, w, w, w, w, w, w

/* Before a loop whose buffers never overlap: vectorise it without run-time alias checks. */
#if defined(__clang__)
#define FSCNN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FSCNN_IVDEP _Pragma("GCC ivdep")
#endif

/* Lanes i, j, k, l of the 8 lanes of two 4-float vectors (a, b), constant indices. */
#if defined(__clang__) || __GNUC__ >= 12
#define FSCNN_SHUFFLE4(a, b, i, j, k, l) __builtin_shufflevector(a, b, i, j, k, l)
#else
#define FSCNN_SHUFFLE4(a, b, i, j, k, l) \
    __builtin_shuffle(a, b, (fscnn_vi_baseline){i, j, k, l})
#endif

/* The vector types and the vector epilogue of each level (fscnn_level.h is their template). */
#define FSCNN_LEVEL baseline
#include "fscnn_level.h"
#if FSCNN_X86
#define FSCNN_LEVEL avx2
#include "fscnn_level.h"
#define FSCNN_LEVEL avx512
#include "fscnn_level.h"
#endif

/* x[0 .. n) = act(x[0 .. n)) in place with SIMD level `level`'s epilogue (act != NONE). */
static inline void fscnn_act_array(int level, float *x, int64_t n, int act)
{
    FSCNN_SIMD_CALL(level, fscnn_vact_array, x, n, act);
}

/* out[0 .. n) = act(out[0 .. n) + res[0 .. n)) with level `level`'s epilogue (act may be
 * NONE): a residual connection added to a kernel's output, by the pass that follows a kernel
 * that does not add it in its epilogue. Each element is the sum then the activation, as the
 * epilogues that add it compute it (fscnn_level.h), so both give the same bits. */
static inline void fscnn_add_residual(int level, float *restrict out, const float *restrict res,
                                      int64_t n, int act)
{
    FSCNN_SIMD_CALL(level, fscnn_vadd_residual, out, res, n, act);
}

#endif
