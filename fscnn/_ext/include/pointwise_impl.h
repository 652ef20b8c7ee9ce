/* Dense 1x1 convolution (pointwise GEMM) micro-kernel: one SIMD target's copy.
 *
 * Included once per instantiation by pointwise.h with FSCNN_LEVEL, FSCNN_SUFFIX (see
 * fscnn_common.h), PW_NV (vectors of positions) and PW_MR (output channels) defined; they are
 * undefined again at the end of this file.
 *
 * Design: output (O, L) = W (O, K) . X (K, L), positions contiguous in X and in the output.
 * A tile is MR output channels x T = NV*VL positions: MR*NV accumulators stay in registers
 * across all K input channels; per channel the kernel loads NV vectors of X once and multiplies
 * each by MR broadcast weights (MR*NV FMAs per NV + MR loads, against one load per FMA in the
 * sparse kernel). The weights are packed (O/MR, K, MR) so the MR values of one input channel
 * are adjacent. Bias and activation are applied in registers before the only store.
 */

#ifndef PW_STRIP_MIN_K
#define PW_STRIP_MIN_K 256  /* input channels from which pw_items copies its strip */
#endif
#define PWVEC FSCNN_VEC
#define PW_VL FSCNN_VL
#define PW_T (PW_VL * PW_NV)

/* Output channels [ob*MR, ob*MR + rows) x positions [p0, p0+T), of which [p0 + skip, p0+T)
 * are stored.
 * xp: the tile's input strip, K rows of T floats ldx apart. wp: packed weights of block ob,
 * (K, MR). bias: (O,) or NULL. out: (O, ldo). */
FSCNN_TARGET static void FSCNN_FN(pw_tile)(
        const float *restrict xp, int64_t ldx, const float *restrict wp, int64_t K,
        const float *restrict bias, int64_t o0, int rows, float *restrict out, int64_t ldo,
        int64_t p0, int64_t skip, int act, const float *restrict res, int res_act)
{
    PWVEC acc[PW_MR][PW_NV];
#pragma GCC unroll 16
    for (int i = 0; i < PW_MR; i++) {
        const float b = (bias && i < rows) ? bias[o0 + i] : 0.0f;
#pragma GCC unroll 16
        for (int v = 0; v < PW_NV; v++) acc[i][v] = (PWVEC){0} + b;
    }
    for (int64_t k = 0; k < K; k++) {
        PWVEC xv[PW_NV];
#pragma GCC unroll 16
        for (int v = 0; v < PW_NV; v++) memcpy(&xv[v], xp + v * PW_VL, sizeof(PWVEC));
        xp += ldx;
#pragma GCC unroll 16
        for (int i = 0; i < PW_MR; i++) {
            const float wk = wp[k * PW_MR + i];
            const PWVEC w = {FSCNN_BCAST(wk)};
#pragma GCC unroll 16
            for (int v = 0; v < PW_NV; v++) acc[i][v] += w * xv[v];
        }
    }
    if (act != FSCNN_ACT_NONE) {
#pragma GCC unroll 16
        for (int i = 0; i < PW_MR; i++) {
#pragma GCC unroll 16
            for (int v = 0; v < PW_NV; v++) acc[i][v] = FSCNN_VACT(acc[i][v], act);
        }
    }
    for (int i = 0; i < rows; i++) {
        float *restrict o = out + (o0 + i) * ldo + p0;
        if (skip) {
            float tmp[PW_T];
            memcpy(tmp, acc[i], sizeof tmp);
            memcpy(o + skip, tmp + skip, (size_t)(PW_T - skip) * sizeof(float));
            if (res)
                FSCNN_PASTE(fscnn_vadd_residual, FSCNN_LEVEL)(
                    o + skip, res + (o0 + i) * ldo + p0 + skip, PW_T - skip, res_act);
            continue;
        }
        if (res) {  /* the residual connection, in registers before the only store */
            const float *restrict r = res + (o0 + i) * ldo + p0;
#pragma GCC unroll 16
            for (int v = 0; v < PW_NV; v++) {
                PWVEC rv;
                memcpy(&rv, r + v * PW_VL, sizeof rv);
                acc[i][v] += rv;
                if (res_act != FSCNN_ACT_NONE) acc[i][v] = FSCNN_VACT(acc[i][v], res_act);
            }
        }
#pragma GCC unroll 16
        for (int v = 0; v < PW_NV; v++) memcpy(o + v * PW_VL, &acc[i][v], sizeof(PWVEC));
    }
}

/* Output blocks [b0, b1) x position tile t of one image. L: positions; the last tile is moved
 * back to end at L and stores only the positions past the tile before it (another work item:
 * two threads never write the same output), so L >= T is required: the caller copies a
 * shorter input into a T-wide buffer. strip: NULL, or the thread's scratch of K*T floats
 * (see below) where x's rows are a plane apart; the dense kernel's panels, whose rows are
 * whole vectors already, pass NULL. */
FSCNN_TARGET static void FSCNN_FN(pw_items)(
        const pw_layer *lay, const float *restrict x, int64_t ldx, float *restrict out,
        int64_t ldo, int64_t L, int64_t t, int64_t b0, int64_t b1, float *restrict strip)
{
    const float *restrict wpack = lay->wpack, *restrict bias = lay->bias;
    const int64_t K = lay->K, O = lay->O;
    int64_t p0 = t * PW_T, skip = 0;
    if (p0 + PW_T > L) {
        skip = p0 - (L - PW_T);
        p0 = L - PW_T;
    }
    /* Every output block reads the same strip of K rows of T positions. Read in place its
     * rows are ldx floats apart, so most of them straddle cache lines (a 14x14 plane: rows
     * of 784 bytes); copied once into K contiguous rows of T aligned floats they never do.
     * Against reading in place, one thread, AVX2 (the best of 5 alternating processes):
     * K 256-2048 x1.03-1.20 (256->64 at 56x56 x1.14, 2048->512 at 7x7 x1.20), K 96-192
     * x0.99-1.08, K 16-24 x0.94-0.95 (the copy is not repaid on short strips). */
    const float *restrict xs = x + p0;
    int64_t lds = ldx;
    if (strip && b1 - b0 > 1 && K >= PW_STRIP_MIN_K) {
        for (int64_t k = 0; k < K; k++)
            memcpy(strip + k * PW_T, x + k * ldx + p0, PW_T * sizeof(float));
        xs = strip;
        lds = PW_T;
    }
    for (int64_t b = b0; b < b1; b++) {
        const int64_t o0 = b * PW_MR;
        const int rows = (int)((O - o0 < PW_MR) ? O - o0 : PW_MR);
        FSCNN_FN(pw_tile)(xs, lds, wpack + b * K * PW_MR, K, bias, o0, rows, out, ldo, p0,
                          skip, lay->act, lay->res, lay->res_act);
    }
}

#undef PWVEC
#undef PW_T
#undef PW_VL
#undef PW_NV
#undef PW_MR
#undef FSCNN_SUFFIX
#undef FSCNN_LEVEL
