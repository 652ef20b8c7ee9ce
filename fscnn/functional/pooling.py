"""Max, average and adaptive pooling over (N, C, H, W) arrays, with torch's semantics.

Output sizes follow ``torch.nn.functional`` exactly, ceil_mode included (the last window
must start inside the input or its leading padding). The kernels are in
:mod:`fscnn._ext._pool`; they see the input as N*C independent planes.
"""
import numpy as np

from .._ext import _pool
from .._memory import aligned_empty
from .._validate import (MAX_HYPER_PARAMETER, as_float32_nchw, check_nonempty_hw, is_int,
                        is_padding4, padding4, pair, sliding_output_hw,
                        threads_for)


def _windowed(name, x, kernel_size, stride, padding, dilation, ceil_mode):
    """Validated (x, kernel, stride, padding, dilation, (Ho, Wo)) of a pooling call.

    ``padding`` comes back as a pair (ph, pw) when it pads both sides of each dimension
    alike by at most half the kernel (torch's rule, which the kernels implement), else as
    (top, bottom, left, right) for :func:`_explicitly_padded`."""
    x = as_float32_nchw(x, f"{name}: x")
    kernel = pair(kernel_size, f"{name}: kernel_size")
    stride = kernel if stride is None else pair(stride, f"{name}: stride")
    four = is_padding4(padding)
    padding = padding4(padding, f"{name}: padding")
    dilation = pair(dilation, f"{name}: dilation")
    if not four and (padding[0] > kernel[0] // 2 or padding[2] > kernel[1] // 2):
        raise ValueError(f"{name}: padding must be at most half of kernel_size, got padding "
                         f"{padding[::2]} for kernel_size {kernel} (a 4-tuple (top, bottom, "
                         f"left, right) may pad more)")
    out_hw = sliding_output_hw(name, x.shape[2:], kernel, stride, padding, dilation,
                               bool(ceil_mode))
    top, bottom, left, right = padding
    if top == bottom <= kernel[0] // 2 and left == right <= kernel[1] // 2:
        padding = (top, left)
    return x, kernel, stride, padding, dilation, out_hw


def _explicitly_padded(x, pads, fill):
    """``x`` padded by (top, bottom, left, right) with ``fill``: for padding the kernels'
    implicit rule does not cover (asymmetric, or over half the kernel)."""
    top, bottom, left, right = pads
    out = np.full(x.shape[:2] + (x.shape[2] + top + bottom, x.shape[3] + left + right), fill,
                  np.float32)
    out[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    return out


def _planes(x, out_hw):
    """The input as (N*C, H, W) planes and a new output of shape (N, C, Ho, Wo) with its planes."""
    n, c, h, w = x.shape
    out = aligned_empty((n, c) + tuple(out_hw))
    return x.reshape(n * c, h, w), out, out.reshape((n * c,) + tuple(out_hw))


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Padding acts as -inf; a NaN anywhere in a window makes that output NaN.

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
        Floating-point input; converted to float32.
    kernel_size : int or (int, int)
        Window size (kh, kw), positive.
    stride : int or (int, int), optional
        Window step; defaults to ``kernel_size``.
    padding : int, (int, int) or (top, bottom, left, right)
        Implicit -inf padding: an int or a pair pads both sides, by at most half of
        ``kernel_size`` (torch's rule); a 4-tuple (ONNX's asymmetric pads) may pad more.
    dilation : int or (int, int)
        Spacing between window taps, positive.
    ceil_mode : bool
        Round the output size up instead of down.

    Returns
    -------
    ndarray of shape (N, C, Ho, Wo), float32
        ``Ho = floor((H + 2*ph - dh*(kh-1) - 1) / sh) + 1`` (ceil with ``ceil_mode``), likewise Wo.

    Raises
    ------
    TypeError
        Non-float input or non-integer hyper-parameters.
    ValueError
        Wrong rank, non-positive kernel_size/stride/dilation, negative or too large padding,
        or an input too small for the window.
    """
    x, k, s, p, d, out_hw = _windowed("max_pool2d", x, kernel_size, stride, padding, dilation,
                                      ceil_mode)
    if len(p) == 4:
        x, p = _explicitly_padded(x, p, -np.inf), (0, 0)
    planes, out, out_planes = _planes(x, out_hw)
    if out.size:
        _pool.max_pool2d(planes, out_planes, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1],
                         threads_for(out.size * k[0] * k[1]))
    return out


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
        Floating-point input; converted to float32.
    kernel_size : int or (int, int)
        Window size (kh, kw), positive.
    stride : int or (int, int), optional
        Window step; defaults to ``kernel_size``.
    padding : int, (int, int) or (top, bottom, left, right)
        Implicit zero padding: an int or a pair pads both sides, by at most half of
        ``kernel_size`` (torch's rule); a 4-tuple (ONNX's asymmetric pads) may pad more.
    ceil_mode : bool
        Round the output size up instead of down.
    count_include_pad : bool
        Divide by the window size clipped to the padded input (True) or by the number of
        input pixels in the window (False).
    divisor_override : int, optional
        Non-zero divisor used for every window instead.

    Returns
    -------
    ndarray of shape (N, C, Ho, Wo), float32
        ``Ho = floor((H + 2*ph - kh) / sh) + 1`` (ceil with ``ceil_mode``), likewise Wo.

    Raises
    ------
    TypeError
        Non-float input or non-integer hyper-parameters.
    ValueError
        Wrong rank, non-positive kernel_size/stride, negative or too large padding, zero
        divisor_override, or an input too small for the window.
    """
    x, k, s, p, _, out_hw = _windowed("avg_pool2d", x, kernel_size, stride, padding, 1,
                                      ceil_mode)
    if divisor_override is not None:
        if not is_int(divisor_override):
            raise TypeError(f"avg_pool2d: divisor_override must be an int or None, got "
                            f"{divisor_override!r}")
        if divisor_override == 0 or abs(divisor_override) > MAX_HYPER_PARAMETER:
            raise ValueError(f"avg_pool2d: divisor_override must be non-zero and within "
                             f"32 bits, got {divisor_override}")
    if len(p) == 4:
        return _explicit_avg_pool2d(x, k, s, p, out_hw, count_include_pad, divisor_override)
    planes, out, out_planes = _planes(x, out_hw)
    if out.size:
        _pool.avg_pool2d(planes, out_planes, k[0], k[1], s[0], s[1], p[0], p[1],
                         bool(count_include_pad), divisor_override or 0,
                         threads_for(out.size * k[0] * k[1]))
    return out


def _explicit_avg_pool2d(x, k, s, pads, out_hw, count_include_pad, divisor_override):
    """Average pooling with (top, bottom, left, right) padding: window sums over the
    zero-padded input divided by the window's count of input pixels (or of input and padding
    pixels with ``count_include_pad``, ONNX's rule: a ceil_mode window past the padding counts
    only what it covers)."""
    padded = _explicitly_padded(x, pads, 0.0)
    planes, out, out_planes = _planes(padded, out_hw)
    if not out.size:
        return out
    _pool.avg_pool2d(planes, out_planes, k[0], k[1], s[0], s[1], 0, 0, True,
                     divisor_override or 1, threads_for(out.size * k[0] * k[1]))
    if divisor_override:
        return out
    mask = _explicitly_padded(np.ones((1, 1) + x.shape[2:], np.float32), pads,
                              1.0 if count_include_pad else 0.0)
    counts = np.empty((1,) + tuple(out_hw), np.float32)
    _pool.avg_pool2d(mask.reshape((1,) + mask.shape[2:]), counts, k[0], k[1], s[0], s[1], 0,
                     0, True, 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(out, counts, out=out)
    return out


def _adaptive_windows(size, out):
    """torch's adaptive windows along one dimension, [floor(i*size/out), ceil((i+1)*size/out))
    for i < out, as an intp array of shape (out, 2)."""
    return np.array([(i * size // out, -(-(i + 1) * size // out)) for i in range(out)],
                    dtype=np.intp)


def _adaptive(name, x, output_size, take_max):
    x = as_float32_nchw(x, f"{name}: x")
    h, w = x.shape[2:]
    check_nonempty_hw(name, (h, w))
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(sizes) != 2 or not all(v is None or is_int(v) for v in sizes):
        raise TypeError(f"{name}: output_size must be an int or a pair of ints or None, got "
                        f"{output_size!r}")
    out_hw = tuple(full if v is None else int(v) for v, full in zip(sizes, (h, w)))
    if min(out_hw) < 1:
        raise ValueError(f"{name}: output_size must be positive, got {output_size!r}")
    planes, out, out_planes = _planes(x, out_hw)
    if out.size:
        _pool.adaptive_pool2d(planes, out_planes, _adaptive_windows(h, out_hw[0]),
                              _adaptive_windows(w, out_hw[1]), take_max,
                              threads_for(max(x.size, out.size)))
    return out


def adaptive_avg_pool2d(x, output_size):
    """2-D adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output pixel (i, j) averages input rows ``[floor(i*H/Ho), ceil((i+1)*H/Ho))`` and the
    columns given by the same rule.

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
        Floating-point input; converted to float32.
    output_size : int or (int or None, int or None)
        (Ho, Wo), positive; None keeps that input dimension.

    Returns
    -------
    ndarray of shape (N, C, Ho, Wo), float32
    """
    return _adaptive("adaptive_avg_pool2d", x, output_size, False)


def adaptive_max_pool2d(x, output_size):
    """2-D adaptive max pooling, as ``torch.nn.functional.adaptive_max_pool2d``.

    Windows follow :func:`adaptive_avg_pool2d`; a NaN in a window makes that output NaN.
    (torch's ``return_indices`` is not supported.)

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
        Floating-point input; converted to float32.
    output_size : int or (int or None, int or None)
        (Ho, Wo), positive; None keeps that input dimension.

    Returns
    -------
    ndarray of shape (N, C, Ho, Wo), float32
    """
    return _adaptive("adaptive_max_pool2d", x, output_size, True)
