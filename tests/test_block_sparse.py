"""The block kernel (kernel='block_sparse': non-zeros stored in blocks of 4 output channels at
one tap, spconv_impl.h) against the float64 reference, block detection, and its place in
'auto'."""
import numpy as np
import pytest

import fscnn
from conftest import assert_close, sparse_weight
from fscnn import _config
from fscnn.kernels import BlockSparseConv
from fscnn.kernels.sparse_conv import MIN_BLOCK_FILL, block_fill
from fscnn.ops import Conv2dOp, OpError
from reference import conv2d as ref_conv2d

# (N, C, O, H, W, (KH, KW), stride, padding, dilation, groups): every geometry the sparse
# kernel treats differently, with output channels per group a multiple of 4 where grouped,
# and O not a multiple of 4 (a last block with missing channels) where not.
CASES = [
    (1, 3, 8, 9, 11, (3, 3), 1, 1, 1, 1),
    (1, 8, 10, 30, 29, (3, 3), 1, 1, 1, 1),        # a larger plane: many groups of tiles
    (2, 17, 6, 7, 7, (1, 1), 1, 0, 1, 1),          # 1x1, batch 2, odd channels, O % 4 == 2
    (1, 64, 13, 9, 9, (3, 3), 1, 1, 1, 1),         # O % 4 == 1
    (1, 300, 10, 16, 16, (3, 3), 1, 1, 1, 1),      # channel blocks in groups of tiles
    (2, 6, 8, 13, 11, (1, 1), 1, 0, 1, 2),         # unpadded 1x1 read in place, groups 2
    (1, 4, 8, 23, 12, (1, 1), 2, 0, 1, 2),         # 1x1 stride 2: phase (0, 0) packed alone
    (1, 4, 8, 13, 12, (5, 5), 2, 2, 1, 2),         # 5x5 stride 2 groups 2
    (1, 3, 7, 23, 23, (7, 7), 2, 3, 1, 1),         # ResNet stem shape, smaller
    (3, 5, 12, 10, 14, (3, 3), 3, (1, 2, 0, 1), 1, 1),  # stride 3, asymmetric padding
    (1, 4, 4, 9, 8, (2, 2), (1, 2), 0, (2, 1), 1),  # mixed stride and dilation
    (1, 17, 9, 1, 1, (1, 1), 1, 0, 1, 1),          # 1x1 spatial
    (1, 2, 4, 2, 2, (3, 3), 1, 1, 1, 1),           # input smaller than the kernel
    (1, 5, 6, 3, 40, (1, 9), 1, (0, 4), (1, 3), 1),  # wide dilated rows
]


def _case_id(case):
    n, c, o, h, w, k, s, p, d, g = case
    return f"n{n}c{c}o{o}_{h}x{w}_k{k[0]}x{k[1]}_s{s}_p{p}_d{d}_g{g}".replace(" ", "")


def block_weight(shape, sparsity, rng, block=4):
    """Weights whose non-zeros form whole blocks of ``block`` output channels at one tap (the
    last block cut short when O is not a multiple), about ``sparsity`` of them zero."""
    O = shape[0]
    rows = -(-O // block) * block
    w = sparse_weight((rows,) + shape[1:], 0.0, rng)
    keep = rng.random((rows // block, 1) + shape[1:]) >= sparsity
    return (w.reshape((rows // block, block) + shape[1:]) * keep).reshape(
        (rows,) + shape[1:])[:O].copy()


def _make(case, rng, sparsity=0.7, blocks=True):
    n, c, o, h, w, k, s, p, d, g = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    shape = (o, c // g) + k
    wt = block_weight(shape, sparsity, rng) if blocks else sparse_weight(shape, sparsity, rng)
    b = rng.standard_normal(o).astype(np.float32)
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("blocks", [True, False], ids=["blocks", "unstructured"])
def test_block_kernel_matches_reference(case, blocks, threads, rng):
    # unstructured weights: the blocks hold zeros, which must not change the result
    x, w, b, hp = _make(case, rng, blocks=blocks)
    y = Conv2dOp(w, b, kernel="block_sparse", **hp)(x)
    assert_close(y, ref_conv2d(x, w, b, **hp))


@pytest.mark.parametrize("case", CASES[:8], ids=_case_id)
@pytest.mark.parametrize("activation", ["relu", "relu6", "hardswish"])
def test_block_kernel_every_simd_level(case, activation, simd_level, rng):
    torch_free_ref = {"relu": lambda r: np.maximum(r, 0), "relu6": lambda r: np.clip(r, 0, 6),
                      "hardswish": lambda r: r * np.clip(r + 3, 0, 6) / 6}
    x, w, b, hp = _make(case, rng)
    x *= 8  # push outputs past 6 so the upper clamps are exercised
    y = Conv2dOp(w, b, activation=activation, kernel="block_sparse", **hp)(x)
    assert_close(y, torch_free_ref[activation](ref_conv2d(x, w, b, **hp)))


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
def test_block_kernel_fused_max_pool(sparsity, threads, rng):
    x, w, b, hp = _make((2, 64, 14, 17, 16, (3, 3), 1, 1, 1, 1), rng, sparsity)
    y = Conv2dOp(w, b, activation="relu", kernel="block_sparse", pool="max2x2", **hp)(x)
    ref = np.maximum(ref_conv2d(x, w, b, **hp), 0)[:, :, :16, :16]
    ref = ref.reshape(2, 14, 8, 2, 8, 2).max(axis=(3, 5))
    assert_close(y, ref)


def test_block_kernel_groups_tiles_and_channel_blocks(rng):
    # a work item is a group of tiles; with several input-channel blocks each (tile, block)
    # keeps its partial sums between them
    x, w, b, hp = _make(CASES[4], rng)
    with _config.threads(1):
        op = Conv2dOp(w, b, kernel="block_sparse", **hp)
        y = op(x)
        plan = op._plan(x.shape).plan
    assert plan.group > 1 and plan.call.channel_blocks > 1
    assert_close(y, ref_conv2d(x, w, b, **hp))


def test_block_kernel_is_bit_identical_across_threads_and_close_to_the_plain_one(rng):
    x, w, b, hp = _make((2, 40, 20, 15, 13, (3, 3), 1, 1, 1, 1), rng, 0.8)
    outs = []
    for t in (1, 2):
        with _config.threads(t):
            outs.append(Conv2dOp(w, b, kernel="block_sparse", **hp)(x))
    assert np.array_equal(outs[0], outs[1])
    assert_close(outs[0], Conv2dOp(w, b, kernel="sparse", **hp)(x))


def test_block_fill_detects_exact_nearly_and_random_blocks(rng):
    shape = (32, 16, 3, 3)
    exact = block_weight(shape, 0.9, rng)
    assert block_fill(Conv2dOp(exact)) == 1.0
    nearly = exact.copy()
    nz = np.flatnonzero(nearly)
    nearly.reshape(-1)[rng.choice(nz, nz.size // 10, replace=False)] = 0  # 10% of entries
    assert 0.85 < block_fill(Conv2dOp(nearly)) < 1.0
    # unstructured at density d: a block of 4 holds a non-zero with probability 1-(1-d)^4
    d = 0.1
    fill = block_fill(Conv2dOp(sparse_weight((256, 64, 3, 3), 1 - d, rng)))
    assert abs(fill - d / (1 - (1 - d) ** 4)) < 0.02
    assert block_fill(Conv2dOp(np.zeros(shape, np.float32))) == 1.0


def test_pruning_4x1_gives_whole_blocks(rng):
    w = sparse_weight((24, 8, 3, 3), 0.0, rng)
    pruned = fscnn.prune({"conv.weight": w}, 0.75, pattern="4x1")["conv.weight"]
    assert block_fill(Conv2dOp(pruned)) == 1.0
    assert abs(np.mean(pruned == 0) - 0.75) < 0.01


def test_auto_times_the_block_kernel_only_on_block_weights(rng):
    x = rng.standard_normal((1, 32, 10, 10)).astype(np.float32)
    blocks = block_weight((32, 32, 3, 3), 0.9, rng)
    op = Conv2dOp(blocks, padding=1, kernel="auto")
    assert_close(op(x), ref_conv2d(x, blocks, padding=1))
    assert "block_sparse" in op.plan_info(x.shape)["timings"]
    random = sparse_weight((32, 32, 3, 3), 0.9, rng)
    op = Conv2dOp(random, padding=1, kernel="auto")
    op(x)
    assert "block_sparse" not in op.plan_info(x.shape)["timings"]
    why = BlockSparseConv.cannot_win(op, op._geometry(x.shape))
    assert f"below {MIN_BLOCK_FILL:.0%}" in why
    # dense weights (whole blocks) are left to the dense kernels
    dense = sparse_weight((32, 32, 3, 3), 0.0, rng)
    op = Conv2dOp(dense, padding=1, kernel="auto")
    op(x)
    assert "block_sparse" not in op.plan_info(x.shape)["timings"]
    assert "dense kernels" in BlockSparseConv.cannot_win(op, op._geometry(x.shape))


def test_block_kernel_refuses_blocks_across_groups(rng):
    w = sparse_weight((6, 2, 3, 3), 0.5, rng)
    with pytest.raises(OpError, match="output channels per group divisible by 4 \\(got 3\\)"):
        Conv2dOp(w, groups=2, kernel="block_sparse")
    # 'auto' leaves it out there and still runs
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    op = Conv2dOp(w, groups=2, padding=1, kernel="auto")
    assert_close(op(x), ref_conv2d(x, w, groups=2, padding=1))
    assert "block_sparse" not in op.plan_info(x.shape)["timings"]
