"""2-D convolution on NumPy arrays (a one-shot :class:`fscnn.ops.Conv2dOp`)."""
from ..ops import Conv2dOp, one_shot_kernel


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           kernel="auto"):
    """2-D convolution (cross-correlation, as in PyTorch) with an optional fused activation.

    Parameters
    ----------
    x : array of shape (N, C, H, W)
        Any float dtype; converted to float32.
    weight : array of shape (O, C/groups, KH, KW) or fscnn.sparse.SparseConvWeight
    bias : array of shape (O,) or None
    stride, dilation : int or (int, int)
    padding : int, (ph, pw), (top, bottom, left, right), 'same' or 'valid'
    groups : int
    activation : None, 'relu' or 'relu6'
    kernel : {'auto', 'sparse', 'dense', 'winograd', 'depthwise'}
        'winograd' needs a 3x3 kernel, stride 1, dilation 1 and groups 1; 'depthwise' one
        input channel per group. 'auto' picks by the weight's sparsity, and the depthwise
        kernel for depthwise layers (a one-shot call has nothing to cache timings in; layers
        and :class:`fscnn.ops.Conv2dOp` time the kernels instead).

    Returns
    -------
    ndarray of shape (N, O, H_out, W_out), float32

    Examples
    --------
    >>> import numpy as np, fscnn.functional as F
    >>> F.conv2d(np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), padding=1).shape
    (1, 3, 4, 4)
    """
    op = Conv2dOp(weight, bias, stride, padding, dilation, groups, activation, kernel="dense")
    op.kernel = one_shot_kernel(kernel, op.sparsity, "conv2d")
    if kernel == "auto" and not op.ineligible["depthwise"]:
        op.kernel = "depthwise"
    op.check_kernel(op.kernel, "conv2d")
    return op(x)
