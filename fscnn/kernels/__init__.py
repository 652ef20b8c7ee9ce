"""The kernels, one module per family, and the registry that lists them per operator kind.

Each kernel is a class with the interface of :class:`fscnn.kernels.base.Kernel`: why it cannot
run a layer (``ineligibility``), its typed plan for an input shape (``plan``), and running that
plan into a preallocated output (``run``). The operators (:mod:`fscnn.ops`) validate, pick
among the registered kernels and cache plans; every list of kernel names (the ``kernel``
settings of the operators, layers, ``Module.prepare`` and the CLI) comes from here.

Adding a kernel: write its module (a :class:`~fscnn.kernels.base.Kernel` subclass and its
plan), then add the class to ``CONV`` or ``LINEAR`` below (``INT8_CONV`` or ``INT8_LINEAR``
for a kernel of the quantized operators).
"""
from .base import ConvLayer, Kernel, LinearLayer, OpError
from .dense_conv import DenseConv
from .dense_linear import DenseLinear
from .depthwise_conv import DepthwiseConv
from .int8 import Int8SparseConv, Int8SparseLinear
from .pointwise_conv import PointwiseConv
from .sparse_conv import BlockSparseConv, SparseConv
from .sparse_linear import SparseLinear
from .winograd_conv import WinogradConv

# The kernels of each operator kind, in the order kernel='auto' times them: the dense ones last,
# so that the dense weights it builds to time them (for sparse-held layers) are never alive
# together with another kernel's set-up. For a setting that several classes run ('dense'), the
# first that can run a layer runs it.
CONV = (DepthwiseConv, SparseConv, BlockSparseConv, WinogradConv, PointwiseConv, DenseConv)
LINEAR = (SparseLinear, DenseLinear)
# The kernels of the quantized operators (fscnn.ops.QuantizedConv2dOp, QuantizedLinearOp).
INT8_CONV = (Int8SparseConv,)
INT8_LINEAR = (Int8SparseLinear,)


def kernel_names(registry):
    """The valid ``kernel`` settings of an operator kind: 'auto', then its kernels' names."""
    return ("auto",) + tuple(dict.fromkeys(k.name for k in registry))


CONV_KERNELS = kernel_names(CONV)
LINEAR_KERNELS = kernel_names(LINEAR)
INT8_KERNELS = kernel_names(INT8_CONV)


def runner(registry, name, layer):
    """(kernel class, None): the first class of ``registry`` named ``name`` that can run
    ``layer``, or (None, why none can)."""
    reason = f"{name!r} is none of the kernels {kernel_names(registry)}"
    for kernel in registry:
        if kernel.name == name:
            reason = kernel.ineligibility(layer)
            if reason is None:
                return kernel, None
    return None, reason


def ineligibility(registry, name, layer):
    """Why no kernel of ``registry`` named ``name`` can run ``layer``, or None when one can."""
    return runner(registry, name, layer)[1]


__all__ = ["CONV", "LINEAR", "INT8_CONV", "INT8_LINEAR", "CONV_KERNELS", "LINEAR_KERNELS",
           "INT8_KERNELS", "ConvLayer", "LinearLayer",
           "Kernel", "OpError", "kernel_names", "runner", "ineligibility", "DepthwiseConv", "SparseConv",
           "BlockSparseConv", "WinogradConv", "PointwiseConv", "DenseConv", "SparseLinear",
           "DenseLinear", "Int8SparseConv", "Int8SparseLinear"]
