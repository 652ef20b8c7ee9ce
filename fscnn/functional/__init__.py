"""Stateless operators on NumPy arrays, in the style of ``torch.nn.functional``.

Every function validates its arguments (shape, dtype, hyper-parameters) and raises
``ValueError``/``TypeError`` naming the problem before any compiled kernel runs. Inputs are
float arrays of shape (N, C, H, W) (or (N, F) for ``linear``); results are float32.
"""
from .conv import conv2d
from .elementwise import (add, batch_norm, fold_batch_norm, hardsigmoid, hardswish, leaky_relu,
                          prelu, relu, relu6, sigmoid, silu, softmax, tanh)
from .linear import linear
from .pooling import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d

__all__ = ["conv2d", "linear", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "adaptive_max_pool2d", "relu", "relu6", "leaky_relu", "prelu", "sigmoid", "tanh",
           "hardswish", "hardsigmoid", "silu", "softmax", "add", "batch_norm", "fold_batch_norm"]
