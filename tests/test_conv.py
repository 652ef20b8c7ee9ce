"""Convolution kernels (sparse direct, dense, Winograd, depthwise) against the float64 reference
and PyTorch."""
import numpy as np
import pytest

import fscnn.functional as F
from conftest import assert_close, sparse_weight, to_torch, torch_or_skip
from fscnn import _config
from fscnn._ext import _conv
from fscnn._memory import aligned_empty
from fscnn.kernels import DenseConv, DepthwiseConv, PointwiseConv
from fscnn.kernels.pointwise_conv import variant_plan
from fscnn.ops import Conv2dOp, OpError, conv_padding
from reference import conv2d as ref_conv2d

# (N, C, O, H, W, (KH, KW), stride, padding, dilation, groups): each dimension of the operator
# appears with every value the kernels treat differently, on shapes small enough for CI.
CASES = [
    (1, 3, 8, 9, 11, (3, 3), 1, 1, 1, 1),
    (3, 17, 5, 7, 7, (1, 1), 1, 0, 1, 1),          # 1x1, batch 3, odd channels
    (1, 64, 16, 9, 9, (3, 3), 1, 1, 1, 1),         # several channel blocks
    (2, 6, 4, 13, 11, (1, 1), 1, 0, 1, 2),         # unpadded 1x1 read in place, last tile moved back
    (1, 200, 3, 24, 9, (1, 1), 1, 0, 1, 1),        # ... with several channel blocks
    (1, 4, 6, 23, 12, (1, 1), 2, 0, 1, 2),         # 1x1 stride 2: phase (0, 0) packed alone
    (1, 4, 6, 13, 12, (5, 5), 2, 2, 1, 2),         # 5x5 stride 2 groups 2
    (1, 3, 4, 23, 23, (7, 7), 2, 3, 1, 1),         # ResNet stem shape, smaller
    (1, 8, 8, 10, 9, (1, 3), 1, (0, 1), 1, 1),     # non-square kernel
    (1, 6, 6, 11, 11, (3, 3), 1, 2, 2, 6),         # depthwise, dilation 2
    (3, 5, 7, 10, 14, (3, 3), 3, (1, 2, 0, 1), 1, 1),  # stride 3, asymmetric padding
    (1, 17, 9, 1, 1, (1, 1), 1, 0, 1, 1),          # 1x1 spatial
    (1, 1, 3, 3, 3, (3, 3), 1, 0, 1, 1),           # single channel, output 1x1
    (1, 2, 4, 2, 2, (3, 3), 1, 1, 1, 2),           # input smaller than the kernel
    (1, 8, 16, 15, 15, (3, 3), 2, 1, 1, 8),        # depthwise multiplier 2, stride 2
    (1, 4, 4, 9, 8, (2, 2), (1, 2), 0, (2, 1), 1),  # mixed stride and dilation
    (1, 64, 8, 5, 5, (3, 3), 1, 1, 1, 1),          # many channels, tile bigger than output
    (1, 5, 4, 6, 7, (3, 1), 1, (1, 0), 1, 1),      # rows padded only: block-copy packing
    (1, 5, 6, 3, 40, (1, 9), 1, (0, 4), (1, 3), 1),  # taps 0..24 columns apart: every residue
    (2, 5, 6, 4, 41, (1, 9), (1, 2), (0, 4), (1, 3), 1),  # ... and with stride 2 phases
]
SPARSITIES = (0.0, 0.5, 0.9, 0.99, 1.0)


def _act_ref(ref, activation):
    """``ref`` after the fused activation (None, 'relu' or 'relu6')."""
    if activation:
        ref = np.maximum(ref, 0)
    if activation == "relu6":
        ref = np.minimum(ref, 6)
    return ref


def _case_id(case):
    n, c, o, h, w, k, s, p, d, g = case
    return f"n{n}c{c}o{o}_{h}x{w}_k{k[0]}x{k[1]}_s{s}_p{p}_d{d}_g{g}".replace(" ", "")


def _make(case, sparsity, rng):
    n, c, o, h, w, k, s, p, d, g = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = sparse_weight((o, c // g) + k, sparsity, rng)
    b = rng.standard_normal(o).astype(np.float32)
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_conv_matches_reference(case, sparsity, kernel, threads, rng):
    x, w, b, hp = _make(case, sparsity, rng)
    y = Conv2dOp(w, b, kernel=kernel, **hp)(x)
    assert_close(y, ref_conv2d(x, w, b, **hp))


@pytest.mark.parametrize("shape, hp", [
    ((1, 32, 8, 3, 3), dict(padding=1)),                     # fewer positions than a tile
    ((2, 40, 13, 9, 7), dict(padding=(1, 0, 2, 1))),         # O not a multiple of MR
    ((1, 30, 70, 31, 33), dict(stride=2, padding=1)),       # phases, a partial last tile
    ((1, 33, 9, 40, 45), dict(dilation=2, padding=2)),      # several chunks at 2 threads
])
def test_dense_packed_gemm_matches_reference(shape, hp, simd_level, threads, rng):
    """The dense kernel's panels multiplied by the pointwise kernel on weights packed at plan
    time (dense_conv.PACKED_GEMM_STRIP_BYTES), with bias and activation."""
    from fscnn.kernels import dense_conv
    N, C, O, H, W = shape
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    op = Conv2dOp(w, b, kernel="dense", activation="relu6", **hp)
    assert dense_conv.packed_gemm_variant(op, _config.simd_level_index(), 10**6) is not None
    assert op._plan(x.shape).plan.wpack is not None
    assert_close(op(x), _act_ref(ref_conv2d(x, w, b, **hp), "relu6"))
    small = Conv2dOp(w[:, :2], b, kernel="dense", **hp)  # K = 18: SGEMM
    assert small._plan((N, 2, H, W)).plan.wpack is None
    assert_close(small(x[:, :2]), ref_conv2d(x[:, :2], w[:, :2], b, **hp))


@pytest.mark.parametrize("N, H, width", [(2, 2, 16), (1, 5, 48), (1, 30, 128)])
def test_dense_panel_of_one_tile_takes_packed_weights_whatever_k(N, H, width, simd_level,
                                                                rng):
    """At a K whose tile strips exceed PACKED_GEMM_STRIP_BYTES at every SIMD level, the dense
    kernel takes the packed-weight GEMM only for a panel (of ``width`` positions: two images
    of 2x2 planes, 5x7 positions, 30 rows) that one tile of some variant covers, with the
    narrowest such variant; wider panels stay with SGEMM."""
    from fscnn.kernels import dense_conv
    C, O = 400, 20  # K = 3600: 115 KiB in the baseline 6x2 tile's strip of 8 positions
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = rng.standard_normal((O, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    op = Conv2dOp(w, b, kernel="dense", activation="relu", padding=1)
    with _config.threads(1):  # on more, each thread's panel is narrower
        plan = op._plan(x.shape).plan
        assert_close(op(x), _act_ref(ref_conv2d(x, w, b, padding=1), "relu"))
    level = _config.simd_level_index()
    covering = [(mr, t) for mr, t in _conv.pointwise_variants(level) if t >= width]
    assert dense_conv.packed_gemm_variant(op, level, width) == (
        (_conv.pointwise_variants(level).index(min(covering, key=lambda v: v[1])),
         min(covering, key=lambda v: v[1])) if covering else None)
    if covering:
        mr = min(covering, key=lambda v: v[1])[0]
        assert plan.wpack is not None and plan.wpack.shape == (-(-O // mr), 9 * C, mr)
    else:
        assert plan.wpack is None


@pytest.mark.parametrize("shape, hp", [
    ((3, 32, 24, 5, 5), dict(padding=1)),                     # K 288: the pointwise GEMM
    ((5, 8, 10, 6, 7), dict(stride=2, padding=1)),            # SGEMM, two-phase packing
    ((4, 12, 12, 6, 6), dict(groups=3, dilation=2, padding=2)),
    ((2, 64, 16, 2, 2), dict(padding=1)),                     # 2x2 planes (ResNet at 64x64)
    ((7, 16, 8, 3, 4), dict(padding=(0, 1, 2, 0))),           # a partial last work item
])
def test_dense_batches_several_images_per_panel(shape, hp, simd_level, threads, rng):
    """Small planes put several images' positions in one panel so that the weights stream
    once for all of them (DensePlan.images): each image lands in its own output, whatever
    the batch, the thread count and the GEMM."""
    N, C, O, H, W = shape
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // hp.get("groups", 1), 3, 3)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    op = Conv2dOp(w, b, kernel="dense", activation="relu", **hp)
    plan = op._plan(x.shape).plan
    assert plan.images == min(N, -(-N // _config.get_num_threads()))
    assert_close(op(x), _act_ref(ref_conv2d(x, w, b, **hp), "relu"))
    assert op._plan(x[:1].shape).plan.images == 1
    assert_close(op(x[1:2]), _act_ref(ref_conv2d(x[1:2], w, b, **hp), "relu"))


@pytest.mark.parametrize("kernel", ["sparse", "depthwise"])
def test_stride2_packing_at_every_row_edge(kernel, rng):
    """Stride-2 packing splits each input row into its even and odd columns in one pass
    (conv_pack_pair_s2), zeroing the padding columns at both ends itself: every width, left
    and right padding and kernel width, so that those ranges are empty, meet or overlap;
    planes up to 32x32 are zeroed whole first (CONV_PACK_ZERO_FIRST), wider ones by row."""
    for W in list(range(1, 12)) + [2101, 2102]:
        for left in range(4):
            for right in range(3):
                for kw in (1, 2, 3, 4):
                    if W + left + right < kw:
                        continue
                    x = rng.standard_normal((1, 2, 3, W)).astype(np.float32)
                    w = rng.standard_normal((2, 1 if kernel == "depthwise" else 2, 1, kw))
                    w = w.astype(np.float32)
                    hp = dict(stride=(1, 2), padding=(1, 0, left, right),
                              groups=2 if kernel == "depthwise" else 1)
                    y = Conv2dOp(w, None, kernel=kernel, **hp)(x)
                    assert_close(y, ref_conv2d(x, w, None, **hp))


@pytest.mark.parametrize("case", CASES[:8], ids=_case_id)
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_conv_every_simd_level(case, kernel, activation, simd_level, rng):
    x, w, b, hp = _make(case, 0.5, rng)
    x *= 8  # push outputs past 6 so relu6's upper clamp is exercised
    y = Conv2dOp(w, b, activation=activation, kernel=kernel, **hp)(x)
    assert_close(y, _act_ref(ref_conv2d(x, w, b, **hp), activation))


@pytest.mark.parametrize("case", CASES[-2:], ids=_case_id)
def test_sparse_residues_every_simd_level(case, simd_level, rng):
    # taps whose columns are not a whole number of vectors apart are summed per residue and
    # shifted into place (spconv_impl.h); these wide dilated rows reach every residue
    x, w, b, hp = _make(case, 0.5, rng)
    op = Conv2dOp(w, b, kernel="sparse", **hp)
    s = hp["stride"] if isinstance(hp["stride"], tuple) else (hp["stride"],) * 2
    last_column = hp["dilation"][1] * (w.shape[3] - 1) // s[1]  # of a tap in its phase plane
    VL = _conv.vector_len(_config.simd_level_index())
    assert op._plan(x.shape).plan.R == min(VL, last_column + 1)
    assert_close(op(x), ref_conv2d(x, w, b, **hp))


def _misaligned_copy(x, floats=1):
    """A copy of ``x`` that starts ``floats`` floats past a 64-byte boundary."""
    raw = aligned_empty((x.size + 16,))
    y = raw[floats:floats + x.size].reshape(x.shape)
    y[...] = x
    return y


@pytest.mark.parametrize("shape", [(2, 6, 4, 12, 12, 2), (1, 200, 3, 16, 9, 1), (1, 8, 5, 4, 4, 1)],
                         ids=["moved_back_tile", "channel_blocks", "shorter_than_a_tile"])
def test_sparse_1x1_reads_an_aligned_input_in_place(shape, simd_level, threads, rng):
    # planes of a whole number of vectors are read in place when the input is 64-byte aligned
    # (fscnn's activations are), and copied first otherwise; both give the same bits
    n, c, o, h, w_, g = shape
    w = sparse_weight((o, c // g, 1, 1), 0.5, rng)
    b = rng.standard_normal(o).astype(np.float32)
    x = aligned_empty((n, c, h, w_))
    x[...] = rng.standard_normal(x.shape)
    op = Conv2dOp(w, b, groups=g, kernel="sparse")
    y = op(x)
    sp = op._plan(x.shape).plan
    assert sp.layout.in_place and sp.R == 1
    assert sp.pack == (h * w_ < _conv.tile_size(_config.simd_level_index(), sp.half_tile))
    assert_close(y, ref_conv2d(x, w, b, groups=g))
    for floats in (1, 4):
        assert np.array_equal(op(_misaligned_copy(x, floats)), y)


def test_results_do_not_depend_on_threads_or_simd_beyond_rounding(rng):
    x, w, b, hp = _make(CASES[2], 0.9, rng)
    outs = []
    for level in _config.SIMD_LEVELS[:_config.SIMD_LEVELS.index(_config.cpu_simd_level()) + 1]:
        for t in (1, 2):
            with _config.simd(level), _config.threads(t):
                outs.append(Conv2dOp(w, b, kernel="sparse", **hp)(x))
    for o in outs[1:]:
        assert_close(o, outs[0])
    # same SIMD level: bit-identical whatever the thread count
    with _config.threads(1):
        one = Conv2dOp(w, b, kernel="sparse", **hp)(x)
    with _config.threads(2):
        two = Conv2dOp(w, b, kernel="sparse", **hp)(x)
    assert np.array_equal(one, two)


# Flat outputs whose last tile is moved back at every SIMD level (148 positions, 160 or 152 in
# the sparse kernel's aligned layouts; 49 in the pointwise kernel's), and a 3x3 layer whose
# padded rows (16 floats at the baseline) make 160 positions.
# Enough input channels that each work item takes a while: the second thread then runs some.
OVERLAP_CASES = [("sparse", (8, 256, 1, 1), {}, (1, 256, 4, 37)),
                 ("sparse", (16, 64, 3, 3), {"padding": 1}, (1, 64, 10, 11)),
                 ("dense", (64, 256, 1, 1), {}, (1, 256, 7, 7))]


@pytest.mark.parametrize("kernel, shape, hp, x_shape", OVERLAP_CASES,
                         ids=["sparse_1x1", "sparse_3x3", "pointwise"])
def test_threads_write_disjoint_outputs(kernel, shape, hp, x_shape, rng):
    # A moved-back last tile stores only the positions the tile before it did not: both are
    # work items that two threads may run at once. Writing the same values twice would give
    # the same result, so this test is for a race detector: CI runs it under ThreadSanitizer
    # at the baseline SIMD level (.ci/run), whose 16-byte stores it instruments; the repeated
    # calls let the two tiles run on different threads.
    w = sparse_weight(shape, 0.3, rng)
    x = aligned_empty(x_shape)
    x[...] = rng.standard_normal(x_shape)
    with _config.threads(2):
        op = Conv2dOp(w, kernel=kernel, **hp)
        first = op(x)
        for _ in range(100):
            assert np.array_equal(op(x), first)
    assert_close(first, ref_conv2d(x, w, **hp))


def _torch_conv2d(x, w, b, hp):
    """torch.nn.functional.conv2d with fscnn's hyper-parameters (a 4-tuple padding applied
    with F.pad, as torch's conv2d takes symmetric padding only)."""
    torch = torch_or_skip()
    p = hp["padding"]
    xt = to_torch(x)
    if isinstance(p, tuple) and len(p) == 4:
        xt = torch.nn.functional.pad(xt, (p[2], p[3], p[0], p[1]))
        p = 0
    return torch.nn.functional.conv2d(xt, to_torch(w), to_torch(b), hp["stride"], p,
                                      hp["dilation"], hp["groups"]).numpy()


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_conv_matches_torch(case, rng):
    x, w, b, hp = _make(case, 0.9, rng)
    ref = _torch_conv2d(x, w, b, hp)
    for kernel in ("sparse", "dense"):
        assert_close(Conv2dOp(w, b, kernel=kernel, **hp)(x), ref, rtol=1e-4)


def test_auto_picks_a_kernel_and_matches(rng):
    x, w, b, hp = _make(CASES[2], 0.9, rng)
    op = Conv2dOp(w, b, kernel="auto", **hp)
    with _config.threads(1):  # one thread: no second choice (threads), the fastest kernel runs
        y = op(x)
        info = op.plan_info(x.shape)
    assert set(info["timings"]) == {"sparse", "dense", "winograd"}  # a 3x3 stride-1 layer
    assert info["kernel"] == min(info["timings"], key=info["timings"].get)  # the fastest
    # the Winograd kernel may win: its float32 error budget (see WINO_RTOL below)
    assert_close(y, ref_conv2d(x, w, b, **hp), rtol=1e-4 if info["kernel"] == "winograd" else None)


def test_functional_conv2d_same_padding_and_dtypes(rng):
    x = rng.standard_normal((2, 4, 8, 7))
    w = sparse_weight((6, 4, 4, 3), 0.5, rng)
    y = F.conv2d(x, w, padding="same")
    assert y.shape == (2, 6, 8, 7) and y.dtype == np.float32
    # torch's 'same' puts the odd extra padding at the bottom/right
    assert_close(y, ref_conv2d(x, w, padding=(1, 2, 1, 1)))
    xv = np.asfortranarray(x.astype(np.float16))
    xv.setflags(write=False)
    assert_close(F.conv2d(xv, w, padding="valid"), ref_conv2d(xv.astype(np.float64), w), rtol=1e-4)


def test_empty_batch(rng):
    w = sparse_weight((3, 2, 3, 3), 0.5, rng)
    y = Conv2dOp(w, padding=1)(np.zeros((0, 2, 5, 5), np.float32))
    assert y.shape == (0, 3, 5, 5)


def test_nan_and_inf_propagate(rng):
    torch = torch_or_skip()
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[0, 2, 4, 4] = np.inf
    w = sparse_weight((4, 3, 3, 3), 0.0, rng)
    ref = torch.nn.functional.conv2d(to_torch(x), to_torch(w), padding=1).numpy()
    for kernel in ("sparse", "dense"):
        y = Conv2dOp(w, padding=1, kernel=kernel)(x)
        assert np.array_equal(np.isnan(y), np.isnan(ref))
        finite = np.isfinite(ref)
        assert_close(y[finite], ref[finite], rtol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(stride=0), "stride must be positive"),
    (dict(dilation=-1), "dilation must be positive"),
    (dict(padding=-1), "padding must be non-negative"),
    (dict(padding="full"), "padding must be"),
    (dict(groups=3), "groups=3 must divide"),
    (dict(groups=0), "groups must be a positive int"),
    (dict(activation="gelu"), "activation must be"),
    (dict(kernel="fast"), "kernel must be one of"),
])
def test_bad_hyper_parameters_raise(kwargs, message, rng):
    w = sparse_weight((4, 2, 3, 3), 0.5, rng)
    with pytest.raises(ValueError, match=message):
        Conv2dOp(w, **kwargs)


@pytest.mark.parametrize("x, error, message", [
    (np.zeros((1, 3, 8, 8), np.float32), ValueError, "expected 2 input channels, got 3"),
    (np.zeros((2, 8, 8), np.float32), ValueError, "expected a 4-D input"),
    (np.zeros((1, 2, 1, 1), np.float32), ValueError, "smaller than the dilated kernel"),
    (np.zeros((1, 2, 8, 8), np.int32), TypeError, "expected a float array"),
    (np.zeros((1, 2, 8, 8), np.complex64), TypeError, "expected a float array"),
    (np.zeros((1, 2, 8, 8), bool), TypeError, "expected a float array"),
])
def test_bad_inputs_raise_naming_the_layer(x, error, message, rng):
    op = Conv2dOp(sparse_weight((4, 2, 3, 3), 0.5, rng), name="features.0")
    with pytest.raises(error, match=message) as info:
        op(x)
    assert "features.0" in str(info.value)


def test_huge_geometry_refused_before_the_kernel():
    op = Conv2dOp(np.ones((1, 1, 1, 1), np.float32))
    with pytest.raises(OpError, match="too large for 32-bit"):
        op.output_shape((1, 1, 50000, 50000))


def test_bad_weight_and_bias_shapes(rng):
    with pytest.raises(ValueError, match="weight must be 4-D"):
        Conv2dOp(np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"bias: expected an array of shape \(4,\)"):
        Conv2dOp(sparse_weight((4, 2, 3, 3), 0.5, rng), bias=np.ones(3))


def test_cases_exercise_full_and_half_tiles_and_both_layouts(simd_level):
    # the planner picks the half tile for short flat outputs, and the plain layout (rows not
    # padded to whole vectors) for small planes; every path must be under test
    halves, aligned = set(), set()
    for case in CASES:
        n, c, o, h, w, k, s, p, d, g = case
        op = Conv2dOp(np.ones((o, c // g) + k, np.float32), stride=s, padding=p, dilation=d,
                      groups=g, kernel="sparse")
        sp = op._plan((n, c, h, w)).plan
        halves.add(sp.half_tile)
        aligned.add(sp.layout.VL > 1)
    assert halves == {True, False}
    assert aligned == {True, False}


# -- Winograd F(4x4, 3x3) ----------------------------------------------------------------------
# Its float32 rounding error is larger than a direct sum's (the transforms scale terms by up to
# 4 and 1/8 before they cancel): measured ~1e-5 of max|ref| on 512-channel layers. The tests
# use the accuracy budget, norm-wise 1e-4 of max|ref|, instead of TOL's 1e-5.
WINO_RTOL = 1e-4
WINO_SIZES = [(1, 1), (2, 3), (5, 5), (7, 9), (16, 16), (23, 17)]
WINO_PADDINGS = [0, 1, (1, 0, 2, 1), "same", 2]
WINO_CASES = []
for _i, ((_h, _w), _p) in enumerate((s, p) for s in WINO_SIZES for p in WINO_PADDINGS):
    _pt, _pb, _pl, _pr = conv_padding(_p, (3, 3), (1, 1))
    if min(_h + _pt + _pb, _w + _pl + _pr) < 3:
        continue  # no output: refused like every kernel (test_bad_inputs_raise_naming_the_layer)
    # (N, C, O, H, W, padding, bias, activation): channels, bias, activation and batch cycle
    # through their values so that each meets every size and padding kind somewhere
    WINO_CASES.append((1 + 2 * (_i % 5 == 2), (1, 3, 17, 64)[_i % 4], (1, 5, 16)[_i % 3], _h, _w,
                       _p, _i % 2 == 0, (None, "relu", "relu6")[(_i // 2) % 3]))


def _wino_id(case):
    n, c, o, h, w, p, bias, act = case
    return f"n{n}c{c}o{o}_{h}x{w}_p{p}_{'b' if bias else 'nob'}_{act}".replace(" ", "")


def _wino_ref(x, w, b, padding, act):
    return _act_ref(ref_conv2d(x, w, b, padding=padding), act)


@pytest.mark.parametrize("case", WINO_CASES, ids=_wino_id)
def test_winograd_matches_reference(case, threads, rng):
    n, c, o, h, w, p, bias, act = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32) * 4  # relu6 clamps some outputs
    wt = sparse_weight((o, c, 3, 3), 0.0, rng)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    y = Conv2dOp(wt, b, padding=p, activation=act, kernel="winograd")(x)
    assert_close(y, _wino_ref(x, wt, b, p, act), rtol=WINO_RTOL)


def test_winograd_cases_cover_the_grid():
    assert {c[1] for c in WINO_CASES} == {1, 3, 17, 64}
    assert {c[2] for c in WINO_CASES} == {1, 5, 16}
    assert {(c[3], c[4]) for c in WINO_CASES} == set(WINO_SIZES)
    assert {str(c[5]) for c in WINO_CASES} == {str(p) for p in WINO_PADDINGS}
    assert {c[6] for c in WINO_CASES} == {True, False}
    assert {c[7] for c in WINO_CASES} == {None, "relu", "relu6"}
    assert {c[0] for c in WINO_CASES} == {1, 3}


@pytest.mark.parametrize("activation", [None, "relu6"])
def test_winograd_every_simd_level(activation, simd_level, rng):
    x = rng.standard_normal((2, 17, 23, 17)).astype(np.float32) * 8
    w = sparse_weight((16, 17, 3, 3), 0.0, rng)
    b = rng.standard_normal(16).astype(np.float32)
    y = Conv2dOp(w, b, padding=1, activation=activation, kernel="winograd")(x)
    assert_close(y, _wino_ref(x, w, b, 1, activation), rtol=WINO_RTOL)


def test_winograd_small_chunks_and_thread_independence(monkeypatch, rng):
    # chunks of 3 tiles on a 6-tile-wide grid: chunks start mid-row and span rows
    from fscnn.kernels import winograd_conv
    monkeypatch.setattr(winograd_conv, "CHUNK_BYTES", 0)
    monkeypatch.setattr(winograd_conv, "U_FACTOR", 0.0)
    monkeypatch.setattr(winograd_conv, "MIN_CHUNK", 3)
    x = rng.standard_normal((2, 5, 21, 23)).astype(np.float32)
    w = sparse_weight((7, 5, 3, 3), 0.0, rng)
    b = rng.standard_normal(7).astype(np.float32)
    outs = []
    for t in (1, 2):
        with _config.threads(t):
            op = Conv2dOp(w, b, padding=1, kernel="winograd")
            outs.append(op(x))
            assert op._plan(x.shape).plan.chunk == 3
    assert_close(outs[0], ref_conv2d(x, w, b, padding=1), rtol=WINO_RTOL)
    assert np.array_equal(outs[0], outs[1])


def test_winograd_matches_torch(rng):
    torch = torch_or_skip()
    x = rng.standard_normal((2, 64, 13, 10)).astype(np.float32)
    w = sparse_weight((16, 64, 3, 3), 0.0, rng)
    b = rng.standard_normal(16).astype(np.float32)
    ref = torch.nn.functional.conv2d(to_torch(x), to_torch(w), to_torch(b), padding=1).numpy()
    assert_close(Conv2dOp(w, b, padding=1, kernel="winograd")(x), ref, rtol=WINO_RTOL)


def test_winograd_non_finite_inputs_give_non_finite_outputs(rng):
    # a NaN or inf spreads to the whole tiles that read it (documented): every output that is
    # non-finite in the reference is non-finite here, and the finite ones match
    x = rng.standard_normal((1, 3, 11, 10)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[0, 2, 8, 7] = np.inf
    w = sparse_weight((4, 3, 3, 3), 0.0, rng)
    y = Conv2dOp(w, padding=1, kernel="winograd")(x)
    ref = ref_conv2d(x, w, padding=1)
    assert not np.isfinite(y[~np.isfinite(ref)]).any()
    both = np.isfinite(y) & np.isfinite(ref)
    assert both.sum() > y.size // 2
    assert_close(y[both], ref[both], rtol=WINO_RTOL)


@pytest.mark.parametrize("shape, kwargs, message", [
    ((4, 2, 5, 5), {}, r"needs a 3x3 kernel \(got 5x5\)"),
    ((4, 2, 3, 3), dict(stride=2), r"needs stride 1 \(got \(2, 2\)\)"),
    ((4, 2, 3, 3), dict(dilation=2), r"needs dilation 1 \(got \(2, 2\)\)"),
    ((4, 1, 3, 3), dict(groups=2), r"needs groups=1 \(got 2\)"),
    ((4, 2, 1, 3), dict(stride=(1, 2)), r"needs a 3x3 kernel \(got 1x3\), stride 1 \(got \(1, 2\)\)"),
])
def test_winograd_refused_on_ineligible_layers(shape, kwargs, message, rng):
    w = sparse_weight(shape, 0.0, rng)
    with pytest.raises(OpError, match="features.3: kernel='winograd': the Winograd kernel " + message):
        Conv2dOp(w, kernel="winograd", name="features.3", **kwargs)
    with pytest.raises(OpError, match=message):
        F.conv2d(np.zeros((1, shape[1] * kwargs.get("groups", 1), 8, 8)), w, kernel="winograd",
                 **kwargs)
    # 'auto' simply does not time it there
    op = Conv2dOp(w, kernel="auto", **kwargs)
    op(np.zeros((1, shape[1] * kwargs.get("groups", 1), 8, 8), np.float32))
    assert set(op.plan_info((1, shape[1] * kwargs.get("groups", 1), 8, 8))["timings"]) == \
        {"sparse", "dense"} | ({"depthwise"} if shape[1] == 1 else set())


def test_linear_refuses_winograd(rng):
    from fscnn.ops import LinearOp
    with pytest.raises(OpError, match="kernel must be one of"):
        LinearOp(np.ones((3, 4), np.float32), kernel="winograd")
    with pytest.raises(ValueError, match="kernel must be one of"):
        F.linear(np.ones((2, 4)), np.ones((3, 4)), kernel="winograd")


def test_functional_conv2d_winograd(rng):
    x = rng.standard_normal((1, 3, 9, 8))
    w = sparse_weight((5, 3, 3, 3), 0.0, rng)
    assert_close(F.conv2d(x, w, padding="same", kernel="winograd"),
                 ref_conv2d(x, w, padding=1), rtol=WINO_RTOL)


def test_auto_times_winograd_and_drops_its_weights_when_unused(rng):
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    w = sparse_weight((8, 16, 3, 3), 0.0, rng)
    op = Conv2dOp(w, padding=1, kernel="auto")
    with _config.threads(1):  # no second choice of threads: the kernel is the fastest timed
        y = op(x)
        info = op.plan_info(x.shape)
    assert set(info["timings"]) == {"sparse", "dense", "winograd"}
    assert info["kernel"] == min(info["timings"], key=info["timings"].get)
    assert ("winograd" in op._derived) == (info["kernel"] == "winograd")
    assert_close(y, ref_conv2d(x, w, padding=1), rtol=WINO_RTOL)


@pytest.mark.parametrize("one_thread_faster", [True, False])
def test_auto_runs_a_layer_on_one_thread_where_that_is_faster(one_thread_faster, rng,
                                                              monkeypatch):
    """On several threads, 'auto' also times the candidates on one thread (medians: waking
    threads costs random delays) and keeps one thread where that wins; the choice travels with
    kernel_choices / preset_kernels, and results do not depend on it."""
    from fscnn import ops
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    w = sparse_weight((8, 16, 3, 3), 0.8, rng)
    timed = []

    def typical_calls(fns):  # the winner on 2 threads first, then (each candidate) on one
        timed.append(len(fns))
        for fn in fns:
            fn()
        return [2.0] + [1.0 if one_thread_faster else 3.0] * (len(fns) - 1)

    monkeypatch.setattr(ops, "_typical_calls", typical_calls)
    with _config.threads(2):
        op = Conv2dOp(w, padding=1, kernel="auto")
        y = op(x)
        info = op.plan_info(x.shape)
        choices = op.kernel_choices()
    # the winner alone on one thread, then (where it came close) every candidate
    expected_timings = [2, 1 + len(info["timings"])] if one_thread_faster else [2]
    assert timed == expected_timings
    assert info["threads"] == (1 if one_thread_faster else 2)
    assert_close(y, ref_conv2d(x, w, padding=1), rtol=WINO_RTOL)
    [choice] = choices
    assert choice[:3] == (x.shape, 2, _config.simd_level_index())
    assert len(choice) == (5 if one_thread_faster else 4) and choice[-1] in (1, info["kernel"])
    # another op with the same weights takes the choice untimed, threads included
    again = Conv2dOp(w, padding=1, kernel="auto")
    again.preset_kernels(choices)
    with _config.threads(2):
        assert_close(again(x), y, rtol=WINO_RTOL)
        assert again.plan_info(x.shape)["threads"] == info["threads"]
        assert again.plan_info(x.shape)["timings"] is None
    assert timed == expected_timings
    with _config.threads(1):  # one thread: nothing to choose
        assert Conv2dOp(w, padding=1, kernel="auto").plan_info(x.shape)["threads"] == 1
    assert timed == expected_timings


@pytest.mark.parametrize("again_faster_on_one", [True, False])
def test_a_layer_put_on_one_thread_is_timed_again_by_its_next_call(again_faster_on_one, rng,
                                                                   monkeypatch):
    """A burst of load slows calls on several threads and not those on one: the call after
    the one that chose one thread times that choice again inside ops.second_looks (prepare's
    second call), keeps it only if one thread wins again, and later calls time nothing.
    Asking about the plan (plan_info) is not a call."""
    from fscnn import ops
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    w = sparse_weight((8, 16, 3, 3), 0.8, rng)
    timed = []

    def typical_calls(fns):  # the first call finds one thread faster, the second look as set
        timed.append(len(fns))
        for fn in fns:
            fn()
        if len(timed) <= 2:  # the winner alone on one thread, then every candidate
            return [2.0] + [1.0] * (len(fns) - 1)
        return [2.0, 1.0] if again_faster_on_one else [1.0, 2.0]

    monkeypatch.setattr(ops, "_typical_calls", typical_calls)
    with _config.threads(2):
        op = Conv2dOp(w, padding=1, kernel="auto")
        expected = ref_conv2d(x, w, padding=1)
        assert_close(op(x), expected, rtol=WINO_RTOL)
        assert op.plan_info(x.shape)["threads"] == 1 and len(timed) == 2
        with ops.second_looks():  # as prepare's second call
            assert_close(op(x), expected, rtol=WINO_RTOL)
        assert timed[2:] == [2]
        info = op.plan_info(x.shape)
        assert info["threads"] == (1 if again_faster_on_one else 2)
        assert len(op.kernel_choices()[0]) == (5 if again_faster_on_one else 4)
        for _ in range(2):
            assert_close(op(x), expected, rtol=WINO_RTOL)
        assert len(timed) == 3 and op.plan_info(x.shape) == info


def test_a_lazily_prepared_layer_keeps_its_first_choice(rng, monkeypatch):
    """Outside ops.second_looks a close call is not timed again: a model's later calls give
    the bits of its first (the runner-up here would be a kernel with other rounding)."""
    from fscnn import ops
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    op = Conv2dOp(sparse_weight((16, 8, 3, 3), 0.5, rng), padding=1, kernel="auto")
    timed = []
    monkeypatch.setattr(ops, "_fastest_calls",
                        lambda fns: timed.append(len(fns)) or [1.0 + 0.01 * i
                                                               for i in range(len(fns))])
    with _config.threads(1):
        first = op(x)
        assert op._unconfirmed  # a close call, waiting for a second look
        for _ in range(3):
            np.testing.assert_array_equal(op(x), first)
    assert len(timed) == 1 and not op._unconfirmed


@pytest.mark.parametrize("first, second, chosen", [
    ({"sparse": 1.0, "dense": 1.1}, {"sparse": 2.0, "dense": 0.5}, "dense"),
    ({"sparse": 1.0, "dense": 1.1}, {"sparse": 2.0, "dense": 1.05}, "sparse"),  # min of both
    ({"sparse": 1.0, "dense": 1.1}, {"sparse": 0.9, "dense": 0.5}, "dense"),
    ({"sparse": 1.0, "dense": 1.2}, {"sparse": 3.0, "dense": 1.5}, "sparse"),
    ({"dense": 1.0, "sparse": 1.1}, {"dense": 2.0, "sparse": 0.4}, "sparse"),
    ({"sparse": 1.0, "dense": 1.3}, None, "sparse"),  # not a close call: timed once
])
def test_a_close_call_of_auto_is_timed_again_by_the_next_call(first, second, chosen, rng,
                                                              monkeypatch):
    """Where the runner-up's best call came within CLOSE_CALL of the winner's, the next call
    inside ops.second_looks (prepare's second call) times the two again and the best call of
    both timings decides (noise only adds time);
    the dense form of sparse-held weights stays resident only if the dense kernel wins."""
    from fscnn import ops
    from fscnn.sparse import SparseConvWeight
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    w = sparse_weight((16, 8, 3, 3), 0.9, rng)
    op = Conv2dOp(SparseConvWeight.from_dense(w), padding=1, kernel="auto")
    ran, looks = [], []
    execute = op._execute

    def recording_execute(x, geo, threads, kernel, plan):
        ran.append(kernel.name)
        return execute(x, geo, threads, kernel, plan)

    def fastest_calls(fns):
        times = first if not looks else second
        looks.append(len(fns))
        result = []
        for fn in fns:
            fn()
            result.append(times[ran[-1]])
        return result

    monkeypatch.setattr(op, "_execute", recording_execute)
    monkeypatch.setattr(op, "_candidates",
                        lambda: tuple(op._runners[n] for n in ("sparse", "dense")))
    monkeypatch.setattr(ops, "_fastest_calls", fastest_calls)
    expected = ref_conv2d(x, w, padding=1)
    with _config.threads(1):
        assert_close(op(x), expected)
        with ops.second_looks():  # as prepare's second call
            assert_close(op(x), expected)
        assert_close(op(x), expected)
        info = op.plan_info(x.shape)
    assert looks == ([2] if second is None else [2, 2])
    assert info["kernel"] == chosen and op.holds_dense == (chosen == "dense")
    both = first if second is None else {k: min(first[k], second[k]) for k in first}
    assert info["timings"] == both


@pytest.mark.parametrize("shape, why", [((2, 16, 2, 2), "25% used on 2x2 output planes"),
                                        ((1, 16, 5, 5), "39% used on 5x5 output planes"),
                                        ((2, 16, 4, 4), "2 tiles per call")])
def test_auto_does_not_time_winograd_where_it_cannot_win(shape, why, rng):
    """Where its tiles are mostly wasted or too few, 'auto' leaves Winograd out; asked for
    explicitly, it still runs there, correctly."""
    from fscnn.kernels import WinogradConv
    x = rng.standard_normal(shape).astype(np.float32)
    w = sparse_weight((8, 16, 3, 3), 0.0, rng)
    op = Conv2dOp(w, padding=1, kernel="auto")
    assert_close(op(x), ref_conv2d(x, w, padding=1))
    assert set(op.plan_info(x.shape)["timings"]) == {"sparse", "dense"}
    assert why in WinogradConv.cannot_win(op, op._geometry(x.shape))
    assert_close(Conv2dOp(w, padding=1, kernel="winograd")(x), ref_conv2d(x, w, padding=1),
                 rtol=WINO_RTOL)


# -- depthwise (one input channel per group) ----------------------------------------------------
# (N, C, multiplier, H, W, (KH, KW), stride, padding, dilation): MobileNet's shapes, smaller,
# and every geometry the kernel treats differently (phases, tile tails, planes under a tile).
DW_CASES = [
    (1, 8, 1, 14, 14, (3, 3), 1, 1, 1),            # MobileNet stride 1
    (2, 6, 1, 15, 16, (3, 3), 2, 1, 1),            # MobileNet stride 2, odd size, batch 2
    (1, 5, 3, 9, 7, (3, 3), 1, 1, 1),              # channel multiplier 3
    (1, 4, 2, 13, 12, (5, 5), 2, 2, 2),            # 5x5, stride 2, dilation 2
    (1, 3, 1, 10, 11, (7, 7), 3, 3, 1),            # 7x7, stride 3
    (1, 7, 1, 6, 9, (1, 3), (1, 2), (0, 1), 1),    # non-square kernel and stride
    (3, 4, 1, 7, 7, (3, 3), 1, (1, 2, 0, 1), 1),   # asymmetric padding
    (1, 9, 1, 5, 5, (1, 1), 1, 0, 1),              # 1x1 unpadded (one phase, packed copy)
    (1, 4, 1, 12, 11, (1, 1), 2, 0, 1),            # 1x1 strided: phase (0, 0) only
    (1, 5, 1, 1, 1, (3, 3), 1, 1, 1),              # 1x1 plane
    (1, 1, 6, 20, 45, (3, 3), 1, 1, (2, 1)),       # one input channel (groups=1), wide rows
    (1, 16, 1, 40, 37, (3, 3), 1, 1, 1),           # flat output of many tiles
]


def _dw_id(case):
    n, c, m, h, w, k, s, p, d = case
    return f"n{n}c{c}m{m}_{h}x{w}_k{k[0]}x{k[1]}_s{s}_p{p}_d{d}".replace(" ", "")


def _dw_make(case, sparsity, rng):
    n, c, m, h, w, k, s, p, d = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32) * 4  # relu6 clamps some outputs
    wt = sparse_weight((c * m, 1) + k, sparsity, rng)
    b = rng.standard_normal(c * m).astype(np.float32)
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=c)



@pytest.mark.parametrize("case", DW_CASES, ids=_dw_id)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("activation", [None, "relu6"])
def test_depthwise_matches_reference(case, sparsity, activation, threads, rng):
    x, w, b, hp = _dw_make(case, sparsity, rng)
    y = Conv2dOp(w, b, activation=activation, kernel="depthwise", **hp)(x)
    assert_close(y, _act_ref(ref_conv2d(x, w, b, **hp), activation))


@pytest.mark.parametrize("case", DW_CASES[:4], ids=_dw_id)
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_depthwise_every_simd_level(case, activation, simd_level, rng):
    x, w, b, hp = _dw_make(case, 0.3, rng)
    y = Conv2dOp(w, b, activation=activation, kernel="depthwise", **hp)(x)
    assert_close(y, _act_ref(ref_conv2d(x, w, b, **hp), activation))


@pytest.mark.parametrize("case", DW_CASES, ids=_dw_id)
def test_depthwise_matches_torch(case, rng):
    x, w, b, hp = _dw_make(case, 0.5, rng)
    assert_close(Conv2dOp(w, b, kernel="depthwise", **hp)(x), _torch_conv2d(x, w, b, hp),
                 rtol=1e-4)


# (H, W, stride, padding): the direct 3x3 path (AVX-512; packed planes elsewhere) around its
# 16-lane chunks (widths 15-17, 31-33, stride 2 reading two vectors), its 4-row blocks (heights
# 1-5, 9), padding 0-2 on each side (columns before the row's start), unequal strides.
DW3_DIRECT_CASES = [
    (14, 14, 1, 1), (7, 7, 1, 1), (9, 17, 1, 1), (5, 33, 1, 1), (3, 16, 1, 1), (1, 1, 1, 1),
    (14, 14, 2, 1), (15, 31, 2, 1), (4, 32, 2, 1), (9, 33, 2, 1), (2, 65, 2, 1), (1, 2, 2, 1),
    (6, 6, 1, 0), (6, 7, 2, 0), (5, 5, 1, 2), (8, 3, 2, 2), (2, 1, 1, 2),
    (9, 18, (2, 1), (1, 0, 0, 1)), (7, 20, (1, 2), (0, 2, 2, 0)), (10, 10, 2, (0, 1, 0, 1)),
]


@pytest.mark.parametrize("h, w, stride, padding", DW3_DIRECT_CASES)
@pytest.mark.parametrize("activation", [None, "relu6"])
def test_depthwise_direct_3x3(h, w, stride, padding, activation, rng):
    from fscnn.kernels.depthwise_conv import direct_weights
    x = rng.standard_normal((2, 5, h, w)).astype(np.float32) * 4
    wt = sparse_weight((5, 1, 3, 3), 0.4, rng)
    b = rng.standard_normal(5).astype(np.float32)
    hp = dict(stride=stride, padding=padding, groups=5)
    op = Conv2dOp(wt, b, activation=activation, kernel="depthwise", **hp)
    assert_close(op(x), _act_ref(ref_conv2d(x, wt, b, **hp), activation))
    level = _config.simd_level_index()
    direct = direct_weights(op, op._geometry(x.shape), level)
    assert (direct is not None) == _conv.depthwise_direct_available(level)
    if direct is not None:
        assert np.array_equal(direct.reshape(wt.shape), wt)


def test_depthwise_does_not_depend_on_threads(rng):
    x, w, b, hp = _dw_make((3, 16, 2, 23, 19, (3, 3), 2, 1, 1), 0.5, rng)
    outs = []
    for t in (1, 2):
        with _config.threads(t):
            outs.append(Conv2dOp(w, b, kernel="depthwise", **hp)(x))
    assert np.array_equal(outs[0], outs[1])


def test_depthwise_non_finite_inputs_propagate(rng):
    torch = torch_or_skip()
    x = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[0, 2, 6, 6] = np.inf
    w = sparse_weight((3, 1, 3, 3), 0.0, rng)
    ref = torch.nn.functional.conv2d(to_torch(x), to_torch(w), padding=1, groups=3).numpy()
    for activation in (None, "relu6"):
        y = Conv2dOp(w, padding=1, groups=3, activation=activation, kernel="depthwise")(x)
        assert np.array_equal(np.isnan(y), np.isnan(_act_ref(ref, activation)))


def test_depthwise_skips_zero_taps(rng):
    # pruned taps are not stored: the plan holds the non-zeros only
    x, w, b, hp = _dw_make(DW_CASES[0], 0.7, rng)
    op = Conv2dOp(w, b, kernel="depthwise", **hp)
    op(x)
    assert op._plan(x.shape).plan.offsets.size == np.count_nonzero(w)


@pytest.mark.parametrize("shape, groups", [((4, 2, 3, 3), 1), ((4, 2, 3, 3), 2)])
def test_depthwise_refused_on_ineligible_layers(shape, groups, rng):
    w = sparse_weight(shape, 0.0, rng)
    with pytest.raises(OpError, match="features.3: kernel='depthwise': the depthwise kernel "
                                      "needs one input channel per group"):
        Conv2dOp(w, groups=groups, kernel="depthwise", name="features.3")
    with pytest.raises(OpError, match="conv2d: kernel='depthwise'"):
        F.conv2d(np.zeros((1, 2 * groups, 8, 8)), w, groups=groups, kernel="depthwise")


def test_auto_times_depthwise_on_depthwise_layers(rng):
    x, w, b, hp = _dw_make(DW_CASES[1], 0.0, rng)
    op = Conv2dOp(w, b, kernel="auto", **hp)
    with _config.threads(1):  # one thread: no second choice (threads), the fastest kernel runs
        y = op(x)
        info = op.plan_info(x.shape)
        runner = op._plan(x.shape).runner  # (outside, another thread count: another plan)
    assert set(info["timings"]) == {"depthwise", "sparse", "dense"}
    assert info["kernel"] == min(info["timings"], key=info["timings"].get)
    assert (runner is DepthwiseConv) == (info["kernel"] == "depthwise")
    assert_close(y, ref_conv2d(x, w, b, **hp))
    # a one-shot call takes the depthwise kernel
    assert_close(F.conv2d(x, w, b, **hp), ref_conv2d(x, w, b, **hp))


# -- pointwise (the dense kernel of 1x1 ungrouped layers) ---------------------------------------
# (N, C, O, H, W, stride, padding): flat outputs shorter than a tile, between one and two tiles
# (last tile moved back), many tiles; output channels that fill no block exactly; packed
# (padded, strided) and in-place inputs.
PW_CASES = [
    (1, 3, 5, 1, 1, 1, 0),          # one position
    (2, 17, 13, 5, 5, 1, 0),        # 25 positions: under every tile
    (1, 40, 30, 7, 7, 1, 0),        # 49: last tile moved back
    (3, 8, 12, 13, 11, 1, 0),       # batch 3, several tiles
    (1, 300, 7, 9, 9, 1, 0),        # many input channels, one block
    (1, 260, 30, 7, 7, 1, 0),       # K >= 256, several blocks: the strip copied, tile moved back
    (1, 6, 9, 10, 12, 2, 0),        # strided: phase (0, 0) packed
    (1, 5, 6, 6, 7, 1, 1),          # padded: every phase plane packed
    (1, 1, 24, 20, 20, 1, 0),       # one input channel
]


def _pw_id(case):
    return "n{}c{}o{}_{}x{}_s{}_p{}".format(*case)


def _pw_make(case, sparsity, rng):
    n, c, o, h, w, s, p = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32) * 4
    wt = sparse_weight((o, c, 1, 1), sparsity, rng)
    b = rng.standard_normal(o).astype(np.float32)
    return x, wt, b, dict(stride=s, padding=p)


def _pw_variant_outputs(x, w, b, activation, hp, threads=None):
    op = Conv2dOp(w, b, activation=activation, kernel="dense", **hp)
    geo = op._plan(x.shape).geo
    level = _config.simd_level_index()
    threads = threads or _config.get_num_threads()
    outs = []
    for v in range(len(_conv.pointwise_variants(level))):
        outs.append(aligned_empty(op.output_shape(x.shape)))
        PointwiseConv.run(x, variant_plan(op, geo, threads, level, v, op.dense), outs[-1])
    return outs


@pytest.mark.parametrize("case", PW_CASES, ids=_pw_id)
@pytest.mark.parametrize("activation", [None, "relu6"])
def test_pointwise_variants_match_reference(case, activation, simd_level, rng):
    x, w, b, hp = _pw_make(case, 0.3, rng)
    ref = _act_ref(ref_conv2d(x, w, b, **hp), activation)
    outs = _pw_variant_outputs(x, w, b, activation, hp)
    assert len(outs) >= 2
    for y in outs:
        assert_close(y, ref)
        assert np.array_equal(y, outs[0])  # same sums in the same order: bit-identical


@pytest.mark.parametrize("case", PW_CASES, ids=_pw_id)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
def test_pointwise_is_the_dense_kernel_of_1x1_layers(case, sparsity, threads, rng):
    x, w, b, hp = _pw_make(case, sparsity, rng)
    op = Conv2dOp(w, b, kernel="dense", **hp)
    assert_close(op(x), ref_conv2d(x, w, b, **hp))
    assert op._plan(x.shape).runner is PointwiseConv
    grouped = Conv2dOp(np.ones((4, 1, 1, 1), np.float32), groups=2, kernel="dense")
    assert grouped._plan((1, 2, 5, 5)).runner is DenseConv  # grouped 1x1: the GEMM path


def test_pointwise_does_not_depend_on_threads(rng):
    x, w, b, hp = _pw_make((2, 33, 70, 14, 14, 1, 0), 0.0, rng)
    one = _pw_variant_outputs(x, w, b, "relu", hp, threads=1)
    two = _pw_variant_outputs(x, w, b, "relu", hp, threads=2)
    for a, c in zip(one, two):
        assert np.array_equal(a, c)


def test_auto_times_pointwise_variants(rng, monkeypatch):
    """'auto' times every tile-shape variant of the pointwise kernel and keeps the fastest.
    Timings are faked (the variant last run is "fastest" when it is the last one), so the
    choice is known: the last variant, and the dense kernel over the sparse one."""
    import fscnn.kernels.pointwise_conv as pointwise
    import fscnn.ops as ops
    x, w, b, hp = _pw_make(PW_CASES[2], 0.0, rng)
    level = _config.simd_level_index()
    n_variants = len(_conv.pointwise_variants(level))
    assert n_variants >= 2
    ran = []
    run = PointwiseConv.run

    def recording_run(x, plan, out):
        ran.append(plan.variant)
        return run(x, plan, out)

    def fake_time(fn, repeats=3):
        before = len(ran)
        fn()
        new = ran[before:]
        if not new:
            return 1.0  # the sparse kernels
        return 0.1 if new[-1] == n_variants - 1 else 0.5

    monkeypatch.setattr(PointwiseConv, "run", staticmethod(recording_run))
    monkeypatch.setattr(pointwise, "time_call", fake_time)
    monkeypatch.setattr(ops, "_fastest_calls", lambda fns: [fake_time(fn) for fn in fns])
    op = Conv2dOp(w, b, kernel="auto", **hp)
    with _config.threads(1):  # one thread: the faked timings alone decide
        y = op(x)
        plan = op._plan(x.shape)
    assert sorted(set(ran)) == list(range(n_variants))  # every variant was timed
    assert plan.kernel == "dense" and plan.runner is PointwiseConv
    assert plan.plan.variant == n_variants - 1
    assert set(plan.timings) == {"sparse", "dense"}
    assert_close(y, ref_conv2d(x, w, b, **hp))


# -- 2x2 max pool fused into the convolution -----------------------------------------------------
POOL_CASES = [
    (1, 3, 8, 9, 11, (3, 3), 1, 1, 1, 1),           # odd output: floor mode drops a row/column
    (2, 64, 16, 17, 16, (3, 3), 1, 1, 1, 1),        # several channel blocks, batch 2
    (1, 16, 4, 6, 230, (3, 3), 1, 1, 1, 1),         # wide rows: bands of two rows
    (1, 5, 7, 30, 31, (3, 3), 1, 1, 1, 1),          # many bands, the last one short
    (1, 4, 6, 13, 12, (5, 5), 2, 2, 1, 2),          # strided, grouped
    (3, 6, 6, 11, 11, (3, 3), 1, 2, 2, 6),          # depthwise, dilated
    (1, 8, 8, 2, 2, (1, 1), 1, 0, 1, 1),            # one pooled output
]


def _pool_ref(x, w, b, activation, hp):
    y = _act_ref(ref_conv2d(x, w, b, **hp), activation)
    n, o, h, wd = y.shape
    y = y[:, :, :h // 2 * 2, :wd // 2 * 2].reshape(n, o, h // 2, 2, wd // 2, 2)
    return y.max(axis=(3, 5))


@pytest.mark.parametrize("case", POOL_CASES, ids=_case_id)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("kernel", ["sparse", "dense", "auto"])
def test_fused_max_pool_matches_reference(case, sparsity, kernel, threads, rng):
    x, w, b, hp = _make(case, sparsity, rng)
    op = Conv2dOp(w, b, activation="relu", kernel=kernel, pool="max2x2", **hp)
    assert_close(op(x), _pool_ref(x, w, b, "relu", hp),
                 rtol=1e-4 if op.kernel_for(x.shape) == "winograd" else None)


@pytest.mark.parametrize("activation", [None, "relu6"])
def test_fused_max_pool_every_simd_level(activation, simd_level, rng):
    x, w, b, hp = _make(POOL_CASES[3], 0.5, rng)
    x *= 8
    y = Conv2dOp(w, b, activation=activation, kernel="sparse", pool="max2x2", **hp)(x)
    assert_close(y, _pool_ref(x, w, b, activation, hp))


def test_fused_max_pool_bands_and_threads(rng):
    # bands hold an even number of rows and the fewest positions; results do not depend on
    # the thread count
    x, w, b, hp = _make((2, 8, 12, 45, 37, (3, 3), 1, 1, 1, 1), 0.7, rng)
    outs = []
    for t in (1, 2):
        with _config.threads(t):
            op = Conv2dOp(w, b, kernel="sparse", pool="max2x2", **hp)
            outs.append(op(x))
            rows = op._plan(x.shape).plan.band_rows
            assert rows % 2 == 0 and 2 <= rows <= 44
    assert np.array_equal(outs[0], outs[1])
    assert_close(outs[0], _pool_ref(x, w, b, None, hp))


def test_fused_max_pool_nan_is_sticky(rng):
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    x[0, 1, 3, 3] = np.nan
    w = sparse_weight((3, 2, 3, 3), 0.0, rng)
    for kernel in ("sparse", "dense"):
        y = Conv2dOp(w, padding=1, kernel=kernel, pool="max2x2")(x)
        ref = _pool_ref(x, w, None, None, dict(padding=1))
        assert np.array_equal(np.isnan(y), np.isnan(ref)) and np.isnan(y).any()


def test_fused_max_pool_refuses_bad_settings(rng):
    w = sparse_weight((3, 2, 3, 3), 0.0, rng)
    with pytest.raises(OpError, match="pool must be None or 'max2x2'"):
        Conv2dOp(w, pool="avg")
    with pytest.raises(OpError, match=r"conv2d: the convolution's 1x3 output is smaller"):
        Conv2dOp(w, pool="max2x2")(np.zeros((1, 2, 3, 5), np.float32))


# Residual connections, out = res_act(act(conv(x) + bias) + residual): added in the epilogue by
# the sparse kernel on flat layers (unpadded 1x1) and by the pointwise kernel, in one pass after
# the kernel by the others (kernels.base.Kernel.adds_residual).
RESIDUAL_CASES = [
    (2, 16, 24, 7, 7, (1, 1), 1, 0, 1, 1),    # flat, 49 positions: the last tile is gathered
    (1, 40, 32, 14, 14, (1, 1), 1, 0, 1, 1),  # flat, several tiles and output blocks
    (1, 300, 20, 6, 6, (1, 1), 1, 0, 1, 1),   # flat, K >= 256: the pointwise strip copy
    (1, 6, 8, 13, 12, (1, 1), 2, 0, 1, 1),    # 1x1 stride 2
    (1, 8, 12, 9, 11, (3, 3), 1, 1, 1, 1),    # 3x3: the pass after the kernel
    (1, 6, 6, 10, 10, (3, 3), 1, 1, 1, 6),    # depthwise
]
RESIDUAL_KERNELS = [(case, kernel) for case in RESIDUAL_CASES
                    for kernel in ("sparse", "block_sparse", "dense", "winograd", "depthwise")
                    if not Conv2dOp(np.zeros((case[2], case[1] // case[9]) + case[5], np.float32),
                                    groups=case[9], stride=case[6]).ineligible.get(kernel)]


@pytest.mark.parametrize("case, kernel", RESIDUAL_KERNELS,
                         ids=[f"{_case_id(c)}-{k}" for c, k in RESIDUAL_KERNELS])
@pytest.mark.parametrize("activation, residual_activation",
                         [(None, "relu"), ("relu", None), ("relu6", "relu6"), (None, "sigmoid")])
def test_residual_matches_reference(case, kernel, activation, residual_activation, simd_level,
                                    threads, rng):
    from reference import ACTIVATIONS, sigmoid
    x, w, b, hp = _make(case, 0.7, rng)
    x *= 4  # outputs past 6: relu6's clamp
    op = Conv2dOp(w, b, activation=activation, kernel=kernel, **hp)
    r = rng.standard_normal(op.output_shape(x.shape)).astype(np.float32) * 4
    y = op(x, r, residual_activation)
    finish = sigmoid if residual_activation == "sigmoid" else ACTIVATIONS[residual_activation]
    expected = finish(ACTIVATIONS[activation](ref_conv2d(x, w, b, **hp)) + r)
    assert_close(y, expected, rtol=1e-4 if kernel == "winograd" else None)
    # the epilogue computes what a separate add does, bit for bit
    np.testing.assert_array_equal(y, F.add(op(x), r, residual_activation))


def test_residual_is_added_in_the_epilogue_of_flat_sparse_and_pointwise_layers(rng):
    from fscnn.kernels import SparseConv
    x = rng.standard_normal((1, 16, 7, 7)).astype(np.float32)
    flat = Conv2dOp(sparse_weight((8, 16, 1, 1), 0.8, rng), kernel="sparse")
    wide = Conv2dOp(sparse_weight((8, 16, 3, 3), 0.8, rng), padding=1, kernel="sparse")
    assert SparseConv.adds_residual(flat._plan(x.shape).plan)
    assert not SparseConv.adds_residual(wide._plan(x.shape).plan)
    assert PointwiseConv.adds_residual(None)


def test_residual_non_contiguous_and_float64_are_converted(rng):
    x, w, b, hp = _make(RESIDUAL_CASES[0], 0.5, rng)
    op = Conv2dOp(w, b, kernel="sparse", **hp)
    shape = op.output_shape(x.shape)
    r = rng.standard_normal(shape[::-1]).T  # float64, Fortran order
    assert_close(op(x, r, "relu"), np.maximum(ref_conv2d(x, w, b, **hp) + r, 0))


@pytest.mark.parametrize("residual, activation, kwargs, message", [
    (np.zeros((2, 24, 7, 6), np.float32), None, {}, r"residual of shape \(2, 24, 7, 6\) does not "
                                                    r"match the output's shape \(2, 24, 7, 7\)"),
    (np.zeros((2, 24, 7, 7), np.int32), None, {}, "residual must be a float array"),
    ([[1.0]], None, {}, "residual must be a float array"),
    (None, "relu", {}, "residual_activation given without a residual"),
    (np.zeros((2, 24, 7, 7), np.float32), "tanh!", {}, "residual_activation"),
    (np.zeros((2, 24, 3, 3), np.float32), None, {"pool": "max2x2"}, "fused pool"),
])
def test_bad_residuals_raise_naming_the_layer(residual, activation, kwargs, message, rng):
    x, w, b, hp = _make(RESIDUAL_CASES[0], 0.5, rng)
    op = Conv2dOp(w, b, kernel="sparse", name="block.conv3", **hp, **kwargs)
    with pytest.raises(ValueError, match=message) as info:  # OpError, or the activation's
        op(x, residual, activation)
    assert "block.conv3" in str(info.value)
