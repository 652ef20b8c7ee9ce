"""Activations, normalisations and inference batch normalisation.

These operators are memory bound, so the activations are whole-array passes in float32 (no
per-pixel Python), written to give torch's results: NaN propagates, softmax is evaluated in a
form that cannot overflow. Activations accept arrays of any shape. sigmoid, silu, hardswish
and torch's hardsigmoid are one compiled pass (``_pool.activation``) with the code the kernels
fuse into their epilogues (fscnn_level.h), at the SIMD level in use: NumPy took several passes
and temporaries (a standalone SiLU of EfficientNet-B0 cost 17 ms). The others are NumPy.
(The residual ``add``, with its fused ReLU, is in :mod:`fscnn.functional.tensor`.)
"""
import numpy as np

from .._config import simd_level_index
from .._ext import _pool
from .._ext._runtime import ACTIVATION_CODES
from .._memory import aligned_empty
from ..sparse import CSRMatrix, SparseConvWeight
from .._validate import as_float_array, as_vector, is_int, real, threads_for


def _input(x, name, min_ndim=0):
    return as_float_array(x, f"{name}: x", min_ndim=min_ndim)


def _compiled(x, activation):
    """``activation`` (a name in ACTIVATION_CODES) of the float32 array ``x`` in one compiled,
    threaded pass: the kernels' epilogue at the SIMD level in use."""
    x = np.ascontiguousarray(x)
    out = aligned_empty(x.shape)
    if out.size:
        _pool.activation(x.reshape(-1), out.reshape(-1), ACTIVATION_CODES[activation],
                         simd_level_index(), threads_for(out.size))
    return out


def relu(x):
    """``max(x, 0)`` elementwise; NaN stays NaN.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.

    Returns
    -------
    ndarray of the same shape, float32
    """
    return np.maximum(_input(x, "relu"), np.float32(0))


def relu6(x):
    """``min(max(x, 0), 6)`` elementwise; NaN stays NaN.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.

    Returns
    -------
    ndarray of the same shape, float32
    """
    out = np.maximum(_input(x, "relu6"), np.float32(0))
    return np.minimum(out, np.float32(6), out=out)


def leaky_relu(x, negative_slope=0.01):
    """``x`` where ``x > 0``, else ``negative_slope * x``.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.
    negative_slope : float
        Finite slope for negative inputs.

    Returns
    -------
    ndarray of the same shape, float32
    """
    x = _input(x, "leaky_relu")
    slope = np.float32(real(negative_slope, "leaky_relu: negative_slope"))
    return np.where(x > 0, x, x * slope)


def prelu(x, weight):
    """``x`` where ``x > 0``, else ``weight * x`` with one learned slope per channel.

    Parameters
    ----------
    x : array_like of shape (N, C, ...)
        Floating-point input; converted to float32. Any rank >= 1 with a single weight.
    weight : array_like of shape (C,) or (1,)
        Slope per channel (axis 1 of ``x``), or one slope shared by all channels.

    Returns
    -------
    ndarray of the same shape as ``x``, float32
    """
    x = _input(x, "prelu")
    weight = as_float_array(weight, "prelu: weight", layout="C")
    if weight.size != 1:
        if x.ndim < 2 or weight.size != x.shape[1]:
            raise ValueError(f"prelu: weight must have 1 element or one per channel "
                             f"(x.shape[1]), got {weight.size} elements for x of shape "
                             f"{x.shape}")
        weight = weight.reshape((-1,) + (1,) * (x.ndim - 2))
    return np.where(x > 0, x, x * weight)


def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x))``, evaluated without overflow.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.

    Returns
    -------
    ndarray of the same shape, float32
    """
    return _compiled(_input(x, "sigmoid"), "sigmoid")


def tanh(x):
    """Hyperbolic tangent elementwise.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.

    Returns
    -------
    ndarray of the same shape, float32
    """
    return np.tanh(_input(x, "tanh"))


def hardsigmoid(x, alpha=1 / 6, beta=0.5):
    """``min(max(alpha * x + beta, 0), 1)`` elementwise.

    The defaults are torch's (``relu6(x + 3) / 6``, evaluated in that form); ONNX's
    HardSigmoid defaults to ``alpha=0.2``.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.
    alpha, beta : float

    Returns
    -------
    ndarray of the same shape, float32
    """
    x = _input(x, "hardsigmoid")
    alpha = real(alpha, "hardsigmoid: alpha")
    beta = real(beta, "hardsigmoid: beta")
    if alpha == 1 / 6 and beta == 0.5:
        return _compiled(x, "hardsigmoid")
    out = np.multiply(x, np.float32(alpha))
    np.add(out, np.float32(beta), out=out)
    return np.clip(out, np.float32(0), np.float32(1), out=out)


def hardswish(x):
    """``x * min(max(x + 3, 0), 6) / 6`` elementwise.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.

    Returns
    -------
    ndarray of the same shape, float32
    """
    return _compiled(_input(x, "hardswish"), "hardswish")  # -inf gives NaN, as in torch


def silu(x):
    """``x * sigmoid(x)`` (also called swish) elementwise.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.

    Returns
    -------
    ndarray of the same shape, float32
    """
    return _compiled(_input(x, "silu"), "silu")  # -inf gives NaN, as in torch


def elu(x, alpha=1.0):
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.
    alpha : float

    Returns
    -------
    ndarray of the same shape, float32
    """
    x = _input(x, "elu")
    alpha = np.float32(real(alpha, "elu: alpha"))
    neg = np.expm1(np.minimum(x, np.float32(0)))
    return np.where(x > 0, x, alpha * neg)


def erf(x):
    """The Gauss error function elementwise (SciPy's), float32."""
    from scipy.special import erf as _erf
    return _erf(_input(x, "erf"))


GELU_APPROXIMATIONS = ("none", "tanh")


def gelu(x, approximate="none"):
    """``x * Phi(x)``, Phi the standard normal CDF (``approximate='tanh'``: torch's tanh
    formula).

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.
    approximate : {'none', 'tanh'}

    Returns
    -------
    ndarray of the same shape, float32
    """
    x = _input(x, "gelu")
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be one of {GELU_APPROXIMATIONS}, got "
                         f"{approximate!r}")
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        inner = np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64 ** 3)
        out = 0.5 * x64 * (1.0 + np.tanh(inner))
    else:
        from scipy.special import erf as _erf
        out = 0.5 * x64 * (1.0 + _erf(x64 / np.sqrt(2.0)))
    return out.astype(np.float32)


def clip(x, min=None, max=None):
    """``x`` limited to ``[min, max]`` (either bound may be None); NaN stays NaN.

    Parameters
    ----------
    x : array_like of any shape
        Floating-point input; converted to float32.
    min, max : float or None

    Returns
    -------
    ndarray of the same shape, float32
    """
    x = _input(x, "clip")
    lo = None if min is None else np.float32(real(min, "clip: min"))
    hi = None if max is None else np.float32(real(max, "clip: max"))
    out = np.array(x, copy=True)
    if lo is not None:
        np.maximum(out, lo, out=out)
    if hi is not None:
        np.minimum(out, hi, out=out)
    return out


def log_softmax(x, dim):
    """``log(softmax(x, dim))``, evaluated as ``x - max - log(sum(exp(x - max)))``."""
    x = _input(x, "log_softmax", min_ndim=1)
    if not is_int(dim) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"log_softmax: dim must be an int in [{-x.ndim}, {x.ndim - 1}] for x "
                         f"of shape {x.shape}, got {dim!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        shifted = x - np.max(x, axis=dim, keepdims=True)
        total = np.exp(shifted).sum(axis=dim, keepdims=True, dtype=np.float64)
        return (shifted - np.log(total)).astype(np.float32)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalisation across channels (AlexNet, GoogLeNet), as torch and ONNX.

    ``x / (k + alpha / size * sum(x_c'^2))^beta``, the sum over the ``size`` channels centred
    on c (``floor((size-1)/2)`` before, ``ceil((size-1)/2)`` after), zeros past the edges.

    Parameters
    ----------
    x : array_like of shape (N, C, ...)
        Floating-point input; converted to float32.
    size : int
    alpha, beta, k : float

    Returns
    -------
    ndarray of the same shape, float32
    """
    x = _input(x, "local_response_norm", min_ndim=2)
    if not is_int(size) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    alpha, beta, k = (real(v, f"local_response_norm: {n}")
                      for v, n in ((alpha, "alpha"), (beta, "beta"), (k, "k")))
    sq = np.square(x, dtype=np.float64)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    cum = np.cumsum(np.pad(sq, [(0, 0), (before + 1, after)] + [(0, 0)] * (x.ndim - 2)),
                    axis=1)
    window = cum[:, size:] - cum[:, :-size]
    return (x / (k + alpha / size * window) ** beta).astype(np.float32)


def softmax(x, dim):
    """``exp(x) / sum(exp(x))`` along ``dim``, with the maximum subtracted first.

    A slice that is all -inf, or that holds +inf or NaN, gives NaN, as in torch.

    Parameters
    ----------
    x : array_like of any shape with at least one dimension
        Floating-point input; converted to float32.
    dim : int
        Axis to normalise over; negative values count from the end.

    Returns
    -------
    ndarray of the same shape, float32
    """
    x = _input(x, "softmax", min_ndim=1)
    if not is_int(dim):
        raise TypeError(f"softmax: dim must be an int, got {dim!r}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"softmax: dim must be in [{-x.ndim}, {x.ndim - 1}] for x of shape "
                         f"{x.shape}, got {dim}")
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, as in torch
        out = np.subtract(x, np.max(x, axis=dim, keepdims=True))
    np.exp(out, out=out)
    total = out.sum(axis=dim, keepdims=True, dtype=np.float64)
    return np.divide(out, total, out=out, casting="same_kind")


def _bn_affine(name, channels, running_mean, running_var, weight, bias, eps,
               affine_names=("weight", "bias")):
    """(scale, shift) in float64 so that batch norm is ``x * scale + shift`` per channel."""
    mean = as_vector(running_mean, f"{name}: running_mean", channels, np.float64)
    var = as_vector(running_var, f"{name}: running_var", channels, np.float64)
    eps = real(eps, f"{name}: eps", minimum=0)
    if not np.all(var + eps > 0):
        raise ValueError(f"{name}: running_var + eps must be positive, got a minimum of "
                         f"{np.min(var + eps)!r}")
    scale = 1.0 / np.sqrt(var + eps)
    if weight is not None:
        scale *= as_vector(weight, f"{name}: {affine_names[0]}", channels, np.float64)
    shift = -mean * scale
    if bias is not None:
        shift += as_vector(bias, f"{name}: {affine_names[1]}", channels, np.float64)
    return scale, shift


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps=1e-5):
    """Inference batch normalisation with running statistics, over axis 1.

    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``, evaluated as
    ``x * scale + shift`` (as torch does in inference).

    Parameters
    ----------
    x : array_like of shape (N, C, ...)
        Floating-point input; converted to float32.
    running_mean, running_var : array_like of shape (C,)
        Running statistics; ``running_var + eps`` must be positive.
    weight, bias : array_like of shape (C,), optional
        Affine parameters (gamma, beta); None means 1 and 0.
    eps : float
        Non-negative constant added to the variance.

    Returns
    -------
    ndarray of the same shape as ``x``, float32
    """
    x = _input(x, "batch_norm", min_ndim=2)
    scale, shift = _bn_affine("batch_norm", x.shape[1], running_mean, running_var, weight, bias,
                              eps)
    shape = (-1,) + (1,) * (x.ndim - 2)
    out = np.multiply(x, scale.astype(np.float32).reshape(shape))
    return np.add(out, shift.astype(np.float32).reshape(shape), out=out)


def fold_batch_norm(conv_weight, conv_bias, running_mean, running_var, bn_weight, bn_bias,
                    eps=1e-5):
    """Weight and bias of one layer equal to a convolution (or linear layer) then batch norm.

    ``batch_norm(conv2d(x, w, b)) == conv2d(x, w * scale, (b - running_mean) * scale + bn_bias)``
    with ``scale = bn_weight / sqrt(running_var + eps)`` per output channel. Zero weights stay
    zero, so the sparsity pattern is kept.

    Parameters
    ----------
    conv_weight : array_like of shape (O, ...)
        Convolution weight (O, C/groups, KH, KW) or linear weight (O, F).
    conv_bias : array_like of shape (O,) or None
    running_mean, running_var : array_like of shape (O,)
        Batch norm running statistics; ``running_var + eps`` must be positive.
    bn_weight, bn_bias : array_like of shape (O,) or None
        Batch norm affine parameters; None means 1 and 0.
    eps : float
        Batch norm's eps.

    Returns
    -------
    weight : ndarray of the shape of ``conv_weight``, float32
        Or, for a sparse ``conv_weight`` (:class:`~fscnn.sparse.SparseConvWeight` or
        :class:`~fscnn.sparse.CSRMatrix`), the same type with every row scaled: the same
        values as the dense result (products that come out zero are dropped).
    bias : ndarray of shape (O,), float32
    """
    if isinstance(conv_weight, (CSRMatrix, SparseConvWeight)):
        w = None
        out_channels = conv_weight.shape[0]
    else:
        w = as_float_array(conv_weight, "fold_batch_norm: conv_weight", min_ndim=2)
        out_channels = w.shape[0]
    scale, shift = _bn_affine("fold_batch_norm", out_channels, running_mean, running_var,
                              bn_weight, bn_bias, eps, ("bn_weight", "bn_bias"))
    if conv_bias is not None:
        shift += as_vector(conv_bias, "fold_batch_norm: conv_bias", out_channels,
                           np.float64) * scale
    if w is None:
        return _scale_sparse_rows(conv_weight, scale.astype(np.float32)), shift.astype(np.float32)
    # float32 product: a float64 copy of a large linear weight would cost 8 bytes per weight.
    folded = np.multiply(w, scale.astype(np.float32).reshape((-1,) + (1,) * (w.ndim - 1)))
    return folded, shift.astype(np.float32)


def _scale_sparse_rows(weight, scale):
    """``weight`` (CSRMatrix or SparseConvWeight) with row ``r`` multiplied by ``scale[r]``
    (float32 products, as the dense fold computes them); zero products are dropped."""
    csr = weight.csr if isinstance(weight, SparseConvWeight) else weight
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    data = np.multiply(csr.data, scale[rows])
    indices, indptr = csr.indices, csr.indptr
    keep = data != 0
    if not keep.all():
        data, indices = data[keep], indices[keep]
        indptr = np.zeros_like(csr.indptr)
        np.cumsum(np.bincount(rows[keep], minlength=csr.shape[0]), out=indptr[1:])
    scaled = CSRMatrix(indptr, indices, data, csr.shape, check="cheap")  # shares the index arrays
    if isinstance(weight, SparseConvWeight):
        return SparseConvWeight(scaled, weight.kernel_shape)
    return scaled
