"""Dense convolution as im2col + SGEMM over chunks of the flat output (_conv.DenseConv): the
kernel of ``kernel='dense'`` for every layer that the pointwise kernel does not run.

Each chunk's panel is a memcpy per tap from the packed image (conv_pack.h), multiplied by the
group's weights with scipy's single-threaded SGEMM, one GEMM per fscnn thread (fscnn._blas).
"""
from typing import NamedTuple

import numpy as np

from .. import _blas
from .._ext import _conv
from .base import NO_BUFFER, Kernel, packed_scratch, scratch


class DensePlan(NamedTuple):
    """The dense kernel's plan: positions per chunk, the (O, K) weights it reads, the packed
    image's size and reach (``packed`` floats, readable to ``readable``; ``pack`` false: the
    input is read in place), the panel scratch shape and the compiled kernel (``call``)."""

    chunk: int
    weights: np.ndarray
    pack: bool
    packed: int
    readable: int
    panels: tuple
    call: _conv.DenseConv


class DenseConv(Kernel):
    """im2col + SGEMM: any layer."""

    name = "dense"
    reads_dense = True

    @staticmethod
    def plan(op, geo, threads, level):
        """Chunks of the flat output with a (K, chunk) panel of ~1 MiB, at least 128 positions
        (every chunk streams all the weights: 4.4 ms with 32 positions, 3.9 with 64 or more on
        a 512x512 3x3 layer at 7x7, 10.8 ms with 64 and 9.4 with 224 at 14x14), and no more
        chunks than threads need."""
        K = op.size // op.weight_shape[0]
        chunk = int(np.clip((1 << 18) // K, 128, 4096)) // 16 * 16
        chunk = max(16, min(chunk, -(-geo.L // max(1, threads)) + 15 & ~15))
        threads = _blas.gemm_threads(threads)
        weights = op.dense
        pack = not geo.in_place
        call = _conv.DenseConv(weights, geo.tap_offsets.astype(np.int32), geo.group_stride,
                               op.bias, op.groups, geo.packing(), pack, chunk, op.act_code,
                               level, threads)
        panels = (threads, (weights.shape[1] + op.weight_shape[0] // op.groups) * chunk)
        return DensePlan(chunk, weights, pack, geo.packed, geo.max_tap + geo.L, panels, call)

    @staticmethod
    def run(x, plan, out):
        with _blas.single_threaded_blas():
            plan.call(x, packed_scratch(plan.packed, plan.readable) if plan.pack else NO_BUFFER,
                      scratch("panels", plan.panels), out)
