"""Pooling kernels and the elementwise add with a fused activation.

Layout: pooling kernels see the input as P = N*C independent planes, x of shape (P, H, W),
and write a preallocated out of shape (P, Ho, Wo); the caller (``fscnn.functional.pooling``)
has validated every size, computed Ho and Wo with torch's rules (ceil_mode included) and
checked that H, W >= 1 and padding <= kernel // 2, so every window overlaps the padded
input. Threads take planes dynamically (``prange``, dynamic schedule): planes are
independent, and a thread descheduled on a busy machine then does not hold back the others.
Planes with small outputs go in chunks of at least a cache line of output (``_chunk``).
The per-plane functions take raw pointers: slicing a memoryview per plane
costs about 80 ns, as much as pooling a whole 7x7 plane.

Inputs are ``const`` memoryviews so read-only (e.g. memory-mapped) arrays are accepted.
"""
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cdef extern from "fscnn_common.h" nogil:
    enum:
        FSCNN_ACT_NONE
    void fscnn_act_array(int level, float *x, Py_ssize_t n, int act)

cdef extern from "fscnn_pool.h" nogil:
    float fscnn_nanmax(float m, float v)
    double fscnn_run_sum(const float* p, Py_ssize_t n)
    float fscnn_run_max(const float* p, Py_ssize_t n)
    void fscnn_maxpool2x2_row(const float* r0, const float* r1, float* out, Py_ssize_t n)
    void fscnn_rows_nanmax(float* dst, const float* src, Py_ssize_t n)
    void fscnn_cols_nanmax(float* out, const float* src, Py_ssize_t n, Py_ssize_t stride,
                           Py_ssize_t avail)

cdef enum:
    # Elements per parallel work item of the elementwise kernels (64 KiB of float32 per operand).
    ELEMENTWISE_CHUNK = 16384


cdef struct Planes:
    # Sizes of the input planes (H, W) and of the output planes (Ho, Wo).
    Py_ssize_t H, W, Ho, Wo


cdef struct Window:
    # A sliding window: size, stride, leading padding and dilation per dimension.
    Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw


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


cdef void _pool_plane(const float* x, float* out, Planes g, Window k, bint take_max,
                      bint count_include_pad, Py_ssize_t divisor_override) noexcept nogil:
    """Max or average pooling of one plane, with torch's padding and divisor rules.

    x: IN (H, W); out: OUT (Ho, Wo). O(Ho*Wo*kh*kw). For each output row the taps are visited
    outermost and the output columns innermost, so the inner loop is a strided streaming max
    or add over the row without any bounds test (it vectorises).
    Max: padding acts as -inf and a NaN in a window wins.
    Average: the window clipped to the padded input gives the count_include_pad divisor; the
    window clipped to the input gives the pixels summed and the other divisor;
    ``divisor_override`` (non-zero) replaces both.
    """
    cdef Py_ssize_t oy, ox, i, j, ilo, ihi, olo, ohi, y0, y1, x0, x1, col, divisor
    cdef const float* row
    cdef float* orow
    for oy in range(g.Ho):
        orow = out + oy * g.Wo
        for ox in range(g.Wo):
            orow[ox] = -INFINITY if take_max else 0.0
        y0 = oy * k.sh - k.ph
        _inside(y0, k.dh, k.kh, g.H, &ilo, &ihi)
        for i in range(ilo, ihi):
            row = x + (y0 + i * k.dh) * g.W
            for j in range(k.kw):
                col = j * k.dw - k.pw
                _inside(col, k.sw, g.Wo, g.W, &olo, &ohi)
                if take_max:
                    for ox in range(olo, ohi):
                        orow[ox] = fscnn_nanmax(orow[ox], row[ox * k.sw + col])
                else:
                    for ox in range(olo, ohi):
                        orow[ox] += row[ox * k.sw + col]
        if take_max:
            continue
        y1 = min(y0 + k.kh, g.H + k.ph)
        for ox in range(g.Wo):
            x0 = ox * k.sw - k.pw
            x1 = min(x0 + k.kw, g.W + k.pw)
            if divisor_override != 0:
                divisor = divisor_override
            elif count_include_pad:
                divisor = (y1 - y0) * (x1 - x0)
            else:
                divisor = (min(y1, g.H) - max(y0, 0)) * (min(x1, g.W) - max(x0, 0))
            orow[ox] /= divisor


cdef void _max_pool_plane_separable(const float* x, float* out, Planes g, Window k,
                                    float* rowmax) noexcept nogil:
    """Max pooling of one plane without dilation, as two passes per output row: the rows of
    the window are combined element by element into ``rowmax`` (W floats; contiguous, so it
    vectorises), then each output takes the max of its columns of ``rowmax`` (vectors for
    column strides 1 and 2): kh contiguous and kw strided passes per output row, where the
    general kernel makes kh*kw strided ones."""
    cdef Py_ssize_t oy, ox, i, ilo, ihi, y0, j, col, olo, ohi
    cdef float* orow
    for oy in range(g.Ho):
        y0 = oy * k.sh - k.ph
        _inside(y0, 1, k.kh, g.H, &ilo, &ihi)
        memcpy(rowmax, x + (y0 + ilo) * g.W, g.W * sizeof(float))
        for i in range(ilo + 1, ihi):
            fscnn_rows_nanmax(rowmax, x + (y0 + i) * g.W, g.W)
        orow = out + oy * g.Wo
        for ox in range(g.Wo):
            orow[ox] = -INFINITY
        for j in range(k.kw):
            col = j - k.pw
            _inside(col, k.sw, g.Wo, g.W, &olo, &ohi)
            if ohi > olo:
                fscnn_cols_nanmax(orow + olo, rowmax + olo * k.sw + col, ohi - olo, k.sw,
                                  g.W - (olo * k.sw + col))


cdef inline Py_ssize_t _chunk(Py_ssize_t out_plane) noexcept nogil:
    """Planes per dynamic chunk: enough for 64 output floats. One plane at a time, the threads
    of a global average pool (2048 planes of 7x7 -> 1x1) wrote neighbouring floats of one
    cache line and took a shared counter per plane: 234 us on 2 threads against 43 on one."""
    return max(1, 64 // max(1, out_plane))


def max_pool2d(const float[:, :, ::1] x, float[:, :, ::1] out, int kh, int kw, int sh, int sw,
               int ph, int pw, int dh, int dw, int n_threads):
    """Max pooling of every plane. x: IN (P, H, W); out: OUT (P, Ho, Wo)."""
    cdef Planes g = Planes(x.shape[1], x.shape[2], out.shape[1], out.shape[2])
    cdef Window k = Window(kh, kw, sh, sw, ph, pw, dh, dw)
    cdef Py_ssize_t chunk = _chunk(g.Ho * g.Wo)
    cdef Py_ssize_t p, oy
    cdef bint two_by_two = (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
                            and dh == 1 and dw == 1 and 2 * g.Ho <= g.H and 2 * g.Wo <= g.W)
    cdef bint separable = dh == 1 and dw == 1 and not two_by_two
    cdef float* rowmax
    for p in prange(x.shape[0], nogil=True, num_threads=n_threads, schedule="dynamic",
                   chunksize=chunk):
        if two_by_two:
            for oy in range(g.Ho):
                fscnn_maxpool2x2_row(&x[p, 2 * oy, 0], &x[p, 2 * oy + 1, 0], &out[p, oy, 0], g.Wo)
        elif separable:
            rowmax = <float*> malloc(g.W * sizeof(float))
            if rowmax == NULL:  # no memory for one row: the general kernel needs none
                _pool_plane(&x[p, 0, 0], &out[p, 0, 0], g, k, True, False, 0)
            else:
                _max_pool_plane_separable(&x[p, 0, 0], &out[p, 0, 0], g, k, rowmax)
                free(rowmax)
        else:
            _pool_plane(&x[p, 0, 0], &out[p, 0, 0], g, k, True, False, 0)


def avg_pool2d(const float[:, :, ::1] x, float[:, :, ::1] out, int kh, int kw, int sh, int sw,
               int ph, int pw, bint count_include_pad, int divisor_override, int n_threads):
    """Average pooling of every plane (divisor_override 0 means none).

    x: IN (P, H, W); out: OUT (P, Ho, Wo).
    """
    cdef Planes g = Planes(x.shape[1], x.shape[2], out.shape[1], out.shape[2])
    cdef Window k = Window(kh, kw, sh, sw, ph, pw, 1, 1)
    cdef Py_ssize_t chunk = _chunk(g.Ho * g.Wo)
    cdef Py_ssize_t p
    for p in prange(x.shape[0], nogil=True, num_threads=n_threads, schedule="dynamic",
                   chunksize=chunk):
        _pool_plane(&x[p, 0, 0], &out[p, 0, 0], g, k, False, count_include_pad,
                    divisor_override)


cdef void _adaptive_pool_plane(const float* x, float* out, Planes g, const Py_ssize_t* rows,
                               const Py_ssize_t* cols, bint take_max) noexcept nogil:
    """Adaptive max (NaN wins) or mean pooling of one plane.

    x: IN (H, W); rows: IN (Ho, 2) and cols: IN (Wo, 2), the [start, stop) of each output
    row's and column's window; out: OUT (Ho, Wo). O(H*W) when windows do not overlap. A
    window spanning whole rows is reduced as one contiguous run, otherwise row by row.
    """
    cdef Py_ssize_t oy, ox, yy, y0, y1, x0, x1, n_rows, run
    cdef double acc
    cdef float m
    for oy in range(g.Ho):
        y0, y1 = rows[2 * oy], rows[2 * oy + 1]
        for ox in range(g.Wo):
            x0, x1 = cols[2 * ox], cols[2 * ox + 1]
            n_rows, run = y1 - y0, x1 - x0
            if run == g.W:
                n_rows, run = 1, (y1 - y0) * g.W
            acc = 0.0
            m = -INFINITY
            for yy in range(y0, y0 + n_rows):
                if take_max:
                    m = fscnn_nanmax(m, fscnn_run_max(x + yy * g.W + x0, run))
                else:
                    acc = acc + fscnn_run_sum(x + yy * g.W + x0, run)
            out[oy * g.Wo + ox] = m if take_max else <float>(acc / ((y1 - y0) * (x1 - x0)))


def adaptive_pool2d(const float[:, :, ::1] x, float[:, :, ::1] out,
                    const Py_ssize_t[:, ::1] rows, const Py_ssize_t[:, ::1] cols, bint take_max,
                    int n_threads):
    """Adaptive max or average pooling of every plane.

    x: IN (P, H, W); rows: IN (Ho, 2), cols: IN (Wo, 2): window bounds within [0, H] and
    [0, W], start < stop; out: OUT (P, Ho, Wo).
    """
    cdef Planes g = Planes(x.shape[1], x.shape[2], out.shape[1], out.shape[2])
    cdef Py_ssize_t p, chunk = _chunk(g.Ho * g.Wo)
    for p in prange(x.shape[0], nogil=True, num_threads=n_threads, schedule="dynamic",
                   chunksize=chunk):
        _adaptive_pool_plane(&x[p, 0, 0], &out[p, 0, 0], g, &rows[0, 0], &cols[0, 0], take_max)


cdef void _add_act(const float* a, const float* b, float* out, Py_ssize_t n, int act,
                   int level) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = a[i] + b[i]
    if act != FSCNN_ACT_NONE:
        fscnn_act_array(level, out, n, act)  # the chunk is still in L1


def add(const float[::1] a, const float[::1] b, float[::1] out, int act, int level,
        int n_threads):
    """out = act(a + b), act an ``FSCNN_ACT_*`` code (NaN propagates through every act)
    evaluated at SIMD level ``level``, as the kernels' epilogues evaluate it.

    a, b: IN (n,); out: OUT (n,). O(n), memory bound; threads take chunks of
    ELEMENTWISE_CHUNK elements.
    """
    cdef Py_ssize_t n = a.shape[0], c, start
    cdef Py_ssize_t n_chunks = (n + ELEMENTWISE_CHUNK - 1) // ELEMENTWISE_CHUNK
    for c in prange(n_chunks, nogil=True, num_threads=n_threads, schedule="dynamic"):
        start = c * ELEMENTWISE_CHUNK
        _add_act(&a[start], &b[start], &out[start], min(ELEMENTWISE_CHUNK, n - start), act,
                 level)


def activation(const float[::1] x, float[::1] out, int act, int level, int n_threads):
    """out = act(x), act an ``FSCNN_ACT_*`` code other than none, evaluated at SIMD level
    ``level`` with the kernels' epilogue (fscnn_level.h): one pass instead of NumPy's several.
    out may be x itself.

    x: IN (n,); out: OUT (n,). O(n); threads take chunks of ELEMENTWISE_CHUNK elements.
    """
    cdef Py_ssize_t n = x.shape[0], c, start, m
    cdef Py_ssize_t n_chunks = (n + ELEMENTWISE_CHUNK - 1) // ELEMENTWISE_CHUNK
    for c in prange(n_chunks, nogil=True, num_threads=n_threads, schedule="dynamic"):
        start = c * ELEMENTWISE_CHUNK
        m = min(ELEMENTWISE_CHUNK, n - start)
        if <const float*> &out[start] != &x[start]:
            memcpy(&out[start], &x[start], m * sizeof(float))
        fscnn_act_array(level, &out[start], m, act)
