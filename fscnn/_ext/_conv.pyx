"""Convolution kernels: direct sparse (register-blocked SIMD), dense (flat im2col + SGEMM),
Winograd F(4x4, 3x3) (transforms in C, 36 SGEMMs per chunk of tiles) and depthwise (one input
channel per group, a channel at a time in cache).

Callers (fscnn.ops) validate every argument; nothing here checks shapes or index bounds. Arrays
are C-contiguous float32 unless said otherwise; outputs are preallocated by the caller.
"""
from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm

cdef extern from "spconv.h" nogil:
    int64_t spconv_tile_size(int level, int half)
    int64_t spconv_vector_len(int level)
    void spconv_items(int level, int half, const float *inp, const int64_t *ptr, int64_t ncb,
                      int64_t R, const int32_t *offsets, const float *values, const float *bias, float *out,
                      float *partial, const int64_t *oblk, int64_t n_oblk, int64_t i0, int64_t i1,
                      int64_t Wq, int64_t H_out, int64_t W_out, int act)
    void conv_pack(const float *x, int64_t c0, int64_t c1, int64_t H, int64_t W,
                   int64_t pad_top, int64_t pad_left, int64_t sh, int64_t sw,
                   int64_t Hq, int64_t Wq, int64_t plane, int one_phase, float *buf)
    void conv_scatter(const float *wide, int64_t ld, int64_t n_out, int64_t o0, int64_t q0,
                      int64_t n, const float *bias, int act, int64_t Wq, int64_t H_out,
                      int64_t W_out, float *out)

cdef extern from "fscnn_pool.h" nogil:
    void fscnn_maxpool2x2_row(const float *r0, const float *r1, float *out, Py_ssize_t n)

cdef extern from "dwconv.h" nogil:
    int64_t dwconv_tile_size(int level)
    void dwconv_channels(int level, const float *inp, const int64_t *ptr, const int32_t *offsets,
                         const float *values, const float *bias, int64_t o0, int64_t o1,
                         float *wide, float *out, int64_t Wq, int64_t H_out, int64_t W_out,
                         int act)

cdef extern from "pointwise.h" nogil:
    ctypedef void (*pw_items_fn)(const float *x, int64_t ldx, const float *wpack, int64_t K,
                                 int64_t O, const float *bias, float *out, int64_t ldo,
                                 int64_t L, int64_t t, int64_t b0, int64_t b1, int act)
    ctypedef struct pw_variant:
        int64_t mr
        int64_t t
        pw_items_fn fn
    const pw_variant *pw_variants "pointwise_variants"(int level, int *n)

cdef extern from "winograd.h" nogil:
    int64_t wino_tmp_len(int64_t tiles_w)
    void wino_input(int level, const float *x, int64_t C, int64_t H, int64_t W, int64_t pad_top,
                    int64_t pad_left, int64_t tiles_w, int64_t t0, int64_t cnt, float *V,
                    float *tmp)
    void wino_output(int level, const float *M, int64_t O, int64_t tiles_w, int64_t t0,
                     int64_t cnt, const float *bias, int act, int64_t H_out, int64_t W_out,
                     float *out, float *tmp)


def depthwise_tile_size(int level):
    """Output positions per depthwise-kernel tile at SIMD level ``level``."""
    return dwconv_tile_size(level)


def pointwise_variants(int level):
    """(output channels per block, positions per tile) of each pointwise-kernel variant at
    SIMD level ``level``."""
    cdef int n, v
    cdef const pw_variant *vs = pw_variants(level, &n)
    return [(vs[v].mr, vs[v].t) for v in range(n)]


def winograd_tmp_len(int64_t tiles_w):
    """Floats of transform scratch per thread for a grid ``tiles_w`` tiles wide."""
    return wino_tmp_len(tiles_w)


def tile_size(int level, bint half):
    """Output positions per micro-kernel tile at SIMD level ``level`` (full or half tile)."""
    return spconv_tile_size(level, half)


def vector_len(int level):
    """Floats per vector of the sparse kernel at SIMD level ``level``: the alignment of its
    packed rows and loads."""
    return spconv_vector_len(level)


cdef void _pack_image(const float *x, int64_t C, int64_t H, int64_t W, int64_t pad_top,
                      int64_t pad_left, int64_t sh, int64_t sw, int64_t Hq, int64_t Wq,
                      int64_t plane, bint one_phase, float *buf, int n_threads) noexcept nogil:
    cdef int64_t c
    for c in prange(C, num_threads=n_threads, schedule="dynamic"):
        conv_pack(x, c, c + 1, H, W, pad_top, pad_left, sh, sw, Hq, Wq, plane, one_phase, buf)


cdef const float *_packed_image(const float *x, int64_t C, int64_t H, int64_t W,
                                int64_t pad_top, int64_t pad_left, int64_t sh, int64_t sw,
                                int64_t Hq, int64_t Wq, bint one_phase, bint pack, float *buf,
                                int n_threads, int64_t plane=-1) noexcept nogil:
    """The packed layout of image x: packed into buf (planes ``plane`` floats apart, Hq*Wq by
    default), or x itself when ``pack`` is false (an unpadded 1x1 stride-1 layer, whose input
    already has that layout)."""
    if not pack:
        return x
    _pack_image(x, C, H, W, pad_top, pad_left, sh, sw, Hq, Wq, Hq * Wq if plane < 0 else plane,
                one_phase, buf, n_threads)
    return buf


def sparse_conv2d(const float[:, :, :, ::1] x,       # IN  (N, C, H, W)
                  const int64_t[:, ::1] ptr,          # IN  (O, ncb*R+1) non-zeros per (block, residue)
                  int R,                              # IN  residues (see spconv_impl.h)
                  const int32_t[::1] offsets,         # IN  (nnz,) aligned positions in the packed image
                  const float[::1] values,            # IN  (nnz,) in the order of offsets
                  const float[::1] bias,              # IN  (O,) or None
                  const int64_t[::1] oblk,            # IN  (n_oblk+1,) output-channel blocks
                  float[::1] buf,                     # SCRATCH packed image + tail, tail zeroed,
                                                      #   vector-aligned
                  float[:, ::1] partial,              # SCRATCH (n_threads, largest block * tile)
                  float[:, :, :, ::1] out,            # OUT (N, O, H_c, W_c) computed positions
                  int pad_top, int pad_left, int sh, int sw, int Hq, int Wq, int64_t plane,
                  int64_t Wc, int act, int level, bint half, bint pack, bint one_phase,
                  int n_threads):
    """Direct sparse convolution, O(N * nnz * H_c * Wc) multiply-adds.

    The input is packed into planes of Hq rows of Wq floats, ``plane`` floats apart; output
    (y, x) is flat position y*Wc + x of the packed image's positions (Wc == Wq, or an unpadded
    1x1 layer viewed as one row: H_c == 1, W_c == H_out*W_out, Wc == plane).
    ``pack`` false: x already has the packed layout (an unpadded 1x1 stride-1 layer whose
    planes are a whole number of vectors, vector-aligned) and is read in place; ``buf`` is
    then unused. ``one_phase``: only phase (0, 0) of each channel is packed (see conv_pack)."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t H_out = out.shape[2], W_out = out.shape[3]
    cdef int64_t ncb = (ptr.shape[1] - 1) // R
    cdef int64_t n_oblk = oblk.shape[0] - 1
    cdef int64_t T = spconv_tile_size(level, half)
    cdef int64_t n_tiles = (H_out * Wc + T - 1) // T
    cdef int64_t n_items = n_tiles * n_oblk
    cdef const float *bptr = &bias[0] if bias is not None else NULL
    cdef const int32_t *optr = &offsets[0] if offsets.shape[0] else NULL
    cdef const float *vptr = &values[0] if values.shape[0] else NULL
    cdef int64_t n, i
    cdef const float *src
    if N == 0 or out.shape[1] == 0 or H_out == 0 or W_out == 0:
        return
    with nogil:
        for n in range(N):
            src = _packed_image(&x[n, 0, 0, 0], C, H, W, pad_top, pad_left, sh, sw, Hq, Wq,
                                one_phase, pack, &buf[0], n_threads, plane)
            for i in prange(n_items, num_threads=n_threads, schedule="dynamic"):
                spconv_items(level, half, src, &ptr[0, 0], ncb, R, optr, vptr, bptr,
                             &out[n, 0, 0, 0], &partial[threadid(), 0], &oblk[0], n_oblk, i,
                             i + 1, Wc, H_out, W_out, act)


def sparse_conv2d_maxpool2(const float[:, :, :, ::1] x,  # IN  (N, C, H, W)
                           const int64_t[:, ::1] ptr,       # IN  as in sparse_conv2d
                           int R,                           # IN
                           const int32_t[::1] offsets,      # IN
                           const float[::1] values,         # IN
                           const float[::1] bias,           # IN  (O,) or None
                           const int64_t[::1] oblk,         # IN  (2,): [0, O]
                           float[::1] buf,                  # SCRATCH packed image, readable
                                                            #   to max(offsets) + L + T
                           float[:, ::1] partial,           # SCRATCH (n_threads, O * T)
                           float[:, ::1] band,              # SCRATCH (n_threads, O*band_rows*W_conv)
                           float[:, :, :, ::1] out,         # OUT (N, O, H_conv//2, W_conv//2)
                           int pad_top, int pad_left, int sh, int sw, int Hq, int Wq,
                           int W_conv, int band_rows, int act, int level, bint half,
                           bint one_phase, int n_threads):
    """Direct sparse convolution followed by 2x2 stride-2 max pooling (floor mode), fused: a
    work item is a band of ``band_rows`` (even) convolution output rows of one image, computed
    for all output channels into the thread's ``band`` scratch (the sparse tiles of
    sparse_conv2d, with the band's flat positions) and pooled from there, so the full-size
    convolution output is never written to memory."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t O = out.shape[1], Hpo = out.shape[2], Wpo = out.shape[3]
    cdef int64_t ncb = (ptr.shape[1] - 1) // R
    cdef int64_t T = spconv_tile_size(level, half)
    cdef int64_t n_bands = (2 * Hpo + band_rows - 1) // band_rows
    cdef const float *bptr = &bias[0] if bias is not None else NULL
    cdef const int32_t *optr = &offsets[0] if offsets.shape[0] else NULL
    cdef const float *vptr = &values[0] if values.shape[0] else NULL
    cdef int64_t n, b, r0, rows, o, j
    cdef float *scr
    cdef const float *src
    if N == 0 or O == 0 or Hpo == 0 or Wpo == 0:
        return
    with nogil:
        for n in range(N):
            src = _packed_image(&x[n, 0, 0, 0], C, H, W, pad_top, pad_left, sh, sw, Hq, Wq,
                                one_phase, True, &buf[0], n_threads)
            for b in prange(n_bands, num_threads=n_threads, schedule="dynamic"):
                r0 = b * band_rows
                rows = band_rows if r0 + band_rows <= 2 * Hpo else 2 * Hpo - r0
                scr = &band[threadid(), 0]
                # the band's rows r0 .. r0+rows-1 are flat positions r0*Wq + [0, rows*Wq)
                spconv_items(level, half, src + r0 * Wq, &ptr[0, 0], ncb, R, optr, vptr, bptr,
                             scr, &partial[threadid(), 0], &oblk[0], 1, 0,
                             (rows * Wq + T - 1) // T, Wq, rows, W_conv, act)
                for o in range(O):
                    for j in range(rows // 2):
                        fscnn_maxpool2x2_row(scr + (o * rows + 2 * j) * W_conv,
                                             scr + (o * rows + 2 * j + 1) * W_conv,
                                             &out[n, o, r0 // 2 + j, 0], Wpo)


def dense_conv2d(const float[:, :, :, ::1] x,        # IN  (N, C, H, W)
                 const float[:, ::1] weight,         # IN  (O, Cg*KH*KW), rows in (ci, kh, kw) order
                 const int32_t[::1] tap_offsets,     # IN  (Cg*KH*KW,) positions for group 0
                 int64_t group_stride,               # IN  position shift between groups' inputs
                 const float[::1] bias,              # IN  (O,) or None
                 float[::1] buf,                     # SCRATCH packed image + tail, tail zeroed
                 float[:, ::1] panels,               # SCRATCH (n_threads, (K + O/groups) * chunk)
                 float[:, :, :, ::1] out,            # OUT (N, O, H_out, W_out)
                 int groups, int pad_top, int pad_left, int sh, int sw, int Hq, int Wq,
                 int chunk, int act, bint pack, bint one_phase, int n_threads):
    """Dense convolution as SGEMM over chunks of the flat output: for each chunk of ``chunk``
    positions and each group, the K = Cg*KH*KW shifted input runs are copied into a (K, chunk)
    panel (a plain memcpy per row, thanks to the packed layout) and multiplied by the group's
    (O/groups, K) weights. O(N * O * K * H_out * Wq) multiply-adds. 1x1 kernels read the packed
    planes directly (no panel); ``pack`` false: x already has the packed layout (unpadded 1x1
    stride 1) and is read in place, ``buf`` is then unused. ``one_phase``: see conv_pack."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t O = out.shape[1], H_out = out.shape[2], W_out = out.shape[3]
    cdef int64_t K = weight.shape[1], Og = O // groups
    cdef int64_t L = H_out * Wq
    cdef int64_t n_chunks = (L + chunk - 1) // chunk
    cdef int64_t n_items = n_chunks * groups
    cdef const float *bptr = &bias[0] if bias is not None else NULL
    cdef bint direct = K == C // groups and tap_offsets[0] == 0 and K > 0
    cdef int64_t n, i, g, q0, r, cnt
    cdef float *panel
    cdef float *wide
    cdef const float *bmat
    cdef const float *src
    cdef int m, nn, kk, lda, ldb, ldc
    cdef float one = 1.0, zero = 0.0
    cdef char *no = b"N"
    if N == 0 or O == 0 or H_out == 0 or W_out == 0:
        return
    with nogil:
        for n in range(N):
            src = _packed_image(&x[n, 0, 0, 0], C, H, W, pad_top, pad_left, sh, sw, Hq, Wq,
                                one_phase, pack, &buf[0], n_threads)
            for i in prange(n_items, num_threads=n_threads, schedule="dynamic"):
                panel = &panels[threadid(), 0]
                wide = panel + K * chunk
                g = i % groups
                q0 = (i // groups) * chunk
                cnt = chunk if q0 + chunk <= L else L - q0
                if direct:
                    # 1x1 taps: the (K, cnt) panel is the packed planes themselves
                    bmat = src + g * group_stride + q0
                    ldb = <int> (Hq * Wq if one_phase else sh * sw * Hq * Wq)
                else:
                    for r in range(K):
                        memcpy(panel + r * cnt, src + tap_offsets[r] + g * group_stride + q0,
                               sizeof(float) * cnt)
                    bmat = panel
                    ldb = <int> cnt
                m = <int> cnt
                nn = <int> Og
                kk = <int> K
                lda = <int> K
                ldc = <int> cnt
                if Wq == W_out:
                    # flat positions are output positions (1x1 layers): the GEMM writes into
                    # the output, and the epilogue adds bias and activation in place
                    wide = &out[n, g * Og, 0, 0] + q0
                    ldc = <int> (H_out * W_out)
                # column-major view: wide^T (cnt x Og) = B^T (cnt x K) . W_g^T (K x Og)
                sgemm(no, no, &m, &nn, &kk, &one, <float *> bmat, &ldb,
                      <float *> &weight[g * Og, 0], &lda, &zero, wide, &ldc)
                conv_scatter(wide, ldc, Og, g * Og, q0, cnt, bptr, act, Wq, H_out, W_out,
                             &out[n, 0, 0, 0])


def winograd_conv2d(const float[:, :, :, ::1] x,     # IN  (N, C, H, W)
                    const float[:, :, ::1] U,        # IN  (36, O, C) transformed weights G g G^T
                    const float[::1] bias,           # IN  (O,) or None
                    float[:, ::1] work,              # SCRATCH (n_threads, 36*(C+O)*chunk + tmp)
                    float[:, :, :, ::1] out,         # OUT (N, O, H_out, W_out)
                    int pad_top, int pad_left, int chunk, int act, int level, int n_threads):
    """Winograd F(4x4, 3x3) convolution (see winograd.h). The 4x4 output tiles of each image,
    in row-major order, are cut into chunks of ``chunk`` tiles; a work item (image, chunk)
    transforms its input tiles into V (36, C, cnt), runs the 36 GEMMs M_a = U_a . V_a (O x cnt)
    with single-threaded BLAS and transforms M into the output. Work items are independent and
    computed the same way whatever thread runs them."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t O = out.shape[1], H_out = out.shape[2], W_out = out.shape[3]
    cdef int64_t tiles_w = (W_out + 3) // 4, tiles_h = (H_out + 3) // 4
    cdef int64_t T = tiles_w * tiles_h
    cdef int64_t n_chunks = (T + chunk - 1) // chunk
    cdef const float *bptr = &bias[0] if bias is not None else NULL
    cdef int64_t i, n, t0, cnt, a
    cdef float *V
    cdef float *Mb
    cdef int m, nn, kk, lda, ldb, ldc
    cdef float one = 1.0, zero = 0.0
    cdef char *no = b"N"
    if N == 0 or O == 0 or H_out == 0 or W_out == 0:
        return
    with nogil:
        for i in prange(N * n_chunks, num_threads=n_threads, schedule="dynamic"):
            n = i // n_chunks
            t0 = (i % n_chunks) * chunk
            cnt = chunk if t0 + chunk <= T else T - t0
            V = &work[threadid(), 0]
            Mb = V + 36 * C * cnt
            wino_input(level, &x[n, 0, 0, 0], C, H, W, pad_top, pad_left, tiles_w, t0, cnt, V,
                       Mb + 36 * O * cnt)
            m = <int> cnt
            nn = <int> O
            kk = <int> C
            lda = <int> cnt
            ldb = <int> C
            ldc = <int> cnt
            for a in range(36):
                # column-major view: M_a^T (cnt x O) = V_a^T (cnt x C) . U_a^T (C x O)
                sgemm(no, no, &m, &nn, &kk, &one, V + a * C * cnt, &lda, <float *> &U[a, 0, 0],
                      &ldb, &zero, Mb + a * O * cnt, &ldc)
            wino_output(level, Mb, O, tiles_w, t0, cnt, bptr, act, H_out, W_out,
                        &out[n, 0, 0, 0], Mb + 36 * O * cnt)


def depthwise_conv2d(const float[:, :, :, ::1] x,    # IN  (N, C, H, W)
                     const int64_t[::1] ptr,         # IN  (O+1,) taps of each output channel
                     const int32_t[::1] offsets,     # IN  (n_taps,) positions in a channel's planes
                     const float[::1] values,        # IN  (n_taps,)
                     const float[::1] bias,          # IN  (O,) or None
                     float[:, ::1] work,             # SCRATCH (n_threads, planes + T + 16 + L + T)
                     float[:, :, :, ::1] out,        # OUT (N, O, H_out, W_out), O = mult * C
                     int pad_top, int pad_left, int sh, int sw, int Hq, int Wq, int act,
                     int level, bint one_phase, int n_threads):
    """Depthwise convolution (see dwconv.h): a work item (image, input channel) packs the
    channel's phase planes into the thread's scratch (``work[t, :planes]``, followed by a
    zeroed tail of T + 16 floats that the caller clears) and computes its O/C output channels,
    O(N * n_taps * H_out * Wq) multiply-adds. Items are computed the same way whatever thread
    runs them."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t O = out.shape[1], H_out = out.shape[2], W_out = out.shape[3]
    cdef int64_t mult = O // C if C else 0
    cdef int64_t planes = (1 if one_phase else sh * sw) * Hq * Wq
    cdef int64_t wide_at = planes + dwconv_tile_size(level) + 16
    cdef const float *bptr = &bias[0] if bias is not None else NULL
    cdef const int32_t *optr = &offsets[0] if offsets.shape[0] else NULL
    cdef const float *vptr = &values[0] if values.shape[0] else NULL
    cdef int64_t i, n, c
    cdef float *buf
    if N == 0 or O == 0 or H_out == 0 or W_out == 0:
        return
    with nogil:
        for i in prange(N * C, num_threads=n_threads, schedule="dynamic"):
            n = i // C
            c = i % C
            buf = &work[threadid(), 0]
            conv_pack(&x[n, c, 0, 0], 0, 1, H, W, pad_top, pad_left, sh, sw, Hq, Wq, Hq * Wq, one_phase,
                      buf)
            dwconv_channels(level, buf, &ptr[0], optr, vptr, bptr, c * mult, (c + 1) * mult,
                            buf + wide_at, &out[n, 0, 0, 0], Wq, H_out, W_out, act)


def pointwise_conv2d(const float[:, :, :, ::1] x,    # IN  (N, C, H, W)
                     const float[:, :, ::1] wpack,   # IN  (ceil(O/MR), C, MR) packed weights
                     const float[::1] bias,          # IN  (O,) or None
                     float[::1] buf,                 # SCRATCH packed image (pack true)
                     float[::1] small,               # SCRATCH (C + O) * T floats (L < T)
                     float[:, :, :, ::1] out,        # OUT (N, O, H_out, W_out)
                     int pad_top, int pad_left, int sh, int sw, int Hq, int Wq, int n_bchunks,
                     int act, int level, int variant, bint pack, bint one_phase, int n_threads):
    """Dense 1x1 convolution, groups 1 (see pointwise.h): for each image, work items (position
    tile, chunk of output-channel blocks) of output = W . X, with X the packed planes (or x
    itself when ``pack`` is false) and positions y*Wq + x, Wq == W_out; ``variant`` indexes
    pointwise_variants(level). An image with fewer positions than a tile is computed in
    ``small``. Items are computed the same way whatever thread runs them."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t O = out.shape[1], H_out = out.shape[2], W_out = out.shape[3]
    cdef int n_var
    cdef const pw_variant *var = &pw_variants(level, &n_var)[variant]
    cdef int64_t T = var.t
    cdef pw_items_fn items = var.fn
    cdef int64_t L = H_out * Wq
    cdef int64_t n_blk = wpack.shape[0]
    cdef int64_t bc = (n_blk + n_bchunks - 1) // n_bchunks
    cdef int64_t n_tiles = (L + T - 1) // T
    cdef int64_t n_items = n_tiles * n_bchunks
    cdef int64_t ldx = L if not pack else (Hq * Wq if one_phase else sh * sw * Hq * Wq)
    cdef const float *bptr = &bias[0] if bias is not None else NULL
    cdef int64_t n, i, k, b0, b1
    cdef const float *src
    cdef float *dst
    if N == 0 or O == 0 or H_out == 0 or W_out == 0:
        return
    with nogil:
        for n in range(N):
            src = _packed_image(&x[n, 0, 0, 0], C, H, W, pad_top, pad_left, sh, sw, Hq, Wq,
                                one_phase, pack, &buf[0], n_threads)
            if L < T:
                # fewer positions than a tile: compute T-wide copies, keep the first L columns
                for k in range(C):
                    memcpy(&small[k * T], src + k * ldx, sizeof(float) * L)
                    memset(&small[k * T + L], 0, sizeof(float) * (T - L))
                items(&small[0], T, &wpack[0, 0, 0], C, O, bptr, &small[C * T], T, T, 0, 0,
                      n_blk, act)
                dst = &out[n, 0, 0, 0]
                for k in range(O):
                    memcpy(dst + k * L, &small[(C + k) * T], sizeof(float) * L)
                continue
            for i in prange(n_items, num_threads=n_threads, schedule="dynamic"):
                b0 = (i % n_bchunks) * bc
                b1 = b0 + bc if b0 + bc < n_blk else n_blk
                items(src, ldx, &wpack[0, 0, 0], C, O, bptr, &out[n, 0, 0, 0], L, L,
                      i // n_bchunks, b0, b1, act)
