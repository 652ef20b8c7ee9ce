"""The float64 NumPy reference (tests/reference.py) against torch.nn.functional in float64."""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, sparse_weight, to_torch, torch_or_skip


def _torch_f():
    return torch_or_skip().nn.functional


def _check(actual, torch_result):
    assert_close(actual, torch_result.numpy(), dtype=np.float64)


@pytest.mark.parametrize("shape, o, k, stride, padding, dilation, groups", [
    ((2, 3, 9, 7), 4, (3, 3), 1, 1, 1, 1),
    ((1, 4, 8, 8), 6, (3, 1), (2, 1), (1, 0), 1, 2),
    ((3, 4, 11, 10), 4, (3, 3), 2, 2, (2, 3), 4),
    ((1, 2, 5, 6), 3, (1, 1), 1, 0, 1, 1),
    ((1, 2, 7, 7), 2, (5, 5), 3, 0, 1, 1),
    ((2, 64, 32, 32), 64, (3, 3), 1, 1, 1, 1),
])
def test_conv2d(rng, shape, o, k, stride, padding, dilation, groups):
    F = _torch_f()
    x = rng.standard_normal(shape)
    w = sparse_weight((o, shape[1] // groups) + k, 0.5, rng, dtype=np.float64)
    b = rng.standard_normal(o)
    expected = F.conv2d(to_torch(x), to_torch(w), to_torch(b), stride, padding, dilation, groups)
    _check(ref.conv2d(x, w, b, stride, padding, dilation, groups), expected)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("padding", [(0, 1, 2, 0), (2, 0, 0, 1), "same", "valid"])
@pytest.mark.parametrize("k, dilation", [((3, 3), 1), ((2, 4), (2, 1))])
def test_conv2d_asymmetric_and_named_padding(rng, padding, k, dilation):
    F = _torch_f()
    x = rng.standard_normal((1, 2, 8, 9))
    w = rng.standard_normal((3, 2) + k)
    if isinstance(padding, str):
        expected = F.conv2d(to_torch(x), to_torch(w), padding=padding, dilation=dilation)
    else:
        top, bottom, left, right = padding
        xp = F.pad(to_torch(x), (left, right, top, bottom))
        expected = F.conv2d(xp, to_torch(w), dilation=dilation)
    _check(ref.conv2d(x, w, padding=padding, dilation=dilation), expected)


def test_linear(rng):
    F = _torch_f()
    x, w, b = rng.standard_normal((3, 7)), rng.standard_normal((5, 7)), rng.standard_normal(5)
    _check(ref.linear(x, w, b), F.linear(to_torch(x), to_torch(w), to_torch(b)))
    _check(ref.linear(x, w), F.linear(to_torch(x), to_torch(w)))


POOL_CASES = [
    # kernel, stride, padding, dilation
    (2, None, 0, 1),
    (3, 2, 1, 1),
    ((3, 2), (2, 1), (1, 1), 1),
    (3, 2, 1, 2),
    ((2, 3), 3, (1, 0), (3, 1)),
    (1, 1, 0, 1),
    (4, 3, 2, 1),
]


def _torch_pool(pool, x, hw, kernel, stride, padding, dilation, ceil_mode, *args):
    """torch's result; None for a configuration that the reference's output-size rule (and
    torch's padding <= kernel // 2 rule) call invalid, after checking that torch rejects it."""
    k, p, d = (ref.pair(v) for v in (kernel, padding, dilation))
    s = k if stride is None else ref.pair(stride)
    out = [ref.pool_output_size(hw[a], k[a], s[a], p[a], d[a], ceil_mode) for a in (0, 1)]
    valid = min(out) >= 1 and all(p[a] <= k[a] // 2 for a in (0, 1))
    if not valid:
        with pytest.raises(RuntimeError):
            pool(to_torch(x), kernel, stride, padding, *args)
        return None
    return pool(to_torch(x), kernel, stride, padding, *args)


@pytest.mark.parametrize("hw", [(7, 7), (8, 5), (1, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel, stride, padding, dilation", POOL_CASES)
def test_max_pool2d(rng, hw, ceil_mode, kernel, stride, padding, dilation):
    F = _torch_f()
    x = rng.standard_normal((2, 3) + hw)
    x.flat[rng.choice(x.size, 3)] = np.nan
    expected = _torch_pool(F.max_pool2d, x, hw, kernel, stride, padding, dilation, ceil_mode,
                           dilation, ceil_mode)
    if expected is None:  # invalid here, and torch agrees (checked by _torch_pool)
        return
    _check(ref.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode), expected)


@pytest.mark.parametrize("hw", [(7, 7), (8, 5), (1, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("divisor_override", [None, 3])
@pytest.mark.parametrize("kernel, stride, padding", [c[:3] for c in POOL_CASES])
def test_avg_pool2d(rng, hw, ceil_mode, count_include_pad, divisor_override, kernel, stride,
                    padding):
    F = _torch_f()
    x = rng.standard_normal((2, 3) + hw)
    args = (ceil_mode, count_include_pad, divisor_override)
    expected = _torch_pool(F.avg_pool2d, x, hw, kernel, stride, padding, 1, ceil_mode, *args)
    if expected is None:  # invalid here, and torch agrees (checked by _torch_pool)
        return
    _check(ref.avg_pool2d(x, kernel, stride, padding, *args), expected)


@pytest.mark.parametrize("hw, out", [((7, 7), 1), ((7, 9), (3, 4)), ((5, 5), 7), ((6, 13), (None, 5)),
                                     ((1, 1), 2), ((224, 224), 7)])
def test_adaptive_pools(rng, hw, out):
    F = _torch_f()
    x = rng.standard_normal((2, 3) + hw)
    _check(ref.adaptive_avg_pool2d(x, out), F.adaptive_avg_pool2d(to_torch(x), out))
    x.flat[rng.choice(x.size, 3)] = np.nan
    _check(ref.adaptive_max_pool2d(x, out), F.adaptive_max_pool2d(to_torch(x), out))


def test_batch_norm_and_fold(rng):
    F = _torch_f()
    x = rng.standard_normal((2, 4, 5, 3))
    mean, var = rng.standard_normal(4), rng.random(4) + 0.1
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    for weight, bias in [(w, b), (None, None)]:
        expected = F.batch_norm(to_torch(x), to_torch(mean), to_torch(var),
                                None if weight is None else to_torch(weight),
                                None if bias is None else to_torch(bias), False, 0.1, 1e-3)
        _check(ref.batch_norm(x, mean, var, weight, bias, 1e-3), expected)
    cw, cb = rng.standard_normal((4, 4, 3, 3)), rng.standard_normal(4)
    fw, fb = ref.fold_batch_norm(cw, cb, mean, var, w, b, 1e-3)
    expected = F.batch_norm(F.conv2d(to_torch(x), to_torch(cw), to_torch(cb)), to_torch(mean),
                            to_torch(var), to_torch(w), to_torch(b), False, 0.1, 1e-3)
    _check(ref.conv2d(x, fw, fb), expected)


@pytest.mark.parametrize("name, kwargs", [
    ("relu", {}), ("relu6", {}), ("leaky_relu", {"negative_slope": 0.2}), ("sigmoid", {}),
    ("tanh", {}), ("hardswish", {}), ("hardsigmoid", {}), ("silu", {}),
    ("softmax", {"dim": 1}), ("softmax", {"dim": -1}),
])
def test_activations(rng, name, kwargs):
    F = _torch_f()
    x = rng.standard_normal((2, 3, 4, 5)) * 8
    x[0, 0, 0, :3] = [-800.0, 800.0, -4.0]
    if name != "softmax":
        x[1, 0, 0, 0] = np.nan
    _check(getattr(ref, name)(x, **kwargs), getattr(F, name)(to_torch(x), **kwargs))


@pytest.mark.parametrize("weight_shape", [(1,), (3,)])
def test_prelu(rng, weight_shape):
    F = _torch_f()
    x, w = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal(weight_shape)
    _check(ref.prelu(x, w), F.prelu(to_torch(x), to_torch(w)))


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_add(rng, activation):
    F = _torch_f()
    a, b = rng.standard_normal((2, 3, 4, 4)) * 5, rng.standard_normal((2, 3, 4, 4)) * 5
    s = to_torch(a) + to_torch(b)
    expected = {None: s, "relu": F.relu(s), "relu6": F.relu6(s)}[activation]
    _check(ref.add(a, b, activation), expected)


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (5, 7)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_sparse_weight_helper(rng, shape, sparsity):
    w = sparse_weight(shape, sparsity, rng)
    assert w.shape == shape and w.dtype == np.float32
    assert np.count_nonzero(w == 0) == int(round(sparsity * w.size))


def test_assert_close_catches_errors():
    e = np.array([1000.0, 1.0, np.nan])
    assert_close(e.astype(np.float32), e)
    with pytest.raises(AssertionError, match="max"):
        assert_close(np.array([1000.0, 1.1, np.nan], np.float32), e)
    with pytest.raises(AssertionError, match="NaN"):
        assert_close(np.array([1000.0, 1.0, 0.0], np.float32), e)
    with pytest.raises(AssertionError, match="dtype"):
        assert_close(e, e)
