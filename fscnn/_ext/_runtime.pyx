# cython: language_level=3
"""Build and CPU facts the Python layer needs: OpenMP, compiler, SIMD support, and the codes
of the activations that kernels fuse into their epilogue."""

cdef extern from "fscnn_common.h" nogil:
    int FSCNN_HAVE_OPENMP
    const char* FSCNN_BUILD_COMPILER
    int fscnn_cpu_simd_level()
    int omp_get_max_threads()
    int omp_get_num_procs()
    enum:
        FSCNN_ACT_NONE
        FSCNN_ACT_RELU
        FSCNN_ACT_RELU6
        FSCNN_ACT_SIGMOID
        FSCNN_ACT_SILU
        FSCNN_ACT_HARDSWISH
        FSCNN_ACT_HARDSIGMOID

cimport numpy as cnp

cnp.import_array()

SIMD_NAMES = ("baseline", "avx2", "avx512")

# Activation name -> the FSCNN_ACT_* code that every kernel's `act` argument takes.
# hardsigmoid is torch's relu6(x + 3) / 6 (ONNX HardSigmoid with alpha=1/6, beta=0.5); silu is
# x * sigmoid(x), a.k.a. swish.
ACTIVATION_CODES = {None: FSCNN_ACT_NONE, "relu": FSCNN_ACT_RELU, "relu6": FSCNN_ACT_RELU6,
                    "sigmoid": FSCNN_ACT_SIGMOID, "silu": FSCNN_ACT_SILU,
                    "hardswish": FSCNN_ACT_HARDSWISH, "hardsigmoid": FSCNN_ACT_HARDSIGMOID}


def openmp_enabled():
    """True when the extensions were compiled with OpenMP."""
    return bool(FSCNN_HAVE_OPENMP)


def compiler():
    """The C compiler that built the extensions, as its ``--version`` first line."""
    return FSCNN_BUILD_COMPILER.decode("utf-8", "replace")


def cpu_simd_level():
    """Highest SIMD level the CPU supports: 0 baseline, 1 AVX2+FMA, 2 AVX-512."""
    return fscnn_cpu_simd_level()


def openmp_max_threads():
    """The OpenMP runtime's default team size (1 without OpenMP)."""
    return omp_get_max_threads()


def address(cnp.ndarray a):
    """The address of ``a``'s first element: what fscnn._memory aligns on. numpy's own
    ``a.ctypes.data`` builds a ctypes object (~1.5 us, paid per layer per call)."""
    return <size_t>cnp.PyArray_DATA(a)


# ---------------------------------------------------------------------------------------------
# Activation memory pool
#
# Every call of a model allocates its activations afresh. glibc serves blocks above its mmap
# threshold (128 KiB, raised dynamically up to 32 MiB as such blocks are freed) with mmap, and
# a fresh mapping faults in and zeroes every page on first touch: ~1 us per 4 KiB page, paid
# again on every call for every activation the threshold does not cover. That is always the
# case above 32 MiB (VGG16's first activations at batch 8 are 100 MiB), and for every block
# once MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_THRESHOLD_ is set, which turns the dynamic
# threshold off: Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it spawns,
# and ResNet-18 at 90% ran x1.5 slower there (146 vs 96 ms per batch of 8, one thread).
# So fscnn keeps the blocks of freed activations, 64-byte aligned, and hands a block of the
# same size back out: a prepared model's calls reuse memory that is already mapped.
#
# A block returns to the pool when the last array viewing it dies (the _Block is the arrays'
# base object). The pool is a C array guarded by the GIL (allocation and __dealloc__ both hold
# it), evicted oldest first beyond FSCNN_POOL_SLOTS blocks or the byte limit.

from libc.stdlib cimport free
from libc.string cimport memmove

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef enum:
    FSCNN_POOL_SLOTS = 256

cdef size_t _pool_size[FSCNN_POOL_SLOTS]
cdef void *_pool_ptr[FSCNN_POOL_SLOTS]
cdef int _pool_count = 0
cdef size_t _pool_bytes = 0
cdef size_t _pool_limit = 1 << 30


cdef void _pool_evict_oldest() noexcept:
    global _pool_count, _pool_bytes
    free(_pool_ptr[0])
    _pool_bytes -= _pool_size[0]
    _pool_count -= 1
    memmove(&_pool_ptr[0], &_pool_ptr[1], _pool_count * sizeof(void *))
    memmove(&_pool_size[0], &_pool_size[1], _pool_count * sizeof(size_t))


cdef class _Block:
    """64-byte aligned memory that goes back to the pool when no array views it any more."""
    cdef void *ptr
    cdef size_t nbytes

    def __dealloc__(self):
        global _pool_count, _pool_bytes
        if self.ptr == NULL:
            return
        if self.nbytes > _pool_limit:
            free(self.ptr)
            return
        while _pool_count > 0 and (_pool_count == FSCNN_POOL_SLOTS
                                   or _pool_bytes + self.nbytes > _pool_limit):
            _pool_evict_oldest()
        _pool_ptr[_pool_count] = self.ptr
        _pool_size[_pool_count] = self.nbytes
        _pool_count += 1
        _pool_bytes += self.nbytes


cdef _Block _take(size_t nbytes):
    """A block of ``nbytes`` (a multiple of 64): the newest pooled one of that size, else a
    new one."""
    global _pool_count, _pool_bytes
    cdef _Block block = _Block.__new__(_Block)
    cdef int i
    cdef void *ptr = NULL
    for i in range(_pool_count - 1, -1, -1):
        if _pool_size[i] == nbytes:
            ptr = _pool_ptr[i]
            _pool_count -= 1
            _pool_bytes -= nbytes
            memmove(&_pool_ptr[i], &_pool_ptr[i + 1], (_pool_count - i) * sizeof(void *))
            memmove(&_pool_size[i], &_pool_size[i + 1], (_pool_count - i) * sizeof(size_t))
            break
    if ptr == NULL and posix_memalign(&ptr, 64, nbytes) != 0:
        raise MemoryError(f"cannot allocate {nbytes} bytes for an activation")
    block.ptr = ptr
    block.nbytes = nbytes
    return block


def pooled_empty(shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` (a numpy dtype of a
    built-in type) on a 64-byte boundary, in pooled memory."""
    cdef cnp.npy_intp dims[32]
    cdef int nd = len(shape), i
    total = dtype.itemsize  # a Python int: no overflow before the check below
    if nd > 32:
        raise ValueError(f"pooled_empty: {nd} dimensions (at most 32)")
    for i in range(nd):
        if shape[i] < 0:
            raise ValueError(f"pooled_empty: negative dimension in {tuple(shape)}")
        dims[i] = shape[i]
        total *= shape[i]
    if total > (1 << 62):
        raise MemoryError(f"cannot allocate an array of shape {tuple(shape)}")
    cdef size_t nbytes = max(64, (total + 63) // 64 * 64)
    cdef _Block block = _take(nbytes)
    cdef cnp.ndarray arr = cnp.PyArray_SimpleNewFromData(nd, dims, dtype.num, block.ptr)
    cnp.set_array_base(arr, block)
    return arr


def set_pool_limit(size_t nbytes):
    """Keep at most ``nbytes`` of freed activation memory for reuse (0: keep none); blocks
    beyond the new limit are released at once."""
    global _pool_limit
    _pool_limit = nbytes
    while _pool_count > 0 and _pool_bytes > _pool_limit:
        _pool_evict_oldest()


def pool_info():
    """(blocks, bytes, limit) of the activation memory pool."""
    return _pool_count, _pool_bytes, _pool_limit
