"""Stateless operators on NumPy arrays, in the style of ``torch.nn.functional``.

Every function validates its arguments (shape, dtype, hyper-parameters) and raises
``ValueError``/``TypeError`` naming the problem before any compiled kernel runs. Inputs are
float arrays of shape (N, C, H, W) (or (N, F) for ``linear``); results are float32.
:mod:`fscnn.functional.tensor` adds NumPy-broadcasting arithmetic and tensor manipulation
(integer tensors keep their type there, for the shape computations of exported graphs).
"""
from . import tensor
from .conv import conv2d
from .conv_transpose import conv_transpose2d
from .elementwise import (GELU_APPROXIMATIONS, batch_norm, clip, elu, erf, fold_batch_norm,
                          gelu, hardsigmoid, hardswish, leaky_relu, local_response_norm,
                          log_softmax, prelu, relu, relu6, sigmoid, silu, softmax, tanh)
from .linear import linear
from .pooling import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from .resize import resize
from .tensor import (add, cast, concat, depth_to_space, div, expand, flatten, gather, maximum,
                     minimum, mul, pad, pow, reduce, reshape, slice_axes, split, sqrt, squeeze,
                     sub, transpose, unsqueeze)

__all__ = ["conv2d", "conv_transpose2d", "linear", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "adaptive_max_pool2d", "relu", "relu6", "leaky_relu", "prelu",
           "sigmoid", "tanh", "hardswish", "hardsigmoid", "silu", "elu", "erf", "gelu", "clip",
           "softmax", "log_softmax", "local_response_norm", "batch_norm", "fold_batch_norm",
           "resize", "add", "sub", "mul", "div", "pow", "maximum", "minimum", "sqrt", "concat",
           "split", "slice_axes", "reshape", "transpose", "squeeze", "unsqueeze", "flatten",
           "pad", "reduce", "gather", "expand", "cast", "depth_to_space", "tensor"]
