"""Linear kernels, each bound to one plan: sparse (panel-major CSR weights times a batch of
vectors, see include/splinear.h) and dense (scipy's BLAS per block of output features).

A plan (fscnn.kernels) builds the kernel once from its arrays; calling it runs the kernel on
one input into a preallocated output. Callers validate every argument; nothing here checks
shapes or index bounds.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t
from scipy.linalg.cython_blas cimport sgemm, sgemv

cdef extern from "fscnn_common.h" nogil:
    enum:
        FSCNN_ACT_NONE
    void fscnn_act_array(int level, float *x, int64_t n, int act)

cdef extern from "splinear.h" nogil:
    ctypedef struct splin_layer:
        const int64_t *indptr
        const uint16_t *idx
        const float *val
        const float *bias
        int64_t n_in, n_out, P, width
        int act, level
    int64_t splin_panel_width()
    int64_t splin_batch_width(int level)
    void splin_batch_rows(const splin_layer *lay, const float *xt, int64_t N, int64_t Np,
                          float *out, int64_t r0, int64_t r1)
    void splin_rows(const splin_layer *lay, const float *x, int64_t N, float *out, int64_t r0,
                    int64_t r1)

# rows per work item: enough for the x panel in L1 to be reused many times, few enough for a
# dynamic schedule to balance two or more threads on a 1000-row layer
cdef enum:
    ROWS_PER_ITEM = 32


def batch_width(int level):
    """Floats per vector of the batched sparse linear path at SIMD level ``level``."""
    return splin_batch_width(level)


def panel_width():
    """Input features per column panel of the panel-major weight layout."""
    return splin_panel_width()


cdef class SparseLinear:
    """out[n, o] = act(bias[o] + sum over panels p, non-zeros k of row p*O + o of
    data[k] * x[n, p * panel_width() + indices[k]]), O(N * nnz), bound to one plan.

    At batch 1 this is memory-bound: each non-zero costs its 4-byte value plus a 2-byte index.
    Blocks of rows are handed to threads dynamically (a descheduled thread does not stall the
    others); each output is summed in the same order whatever thread computes it, so results
    do not depend on the thread count.

    Parameters
    ----------
    indptr : int64 array of shape (P*O+1,)
        Panel-major rows: row p*O + o is panel p of output feature o.
    indices : uint16 array of shape (nnz,)
        Columns relative to the panel.
    data : float32 array of shape (nnz,)
    bias : float32 array of shape (O,) or None
    in_features, out_features, act, level, n_threads : int
    """
    cdef splin_layer k
    cdef int n_threads
    cdef const int64_t[::1] indptr
    cdef const uint16_t[::1] indices
    cdef const float[::1] data
    cdef const float[::1] bias

    def __init__(self, const int64_t[::1] indptr, const uint16_t[::1] indices,
                 const float[::1] data, const float[::1] bias, int64_t in_features,
                 int64_t out_features, int act, int level, int n_threads):
        self.indptr, self.indices, self.data, self.bias = indptr, indices, data, bias
        self.k.indptr = &indptr[0]
        self.k.idx = &indices[0] if indices.shape[0] else NULL
        self.k.val = &data[0] if data.shape[0] else NULL
        self.k.bias = &bias[0] if bias is not None else NULL
        self.k.n_in, self.k.n_out, self.k.width = in_features, out_features, splin_panel_width()
        self.k.P = (indptr.shape[0] - 1) // out_features
        self.k.act, self.k.level, self.n_threads = act, level, n_threads

    def __call__(self, const float[:, ::1] x,     # IN  (N, I)
                 float[:, ::1] out):              # OUT (N, O)
        """Apply to ``x`` into ``out``."""
        if x.shape[0] > 0:
            self._rows(&x[0, 0], x.shape[0], 0, &out[0, 0])

    def batched(self, const float[:, ::1] xt,    # IN  (I, Np): x transposed, rows padded
                int64_t N, float[:, ::1] out):    # OUT (N, O)
        """Apply to the batch of ``N`` vectors given transposed as ``xt`` into ``out`` (the
        batched path; ``xt``'s rows hold a multiple of :func:`batch_width` floats)."""
        cdef int64_t Np = xt.shape[1]
        if (xt.shape[0] != self.k.n_in or out.shape[0] != N or out.shape[1] != self.k.n_out
                or N > Np or Np % splin_batch_width(self.k.level)):
            raise ValueError("SparseLinear.batched: inconsistent shapes")
        if N > 0:
            self._rows(&xt[0, 0], N, Np, &out[0, 0])

    cdef void _rows(self, const float *src, int64_t N, int64_t Np, float *out) noexcept:
        """Blocks of rows to the threads: src is x (N, I) when Np is 0, else xt (I, Np)."""
        cdef const splin_layer *k = &self.k
        cdef int64_t O = k.n_out
        cdef int64_t n_items = (O + ROWS_PER_ITEM - 1) // ROWS_PER_ITEM
        cdef int64_t i, r0, r1
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        for i in prange(n_items, nogil=True, num_threads=nt, schedule="dynamic"):
                r0 = i * ROWS_PER_ITEM
                r1 = r0 + ROWS_PER_ITEM if r0 + ROWS_PER_ITEM < O else O
                if Np == 0:
                    splin_rows(k, src, N, out, r0, r1)
                else:
                    splin_batch_rows(k, src, N, Np, out, r0, r1)


cdef class DenseLinear:
    """out = act(x . weight^T + bias) through scipy's BLAS (SGEMV at batch 1, else SGEMM), one
    call per block of ROWS_PER_ITEM output features, blocks handed to fscnn's threads
    dynamically; bound to one plan. The caller keeps BLAS itself single-threaded
    (fscnn._blas): BLAS's own threads ignore fscnn's thread count and, with a static split,
    stall whenever one of them is descheduled (a 512x1000 layer took 10 ms instead of
    0.03 ms on a busy machine).

    Parameters
    ----------
    weight : float32 array of shape (O, I)
    bias : float32 array of shape (O,) or None
    act, level, n_threads : int
        Activation code, the SIMD level of its epilogue, threads.
    """
    cdef const float[:, ::1] weight
    cdef const float[::1] bias
    cdef int act, level, n_threads

    def __init__(self, const float[:, ::1] weight, const float[::1] bias, int act, int level,
                 int n_threads):
        self.weight, self.bias, self.act, self.n_threads = weight, bias, act, n_threads
        self.level = level

    def __call__(self, const float[:, ::1] x,     # IN  (N, I)
                 float[:, ::1] out):              # OUT (N, O)
        """Apply to ``x`` into ``out``."""
        cdef const float[:, ::1] weight = self.weight
        cdef const float[::1] bias = self.bias
        cdef int act = self.act
        cdef int64_t N = x.shape[0], I = x.shape[1], O = out.shape[1]
        cdef int64_t n_items = (O + ROWS_PER_ITEM - 1) // ROWS_PER_ITEM
        cdef int64_t i, r0, n, o
        cdef int m, nn, kk, lda, ldb, ldc, inc = 1
        cdef float one = 1.0, zero = 0.0, v
        cdef char *trans = b"T"
        cdef char *no = b"N"
        cdef bint has_bias = bias is not None
        if N == 0 or O == 0:
            return
        if I == 0:
            out[:, :] = 0
        cdef int nt = self.n_threads  # no self.* in prange clauses (debug builds)
        for i in prange(n_items, nogil=True, num_threads=nt, schedule="dynamic"):
            r0 = i * ROWS_PER_ITEM
            m = <int> (ROWS_PER_ITEM if r0 + ROWS_PER_ITEM < O else O - r0)
            kk = <int> I
            lda = <int> I
            if I > 0:
                if N == 1:
                    # column-major view: y (m) = W_block (I x m)^T . x
                    sgemv(trans, &kk, &m, &one, <float *> &weight[r0, 0], &lda,
                          <float *> &x[0, 0], &inc, &zero, &out[0, r0], &inc)
                else:
                    nn = <int> N
                    ldb = <int> I
                    ldc = <int> O
                    # column-major view: out^T block (m x N) = W_block (I x m)^T . x^T (I x N)
                    sgemm(trans, no, &m, &nn, &kk, &one, <float *> &weight[r0, 0], &lda,
                          <float *> &x[0, 0], &ldb, &zero, &out[0, r0], &ldc)
            for n in range(N):
                if has_bias:
                    for o in range(r0, r0 + m):
                        out[n, o] = out[n, o] + bias[o]
                if act != FSCNN_ACT_NONE:
                    fscnn_act_array(self.level, &out[n, r0], m, act)
