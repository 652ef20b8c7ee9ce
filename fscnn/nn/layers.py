"""Weighted and shape layers: Conv2d, ConvTranspose2d, Linear, Gemm, BatchNorm2d, Flatten,
Dropout, Identity.

Constructors take torch.nn's arguments and keep its attribute names, so checkpoints and
``repr`` match; they validate every hyper-parameter at once (raise early, naming it).
Calling a Conv2d or Linear runs the :mod:`fscnn.ops` operator of the prepared plan; its
``forward`` is the unprepared path through :mod:`fscnn.functional`.
"""
import numbers

import numpy as np

from .. import functional as F
from .. import ops
from ..sparse import CSRMatrix, SparseConvWeight
from .._validate import is_int, is_padding4, padding4, pair, sliding_output_hw
from ..functional.elementwise import _scale_sparse_rows
from . import init
from .errors import LayerInputError
from .module import Layer


def check_int(value, name, minimum=1):
    """``value`` as a Python int ``>= minimum``; ``name`` labels the error."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_spatial(label, input_hw, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """Raise :class:`LayerInputError` if a window cannot slide over ``input_hw`` once."""
    try:
        sliding_output_hw(label, input_hw, kernel, stride, padding, dilation, ceil_mode)
    except ValueError as exc:
        raise LayerInputError(str(exc)) from None


def _over_rows(fn, x, features):
    """Apply ``fn`` (taking (N, F) arrays) to ``x`` of shape (*, F); keep the leading shape."""
    out = fn(x.reshape(-1, features))
    return out.reshape(x.shape[:-1] + out.shape[-1:])


class Conv2d(Layer):
    """2-D convolution (cross-correlation) of (N, C, H, W) inputs, or one (C, H, W) image,
    like ``torch.nn.Conv2d``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride, dilation : int or (int, int)
    padding : int, (int, int), (top, bottom, left, right), 'same' or 'valid'
        'same' pads ``dilation * (kernel_size - 1)`` in total, the odd pixel at the bottom
        and right, and needs ``stride == 1``, as in torch. A 4-tuple (not in torch) pads
        each side on its own, as ONNX's and TFLite's convolutions may.
    groups : int
        Divides both channel counts.
    bias : bool
    padding_mode : 'zeros'
        The only mode implemented.

    Attributes
    ----------
    weight : ndarray of shape (out_channels, in_channels // groups, kH, kW)
        Or a :class:`~fscnn.sparse.SparseConvWeight` of that shape once held sparse
        (:meth:`~fscnn.nn.Module.to_sparse`, or loaded as one).
    bias : ndarray of shape (out_channels,) or None

    Examples
    --------
    >>> conv = fscnn.nn.Conv2d(4, 8, 3, padding=1)
    >>> conv.load_state_dict({"weight": w, "bias": b})
    >>> conv(np.ones((1, 4, 16, 16))).shape
    (1, 8, 16, 16)
    """

    _sparse_weights = {"weight": SparseConvWeight}
    _unbatched_ndim = 3

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros"):
        super().__init__()
        self.in_channels = check_int(in_channels, "Conv2d: in_channels")
        self.out_channels = check_int(out_channels, "Conv2d: out_channels")
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size")
        self.stride = pair(stride, "Conv2d: stride")
        self.dilation = pair(dilation, "Conv2d: dilation")
        self.groups = check_int(groups, "Conv2d: groups")
        for what, n in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if n % self.groups:
                raise ValueError(f"Conv2d: {what} ({n}) must be divisible by groups "
                                 f"({self.groups})")
        if isinstance(padding, str):
            ops.conv_padding(padding, self.kernel_size, self.dilation, "Conv2d", self.stride)
            self.padding = padding
        elif is_padding4(padding):
            self.padding = padding4(padding, "Conv2d: padding")
        else:
            self.padding = pair(padding, "Conv2d: padding", minimum=0)
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: padding_mode must be 'zeros' (the only one implemented), "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        self._init_array("weight", init.uniform_fan_in(
            (self.out_channels, self.in_channels // self.groups, kh, kw), fan_in))
        self._init_array("bias", init.uniform_fan_in((self.out_channels,), fan_in)
                         if bias else None)

    def _pads(self):
        """Padding as (top, bottom, left, right), with torch's rule for 'same'."""
        if isinstance(self.padding, str):
            return ops.conv_padding(self.padding, self.kernel_size, self.dilation, "Conv2d",
                                    self.stride)
        if len(self.padding) == 4:  # (top, bottom, left, right), checked once in __init__
            return self.padding
        ph, pw = self.padding  # a pair, checked once in __init__ (this runs on every call)
        return (ph, ph, pw, pw)

    def _check_input(self, x, label):
        self._require_ndim(x, 4, label)
        self._require_channels(x, self.in_channels, label)
        check_spatial(label, x.shape[2:], self.kernel_size, self.stride, self._pads(),
                      self.dilation)

    def forward(self, x):
        """Unprepared convolution of ``x`` (N, C, H, W) through :func:`fscnn.functional.conv2d`."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def _make_op(self, weight, bias, activation, kernel, name, pool=None):
        return ops.Conv2dOp(weight, bias, stride=self.stride, padding=self.padding,
                            dilation=self.dilation, groups=self.groups, activation=activation,
                            kernel=kernel, name=name, pool=pool)

    @staticmethod
    def _apply_op(op, x):
        return op(x)

    def _can_fold(self, module):
        return (isinstance(module, BatchNorm2d) and module.running_mean is not None
                and module.num_features == self.out_channels)

    def _fold(self, bn):
        """(weight, bias) of this convolution followed by the batch norm ``bn``; a sparse-held
        weight stays sparse (its rows are scaled)."""
        return F.fold_batch_norm(self.weight, self.bias, bn.running_mean, bn.running_var,
                                 bn.weight, bn.bias, bn.eps)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Linear(Layer):
    """Affine map ``x @ weight.T + bias`` of inputs of shape (*, in_features), like
    ``torch.nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool

    Attributes
    ----------
    weight : ndarray of shape (out_features, in_features)
        Or a :class:`~fscnn.sparse.CSRMatrix` of that shape once held sparse
        (:meth:`~fscnn.nn.Module.to_sparse`, or loaded as one).
    bias : ndarray of shape (out_features,) or None

    Examples
    --------
    >>> fscnn.nn.Linear(512, 10)(np.ones((2, 512))).shape
    (2, 10)
    """

    _sparse_weights = {"weight": CSRMatrix}

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = check_int(in_features, "Linear: in_features")
        self.out_features = check_int(out_features, "Linear: out_features")
        self._init_array("weight", init.uniform_fan_in(
            (self.out_features, self.in_features), self.in_features))
        self._init_array("bias", init.uniform_fan_in((self.out_features,), self.in_features)
                         if bias else None)

    def _check_input(self, x, label):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise LayerInputError(f"{label}: expected an input of shape (*, {self.in_features}) "
                                  f"({self.in_features} input features), got shape {x.shape}")

    def forward(self, x):
        """Unprepared ``x @ weight.T + bias`` through :func:`fscnn.functional.linear`."""
        return _over_rows(lambda rows: F.linear(rows, self.weight, self.bias), x,
                          self.in_features)

    def _make_op(self, weight, bias, activation, kernel, name):
        return ops.LinearOp(weight, bias, activation=activation, kernel=kernel, name=name)

    def _apply_op(self, op, x):
        return _over_rows(op, x, self.in_features)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Gemm(Layer):
    """``alpha * x @ op(weight) + beta * bias`` (ONNX's Gemm, and MatMul by a constant):
    a :class:`Linear` whose weight is stored as the model gives it, (out_features,
    in_features) with ``trans_b`` (torch's layout) or (in_features, out_features) without.

    The prepared operator is a linear one (``alpha`` and ``beta`` folded into its weights),
    so a Gemm runs, fuses a following ReLU and goes sparse exactly as a Linear does.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    alpha, beta : float
    trans_b : bool

    Attributes
    ----------
    weight : ndarray of shape (out_features, in_features) (``trans_b``) or (in_features,
        out_features), or a :class:`~fscnn.sparse.CSRMatrix` of that shape.
    bias : ndarray of shape (out_features,) or None
    """

    _sparse_weights = {"weight": CSRMatrix}

    def __init__(self, in_features, out_features, bias=True, alpha=1.0, beta=1.0, trans_b=True):
        super().__init__()
        self.in_features = check_int(in_features, "Gemm: in_features")
        self.out_features = check_int(out_features, "Gemm: out_features")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not np.isfinite(value):
                raise ValueError(f"Gemm: {name} must be a finite number, got {value!r}")
        self.alpha, self.beta, self.trans_b = float(alpha), float(beta), bool(trans_b)
        shape = (self.out_features, self.in_features)
        self._init_array("weight", init.uniform_fan_in(shape if trans_b else shape[::-1],
                                                       self.in_features))
        self._init_array("bias", init.uniform_fan_in((self.out_features,), self.in_features)
                         if bias else None)

    _check_input = Linear._check_input

    def _linear_weights(self, weight, bias):
        """(weight as (out, in), bias) with alpha and beta applied."""
        if not self.trans_b:
            weight = weight.transpose() if isinstance(weight, CSRMatrix) else weight.T
        if self.alpha != 1.0:
            alpha = np.float32(self.alpha)
            weight = (_scale_sparse_rows(weight, np.full(self.out_features, alpha))
                      if isinstance(weight, CSRMatrix) else np.multiply(weight, alpha))
        if bias is not None and self.beta != 1.0:
            bias = (np.float32(self.beta) * bias).astype(np.float32)
        return weight, bias

    def forward(self, x):
        """Unprepared ``alpha * x @ op(weight) + beta * bias``."""
        weight, bias = self._linear_weights(self.weight, self.bias)
        return _over_rows(lambda rows: F.linear(rows, weight, bias), x, self.in_features)

    def _make_op(self, weight, bias, activation, kernel, name):
        weight, bias = self._linear_weights(weight, bias)
        return ops.LinearOp(weight, bias, activation=activation, kernel=kernel, name=name)

    _apply_op = Linear._apply_op

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, alpha={self.alpha}, beta={self.beta}, "
                f"trans_b={self.trans_b}")


class ConvTranspose2d(Layer):
    """Transposed 2-D convolution of (N, C, H, W) inputs, like ``torch.nn.ConvTranspose2d``
    (see :func:`fscnn.functional.conv_transpose2d`).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int) or (top, bottom, left, right)
        A 4-tuple (not in torch) crops each side on its own, as ONNX's pads.
    output_padding : int or (int, int)
    groups : int
    bias : bool

    Attributes
    ----------
    weight : ndarray of shape (in_channels, out_channels // groups, kH, kW)
    bias : ndarray of shape (out_channels,) or None
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros"):
        super().__init__()
        self.in_channels = check_int(in_channels, "ConvTranspose2d: in_channels")
        self.out_channels = check_int(out_channels, "ConvTranspose2d: out_channels")
        self.kernel_size = pair(kernel_size, "ConvTranspose2d: kernel_size")
        self.stride = pair(stride, "ConvTranspose2d: stride")
        self.dilation = pair(dilation, "ConvTranspose2d: dilation")
        self.groups = check_int(groups, "ConvTranspose2d: groups")
        for what, n in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if n % self.groups:
                raise ValueError(f"ConvTranspose2d: {what} ({n}) must be divisible by groups "
                                 f"({self.groups})")
        self.padding = (padding4(padding, "ConvTranspose2d: padding") if is_padding4(padding)
                        else pair(padding, "ConvTranspose2d: padding", minimum=0))
        self.output_padding = pair(output_padding, "ConvTranspose2d: output_padding", minimum=0)
        if any(p >= max(s, d) for p, s, d in zip(self.output_padding, self.stride,
                                                  self.dilation)):
            raise ValueError(f"ConvTranspose2d: output_padding {self.output_padding} must be "
                             f"smaller than either stride {self.stride} or dilation "
                             f"{self.dilation}")
        if padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d: padding_mode must be 'zeros', got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode
        kh, kw = self.kernel_size
        fan_in = self.out_channels // self.groups * kh * kw
        self._init_array("weight", init.uniform_fan_in(
            (self.in_channels, self.out_channels // self.groups, kh, kw), fan_in))
        self._init_array("bias", init.uniform_fan_in((self.out_channels,), fan_in)
                         if bias else None)

    def _check_input(self, x, label):
        self._require_ndim(x, 4, label)
        self._require_channels(x, self.in_channels, label)

    def forward(self, x):
        """The transposed convolution of ``x`` (N, C, H, W)."""
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, "
                f"output_padding={self.output_padding}, groups={self.groups}, "
                f"dilation={self.dilation}, bias={self.bias is not None}")


class BatchNorm2d(Layer):
    """Batch normalisation of (N, C, H, W) inputs with running statistics, like
    ``torch.nn.BatchNorm2d`` in eval mode; it also takes one (C, H, W) image, which torch
    refuses, so that whole models do.

    Following a convolution, it is folded into the convolution's weights when the model is
    prepared. With ``track_running_stats=False`` it normalises with the statistics of each
    input batch, as torch does.

    Parameters
    ----------
    num_features : int
        Channels C.
    eps : float
        Added to the variance, > 0.
    momentum : float or None
        Kept for torch compatibility (training only).
    affine : bool
        Learnable ``weight`` (and ``bias``, see below).
    track_running_stats : bool
        Keep ``running_mean``/``running_var`` buffers.
    bias : bool, keyword-only
        With ``affine``, whether there is a ``bias`` (torch >= 2.10's argument).

    Attributes
    ----------
    weight, bias, running_mean, running_var : ndarray of shape (num_features,) or None
    num_batches_tracked : 0-d int64 ndarray or None
        Kept for torch's state_dict (training only); may be missing from a loaded state.
    """

    _unbatched_ndim = 3  # torch's BatchNorm2d refuses (C, H, W); accepted so models take it

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True):
        super().__init__()
        self.num_features = check_int(num_features, "BatchNorm2d: num_features")
        if not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"BatchNorm2d: eps must be a positive number, got {eps!r}")
        if momentum is not None and not (isinstance(momentum, numbers.Real)
                                         and 0 <= momentum <= 1):
            raise ValueError(f"BatchNorm2d: momentum must be None or in [0, 1], got {momentum!r}")
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        c = self.num_features
        self._init_array("weight", np.ones(c, np.float32) if affine else None)
        self._init_array("bias", np.zeros(c, np.float32) if affine and bias else None)
        self._init_array("running_mean", np.zeros(c, np.float32) if track_running_stats
                         else None, "_buffers")
        self._init_array("running_var", np.ones(c, np.float32) if track_running_stats
                         else None, "_buffers")
        self._init_array("num_batches_tracked", np.zeros((), np.int64) if track_running_stats
                         else None, "_buffers")

    def _optional_state_keys(self, prefix=""):
        return {prefix + "num_batches_tracked"} if self.track_running_stats else set()

    def _check_input(self, x, label):
        self._require_ndim(x, 4, label)
        self._require_channels(x, self.num_features, label)

    def forward(self, x):
        """Normalise ``x`` (N, C, H, W) per channel."""
        if self.running_mean is None:
            mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
            var = x.var(axis=(0, 2, 3), dtype=np.float64)
        else:
            mean, var = self.running_mean, self.running_var
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class Flatten(Layer):
    """Merge dimensions ``start_dim`` to ``end_dim`` into one, like ``torch.nn.Flatten``.

    Examples
    --------
    >>> fscnn.nn.Flatten()(np.ones((2, 3, 4, 5))).shape
    (2, 60)
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = check_int(start_dim, "Flatten: start_dim", minimum=-2**31)
        self.end_dim = check_int(end_dim, "Flatten: end_dim", minimum=-2**31)
        if (self.start_dim < 0) == (self.end_dim < 0) and self.start_dim > self.end_dim:
            raise ValueError(f"Flatten: start_dim ({start_dim}) must not come after end_dim "
                             f"({end_dim})")

    def _dims(self, ndim):
        return tuple(d + ndim if d < 0 else d for d in (self.start_dim, self.end_dim))

    def _check_input(self, x, label):
        start, end = self._dims(x.ndim)
        if not (0 <= start < max(x.ndim, 1) and 0 <= end < max(x.ndim, 1)) or start > end:
            raise LayerInputError(f"{label}: cannot flatten dimensions {self.start_dim} to "
                                  f"{self.end_dim} of an input of shape {x.shape}")

    def forward(self, x):
        """``x`` reshaped (a view when ``x`` is contiguous)."""
        start, end = self._dims(x.ndim)
        merged = int(np.prod(x.shape[start:end + 1]))
        return x.reshape(x.shape[:start] + (merged,) + x.shape[end + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Layer):
    """Dropout, the identity at inference; ``p`` is validated and kept for compatibility."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = p
        self.inplace = bool(inplace)

    def forward(self, x):
        """``x`` itself."""
        return x

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Identity(Layer):
    """Returns its input; any constructor arguments are ignored, as in torch."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        """``x`` itself."""
        return x
