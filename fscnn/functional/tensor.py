"""Broadcasting arithmetic and tensor manipulation, with NumPy's (and ONNX's) semantics.

What a general network graph needs besides convolutions: binary arithmetic with NumPy
broadcasting (squeeze-excitation scales, per-channel shifts), concatenation and splitting,
slicing, reshaping, transposition, padding, reductions and gathers.

Float inputs are computed in float32 (the precision of every fscnn kernel) and give float32
results, 64-byte aligned where a convolution may read them next. Integer inputs keep their
dtype: shape computations of exported graphs (``Shape -> Gather -> Concat -> Reshape``) run
on int64 tensors. Every function checks its arguments and raises ``ValueError``/``TypeError``
naming the problem.
"""
import numpy as np

from .._ext import _pool
from .._config import simd_level_index
from .._memory import aligned_empty
from .._validate import activation_code, is_int, threads_for
from ..ops import PendingOutput

__all__ = ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "sqrt", "concat", "split",
           "slice_axes", "reshape", "transpose", "squeeze", "unsqueeze", "flatten", "pad",
           "reduce", "gather", "gather_nd", "where", "compare", "tile", "arange", "expand",
           "cast", "depth_to_space"]


def _tensor(x, name):
    """``x`` as an ndarray of a real numeric dtype, float types as float32."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected an array, got a {type(x).__name__} ({exc})") from None
    if arr.dtype.kind == "f":
        return arr if arr.dtype == np.float32 else arr.astype(np.float32)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected a float array (or an integer one, for shape "
                        f"arithmetic), got dtype {arr.dtype}")
    return arr


def _operands(a, b, name):
    """Both operands, float32 or both integer: mixing a float with an integer array is
    refused, as everywhere in fscnn (integers are never silently taken for floats)."""
    a, b = _tensor(a, f"{name}: a"), _tensor(b, f"{name}: b")
    if (a.dtype.kind == "f") != (b.dtype.kind == "f"):
        which, other = ("b", b) if a.dtype.kind == "f" else ("a", a)
        raise TypeError(f"{name}: {which}: expected a float array like the other operand, got "
                        f"dtype {other.dtype}")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast") from None
    return a, b, shape


def _binary(ufunc, a, b, name):
    a, b, shape = _operands(a, b, name)
    if a.dtype.kind != "f":
        return ufunc(a, b)
    out = aligned_empty(shape)
    with np.errstate(all="ignore"):  # inf/NaN follow IEEE arithmetic, as in torch
        ufunc(a, b, out=out)
    return out


def add(a, b, activation=None):
    """``activation(a + b)`` with NumPy broadcasting.

    Parameters
    ----------
    a, b : array_like
        Float inputs are computed in float32; two integer inputs keep their integer type.
    activation : {None, 'relu', 'relu6', 'sigmoid', 'silu', 'hardswish', 'hardsigmoid'}
        Applied to the sum (floats only) with the kernels' epilogue code. Same-shape float
        inputs take one compiled pass.

    Returns
    -------
    ndarray of the broadcast shape
    """
    code = activation_code(activation, "add: activation")
    if a.__class__ is PendingOutput or b.__class__ is PendingOutput:
        # a prepared convolution's output not computed yet (a residual connection): its
        # kernel adds the other operand in its epilogue when that has the output's shape
        pending, other = (a, b) if a.__class__ is PendingOutput else (b, a)
        if other.__class__ is PendingOutput:  # both (a graph's conv and shortcut conv)
            if other.adds_in_epilogue() and not pending.adds_in_epilogue():
                pending, other = other, pending
            other = other.result()
        if (other.__class__ is np.ndarray and other.dtype == np.float32
                and other.shape == pending.shape):
            return pending.result(other, activation)
        a, b = pending.result(), other
    a, b, shape = _operands(a, b, "add")
    if a.dtype.kind != "f":
        if code:
            raise TypeError(f"add: activation {activation!r} needs float inputs, got "
                            f"{a.dtype}")
        return a + b
    out = aligned_empty(shape)
    if a.shape == b.shape == shape:
        if out.size:
            _pool.add(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1),
                      out.reshape(-1), code, simd_level_index(), threads_for(out.size))
        return out
    with np.errstate(all="ignore"):
        np.add(a, b, out=out)
    if code and out.size:
        flat = out.reshape(-1)
        _pool.activation(flat, flat, code, simd_level_index(), threads_for(out.size))
    return out


def sub(a, b):
    """``a - b`` with NumPy broadcasting (float32, or the integer type of two integers)."""
    return _binary(np.subtract, a, b, "sub")


def mul(a, b):
    """``a * b`` with NumPy broadcasting (float32, or the integer type of two integers)."""
    return _binary(np.multiply, a, b, "mul")


def div(a, b):
    """``a / b`` with NumPy broadcasting; two integer inputs divide with truncation toward
    zero (as C and ONNX do); a zero integer divisor raises."""
    a, b, shape = _operands(a, b, "div")
    if a.dtype.kind == "f":
        return _binary(np.divide, a, b, "div")
    if np.any(b == 0):
        raise ZeroDivisionError("div: integer division by zero")
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q).astype(np.result_type(a, b))


def pow(a, b):
    """``a ** b`` elementwise with broadcasting; the result has ``a``'s type (float32 for
    floats), as ONNX's Pow."""
    a, b = _tensor(a, "pow: a"), _tensor(b, "pow: b")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"pow: shapes {a.shape} and {b.shape} do not broadcast") from None
    if a.dtype.kind == "f":
        out = aligned_empty(shape)
        with np.errstate(all="ignore"):
            np.power(a, b.astype(np.float32, copy=False), out=out)
        return out
    if b.dtype.kind == "f":
        return np.power(a.astype(np.float64), b).astype(a.dtype)
    return np.power(a, b).astype(a.dtype)


def maximum(a, b):
    """Elementwise maximum with broadcasting; NaN propagates."""
    return _binary(np.maximum, a, b, "maximum")


def minimum(a, b):
    """Elementwise minimum with broadcasting; NaN propagates."""
    return _binary(np.minimum, a, b, "minimum")


def sqrt(x):
    """Square root elementwise (NaN for negative inputs), float32."""
    x = _tensor(x, "sqrt: x").astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def _axis(axis, ndim, name, extra=0):
    """``axis`` (negative counts from the end) checked against ``ndim + extra`` dimensions."""
    if not is_int(axis):
        raise TypeError(f"{name}: axis must be an int, got {axis!r}")
    n = ndim + extra
    if not -n <= axis < n:
        raise ValueError(f"{name}: axis {axis} is out of range for {n} dimensions")
    return int(axis) % n if n else 0


def _axes(axes, ndim, name, extra=0):
    """Sorted distinct normalised axes (see :func:`_axis`)."""
    out = [_axis(a, ndim, name, extra) for a in axes]
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: repeated axes in {list(axes)}")
    return sorted(out)


def concat(tensors, axis):
    """Join ``tensors`` along ``axis`` (their other dimensions must agree).

    Parameters
    ----------
    tensors : sequence of array_like
        All floats (computed as float32) or all integers.
    axis : int

    Returns
    -------
    ndarray
    """
    arrays = [_tensor(t, f"concat: input {i}") for i, t in enumerate(tensors)]
    if not arrays:
        raise ValueError("concat: expected at least one input")
    if len({a.ndim for a in arrays}) != 1 or arrays[0].ndim == 0:
        raise ValueError(f"concat: inputs must have the same rank >= 1, got shapes "
                         f"{[a.shape for a in arrays]}")
    ax = _axis(axis, arrays[0].ndim, "concat")
    rest = {a.shape[:ax] + a.shape[ax + 1:] for a in arrays}
    if len(rest) != 1:
        raise ValueError(f"concat: inputs must agree except along axis {axis}, got shapes "
                         f"{[a.shape for a in arrays]}")
    if any(a.dtype.kind == "f" for a in arrays):
        shape = list(arrays[0].shape)
        shape[ax] = sum(a.shape[ax] for a in arrays)
        out = aligned_empty(tuple(shape))
        return np.concatenate([a.astype(np.float32, copy=False) for a in arrays], axis=ax,
                              out=out)
    return np.concatenate(arrays, axis=ax)


def split(x, sizes, axis=0):
    """Cut ``x`` along ``axis`` into consecutive pieces of the given ``sizes``.

    Parameters
    ----------
    x : array_like
    sizes : sequence of int
        Non-negative, summing to ``x.shape[axis]``.
    axis : int

    Returns
    -------
    tuple of ndarray
        Contiguous copies.
    """
    x = _tensor(x, "split: x")
    ax = _axis(axis, x.ndim, "split")
    sizes = [int(s) for s in sizes]
    if min(sizes, default=0) < 0 or sum(sizes) != x.shape[ax]:
        raise ValueError(f"split: sizes {sizes} must be non-negative and sum to "
                         f"{x.shape[ax]} (axis {axis} of shape {x.shape})")
    bounds = np.cumsum([0] + sizes)
    index = [slice(None)] * x.ndim
    pieces = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index[ax] = slice(int(lo), int(hi))
        pieces.append(_copy(x[tuple(index)]))
    return tuple(pieces)


def _copy(view):
    """A C-contiguous copy of ``view``, 64-byte aligned for floats."""
    if view.dtype != np.float32:
        return np.ascontiguousarray(view)
    out = aligned_empty(view.shape)
    np.copyto(out, view)
    return out


def slice_axes(x, starts, ends, axes=None, steps=None):
    """``x`` sliced along ``axes``, with ONNX Slice's rules.

    Starts and ends are clamped to the dimension (negative values count from the end, so
    ``ends = -1`` drops the last element and ``INT64_MAX`` means "to the end"); a negative
    step walks backwards.

    Parameters
    ----------
    x : array_like
    starts, ends : sequence of int
    axes : sequence of int, optional
        Default ``0, 1, ..., len(starts) - 1``.
    steps : sequence of int, optional
        Non-zero; default 1.

    Returns
    -------
    ndarray
        A contiguous copy.
    """
    x = _tensor(x, "slice: x")
    n = len(starts)
    axes = list(range(n)) if axes is None else list(axes)
    steps = [1] * n if steps is None else list(steps)
    if not len(ends) == len(axes) == len(steps) == n:
        raise ValueError(f"slice: starts, ends, axes and steps must have the same length, got "
                         f"{n}, {len(ends)}, {len(axes)}, {len(steps)}")
    _axes(axes, x.ndim, "slice")  # distinct, in range
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        ax = _axis(axis, x.ndim, "slice")
        start, end, step = int(start), int(end), int(step)
        if step == 0:
            raise ValueError("slice: steps must be non-zero")
        size = x.shape[ax]
        if step > 0:
            lo = min(max(start + size if start < 0 else start, 0), size)
            hi = min(max(end + size if end < 0 else end, 0), size)
        else:
            lo = min(max(start + size if start < 0 else start, -1), size - 1)
            hi = min(max(end + size if end < 0 else end, -1), size - 1)
            hi = None if hi < 0 else hi
        index[ax] = slice(lo, hi, step)
    return _copy(x[tuple(index)])


def reshape(x, shape, allowzero=False):
    """``x`` with a new ``shape`` (ONNX Reshape's rules).

    ``-1`` takes the size that keeps the element count (at most one); ``0`` copies the
    corresponding dimension of ``x`` unless ``allowzero``.

    Parameters
    ----------
    x : array_like
    shape : sequence of int
    allowzero : bool

    Returns
    -------
    ndarray
        A view of ``x`` when it is contiguous.
    """
    x = _tensor(x, "reshape: x")
    shape = [int(s) for s in shape]
    if not allowzero:
        for i, s in enumerate(shape):
            if s == 0:
                if i >= x.ndim:
                    raise ValueError(f"reshape: shape {shape} copies dimension {i} (a 0) of "
                                     f"an input of shape {x.shape}, which has none")
                shape[i] = x.shape[i]
    if shape.count(-1) > 1 or min(shape, default=0) < -1:
        raise ValueError(f"reshape: shape {shape} may hold one -1 and no other negative size")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if known == 0 or x.size % known:
            raise ValueError(f"reshape: cannot reshape an input of shape {x.shape} "
                             f"({x.size} elements) to {shape}")
        shape[shape.index(-1)] = x.size // known
    elif known != x.size:
        raise ValueError(f"reshape: cannot reshape an input of shape {x.shape} ({x.size} "
                         f"elements) to {tuple(shape)}")
    return np.ascontiguousarray(x).reshape(shape)


def transpose(x, perm=None):
    """``x`` with its axes permuted (reversed when ``perm`` is None); a contiguous copy."""
    x = _tensor(x, "transpose: x")
    perm = list(range(x.ndim))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) != list(range(x.ndim)):
        raise ValueError(f"transpose: perm {perm} is not a permutation of the {x.ndim} axes "
                         f"of an input of shape {x.shape}")
    return _copy(x.transpose(perm))


def squeeze(x, axes=None):
    """``x`` without the given size-1 ``axes`` (all size-1 axes when None)."""
    x = _tensor(x, "squeeze: x")
    if axes is None:
        return x.reshape([s for s in x.shape if s != 1])
    axes = _axes(axes, x.ndim, "squeeze")
    bad = [a for a in axes if x.shape[a] != 1]
    if bad:
        raise ValueError(f"squeeze: axes {bad} of an input of shape {x.shape} are not of size 1")
    return x.reshape([s for i, s in enumerate(x.shape) if i not in axes])


def unsqueeze(x, axes):
    """``x`` with size-1 dimensions inserted at ``axes`` (positions in the output)."""
    x = _tensor(x, "unsqueeze: x")
    axes = _axes(axes, x.ndim, "unsqueeze", extra=len(axes))
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return x.reshape(shape)


def flatten(x, axis=1):
    """``x`` as a 2-D array: dimensions before ``axis`` form the rows (ONNX Flatten)."""
    x = _tensor(x, "flatten: x")
    if not is_int(axis) or not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"flatten: axis must be an int in [{-x.ndim}, {x.ndim}], got {axis!r}")
    ax = axis + x.ndim if axis < 0 else axis
    rows = int(np.prod(x.shape[:ax]))
    return np.ascontiguousarray(x).reshape(rows, int(np.prod(x.shape[ax:])))


PAD_MODES = ("constant", "reflect", "edge")


def pad(x, pads, mode="constant", value=0.0):
    """``x`` padded by ``pads`` = (begin_0, ..., begin_{n-1}, end_0, ..., end_{n-1}).

    Parameters
    ----------
    x : array_like
    pads : sequence of 2 * x.ndim ints
        Negative values crop.
    mode : {'constant', 'reflect', 'edge'}
        'reflect' mirrors without repeating the edge (needs pads smaller than the dimension);
        'edge' repeats the border value.
    value : float
        Fill of 'constant'.

    Returns
    -------
    ndarray
    """
    x = _tensor(x, "pad: x")
    pads = [int(p) for p in pads]
    if len(pads) != 2 * x.ndim:
        raise ValueError(f"pad: expected {2 * x.ndim} pads for an input of shape {x.shape}, got "
                         f"{len(pads)}")
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {PAD_MODES}, got {mode!r}")
    begin, end = pads[:x.ndim], pads[x.ndim:]
    crop = tuple(slice(max(-b, 0), s - max(-e, 0)) for b, e, s in zip(begin, end, x.shape))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    if mode == "reflect":
        bad = [i for i, (w, s) in enumerate(zip(widths, x.shape)) if max(w) >= s and max(w)]
        if bad:
            raise ValueError(f"pad: mode 'reflect' needs pads smaller than the dimension, got "
                             f"pads {pads} for shape {x.shape}")
    if mode == "edge" and any(max(w) and s == 0 for w, s in zip(widths, x.shape)):
        raise ValueError(f"pad: mode 'edge' cannot pad an empty dimension (shape {x.shape})")
    if mode == "constant":
        out = np.pad(x, widths, mode="constant", constant_values=np.asarray(value, x.dtype))
    else:
        out = np.pad(x, widths, mode=mode)
    return _copy(out)


_REDUCTIONS = {"mean": np.mean, "sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}


def reduce(x, op, axes=None, keepdims=True):
    """Reduce ``x`` with ``op`` ('mean', 'sum', 'max', 'min', 'prod') over ``axes``.

    Parameters
    ----------
    x : array_like
    op : str
    axes : sequence of int or None
        None (or empty) reduces over every axis.
    keepdims : bool

    Returns
    -------
    ndarray
        Sums and means accumulate in float64 and return float32 for float inputs.
    """
    x = _tensor(x, f"reduce_{op}: x")
    fn = _REDUCTIONS.get(op)
    if fn is None:
        raise ValueError(f"reduce: op must be one of {tuple(_REDUCTIONS)}, got {op!r}")
    axis = None if not axes else tuple(_axes(axes, x.ndim, f"reduce_{op}"))
    if x.size == 0 and op in ("max", "min"):  # the identity of the reduction, as ONNX
        fill = {"max": -np.inf, "min": np.inf}[op] if x.dtype.kind == "f" else (
            np.iinfo(x.dtype).min if op == "max" else np.iinfo(x.dtype).max) \
            if x.dtype.kind in "iu" else op == "min"
        shape = np.sum(np.zeros(x.shape, np.int8), axis=axis, keepdims=bool(keepdims)).shape
        return np.full(shape, fill, x.dtype)
    kwargs = {"dtype": np.float64} if op in ("mean", "sum") and x.dtype.kind == "f" else {}
    out = fn(x, axis=axis, keepdims=bool(keepdims), **kwargs)
    return np.asarray(out, dtype=x.dtype)


def gather(x, indices, axis=0):
    """Entries of ``x`` at ``indices`` along ``axis`` (negative indices count from the end)."""
    x = _tensor(x, "gather: x")
    ax = _axis(axis, x.ndim, "gather")
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"gather: indices must be integers, got dtype {idx.dtype}")
    size = x.shape[ax]
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise IndexError(f"gather: indices must be in [{-size}, {size - 1}] for axis {axis} of "
                         f"shape {x.shape}, got {idx.min()}..{idx.max()}")
    return np.take(x, np.where(idx < 0, idx + size, idx), axis=ax)


def gather_nd(x, indices, batch_dims=0):
    """Slices of ``x`` at the index tuples in the last axis of ``indices`` (ONNX GatherND):
    ``out[b..., i...] = x[b..., *indices[b..., i..., :]]`` over ``batch_dims`` leading
    dimensions."""
    x = _tensor(x, "gather_nd: x")
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu" or idx.ndim < 1:
        raise TypeError(f"gather_nd: indices must be an integer array of rank >= 1, got "
                        f"{idx.dtype} of shape {idx.shape}")
    b, k = int(batch_dims), idx.shape[-1]
    if not 0 <= b < min(x.ndim, idx.ndim) or x.shape[:b] != idx.shape[:b] or b + k > x.ndim:
        raise ValueError(f"gather_nd: indices of shape {idx.shape} with batch_dims={b} do not "
                         f"fit an input of shape {x.shape}")
    limits = np.array(x.shape[b:b + k])
    if idx.size and (np.any(idx < -limits) or np.any(idx >= limits)):
        raise IndexError(f"gather_nd: indices out of range for shape {x.shape}")
    idx = np.where(idx < 0, idx + limits, idx)
    batches = int(np.prod(x.shape[:b]))
    xb = x.reshape((batches,) + x.shape[b:])
    ib = idx.reshape((batches,) + idx.shape[b:])
    out = np.stack([xb[n][tuple(np.moveaxis(ib[n], -1, 0))] for n in range(batches)])
    return out.reshape(idx.shape[:-1] + x.shape[b + k:])


def where(condition, a, b):
    """``a`` where ``condition`` holds, else ``b``, with broadcasting."""
    cond = np.asarray(condition)
    if cond.dtype != np.bool_:
        raise TypeError(f"where: condition must be a bool array, got dtype {cond.dtype}")
    a, b, _ = _operands(a, b, "where")
    return np.where(cond, a, b)


_COMPARISONS = {"equal": np.equal, "less": np.less, "greater": np.greater,
                "less_equal": np.less_equal, "greater_equal": np.greater_equal,
                "and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}


def compare(a, b, op):
    """``a op b`` elementwise with broadcasting, as a bool array; ``op`` one of 'equal',
    'less', 'greater', 'less_equal', 'greater_equal', or (on bool arrays) 'and', 'or',
    'xor'."""
    fn = _COMPARISONS.get(op)
    if fn is None:
        raise ValueError(f"compare: op must be one of {tuple(_COMPARISONS)}, got {op!r}")
    a, b, _ = _operands(a, b, op)
    return fn(a, b)


def tile(x, repeats):
    """``x`` repeated ``repeats[i]`` times along each axis i."""
    x = _tensor(x, "tile: x")
    repeats = [int(r) for r in repeats]
    if len(repeats) != x.ndim or min(repeats, default=0) < 0:
        raise ValueError(f"tile: expected {x.ndim} non-negative repeats, got {repeats}")
    return np.tile(x, repeats)


def arange(start, limit, delta):
    """``start, start + delta, ...`` up to ``limit`` (excluded), of the inputs' type."""
    start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    if delta == 0:
        raise ValueError("range: delta must be non-zero")
    dtype = np.result_type(start, limit, delta)
    n = max(int(np.ceil((limit - start) / delta)), 0)
    return (start + np.arange(n) * delta).astype(np.float32 if dtype.kind == "f" else dtype)


def expand(x, shape):
    """``x`` broadcast with ``shape`` (ONNX Expand: the result may be larger than ``shape``)."""
    x = _tensor(x, "expand: x")
    try:
        target = np.broadcast_shapes(x.shape, tuple(int(s) for s in shape))
    except ValueError:
        raise ValueError(f"expand: shape {tuple(shape)} does not broadcast with input shape "
                         f"{x.shape}") from None
    return _copy(np.broadcast_to(x, target))


_CAST_TYPES = {"float32": np.float32, "float64": np.float32, "float16": np.float32,
               "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
               "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
               "bool": np.bool_}


def cast(x, dtype):
    """``x`` converted to ``dtype`` (a NumPy type name); every float type gives float32, the
    precision fscnn computes in. Floats cast to integers truncate toward zero."""
    target = _CAST_TYPES.get(str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype)
    if target is None:
        raise TypeError(f"cast: unsupported target type {dtype!r}; supported: "
                        f"{sorted(_CAST_TYPES)}")
    x = _tensor(x, "cast: x")
    if np.dtype(target).kind in "iu" and x.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            return np.trunc(x).astype(target)
    return x.astype(target)


DEPTH_TO_SPACE_MODES = ("DCR", "CRD")


def check_depth_to_space(block_size, mode, name):
    """Raise for a ``block_size`` that is not a positive int or an unknown ``mode``."""
    if not is_int(block_size) or block_size < 1:
        raise ValueError(f"{name}: block_size must be a positive int, got {block_size!r}")
    if mode not in DEPTH_TO_SPACE_MODES:
        raise ValueError(f"{name}: mode must be one of {DEPTH_TO_SPACE_MODES}, got {mode!r}")


def depth_to_space(x, block_size, mode="DCR"):
    """Move channels of ``x`` into ``block_size`` x ``block_size`` spatial blocks (ONNX's
    DepthToSpace, TFLite's DEPTH_TO_SPACE, torch's ``pixel_shuffle`` for 'CRD').

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
        C divisible by ``block_size ** 2``.
    block_size : int
    mode : {'DCR', 'CRD'}
        Channel order of the blocks: 'DCR' (depth-column-row, TensorFlow's and TFLite's)
        takes output channel ``c`` at block offset ``(i, j)`` from input channel
        ``(i * block_size + j) * C_out + c``; 'CRD' (torch's) from
        ``c * block_size ** 2 + i * block_size + j``.

    Returns
    -------
    ndarray of shape (N, C / block_size ** 2, H * block_size, W * block_size)
    """
    x = _tensor(x, "depth_to_space: x")
    check_depth_to_space(block_size, mode, "depth_to_space")
    if x.ndim != 4 or x.shape[1] % (block_size * block_size):
        raise ValueError(f"depth_to_space: expected an input of shape (N, C, H, W) with C "
                         f"divisible by {block_size * block_size}, got shape {x.shape}")
    n, c, h, w = x.shape
    b = int(block_size)
    out_c = c // (b * b)
    if mode == "DCR":
        blocks = x.reshape(n, b, b, out_c, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        blocks = x.reshape(n, out_c, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return _copy(blocks).reshape(n, out_c, h * b, w * b)
