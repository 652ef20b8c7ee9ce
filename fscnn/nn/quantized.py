"""Quantized layers: QuantizedConv2d and QuantizedLinear, the int8 counterparts of Conv2d and
Linear that :func:`fscnn.quantize` puts in their place.

Each holds int8 weights (``weight``, symmetric, zero stays zero), a float32 scale per output
channel (``weight_scale``), the float32 bias and the quantization of its input
(``input_scale``, and the constructor argument ``input_unsigned``). It takes and returns
float32 like the layer it replaces: its operator (:class:`fscnn.ops.QuantizedConv2dOp`,
:class:`~fscnn.ops.QuantizedLinearOp`) quantizes the input as the INT8 kernel packs it and
dequantizes in the kernel's epilogue. A following BatchNorm2d folds into the weight scales
(exactly: per-channel scales absorb it) and a following ReLU/ReLU6 and 2x2 max pool fuse as
for the float layers.
"""
import numpy as np

from .. import ops
from ..ops import QuantizedWeight, _positive_finite
from ..functional import fold_batch_norm
from . import layers


def _check_quantized(layer, name, value):
    """``value`` checked for the quantized layer's array ``name`` (raises ValueError or
    TypeError naming the layer); returns it as the array to hold."""
    label = f"{type(layer).__name__}.{name}"
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{label}: expected a real numeric array, got dtype {arr.dtype}")
    if name == "weight":
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{label}: expected int8 values, got dtype {arr.dtype}")
        if arr.size and (arr.min() < -127 or arr.max() > 127):
            raise ValueError(f"{label}: expected int8 values in [-127, 127], got "
                             f"[{arr.min()}, {arr.max()}]")
    elif name in ("weight_scale", "input_scale"):
        _positive_finite(arr, label)  # as the float32 the layer holds
    return value


class _Quantized:
    """What the quantized layers share: the int8 ``weight``, ``weight_scale`` and
    ``input_scale`` arrays checked on every assignment, the operator's QuantizedWeight and
    the INT8 kernel whatever the float kernel setting of ``prepare``."""

    _sparse_weights = {}  # int8 weights are held dense (the kernel compresses them per plan)

    def _init_quantized(self, input_unsigned):
        if not isinstance(input_unsigned, bool):
            raise TypeError(f"{type(self).__name__}: input_unsigned must be a bool, got "
                            f"{input_unsigned!r}")
        shape = self.weight.shape
        self.input_unsigned = input_unsigned
        self._init_array("weight", np.zeros(shape, np.int8))
        self._init_array("weight_scale", np.ones(shape[0], np.float32), "_buffers")
        self._init_array("input_scale", np.ones((), np.float32), "_buffers")

    def __setattr__(self, name, value):
        if name in ("weight", "weight_scale", "input_scale") and "_parameters" in self.__dict__:
            value = _check_quantized(self, name, value)
        super().__setattr__(name, value)

    def quantized_weight(self):
        """The :class:`fscnn.ops.QuantizedWeight` of the held arrays."""
        return QuantizedWeight(self.weight, self.weight_scale, float(self.input_scale),
                               self.input_unsigned)

    def _op(self, weight, bias, activation, name, **extra):
        if not isinstance(weight, QuantizedWeight):  # the layer's own (no batch norm folded)
            weight = self.quantized_weight()
        return self._op_class(weight, bias, activation=activation, kernel="int8", name=name,
                              **extra)

    def _extra(self):
        return f", input_unsigned={self.input_unsigned}"


class QuantizedConv2d(_Quantized, layers.Conv2d):
    """Conv2d over int8 weights (see the module docstring); the arguments of
    :class:`~fscnn.nn.Conv2d`, plus ``input_unsigned`` (bool: the input is non-negative and
    quantized to [0, 255], else to [-127, 127]).

    Attributes
    ----------
    weight : int8 ndarray of shape (out_channels, in_channels // groups, kH, kW)
    weight_scale : float32 ndarray of shape (out_channels,)
    input_scale : float32 0-d ndarray
    bias : float32 ndarray of shape (out_channels,) or None

    Examples
    --------
    >>> q = fscnn.quantize(model, [x])   # its Conv2d layers become QuantizedConv2d
    """

    _op_class = ops.QuantizedConv2dOp

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", input_unsigned=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode)
        self._init_quantized(input_unsigned)

    def forward(self, x):
        """Unprepared: the INT8 operator built for this call."""
        return self._make_op(self.weight, self.bias, None, "int8", type(self).__name__)(x)

    def _make_op(self, weight, bias, activation, kernel, name, pool=None):
        return self._op(weight, bias, activation, name, stride=self.stride,
                        padding=self.padding, dilation=self.dilation, groups=self.groups,
                        pool=pool)

    def _fold(self, bn):
        """The QuantizedWeight and bias of this convolution followed by the batch norm ``bn``:
        the channel's factor a = gamma / sqrt(var + eps) goes into its weight scale (|a|;
        a negative a negates the int8 values, a zero one zeroes them), exactly."""
        O = self.out_channels
        ones = np.ones((O, 1, 1, 1), np.float32)
        factor, bias = fold_batch_norm(ones, self.bias, bn.running_mean, bn.running_var,
                                       bn.weight, bn.bias, bn.eps)
        a = np.asarray(factor, np.float32).reshape(O)
        values = self.weight * np.sign(a).astype(np.int8).reshape((O,) + (1,) * 3)
        scale = np.where(a != 0, np.abs(a) * self.weight_scale, np.float32(1.0))
        return (QuantizedWeight(values, scale.astype(np.float32), float(self.input_scale),
                                self.input_unsigned), bias)

    def extra_repr(self):
        return super().extra_repr() + self._extra()


class QuantizedLinear(_Quantized, layers.Linear):
    """Linear over int8 weights (see the module docstring); the arguments of
    :class:`~fscnn.nn.Linear`, plus ``input_unsigned``.

    Attributes
    ----------
    weight : int8 ndarray of shape (out_features, in_features)
    weight_scale : float32 ndarray of shape (out_features,)
    input_scale : float32 0-d ndarray
    bias : float32 ndarray of shape (out_features,) or None
    """

    _op_class = ops.QuantizedLinearOp

    def __init__(self, in_features, out_features, bias=True, input_unsigned=False):
        super().__init__(in_features, out_features, bias)
        self._init_quantized(input_unsigned)

    def forward(self, x):
        """Unprepared: the INT8 operator built for this call."""
        op = self._make_op(self.weight, self.bias, None, "int8", type(self).__name__)
        return self._apply_op(op, x)

    def _make_op(self, weight, bias, activation, kernel, name):
        return self._op(weight, bias, activation, name)

    def extra_repr(self):
        return super().extra_repr() + self._extra()


__all__ = ["QuantizedConv2d", "QuantizedLinear"]
