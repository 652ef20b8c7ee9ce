"""Dense convolution as im2col + SGEMM over chunks of the flat output (_conv.DenseConv): the
kernel of ``kernel='dense'`` for every layer that the pointwise kernel does not run.

Each chunk's panel is a memcpy per tap from the packed image (conv_pack.h), multiplied by the
group's weights with scipy's single-threaded SGEMM, one GEMM per fscnn thread (fscnn._blas),
or, where its tiles' strips of the panel stay in L2, with the pointwise kernel's register-blocked
GEMM on weights packed once at plan time (PACKED_GEMM_STRIP_BYTES).
"""
from typing import NamedTuple

import numpy as np

from .. import _blas
from .._ext import _conv
from .base import NO_BUFFER, Kernel, packed_scratch, scratch


class DensePlan(NamedTuple):
    """The dense kernel's plan: positions per chunk, the (O, K) weights it reads, the packed
    image's size and reach (``packed`` floats, readable to ``readable``; ``pack`` false: the
    input is read in place), the panel scratch shape, the compiled kernel (``call``) and the
    weights packed for the pointwise kernel's GEMM (``wpack``, None: SGEMM). ``images`` > 1:
    a work item's panel holds that many images' positions, each image packed into a ``slot``
    of floats."""

    chunk: int
    weights: np.ndarray
    pack: bool
    packed: int
    readable: int
    panels: tuple
    call: _conv.DenseConv
    wpack: np.ndarray = None
    images: int = 1
    slot: int = 0


# Panels of K rows, K at least PACKED_GEMM_MIN_K, whose tile strip (K rows of one tile's
# positions) is at most PACKED_GEMM_STRIP_BYTES are multiplied with the pointwise kernel's
# packed weights (pointwise.h) rather than SGEMM, which packs both operands on every call.
# Against SGEMM, ungrouped 3x3 layers, one thread, relu, AVX2 (T = 16), two runs: 32->32 at
# 56x56 x1.39, 64->64 at 224x224 x1.25-1.27, at 56x56 x1.27-1.29, 128->128 at 28x28
# x1.08-1.11 (K 288-1152: strips of 18-72 KiB); 256 at 14x14 x0.91 and 512 at 7x7 x0.80
# (strips of 144-288 KiB leave L2 while each tile streams all the weights); the 3-channel stem,
# K = 27, x0.48-0.72 (a tile's fixed costs over 27 multiply-adds per output).
PACKED_GEMM_STRIP_BYTES = 96 * 1024
PACKED_GEMM_MIN_K = 256


def packed_gemm_variant(op, level, width):
    """The pointwise variant (index, (MR, T)) that the dense kernel multiplies its panels of
    ``width`` positions with, or None for SGEMM: ungrouped layers with more than one tap and
    K from PACKED_GEMM_MIN_K. A panel that one tile covers takes the narrowest such variant
    whatever K: the panel is read from cache by each block of output channels and the
    weights stream once, where SGEMM packs all of them on every call. Wider panels take the
    second narrowest variant where its tile strip (K rows of T positions) fits
    PACKED_GEMM_STRIP_BYTES (the narrowest is one vector wide, for panels of a few
    positions)."""
    K = op.size // op.weight_shape[0]
    if op.groups != 1 or K == op.weight_shape[1] or K < PACKED_GEMM_MIN_K:
        return None
    variants = sorted(enumerate(_conv.pointwise_variants(level)), key=lambda v: v[1][1])
    one_tile = [v for v in variants if width <= v[1][1]]
    if one_tile:
        return one_tile[0]
    variant = variants[1]
    return variant if K * variant[1][1] * 4 <= PACKED_GEMM_STRIP_BYTES else None


def pack_weights(dense, mr):
    """(O, K) weights packed (ceil(O/mr), K, mr), the last block padded with zero rows: the
    layout of the pointwise kernel's variants of ``mr`` output channels."""
    O, K = dense.shape
    n_blk = -(-O // mr)
    wpack = np.zeros((n_blk * mr, K), np.float32)
    wpack[:O] = dense
    return np.ascontiguousarray(wpack.reshape(n_blk, mr, K).transpose(0, 2, 1))


class DenseConv(Kernel):
    """im2col + SGEMM: any layer."""

    name = "dense"
    reads_dense = True

    @staticmethod
    def plan(op, geo, threads, level):
        """Chunks of the flat output with a (K, chunk) panel of ~1 MiB, at least 128 positions
        (every chunk streams all the weights: 4.4 ms with 32 positions, 3.9 with 64 or more on
        a 512x512 3x3 layer at 7x7, 10.8 ms with 64 and 9.4 with 224 at 14x14), and no more
        chunks than threads need. Batches of planes smaller than half a chunk put several
        images in a panel (up to the batch's share of a thread), so that the weights, which
        are what such layers spend their time reading, stream once for all of them."""
        K = op.size // op.weight_shape[0]
        full = int(np.clip((1 << 18) // K, 128, 4096)) // 16 * 16
        chunk = max(16, min(full, -(-geo.L // max(1, threads)) + 15 & ~15))
        threads = _blas.gemm_threads(threads)
        images = 1
        if geo.batch > 1 and not geo.in_place and K != op.weight_shape[1] \
                and 2 * geo.L <= full:
            images = min(full // geo.L, -(-geo.batch // threads))
            if images > 1:
                chunk = max(chunk, images * geo.L + 15 & ~15)
        weights = op.dense
        pack = not geo.in_place
        wpack, variant = None, 0
        packed = packed_gemm_variant(op, level, chunk)
        if packed is not None:
            variant, (mr, T) = packed
            chunk = max(chunk, T)
            wpack = pack_weights(weights, mr)
        call = _conv.DenseConv(weights, geo.tap_offsets.astype(np.int32), geo.group_stride,
                               op.bias, op.groups, geo.packing(), pack, chunk, op.act_code,
                               level, threads, wpack, variant)
        panels = (threads, (weights.shape[1] + op.weight_shape[0] // op.groups) * chunk)
        readable = geo.max_tap + geo.L
        slot = (max(geo.packed, readable) + 64 + 15) // 16 * 16 if images > 1 else 0
        return DensePlan(chunk, weights, pack, geo.packed, readable, panels, call, wpack,
                         images, slot)

    @staticmethod
    def run(x, plan, out):
        with _blas.single_threaded_blas():
            if plan.images > 1:
                slots = min(x.shape[0], plan.images * plan.panels[0])
                plan.call(x, scratch("packed", (slots * plan.slot,)),
                          scratch("panels", plan.panels), out, plan.images, plan.slot)
                return
            plan.call(x, packed_scratch(plan.packed, plan.readable) if plan.pack else NO_BUFFER,
                      scratch("panels", plan.panels), out)
