"""Convolution kernels: direct sparse (register-blocked SIMD), dense (flat im2col + SGEMM),
pointwise (register-blocked GEMM of 1x1 layers), Winograd F(4x4, 3x3) (transforms in C, 36
SGEMMs per chunk of tiles) and depthwise (one input channel per group, a channel at a time in
cache).

Each kernel is a class that a plan (fscnn.kernels) builds once: the constructor keeps the
plan's arrays and sizes as the C struct its micro-kernel reads (spconv_layer, ...), with the
arrays that struct points into; calling the object runs the kernel on one input into a
preallocated output, with the caller's scratch buffers. Callers validate every argument;
nothing here checks shapes or index bounds. Arrays are C-contiguous float32 unless said
otherwise. Thread counts are read into locals before a prange: in a debug build (nonecheck)
the None check of ``self`` in a prange's clause jumps into the OpenMP block, which GCC refuses.
"""
from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm

cdef extern from "fscnn_common.h" nogil:
    enum:
        FSCNN_ACT_NONE
    void fscnn_add_residual(int level, float *out, const float *res, int64_t n, int act)

cdef extern from "conv_pack.h" nogil:
    ctypedef struct conv_packing:
        int64_t H, W, pad_top, pad_left, sh, sw, Hq, Wq, plane
        int one_phase, level
    void conv_pack(const conv_packing *pk, const float *x, int64_t c0, int64_t c1, float *buf)
    void conv_scatter(const float *wide, int64_t ld, int64_t n_out, int64_t o0, int64_t q0,
                      int64_t n, const float *bias, int act, int level, int64_t Wq,
                      int64_t H_out, int64_t W_out, float *out)

cdef extern from "spconv.h" nogil:
    ctypedef struct spconv_layer:
        const int64_t *ptr
        const int32_t *offsets
        const float *values
        const float *bias
        const int64_t *oblk
        int64_t ncb, R, n_oblk, Wq, W_out, O, group
        int act, level, half, block, res_act
    int64_t spconv_tile_size(int level, int half, int block)
    int64_t spconv_vector_len(int level)
    int64_t spconv_n_items(const spconv_layer *k, int64_t H_out)
    void spconv_items(const spconv_layer *k, const float *inp, float *out, const float *res,
                      float *partial, int64_t H_out, int64_t i0, int64_t i1)

cdef extern from "fscnn_pool.h" nogil:
    void fscnn_maxpool2x2_row(const float *r0, const float *r1, float *out, Py_ssize_t n)

cdef extern from "dwconv.h" nogil:
    ctypedef struct dwconv_layer:
        const int64_t *ptr
        const int32_t *offsets
        const float *values
        const float *bias
        int64_t Wq, H_out, W_out
        int act, level
    int64_t dwconv_tile_size(int level)
    void dwconv_channels(const dwconv_layer *lay, const float *inp, int64_t o0, int64_t o1,
                         float *wide, float *out)
    void dwconv_expand(int level, const int32_t *offsets, const float *values, int64_t k0,
                       int64_t k1, float bias, int act, const float *x, int64_t HW, float *dst)
    int dwconv3x3_direct_available(int level)
    void dwconv3x3_direct(const float *inp, int64_t H, int64_t W, int64_t pt, int64_t pl,
                          int64_t sh, int64_t sw, const float *w, float bias, int act,
                          float *out, int64_t H_out, int64_t W_out)

cdef extern from "pointwise.h" nogil:
    ctypedef struct pw_layer:
        const float *wpack
        const float *bias
        const float *res
        int64_t K, O
        int act, res_act
    ctypedef void (*pw_items_fn)(const pw_layer *lay, const float *x, int64_t ldx, float *out,
                                 int64_t ldo, int64_t L, int64_t t, int64_t b0, int64_t b1,
                                 float *strip)
    ctypedef struct pw_variant:
        int64_t mr
        int64_t t
        pw_items_fn fn
    const pw_variant *pw_variants "pointwise_variants"(int level, int *n)

cdef extern from "winograd.h" nogil:
    ctypedef struct wino_layer:
        const float *bias
        int64_t C, H, W, O, H_out, W_out, pad_top, pad_left, tiles_w
        int act, level
    int64_t wino_tmp_len(int64_t tiles_w)
    void wino_input(const wino_layer *lay, const float *x, int64_t t0, int64_t cnt, float *V,
                    float *tmp)
    void wino_output(const wino_layer *lay, const float *M, int64_t t0, int64_t cnt,
                     float *out, float *tmp)


def depthwise_direct_available(int level):
    """Whether the depthwise kernel's direct 3x3 path (AVX-512) runs at SIMD level ``level``."""
    return bool(dwconv3x3_direct_available(level))


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


def tile_size(int level, bint half, int block=1):
    """Output positions per micro-kernel tile at SIMD level ``level`` (full or half tile)."""
    return spconv_tile_size(level, half, block)


def vector_len(int level):
    """Floats per vector of the sparse kernel at SIMD level ``level``: the alignment of its
    packed rows and loads."""
    return spconv_vector_len(level)


cdef conv_packing _packing(packing, int level) except *:
    """The C form of a :class:`fscnn.kernels.base.Packing`, packed with the code of SIMD level
    ``level``."""
    cdef conv_packing pk
    pk.H, pk.W, pk.pad_top, pk.pad_left = packing.H, packing.W, packing.pad_top, packing.pad_left
    pk.sh, pk.sw, pk.Hq, pk.Wq = packing.sh, packing.sw, packing.Hq, packing.Wq
    pk.plane, pk.one_phase, pk.level = packing.plane, packing.one_phase, level
    return pk


cdef const float *_packed_image(const float *x, int64_t C, const conv_packing *pk, bint pack,
                                float *buf, int n_threads) noexcept nogil:
    """The packed layout of image x (C, H, W): packed into buf, or x itself when ``pack`` is
    false (an unpadded 1x1 stride-1 layer, whose input already has that layout)."""
    cdef int64_t c
    # channels in chunks of about 1/8 of a thread's share: one at a time through the shared
    # loop counter, the threads fought over it (a 7x7 channel packs in ~30 ns)
    cdef int64_t chunk = max(1, C // (8 * n_threads))
    if not pack:
        return x
    for c in prange(C, num_threads=n_threads, schedule="dynamic", chunksize=chunk):
        conv_pack(pk, x, c, c + 1, buf)
    return buf


cdef class SparseConv:
    """Direct sparse convolution (spconv_impl.h) bound to one plan, O(N * nnz * H_c * Wc)
    multiply-adds.

    Parameters
    ----------
    ptr : int64 array of shape (O, ncb*R+1)
        Non-zeros per (output channel, input-channel block, residue); with ``block`` > 1,
        blocks of non-zeros per (block of output channels, ...), shape (ceil(O/block), ...).
    R : int
        Residues (see spconv_impl.h).
    offsets : int32 array of shape (nnz,)
        Aligned positions of the non-zeros in the packed image.
    values : float32 array of shape (nnz * block,)
        In the order of offsets (``block`` values per offset: one per output channel of the
        block).
    bias : float32 array of shape (O,) or None
    oblk : int64 array of shape (n_oblk+1,)
        Output-channel blocks (one block [0, O] when ``band_rows``), counted in blocks of
        ``block`` channels.
    packing : fscnn.kernels.base.Packing
        The packed image: planes of Hq rows of Wq floats, ``plane`` floats apart.
    Wc, W_valid : int
        Flat positions per computed output row, and the valid ones: Wc == Wq, or an unpadded
        1x1 layer computed as one row per channel (Wc == plane, W_valid == H_out*W_out).
    act, level, n_threads : int
        Activation code, SIMD level, threads.
    half : bool
        The half tile.
    band_rows : int
        0, or the convolution output rows per band of the fused 2x2 max pool
        (:meth:`conv_maxpool2`), an even number.
    O : int
        Output channels.
    block : int
        1 (the plain kernel) or 4 (the block kernel: non-zeros stored in blocks of 4
        consecutive output channels at one tap).
    group : int
        Tiles per work item of the block kernel, 1 to SPCONV_GROUP_MAX (16).
    """
    cdef spconv_layer k
    cdef conv_packing pk
    cdef int64_t band_rows
    cdef int n_threads
    cdef const int64_t[:, ::1] ptr
    cdef const int32_t[::1] offsets
    cdef const float[::1] values
    cdef const float[::1] bias
    cdef const int64_t[::1] oblk

    def __init__(self, const int64_t[:, ::1] ptr, int64_t R, const int32_t[::1] offsets,
                 const float[::1] values, const float[::1] bias, const int64_t[::1] oblk,
                 packing, int64_t Wc, int64_t W_valid, int act, int level, bint half,
                 int n_threads, int64_t band_rows, int64_t O, int block, int64_t group):
        self.ptr, self.offsets, self.values, self.bias, self.oblk = ptr, offsets, values, bias, oblk
        self.k.ptr = &ptr[0, 0]
        self.k.offsets = &offsets[0] if offsets.shape[0] else NULL
        self.k.values = &values[0] if values.shape[0] else NULL
        self.k.bias = &bias[0] if bias is not None else NULL
        self.k.oblk = &oblk[0]
        self.k.ncb = (ptr.shape[1] - 1) // R
        self.k.R, self.k.n_oblk, self.k.Wq, self.k.W_out = R, oblk.shape[0] - 1, Wc, W_valid
        self.k.act, self.k.level, self.k.half = act, level, half
        self.k.res_act = FSCNN_ACT_NONE
        self.k.O, self.k.block, self.k.group = O, block, group
        self.pk = _packing(packing, level)
        self.band_rows, self.n_threads = band_rows, n_threads

    @property
    def channel_blocks(self):
        """Input-channel blocks (ncb) the kernel runs in turn, keeping partial sums."""
        return self.k.ncb

    def conv(self, const float[:, :, :, ::1] x,       # IN  (N, C, H, W)
             float[::1] buf,                          # SCRATCH packed image + tail, tail
                                                      #   zeroed, vector-aligned
             float[:, ::1] partial,                   # SCRATCH (n_threads, largest block * T
                                                      #   * group)
             float[:, :, :, ::1] out,                 # OUT (N, O, H_c, W_valid)
             bint pack,
             const float[:, :, :, ::1] residual=None,  # IN (N, O, H_c, W_valid) or None
             int res_act=FSCNN_ACT_NONE):
        """Convolve ``x`` into ``out``, the computed positions: output (y, x) is flat position
        y*Wc + x of the packed image's positions. ``pack`` false: x already has the packed
        layout (an unpadded 1x1 stride-1 layer whose planes are a whole number of vectors,
        vector-aligned) and is read in place; ``buf`` is then unused. ``residual``: added to
        the output in the epilogue, then ``res_act`` (a residual connection); it must not
        overlap ``out`` (the caller checks its shape)."""
        cdef spconv_layer k = self.k
        cdef int64_t N = x.shape[0], C = x.shape[1], H_out = out.shape[2]
        cdef int64_t n_items = spconv_n_items(&k, H_out)
        cdef int64_t n, i
        cdef const float *src
        cdef const float *res = NULL
        cdef const float *res0 = NULL
        cdef int64_t res_image = out.shape[1] * H_out * out.shape[3]
        if N == 0 or out.shape[1] == 0 or H_out == 0 or out.shape[3] == 0:
            return
        k.res_act = res_act
        if residual is not None:
            res0 = &residual[0, 0, 0, 0]
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        with nogil:
            for n in range(N):
                src = _packed_image(&x[n, 0, 0, 0], C, &self.pk, pack, &buf[0], self.n_threads)
                if res0 != NULL:
                    res = res0 + n * res_image
                for i in prange(n_items, num_threads=nt, schedule="dynamic"):
                    spconv_items(&k, src, &out[n, 0, 0, 0], res, &partial[threadid(), 0],
                                 H_out, i, i + 1)

    def conv_maxpool2(self, const float[:, :, :, ::1] x,  # IN  (N, C, H, W)
                      float[::1] buf,                     # SCRATCH packed image, readable
                                                          #   to max(offsets) + L + T
                      float[:, ::1] partial,              # SCRATCH (n_threads, O * T * group)
                      float[:, ::1] band,                 # SCRATCH (n_threads,
                                                          #   O * band_rows * W_valid)
                      float[:, :, :, ::1] out):           # OUT (N, O, H_conv//2, W_valid//2)
        """Convolve ``x`` and max-pool the result with a 2x2 stride-2 window (floor mode),
        fused: a work item is a band of ``band_rows`` convolution output rows of one image,
        computed for all output channels into the thread's ``band`` scratch (the tiles of
        :meth:`conv`, with the band's flat positions) and pooled from there, so the full-size
        convolution output is never written to memory."""
        cdef const spconv_layer *k = &self.k
        cdef int64_t N = x.shape[0], C = x.shape[1]
        cdef int64_t O = out.shape[1], Hpo = out.shape[2], Wpo = out.shape[3]
        cdef int64_t band_rows = self.band_rows
        cdef int64_t n_bands = (2 * Hpo + band_rows - 1) // band_rows
        cdef int64_t n, b, r0, rows, o, j
        cdef float *scr
        cdef const float *src
        if N == 0 or O == 0 or Hpo == 0 or Wpo == 0:
            return
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        with nogil:
            for n in range(N):
                src = _packed_image(&x[n, 0, 0, 0], C, &self.pk, True, &buf[0], self.n_threads)
                for b in prange(n_bands, num_threads=nt, schedule="dynamic"):
                    r0 = b * band_rows
                    rows = band_rows if r0 + band_rows <= 2 * Hpo else 2 * Hpo - r0
                    scr = &band[threadid(), 0]
                    # the band's rows r0 .. r0+rows-1 are flat positions r0*Wq + [0, rows*Wq)
                    spconv_items(k, src + r0 * k.Wq, scr, NULL, &partial[threadid(), 0], rows, 0,
                                 spconv_n_items(k, rows))
                    for o in range(O):
                        for j in range(rows // 2):
                            fscnn_maxpool2x2_row(scr + (o * rows + 2 * j) * k.W_out,
                                                 scr + (o * rows + 2 * j + 1) * k.W_out,
                                                 &out[n, o, r0 // 2 + j, 0], Wpo)


cdef class DenseConv:
    """Dense convolution as SGEMM over chunks of the flat output, bound to one plan: for each
    chunk of ``chunk`` positions and each group, the K = Cg*KH*KW shifted input runs are
    copied into a (K, chunk) panel (a plain memcpy per row, thanks to the packed layout) and
    multiplied by the group's (O/groups, K) weights. O(N * O * K * H_out * Wq) multiply-adds.
    1x1 kernels read the packed planes directly (no panel).

    Parameters
    ----------
    weight : float32 array of shape (O, Cg*KH*KW)
        Rows in (ci, kh, kw) order.
    tap_offsets : int32 array of shape (Cg*KH*KW,)
        Positions of the taps of group 0 in the packed image.
    group_stride : int
        Position shift between the groups' inputs.
    bias : float32 array of shape (O,) or None
    groups : int
    packing : fscnn.kernels.base.Packing
    pack : bool
        False: x already has the packed layout (unpadded 1x1 stride 1) and is read in place.
    chunk, act, level, n_threads : int
        Positions per work item, activation code, SIMD level of the activation, threads (each
        calls single-threaded BLAS).
    wpack : float32 array of shape (ceil(O/MR), K, MR), or None
        With groups 1: ``weight`` packed for the pointwise kernel's variant ``variant`` (see
        pointwise.h), which then multiplies each panel instead of SGEMM (the panel is
        (K, max(cnt, T)), zero-padded to a whole tile). SGEMM packs the whole weight matrix
        on every call, which dominated when a chunk has few positions.
    variant : int
        Index into pointwise_variants(level); ignored without ``wpack``.
    """
    cdef const float[:, ::1] weight
    cdef const int32_t[::1] tap_offsets
    cdef const float[::1] bias
    cdef const float[:, :, ::1] wpack
    cdef pw_layer pw
    cdef pw_items_fn items
    cdef int64_t T
    cdef conv_packing pk
    cdef int64_t group_stride
    cdef int groups, chunk, act, level, n_threads
    cdef bint pack

    def __init__(self, const float[:, ::1] weight, const int32_t[::1] tap_offsets,
                 int64_t group_stride, const float[::1] bias, int groups, packing, bint pack,
                 int chunk, int act, int level, int n_threads,
                 const float[:, :, ::1] wpack=None, int variant=0):
        cdef int n_var
        cdef const pw_variant *var
        self.weight, self.tap_offsets, self.bias = weight, tap_offsets, bias
        self.pk = _packing(packing, level)
        self.group_stride, self.groups, self.pack = group_stride, groups, pack
        self.chunk, self.act, self.level, self.n_threads = chunk, act, level, n_threads
        self.wpack, self.items, self.T = wpack, NULL, 0
        if wpack is not None:
            var = pw_variants(level, &n_var)
            if groups != 1 or not 0 <= variant < n_var or var[variant].t > chunk \
                    or wpack.shape[1] != weight.shape[1] \
                    or wpack.shape[0] * var[variant].mr < weight.shape[0] \
                    or wpack.shape[2] != var[variant].mr:
                raise ValueError("DenseConv: wpack does not fit the weights, groups, variant "
                                 "and chunk")
            self.items, self.T = var[variant].fn, var[variant].t
            self.pw.wpack = &wpack[0, 0, 0]
            self.pw.bias = NULL  # conv_scatter adds bias and activation
            self.pw.K, self.pw.O, self.pw.act = weight.shape[1], weight.shape[0], FSCNN_ACT_NONE
            self.pw.res, self.pw.res_act = NULL, FSCNN_ACT_NONE

    cdef void _multiply(self, const float *panel, int64_t ld, int64_t cnt, int64_t g,
                        float *wide, int64_t ldc) noexcept nogil:
        """wide (Og, ldc) = W_g (Og, K) . panel (K, cnt columns, rows ld floats apart): the
        pointwise kernel on the packed weights (groups 1, ld >= T, columns [cnt, ld) zero), or
        SGEMM."""
        cdef int64_t K = self.weight.shape[1], Og = self.weight.shape[0] // self.groups, t
        cdef int m = <int> cnt, nn = <int> Og, kk = <int> K, lda = <int> K
        cdef int ldb = <int> ld, ldc_ = <int> ldc
        cdef float one = 1.0, zero = 0.0
        cdef char *no = b"N"
        if self.items != NULL:
            for t in range((ld + self.T - 1) // self.T):
                # the panel's rows are whole vectors apart already: no strip copy
                self.items(&self.pw, panel, ld, wide, ldc, ld, t, 0, self.wpack.shape[0], NULL)
            return
        # column-major view: wide^T (cnt x Og) = B^T (cnt x K) . W_g^T (K x Og)
        sgemm(no, no, &m, &nn, &kk, &one, <float *> panel, &ldb,
              <float *> &self.weight[g * Og, 0], &lda, &zero, wide, &ldc_)

    cdef int64_t _panel(self, const float *src, int64_t g, int64_t q0, int64_t cnt,
                        int64_t col, int64_t ld, float *panel) noexcept nogil:
        """Copy the K shifted runs [q0, q0+cnt) of group g of the packed image src into
        columns [col, col+cnt) of the panel (rows ld floats apart)."""
        cdef int64_t r
        for r in range(self.weight.shape[1]):
            memcpy(panel + r * ld + col, src + self.tap_offsets[r] + g * self.group_stride + q0,
                   sizeof(float) * cnt)
        return 0

    cdef int64_t _zero_tail(self, float *panel, int64_t cnt, int64_t ld) noexcept nogil:
        """Zero columns [cnt, ld) of the panel's K rows (the padding up to a whole tile)."""
        cdef int64_t r
        if ld > cnt:
            for r in range(self.weight.shape[1]):
                memset(panel + r * ld + cnt, 0, sizeof(float) * (ld - cnt))
        return 0

    cdef int64_t _width(self, int64_t cnt) noexcept nogil:
        """Floats per panel row for cnt columns: a whole tile at least for the pointwise
        kernel (pw_items moves a last partial tile back inside the panel)."""
        return cnt if self.items == NULL or cnt >= self.T else self.T

    def __call__(self, const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                 float[::1] buf,                      # SCRATCH packed images (``images`` > 1:
                                                      #   images * n_threads slots of ``slot``
                                                      #   floats), tails zeroed here; else one
                                                      #   packed image + tail, tail zeroed
                                                      #   (pack true)
                 float[:, ::1] panels,                # SCRATCH (n_threads, (K + O/groups) * chunk)
                 float[:, :, :, ::1] out,             # OUT (N, O, H_out, W_out)
                 int64_t images=1, int64_t slot=0):
        """Convolve ``x`` into ``out``. ``images`` > 1 (a flat output of L <= chunk /
        images positions, packed input, taps): a work item's panel holds the positions of up
        to ``images`` images side by side, so each GEMM streams the weights once for all of
        them (on small planes the weights are what the time goes to)."""
        cdef int64_t N = x.shape[0], C = x.shape[1]
        cdef int64_t O = out.shape[1], H_out = out.shape[2], W_out = out.shape[3]
        cdef int64_t K = self.weight.shape[1], Og = O // self.groups
        cdef int64_t Hq = self.pk.Hq, Wq = self.pk.Wq, chunk = self.chunk
        cdef int64_t L = H_out * Wq
        cdef int64_t n_chunks = (L + chunk - 1) // chunk
        cdef int64_t n_items = n_chunks * self.groups
        cdef const float *bptr = &self.bias[0] if self.bias is not None else NULL
        cdef bint direct = K == C // self.groups and self.tap_offsets[0] == 0 and K > 0
        cdef int64_t packed = C * (1 if self.pk.one_phase else self.pk.sh * self.pk.sw) \
            * self.pk.plane
        cdef int64_t n, i, g, q0, cnt, ld, ldc, j, j0, j1, n0, nb, P
        cdef float *panel
        cdef float *wide
        cdef const float *src
        if N == 0 or O == 0 or H_out == 0 or W_out == 0:
            return
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        if images > 1 and (direct or not self.pack or images * L > chunk or slot < packed):
            raise ValueError("DenseConv: images > 1 needs packed taps, images * L <= chunk "
                             "and slots of the packed image")
        if images > 1 and buf.shape[0] < min(N, images * nt) * slot:
            raise ValueError("DenseConv: buf is smaller than its image slots")
        with nogil:
            if images > 1:
                P = min(N, images * nt)  # images packed per pass
                n0 = 0
                while n0 < N:  # (range() with a variable step needs the GIL)
                    nb = min(P, N - n0)
                    for j in prange(nb, num_threads=nt, schedule="dynamic"):
                        conv_pack(&self.pk, &x[n0 + j, 0, 0, 0], 0, C, &buf[j * slot])
                        memset(&buf[j * slot + packed], 0, sizeof(float) * (slot - packed))
                    for i in prange(((nb + images - 1) // images) * self.groups,
                                    num_threads=nt, schedule="dynamic"):
                        panel = &panels[threadid(), 0]
                        wide = panel + K * chunk
                        g = i % self.groups
                        j0 = (i // self.groups) * images
                        j1 = min(nb, j0 + images)
                        cnt = (j1 - j0) * L
                        ld = self._width(cnt)
                        for j in range(j0, j1):
                            self._panel(&buf[j * slot], g, 0, L, (j - j0) * L, ld, panel)
                        self._zero_tail(panel, cnt, ld)
                        self._multiply(panel, ld, cnt, g, wide, ld)
                        for j in range(j0, j1):
                            conv_scatter(wide + (j - j0) * L, ld, Og, g * Og, 0, L, bptr,
                                         self.act, self.level, Wq, H_out, W_out,
                                         &out[n0 + j, 0, 0, 0])
                    n0 += P
            else:
                for n in range(N):
                    src = _packed_image(&x[n, 0, 0, 0], C, &self.pk, self.pack, &buf[0],
                                        self.n_threads)
                    for i in prange(n_items, num_threads=nt, schedule="dynamic"):
                        panel = &panels[threadid(), 0]
                        wide = panel + K * chunk
                        g = i % self.groups
                        q0 = (i // self.groups) * chunk
                        cnt = chunk if q0 + chunk <= L else L - q0
                        if direct:
                            # 1x1 taps: the (K, cnt) panel is the packed planes themselves (the
                            # pointwise kernel takes ungrouped 1x1 layers: SGEMM here)
                            ld = Hq * Wq if self.pk.one_phase else self.pk.sh * self.pk.sw * Hq * Wq
                            panel = <float *> (src + g * self.group_stride + q0)
                        else:
                            ld = self._width(cnt)
                            self._panel(src, g, q0, cnt, 0, ld, panel)
                            self._zero_tail(panel, cnt, ld)
                        ldc = ld
                        if Wq == W_out and self.items == NULL:
                            # flat positions are output positions (1x1 layers): the GEMM writes
                            # into the output, and the epilogue adds bias and activation in place
                            wide = &out[n, g * Og, 0, 0] + q0
                            ldc = H_out * W_out
                        elif self.items == NULL:
                            ldc = cnt
                        self._multiply(panel, ld, cnt, g, wide, ldc)
                        conv_scatter(wide, ldc, Og, g * Og, q0, cnt, bptr, self.act, self.level,
                                     Wq, H_out, W_out, &out[n, 0, 0, 0])


cdef class WinogradConv:
    """Winograd F(4x4, 3x3) convolution (see winograd.h) bound to one plan. The 4x4 output
    tiles of each image, in row-major order, are cut into chunks of ``chunk`` tiles; a work
    item (image, chunk) transforms its input tiles into V (36, C, cnt), runs the 36 GEMMs
    M_a = U_a . V_a (O x cnt) with single-threaded BLAS and transforms M into the output.
    Work items are independent and computed the same way whatever thread runs them.

    Parameters
    ----------
    U : float32 array of shape (36, O, C)
        Transformed weights G g G^T.
    bias : float32 array of shape (O,) or None
    pad_top, pad_left, chunk, act, level, n_threads : int
    """
    cdef wino_layer k
    cdef const float[:, :, ::1] U
    cdef const float[::1] bias
    cdef int chunk, n_threads

    def __init__(self, const float[:, :, ::1] U, const float[::1] bias, int64_t pad_top,
                 int64_t pad_left, int chunk, int act, int level, int n_threads):
        self.U, self.bias = U, bias
        self.k.bias = &bias[0] if bias is not None else NULL
        self.k.pad_top, self.k.pad_left = pad_top, pad_left
        self.k.act, self.k.level = act, level
        self.chunk, self.n_threads = chunk, n_threads

    def __call__(self, const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                 float[:, ::1] work,                  # SCRATCH (n_threads, 36*(C+O)*chunk + tmp)
                 float[:, :, :, ::1] out):            # OUT (N, O, H_out, W_out)
        """Convolve ``x`` into ``out``."""
        cdef wino_layer k = self.k
        cdef int64_t N = x.shape[0], C = x.shape[1], O = out.shape[1]
        cdef int64_t chunk = self.chunk
        cdef int64_t T, n_chunks, i, n, t0, cnt, a
        cdef float *V
        cdef float *Mb
        cdef int m, nn, kk, lda, ldb, ldc
        cdef float one = 1.0, zero = 0.0
        cdef char *no = b"N"
        k.C, k.H, k.W = C, x.shape[2], x.shape[3]
        k.O, k.H_out, k.W_out = O, out.shape[2], out.shape[3]
        k.tiles_w = (k.W_out + 3) // 4
        T = k.tiles_w * ((k.H_out + 3) // 4)
        n_chunks = (T + chunk - 1) // chunk
        if N == 0 or O == 0 or k.H_out == 0 or k.W_out == 0:
            return
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        with nogil:
            for i in prange(N * n_chunks, num_threads=nt, schedule="dynamic"):
                n = i // n_chunks
                t0 = (i % n_chunks) * chunk
                cnt = chunk if t0 + chunk <= T else T - t0
                V = &work[threadid(), 0]
                Mb = V + 36 * C * cnt
                wino_input(&k, &x[n, 0, 0, 0], t0, cnt, V, Mb + 36 * O * cnt)
                m = <int> cnt
                nn = <int> O
                kk = <int> C
                lda = <int> cnt
                ldb = <int> C
                ldc = <int> cnt
                for a in range(36):
                    # column-major view: M_a^T (cnt x O) = V_a^T (cnt x C) . U_a^T (C x O)
                    sgemm(no, no, &m, &nn, &kk, &one, V + a * C * cnt, &lda,
                          <float *> &self.U[a, 0, 0], &ldb, &zero, Mb + a * O * cnt, &ldc)
                wino_output(&k, Mb, t0, cnt, &out[n, 0, 0, 0], Mb + 36 * O * cnt)


cdef class DepthwiseConv:
    """Depthwise convolution (see dwconv.h) bound to one plan: a work item (image, input
    channel) packs the channel's phase planes into the thread's scratch (``work[t, :planes]``,
    followed by a zeroed tail of T + 16 floats that the caller clears) and computes its O/C
    output channels, O(N * n_taps * H_out * Wq) multiply-adds. Items are computed the same way
    whatever thread runs them.

    Parameters
    ----------
    ptr : int64 array of shape (O+1,)
        Taps of each output channel.
    offsets : int32 array of shape (n_taps,)
        Positions in a channel's packed planes.
    values : float32 array of shape (n_taps,)
    bias : float32 array of shape (O,) or None
    packing : fscnn.kernels.base.Packing
        One channel's planes (``plane`` = Hq*Wq).
    act, level, n_threads : int
    direct : float32 array of shape (O, 9) or None
        The weights of a 3x3 layer with one output channel per input channel, dilation 1 and
        strides 1 or 2, given where ``dwconv3x3_direct_available(level)``: each channel is
        then computed from its unpacked plane (dwconv3x3_direct) and ``work`` is not used.
    """
    cdef dwconv_layer k
    cdef conv_packing pk
    cdef int n_threads
    cdef const int64_t[::1] ptr
    cdef const int32_t[::1] offsets
    cdef const float[::1] values
    cdef const float[::1] bias
    cdef const float[:, ::1] direct

    def __init__(self, const int64_t[::1] ptr, const int32_t[::1] offsets,
                 const float[::1] values, const float[::1] bias, packing, int act, int level,
                 int n_threads, const float[:, ::1] direct=None):
        self.ptr, self.offsets, self.values, self.bias = ptr, offsets, values, bias
        if direct is not None:
            if not dwconv3x3_direct_available(level):
                raise ValueError(f"the direct 3x3 depthwise kernel needs AVX-512 (level {level})")
            if direct.shape[0] != ptr.shape[0] - 1 or direct.shape[1] != 9:
                raise ValueError(f"direct weights must be ({ptr.shape[0] - 1}, 9), got "
                                 f"({direct.shape[0]}, {direct.shape[1]})")
        self.direct = direct
        self.k.ptr = &ptr[0]
        self.k.offsets = &offsets[0] if offsets.shape[0] else NULL
        self.k.values = &values[0] if values.shape[0] else NULL
        self.k.bias = &bias[0] if bias is not None else NULL
        self.pk = _packing(packing, level)
        self.k.Wq, self.k.act, self.k.level = self.pk.Wq, act, level
        self.n_threads = n_threads

    cdef int64_t _wide_at(self):
        """Where a thread's scratch row holds the output tiles (``wide``): after a channel's
        phase planes and the zeroed tail of T + 16 floats that keeps their reads in bounds."""
        cdef int64_t planes = (1 if self.pk.one_phase else self.pk.sh * self.pk.sw) * \
            self.pk.Hq * self.pk.Wq
        return planes + dwconv_tile_size(self.k.level) + 16

    def __call__(self, const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                 float[:, ::1] work,                  # SCRATCH (n_threads, planes + T + 16 + L + T)
                 float[:, :, :, ::1] out):            # OUT (N, O, H_out, W_out), O = mult * C
        """Convolve ``x`` into ``out``."""
        cdef dwconv_layer k = self.k
        cdef int64_t N = x.shape[0], C = x.shape[1], O = out.shape[1]
        cdef int64_t mult = O // C if C else 0
        cdef int64_t wide_at = self._wide_at()
        cdef int64_t i, n, c
        cdef float *buf
        k.H_out, k.W_out = out.shape[2], out.shape[3]
        if N == 0 or O == 0 or k.H_out == 0 or k.W_out == 0:
            return
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        cdef int64_t chunk = max(1, N * C // (8 * nt))  # as in _packed_image
        if self.direct is not None:
            if O != C:
                raise ValueError(f"the direct 3x3 kernel needs as many output channels as "
                                 f"input channels, got {O} and {C}")
            self._direct(&x[0, 0, 0, 0], N, C, x.shape[2], x.shape[3], &out[0, 0, 0, 0],
                         k.H_out, k.W_out)
            return
        with nogil:
            for i in prange(N * C, num_threads=nt, schedule="dynamic", chunksize=chunk):
                n = i // C
                c = i % C
                buf = &work[threadid(), 0]
                conv_pack(&self.pk, &x[n, c, 0, 0], 0, 1, buf)
                dwconv_channels(&k, buf, c * mult, (c + 1) * mult, buf + wide_at,
                                &out[n, 0, 0, 0])

    cdef void _direct(self, const float *x, int64_t N, int64_t C, int64_t H, int64_t W,
                      float *out, int64_t H_out, int64_t W_out) noexcept:
        """The direct 3x3 path: channel (n, c) of out (H_out, W_out) from plane (n, c) of x
        (both NCHW)."""
        cdef dwconv_layer k = self.k
        cdef conv_packing pk = self.pk
        cdef const float *w = &self.direct[0, 0]
        cdef int64_t i, c, HW = H * W, plane = H_out * W_out
        cdef int nt = self.n_threads
        cdef int64_t chunk = max(1, N * C // (8 * nt))
        with nogil:
            for i in prange(N * C, num_threads=nt, schedule="dynamic", chunksize=chunk):
                c = i % C
                dwconv3x3_direct(x + i * HW, H, W, pk.pad_top, pk.pad_left, pk.sh, pk.sw,
                                 w + 9 * c, k.bias[c] if k.bias != NULL else 0.0, k.act,
                                 out + i * plane, H_out, W_out)


cdef class ExpandDepthwiseConv(DepthwiseConv):
    """A 1x1 convolution (stride 1, no padding, groups 1) and the depthwise convolution it
    feeds, as one kernel (see dwconv.h): a work item (image, expanded channel) computes that
    channel's plane from the input in the thread's scratch (``dwconv_expand``), packs it into
    the depthwise layer's phase planes there and computes its output channels, so the
    expanded tensor never goes to memory. Items are computed the same way whatever thread runs
    them.

    Parameters
    ----------
    eptr : int64 array of shape (M+1,)
        Taps of each expanded channel (M channels).
    eoffsets : int32 array
        Where each tap of the 1x1 layer reads an image: its input channel * H*W.
    evalues : float32 array
    ebias : float32 array of shape (M,) or None
    eact : int
        The 1x1 layer's activation.
    ptr, offsets, values, bias, packing, act, level, n_threads, direct
        The depthwise layer's, as :class:`DepthwiseConv` takes them (``packing`` of one
        expanded channel).
    """
    cdef int eact
    cdef const int64_t[::1] eptr
    cdef const int32_t[::1] eoffsets
    cdef const float[::1] evalues
    cdef const float[::1] ebias

    def __init__(self, const int64_t[::1] eptr, const int32_t[::1] eoffsets,
                 const float[::1] evalues, const float[::1] ebias, int eact,
                 const int64_t[::1] ptr, const int32_t[::1] offsets, const float[::1] values,
                 const float[::1] bias, packing, int act, int level, int n_threads,
                 const float[:, ::1] direct=None):
        DepthwiseConv.__init__(self, ptr, offsets, values, bias, packing, act, level, n_threads,
                               direct)
        self.eptr, self.eoffsets, self.evalues = eptr, eoffsets, evalues
        self.ebias, self.eact = ebias, eact

    def __call__(self, const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                 float[:, ::1] work,                  # SCRATCH (n_threads, planes + T + 16 + L + T + H*W)
                 float[:, :, :, ::1] out):            # OUT (N, O, H_out, W_out), O = mult * M
        """Convolve ``x`` into ``out``."""
        cdef dwconv_layer k = self.k
        cdef int64_t N = x.shape[0], M = self.eptr.shape[0] - 1, O = out.shape[1]
        cdef int64_t HW = x.shape[2] * x.shape[3]
        cdef int64_t mult = O // M if M else 0
        cdef int64_t wide_at = self._wide_at()
        k.H_out, k.W_out = out.shape[2], out.shape[3]
        # the expanded plane after the output tiles (H_out*Wq positions and a tile more)
        cdef int64_t plane_at = wide_at + k.H_out * k.Wq + dwconv_tile_size(k.level)
        cdef int64_t i, n, c
        cdef float *buf
        cdef float *plane
        cdef const int32_t *eoffsets = &self.eoffsets[0] if self.eoffsets.shape[0] else NULL
        cdef const float *evalues = &self.evalues[0] if self.evalues.shape[0] else NULL
        cdef const float *ebias = &self.ebias[0] if self.ebias is not None else NULL
        cdef const int64_t *eptr = &self.eptr[0]
        cdef int eact = self.eact
        cdef int64_t H = x.shape[2], W = x.shape[3]
        cdef const float *wdirect = NULL
        if N == 0 or O == 0 or k.H_out == 0 or k.W_out == 0:
            return
        if self.direct is not None:
            if O != M:
                raise ValueError(f"the direct 3x3 kernel needs as many output channels as "
                                 f"expanded channels, got {O} and {M}")
            wdirect = &self.direct[0, 0]
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        cdef int64_t chunk = max(1, N * M // (8 * nt))  # as in DepthwiseConv
        with nogil:
            for i in prange(N * M, num_threads=nt, schedule="dynamic", chunksize=chunk):
                n = i // M
                c = i % M
                buf = &work[threadid(), 0]
                plane = buf + plane_at
                dwconv_expand(k.level, eoffsets, evalues, eptr[c], eptr[c + 1],
                              ebias[c] if ebias != NULL else 0.0, eact, &x[n, 0, 0, 0], HW,
                              plane)
                if wdirect != NULL:
                    dwconv3x3_direct(plane, H, W, self.pk.pad_top, self.pk.pad_left,
                                     self.pk.sh, self.pk.sw, wdirect + 9 * c,
                                     k.bias[c] if k.bias != NULL else 0.0, k.act,
                                     &out[n, c, 0, 0], k.H_out, k.W_out)
                else:
                    conv_pack(&self.pk, plane, 0, 1, buf)
                    dwconv_channels(&k, buf, c * mult, (c + 1) * mult, buf + wide_at,
                                    &out[n, 0, 0, 0])


cdef class PointwiseConv:
    """Dense 1x1 convolution, groups 1 (see pointwise.h), bound to one plan: for each image,
    work items (position tile, chunk of output-channel blocks) of output = W . X, with X the
    packed planes (or x itself when ``pack`` is false) and positions y*Wq + x, Wq == W_out. An
    image with fewer positions than a tile is computed in the ``small`` scratch. Items are
    computed the same way whatever thread runs them.

    Parameters
    ----------
    wpack : float32 array of shape (ceil(O/MR), C, MR)
        Packed weights of the variant.
    bias : float32 array of shape (O,) or None
    packing : fscnn.kernels.base.Packing
    pack : bool
        False: x already has the packed layout and is read in place.
    n_bchunks : int
        Chunks of output-channel blocks per tile.
    act, level, n_threads : int
    variant : int
        Index into pointwise_variants(level).
    """
    cdef pw_layer k
    cdef pw_items_fn items
    cdef int64_t T, n_bchunks
    cdef conv_packing pk
    cdef bint pack
    cdef int n_threads
    cdef const float[:, :, ::1] wpack
    cdef const float[::1] bias

    def __init__(self, const float[:, :, ::1] wpack, const float[::1] bias, packing, bint pack,
                 int64_t n_bchunks, int act, int level, int variant, int n_threads):
        cdef int n_var
        cdef const pw_variant *var = &pw_variants(level, &n_var)[variant]
        self.wpack, self.bias = wpack, bias
        self.k.wpack = &wpack[0, 0, 0]
        self.k.bias = &bias[0] if bias is not None else NULL
        self.k.K, self.k.act = wpack.shape[1], act
        self.k.res, self.k.res_act = NULL, FSCNN_ACT_NONE
        self.items, self.T = var.fn, var.t
        self.pk = _packing(packing, level)
        self.pack, self.n_bchunks, self.n_threads = pack, n_bchunks, n_threads

    def __call__(self, const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                 float[::1] buf,                      # SCRATCH packed image (pack true)
                 float[::1] small,                    # SCRATCH (C + O) * T floats (L < T)
                 float[:, ::1] strips,                # SCRATCH (n_threads, >= C * T): each
                                                      #   item's input strip (pointwise.h)
                 float[:, :, :, ::1] out,             # OUT (N, O, H_out, W_out)
                 const float[:, :, :, ::1] residual=None,  # IN (N, O, H_out, W_out) or None
                 int res_act=FSCNN_ACT_NONE):
        """Convolve ``x`` into ``out``; ``residual`` (not overlapping ``out``, its shape
        checked by the caller) is added in the epilogue, then ``res_act``."""
        cdef pw_layer k = self.k
        cdef const float *res0 = NULL
        cdef int64_t N = x.shape[0], C = x.shape[1]
        cdef int64_t O = out.shape[1], H_out = out.shape[2], W_out = out.shape[3]
        cdef int64_t T = self.T, n_bchunks = self.n_bchunks
        cdef int64_t L = H_out * self.pk.Wq
        cdef int64_t n_blk = self.wpack.shape[0]
        cdef int64_t bc = (n_blk + n_bchunks - 1) // n_bchunks
        cdef int64_t n_tiles = (L + T - 1) // T
        cdef int64_t n_items = n_tiles * n_bchunks
        cdef int64_t ldx = L if not self.pack else (
            self.pk.Hq * self.pk.Wq if self.pk.one_phase
            else self.pk.sh * self.pk.sw * self.pk.Hq * self.pk.Wq)
        cdef int64_t n, i, c, b0, b1
        cdef const float *src
        cdef float *dst
        k.O = O
        k.res_act = res_act
        if N == 0 or O == 0 or H_out == 0 or W_out == 0:
            return
        if residual is not None:
            res0 = &residual[0, 0, 0, 0]
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        if strips.shape[0] < nt or strips.shape[1] < C * T:
            raise ValueError(f"PointwiseConv: strips of shape ({strips.shape[0]}, "
                             f"{strips.shape[1]}), need ({nt}, {C * T})")
        with nogil:
            for n in range(N):
                src = _packed_image(&x[n, 0, 0, 0], C, &self.pk, self.pack, &buf[0],
                                    self.n_threads)
                k.res = NULL
                if res0 != NULL:
                    k.res = res0 + n * O * L
                if L < T:
                    # fewer positions than a tile: compute T-wide copies, keep the first L
                    # columns
                    for c in range(C):
                        memcpy(&small[c * T], src + c * ldx, sizeof(float) * L)
                        memset(&small[c * T + L], 0, sizeof(float) * (T - L))
                    k.res = NULL  # added below, to the L columns kept
                    self.items(&k, &small[0], T, &small[C * T], T, T, 0, 0, n_blk, NULL)
                    dst = &out[n, 0, 0, 0]
                    for c in range(O):
                        memcpy(dst + c * L, &small[(C + c) * T], sizeof(float) * L)
                    if res0 != NULL:
                        fscnn_add_residual(self.pk.level, dst, res0 + n * O * L, O * L,
                                           res_act)
                    continue
                for i in prange(n_items, num_threads=nt, schedule="dynamic"):
                    b0 = (i % n_bchunks) * bc
                    b1 = b0 + bc if b0 + bc < n_blk else n_blk
                    self.items(&k, src, ldx, &out[n, 0, 0, 0], L, L, i // n_bchunks, b0, b1,
                               &strips[threadid(), 0])
