"""Fully connected layer on NumPy arrays (a one-shot :class:`fscnn.ops.LinearOp`)."""
from ..kernels import LINEAR_KERNELS
from ..ops import LinearOp, one_shot_kernel


def linear(x, weight, bias=None, activation=None, kernel="auto"):
    """``act(x @ weight.T + bias)``.

    Parameters
    ----------
    x : array of shape (N, in_features)
    weight : array of shape (out_features, in_features) or fscnn.sparse.CSRMatrix
    bias : array of shape (out_features,) or None
    activation : None, 'relu' or 'relu6'
    kernel : {'auto', 'sparse', 'dense'}
        'auto' picks by the weight's sparsity.

    Returns
    -------
    ndarray of shape (N, out_features), float32
    """
    op = LinearOp(weight, bias, activation, kernel="dense")
    op.kernel = one_shot_kernel(kernel, op.sparsity, "linear", LINEAR_KERNELS)
    return op(x)
