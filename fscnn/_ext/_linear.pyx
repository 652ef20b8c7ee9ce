"""Sparse Linear kernel (CSR weights times a batch of vectors), see include/splinear.h.

Callers (fscnn.ops) validate every argument; nothing here checks shapes or index bounds.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t

cdef extern from "splinear.h" nogil:
    int64_t splin_panel_width()
    void splin_rows(int level, const float *x, int64_t N, int64_t I, int64_t O,
                    const int64_t *indptr, int64_t P, int64_t width, const uint16_t *idx,
                    const float *val, const float *bias, float *out, int64_t r0, int64_t r1,
                    int act)

# rows per work item: enough for the x panel in L1 to be reused many times, few enough for a
# dynamic schedule to balance two or more threads on a 1000-row layer
cdef enum:
    ROWS_PER_ITEM = 32


def panel_width():
    """Input features per column panel of the panel-major weight layout."""
    return splin_panel_width()


def sparse_linear(const float[:, ::1] x,          # IN  (N, I)
                  const int64_t[::1] indptr,      # IN  (P*O+1,) panel-major rows: p*O + o
                  const uint16_t[::1] indices,    # IN  (nnz,) columns relative to the panel
                  const float[::1] data,          # IN  (nnz,)
                  const float[::1] bias,          # IN  (O,) or None
                  float[:, ::1] out,              # OUT (N, O)
                  int act, int level, int n_threads):
    """out[n, o] = act(bias[o] + sum over panels p, non-zeros k of row p*O + o of
    data[k] * x[n, p * panel_width() + indices[k]]), O(N * nnz).

    At batch 1 this is memory-bound: each non-zero costs its 4-byte value plus a 2-byte index.
    Blocks of rows are handed to threads dynamically (a descheduled thread does not stall the
    others); each output is summed in the same order whatever thread computes it, so results
    do not depend on the thread count."""
    cdef int64_t N = x.shape[0], I = x.shape[1], O = out.shape[1]
    cdef int64_t P = (indptr.shape[0] - 1) // O if O else 0
    cdef int64_t n_items = (O + ROWS_PER_ITEM - 1) // ROWS_PER_ITEM
    cdef int64_t width = splin_panel_width()
    cdef int64_t i, r0, r1
    cdef const float *bptr = &bias[0] if bias is not None else NULL
    cdef const float *vptr = &data[0] if data.shape[0] else NULL
    cdef const uint16_t *iptr = &indices[0] if indices.shape[0] else NULL
    if N == 0 or O == 0:
        return
    for i in prange(n_items, nogil=True, num_threads=n_threads, schedule="dynamic"):
        r0 = i * ROWS_PER_ITEM
        r1 = r0 + ROWS_PER_ITEM if r0 + ROWS_PER_ITEM < O else O
        splin_rows(level, &x[0, 0], N, I, O, &indptr[0], P, width, iptr, vptr, bptr, &out[0, 0],
                   r0, r1, act)
