"""Dense linear layer: scipy's BLAS (SGEMV at batch 1, else SGEMM) per block of output
features, blocks handed to fscnn's threads, each with single-threaded BLAS (fscnn._blas); the
kernel of ``kernel='dense'`` for linear layers.
"""
from typing import NamedTuple

import numpy as np

from .. import _blas
from .._ext import _linear
from .base import Kernel


class DenseLinearPlan(NamedTuple):
    """The dense linear kernel's plan: the (O, I) weights it reads and the compiled kernel
    (``call``)."""

    weights: np.ndarray
    call: _linear.DenseLinear


class DenseLinear(Kernel):
    """BLAS GEMV/GEMM per block of output features: any linear layer."""

    name = "dense"
    reads_dense = True

    @staticmethod
    def plan(op, shape, threads, level):
        threads = _blas.gemm_threads(threads)
        weights = op.dense
        return DenseLinearPlan(weights, _linear.DenseLinear(weights, op.bias, op.act_code,
                                                            level, threads))

    @staticmethod
    def run(x, plan, out):
        with _blas.single_threaded_blas():
            plan.call(x, out)
