/* The vector types and the activation epilogue of one SIMD level: a template included by
 * fscnn_common.h once per level with FSCNN_LEVEL defined (undefined again at the end).
 *
 * Design: the epilogue blends through integer masks because C has no `?:` on vectors;
 * comparisons with NaN are false, so NaN passes through both clamps, as in PyTorch. Every
 * kernel applies it in registers before its only store (fscnn_act is the scalar form).
 */
typedef float FSCNN_VEC __attribute__((vector_size(FSCNN_VL * 4)));
typedef int32_t FSCNN_IVEC __attribute__((vector_size(FSCNN_VL * 4)));

/* act (FSCNN_ACT_RELU or FSCNN_ACT_RELU6; the caller skips FSCNN_ACT_NONE) applied to v. */
FSCNN_TARGET static inline FSCNN_VEC FSCNN_VACT(FSCNN_VEC v, int act)
{
    const FSCNN_VEC zero = (FSCNN_VEC){0};
    const FSCNN_VEC six = zero + 6.0f;
    FSCNN_IVEC m = (FSCNN_IVEC)v;
    m &= ~(FSCNN_IVEC)(v < zero);
    if (act == FSCNN_ACT_RELU6) {
        const FSCNN_IVEC big = (FSCNN_IVEC)(v > six);
        m = (m & ~big) | ((FSCNN_IVEC)six & big);
    }
    return (FSCNN_VEC)m;
}

#undef FSCNN_LEVEL
