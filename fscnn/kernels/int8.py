"""Sparse INT8 convolution and linear layer (include/spconv_int8.h): the kernels of the
quantized operators (:class:`fscnn.ops.QuantizedConv2dOp`, :class:`fscnn.ops.QuantizedLinearOp`).

The int8 weights are stored as pairs of two consecutive input channels at one tap (a pair is
kept when either weight is non-zero), the input is quantized to int8/uint8 while it is packed
as int16 pairs of the same channels, and the sums are exact int32 (vpmaddwd on AVX2). A
layer whose input is unsigned may take quads of four channels instead (uint8 input, vpdpbusd
with AVX512-VNNI; :func:`channel_group`). The
epilogue dequantizes (one fused multiply-add with the channel's scale and bias) and applies
the activation, so a quantized layer takes and returns float32 and its integer results are
the same at every SIMD level and thread count.
"""
from typing import NamedTuple

import numpy as np

from .._ext import _int8
from .._ext._runtime import SIMD_NAMES
from .base import Kernel, check_offsets_fit, packed_scratch, scratch, tap_positions
from .sparse_conv import balanced_blocks

NARROW_WASTE = 1.25  # the narrow tile when full tiles compute this many times more positions
WIDE_MAX = 4  # the wide tile when it needs fewer tiles than the full one, up to this many
PLANE_ALIGN = 16  # int32 pairs per packed plane, a multiple of
QUAD_COST_WITHOUT_VNNI = 2.0  # a quad's work against a pair's without VNNI (channel_group)
# A work item is a group of consecutive tiles (channel by channel, spconv_int8_impl.h) whose
# input window (every pair plane) fits in this many bytes (L2), up to _int8.GROUP_MAX tiles.
GROUP_WINDOW_BYTES = 512 * 1024


def _tile_vectors(L):
    """The tile (its vectors, a value of _int8.TILE_VECTORS) for an output of L flat
    positions: the wide one where it takes fewer tiles than the full one, up to WIDE_MAX of
    them (the 7x7 planes of a last stage: 1 tile of 64 against 2 of 48), the narrow one where
    full tiles would compute NARROW_WASTE times more positions (a linear layer's small batch),
    else the full one. The wide tile against the full one on ResNet-50's layers at 90%, one
    thread, Zen 4: 512ch 3x3 at 7x7 x2.08 (it ran narrow tiles), 1x1 at 7x7 x1.35-1.37, 3x3
    at 14x14 x1.09, 1x1 at 14x14 x0.97."""
    nv = _int8.TILE_VECTORS
    full, narrow, wide = (_int8.tile_size(nv[k]) for k in ("full", "narrow", "wide"))
    n_wide = -(-L // wide)
    if n_wide < -(-L // full) and n_wide <= WIDE_MAX:
        return nv["wide"]
    if -(-L // full) * full > NARROW_WASTE * (-(-L // narrow) * narrow):
        return nv["narrow"]
    return nv["full"]


def _blocks(ptr, n_groups, threads, O):
    """Output-channel blocks: one when groups of tiles alone give every thread enough work
    items."""
    n_blocks = 1 if n_groups >= 8 * threads else min(O, -(-8 * threads // max(n_groups, 1)))
    return balanced_blocks(ptr, n_blocks)


def _channel_groups(weights, G):
    """``weights`` (O, C, ...) as (O, ceil(C/G), G, taps), the input channels past C zero
    (int64, or bool for a bool array)."""
    O, C = weights.shape[:2]
    dtype = bool if weights.dtype == bool else np.int64
    w = np.zeros((O, -(-C // G) * G) + weights.shape[2:], dtype)
    w[:, :C] = weights
    return w.reshape((O, -1, G, int(np.prod(weights.shape[2:], dtype=np.int64))))


def weight_groups(qweight, G=2):
    """The non-zero groups of ``G`` consecutive input channels at one tap of int8 weights
    ``qweight`` (O, C, ...) (C input channels, taps after them; a group is kept when any of
    its weights is non-zero, the channels past C are zero), in (output channel, group, tap)
    order: (output channel of each group, index of its (group, tap) in group 0's
    (ceil(C/G), taps) grid, the int32 of its weights, row pointers (O+1,)). G = 2: two int16
    halves (channel 2p low); G = 4: four bytes (channel 4q in the low byte)."""
    O = qweight.shape[0]
    w = _channel_groups(qweight, G)
    nz = (w != 0).any(axis=2)
    o, p, t = np.nonzero(nz)
    bits = 32 // G
    packed = np.zeros(o.size, np.int64)
    for c in range(G):
        packed |= (w[:, :, c][nz] & ((1 << bits) - 1)) << (bits * c)
    ptr = np.zeros(O + 1, np.int64)
    np.cumsum(np.bincount(o, minlength=O), out=ptr[1:])
    return (o.astype(np.int64), p * w.shape[-1] + t,
            np.ascontiguousarray(packed.astype(np.uint32).view(np.int32)), ptr)


def _group_count(qweight, G):
    """How many groups of ``G`` consecutive input channels at one tap hold a non-zero."""
    return int(_channel_groups(qweight != 0, G).any(axis=2).sum())


def channel_group(op, level):
    """2 (pairs) or 4 (quads; an unsigned input only): the grouping of input channels with
    the less work at SIMD ``level``. A quad costs one vpdpbusd with AVX512-VNNI, as a pair
    costs one vpdpwssd, and twice a pair's work without it (spconv_int8.h): quads are taken
    where their count times that cost is below the pairs' count. At 90% unstructured there
    are ~0.9 quads per pair; pruned in 1x4 blocks along the input channels, 0.5."""
    if not op.input_unsigned:
        return 2
    pairs, quads = op.derived(Int8SparseConv.name, "counts",
                              lambda: tuple(_group_count(op.qweight, G) for G in (2, 4)))
    vnni = level >= SIMD_NAMES.index("avx512") and _int8.vnni()
    return 4 if quads * (1 if vnni else QUAD_COST_WITHOUT_VNNI) < pairs else 2


def _quant_args(op):
    """(1 / input scale as float32, lo, hi) of the operator's input quantization."""
    lo, hi = op.input_range
    return np.float32(1.0 / np.float64(op.input_scale)), lo, hi


class Int8ConvPlan(NamedTuple):
    """The INT8 convolution's plan for one input shape: ``packed`` int32 pairs per image,
    readable to ``readable`` (the zeroed tail), and the compiled kernel (``call``)."""

    packed: int
    readable: int
    call: _int8.Int8Conv
    flat: bool = False  # output rows without padding columns (Wq == W_out): whole-tile runs


class Int8SparseConv(Kernel):
    """Sparse INT8 convolution: any geometry (stride, padding, dilation, groups)."""

    name = "int8"

    @staticmethod
    def plan(op, geo, threads, level, G=None):
        """``G``: the input channels per non-zero, 2 or 4 (:func:`channel_group` by
        default)."""
        O, Cg, KH, KW = op.weight_shape
        G = channel_group(op, level) if G is None else G
        Pg = -(-Cg // G)
        rows, taps, pairs, ptr = op.derived(Int8SparseConv.name, G,
                                            lambda: weight_groups(op.qweight, G))
        # planes padded to whole 64-byte lines: with the 64-byte aligned buffer, every load of
        # a tap at offset 0 (all of a 1x1 layer's) is aligned (tiles start at multiples of 16)
        pk = geo.packing(plane=-(-geo.Hq * geo.Wq // PLANE_ALIGN) * PLANE_ALIGN)
        phases = 1 if geo.one_phase else geo.stride[0] * geo.stride[1]
        tap_pos = tap_positions(Pg, KH, KW, op.dilation, geo.stride, geo.one_phase, pk.plane,
                                geo.Wq)
        group_stride = Pg * phases * pk.plane
        pos = tap_pos[taps] + (rows // (O // op.groups)) * group_stride
        packed = op.groups * group_stride
        nv = _tile_vectors(geo.L)
        T = _int8.tile_size(nv)
        n_tiles = -(-geo.L // T)
        check_offsets_fit(op.name, geo.input_shape, packed, n_tiles * T)
        reach = int((tap_pos % pk.plane).max()) if tap_pos.size else 0
        planes = op.groups * Pg * phases
        group = int(np.clip((GROUP_WINDOW_BYTES // (4 * planes) - reach) // T, 1,
                            min(_int8.GROUP_MAX, n_tiles)))
        # within a channel, pairs in input order: its tile's reads walk the input forward
        order = np.lexsort((pos, rows))
        readable = (int(pos.max()) if pos.size else 0) + n_tiles * T
        call = _int8.Int8Conv(ptr, pos[order].astype(np.int32), pairs[order], op.scale,
                              op.bias, _blocks(ptr, -(-n_tiles // group), threads, O), pk,
                              Cg, Pg, *_quant_args(op), op.act_code, level, nv, threads,
                              group, G)
        return Int8ConvPlan(packed, readable, call, geo.Wq == geo.W_out)

    @staticmethod
    def adds_residual(plan):
        """Where the output rows have no padding columns (1x1 layers, ResNet-50's last of a
        block): a tile's outputs are then one stretch of the output, added to in registers
        by the AVX-512 epilogue (residual activation none, relu or relu6) or in one pass
        while in L1 otherwise (ResNet-50's 1x1 layers at 90% in 1x4 blocks: x1.00-1.09
        against the separate add for the pass, x1.04-1.33 more in registers). A padded
        layer's tiles are runs of 7-28 positions (its output rows), where a pass per run
        cost more than the separate pass after the kernel."""
        return plan.flat

    @staticmethod
    def run(x, plan, out, residual=None, res_act=0):
        plan.call(x, _packed_buffer(plan.packed, plan.readable), out, residual, res_act)

    @staticmethod
    def accumulate(x, plan, raw):
        """The int32 accumulators of ``x`` into ``raw`` (N, O, H_out, W_out), before the
        epilogue: what the tests compare bit for bit."""
        plan.call.accumulate(x, _packed_buffer(plan.packed, plan.readable), raw)


def _packed_buffer(packed, readable):
    """Per-thread int32 scratch for one packed image: ``packed`` pairs, then zeros up to
    ``readable`` and more (the float kernels' packed scratch, viewed as int32: a zero float is
    a zero int32)."""
    return packed_scratch(packed, readable).view(np.int32)


class Int8LinearPlan(NamedTuple):
    """The INT8 linear kernel's plan for one batch size: the packed batch length ``plane``
    (N rounded up to a whole tile), the packed input's int32 count and the compiled kernel."""

    plane: int
    packed: int
    call: _int8.Int8Linear


class Int8SparseLinear(Kernel):
    """Sparse INT8 linear layer: the batch plays the part of the output positions."""

    name = "int8"

    @staticmethod
    def plan(op, shape, threads, level, G=None):
        """``G``: the input features per non-zero, 2 or 4 (:func:`channel_group` by
        default)."""
        O, n_in = op.weight_shape
        G = channel_group(op, level) if G is None else G
        rows, groups_j, groups, ptr = op.derived(Int8SparseLinear.name, G,
                                                 lambda: weight_groups(op.qweight, G))
        N = shape[0]
        nv = _tile_vectors(N)
        T = _int8.tile_size(nv)
        plane = max(1, -(-N // T)) * T
        packed = -(-n_in // G) * plane
        check_offsets_fit(op.name, tuple(shape), packed, plane)
        call = _int8.Int8Linear(ptr, groups_j.astype(np.int32), groups, op.scale, op.bias,
                                _blocks(ptr, plane // T, threads, O), n_in, *_quant_args(op),
                                op.act_code, level, nv, threads, G)
        return Int8LinearPlan(plane, packed, call)

    @staticmethod
    def run(x, plan, out):
        buf = scratch("int8_packed", (plan.packed,)).view(np.int32)
        wide = scratch("int8_wide", (out.shape[1], x.shape[0]))
        plan.call(x, buf, wide, out)

    @staticmethod
    def accumulate(x, plan, raw):
        """The int32 accumulators into ``raw`` (N, O), before the epilogue."""
        buf = scratch("int8_packed", (plan.packed,)).view(np.int32)
        transposed = np.empty((raw.shape[1], raw.shape[0]), np.int32)
        plan.call.accumulate(x, buf, transposed)
        raw[...] = transposed.T
