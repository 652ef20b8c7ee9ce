/* Shared definitions for fscnn's C micro-kernels.
 *
 * Design: every kernel family is written once as a template header and compiled three times in
 * the same translation unit, each copy tagged with a GCC/Clang `target` attribute (baseline
 * x86-64, AVX2+FMA, AVX-512F). The copy to run is chosen at run time from the CPU's features, so
 * a default build never needs -march=native and never executes an instruction the CPU lacks.
 * On non-x86 targets only the baseline copy exists.
 */
#ifndef FSCNN_COMMON_H
#define FSCNN_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FSCNN_X86 1
#define FSCNN_TARGET_BASELINE
#define FSCNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FSCNN_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#else
#define FSCNN_X86 0
#define FSCNN_TARGET_BASELINE
#endif

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

/* Activation fused into kernel epilogues; values are part of the Python API (fscnn._ext). */
enum { FSCNN_ACT_NONE = 0, FSCNN_ACT_RELU = 1, FSCNN_ACT_RELU6 = 2 };

static inline float fscnn_act(float v, int act) {
    if (act == FSCNN_ACT_RELU) return v > 0.0f ? v : (v != v ? v : 0.0f);
    if (act == FSCNN_ACT_RELU6) return v != v ? v : (v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v));
    return v;
}

#endif
