"""INT8 kernels: sparse convolution and sparse linear over int8 weights with int32
accumulation (include/spconv_int8.h), the input quantized while it is packed and the output
dequantized, biased and activated in the epilogue.

Each kernel is a class that a plan (fscnn.kernels.int8) builds once from its arrays; calling
it runs the kernel on one input into a preallocated output with the caller's scratch. Callers
validate every argument (shapes, index bounds, and that no int32 accumulator can overflow);
nothing here checks them. Thread counts are read into locals before a prange (see _conv.pyx).
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t

cdef extern from "conv_pack.h" nogil:
    ctypedef struct conv_packing:
        int64_t H, W, pad_top, pad_left, sh, sw, Hq, Wq, plane
        int one_phase

cdef extern from "spconv_int8.h" nogil:
    ctypedef struct spq_layer:
        const int64_t *ptr
        const int32_t *offsets
        const int32_t *wpairs
        const float *scale
        const float *bias
        const int64_t *oblk
        const float *res
        int64_t ostride, n_oblk, Wq, W_out
        int64_t group
        int act, level, nv, vnni, quads, res_act
    ctypedef struct spq_quant:
        float inv_scale
        int32_t lo, hi
    int64_t spq_tile_size(int nv)
    int SPQ_NV_FULL, SPQ_NV_NARROW, SPQ_NV_WIDE, FSCNN_SIMD_AVX512
    int spq_cpu_vnni()
    int64_t spq_n_items(const spq_layer *k, int64_t L)
    int64_t SPQ_GROUP_MAX
    void spq_pack(const conv_packing *pk, const spq_quant *q, int level, const float *x,
                  int64_t Cg, int64_t G, int64_t Pg, int64_t p0, int64_t p1, int32_t *buf)
    void spq_pack_rows(const spq_quant *q, const float *x, int64_t N, int64_t I, int64_t G,
                       int64_t plane, int64_t j0, int64_t j1, int32_t *buf)
    void spq_items(const spq_layer *k, const int32_t *inp, float *out, int32_t *raw,
                   int64_t H_out, int64_t i0, int64_t i1)


GROUP_MAX = SPQ_GROUP_MAX  # tiles per work item, at most


def vnni():
    """Whether the AVX-512 level accumulates with AVX512-VNNI's vpdpwssd (the CPU has it)."""
    return bool(spq_cpu_vnni())


TILE_VECTORS = {"full": SPQ_NV_FULL, "narrow": SPQ_NV_NARROW, "wide": SPQ_NV_WIDE}


def tile_size(int nv):
    """Output positions per tile of ``nv`` vectors (a value of TILE_VECTORS), at every SIMD
    level."""
    return spq_tile_size(nv)


cdef class _Int8Kernel:
    """What the INT8 convolution and linear kernels share: the layer struct, the arrays it
    points into and the input quantization."""
    cdef spq_layer k
    cdef spq_quant q
    cdef int n_threads
    cdef const int64_t[::1] ptr
    cdef const int32_t[::1] offsets
    cdef const int32_t[::1] wpairs
    cdef const float[::1] scale
    cdef const float[::1] bias
    cdef const int64_t[::1] oblk

    def __init__(self, const int64_t[::1] ptr, const int32_t[::1] offsets,
                 const int32_t[::1] wpairs, const float[::1] scale, const float[::1] bias,
                 const int64_t[::1] oblk, int64_t ostride, int64_t Wq, int64_t W_out,
                 float inv_scale, int32_t lo, int32_t hi, int act, int level, int nv,
                 int n_threads, int64_t group=1):
        if nv not in (SPQ_NV_FULL, SPQ_NV_NARROW, SPQ_NV_WIDE):
            raise ValueError(f"INT8 kernel: no tile of {nv} vectors")
        if not 1 <= group <= SPQ_GROUP_MAX:
            raise ValueError(f"INT8 kernel: {group} tiles per work item (1 to {SPQ_GROUP_MAX})")
        self.ptr, self.offsets, self.wpairs = ptr, offsets, wpairs
        self.scale, self.bias, self.oblk = scale, bias, oblk
        self.k.ptr = &ptr[0]
        self.k.offsets = &offsets[0] if offsets.shape[0] else NULL
        self.k.wpairs = &wpairs[0] if wpairs.shape[0] else NULL
        self.k.scale = &scale[0]
        self.k.bias = &bias[0] if bias is not None else NULL
        self.k.oblk = &oblk[0]
        self.k.ostride, self.k.n_oblk = ostride, oblk.shape[0] - 1
        self.k.Wq, self.k.W_out, self.k.group = Wq, W_out, group
        self.k.act, self.k.level, self.k.nv = act, level, nv
        # decided here, once, rather than per work item
        self.k.vnni = level >= FSCNN_SIMD_AVX512 and spq_cpu_vnni()
        self.k.quads = 0
        self.k.res, self.k.res_act = NULL, 0
        self.q.inv_scale, self.q.lo, self.q.hi = inv_scale, lo, hi
        self.n_threads = n_threads


cdef class Int8Conv(_Int8Kernel):
    """Sparse INT8 convolution bound to one plan, O(N * npairs * H_out * Wq) int16 pair (or
    byte quad) multiply-adds.

    Parameters
    ----------
    ptr : int64 array of shape (O+1,)
        Non-zero pairs per output channel.
    offsets : int32 array of shape (npairs,)
        Position of each pair's tap in the packed image.
    wpairs : int32 array of shape (npairs,)
        The pair's two int16 weights (channel 2p in the low half).
    scale : float32 array of shape (O,)
        Input scale times the channel's weight scale.
    bias : float32 array of shape (O,) or None
    oblk : int64 array of shape (n_oblk+1,)
        Output-channel blocks of the work items.
    packing : fscnn.kernels.base.Packing
        Phase planes of Hq rows of Wq positions, ``plane`` apart (one int32 pair each).
    Cg, Pg : int
        Input channels and channel pairs (quads) per group.
    G : int
        2: ``wpairs`` and the packed input are int16 pairs; 4: quads of bytes (int8
        weights, uint8 input: ``lo`` must be 0), see spconv_int8.h.
    inv_scale : float
        1 / input scale.
    lo, hi : int
        Range of the quantized input: (-127, 127) or (0, 255).
    act, level, n_threads : int
    nv : int
        Vectors per tile (a value of TILE_VECTORS).
    group : int
        Tiles per work item (1 to SPQ_GROUP_MAX).
    """
    cdef conv_packing pk
    cdef int64_t Cg, Pg, G

    def __init__(self, const int64_t[::1] ptr, const int32_t[::1] offsets,
                 const int32_t[::1] wpairs, const float[::1] scale, const float[::1] bias,
                 const int64_t[::1] oblk, packing, int64_t Cg, int64_t Pg, float inv_scale,
                 int32_t lo, int32_t hi, int act, int level, int nv, int n_threads,
                 int64_t group=1, int64_t G=2):
        if G not in (2, 4) or (G == 4 and lo != 0):
            raise ValueError(f"INT8 kernel: channels in groups of {G} with inputs from {lo}"
                             " (pairs, or quads of an unsigned input)")
        super().__init__(ptr, offsets, wpairs, scale, bias, oblk, 1, packing.Wq, 0, inv_scale,
                         lo, hi, act, level, nv, n_threads, group)
        self.k.quads = G == 4
        self.G = G
        self.pk.H, self.pk.W = packing.H, packing.W
        self.pk.pad_top, self.pk.pad_left = packing.pad_top, packing.pad_left
        self.pk.sh, self.pk.sw = packing.sh, packing.sw
        self.pk.Hq, self.pk.Wq = packing.Hq, packing.Wq
        self.pk.plane, self.pk.one_phase = packing.plane, packing.one_phase
        self.Cg, self.Pg = Cg, Pg

    cdef void _run(self, const float *x, int64_t N, int64_t C, int64_t O, int64_t H_out,
                   int64_t W_out, int32_t *buf, float *out, int32_t *raw,
                   const float *res=NULL, int res_act=0) noexcept nogil:
        cdef spq_layer k = self.k
        cdef int64_t n_items = spq_n_items(&k, H_out * k.Wq)
        cdef int64_t n_pairs = C // self.Cg * self.Pg
        cdef int64_t n, i, p
        cdef int nt = self.n_threads
        k.W_out = W_out
        k.res_act = res_act
        for n in range(N):
            if res != NULL:
                k.res = res + n * O * H_out * W_out
            for p in prange(n_pairs, num_threads=nt, schedule="dynamic"):
                spq_pack(&self.pk, &self.q, k.level, x + n * C * self.pk.H * self.pk.W,
                         self.Cg, self.G, self.Pg, p, p + 1, buf)
            for i in prange(n_items, num_threads=nt, schedule="dynamic"):
                if raw != NULL:
                    spq_items(&k, buf, NULL, raw + n * O * H_out * W_out, H_out, i, i + 1)
                else:
                    spq_items(&k, buf, out + n * O * H_out * W_out, NULL, H_out, i, i + 1)

    def __call__(self, const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                 int32_t[::1] buf,                    # SCRATCH packed pairs + tail, tail zeroed
                 float[:, :, :, ::1] out,             # OUT (N, O, H_out, W_out)
                 const float[:, :, :, ::1] residual=None,  # IN (N, O, H_out, W_out) or None
                 int res_act=0):
        """Convolve ``x`` into ``out`` (float32); ``residual`` (not overlapping ``out``, its
        shape checked by the caller) is added to each run of outputs as it is stored, then
        ``res_act``."""
        cdef const float *res = NULL
        if x.shape[0] == 0 or out.shape[1] == 0 or out.shape[2] == 0 or out.shape[3] == 0:
            return
        if residual is not None:
            res = &residual[0, 0, 0, 0]
        with nogil:
            self._run(&x[0, 0, 0, 0], x.shape[0], x.shape[1], out.shape[1], out.shape[2],
                      out.shape[3], &buf[0], &out[0, 0, 0, 0], NULL, res, res_act)

    def accumulate(self, const float[:, :, :, ::1] x,  # IN  (N, C, H, W)
                   int32_t[::1] buf,                   # SCRATCH as for __call__
                   int32_t[:, :, :, ::1] raw):         # OUT (N, O, H_out, W_out) int32
        """The int32 accumulators of ``x`` into ``raw``, before the epilogue (for tests)."""
        if x.shape[0] == 0 or raw.shape[1] == 0 or raw.shape[2] == 0 or raw.shape[3] == 0:
            return
        with nogil:
            self._run(&x[0, 0, 0, 0], x.shape[0], x.shape[1], raw.shape[1], raw.shape[2],
                      raw.shape[3], &buf[0], NULL, &raw[0, 0, 0, 0])


cdef class Int8Linear(_Int8Kernel):
    """Sparse INT8 linear layer bound to one plan: the convolution kernel over one row of N
    positions, the input packed transposed (group j of every batch row contiguous, ``plane``
    positions apart), O(N * ngroups) pair (or quad) multiply-adds.

    Parameters
    ----------
    ptr, wpairs, scale, bias, oblk, inv_scale, lo, hi, act, level, nv, n_threads
        As for :class:`Int8Conv`.
    pairs : int32 array of shape (ngroups,)
        The input group (features G*j .. G*j + G-1) of each non-zero group.
    n_in : int
        Input features.
    G : int
        2: pairs of int16; 4: quads of bytes (an unsigned input: ``lo`` must be 0), as for
        :class:`Int8Conv`.
    """
    cdef int64_t n_in, G

    def __init__(self, const int64_t[::1] ptr, const int32_t[::1] pairs,
                 const int32_t[::1] wpairs, const float[::1] scale, const float[::1] bias,
                 const int64_t[::1] oblk, int64_t n_in, float inv_scale, int32_t lo,
                 int32_t hi, int act, int level, int nv, int n_threads, int64_t G=2):
        if G not in (2, 4) or (G == 4 and lo != 0):
            raise ValueError(f"INT8 kernel: features in groups of {G} with inputs from {lo}"
                             " (pairs, or quads of an unsigned input)")
        super().__init__(ptr, pairs, wpairs, scale, bias, oblk, 0, 0, 0, inv_scale, lo, hi,
                         act, level, nv, n_threads)
        self.k.quads = G == 4
        self.n_in, self.G = n_in, G

    cdef void _run(self, const float *x, int64_t N, int64_t O, int64_t plane, int32_t *buf,
                   float *wide, int32_t *raw) noexcept nogil:
        cdef spq_layer k = self.k
        cdef int64_t n_items
        cdef int64_t n_groups = (self.n_in + self.G - 1) // self.G
        cdef int64_t i, j
        cdef int nt = self.n_threads
        k.ostride, k.Wq, k.W_out = plane, N, N
        n_items = spq_n_items(&k, N)
        for j in prange(n_groups, num_threads=nt, schedule="dynamic"):
            spq_pack_rows(&self.q, x, N, self.n_in, self.G, plane, j, j + 1, buf)
        for i in prange(n_items, num_threads=nt, schedule="dynamic"):
            spq_items(&k, buf, wide, raw, 1, i, i + 1)

    def __call__(self, const float[:, ::1] x,      # IN  (N, I)
                 int32_t[::1] buf,                 # SCRATCH (ceil(I/G) * plane,) packed groups
                 float[:, ::1] wide,               # SCRATCH (O, N): the transposed output
                 float[:, ::1] out):               # OUT (N, O)
        """``out = act(dequantize(quantize(x) @ Wq.T) + bias)``; ``plane`` (the packed
        batch length, N rounded up to a whole tile) is ``buf``'s length per pair."""
        cdef int64_t N = x.shape[0], O = out.shape[1], n, o
        if N == 0 or O == 0:
            return
        with nogil:
            self._run(&x[0, 0], N, O, buf.shape[0] // ((self.n_in + self.G - 1) // self.G), &buf[0],
                      &wide[0, 0], NULL)
            for n in range(N):
                for o in range(O):
                    out[n, o] = wide[o, n]

    def accumulate(self, const float[:, ::1] x,   # IN  (N, I)
                   int32_t[::1] buf,              # SCRATCH as for __call__
                   int32_t[:, ::1] raw):          # OUT (O, N) int32 accumulators
        """The int32 accumulators, transposed, before the epilogue (for tests)."""
        cdef int64_t N = x.shape[0]
        if N == 0 or raw.shape[0] == 0:
            return
        with nogil:
            self._run(&x[0, 0], N, raw.shape[0], buf.shape[0] // ((self.n_in + self.G - 1) // self.G),
                      &buf[0], NULL, &raw[0, 0])
