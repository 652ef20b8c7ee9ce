/* Depthwise convolution kernel: one SIMD target's copy.
 *
 * Included once per instantiation by dwconv.h with FSCNN_LEVEL, FSCNN_SUFFIX (see
 * fscnn_common.h) and DW_NV (accumulator vectors) defined; they are undefined again at the end
 * of this file.
 *
 * Design: the input channel has been packed into its phase planes (conv_pack.h) in a per-thread
 * buffer that stays in L1/L2, so output position p = y*Wq + x of every output channel fed by it
 * is one contiguous run of H_out*Wq positions, and tap k reads the run shifted by offsets[k].
 * A tile of T = NV*VL positions keeps NV vector accumulators in registers across the channel's
 * taps (broadcast weight, one load, one FMA per vector); taps whose weight is zero are not
 * stored, so a pruned depthwise layer skips them. Tiles are stored whole into `wide` and the
 * W_out valid columns of each row are copied to the output.
 */

#define DWVEC FSCNN_VEC
#define DW_VL FSCNN_VL
#define DW_T (DW_VL * DW_NV)

/* One output's taps [k0, k1) over nvec <= DW_NV vectors of positions p0 ..: acc = bias +
 * sum_k values[k] * in[offsets[k] + p], the activation, stored to dst + p0. Both kernels below
 * call it; inlined with nvec == DW_NV (whole tiles) its guards fold away. */
FSCNN_TARGET static inline __attribute__((always_inline)) void FSCNN_FN(dw_tile)(
        const float *restrict in, const int32_t *restrict offsets,
        const float *restrict values, int64_t k0, int64_t k1, float bias, int act, int64_t p0,
        int nvec, float *restrict dst)
{
    const DWVEC zero = (DWVEC){0};
    DWVEC acc[DW_NV];
#pragma GCC unroll 16
    for (int v = 0; v < DW_NV; v++) acc[v] = zero + bias;
    for (int64_t k = k0; k < k1; k++) {
        const DWVEC w = {FSCNN_BCAST(values[k])};
        const float *restrict p = in + offsets[k] + p0;
#pragma GCC unroll 16
        for (int v = 0; v < DW_NV; v++) {
            if (v < nvec) {
                DWVEC x;
                memcpy(&x, p + v * DW_VL, sizeof x);
                acc[v] += w * x;
            }
        }
    }
#pragma GCC unroll 16
    for (int v = 0; v < DW_NV; v++) {
        if (v < nvec) {
            if (act != FSCNN_ACT_NONE) acc[v] = FSCNN_VACT(acc[v], act);
            memcpy(dst + p0 + v * DW_VL, &acc[v], sizeof acc[v]);
        }
    }
}

/* Output channels [o0, o1) of one image, all fed by the input channel packed in `in`.
 * lay:     the layer (dwconv_layer, dwconv.h).
 * in:      the channel's phase planes, readable up to max(offsets) + H_out*Wq + T.
 * wide:    scratch of H_out*Wq + T floats.
 * out:     (O, H_out, W_out) of this image. */
FSCNN_TARGET static void FSCNN_FN(dwconv_channels)(
        const dwconv_layer *lay, const float *restrict in, int64_t o0, int64_t o1,
        float *restrict wide, float *restrict out)
{
    const int64_t *restrict ptr = lay->ptr;
    const int32_t *restrict offsets = lay->offsets;
    const float *restrict values = lay->values, *restrict bias = lay->bias;
    const int64_t Wq = lay->Wq, H_out = lay->H_out, W_out = lay->W_out;
    const int act = lay->act;
    const int64_t L = H_out * Wq, plane = H_out * W_out;
    for (int64_t o = o0; o < o1; o++) {
        const float bo = bias ? bias[o] : 0.0f;
        for (int64_t p0 = 0; p0 < L; p0 += DW_T)
            FSCNN_FN(dw_tile)(in, offsets, values, ptr[o], ptr[o + 1], bo, act, p0, DW_NV, wide);
        float *restrict orow = out + o * plane;
        if (Wq == W_out) {
            memcpy(orow, wide, (size_t)plane * sizeof(float));
        } else if (W_out >= DW_VL) {
            /* rows of whole vectors, the last one overlapping the one before: a memcpy call
             * per row of 7-56 floats was 3% of MobileNetV2 */
            for (int64_t y = 0; y < H_out; y++) {
                const float *restrict src = wide + y * Wq;
                float *restrict dst = orow + y * W_out;
                for (int64_t x = 0;; x += DW_VL) {
                    if (x + DW_VL > W_out) x = W_out - DW_VL;
                    DWVEC v;
                    memcpy(&v, src + x, sizeof v);
                    memcpy(dst + x, &v, sizeof v);
                    if (x + DW_VL == W_out) break;
                }
            }
        } else {
            for (int64_t y = 0; y < H_out; y++)
                fscnn_copy_small(orow + y * W_out, wide + y * Wq, W_out);
        }
    }
}

/* One channel of a 1x1 convolution (stride 1, no padding) feeding a depthwise layer: the
 * expanded plane dst[p] = act(bias + sum_k values[k] * x[offsets[k] + p]) for p < HW, from
 * the taps [k0, k1) of the channel (zeros dropped; offsets[k] = the tap's input channel * HW).
 * It replaces the depthwise kernel's packing of that plane from memory (see
 * ExpandDepthwiseConv in _conv.pyx): MobileNetV2's expanded tensors (96x112x112: 4.8 MB) then
 * never leave the thread's cache.
 * x:   one image (C, HW), read only at the taps' channels and positions < HW.
 * dst: HW floats. */
FSCNN_TARGET static void FSCNN_FN(dwconv_expand)(
        const int32_t *restrict offsets, const float *restrict values, int64_t k0, int64_t k1,
        float bias, int act, const float *restrict x, int64_t HW, float *restrict dst)
{
    int64_t p0 = 0;
    for (; p0 + DW_T <= HW; p0 += DW_T)
        FSCNN_FN(dw_tile)(x, offsets, values, k0, k1, bias, act, p0, DW_NV, dst);
    /* the whole vectors of the last partial tile at once: one vector at a time chained every
     * tap's FMA latency, and was most of a 7x7 plane's expansion */
    const int nvec = (int)((HW - p0) / DW_VL);
    if (nvec > 0) {
        FSCNN_FN(dw_tile)(x, offsets, values, k0, k1, bias, act, p0, nvec, dst);
        p0 += nvec * DW_VL;
    }
    for (; p0 < HW; p0++) {  /* fewer than a vector: no load may pass the plane's end */
        float s = bias;
        for (int64_t k = k0; k < k1; k++) s += values[k] * x[offsets[k] + p0];
        dst[p0] = fscnn_act(s, act);
    }
}

#undef DWVEC
#undef DW_T
#undef DW_VL
#undef DW_NV
#undef FSCNN_SUFFIX
#undef FSCNN_LEVEL
