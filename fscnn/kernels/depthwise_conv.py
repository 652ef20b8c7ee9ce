"""Depthwise convolution (include/dwconv.h): the kernel of ``kernel='depthwise'``, for layers
with one input channel per group (any kernel size, stride, dilation, padding and channel
multiplier).

A work item is one input channel of one image, packed into a per-thread buffer that stays in
cache; its taps (zeros dropped) are accumulated in registers over flat tiles. A 3x3 layer with
one output channel per input channel, dilation 1 and strides 1 or 2 (MobileNet's) skips the
packing where the CPU has AVX-512: its masked loads read the unpacked plane with the padding as
zeros (:func:`direct_weights`).

:func:`expand_depthwise_plan` is the same kernel fed by the 1x1 convolution before it (the
expansion of MobileNet-style blocks): a work item computes its input channel from the 1x1
layer's input instead of packing it from memory (:class:`fscnn.ops.ExpandDepthwiseOp` runs it).
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
        csr, offsets, work, tail = _layout(op, geo, level)
        call = _conv.DepthwiseConv(csr.indptr.astype(np.int64), offsets, csr.data, op.bias,
                                   geo.packing(), op.act_code, level, threads,
                                   direct_weights(op, geo, level))
        return DepthwisePlan(offsets, (threads, work), tail, call)

    @staticmethod
    def run(x, plan, out):
        work = scratch("depthwise", plan.work)
        work[:, plan.tail[0]:plan.tail[1]] = 0.0
        plan.call(x, work, out)


def direct_weights(op, geo, level):
    """The (O, 9) float32 weights of depthwise layer ``op`` for the direct 3x3 path
    (dwconv3x3_direct in dwconv.h) on inputs of geometry ``geo`` at SIMD level ``level``, or
    None where that path does not apply and the channels are packed.

    The packed path spent 3-4x its arithmetic on packing and copying MobileNetV2's 14x14 and
    7x7 planes; the direct path multiplies all 9 taps, pruned ones too."""
    O, Cg, KH, KW = op.weight_shape
    pt, _, pl, _ = geo.padding
    if (Cg != 1 or (KH, KW) != (3, 3) or O != geo.input_shape[0] or op.dilation != (1, 1)
            or any(s not in (1, 2) for s in geo.stride) or pt > 2 or pl > 2
            or not _conv.depthwise_direct_available(level)):
        return None
    return np.ascontiguousarray(op.sparse.csr.to_dense(), dtype=np.float32).reshape(O, 9)


def _layout(op, geo, level):
    """The depthwise layer ``op``'s CSR weights, its taps' offsets in a channel's packed planes,
    the scratch floats per thread and the columns of it to zero (see DepthwisePlan)."""
    csr = op.sparse.csr
    T = _conv.depthwise_tile_size(level)
    planes = (1 if geo.one_phase else geo.stride[0] * geo.stride[1]) * geo.Hq * geo.Wq
    offsets = geo.tap_offsets[csr.indices.astype(np.int64)].astype(np.int32)
    return csr, offsets, planes + T + 16 + geo.L + T, (planes, planes + T + 16)


def expand_depthwise_plan(expand, op, geo, threads, level):
    """The plan of the 1x1 convolution ``expand`` (stride 1, no padding, groups 1; a
    :class:`fscnn.ops.Conv2dOp`) and the depthwise convolution ``op`` it feeds, run as one
    kernel on inputs whose *expanded* tensor has geometry ``geo`` (``op``'s): a
    :class:`DepthwisePlan` whose scratch also holds one expanded plane per thread, run by
    :meth:`DepthwiseConv.run`."""
    e = expand.sparse.csr
    csr, offsets, work, tail = _layout(op, geo, level)
    H, W = geo.input_shape[1:]
    # a tap reads its input channel's plane; the 1x1 layer's own geometry (built for this
    # input before a plan) checked that an image fits 32-bit offsets
    reads = (e.indices.astype(np.int64) * (H * W)).astype(np.int32)
    call = _conv.ExpandDepthwiseConv(
        e.indptr.astype(np.int64), reads, e.data, expand.bias,
        expand.act_code, csr.indptr.astype(np.int64), offsets, csr.data, op.bias,
        geo.packing(), op.act_code, level, threads, direct_weights(op, geo, level))
    return DepthwisePlan(offsets, (threads, work + H * W), tail, call)
