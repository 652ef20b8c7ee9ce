"""Pointwise GEMM (include/pointwise.h): the kernel of ``kernel='dense'`` on 1x1 ungrouped
layers, a register-blocked GEMM with bias and activation fused, instead of im2col + SGEMM.

Each SIMD level has tile-shape variants that give bit-identical results; with
``kernel='auto'`` the plan times them and keeps the fastest.
"""
from typing import NamedTuple

import numpy as np

from .._ext import _conv
from .._memory import aligned_empty
from .._timing import time_call
from .base import NO_BUFFER, Kernel, packed_scratch, scratch, timing_input


class PointwisePlan(NamedTuple):
    """The pointwise kernel's plan: the variant (index into ``_conv.pointwise_variants``), its
    packed weights, chunks of output-channel blocks per tile, whether the input is packed
    (``packed`` floats, readable to ``readable``; else read in place), the short-image scratch
    shape, the per-thread strip scratch shape (``strips``, rows of whole 64-byte lines) and
    the compiled kernel (``call``)."""

    variant: int
    wpack: np.ndarray
    n_bchunks: int
    pack: bool
    packed: int
    readable: int
    small: tuple
    strips: tuple
    call: _conv.PointwiseConv


def variant_plan(op, geo, threads, level, v, dense):
    """The plan of variant ``v`` on the (O, K) weights ``dense``: weights packed (O/MR, K, MR),
    the last block padded with zero rows."""
    O, K = op.weight_shape[:2]
    mr, T = _conv.pointwise_variants(level)[v]
    n_blk = -(-O // mr)
    wpack = np.zeros((n_blk * mr, K), np.float32)
    wpack[:O] = dense
    wpack = np.ascontiguousarray(wpack.reshape(n_blk, mr, K).transpose(0, 2, 1))
    n_tiles = -(-geo.L // T)
    # enough items for the threads: chunks of output-channel blocks when tiles are few
    n_bchunks = 1 if n_tiles >= 4 * threads else min(n_blk, -(-4 * threads // n_tiles))
    pack = not geo.in_place
    call = _conv.PointwiseConv(wpack, op.bias, geo.packing(), pack, n_bchunks, op.act_code,
                               level, v, threads)
    return PointwisePlan(v, wpack, n_bchunks, pack, geo.packed, geo.max_tap + geo.L,
                         ((K + O) * T,), (threads, -(-K * T // 16) * 16), call)


class PointwiseConv(Kernel):
    """Register-blocked GEMM of 1x1 ungrouped layers."""

    name = "dense"

    @staticmethod
    def adds_residual(plan):
        return True

    @staticmethod
    def ineligibility(layer):
        if tuple(layer.weight_shape[2:]) != (1, 1) or layer.groups != 1:
            return (f"the pointwise kernel needs a 1x1 kernel and groups=1, got "
                    f"{tuple(layer.weight_shape[2:])} and groups={layer.groups}")
        return None

    @staticmethod
    def plan(op, geo, threads, level):
        """With ``op.kernel == 'auto'`` every variant is timed on the input shape and the
        fastest kept (they give bit-identical results); otherwise the first."""
        dense = op.dense  # transient for sparse-held weights: the packed copy replaces it
        n_variants = len(_conv.pointwise_variants(level))
        if op.kernel != "auto" or n_variants == 1:
            return variant_plan(op, geo, threads, level, 0, dense)
        x = timing_input((geo.batch,) + geo.input_shape)
        out = aligned_empty((geo.batch, op.weight_shape[0], geo.H_out, geo.W_out))
        best, best_t = None, np.inf
        for v in range(n_variants):
            plan = variant_plan(op, geo, threads, level, v, dense)
            t = time_call(lambda: PointwiseConv.run(x, plan, out), repeats=2)
            if t < best_t:
                best, best_t = plan, t
        return best

    @staticmethod
    def run(x, plan, out, residual=None, res_act=0):
        plan.call(x, packed_scratch(plan.packed, plan.readable) if plan.pack else NO_BUFFER,
                  scratch("small", plan.small), scratch("pw_strips", plan.strips), out,
                  residual, res_act)
