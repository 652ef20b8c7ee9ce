"""Float64 NumPy reference implementations of fscnn's operators, for tests only.

Written for obvious correctness, not speed: every function converts its inputs to float64,
loops over kernel taps (never over pixels) and follows PyTorch's semantics, including its
output-size rules for pooling and its handling of NaN. ``tests/test_reference.py`` checks
these functions against ``torch.nn.functional``.
"""
import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def pair(v):
    """(v, v) for an int, else the two ints of v."""
    return (int(v), int(v)) if np.isscalar(v) else tuple(int(t) for t in v)


def conv_padding(padding, kernel_size=None, dilation=(1, 1), stride=(1, 1)):
    """Padding as (top, bottom, left, right).

    Parameters
    ----------
    padding : int, (ph, pw), (top, bottom, left, right), 'valid' or 'same'
        'same' follows torch: total ``dilation * (kernel - 1)``, the odd extra on the bottom/right;
        it needs stride 1.
    kernel_size, dilation, stride : pair of int
        Needed for 'same' only.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same" or tuple(stride) != (1, 1):
            raise ValueError(f"reference conv_padding: unsupported padding {padding!r} "
                             f"with stride {stride}")
        pads = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    if np.isscalar(padding):
        p = int(padding)
        return (p, p, p, p)
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    if len(padding) == 4:
        return padding
    raise ValueError(f"reference conv_padding: bad padding {padding!r}")


def pool_output_size(size, kernel, stride, pad, dilation=1, ceil_mode=False):
    """torch's pooling output size for one spatial dimension (symmetric padding ``pad``).

    With ``ceil_mode`` the last window must start inside the input or its left padding.
    """
    num = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = num // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _taps(xp, out_hw, stride, dilation, kh, kw):
    """Strided view of the padded input ``xp`` seen by kernel tap (kh, kw): (N, C, Ho, Wo)."""
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    y0, x0 = kh * dh, kw * dw
    return xp[:, :, y0:y0 + (ho - 1) * sh + 1:sh, x0:x0 + (wo - 1) * sw + 1:sw]


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Cross-correlation like ``torch.nn.functional.conv2d``, in float64.

    Parameters
    ----------
    x : array of shape (N, C, H, W)
    w : array of shape (O, C // groups, KH, KW)
    b : array of shape (O,) or None
    stride, dilation : int or pair
    padding : int, (ph, pw), (top, bottom, left, right), 'valid' or 'same'
    groups : int

    Returns
    -------
    ndarray of shape (N, O, Ho, Wo), float64
    """
    x, w = _f64(x), _f64(w)
    stride, dilation = pair(stride), pair(dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    assert c == cg * groups and o % groups == 0
    top, bottom, left, right = conv_padding(padding, (kh, kw), dilation, stride)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    og = o // groups
    wg = w.reshape(groups, og, cg, kh, kw)
    out = np.zeros((n, groups, og, ho, wo))
    for i in range(kh):
        for j in range(kw):
            t = _taps(xp, (ho, wo), stride, dilation, i, j).reshape(n, groups, cg, ho, wo)
            out += np.einsum("ngchw,goc->ngohw", t, wg[:, :, :, i, j], optimize=True)
    out = out.reshape(n, o, ho, wo)
    if b is not None:
        out += _f64(b)[None, :, None, None]
    return out


def linear(x, w, b=None):
    """``x @ w.T + b`` in float64; x of shape (N, F), w of shape (O, F), b of shape (O,)."""
    out = _f64(x) @ _f64(w).T
    return out if b is None else out + _f64(b)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``torch.nn.functional.max_pool2d`` in float64: padding acts as -inf, NaN propagates."""
    x = _f64(x)
    k, p, d = pair(kernel_size), pair(padding), pair(dilation)
    s = k if stride is None else pair(stride)
    out_hw = [pool_output_size(x.shape[2 + a], k[a], s[a], p[a], d[a], ceil_mode) for a in (0, 1)]
    # Pad enough on the bottom/right for ceil_mode windows that overhang the padded input.
    extra = [max(0, (out_hw[a] - 1) * s[a] + d[a] * (k[a] - 1) + 1 - (x.shape[2 + a] + 2 * p[a]))
             for a in (0, 1)]
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0] + extra[0]), (p[1], p[1] + extra[1])),
                constant_values=-np.inf)
    taps = [_taps(xp, out_hw, s, d, i, j) for i in range(k[0]) for j in range(k[1])]
    return np.max(np.stack(taps), axis=0)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """``torch.nn.functional.avg_pool2d`` in float64.

    Each window is clipped to the padded input (``pool_size``, the count_include_pad divisor)
    and then to the input itself (the summed pixels and the count_include_pad=False divisor).
    """
    x = _f64(x)
    n, c, h, w = x.shape
    k, p = pair(kernel_size), pair(padding)
    s = k if stride is None else pair(stride)
    ho, wo = (pool_output_size(x.shape[2 + a], k[a], s[a], p[a], 1, ceil_mode) for a in (0, 1))
    out = np.empty((n, c, ho, wo))
    for oy in range(ho):
        y0 = oy * s[0] - p[0]
        y1 = min(y0 + k[0], h + p[0])
        for ox in range(wo):
            x0 = ox * s[1] - p[1]
            x1 = min(x0 + k[1], w + p[1])
            pool_size = (y1 - y0) * (x1 - x0)
            cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
            if cy0 >= cy1 or cx0 >= cx1:
                out[:, :, oy, ox] = 0.0
                continue
            total = x[:, :, cy0:cy1, cx0:cx1].sum(axis=(2, 3))
            if divisor_override is not None:
                divisor = divisor_override
            elif count_include_pad:
                divisor = pool_size
            else:
                divisor = (cy1 - cy0) * (cx1 - cx0)
            out[:, :, oy, ox] = total / divisor
    return out


def adaptive_bounds(size, out):
    """torch's adaptive windows along one dimension: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive(x, output_size, reduce):
    x = _f64(x)
    n, c, h, w = x.shape
    oh, ow = (h if output_size[0] is None else output_size[0],
              w if output_size[1] is None else output_size[1])
    out = np.empty((n, c, oh, ow))
    for i, (y0, y1) in enumerate(adaptive_bounds(h, oh)):
        for j, (x0, x1) in enumerate(adaptive_bounds(w, ow)):
            out[:, :, i, j] = reduce(x[:, :, y0:y1, x0:x1], axis=(2, 3))
    return out


def _output_pair(output_size):
    return (output_size, output_size) if output_size is None or np.isscalar(output_size) \
        else tuple(output_size)


def adaptive_avg_pool2d(x, output_size):
    """``torch.nn.functional.adaptive_avg_pool2d`` in float64 (None keeps that input size)."""
    return _adaptive(x, _output_pair(output_size), np.mean)


def adaptive_max_pool2d(x, output_size):
    """``torch.nn.functional.adaptive_max_pool2d`` in float64; NaN propagates."""
    return _adaptive(x, _output_pair(output_size), np.max)


def _channel_shape(x):
    return (1, -1) + (1,) * (x.ndim - 2)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps=1e-5):
    """Inference batch normalisation over axis 1 of x (shape (N, C, ...)), in float64."""
    x = _f64(x)
    shape = _channel_shape(x)
    out = (x - _f64(running_mean).reshape(shape)) / np.sqrt(_f64(running_var).reshape(shape) + eps)
    if weight is not None:
        out = out * _f64(weight).reshape(shape)
    if bias is not None:
        out = out + _f64(bias).reshape(shape)
    return out


def add(a, b, activation=None):
    """``activation(a + b)`` in float64."""
    return ACTIVATIONS[activation](_f64(a) + _f64(b))


def relu(x):
    return np.maximum(_f64(x), 0.0)  # np.maximum propagates NaN, as torch does


def relu6(x):
    return np.minimum(relu(x), 6.0)


def leaky_relu(x, negative_slope=0.01):
    x = _f64(x)
    return np.where(x > 0, x, x * negative_slope)


def prelu(x, weight):
    """PReLU with one weight per channel (axis 1) or a single shared weight."""
    x, weight = _f64(x), _f64(weight).ravel()
    if weight.size > 1:
        weight = weight.reshape(_channel_shape(x))
    return np.where(x > 0, x, x * weight)


def sigmoid(x):
    x = _f64(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def tanh(x):
    return np.tanh(_f64(x))


def hardsigmoid(x):
    return np.clip(_f64(x) + 3.0, 0.0, 6.0) / 6.0


def hardswish(x):
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, as in torch
        return _f64(x) * hardsigmoid(x)


def silu(x):
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, as in torch
        return _f64(x) * sigmoid(x)


def softmax(x, dim):
    x = _f64(x)
    e = np.exp(x - np.max(x, axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


ACTIVATIONS = {None: _f64, "relu": relu, "relu6": relu6}


def fold_batch_norm(conv_weight, conv_bias, running_mean, running_var, bn_weight, bn_bias,
                    eps=1e-5):
    """Weights and bias of the layer ``batch_norm(conv(x))``, in float64."""
    scale = 1.0 / np.sqrt(_f64(running_var) + eps)
    if bn_weight is not None:
        scale = scale * _f64(bn_weight)
    w = _f64(conv_weight) * scale.reshape((-1,) + (1,) * (np.ndim(conv_weight) - 1))
    b = 0.0 if conv_bias is None else _f64(conv_bias)
    b = (b - _f64(running_mean)) * scale
    if bn_bias is not None:
        b = b + _f64(bn_bias)
    return w, b


__all__ = ["pair", "conv2d", "conv_padding", "linear", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "adaptive_max_pool2d", "adaptive_bounds", "pool_output_size", "batch_norm",
           "fold_batch_norm", "add", "relu", "relu6", "leaky_relu", "prelu", "sigmoid", "tanh",
           "hardsigmoid", "hardswish", "silu", "softmax", "ACTIVATIONS"]
