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
