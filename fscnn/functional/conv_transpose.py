"""Transposed 2-D convolution (the gradient of a convolution, used to upsample)."""
import numpy as np

from .._memory import aligned_empty
from .._validate import as_float32_nchw, as_float_array, as_vector, is_int, padding4, pair


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """Transposed convolution, as ``torch.nn.functional.conv_transpose2d`` (and ONNX's
    ConvTranspose, whose asymmetric pads a 4-tuple ``padding`` takes).

    Each input pixel scatters ``weight`` times its value into the output at ``stride``
    spacing; the output is then cropped by ``padding`` on each side and extended by
    ``output_padding`` at the bottom and right:
    ``H_out = (H - 1) * sh - top - bottom + dh * (KH - 1) + output_padding_h + 1``.

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
        Floating-point input; converted to float32.
    weight : array_like of shape (C, O/groups, KH, KW)
    bias : array_like of shape (O,) or None
    stride, dilation : int or (int, int)
    padding : int, (ph, pw) or (top, bottom, left, right)
    output_padding : int or (int, int)
        Rows and columns added at the bottom and right (torch requires fewer than the
        stride or dilation; beyond that they hold just the bias).
    groups : int

    Returns
    -------
    ndarray of shape (N, O, H_out, W_out), float32

    Notes
    -----
    One GEMM per image and group (``weight^T @ x``, NumPy's BLAS) gives every tap's
    contribution, then KH*KW strided additions place them: no zero-stuffed input is built.
    """
    name = "conv_transpose2d"
    x = as_float32_nchw(x, f"{name}: x")
    w = as_float_array(weight, f"{name}: weight", layout="COHW")
    if not is_int(groups) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
    C, Og, KH, KW = w.shape
    N, Cx, H, W = x.shape
    if Cx != C or C % groups:
        raise ValueError(f"{name}: expected {C} input channels (weight.shape[0], divisible by "
                         f"groups={groups}), got input of shape {x.shape}")
    O = Og * groups
    b = None if bias is None else as_vector(bias, f"{name}: bias", O)
    sh, sw = pair(stride, f"{name}: stride")
    dh, dw = pair(dilation, f"{name}: dilation")
    top, bottom, left, right = padding4(padding, f"{name}: padding")
    # torch requires output_padding < stride or dilation; ONNX's output_shape may extend the
    # output further (with zeros, and the bias)
    oph, opw = pair(output_padding, f"{name}: output_padding", minimum=0)
    full_h = (H - 1) * sh + dh * (KH - 1) + 1 + oph
    full_w = (W - 1) * sw + dw * (KW - 1) + 1 + opw
    H_out, W_out = full_h - top - bottom, full_w - left - right
    if min(H_out, W_out) < 1 or min(H, W) < 1:
        raise ValueError(f"{name}: input {H}x{W} with padding {(top, bottom, left, right)} "
                         f"gives an empty output ({H_out}x{W_out})")
    Cg = C // groups
    # (groups, Og*KH*KW, Cg): rows of the GEMM are (output channel, tap)
    wt = np.ascontiguousarray(w.reshape(groups, Cg, Og * KH * KW).transpose(0, 2, 1))
    full = np.zeros((N, O, full_h, full_w), np.float32)
    for n in range(N):
        for g in range(groups):
            cols = (wt[g] @ x[n, g * Cg:(g + 1) * Cg].reshape(Cg, H * W)).reshape(
                Og, KH, KW, H, W)
            dst = full[n, g * Og:(g + 1) * Og]
            for ky in range(KH):
                for kx in range(KW):
                    dst[:, ky * dh:ky * dh + (H - 1) * sh + 1:sh,
                        kx * dw:kx * dw + (W - 1) * sw + 1:sw] += cols[:, ky, kx]
    out = aligned_empty((N, O, H_out, W_out))
    out[...] = full[:, :, top:top + H_out, left:left + W_out]
    if b is not None:
        out += b.reshape(1, O, 1, 1)
    return out
