"""Pooling kernels and the elementwise add with a fused activation.

Layout: pooling kernels see the input as P = N*C independent planes, x of shape (P, H, W),
and write a preallocated out of shape (P, Ho, Wo); the caller (``fscnn.functional.pooling``)
has validated every size, computed Ho and Wo with torch's rules (ceil_mode included) and
checked that padding <= kernel // 2, so every window overlaps the padded input. Threads split
the planes (``prange``, static schedule): planes are independent and equally sized.

Inputs are ``const`` memoryviews so read-only (e.g. memory-mapped) arrays are accepted.
"""
from cython.parallel cimport prange
from libc.math cimport INFINITY

cdef extern from "fscnn_common.h" nogil:
    float fscnn_act(float v, int act)
    enum:
        FSCNN_ACT_NONE
        FSCNN_ACT_RELU
        FSCNN_ACT_RELU6

ACTIVATION_CODES = {None: FSCNN_ACT_NONE, "relu": FSCNN_ACT_RELU, "relu6": FSCNN_ACT_RELU6}

cdef enum:
    # Elements per parallel work item of the elementwise kernels (64 KiB of float32 per operand).
    ELEMENTWISE_CHUNK = 16384


cdef inline void _inside(Py_ssize_t offset, Py_ssize_t step, Py_ssize_t n, Py_ssize_t size,
                         Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the indices i in [0, n) with 0 <= offset + i*step < size."""
    cdef Py_ssize_t a = 0, b = n
    if offset < 0:
        a = (step - 1 - offset) // step
    if offset + (n - 1) * step >= size:
        b = (size - 1 - offset) // step + 1 if offset < size else 0
    lo[0] = a
    hi[0] = b if b > a else a


cdef void _max_pool_plane(const float[:, ::1] x, float[:, ::1] out,
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """Max pooling of one plane; padding acts as -inf and a NaN in a window wins.

    x: IN (H, W); out: OUT (Ho, Wo). O(Ho*Wo*kh*kw). For each output row the taps are visited
    outermost and the output columns innermost, so the inner loop is a strided streaming max
    without any bounds test.
    """
    cdef Py_ssize_t H = x.shape[0], W = x.shape[1], Ho = out.shape[0], Wo = out.shape[1]
    cdef Py_ssize_t oy, ox, i, j, ilo, ihi, olo, ohi, y0, col
    cdef float v, m
    for oy in range(Ho):
        for ox in range(Wo):
            out[oy, ox] = -INFINITY
        y0 = oy * sh - ph
        _inside(y0, dh, kh, H, &ilo, &ihi)
        for i in range(ilo, ihi):
            for j in range(kw):
                col = j * dw - pw
                _inside(col, sw, Wo, W, &olo, &ohi)
                for ox in range(olo, ohi):
                    v = x[y0 + i * dh, ox * sw + col]
                    m = out[oy, ox]
                    out[oy, ox] = v if (v > m or v != v) else m


def max_pool2d(const float[:, :, ::1] x, float[:, :, ::1] out, int kh, int kw, int sh, int sw,
               int ph, int pw, int dh, int dw, int n_threads):
    """Max pooling of every plane. x: IN (P, H, W); out: OUT (P, Ho, Wo)."""
    cdef Py_ssize_t p
    for p in prange(x.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        _max_pool_plane(x[p], out[p], kh, kw, sh, sw, ph, pw, dh, dw)


cdef void _avg_pool_plane(const float[:, ::1] x, float[:, ::1] out,
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw, bint count_include_pad,
                          Py_ssize_t divisor_override) noexcept nogil:
    """Average pooling of one plane with torch's divisor rules.

    x: IN (H, W); out: OUT (Ho, Wo). O(Ho*Wo*kh*kw). A window is first clipped to the padded
    input (its size is the count_include_pad divisor), then to the input (the pixels summed,
    and the divisor otherwise); ``divisor_override`` (non-zero) replaces both divisors.
    Sums are accumulated in double.
    """
    cdef Py_ssize_t H = x.shape[0], W = x.shape[1], Ho = out.shape[0], Wo = out.shape[1]
    cdef Py_ssize_t oy, ox, yy, xx, y0, y1, x0, x1, divisor
    cdef double acc
    for oy in range(Ho):
        y0 = oy * sh - ph
        y1 = min(y0 + kh, H + ph)
        for ox in range(Wo):
            x0 = ox * sw - pw
            x1 = min(x0 + kw, W + pw)
            divisor = (y1 - y0) * (x1 - x0)
            if not count_include_pad:
                divisor = (min(y1, H) - max(y0, 0)) * (min(x1, W) - max(x0, 0))
            if divisor_override != 0:
                divisor = divisor_override
            acc = 0.0
            for yy in range(max(y0, 0), min(y1, H)):
                for xx in range(max(x0, 0), min(x1, W)):
                    acc = acc + x[yy, xx]
            out[oy, ox] = <float>(acc / divisor)


def avg_pool2d(const float[:, :, ::1] x, float[:, :, ::1] out, int kh, int kw, int sh, int sw,
               int ph, int pw, bint count_include_pad, int divisor_override, int n_threads):
    """Average pooling of every plane (divisor_override 0 means none).

    x: IN (P, H, W); out: OUT (P, Ho, Wo).
    """
    cdef Py_ssize_t p
    for p in prange(x.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        _avg_pool_plane(x[p], out[p], kh, kw, sh, sw, ph, pw, count_include_pad,
                        divisor_override)


cdef void _adaptive_pool_plane(const float[:, ::1] x, float[:, ::1] out,
                               bint take_max) noexcept nogil:
    """Adaptive max (NaN wins) or mean pooling of one plane.

    x: IN (H, W); out: OUT (Ho, Wo). Window of output row i: rows [floor(i*H/Ho),
    ceil((i+1)*H/Ho)), likewise for columns (torch's rule; windows may overlap).
    O(H*W) when Ho divides H and Wo divides W.
    """
    cdef Py_ssize_t H = x.shape[0], W = x.shape[1], Ho = out.shape[0], Wo = out.shape[1]
    cdef Py_ssize_t oy, ox, yy, xx, y0, y1, x0, x1
    cdef double acc
    cdef float v, m
    for oy in range(Ho):
        y0 = (oy * H) // Ho
        y1 = ((oy + 1) * H + Ho - 1) // Ho
        for ox in range(Wo):
            x0 = (ox * W) // Wo
            x1 = ((ox + 1) * W + Wo - 1) // Wo
            acc = 0.0
            m = -INFINITY
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    v = x[yy, xx]
                    if take_max:
                        if v > m or v != v:
                            m = v
                    else:
                        acc = acc + v
            out[oy, ox] = m if take_max else <float>(acc / ((y1 - y0) * (x1 - x0)))


def adaptive_pool2d(const float[:, :, ::1] x, float[:, :, ::1] out, bint take_max,
                    int n_threads):
    """Adaptive max or average pooling of every plane. x: IN (P, H, W); out: OUT (P, Ho, Wo)."""
    cdef Py_ssize_t p
    for p in prange(x.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        _adaptive_pool_plane(x[p], out[p], take_max)


cdef void _add_act(const float* a, const float* b, float* out, Py_ssize_t n,
                   int act) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = fscnn_act(a[i] + b[i], act)


def add(const float[::1] a, const float[::1] b, float[::1] out, int act, int n_threads):
    """out = act(a + b), act an ``FSCNN_ACT_*`` code (NaN propagates through every act).

    a, b: IN (n,); out: OUT (n,). O(n), memory bound; threads take chunks of
    ELEMENTWISE_CHUNK elements.
    """
    cdef Py_ssize_t n = a.shape[0], c, start
    cdef Py_ssize_t n_chunks = (n + ELEMENTWISE_CHUNK - 1) // ELEMENTWISE_CHUNK
    for c in prange(n_chunks, nogil=True, num_threads=n_threads, schedule="static"):
        start = c * ELEMENTWISE_CHUNK
        _add_act(&a[start], &b[start], &out[start], min(ELEMENTWISE_CHUNK, n - start), act)
