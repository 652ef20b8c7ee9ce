/* The vector types and the activation epilogue of one SIMD level: a template included by
 * fscnn_common.h once per level with FSCNN_LEVEL defined (undefined again at the end).
 *
 * Design: the epilogue blends through integer masks because C has no `?:` on vectors;
 * comparisons with NaN are false, so NaN passes through both clamps, as in PyTorch. Every
 * kernel applies it in registers before its only store (fscnn_act is the scalar form).
 *
 * sigmoid and silu need exp. The baseline level computes it lane by lane with the C library's
 * expf (fscnn_act), so it is the reference the vector levels are tested against. AVX2 and
 * AVX-512 use FSCNN_VEXPNEG below: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and Cephes'
 * degree-7 polynomial for exp(r) (max relative error 2e-7 on [-ln2/2, ln2/2]), scaled by 2^n
 * built in the exponent bits; sigmoid is evaluated without overflow. Measured against float64
 * over [-100, 100] (tests/test_activations.py, the bound asserted there): sigmoid and silu
 * within 4e-7 relative wherever the result is above 1e-30 in magnitude (subnormal results
 * lose precision as every float32 computation does). The hard activations are exact to the
 * rounding of x + 3, of the product and of the division by 6, evaluated as torch does.
 */
typedef float FSCNN_VEC __attribute__((vector_size(FSCNN_VL * 4)));
typedef int32_t FSCNN_IVEC __attribute__((vector_size(FSCNN_VL * 4)));

/* m ? a : b per lane (m all ones or all zeros). */
FSCNN_TARGET static inline FSCNN_VEC FSCNN_VSEL(FSCNN_IVEC m, FSCNN_VEC a, FSCNN_VEC b)
{
    return (FSCNN_VEC)(((FSCNN_IVEC)a & m) | ((FSCNN_IVEC)b & ~m));
}

/* min(max(v, 0), 6); NaN stays NaN. */
FSCNN_TARGET static inline FSCNN_VEC FSCNN_VRELU6(FSCNN_VEC v)
{
    const FSCNN_VEC zero = (FSCNN_VEC){0};
    const FSCNN_VEC six = zero + 6.0f;
    v = FSCNN_VSEL(v < zero, zero, v);
    return FSCNN_VSEL(v > six, six, v);
}

#if FSCNN_PASTE(FSCNN_VMATH, FSCNN_LEVEL)
/* exp(v) per lane for v <= 0 (all sigmoid needs), see the header comment; underflows through
 * the subnormals to 0, NaN stays NaN. v is clamped at -104 (exp is 0 in float32 below) so that
 * n is in [-150, 0], and 2^n is applied as 2^(n>>1) * 2^(n-(n>>1)), two normal floats: the
 * first product is exact, the second rounds once into the subnormals. n is read from the bits
 * of the rounding sum (1.5*2^23 + n has them in its mantissa): no float->int conversion, so a
 * NaN lane is harmless garbage times NaN; the masks keep the shifts in range. */
FSCNN_TARGET static inline FSCNN_VEC FSCNN_VEXPNEG(FSCNN_VEC v)
{
    const FSCNN_VEC zero = (FSCNN_VEC){0};
    FSCNN_VEC x = FSCNN_VSEL(v < zero - 104.0f, zero - 104.0f, v);
    /* n = round(x / ln2) by the 1.5*2^23 trick, r = x - n ln2 in two parts (Cody-Waite) */
    const FSCNN_VEC magic = zero + 12582912.0f;
    const FSCNN_VEC nm = x * 1.44269504088896341f + magic, n = nm - magic;
    x = x - n * 0.693359375f;
    x = x - n * -2.12194440e-4f;
    FSCNN_VEC p = zero + 1.9875691500e-4f;
    p = p * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    p = p * (x * x) + x + 1.0f;
    const FSCNN_IVEC ni = (FSCNN_IVEC)nm - 0x4B400000, n1 = ni >> 1;
    p = p * (FSCNN_VEC)(((n1 + 127) & 0xFF) << 23);
    return p * (FSCNN_VEC)(((ni - n1 + 127) & 0xFF) << 23);
}

/* sigmoid as 1/(1+e) for v >= 0 and e/(1+e) for v < 0 with e = exp(-|v|) <= 1: no overflow,
 * and tiny results for large negative v stay subnormals rather than being flushed. */
FSCNN_TARGET static inline FSCNN_VEC FSCNN_VSIGMOID(FSCNN_VEC v)
{
    const FSCNN_VEC zero = (FSCNN_VEC){0};
    const FSCNN_IVEC sign = (FSCNN_IVEC){0} + INT32_MIN;
    const FSCNN_VEC e = FSCNN_VEXPNEG((FSCNN_VEC)((FSCNN_IVEC)v | sign));  /* exp(-|v|) */
    const FSCNN_VEC r = 1.0f / (e + 1.0f);
    return FSCNN_VSEL(v < zero, e * r, r);
}
#endif

/* act (an FSCNN_ACT_* code; the caller skips FSCNN_ACT_NONE) applied to v. */
FSCNN_TARGET static inline FSCNN_VEC FSCNN_VACT(FSCNN_VEC v, int act)
{
    const FSCNN_VEC zero = (FSCNN_VEC){0};
    switch (act) {
    case FSCNN_ACT_RELU: return FSCNN_VSEL(v < zero, zero, v);
    case FSCNN_ACT_RELU6: return FSCNN_VRELU6(v);
    /* x * relu6(x + 3) / 6 and relu6(x + 3) / 6, in torch's order of operations */
    case FSCNN_ACT_HARDSWISH: return v * FSCNN_VRELU6(v + 3.0f) / 6.0f;
    case FSCNN_ACT_HARDSIGMOID: return FSCNN_VRELU6(v + 3.0f) / 6.0f;
    default: break;
    }
#if FSCNN_PASTE(FSCNN_VMATH, FSCNN_LEVEL)
    if (act == FSCNN_ACT_SIGMOID) return FSCNN_VSIGMOID(v);
    if (act == FSCNN_ACT_SILU) return v * FSCNN_VSIGMOID(v);
#else
    /* baseline: the C library's expf, lane by lane */
    for (int i = 0; i < FSCNN_VL; i++) v[i] = fscnn_act(v[i], act);
#endif
    return v;
}

/* x[0 .. n) = act(x[0 .. n)) in place, act != FSCNN_ACT_NONE: for kernels whose epilogue is a
 * pass over a stored run and for the standalone activation. The tail goes through a
 * zero-padded vector, so every element gets this level's arithmetic and nothing past x[n-1]
 * is read or written. */
FSCNN_TARGET static void FSCNN_VACT_ARRAY(float *restrict x, int64_t n, int act)
{
    int64_t i = 0;
    for (; i + FSCNN_VL <= n; i += FSCNN_VL) {
        FSCNN_VEC v;
        memcpy(&v, x + i, sizeof v);
        v = FSCNN_VACT(v, act);
        memcpy(x + i, &v, sizeof v);
    }
    if (i < n) {
        FSCNN_VEC v = (FSCNN_VEC){0};
        memcpy(&v, x + i, (size_t)(n - i) * sizeof(float));
        v = FSCNN_VACT(v, act);
        memcpy(x + i, &v, (size_t)(n - i) * sizeof(float));
    }
}

/* x[0 .. n) = act(x[0 .. n) + r[0 .. n)) in place (act may be FSCNN_ACT_NONE): a residual
 * connection added to a stored run of a kernel's output, element for element as the epilogues
 * add it in registers (the sum, then FSCNN_VACT). */
FSCNN_TARGET static inline void FSCNN_PASTE(fscnn_vadd_residual, FSCNN_LEVEL)(
        float *restrict x, const float *restrict r, int64_t n, int act)
{
    FSCNN_IVDEP
    for (int64_t i = 0; i < n; i++) x[i] += r[i];
    if (act != FSCNN_ACT_NONE) FSCNN_VACT_ARRAY(x, n, act);
}

#undef FSCNN_LEVEL
