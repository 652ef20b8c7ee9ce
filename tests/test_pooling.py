"""Pooling operators (fscnn.functional.pooling) and the shared argument checks (_validate).

Max pooling selects values, so it must equal the reference exactly; average pooling is
compared with the float32 tolerance of conftest.TOL.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from conftest import assert_close, to_torch, torch_or_skip
from fscnn.functional import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from fscnn import _config, _validate
from fscnn._validate import (GRAIN, MAX_GRAIN, activation_code, as_float32_nchw, as_float_array,
                             elementwise_grain, pair, sliding_output_hw, threads_for)

POOL_CASES = [
    # kernel_size, stride, padding, dilation
    (2, None, 0, 1),
    (3, 2, 1, 1),
    (3, 1, 1, 1),
    ((3, 2), (2, 1), (1, 1), 1),
    (3, 2, 1, 2),
    ((2, 3), 3, (1, 0), (3, 1)),
    (1, 1, 0, 1),
    (4, 3, 2, 1),
    (5, 2, 2, 1),
]
SHAPES = [(1, 2, 7, 9), (3, 4, 8, 8), (3, 2, 1, 1), (1, 1, 2, 5)]


def _output_hw(shape, kernel, stride, padding, dilation, ceil_mode):
    k, p, d = ref.pair(kernel), ref.pair(padding), ref.pair(dilation)
    s = k if stride is None else ref.pair(stride)
    return tuple(ref.pool_output_size(shape[2 + a], k[a], s[a], p[a], d[a], ceil_mode)
                 for a in (0, 1))


def _input(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel, stride, padding, dilation", POOL_CASES)
def test_max_pool2d_matches_reference(rng, threads, shape, ceil_mode, kernel, stride, padding,
                                      dilation):
    x = _input(rng, shape)
    args = (kernel, stride, padding, dilation, ceil_mode)
    if min(_output_hw(shape, *args)) < 1:
        with pytest.raises(ValueError, match="too small"):
            max_pool2d(x, *args)
        return
    out = max_pool2d(x, *args)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref.max_pool2d(x, *args))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [None, 3, -2])
@pytest.mark.parametrize("kernel, stride, padding", [c[:3] for c in POOL_CASES])
def test_avg_pool2d_matches_reference(rng, threads, shape, ceil_mode, count_include_pad,
                                      divisor_override, kernel, stride, padding):
    x = _input(rng, shape)
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    if min(_output_hw(shape, kernel, stride, padding, 1, ceil_mode)) < 1:
        with pytest.raises(ValueError, match="too small"):
            avg_pool2d(x, *args)
        return
    assert_close(avg_pool2d(x, *args), ref.avg_pool2d(x, *args))


ADAPTIVE_CASES = [((1, 2, 7, 9), 1), ((3, 4, 7, 9), (3, 4)), ((1, 2, 5, 5), 7),
                  ((3, 2, 6, 13), (None, 5)), ((1, 3, 14, 14), (4, None)), ((3, 2, 1, 1), 2),
                  ((1, 2, 8, 8), (8, 8))]


@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES)
def test_adaptive_pools_match_reference(rng, threads, shape, output_size):
    x = _input(rng, shape)
    assert_close(adaptive_avg_pool2d(x, output_size), ref.adaptive_avg_pool2d(x, output_size))
    np.testing.assert_array_equal(adaptive_max_pool2d(x, output_size),
                                  ref.adaptive_max_pool2d(x, output_size))


@st.composite
def _pool_config(draw):
    """A valid pooling configuration: input size, kernel, stride, padding, dilation, ceil_mode."""
    k = draw(st.tuples(st.integers(1, 5), st.integers(1, 5)))
    p = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    d = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    s = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    ceil_mode = draw(st.booleans())
    smallest = [max(1, dd * (kk - 1) + 1 - 2 * pp) for kk, pp, dd in zip(k, p, d)]
    hw = tuple(draw(st.integers(lo, lo + 8)) for lo in smallest)
    return hw, k, s, p, d, ceil_mode


@settings(max_examples=150, deadline=None)
@given(_pool_config(), st.integers(0, 2**32 - 1))
def test_pools_match_reference_on_random_configurations(config, seed):
    hw, k, s, p, d, ceil_mode = config
    x = np.random.default_rng(seed).standard_normal((2, 3) + hw).astype(np.float32)
    np.testing.assert_array_equal(max_pool2d(x, k, s, p, d, ceil_mode),
                                  ref.max_pool2d(x, k, s, p, d, ceil_mode))
    if min(_output_hw(x.shape, k, s, p, 1, ceil_mode)) >= 1:
        for count_include_pad in (True, False):
            args = (k, s, p, ceil_mode, count_include_pad)
            assert_close(avg_pool2d(x, *args), ref.avg_pool2d(x, *args))
    out = tuple(v + 1 for v in s)  # any size, including larger than the input
    assert_close(adaptive_avg_pool2d(x, out), ref.adaptive_avg_pool2d(x, out))
    np.testing.assert_array_equal(adaptive_max_pool2d(x, out), ref.adaptive_max_pool2d(x, out))


@pytest.mark.parametrize("op, args", [
    (max_pool2d, (3, 2, 1)), (max_pool2d, (2,)), (avg_pool2d, (3, 1, 1)),
    (adaptive_avg_pool2d, (1,)), (adaptive_max_pool2d, ((5, 3),)),
])
def test_many_planes(rng, threads, op, args):
    """64-channel 32x32 images: many planes split across threads."""
    x = _input(rng, (2, 64, 32, 32))
    assert_close(op(x, *args), getattr(ref, op.__name__)(x, *args))


@pytest.mark.parametrize("shape", [(3, 4, 9, 8), (1, 3, 1, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel, stride, padding, dilation", POOL_CASES)
def test_pools_match_torch(rng, shape, ceil_mode, kernel, stride, padding, dilation):
    F = torch_or_skip().nn.functional
    x = _input(rng, shape)
    xt = to_torch(x)
    if min(_output_hw(shape, kernel, stride, padding, dilation, ceil_mode)) < 1:
        # too small for this input: both refuse it
        with pytest.raises(ValueError, match="too small"):
            max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        with pytest.raises(RuntimeError):
            F.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode)
        return
    np.testing.assert_array_equal(max_pool2d(x, kernel, stride, padding, dilation, ceil_mode),
                                  F.max_pool2d(xt, kernel, stride, padding, dilation,
                                               ceil_mode).numpy())
    if min(_output_hw(shape, kernel, stride, padding, 1, ceil_mode)) >= 1:
        for count_include_pad in (True, False):
            args = (kernel, stride, padding, ceil_mode, count_include_pad)
            assert_close(avg_pool2d(x, *args), F.avg_pool2d(xt, *args).numpy())


@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES)
def test_adaptive_pools_match_torch(rng, shape, output_size):
    F = torch_or_skip().nn.functional
    x = _input(rng, shape)
    assert_close(adaptive_avg_pool2d(x, output_size),
                 F.adaptive_avg_pool2d(to_torch(x), output_size).numpy())
    np.testing.assert_array_equal(adaptive_max_pool2d(x, output_size),
                                  F.adaptive_max_pool2d(to_torch(x), output_size).numpy())


def _variant(x, kind):
    """``x`` (float32, C-contiguous) presented as another dtype or memory layout, same values."""
    if kind == "float64":
        return x.astype(np.float64)
    if kind == "float16":
        return x.astype(np.float16)
    if kind == "read-only":
        x = x.copy()
        x.flags.writeable = False
        return x
    if kind == "non-contiguous":
        wide = np.zeros(x.shape[:3] + (2 * x.shape[3],), np.float32)
        wide[..., ::2] = x
        return wide[..., ::2]
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "list":
        return x.tolist()
    raise AssertionError(kind)


INPUT_KINDS = ["float64", "float16", "read-only", "non-contiguous", "fortran", "list"]
OPS = [(max_pool2d, (3, 2, 1)), (avg_pool2d, (3, 2, 1, True, False)),
       (adaptive_avg_pool2d, ((2, 3),)), (adaptive_max_pool2d, (2,))]


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("op, args", OPS, ids=lambda v: getattr(v, "__name__", ""))
def test_input_variants(rng, kind, op, args):
    """Other float dtypes and layouts give the result of their float32 values, untouched."""
    x = _variant(_input(rng, (3, 2, 7, 6)), kind)
    before = np.array(x, copy=True)
    values32 = np.asarray(x, dtype=np.float32)
    out = op(x, *args)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert_close(out, getattr(ref, op.__name__)(values32, *args))
    np.testing.assert_array_equal(np.asarray(x), before)


@pytest.mark.parametrize("position", [(0, 0), (1, 1), (2, 3), (4, 4)])
def test_nan_propagates_in_max_pools(position):
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    x[0, 0][position] = np.nan
    expected = ref.max_pool2d(x, 3, 2, 1)
    assert np.isnan(expected).sum() >= 1
    np.testing.assert_array_equal(max_pool2d(x, 3, 2, 1), expected)
    np.testing.assert_array_equal(adaptive_max_pool2d(x, 2), ref.adaptive_max_pool2d(x, 2))
    assert np.isnan(adaptive_max_pool2d(x, 1)).all()


def test_nan_anywhere_in_window_wins():
    # The NaN sits before, between and after larger values of its window.
    for row in ([np.nan, 5, 9], [5, np.nan, 9], [5, 9, np.nan]):
        x = np.array(row, np.float32).reshape(1, 1, 1, 3)
        assert np.isnan(max_pool2d(x, (1, 3))).all()
        assert np.isnan(adaptive_max_pool2d(x, 1)).all()


def test_window_entirely_in_padding_is_minus_inf():
    # Taps at -1 and 4 of a 4-wide input: torch gives -inf too.
    x = np.ones((1, 1, 4, 4), np.float32)
    out = max_pool2d(x, 2, 1, 1, 5)
    assert out.shape == (1, 1, 1, 1) and out[0, 0, 0, 0] == -np.inf


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 0, 8, 8)])
@pytest.mark.parametrize("op, args, out_hw", [
    (max_pool2d, (2,), (4, 4)), (avg_pool2d, (3, 2, 1), (4, 4)),
    (adaptive_avg_pool2d, (3,), (3, 3)), (adaptive_max_pool2d, ((1, 2),), (1, 2)),
])
def test_empty_batch_or_channels(shape, op, args, out_hw):
    out = op(np.zeros(shape, np.float32), *args)
    assert out.shape == shape[:2] + out_hw and out.dtype == np.float32


X = np.zeros((1, 2, 6, 6), np.float32)


@pytest.mark.parametrize("call, error, message", [
    (lambda: max_pool2d(X.astype(np.int64), 2), TypeError, "max_pool2d: x: expected a float array.*int64"),
    (lambda: max_pool2d(X.astype(bool), 2), TypeError, "dtype bool"),
    (lambda: max_pool2d(X.astype(np.complex64), 2), TypeError, "dtype complex64"),
    (lambda: max_pool2d(X.astype(object), 2), TypeError, "dtype object"),
    (lambda: max_pool2d("image", 2), TypeError, "dtype <U5"),
    (lambda: max_pool2d([[1.0], [2.0, 3.0]], 2), TypeError, "cannot convert"),
    (lambda: max_pool2d(X[0], 2), ValueError, r"\(N, C, H, W\), got shape \(2, 6, 6\)"),
    (lambda: max_pool2d(X, 2, stride=0), ValueError, "^max_pool2d: stride must be positive, got 0$"),
    (lambda: max_pool2d(X, 0), ValueError, "kernel_size must be positive"),
    (lambda: max_pool2d(X, 2, dilation=(1, 0)), ValueError, r"dilation must be positive, got \(1, 0\)"),
    (lambda: max_pool2d(X, 3, padding=-1), ValueError, "padding must be non-negative, got -1"),
    (lambda: max_pool2d(X, 3, padding=2), ValueError, "at most half of kernel_size"),
    (lambda: max_pool2d(X, 1.5), TypeError, "kernel_size must be an int or a pair"),
    (lambda: max_pool2d(X, True), TypeError, "kernel_size must be an int or a pair"),
    (lambda: max_pool2d(X, (2, 2, 2)), ValueError, "got 3 values"),
    (lambda: max_pool2d(X, 7), ValueError, r"\(H, W\) = \(6, 6\) is too small"),
    (lambda: max_pool2d(X, 3, dilation=3), ValueError, "too small"),
    (lambda: max_pool2d(np.zeros((1, 1, 0, 4), np.float32), 1), ValueError, "non-zero height"),
    (lambda: avg_pool2d(X, 2, divisor_override=0), ValueError, "divisor_override must be non-zero"),
    (lambda: avg_pool2d(X, 2, divisor_override=1.0), TypeError, "divisor_override must be an int"),
    (lambda: avg_pool2d(X, 2, stride=(1, -1)), ValueError, "avg_pool2d: stride must be positive"),
    (lambda: adaptive_avg_pool2d(X, 0), ValueError, "output_size must be positive"),
    (lambda: adaptive_max_pool2d(X, "7"), TypeError, "output_size must be an int"),
    (lambda: adaptive_max_pool2d(X, (1, 2, 3)), TypeError, "output_size must be an int"),
    (lambda: adaptive_avg_pool2d(X[:, :, :0], 1), ValueError, "non-zero height"),
    (lambda: adaptive_avg_pool2d(X.astype(np.int32), 1), TypeError, "int32"),
])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_as_float_array_copies_only_when_needed():
    x = np.ones((2, 3, 4, 5), np.float32)
    assert as_float32_nchw(x, "t") is x
    x.flags.writeable = False
    assert as_float32_nchw(x, "t") is x
    for other in (x.astype(np.float64), x[:, :, :, ::2], np.asfortranarray(x)):
        y = as_float32_nchw(other, "t")
        assert y.dtype == np.float32 and y.flags.c_contiguous and not np.shares_memory(y, other)
    assert as_float_array(x, "t", dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        as_float_array(np.float32(1), "t", min_ndim=2)
    with pytest.raises(ValueError, match=r"t: expected an array of shape \(N, F\)"):
        as_float_array(x, "t", layout="NF")


def test_pair_and_output_size_helpers():
    assert pair(3, "k") == (3, 3) and pair((np.int64(2), 1), "k") == (2, 1)
    assert type(pair(np.int32(2), "k")[0]) is int
    assert pair(0, "p", minimum=0) == (0, 0)
    with pytest.raises(TypeError, match="k must be an int or a pair"):
        pair(None, "k")
    assert sliding_output_hw("op", (7, 7), (3, 3), (2, 2), (1, 1)) == (4, 4)
    assert sliding_output_hw("op", (7, 7), (3, 3), (2, 2), (0, 1, 2, 0)) == (3, 4)
    # ceil_mode: (6 - 2 + 2) // 3 + 1 = 3 windows, but the third would start at 6 >= 6 + 0.
    assert sliding_output_hw("op", (6, 6), (2, 2), (3, 3), (0, 0), ceil_mode=True) == (2, 2)
    assert sliding_output_hw("op", (7, 7), (2, 2), (3, 3), (0, 0), ceil_mode=True) == (3, 3)


def test_threads_for_small_and_large_jobs(monkeypatch):
    with _config.threads(2):
        grain = elementwise_grain(2)  # measured once: what waking a thread costs here
        assert GRAIN <= grain <= MAX_GRAIN and elementwise_grain(2) == grain
        assert threads_for(0) == threads_for(GRAIN - 1) == threads_for(2 * GRAIN - 1) == 1
        assert threads_for(2 * grain - 1) == 1
        assert threads_for(2 * grain) == threads_for(10**9) == 2
        monkeypatch.setitem(_validate._grains, 2, 3 * GRAIN)  # a machine slow to wake threads
        assert threads_for(6 * GRAIN - 1) == 1 and threads_for(6 * GRAIN) == 2
    with _config.threads(1):
        assert threads_for(10**9) == 1


def test_activation_codes():
    assert [activation_code(a, "act") for a in (None, "relu", "relu6")] == [0, 1, 2]
    for bad in ("gelu", "ReLU", ["relu"], 1):
        with pytest.raises(ValueError, match="act must be one of None, 'relu', 'relu6'"):
            activation_code(bad, "act")


@pytest.mark.parametrize("hw", [(3, 3), (5, 9), (7, 17), (4, 30), (3, 67)])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (3, 1, 1), (5, 2, 2), (2, 2, 1),
                                                     ((3, 4), (1, 2), (1, 2))])
def test_max_pool2d_separable_column_pass(hw, kernel, stride, padding, threads, rng):
    # ResNet's 3x3 stride-2 pool and its kin take the separable kernel, whose column pass runs
    # in vectors for column strides 1 and 2: widths cover its 4-output body, its scalar tail
    # and the last window reaching the padding; NaN and -inf as in torch
    x = rng.standard_normal((2, 3) + hw).astype(np.float32)
    x[0, 0].flat[::7] = np.nan
    x[1, 2].flat[::5] = -np.inf
    x[1, 1, :, :] = np.nan
    for ceil_mode in (False, True):
        args = (kernel, stride, padding, 1, ceil_mode)
        if min(_output_hw(x.shape, *args)) < 1:
            continue
        np.testing.assert_array_equal(max_pool2d(x, *args), ref.max_pool2d(x, *args))


@pytest.mark.parametrize("hw", [(2, 2), (5, 9), (8, 16), (6, 41), (3, 67)])
def test_max_pool2d_2x2_stride2_fast_path(hw, threads, rng):
    # VGG's pool runs a vectorised kernel: widths cover its 4-output body and scalar tail, odd
    # sizes drop the last row/column; NaN (anywhere in a window) and -inf as in torch
    x = rng.standard_normal((2, 3) + hw).astype(np.float32)
    x[0, 0].flat[::7] = np.nan
    x[1, 2].flat[::5] = -np.inf
    x[1, 1, :, :] = np.nan
    np.testing.assert_array_equal(max_pool2d(x, 2), ref.max_pool2d(x, 2))
    np.testing.assert_array_equal(max_pool2d(x, 2, ceil_mode=True),
                                  ref.max_pool2d(x, 2, None, 0, 1, True))
