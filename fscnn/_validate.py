"""Argument checks shared by the operators (:mod:`fscnn.ops`), :mod:`fscnn.functional` and the
layer classes, and the rule that sizes a kernel's thread team (:func:`threads_for`).

Compiled kernels trust their arguments (bounds checks are off), so every public entry point
runs these checks first. Each check takes ``name``, the label its messages start with
(``"max_pool2d: kernel_size"``, ``"Conv2d 'features.0': input"``), and says what it expected
and what it received.
"""
import numbers
import time

import numpy as np

from ._config import get_num_threads
# Activations that kernels apply in their epilogue: name -> FSCNN_ACT_* code of fscnn_common.h.
from ._ext._runtime import ACTIVATION_CODES as FUSED_ACTIVATIONS


def is_int(v):
    """True for Python and NumPy integers, False for bools."""
    # The exact-type test first: the ABC check costs about 1 us per call.
    return type(v) is int or (isinstance(v, numbers.Integral)
                              and not isinstance(v, (bool, np.bool_)))


def as_float_array(x, name, layout=None, min_ndim=0, dtype=np.float32):
    """``x`` as a C-contiguous array of ``dtype``, copied only when it is not one already.

    Parameters
    ----------
    x : array_like
        Any array of a floating dtype (float16, float32, float64, ...), read-only and
        non-contiguous arrays included.
    name : str
        Label for error messages.
    layout : str, optional
        Axis letters, one per dimension, e.g. ``"NCHW"`` or ``"NF"``; the rank must match.
    min_ndim : int
        Smallest rank accepted when ``layout`` is not given.
    dtype : numpy float type
        Type of the result (float32 for everything the kernels read).

    Returns
    -------
    ndarray, C-contiguous
        ``x`` itself when it already is one (so it may be read-only: never write into it).

    Raises
    ------
    TypeError
        ``x`` is not convertible to an array, or its dtype is not floating (integer, bool,
        complex, object and string arrays are refused rather than silently converted).
    ValueError
        Wrong rank.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a float array, got a {type(x).__name__} that NumPy "
                        f"cannot convert to an array ({exc})") from None
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float array (float16, float32 or float64), got "
                        f"dtype {arr.dtype}")
    if layout is not None and arr.ndim != len(layout):
        raise ValueError(f"{name}: expected an array of shape ({', '.join(layout)}), got shape "
                         f"{arr.shape}")
    if arr.ndim < min_ndim:
        raise ValueError(f"{name}: expected an array with at least {min_ndim} dimensions, got "
                         f"shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def as_float32_nchw(x, name):
    """``x`` as a C-contiguous float32 array of shape (N, C, H, W); see :func:`as_float_array`."""
    return as_float_array(x, name, layout="NCHW")


def as_vector(x, name, length, dtype=np.float32):
    """``x`` as a C-contiguous array of shape (length,); see :func:`as_float_array`."""
    arr = as_float_array(x, name, dtype=dtype)
    if arr.shape != (length,):
        raise ValueError(f"{name}: expected an array of shape ({length},), got shape {arr.shape}")
    return arr


def real(value, name, minimum=None):
    """A finite real hyper-parameter (``eps``, ``negative_slope``) as a Python float.

    ``minimum``, when given, is an inclusive lower bound.
    """
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" and >= {minimum}"
        raise ValueError(f"{name} must be finite{bound}, got {value!r}")
    return float(value)


MAX_HYPER_PARAMETER = 2**31 - 1


def pair(value, name, minimum=1):
    """An int-or-pair hyper-parameter as a tuple of two Python ints, each ``>= minimum``.

    Parameters
    ----------
    value : int or sequence of two ints
    name : str
        Label for error messages, e.g. ``"max_pool2d: stride"``.
    minimum : int
        1 for sizes, strides and dilations ("must be positive"), 0 for padding
        ("must be non-negative").

    Returns
    -------
    (int, int)
    """
    if is_int(value):
        items = (value, value)
    else:
        try:
            items = tuple(value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if not all(is_int(v) for v in items):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {len(items)} values "
                         f"{value!r}")
    if min(items) < minimum:
        rule = "positive" if minimum == 1 else f">= {minimum}" if minimum else "non-negative"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    if max(items) > MAX_HYPER_PARAMETER:
        raise ValueError(f"{name} must be at most 2**31 - 1 (the kernels take 32-bit sizes), "
                         f"got {value!r}")
    return int(items[0]), int(items[1])


def padding4(padding, name):
    """Padding as (top, bottom, left, right) from an int, a pair (ph, pw) or a 4-tuple (the
    asymmetric pads of ONNX and TFLite models)."""
    if not is_int(padding) and np.ndim(padding) == 1 and len(padding) == 4:
        if not all(is_int(p) for p in padding):
            raise TypeError(f"{name} must hold ints, got {padding!r}")
        if min(padding) < 0 or max(padding) > MAX_HYPER_PARAMETER:
            raise ValueError(f"{name} must hold non-negative 32-bit ints, got {padding!r}")
        return tuple(int(p) for p in padding)
    ph, pw = pair(padding, name, minimum=0)
    return (ph, ph, pw, pw)


def is_padding4(padding):
    """Whether ``padding`` is given as a 4-tuple (top, bottom, left, right)."""
    return not is_int(padding) and not isinstance(padding, str) and np.ndim(padding) == 1 \
        and len(padding) == 4


def activation_code(activation, name):
    """The kernel code of a fused activation (``None`` or a name in ``ACTIVATION_CODES``:
    ``'relu'``, ``'relu6'``, ``'sigmoid'``, ``'silu'``, ``'hardswish'``, ``'hardsigmoid'``)."""
    if not (activation is None or isinstance(activation, str)) \
            or activation not in FUSED_ACTIVATIONS:
        choices = ", ".join(repr(a) for a in FUSED_ACTIVATIONS)
        raise ValueError(f"{name} must be one of {choices}, got {activation!r}")
    return FUSED_ACTIVATIONS[activation]


def check_nonempty_hw(name, input_hw):
    """Raise ValueError unless both spatial dimensions (H, W) are at least 1."""
    if min(input_hw) < 1:
        raise ValueError(f"{name}: expected an input with non-zero height and width, got "
                         f"(H, W) = {tuple(input_hw)}")


def sliding_output_hw(name, input_hw, kernel, stride, padding, dilation=(1, 1),
                      ceil_mode=False):
    """Output (Ho, Wo) of a window sliding over (H, W), with torch's rules.

    ``floor((size + pad_lo + pad_hi - dilation*(kernel-1) - 1) / stride) + 1`` per dimension;
    with ``ceil_mode`` the division rounds up, except that the last window must start inside
    the input or its leading padding.

    Parameters
    ----------
    name : str
        Label of the operation for error messages, e.g. ``"max_pool2d"``.
    input_hw, kernel, stride, dilation : (int, int)
    padding : (ph, pw) or (top, bottom, left, right)
        A pair pads both sides of a dimension equally.
    ceil_mode : bool

    Raises
    ------
    ValueError
        An input dimension is 0, or the input is too small for the dilated kernel (an output
        dimension would be below 1).
    """
    pads = padding if len(padding) == 4 else (padding[0], padding[0], padding[1], padding[1])
    check_nonempty_hw(name, input_hw)
    out = []
    for size, k, s, lo, hi, d in zip(input_hw, kernel, stride, pads[::2], pads[1::2], dilation):
        n = (size + lo + hi - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (n - 1) * s >= size + lo:
            n -= 1
        out.append(n)
    if min(out) < 1:
        raise ValueError(
            f"{name}: input of spatial size (H, W) = {tuple(input_hw)} is too small for "
            f"kernel_size {tuple(kernel)} with dilation {tuple(dilation)} and padding "
            f"{tuple(padding)}: the output would be {tuple(out)}")
    return tuple(out)


# Elements a thread should have to itself before another one is woken, at least (PyTorch's
# GRAIN_SIZE): waking an OpenMP thread costs microseconds on a quiet machine, more than
# pooling a small map. Where it costs more (a VM whose idle vCPUs take ~0.1-1 ms to wake: a
# residual add of 256x56x56 took 1 ms on 2 threads, 0.1 ms on 1), the grain grows to match:
# see elementwise_grain.
GRAIN = 32768
MAX_GRAIN = 1 << 24
_grains = {}  # threads -> elements per thread (elementwise_grain)


def elementwise_grain(threads):
    """Elements per thread from which an elementwise pass on ``threads`` threads beats one
    thread: GRAIN, or more where waking the threads costs more than GRAIN elements' work.

    Measured once per process and thread count (~25 ms): a ReLU pass over 1M floats in
    place on 1 thread and on ``threads``, in turns (medians, see fscnn._timing): what the
    extra threads cost beyond their share of the work, in elements of that work."""
    grain = _grains.get(threads)
    if grain is None:
        from ._config import simd_level_index
        from ._ext._pool import activation
        from ._timing import typical_calls
        n = 1 << 20
        buf = np.zeros(n, np.float32)
        relu, level = FUSED_ACTIVATIONS["relu"], simd_level_index()
        # each round first idles 2 ms, long enough for the other threads to stop spinning
        # and sleep (as they do while a layer runs on one thread): their wake-up is the cost
        _, one, many = typical_calls([lambda: time.sleep(0.002),
                                      lambda: activation(buf, buf, relu, level, 1),
                                      lambda: activation(buf, buf, relu, level, threads)],
                                     repeats=9, budget=0)
        overhead = max(0.0, many - one / threads)
        grain = _grains[threads] = int(min(MAX_GRAIN, max(GRAIN, overhead * n / one)))
    return grain


def threads_for(work):
    """Threads for a kernel that touches ``work`` elements: ``get_num_threads()``, fewer for
    small jobs (see :func:`elementwise_grain`), at least 1."""
    threads = get_num_threads()
    if threads == 1 or work < 2 * GRAIN:
        return 1
    return max(1, min(threads, work // elementwise_grain(threads)))
