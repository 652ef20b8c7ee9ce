"""Sparse Linear kernel (CSR weights times a batch of vectors).

Callers (fscnn.ops) validate every argument; nothing here checks shapes or index bounds.
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint16_t

cdef extern from "fscnn_common.h" nogil:
    float fscnn_act(float v, int act)

ctypedef fused index_t:
    uint16_t
    int32_t


def sparse_linear(const float[:, ::1] x,          # IN  (N, I)
                  const int64_t[::1] indptr,      # IN  (O+1,)
                  const index_t[::1] indices,     # IN  (nnz,) columns in [0, I)
                  const float[::1] data,          # IN  (nnz,)
                  const float[::1] bias,          # IN  (O,) or None
                  float[:, ::1] out,              # OUT (N, O)
                  int act, int n_threads):
    """out[n, o] = act(bias[o] + sum_k data[k] * x[n, indices[k]]), O(N * nnz).

    At batch 1 this is memory-bound: each non-zero costs its 4-byte value plus a 2-byte
    (uint16, when I <= 65536) or 4-byte column index. Rows are handed to threads dynamically
    (chunks of 16 rows, so a descheduled thread does not stall the others); each output is one
    sequential sum, so results do not depend on the thread count."""
    cdef int64_t N = x.shape[0], O = out.shape[1]
    cdef int64_t o, n, k, k0, k1
    cdef float acc0, acc1, acc2, acc3
    cdef bint has_bias = bias is not None
    if N == 0 or O == 0:
        return
    for o in prange(O, nogil=True, num_threads=n_threads, schedule="dynamic", chunksize=16):
        k0 = indptr[o]
        k1 = indptr[o + 1]
        for n in range(N):
            # four partial sums break the dependency chain of one long sum
            acc0 = 0
            acc1 = 0
            acc2 = 0
            acc3 = 0
            k = k0
            while k + 4 <= k1:
                acc0 = acc0 + data[k] * x[n, indices[k]]
                acc1 = acc1 + data[k + 1] * x[n, indices[k + 1]]
                acc2 = acc2 + data[k + 2] * x[n, indices[k + 2]]
                acc3 = acc3 + data[k + 3] * x[n, indices[k + 3]]
                k = k + 4
            while k < k1:
                acc0 = acc0 + data[k] * x[n, indices[k]]
                k = k + 1
            acc0 = (acc0 + acc1) + (acc2 + acc3)
            if has_bias:
                acc0 = acc0 + bias[o]
            out[n, o] = fscnn_act(acc0, act)
