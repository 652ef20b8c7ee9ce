"""Depthwise convolution (include/dwconv.h): the kernel of ``kernel='depthwise'``, for layers
with one input channel per group (any kernel size, stride, dilation, padding and channel
multiplier).

A work item is one input channel of one image, packed into a per-thread buffer that stays in
cache; its taps (zeros dropped) are accumulated in registers over flat tiles.
"""
from typing import NamedTuple

import numpy as np

from .._ext import _conv
from .base import Kernel, scratch


class DepthwisePlan(NamedTuple):
    """The depthwise kernel's plan: the taps' offsets within one channel's packed planes (zero
    taps dropped), the scratch shape per thread (``work``), the columns of it to zero before a
    call (``tail``) and the compiled kernel (``call``)."""

    offsets: np.ndarray
    work: tuple
    tail: tuple
    call: _conv.DepthwiseConv


class DepthwiseConv(Kernel):
    """One input channel at a time, in cache: layers with one input channel per group."""

    name = "depthwise"

    @staticmethod
    def ineligibility(layer):
        if layer.weight_shape[1] != 1:
            return (f"the depthwise kernel needs one input channel per group (groups = input "
                    f"channels), got {layer.weight_shape[1]} per group")
        return None

    @staticmethod
    def plan(op, geo, threads, level):
        csr = op.sparse.csr
        T = _conv.depthwise_tile_size(level)
        planes = (1 if geo.one_phase else geo.stride[0] * geo.stride[1]) * geo.Hq * geo.Wq
        offsets = geo.tap_offsets[csr.indices.astype(np.int64)].astype(np.int32)
        call = _conv.DepthwiseConv(csr.indptr.astype(np.int64), offsets, csr.data, op.bias,
                                   geo.packing(), op.act_code, level, threads)
        return DepthwisePlan(offsets, (threads, planes + T + 16 + geo.L + T),
                             (planes, planes + T + 16), call)

    @staticmethod
    def run(x, plan, out):
        work = scratch("depthwise", plan.work)
        work[:, plan.tail[0]:plan.tail[1]] = 0.0
        plan.call(x, work, out)
