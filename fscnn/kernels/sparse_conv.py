"""Direct sparse convolution (include/spconv_impl.h): the kernels of ``kernel='sparse'`` and
of ``kernel='block_sparse'`` (the same kernel on blocks of 4 output channels).

It runs any convolution. The input is packed into phase planes whose rows (planes, for a flat
1x1 layer) start on whole vectors, so that every load is aligned; the non-zeros are grouped per
(output channel, input-channel block, residue of their column) and stored as aligned offsets.
A following 2x2 max pool is fused: bands of output rows are computed into a cache-resident
scratch and pooled there.
"""
from typing import NamedTuple, Optional

import numpy as np

from .._ext import _conv
from .._memory import is_aligned
from .base import (NO_BUFFER, Kernel, check_offsets_fit, packed_scratch, scratch,
                   tap_positions)

# Input window per tile that channel blocking keeps in cache (L1 and the nearest of L2): with
# aligned loads 64 KiB ran VGG16's 3x3 layers at 90% 1.2-1.5x faster than 32 KiB (fewer
# accumulator round trips per non-zero), 4 MiB (no blocking) 1.3x slower.
WINDOW_BYTES = 64 * 1024
# The aligned layout computes more positions (padded rows); it is used unless that is more than
# this factor over the plain layout's. Aligned loads ran the kernel 1.2-1.5x faster on VGG16's
# layers; a 7x7 output has rows of 9 floats padded to 16 (2x).
ALIGNED_WORK_LIMIT = 1.3
BAND_BYTES = 1 << 20  # scratch of one band of the fused pool (all output channels)
# Reordered copies of the values an operator keeps (per block size and residue pattern).
MAX_ORDERS = 4
# Output channels per block of the block kernel (SPCONV_B in spconv.h), and the least fraction
# of its stored weights that must be non-zero for 'auto' to time it.
BLOCK = 4
MIN_BLOCK_FILL = 0.6
# ... and the least sparsity: on dense weights the block kernel ran ResNet-shaped layers at
# x0.73-1.0 the dense kernels (1 thread, AVX2), at 50% in 4x1 blocks x1.5-2.6 (3x3 layers).
MIN_BLOCK_SPARSITY = 0.25
# A work item is a group of consecutive tiles (tiles innermost, see spconv_impl.h) whose input
# window (all channels of a channel block) fits in this many bytes (L2), up to GROUP_MAX tiles
# (SPCONV_GROUP_MAX in spconv.h). Against one tile per item, groups ran the block kernel on
# 64-channel 3x3 layers at 90% in 4x1 blocks 1.2-1.5x faster on 112x112 planes (16 tiles),
# 1.1-1.25x on 56x56, 512-channel 14x14 ones 1.1x, and the plain kernel on VGG16's 3x3
# layers at 90% unstructured x1.02-1.18 (7x7: x0.98); 256 KiB, 512 KiB and 1 MiB were within
# noise of each other (AVX2, 512 KiB L2).
GROUP_WINDOW_BYTES = 512 * 1024
GROUP_MAX = 16


class SparseLayout(NamedTuple):
    """How the sparse kernel packs an input: planes of Hq rows of Wq floats, ``plane`` floats
    apart; it computes Hc rows of Wc positions (Hc*Wc == L), Wc_len of each valid. ``VL`` is
    the alignment in floats (1: the plain layout); ``flat``: an unpadded 1x1 layer computed as
    one row per channel; ``in_place``: such a layer's input is the packed layout itself;
    ``taps``: the position of each tap of group 0, ``group_stride`` the shift between groups,
    ``packed`` the floats of one packed image."""

    VL: int
    flat: bool
    Hq: int
    Wq: int
    plane: int
    Hc: int
    Wc: int
    Wc_len: int
    in_place: bool
    taps: np.ndarray
    group_stride: int
    packed: int
    L: int


class SparsePlan(NamedTuple):
    """The sparse kernel's plan for one input shape: its layout, residues ``R``, tile size
    (``half_tile``), whether the input is packed (``pack``; else read in place when aligned),
    the floats a packed image must be readable to (``readable``), scratch shapes (``partial``
    and, with the fused pool, ``band``), the rows per band of the fused pool (0: none), the
    tiles per work item (``group``) and the compiled kernel bound to the reordered weights
    (``call``)."""

    layout: SparseLayout
    R: int
    half_tile: bool
    pack: bool
    readable: int
    partial: tuple
    band_rows: int
    band: Optional[tuple]
    group: int
    call: _conv.SparseConv


def balanced_blocks(indptr, n_blocks):
    """Split rows into ``n_blocks`` contiguous blocks of about equal non-zeros (+1 per row, so
    empty rows still spread). Returns block boundaries, int64 of length n_blocks + 1."""
    n_rows = indptr.shape[0] - 1
    work = indptr[1:] + np.arange(1, n_rows + 1)
    targets = work[-1] * np.arange(1, n_blocks) / n_blocks
    cuts = np.searchsorted(work, targets, side="left") + 1
    bounds = np.unique(np.concatenate(([0], np.clip(cuts, 0, n_rows), [n_rows])))
    return bounds.astype(np.int64)


def _layout(op, geo, VL):
    """How the sparse kernel packs the input: every row (plane, for a 1x1 layer) starts on a
    multiple of ``VL`` floats, so that with VL the vector length the kernel's loads are all
    aligned (1.75x the rate of unaligned ones, which split cache lines: see spconv_impl.h);
    VL 1 is the plain layout.

    A 3x3 layer's rows of Wq floats are padded to a whole number of vectors (the padding
    columns are computed and dropped, as the Wq - W_out columns already are). An unpadded 1x1
    layer (not pool-fused) is computed as one flat row per channel: planes of H_out*W_out
    floats rounded up to a vector, no padding columns; with stride 1 and a plane that is a
    whole number of vectors its input is read in place. Hq and Wq are the packed rows (for a
    flat layer, the output's rows, packed contiguously), Wc the row length the kernel
    computes."""
    up = lambda n: -(-n // VL) * VL
    flat = geo.one_phase and not op.pool
    if flat:
        hw = geo.H_out * geo.W_out
        Hq, Wq, plane, Hc, Wc_len = geo.H_out, geo.W_out, up(hw), 1, hw
        Wc = plane
        in_place = geo.in_place and plane == hw
    else:
        Hq, Wq, Hc, Wc_len, in_place = geo.Hq, up(geo.Wq), geo.H_out, geo.W_out, False
        plane, Wc = Hq * Wq, Wq
    _, Cg, KH, KW = op.weight_shape
    sh, sw = geo.stride
    phases = 1 if geo.one_phase else sh * sw
    taps = tap_positions(Cg, KH, KW, op.dilation, geo.stride, geo.one_phase, plane, Wq)
    return SparseLayout(VL, flat, Hq, Wq, plane, Hc, Wc, Wc_len, in_place, taps,
                        Cg * phases * plane, op.in_channels * phases * plane, Hc * Wc)


def _computed_positions(lay, level):
    """Positions the kernel computes per channel with layout ``lay``: its flat output in whole
    tiles, the better of the full and the half tile."""
    return min(-(-lay.L // t) * t for t in (_conv.tile_size(level, False),
                                            _conv.tile_size(level, True)))


def _nonzeros(op, block):
    """The stored non-zeros as (rows, tap indices, values, row pointers): the CSR form's for
    ``block`` 1; for the block kernel, blocks of ``block`` consecutive output channels at one
    tap (row ``o // block``; values of shape (blocks, block), zeros where a channel of the
    block has none at that tap)."""
    csr = op.sparse.csr
    O = op.weight_shape[0]
    rows = np.repeat(np.arange(O, dtype=np.int64), np.diff(csr.indptr))
    idx = csr.indices.astype(np.int64)
    if block == 1:
        return rows, idx, csr.data, csr.indptr
    K = int(np.prod(op.weight_shape[1:]))
    keys, where = np.unique((rows // block) * K + idx, return_inverse=True)
    values = np.zeros((keys.size, block), np.float32)
    values[where.reshape(-1), rows % block] = csr.data
    brows = keys // K
    indptr = np.searchsorted(brows, np.arange(-(-O // block) + 1), side="left")
    return brows, keys % K, values, indptr


def block_fill(op, block=4):
    """The fraction of the block kernel's stored weights that are non-zero: 1 when the
    non-zeros form whole blocks of ``block`` output channels at a tap, about
    d / (1 - (1-d)**block) at random at density d (0.29 at 90% sparsity)."""
    nnz = op.sparse.nnz
    return nnz / (block * _nonzeros(op, block)[1].size) if nnz else 1.0


def _order(op, kind, rows, idx, values, residue, n_rows, ncb, cb, R):
    """The non-zeros (or blocks; ``n_rows`` rows) stably sorted by (row, input-channel block,
    residue): (order, values in that order, segment pointers of shape (n_rows, ncb*R+1)).

    The order depends on the block size and on the residue of each tap, not on the input
    shape, so plans share their values (a plan per input shape would otherwise hold its own
    copy of the weights): the operator keeps them (``op.derived``, under the kernel's name
    ``kind``)."""
    KH, KW = op.weight_shape[2:]
    tap_residue = np.zeros(idx.max() + 1 if idx.size else 0, np.int64)
    tap_residue[idx] = residue
    key = (rows * ncb + (idx // (KH * KW)) // cb) * R + residue
    order = np.argsort(key, kind="stable")

    def build():
        ptr = np.searchsorted(key[order], np.arange(n_rows * ncb * R + 1), side="left")
        ptr = np.concatenate([ptr[:-1].reshape(n_rows, ncb * R), ptr[ncb * R::ncb * R, None]],
                             axis=1).astype(np.int64)
        return np.ascontiguousarray(values[order]).reshape(-1), np.ascontiguousarray(ptr)

    values, ptr = op.derived(kind, (cb, R, tap_residue.tobytes()), build, limit=MAX_ORDERS)
    return order, values, ptr


def _band_rows(op, geo, Wq, T):
    """Rows per band of the fused sparse conv + 2x2 pool: an even number whose bands (all
    output channels, O*rows*W_out floats) fit in ``BAND_BYTES``, chosen to compute the fewest
    positions: every band is a whole number of T-position tiles, so a band whose flat length
    is not a multiple of T computes positions twice (up to 28% more work on VGG's 28x28 layers
    with 10-row bands). Ties go to the smaller band."""
    used = 2 * (geo.H_out // 2)
    cap = max(2, BAND_BYTES // (4 * op.weight_shape[0] * geo.W_out) // 2 * 2)

    def work(rows):
        full, last = divmod(used, rows)
        return (full * -(-rows * Wq // T) + (-(-last * Wq // T) if last else 0))

    return min(range(2, min(used, cap) + 1, 2), key=lambda r: (work(r), r))


def _plan(op, geo, threads, level, block):
    """The plan of the plain (``block`` 1) or the block kernel: packed layout, the non-zeros
    (blocks) grouped per (output channel (block), input-channel block, residue), tile size and
    work split.

    A non-zero at packed position ``a + r`` (``a`` a multiple of the vector length, r the
    residue) is stored as ``a``; the kernel loads aligned vectors at ``a`` and shifts the sum
    of its residue's segment by r lanes (spconv_impl.h)."""
    O, Cg, KH, KW = op.weight_shape
    plain = _layout(op, geo, 1)
    if block > 1:
        # The block kernel loads each vector for 4 FMAs: split cache lines cost it less than
        # the residues' extra vector and shuffles, and it has no registers for them (4*NVB
        # accumulators). Aligned with residues it ran VGG-shaped 3x3 layers at 90% 0.6-0.85x
        # the plain kernel, unaligned 1.1-2x (AVX2, 4x1-block weights).
        lay = plain
    else:
        lay = _layout(op, geo, _conv.vector_len(level))
        if (_computed_positions(lay, level)
                > ALIGNED_WORK_LIMIT * _computed_positions(plain, level)):
            lay = plain  # small planes: padding the rows would more than undo aligned loads
    VL = lay.VL
    rows, idx, values, indptr = _nonzeros(op, block)
    # a block's channels are in one group (BlockSparseConv.ineligibility)
    pos = lay.taps[idx] + (rows * block // (O // op.groups)) * lay.group_stride
    check_offsets_fit(op.name, geo.input_shape, lay.packed, lay.L)
    residue = pos % VL
    R = int(residue.max()) + 1 if residue.size else 1
    # the half tile when it computes at least 3% fewer positions (past the end of the flat
    # output): a full tile streams the weights half as often, and on ResNet-50's 56x56 1x1
    # layers (3136 positions, 2% fewer with half tiles) it was 5-8% faster at 90%
    full, half_t = _conv.tile_size(level, False, block), _conv.tile_size(level, True, block)
    if block > 1:
        half = False  # the block kernel has one tile size (spconv.h)
    else:
        half = -(-lay.L // half_t) * half_t < 0.97 * (-(-lay.L // full) * full)
    T = half_t if half else full
    n_tiles = -(-lay.L // T)
    # input-channel blocks: one tile's window of a block (KH kernel rows of T + a vector of
    # floats per phase plane and channel) fits in WINDOW_BYTES
    (sh, sw), dw = geo.stride, op.dilation[1]
    window = KH * min(KW, sw) * (T + VL + (dw * (KW - 1)) // sw) * 4
    ncb = -(-Cg // max(1, WINDOW_BYTES // window))
    cb = -(-Cg // ncb)  # equal blocks: no short last block costing a pass over the partials
    # a work item is a group of tiles; threads share the groups' output blocks when there are
    # few groups (n_blocks below). Capping groups at n_tiles/(4*threads) tiles, to leave more
    # groups, ran ResNet-50 and VGG16 at 90% 2-5% slower at 2 threads, 2-15% at 1.
    group = max(1, min(GROUP_MAX, n_tiles, GROUP_WINDOW_BYTES // (cb * window)))
    n_rows = indptr.shape[0] - 1
    kind = BlockSparseConv.name if block > 1 else SparseConv.name
    order, values, ptr = _order(op, kind, rows, idx, values, residue, n_rows, ncb, cb, R)
    max_tap = int(pos.max()) if pos.size else 0
    if op.pool:
        band_rows = _band_rows(op, geo, lay.Wq, T)
        oblk = np.array([0, n_rows], np.int64)
        reach, pack, partial = lay.L + T + VL, True, (threads, n_rows * block * T * group)
        band = (threads, O * band_rows * geo.W_out)
    else:
        band_rows, band = 0, None
        n_items = -(-n_tiles // group)
        n_blocks = 1 if n_items >= 8 * threads else min(n_rows, -(-8 * threads // n_items))
        oblk = balanced_blocks(indptr, n_blocks)
        reach, pack = n_tiles * T + VL, not (lay.in_place and lay.L >= T)
        partial = (threads, int(np.diff(oblk).max()) * block * T * group)
    call = _conv.SparseConv(ptr, R, (pos - residue)[order].astype(np.int32), values, op.bias,
                            oblk, geo.packing(lay.Hq, lay.Wq, lay.plane), lay.Wc, lay.Wc_len,
                            op.act_code, level, half, threads, band_rows, O, block, group)
    return SparsePlan(lay, R, half, pack, max_tap + reach, partial, band_rows, band, group,
                      call)


class SparseConv(Kernel):
    """Direct sparse convolution: any layer, the 2x2 max pool fused."""

    name = "sparse"
    fuses_pool = True

    @staticmethod
    def adds_residual(plan):
        """A flat layer's (unpadded 1x1: ResNet-50's last convolution of a block, MobileNetV2's
        projection): its tiles are runs of whole vectors of the output, so the residual is
        loaded into registers as it is. Elsewhere each tile's output rows would have to be
        gathered from the residual, which cost more than the separate pass (a 3x3 layer at
        90% on 28x28 to 7x7 planes ran 3-8% slower fused; 1x1 layers x1.03-1.08 faster)."""
        return plan.layout.flat and not plan.band_rows

    @staticmethod
    def plan(op, geo, threads, level):
        return _plan(op, geo, threads, level, 1)

    @staticmethod
    def run(x, plan, out, residual=None, res_act=0):
        """``out``: (N, O, H_out, W_out), or the pooled output with the fused pool (then no
        ``residual``)."""
        lay = plan.layout
        if plan.band_rows:
            plan.call.conv_maxpool2(x, packed_scratch(lay.packed, plan.readable),
                                    scratch("partial", plan.partial),
                                    scratch("band", plan.band), out)
            return
        # an input in place must be aligned like the packed buffer (numpy's own arrays are
        # 16-byte aligned; fscnn's activations are 64): otherwise it is copied
        pack = plan.pack or not is_aligned(x, 4 * lay.VL)
        # the positions the kernel computes: one row per channel for a flat layer
        view = out.reshape(out.shape[:2] + (lay.Hc, lay.Wc_len))
        if residual is not None:
            residual = residual.reshape(view.shape)
        plan.call.conv(x, packed_scratch(lay.packed, plan.readable) if pack else NO_BUFFER,
                       scratch("partial", plan.partial), view, pack, residual, res_act)


class BlockSparseConv(SparseConv):
    """The sparse kernel on blocks of 4 consecutive output channels at one tap (4x1 blocks,
    as ``fscnn.prune(..., pattern="4x1")`` leaves them): each input vector loaded feeds the 4
    channels' FMAs (spconv_impl.h, spconv_tile_block). A block holding fewer than 4 non-zeros
    stores zeros, so on weights that do not form blocks it does up to 4x the multiply-adds."""

    name = "block_sparse"

    @staticmethod
    def ineligibility(layer):
        O, groups = layer.weight_shape[0], layer.groups
        if groups > 1 and (O // groups) % BLOCK:
            return (f"the block kernel needs output channels per group divisible by {BLOCK} "
                    f"(got {O // groups})")
        return None

    @staticmethod
    def cannot_win(op, geo):
        if op.sparsity < MIN_BLOCK_SPARSITY:
            return (f"at {op.sparsity:.0%} sparsity the dense kernels do the same "
                    f"multiply-adds from packed weights")
        fill = block_fill(op, BLOCK)
        if fill < MIN_BLOCK_FILL:
            return (f"its blocks of {BLOCK} output channels would be {fill:.0%} non-zero "
                    f"(below {MIN_BLOCK_FILL:.0%})")
        return None

    @staticmethod
    def plan(op, geo, threads, level):
        return _plan(op, geo, threads, level, BLOCK)
