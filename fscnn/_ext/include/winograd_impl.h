/* Winograd F(4x4, 3x3) input and output transforms: one SIMD target's copy.
 *
 * Included by winograd.h with FSCNN_LEVEL and FSCNN_SUFFIX defined (see fscnn_common.h); both
 * are undefined again at the end. Plain C: the loops run over tiles (or over the
 * columns of a row of tiles) innermost so that the compiler vectorises them at -O3 for each
 * target. FSCNN_IVDEP: the buffers of a loop never overlap, and without it GCC needs more
 * run-time alias checks than it allows and leaves the loops scalar.
 */
/* Input transform V = B^T d B of tiles [t0, t0+cnt) (row-major tile index over a tiles_h x
 * tiles_w grid) of one image x (C, H, W) whose padded input starts pad_top rows above and
 * pad_left columns left of x (sizes from lay, see wino_layer in winograd.h). Tile t = (ty, tx) reads padded rows 4ty..4ty+5 and columns
 * 4tx..4tx+5; positions outside x read zero.
 * V: (36, C, cnt) floats, element (a, c, s) = transformed tile t0+s, a = 6*k + l.
 * tmp: 7 * wino_row_len(tiles_w) floats. */
FSCNN_TARGET static void FSCNN_FN(wino_input)(const wino_layer *lay, const float *x,
        int64_t t0, int64_t cnt, float *V, float *tmp)
{
    const int64_t C = lay->C, H = lay->H, W = lay->W, pad_top = lay->pad_top,
                  pad_left = lay->pad_left, tiles_w = lay->tiles_w;
    const int64_t RW = wino_row_len(tiles_w);
    float *zero = tmp, *f = tmp + RW;
    const int64_t plane = C * cnt;  /* distance between consecutive a */
    memset(zero, 0, (size_t)RW * sizeof(float));
    int64_t t = t0;
    while (t < t0 + cnt) {
        const int64_t ty = t / tiles_w, tx0 = t - ty * tiles_w;
        const int64_t seg = (tiles_w - tx0 < t0 + cnt - t) ? tiles_w - tx0 : t0 + cnt - t;
        const int64_t s0 = t - t0, width = 4 * seg + 2, col0 = 4 * tx0 - pad_left;
        /* columns [jlo, jhi) of the segment's 6 x width window lie inside x */
        int64_t jlo = -col0, jhi = W - col0;
        if (jlo < 0) jlo = 0;
        if (jlo > width) jlo = width;
        if (jhi > width) jhi = width;
        if (jhi < jlo) jhi = jlo;
        const int64_t n = jhi - jlo;
        for (int64_t c = 0; c < C; c++) {
            const float *xc = x + c * H * W;
            const float *rp[6];  /* the window's rows from column jlo on: x itself, or zeros */
            for (int64_t i = 0; i < 6; i++) {
                const int64_t y = 4 * ty - pad_top + i;
                rp[i] = (y < 0 || y >= H || n == 0) ? zero : xc + y * W + col0 + jlo;
            }
            /* columns: f[k] = sum_i BT[k][i] r[i], read straight from x (zero outside) */
            const float *r0 = rp[0], *r1 = rp[1], *r2 = rp[2], *r3 = rp[3], *r4 = rp[4],
                        *r5 = rp[5];
            float *f0 = f + jlo, *f1 = f + RW + jlo, *f2 = f + 2 * RW + jlo,
                  *f3 = f + 3 * RW + jlo, *f4 = f + 4 * RW + jlo, *f5 = f + 5 * RW + jlo;
            for (int64_t k = 0; k < 6; k++) {
                memset(f + k * RW, 0, (size_t)jlo * sizeof(float));
                memset(f + k * RW + jhi, 0, (size_t)(width - jhi) * sizeof(float));
            }
            FSCNN_IVDEP
            for (int64_t j = 0; j < n; j++) {
                const float d0 = r0[j], d1 = r1[j], d2 = r2[j], d3 = r3[j], d4 = r4[j], d5 = r5[j];
                WINO_BT(f0[j], f1[j], f2[j], f3[j], f4[j], f5[j], d0, d1, d2, d3, d4, d5);
            }
            /* rows: V[6k + l] = sum_j BT[l][j] f[k][4t + j] */
            for (int64_t k = 0; k < 6; k++) {
                const float *fk = f + k * RW;
                float *v = V + 6 * k * plane + c * cnt + s0;
                FSCNN_IVDEP
                for (int64_t s = 0; s < seg; s++) {
                    const float *q = fk + 4 * s;
                    const float d0 = q[0], d1 = q[1], d2 = q[2], d3 = q[3], d4 = q[4], d5 = q[5];
                    WINO_BT(v[s], v[plane + s], v[2 * plane + s], v[3 * plane + s],
                            v[4 * plane + s], v[5 * plane + s], d0, d1, d2, d3, d4, d5);
                }
            }
        }
        t += seg;
    }
}

/* Output transform Y = A^T m A of tiles [t0, t0+cnt) for all O output channels, plus bias and
 * activation (from lay); stores only outputs inside (H_out, W_out) of out (O, H_out, W_out).
 * M: (36, O, cnt) floats. tmp: 28 * wino_row_len(tiles_w) floats. */
FSCNN_TARGET static void FSCNN_FN(wino_output)(const wino_layer *lay, const float *M,
        int64_t t0, int64_t cnt, float *out, float *tmp)
{
    const int64_t O = lay->O, tiles_w = lay->tiles_w, H_out = lay->H_out, W_out = lay->W_out;
    const float *bias = lay->bias;
    const int act = lay->act;
    const int64_t RW = wino_row_len(tiles_w);
    float *z = tmp, *yrow = tmp + 24 * RW;
    const int64_t plane = O * cnt;
    int64_t t = t0;
    while (t < t0 + cnt) {
        const int64_t ty = t / tiles_w, tx0 = t - ty * tiles_w;
        const int64_t seg = (tiles_w - tx0 < t0 + cnt - t) ? tiles_w - tx0 : t0 + cnt - t;
        const int64_t s0 = t - t0, x0 = 4 * tx0;
        const int64_t ncol = (4 * seg < W_out - x0) ? 4 * seg : W_out - x0;
        int64_t nrow = H_out - 4 * ty;
        if (nrow > 4) nrow = 4;
        for (int64_t o = 0; o < O; o++) {
            const float b = bias ? bias[o] : 0.0f;
            /* columns: z[rr][l] = sum_k AT[rr][k] m[k][l] */
            for (int64_t l = 0; l < 6; l++) {
                const float *m = M + l * plane + o * cnt + s0;
                float *z0 = z + l * RW, *z1 = z + (6 + l) * RW, *z2 = z + (12 + l) * RW,
                      *z3 = z + (18 + l) * RW;
                FSCNN_IVDEP
                for (int64_t s = 0; s < seg; s++) {
                    const float m0 = m[s], m1 = m[6 * plane + s], m2 = m[12 * plane + s],
                                m3 = m[18 * plane + s], m4 = m[24 * plane + s],
                                m5 = m[30 * plane + s];
                    WINO_AT(z0[s], z1[s], z2[s], z3[s], m0, m1, m2, m3, m4, m5);
                }
            }
            /* rows: y[rr][cc] = sum_l AT[cc][l] z[rr][l], then bias and activation */
            for (int64_t rr = 0; rr < nrow; rr++) {
                const float *zr = z + 6 * rr * RW;
                float *orow = out + (o * H_out + 4 * ty + rr) * W_out + x0;
                float *dst = (ncol == 4 * seg) ? orow : yrow;  /* whole tiles: straight to out */
                FSCNN_IVDEP
                for (int64_t s = 0; s < seg; s++) {
                    const float m0 = zr[s], m1 = zr[RW + s], m2 = zr[2 * RW + s],
                                m3 = zr[3 * RW + s], m4 = zr[4 * RW + s], m5 = zr[5 * RW + s];
                    float y0, y1, y2, y3;
                    WINO_AT(y0, y1, y2, y3, m0, m1, m2, m3, m4, m5);
                    dst[4 * s] = y0 + b;
                    dst[4 * s + 1] = y1 + b;
                    dst[4 * s + 2] = y2 + b;
                    dst[4 * s + 3] = y3 + b;
                }
                /* activation in its own contiguous pass: inside the loop above it kept GCC
                 * from vectorising the interleaved stores */
                if (act != FSCNN_ACT_NONE) FSCNN_VACT_ARRAY(dst, ncol, act);
                if (dst == yrow) memcpy(orow, yrow, (size_t)ncol * sizeof(float));
            }
        }
        t += seg;
    }
}

#undef FSCNN_SUFFIX
#undef FSCNN_LEVEL
