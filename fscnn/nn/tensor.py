"""Layers for the arithmetic and tensor plumbing of general graphs (ONNX and TFLite models).

torch writes these as expressions in a ``forward`` (``x * s``, ``torch.cat``, ``x.view``);
a graph needs them as nodes. Each is a module wrapping a function of
:mod:`fscnn.functional.tensor`, with NumPy broadcasting and ONNX's semantics. Hyper-parameters
that a graph computes at run time (a ``Reshape`` target built from ``Shape``, say) may be
given to ``forward`` instead of the constructor; the constructor's value is used when the
argument is None.

Float tensors are computed in float32; integer tensors (shapes, indices) keep their type.
"""
import numbers

import numpy as np

from .. import functional as F
from ..functional import tensor as T
from .module import Module


def _ints(values, name, allow_none=True):
    """``values`` (a sequence or 1-D array of ints) as a tuple of Python ints, or None."""
    if values is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required")
    arr = np.asarray(values)
    if arr.ndim > 1 or arr.dtype.kind not in "iu" and arr.size:
        raise TypeError(f"{name} must be a sequence of ints, got {values!r}")
    return tuple(int(v) for v in arr.reshape(-1))


def _number(value, name, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


class _TensorOp(Module):
    """A graph operation on one or more arrays (no weights)."""

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()
                         if not k.startswith("_") and k != "training")


class Add(_TensorOp):
    """``activation(a + b)`` with broadcasting; ``activation`` None, 'relu' or 'relu6'
    (a residual connection's ReLU runs in the same pass)."""

    def __init__(self, activation=None):
        super().__init__()
        F.add(np.zeros(1, np.float32), np.zeros(1, np.float32), activation)  # validates
        self.activation = activation

    def forward(self, a, b):
        return T.add(a, b, self.activation)


class _Binary(_TensorOp):
    _function = None

    def forward(self, a, b):
        return type(self)._function(a, b)


class Sub(_Binary):
    """``a - b`` with broadcasting."""
    _function = staticmethod(T.sub)


class Mul(_Binary):
    """``a * b`` with broadcasting."""
    _function = staticmethod(T.mul)


class Div(_Binary):
    """``a / b`` with broadcasting (integers: truncated toward zero)."""
    _function = staticmethod(T.div)


class Pow(_Binary):
    """``a ** b`` with broadcasting; the result has ``a``'s type."""
    _function = staticmethod(T.pow)


class MatMul(_Binary):
    """``a @ b`` with NumPy's (and ONNX's) batched matrix product rules, float32."""

    @staticmethod
    def _function(a, b):
        a = np.asarray(a, np.float32)
        b = np.asarray(b, np.float32)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must have at least one dimension, got shapes "
                             f"{a.shape} and {b.shape}")
        try:
            return np.matmul(a, b)
        except ValueError as exc:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match ({exc})") \
                from None


class _Variadic(_TensorOp):
    _function = None

    def forward(self, *inputs):
        if not inputs:
            raise ValueError(f"{self._get_name()}: expected at least one input")
        out = inputs[0]
        if len(inputs) == 1:
            return T._copy(np.asarray(out)) if np.asarray(out).dtype.kind == "f" else out
        for x in inputs[1:]:
            out = type(self)._function(out, x)
        return out


class Sum(_Variadic):
    """The elementwise sum of any number of inputs, with broadcasting."""
    _function = staticmethod(T.add)


class Max(_Variadic):
    """The elementwise maximum of any number of inputs, with broadcasting."""
    _function = staticmethod(T.maximum)


class Min(_Variadic):
    """The elementwise minimum of any number of inputs, with broadcasting."""
    _function = staticmethod(T.minimum)


class Mean(_Variadic):
    """The elementwise mean of any number of inputs, with broadcasting."""

    def forward(self, *inputs):
        if not inputs:
            raise ValueError("Mean: expected at least one input")
        total = inputs[0]
        for x in inputs[1:]:
            total = T.add(total, x)
        return T.div(total, np.float32(len(inputs)))


def _floats(x, name):
    return F.tensor._tensor(x, name).astype(np.float32, copy=False)


UNARY_FUNCTIONS = {
    "sqrt": T.sqrt,
    "erf": F.erf,
    "exp": lambda x: np.exp(_floats(x, "exp")),
    "log": lambda x: np.log(_floats(x, "log")),
    "neg": lambda x: np.negative(F.tensor._tensor(x, "neg")),
    "abs": lambda x: np.abs(F.tensor._tensor(x, "abs")),
    "reciprocal": lambda x: np.reciprocal(_floats(x, "reciprocal")),
    "floor": lambda x: np.floor(_floats(x, "floor")),
    "ceil": lambda x: np.ceil(_floats(x, "ceil")),
    "softplus": lambda x: np.logaddexp(_floats(x, "softplus"), np.float32(0)),
    "softsign": lambda x: (lambda v: v / (1 + np.abs(v)))(_floats(x, "softsign")),
}


class Unary(_TensorOp):
    """An elementwise function by name: one of :data:`UNARY_FUNCTIONS` ('sqrt', 'erf',
    'exp', 'log', 'neg', 'abs', 'reciprocal', 'floor', 'ceil', 'softplus', 'softsign')."""

    def __init__(self, op):
        super().__init__()
        if op not in UNARY_FUNCTIONS:
            raise ValueError(f"Unary: op must be one of {sorted(UNARY_FUNCTIONS)}, got {op!r}")
        self.op = op

    def forward(self, x):
        with np.errstate(all="ignore"):  # NaN/inf as IEEE arithmetic gives them
            return UNARY_FUNCTIONS[self.op](x)


class Clip(_TensorOp):
    """``x`` limited to ``[min, max]``; either bound may be None (or given to ``forward``)."""

    def __init__(self, min=None, max=None):
        super().__init__()
        self.min = _number(min, "Clip: min")
        self.max = _number(max, "Clip: max")

    def forward(self, x, min=None, max=None):
        lo = self.min if min is None else np.asarray(min).reshape(-1)[0].item()
        hi = self.max if max is None else np.asarray(max).reshape(-1)[0].item()
        x = F.tensor._tensor(x, "clip: x")
        if x.dtype.kind == "f":
            return F.clip(x, lo, hi)
        out = x if lo is None else np.maximum(x, np.asarray(lo).astype(x.dtype))
        return out if hi is None else np.minimum(out, np.asarray(hi).astype(x.dtype))


class PRelu(_TensorOp):
    """``x`` where positive, else ``slope * x``, the slope broadcast to ``x`` (ONNX's PRelu,
    whose slope tensor may be (C, 1, 1), (1,) or any broadcastable shape)."""

    def forward(self, x, slope):
        x = _floats(x, "prelu: x")
        slope = _floats(slope, "prelu: slope")
        try:
            np.broadcast_shapes(x.shape, slope.shape)
        except ValueError:
            raise ValueError(f"prelu: slope of shape {slope.shape} does not broadcast to the "
                             f"input's shape {x.shape}") from None
        return np.where(x > 0, x, x * slope).astype(np.float32, copy=False)


class FlatSoftmax(_TensorOp):
    """Softmax (or log-softmax) of ``x`` flattened to 2-D at ``axis``: ONNX's Softmax before
    opset 13, which normalises over all the dimensions from ``axis`` on."""

    def __init__(self, axis=1, log=False):
        super().__init__()
        self.axis = int(axis)
        self.log = bool(log)

    def forward(self, x):
        x = _floats(x, "softmax: x")
        flat = T.flatten(x, self.axis)
        out = F.log_softmax(flat, 1) if self.log else F.softmax(flat, 1)
        return out.reshape(x.shape)


class Concat(_TensorOp):
    """Join the inputs along ``axis``."""

    def __init__(self, axis):
        super().__init__()
        self.axis = int(axis)

    def forward(self, *inputs):
        return T.concat(inputs, self.axis)


class Split(_TensorOp):
    """Cut the input along ``axis`` into pieces of ``sizes``, or into ``num_outputs`` pieces
    (equal, the last one smaller when the size does not divide, as ONNX)."""

    def __init__(self, axis=0, sizes=None, num_outputs=None):
        super().__init__()
        self.axis = int(axis)
        self.sizes = _ints(sizes, "Split: sizes")
        self.num_outputs = None if num_outputs is None else int(num_outputs)
        if (self.sizes is None) == (self.num_outputs is None):
            raise ValueError("Split: give exactly one of sizes and num_outputs")

    def forward(self, x, sizes=None):
        sizes = self.sizes if sizes is None else _ints(sizes, "split: sizes")
        if sizes is None:
            length = np.shape(x)[T._axis(self.axis, np.ndim(x), "split")]
            step = -(-length // self.num_outputs)
            sizes = [min(step, length - i * step) for i in range(self.num_outputs)]
        return T.split(x, sizes, self.axis)


class Slice(_TensorOp):
    """``x`` sliced along ``axes`` from ``starts`` to ``ends`` by ``steps`` (ONNX Slice)."""

    def __init__(self, starts=None, ends=None, axes=None, steps=None):
        super().__init__()
        self.starts = _ints(starts, "Slice: starts")
        self.ends = _ints(ends, "Slice: ends")
        self.axes = _ints(axes, "Slice: axes")
        self.steps = _ints(steps, "Slice: steps")

    def forward(self, x, starts=None, ends=None, axes=None, steps=None):
        pick = lambda given, own: own if given is None else _ints(given, "slice")  # noqa: E731
        starts, ends = pick(starts, self.starts), pick(ends, self.ends)
        if starts is None or ends is None:
            raise ValueError("slice: starts and ends are required")
        return T.slice_axes(x, starts, ends, pick(axes, self.axes), pick(steps, self.steps))


class DepthToSpace(_TensorOp):
    """Channels of a (N, C, H, W) input moved into ``block_size`` x ``block_size`` spatial
    blocks, in ``mode`` 'DCR' (TensorFlow's order) or 'CRD' (torch's ``pixel_shuffle``); see
    :func:`fscnn.functional.depth_to_space`."""

    def __init__(self, block_size, mode="DCR"):
        super().__init__()
        T.check_depth_to_space(block_size, mode, "DepthToSpace")
        self.block_size = int(block_size)
        self.mode = mode

    def forward(self, x):
        return F.depth_to_space(x, self.block_size, self.mode)


class Reshape(_TensorOp):
    """``x`` reshaped to ``shape`` (``-1`` infers one size; ``0`` copies the input's
    dimension unless ``allowzero``)."""

    def __init__(self, shape=None, allowzero=False):
        super().__init__()
        self.shape = _ints(shape, "Reshape: shape")
        self.allowzero = bool(allowzero)

    def forward(self, x, shape=None):
        shape = self.shape if shape is None else _ints(shape, "reshape: shape")
        if shape is None:
            raise ValueError("reshape: shape is required")
        return T.reshape(x, shape, self.allowzero)


class Flatten2d(_TensorOp):
    """``x`` as a 2-D array whose rows are the dimensions before ``axis`` (ONNX Flatten)."""

    def __init__(self, axis=1):
        super().__init__()
        self.axis = int(axis)

    def forward(self, x):
        return T.flatten(x, self.axis)


class Transpose(_TensorOp):
    """``x`` with axes permuted by ``perm`` (reversed when None)."""

    def __init__(self, perm=None):
        super().__init__()
        self.perm = _ints(perm, "Transpose: perm")

    def forward(self, x):
        return T.transpose(x, self.perm)


class Squeeze(_TensorOp):
    """``x`` without its size-1 ``axes`` (all of them when None)."""

    def __init__(self, axes=None):
        super().__init__()
        self.axes = _ints(axes, "Squeeze: axes")

    def forward(self, x, axes=None):
        return T.squeeze(x, self.axes if axes is None else _ints(axes, "squeeze: axes"))


class Unsqueeze(_TensorOp):
    """``x`` with size-1 dimensions inserted at ``axes`` (positions in the result)."""

    def __init__(self, axes=None):
        super().__init__()
        self.axes = _ints(axes, "Unsqueeze: axes")

    def forward(self, x, axes=None):
        axes = self.axes if axes is None else _ints(axes, "unsqueeze: axes")
        if axes is None:
            raise ValueError("unsqueeze: axes are required")
        return T.unsqueeze(x, axes)


class Expand(_TensorOp):
    """``x`` broadcast with ``shape``."""

    def __init__(self, shape=None):
        super().__init__()
        self.shape = _ints(shape, "Expand: shape")

    def forward(self, x, shape=None):
        shape = self.shape if shape is None else _ints(shape, "expand: shape")
        if shape is None:
            raise ValueError("expand: shape is required")
        return T.expand(x, shape)


class Gather(_TensorOp):
    """Entries of ``x`` at ``indices`` along ``axis``."""

    def __init__(self, axis=0, indices=None):
        super().__init__()
        self.axis = int(axis)
        self.indices = None if indices is None else np.asarray(indices, np.int64)

    def forward(self, x, indices=None):
        indices = self.indices if indices is None else indices
        if indices is None:
            raise ValueError("gather: indices are required")
        return T.gather(x, indices, self.axis)


class GatherND(_TensorOp):
    """Slices of ``x`` at index tuples (ONNX GatherND); see
    :func:`fscnn.functional.tensor.gather_nd`."""

    def __init__(self, batch_dims=0):
        super().__init__()
        self.batch_dims = int(batch_dims)

    def forward(self, x, indices):
        return T.gather_nd(x, indices, self.batch_dims)


class Where(_TensorOp):
    """``a`` where ``condition``, else ``b``, with broadcasting."""

    def forward(self, condition, a, b):
        return T.where(condition, a, b)


class Compare(_TensorOp):
    """An elementwise comparison or logical operation giving a bool array: ``op`` one of
    'equal', 'less', 'greater', 'less_equal', 'greater_equal', 'and', 'or', 'xor', or 'not'
    (one input)."""

    def __init__(self, op):
        super().__init__()
        if op != "not" and op not in T._COMPARISONS:
            raise ValueError(f"Compare: op must be 'not' or one of {tuple(T._COMPARISONS)}, "
                             f"got {op!r}")
        self.op = op

    def forward(self, a, b=None):
        if self.op == "not":
            return np.logical_not(np.asarray(a, bool))
        return T.compare(a, b, self.op)


class Tile(_TensorOp):
    """``x`` repeated along each axis."""

    def __init__(self, repeats=None):
        super().__init__()
        self.repeats = _ints(repeats, "Tile: repeats")

    def forward(self, x, repeats=None):
        return T.tile(x, self.repeats if repeats is None else _ints(repeats, "tile"))


class Range(_TensorOp):
    """``start, start + delta, ...`` below ``limit`` (ONNX Range)."""

    def forward(self, start, limit, delta):
        return T.arange(start, limit, delta)


class Shape(_TensorOp):
    """The shape of ``x`` as an int64 vector (dimensions ``start`` to ``end``)."""

    def __init__(self, start=0, end=None):
        super().__init__()
        self.start = int(start)
        self.end = None if end is None else int(end)

    def forward(self, x):
        shape = np.shape(x)
        n = len(shape)
        clamp = lambda i: min(max(i + n if i < 0 else i, 0), n)  # noqa: E731
        return np.array(shape[clamp(self.start):clamp(n if self.end is None else self.end)],
                        np.int64)


class ConstantOfShape(_TensorOp):
    """A tensor of the shape given as input, filled with ``value`` of ``dtype``."""

    def __init__(self, value=0.0, dtype="float32"):
        super().__init__()
        self.value = value
        self.dtype = str(np.dtype(dtype))

    def forward(self, shape):
        dims = _ints(shape, "constant_of_shape: shape")
        if min(dims, default=0) < 0:
            raise ValueError(f"constant_of_shape: negative size in {dims}")
        return np.full(dims, self.value, T.cast(np.zeros(0), self.dtype).dtype)


class Cast(_TensorOp):
    """``x`` converted to ``dtype`` (every float type gives float32)."""

    def __init__(self, dtype):
        super().__init__()
        T.cast(np.zeros(0, np.float32), dtype)  # validates
        self.dtype = str(dtype)

    def forward(self, x):
        return T.cast(x, self.dtype)


class Pad(_TensorOp):
    """``x`` padded by ``pads`` (begins of every axis, then ends) with ``mode`` 'constant'
    (``value``), 'reflect' or 'edge'."""

    def __init__(self, pads=None, mode="constant", value=0.0):
        super().__init__()
        if mode not in T.PAD_MODES:
            raise ValueError(f"Pad: mode must be one of {T.PAD_MODES}, got {mode!r}")
        self.pads = _ints(pads, "Pad: pads")
        self.mode = mode
        self.value = _number(value, "Pad: value", allow_none=False)

    def forward(self, x, pads=None, value=None, axes=None):
        pads = self.pads if pads is None else _ints(pads, "pad: pads")
        if pads is None:
            raise ValueError("pad: pads are required")
        if axes is not None:  # pads for these axes only (begins, then ends)
            rank, axes = np.ndim(x), _ints(axes, "pad: axes")
            if len(pads) != 2 * len(axes):
                raise ValueError(f"pad: {len(pads)} pads for {len(axes)} axes")
            full = [0] * (2 * rank)
            for k, a in enumerate(axes):
                a = T._axis(a, rank, "pad: axes")
                full[a], full[rank + a] = pads[k], pads[len(axes) + k]
            pads = full
        value = self.value if value is None else np.asarray(value).reshape(-1)[0].item()
        return T.pad(x, pads, self.mode, value)


class Reduce(_TensorOp):
    """Reduce ``x`` with ``op`` ('mean', 'sum', 'max', 'min', 'prod') over ``axes`` (all
    when None)."""

    def __init__(self, op, axes=None, keepdims=True, noop_with_empty_axes=False):
        super().__init__()
        if op not in T._REDUCTIONS:
            raise ValueError(f"Reduce: op must be one of {tuple(T._REDUCTIONS)}, got {op!r}")
        self.op = op
        self.axes = _ints(axes, "Reduce: axes")
        self.keepdims = bool(keepdims)
        self.noop_with_empty_axes = bool(noop_with_empty_axes)

    def forward(self, x, axes=None):
        axes = self.axes if axes is None else _ints(axes, "reduce: axes")
        if not axes and self.noop_with_empty_axes:
            return x
        return T.reduce(x, self.op, axes, self.keepdims)


class Resize(_TensorOp):
    """Resize to ``sizes`` or by ``scales`` (one per axis) with ONNX Resize's modes; see
    :func:`fscnn.functional.resize`."""

    POLICIES = ("stretch", "not_larger", "not_smaller")

    def __init__(self, sizes=None, scales=None, mode="nearest",
                 coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
                 axes=None, keep_aspect_ratio_policy="stretch"):
        super().__init__()
        self.sizes = _ints(sizes, "Resize: sizes")
        self.scales = None if scales is None else tuple(float(s) for s in scales)
        self.mode = mode
        self.coordinate_transformation_mode = coordinate_transformation_mode
        self.nearest_mode = nearest_mode
        self.axes = _ints(axes, "Resize: axes")
        if keep_aspect_ratio_policy not in self.POLICIES:
            raise ValueError(f"Resize: keep_aspect_ratio_policy must be one of "
                             f"{self.POLICIES}, got {keep_aspect_ratio_policy!r}")
        self.keep_aspect_ratio_policy = keep_aspect_ratio_policy
        F.resize(np.zeros((1,), np.float32), sizes=[1], mode=mode,
                 coordinate_transformation_mode=coordinate_transformation_mode,
                 nearest_mode=nearest_mode)  # validates the modes

    def forward(self, x, sizes=None, scales=None):
        if sizes is None and scales is None:
            sizes, scales = self.sizes, self.scales
        elif sizes is not None:
            sizes, scales = _ints(sizes, "resize: sizes"), None
        else:
            scales = tuple(float(s) for s in np.asarray(scales).reshape(-1))
        shape = np.shape(x)
        axes = range(len(shape)) if self.axes is None else \
            [T._axis(a, len(shape), "resize: axes") for a in self.axes]
        given = sizes if sizes is not None else scales
        if given is not None and len(given) != len(axes):
            raise ValueError(f"resize: {len(given)} sizes/scales for {len(axes)} axes")
        if sizes is not None:
            if self.keep_aspect_ratio_policy != "stretch":
                pick = min if self.keep_aspect_ratio_policy == "not_larger" else max
                scale = pick(s / shape[a] for s, a in zip(sizes, axes))
                sizes = [int(np.floor(scale * shape[a] + 0.5)) for a in axes]
            full = list(shape)
            for a, s in zip(axes, sizes):
                full[a] = s
            sizes = full
        elif scales is not None:
            full = [1.0] * len(shape)
            for a, s in zip(axes, scales):
                full[a] = s
            scales = full
        return F.resize(x, sizes, scales, self.mode, self.coordinate_transformation_mode,
                        self.nearest_mode)


class Constant(_TensorOp):
    """A graph's constant tensor: float values are a buffer (part of the state_dict and of
    pruning's and archives' view of the model), integer ones (shapes, indices) a plain
    attribute.

    Parameters
    ----------
    value : array_like, optional
        The constant; with ``dtype``, the values of an integer or bool constant.
    shape : tuple of int, optional
        Without ``value``: a float constant of this shape, to be loaded (a graph's tensor).
    dtype : str, optional
        Type of ``value`` ('float32' when omitted for floats).
    """

    def __init__(self, value=None, shape=None, dtype=None):
        super().__init__()
        if value is None:
            value = np.zeros(() if shape is None else tuple(shape), np.float32)
        value = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
        if value.dtype.kind == "f":
            self._init_array("value", np.array(value, np.float32), "_buffers")
        elif value.dtype.kind in "iub":
            self.__dict__["data"] = np.array(value)
            self.__dict__["data"].setflags(write=False)
        else:
            raise TypeError(f"Constant: expected a real numeric array, got dtype {value.dtype}")

    def forward(self):
        return self.value if "value" in self._buffers else self.data

    def extra_repr(self):
        value = self.forward()
        return f"shape={value.shape}, dtype={value.dtype}"


class BatchNormalization(_TensorOp):
    """Inference batch normalisation over axis 1 of a (N, C, ...) input, the statistics and
    affine parameters given as inputs (ONNX's BatchNormalization when they are computed, or
    for inputs of a rank BatchNorm2d does not take)."""

    def __init__(self, eps=1e-5):
        super().__init__()
        self.eps = _number(eps, "BatchNormalization: eps", allow_none=False)

    def forward(self, x, weight, bias, running_mean, running_var):
        x = _floats(x, "batch_norm: x")
        return F.batch_norm(x, np.reshape(running_mean, -1), np.reshape(running_var, -1),
                            np.reshape(weight, -1), np.reshape(bias, -1), self.eps)


class DynamicConv2d(_TensorOp):
    """A 2-D convolution whose weight (and bias) are inputs computed by the graph rather than
    parameters: run by :func:`fscnn.functional.conv2d` on every call, with nothing prepared."""

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x, weight, bias=None):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class DynamicConvTranspose2d(_TensorOp):
    """A transposed convolution whose weight (and bias) are graph inputs; see
    :func:`fscnn.functional.conv_transpose2d`."""

    def __init__(self, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
        super().__init__()
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.groups, self.dilation = groups, dilation

    def forward(self, x, weight, bias=None):
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)
