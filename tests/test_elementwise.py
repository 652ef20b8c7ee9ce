"""Activations, add, batch_norm and fold_batch_norm (fscnn.functional.elementwise)."""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, sparse_weight, to_torch, torch_or_skip
from fscnn import functional as F

# name -> extra keyword arguments; every one maps x of any shape to the same shape.
ACTIVATIONS = {
    "relu": {}, "relu6": {}, "leaky_relu": {"negative_slope": 0.2}, "sigmoid": {}, "tanh": {},
    "hardswish": {}, "hardsigmoid": {}, "silu": {},
}
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 100.0, -100.0, 1e4, -1e4, 3.0,
           -3.0, 6.0]


def _activation_input(rng, shape):
    """Normal values spread over the saturating ranges, plus the SPECIAL values when they fit."""
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    flat = x.reshape(-1)
    flat[:len(SPECIAL)] = SPECIAL[:flat.size]
    return x


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 10), (17,), (1, 1, 1, 1)])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_match_reference(rng, shape, name):
    x = _activation_input(rng, shape)
    out = getattr(F, name)(x, **ACTIVATIONS[name])
    assert out.shape == x.shape and out.flags.c_contiguous
    assert_close(out, getattr(ref, name)(x, **ACTIVATIONS[name]))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_match_torch(rng, name):
    torch = torch_or_skip()
    x = _activation_input(rng, (2, 3, 5, 7))
    expected = getattr(torch.nn.functional, name)(to_torch(x), **ACTIVATIONS[name]).numpy()
    assert_close(getattr(F, name)(x, **ACTIVATIONS[name]), expected)


def test_sigmoid_family_has_no_overflow():
    x = np.array([-1e4, -200.0, -88.8, 88.8, 200.0, 1e4], np.float32)
    with np.errstate(over="raise", invalid="raise"):  # underflow to 0 is expected
        s, y = F.sigmoid(x), F.silu(x)
    np.testing.assert_array_equal(s[[0, 1, -2, -1]], [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(y[[-2, -1]], x[[-2, -1]])
    assert 0 < s[2] < 1e-38  # a subnormal, not flushed by 1 - sigmoid(-x)


@pytest.mark.parametrize("shape, weight_size", [((2, 3, 4, 5), 3), ((2, 3, 4, 5), 1), ((4, 6), 6),
                                                ((5,), 1)])
def test_prelu(rng, shape, weight_size):
    x = _activation_input(rng, shape)
    w = rng.standard_normal(weight_size).astype(np.float32)
    assert_close(F.prelu(x, w), ref.prelu(x, w))
    if len(shape) >= 2:
        torch = torch_or_skip()
        assert_close(F.prelu(x, w), torch.nn.functional.prelu(to_torch(x), to_torch(w)).numpy())


@pytest.mark.parametrize("shape, dim", [((2, 10), 1), ((2, 10), -1), ((2, 10), 0),
                                        ((2, 5, 3, 3), 1), ((7,), 0), ((3, 1000), 1)])
def test_softmax(rng, shape, dim):
    x = (rng.standard_normal(shape) * 20).astype(np.float32)
    out = F.softmax(x, dim)
    assert_close(out, ref.softmax(x, dim))
    assert_close(out.sum(axis=dim), np.ones(np.delete(shape, dim)))
    torch = torch_or_skip()
    assert_close(out, torch.nn.functional.softmax(to_torch(x), dim).numpy())


def test_softmax_large_and_non_finite_values():
    x = np.array([[1000.0, 1000.0, -1000.0], [-np.inf, 0.0, -np.inf], [-np.inf] * 3,
                  [np.inf, 0.0, 0.0], [np.nan, 0.0, 1.0]], np.float32)
    with np.errstate(over="raise"):
        out = F.softmax(x, 1)
    np.testing.assert_array_equal(out[:2], [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    assert np.isnan(out[2:]).all()  # as torch: all -inf, +inf or NaN in the slice give NaN
    torch = torch_or_skip()
    np.testing.assert_array_equal(out, torch.softmax(torch.from_numpy(x), 1).numpy())


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 16, 37, 41), (2, 64, 32, 32), (1,), (6, 0)])
def test_add(rng, threads, activation, shape):
    a = _activation_input(rng, shape)
    b = (rng.standard_normal(shape) * 6).astype(np.float32)
    out = F.add(a, b, activation)
    assert out.dtype == np.float32 and out.shape == a.shape
    assert_close(out, ref.add(a, b, activation))


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_add_matches_torch(rng, activation):
    torch = torch_or_skip()
    a, b = _activation_input(rng, (2, 3, 5, 5)), _activation_input(rng, (2, 3, 5, 5))
    s = to_torch(a) + to_torch(b)
    expected = {None: s, "relu": torch.relu(s), "relu6": torch.nn.functional.relu6(s)}[activation]
    np.testing.assert_array_equal(F.add(a, b, activation), expected.numpy())


def test_add_propagates_nan_through_relu():
    a = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    b = np.array([1.0, -np.inf, -1.0, np.nan], np.float32)
    for act in (None, "relu", "relu6"):
        out = F.add(a, b, act)
        assert np.isnan(out[[0, 1, 3]]).all() and not np.isnan(out[2])


@pytest.mark.parametrize("shape", [(2, 4), (3, 4, 5, 6), (1, 4, 1, 1), (0, 4, 3, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(rng, shape, affine):
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    c = shape[1]
    mean, var = rng.standard_normal(c), rng.random(c) + 0.1
    w, b = (rng.standard_normal(c), rng.standard_normal(c)) if affine else (None, None)
    out = F.batch_norm(x, mean, var, w, b, eps=1e-3)
    assert out.dtype == np.float32 and out.shape == shape
    assert_close(out, ref.batch_norm(x, mean, var, w, b, 1e-3))
    torch = torch_or_skip()
    t = [None if v is None else torch.from_numpy(np.asarray(v, np.float32)) for v in (w, b)]
    expected = torch.nn.functional.batch_norm(
        torch.from_numpy(x), torch.from_numpy(mean.astype(np.float32)),
        torch.from_numpy(var.astype(np.float32)), t[0], t[1], False, 0.1, 1e-3)
    assert_close(out, expected.numpy())


@pytest.mark.parametrize("weight_shape", [(8, 3, 3, 3), (6, 1, 3, 3), (8, 20)])
@pytest.mark.parametrize("with_bias, affine", [(True, True), (False, True), (True, False)])
def test_fold_batch_norm(rng, weight_shape, with_bias, affine):
    o = weight_shape[0]
    w = sparse_weight(weight_shape, 0.9, rng)
    b = rng.standard_normal(o).astype(np.float32) if with_bias else None
    mean, var = rng.standard_normal(o), rng.random(o) + 0.1
    gamma, beta = (rng.standard_normal(o), rng.standard_normal(o)) if affine else (None, None)
    fw, fb = F.fold_batch_norm(w, b, mean, var, gamma, beta, 1e-3)
    assert fw.dtype == fb.dtype == np.float32 and fw.shape == w.shape and fb.shape == (o,)
    np.testing.assert_array_equal(fw == 0, w == 0)  # the sparsity pattern is kept
    rw, rb = ref.fold_batch_norm(w, b, mean, var, gamma, beta, 1e-3)
    assert_close(fw, rw)
    assert_close(fb, rb)
    if len(weight_shape) == 4:  # the folded layer equals conv then batch norm
        groups = 3 // weight_shape[1]
        x = rng.standard_normal((2, 3, 6, 6))
        assert_close(ref.conv2d(x, fw, fb, groups=groups),
                     ref.batch_norm(ref.conv2d(x, w, b, groups=groups), mean, var, gamma, beta,
                                    1e-3), check_dtype=False)  # float32-rounded weights


def _variant(x, kind):
    if kind == "read-only":
        x = x.copy()
        x.flags.writeable = False
        return x
    return {"float64": lambda: x.astype(np.float64), "float16": lambda: x.astype(np.float16),
            "non-contiguous": lambda: np.repeat(x, 2, axis=-1)[..., ::2],
            "list": x.tolist}[kind]()


@pytest.mark.parametrize("kind", ["float64", "float16", "read-only", "non-contiguous", "list"])
@pytest.mark.parametrize("name", list(ACTIVATIONS) + ["add", "batch_norm", "softmax", "prelu"])
def test_input_variants(rng, kind, name):
    """Other float dtypes and layouts give the result of their float32 values, untouched."""
    x32 = (rng.standard_normal((2, 3, 4, 5)) * 4).astype(np.float32)
    x = _variant(x32, kind)
    before = np.array(x, copy=True)
    stats = (np.zeros(3), np.ones(3))
    args = {"add": (x,), "batch_norm": stats, "softmax": (1,),
            "prelu": (np.full(3, 0.25),)}.get(name, ())
    kwargs = ACTIVATIONS.get(name, {})
    values = np.asarray(x, np.float32)
    ref_args = {"add": (values,)}.get(name, args)
    out = getattr(F, name)(x, *args, **kwargs)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert_close(out, getattr(ref, name)(values, *ref_args, **kwargs))
    np.testing.assert_array_equal(np.asarray(x), before)


def test_results_never_alias_the_input():
    x = np.ones((2, 3), np.float32)
    for name, kwargs in ACTIVATIONS.items():
        assert not np.shares_memory(getattr(F, name)(x, **kwargs), x), name
    assert not np.shares_memory(F.add(x, x), x)


X = np.zeros((2, 3, 4, 4), np.float32)
C3 = np.ones(3)


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.relu(np.arange(4)), TypeError, "relu: x: expected a float array.*int64"),
    (lambda: F.sigmoid(np.array([True])), TypeError, "dtype bool"),
    (lambda: F.tanh(np.ones(2, np.complex128)), TypeError, "complex128"),
    (lambda: F.silu(None), TypeError, "dtype object"),
    (lambda: F.leaky_relu(X, "0.1"), TypeError, "negative_slope must be a real number"),
    (lambda: F.leaky_relu(X, np.nan), ValueError, "negative_slope must be finite"),
    (lambda: F.prelu(X, np.ones(2)), ValueError, r"prelu: weight must have 1 element or one per "
                                                 r"channel \(x.shape\[1\]\), got 2"),
    (lambda: F.prelu(np.ones(3, np.float32), np.ones(3)), ValueError, "got 3 elements"),
    (lambda: F.prelu(X, np.ones((3, 1))), ValueError, r"prelu: weight: .*shape \(C\)"),
    (lambda: F.softmax(X, 4), ValueError, r"dim must be in \[-4, 3\].*got 4"),
    (lambda: F.softmax(X, 1.0), TypeError, "dim must be an int"),
    (lambda: F.softmax(np.float32(1), 0), ValueError, "at least 1 dimensions"),
    (lambda: F.add(X, X[:, :2]), ValueError, r"shapes \(2, 3, 4, 4\) and \(2, 2, 4, 4\) do not broadcast"),
    (lambda: F.add(X, X, "gelu"), ValueError, "activation must be one of"),
    (lambda: F.add(X, X.astype(int)), TypeError, "add: b: expected a float array"),
    (lambda: F.batch_norm(X[0, 0, 0], C3, C3), ValueError, "at least 2 dimensions"),
    (lambda: F.batch_norm(X, np.ones(4), C3), ValueError,
     r"batch_norm: running_mean: expected an array of shape \(3,\), got shape \(4,\)"),
    (lambda: F.batch_norm(X, C3, C3, weight=np.ones(2)), ValueError, "batch_norm: weight"),
    (lambda: F.batch_norm(X, C3, -C3), ValueError, "running_var \\+ eps must be positive"),
    (lambda: F.batch_norm(X, C3, C3, eps=-1.0), ValueError, "eps must be finite and >= 0"),
    (lambda: F.batch_norm(X, C3, np.arange(3)), TypeError, "running_var: expected a float"),
    (lambda: F.fold_batch_norm(np.ones((3, 2, 1, 1)), np.ones(2), C3, C3, None, None),
     ValueError, r"conv_bias: expected an array of shape \(3,\)"),
    (lambda: F.fold_batch_norm(np.ones((3, 2)), None, C3, C3, np.ones(4), None), ValueError,
     "fold_batch_norm: bn_weight"),
    (lambda: F.fold_batch_norm(np.ones(3), None, C3, C3, None, None), ValueError,
     "conv_weight: expected an array with at least 2 dimensions"),
    (lambda: F.fold_batch_norm(np.ones((3, 2)), None, C3, C3 * 0, None, None, eps=0.0),
     ValueError, "running_var \\+ eps must be positive"),
])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
