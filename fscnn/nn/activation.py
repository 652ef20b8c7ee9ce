"""Activation layers, each a thin wrapper of its :mod:`fscnn.functional` function.

ReLU, ReLU6, Sigmoid, SiLU, Hardswish and Hardsigmoid (torch's defaults) after a convolution
or linear layer run inside that layer's kernel once the model is prepared
(``_fused_activation``, a name in ``fscnn._ext._runtime.ACTIVATION_CODES``). The ``inplace`` flags are accepted for torch
compatibility; fscnn never writes into a layer's input.
"""
import numbers

import numpy as np

from .. import functional as F
from .errors import LayerInputError
from .layers import check_int
from .module import Layer


class _Pointwise(Layer):
    """A layer applying ``_function`` (a :mod:`fscnn.functional` function) to every element."""

    _function = None

    def forward(self, x):
        """The activation of ``x``, any shape, as float32."""
        return self._function(x)


class _PointwiseInplace(_Pointwise):
    """A pointwise layer with torch's (ignored) ``inplace`` argument."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class ReLU(_PointwiseInplace):
    """``max(x, 0)``, like ``torch.nn.ReLU``."""

    _function = staticmethod(F.relu)
    _fused_activation = "relu"


class ReLU6(_PointwiseInplace):
    """``min(max(x, 0), 6)``, like ``torch.nn.ReLU6``."""

    _function = staticmethod(F.relu6)
    _fused_activation = "relu6"


class Hardswish(_PointwiseInplace):
    """``x * relu6(x + 3) / 6``, like ``torch.nn.Hardswish``."""

    _function = staticmethod(F.hardswish)
    _fused_activation = "hardswish"


class Hardsigmoid(_PointwiseInplace):
    """``min(max(alpha * x + beta, 0), 1)``; the defaults give ``relu6(x + 3) / 6``, like
    ``torch.nn.Hardsigmoid`` (ONNX's HardSigmoid has ``alpha=0.2``)."""

    def __init__(self, inplace=False, alpha=1 / 6, beta=0.5):
        super().__init__(inplace)
        F.hardsigmoid(np.zeros(1, np.float32), alpha, beta)  # validates
        self.alpha, self.beta = float(alpha), float(beta)

    @property
    def _fused_activation(self):
        """Kernels fuse torch's form relu6(x + 3) / 6 only; 1e-7 admits alpha = 1/6 rounded to
        float32, as ONNX stores it."""
        if abs(self.alpha - 1 / 6) < 1e-7 and abs(self.beta - 0.5) < 1e-7:
            return "hardsigmoid"
        return None

    def forward(self, x):
        """The activation of ``x``, any shape, as float32."""
        return F.hardsigmoid(x, self.alpha, self.beta)

    def extra_repr(self):
        if (self.alpha, self.beta) == (1 / 6, 0.5):
            return super().extra_repr()
        return f"alpha={self.alpha}, beta={self.beta}"


class SiLU(_PointwiseInplace):
    """``x * sigmoid(x)``, like ``torch.nn.SiLU``."""

    _function = staticmethod(F.silu)
    _fused_activation = "silu"


class Sigmoid(_Pointwise):
    """``1 / (1 + exp(-x))``, like ``torch.nn.Sigmoid``."""

    _function = staticmethod(F.sigmoid)
    _fused_activation = "sigmoid"


class Tanh(_Pointwise):
    """Hyperbolic tangent, like ``torch.nn.Tanh``."""

    _function = staticmethod(F.tanh)


class LeakyReLU(Layer):
    """``x`` where positive, ``negative_slope * x`` elsewhere, like ``torch.nn.LeakyReLU``."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        if not isinstance(negative_slope, numbers.Real):
            raise TypeError(f"LeakyReLU: negative_slope must be a number, got {negative_slope!r}")
        self.negative_slope = negative_slope
        self.inplace = bool(inplace)

    def forward(self, x):
        """The activation of ``x``, any shape."""
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class PReLU(Layer):
    """Leaky ReLU with learned slopes, one shared or one per channel (axis 1), like
    ``torch.nn.PReLU``.

    Parameters
    ----------
    num_parameters : int
        1, or the channel count C of the input.
    init : float
        Initial slope.

    Attributes
    ----------
    weight : ndarray of shape (num_parameters,)
    """

    def __init__(self, num_parameters=1, init=0.25):
        super().__init__()
        self.num_parameters = check_int(num_parameters, "PReLU: num_parameters")
        if not isinstance(init, numbers.Real):
            raise TypeError(f"PReLU: init must be a number, got {init!r}")
        self._init_array("weight", np.full(self.num_parameters, init, dtype=np.float32))

    def _check_input(self, x, label):
        if self.num_parameters > 1:
            if x.ndim < 2:
                raise LayerInputError(f"{label}: expected an input of shape (N, C, ...) with "
                                      f"C = {self.num_parameters}, got shape {x.shape}")
            self._require_channels(x, self.num_parameters, label, "channels")

    def forward(self, x):
        """The activation of ``x`` (N, C, ...)."""
        return F.prelu(x, self.weight)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class Softmax(Layer):
    """Softmax along ``dim``, like ``torch.nn.Softmax``.

    ``dim=None`` follows torch's legacy rule: dimension 0 for inputs of rank 0, 1 or 3,
    dimension 1 otherwise.
    """

    def __init__(self, dim=None):
        super().__init__()
        self.dim = None if dim is None else check_int(dim, "Softmax: dim", minimum=-2**31)

    def _axis(self, ndim):
        if self.dim is None:
            return 0 if ndim in (0, 1, 3) else 1
        return self.dim

    def _check_input(self, x, label):
        axis = self._axis(x.ndim)
        if not -max(x.ndim, 1) <= axis < max(x.ndim, 1):
            raise LayerInputError(f"{label}: dim {axis} is out of range for an input of shape "
                                  f"{x.shape}")

    def forward(self, x):
        """Softmax of ``x`` along the layer's dimension."""
        return F.softmax(x, self._axis(x.ndim))

    def extra_repr(self):
        return f"dim={self.dim}"


class ELU(Layer):
    """``x`` where positive, else ``alpha * (exp(x) - 1)``, like ``torch.nn.ELU``."""

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"ELU: alpha must be a number, got {alpha!r}")
        self.alpha = float(alpha)
        self.inplace = bool(inplace)

    def forward(self, x):
        """The activation of ``x``, any shape."""
        return F.elu(x, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class GELU(Layer):
    """``x * Phi(x)`` (exact, or torch's tanh approximation), like ``torch.nn.GELU``."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in F.GELU_APPROXIMATIONS:
            raise ValueError(f"GELU: approximate must be one of {F.GELU_APPROXIMATIONS}, got "
                             f"{approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        """The activation of ``x``, any shape."""
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class LogSoftmax(Softmax):
    """``log(softmax(x))`` along ``dim``, like ``torch.nn.LogSoftmax``."""

    def forward(self, x):
        """Log-softmax of ``x`` along the layer's dimension."""
        return F.log_softmax(x, self._axis(x.ndim))


class LocalResponseNorm(Layer):
    """Local response normalisation across channels, like ``torch.nn.LocalResponseNorm``
    (AlexNet, GoogLeNet); see :func:`fscnn.functional.local_response_norm`."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size = check_int(size, "LocalResponseNorm: size")
        for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"LocalResponseNorm: {name} must be a number, got {value!r}")
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)

    def _check_input(self, x, label):
        if x.ndim < 2:
            raise LayerInputError(f"{label}: expected an input of shape (N, C, ...), got shape "
                                  f"{x.shape}")

    def forward(self, x):
        """Normalised ``x`` (N, C, ...)."""
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
