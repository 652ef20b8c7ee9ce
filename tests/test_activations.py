"""The fused activations (sigmoid, silu, hardswish, hardsigmoid beside relu and relu6) at every
SIMD level this CPU has, against PyTorch in float64: standalone (one compiled pass), in every
kernel family's epilogue, and fused by ``prepare`` into Conv2d(+BatchNorm2d) and Linear.

Accuracy (docs/GUARANTEES.md): relative error at most SIGMOID_RTOL for sigmoid and silu (the
vector exp of fscnn_level.h, or expf at the baseline level) and HARD_RTOL for the hard ones,
wherever the float64 result is at least TINY in magnitude; below that (float32's exp
underflows: torch's float32 silu(-100) is -0.0 as well) the absolute error is at most TINY.
Special values (+-inf, NaN, -0.0) give exactly torch's result.
"""
import numpy as np
import pytest

import fscnn.functional as F
from conftest import assert_close, sparse_weight, torch_or_skip
from fscnn import _config, nn
from fscnn.ops import Conv2dOp, LinearOp

torch = torch_or_skip()
TF = torch.nn.functional

NEW = ["sigmoid", "silu", "hardswish", "hardsigmoid"]
TORCH = {"relu": TF.relu, "relu6": TF.relu6, "sigmoid": torch.sigmoid, "silu": TF.silu,
         "hardswish": TF.hardswish, "hardsigmoid": TF.hardsigmoid}
SIGMOID_RTOL = 4e-7   # measured 1.8e-7 sigmoid, 2.1e-7 silu (AVX2 and expf alike)
HARD_RTOL = 2.5e-7    # the roundings of x + 3, the product and the division by 6
TINY = 1e-30
RTOL = {"sigmoid": SIGMOID_RTOL, "silu": SIGMOID_RTOL, "hardswish": HARD_RTOL,
        "hardsigmoid": HARD_RTOL}
SPECIAL = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 1e30, -1e30, 88.5, -88.5, 87.0, -87.0,
                    -3.0, 3.0, -2.9999998, 3.0000002, 1e-40, -1e-40], np.float32)


def _ref(name, x):
    """torch's float64 activation of float32 ``x``, as float64."""
    return TORCH[name](torch.from_numpy(x.astype(np.float64))).numpy()


def _check_accuracy(name, y, x):
    ref = _ref(name, x)
    y = y.astype(np.float64)
    assert np.array_equal(np.isnan(y), np.isnan(ref)), name
    ok = np.isfinite(ref)
    assert np.array_equal(y[~ok & ~np.isnan(ref)], ref[~ok & ~np.isnan(ref)])
    big = ok & (np.abs(ref) >= TINY)
    rel = np.abs(y[big] - ref[big]) / np.abs(ref[big])
    assert rel.max() <= RTOL[name], f"{name}: relative error {rel.max():.3g}"
    assert np.abs(y[ok & ~big] - ref[ok & ~big]).max(initial=0) <= TINY


@pytest.mark.parametrize("name", NEW)
def test_standalone_accuracy(name, simd_level, rng):
    x = np.concatenate([np.linspace(-100, 100, 400_001, dtype=np.float32),
                        (rng.standard_normal(10_000) * 4).astype(np.float32), SPECIAL])
    y = getattr(F, name)(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    _check_accuracy(name, y, x)
    # special values: exactly torch's, including the sign of zero
    s = getattr(F, name)(SPECIAL)
    t = TORCH[name](torch.from_numpy(SPECIAL)).numpy()
    np.testing.assert_array_equal(s[[0, 1, 2, 3, 4]], t[[0, 1, 2, 3, 4]])
    assert np.array_equal(np.signbit(s[[3, 4]]), np.signbit(t[[3, 4]])), (s, t)


def test_standalone_shapes_and_tails(simd_level, rng):
    # runs of every length up to 3 vectors, from aligned and misaligned starts: the tail goes
    # through a padded vector, so each element gets the bits the whole-array pass gives it
    x = (rng.standard_normal(200) * 5).astype(np.float32)
    for name in NEW:
        f = getattr(F, name)
        whole = f(x)
        for start in (0, 1, 3):
            for n in range(0, 49):
                part = f(x[start:start + n])
                np.testing.assert_array_equal(part, whole[start:start + n])
    grid = x[:24].reshape(2, 3, 4)[:, ::2]  # non-contiguous, 3-d
    np.testing.assert_array_equal(F.silu(grid), F.silu(np.ascontiguousarray(grid)))
    assert F.silu(np.float32(1.5)).shape == F.relu(np.float32(1.5)).shape
    assert F.sigmoid(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_standalone_large_array_threads(rng):
    # several ELEMENTWISE_CHUNKs: the OpenMP path; 1 and 2 threads give the same bits
    x = (rng.standard_normal(100_003) * 6).astype(np.float32)
    with _config.threads(1):
        one = F.silu(x)
    with _config.threads(2):
        two = F.silu(x)
    np.testing.assert_array_equal(one, two)
    _check_accuracy("silu", two, x)


@pytest.mark.parametrize("name", NEW)
def test_add_with_activation(name, rng):
    a = (rng.standard_normal((2, 5, 7)) * 4).astype(np.float32)
    b = (rng.standard_normal((2, 5, 7)) * 4).astype(np.float32)
    _check_accuracy(name, F.add(a, b, name), a + b)
    c = b[:1, :, :1]  # broadcast path
    _check_accuracy(name, F.add(a, c, name), a + c)


def _torch_conv(x, w, b, **hp):
    t = torch.from_numpy
    return TF.conv2d(t(x.astype(np.float64)), t(w.astype(np.float64)),
                     t(b.astype(np.float64)), **hp)


# kernel, (C, O, H, W, k, stride, padding, groups), sparsity: every kernel family, the sparse
# kernel's pointwise variant (1x1 stride 1) included
CONV_CASES = [
    ("sparse", (8, 16, 11, 13, 3, 1, 1, 1), 0.7),
    ("sparse", (24, 20, 9, 10, 1, 1, 0, 1), 0.8),      # pointwise_impl.h
    ("sparse", (6, 8, 12, 12, 3, 2, 1, 1), 0.5),
    ("dense", (8, 12, 9, 11, 3, 1, 1, 1), 0.0),
    ("dense", (16, 12, 7, 9, 1, 1, 0, 1), 0.0),        # GEMM in place, the epilogue in place
    ("depthwise", (12, 12, 10, 11, 3, 1, 1, 12), 0.0),
    ("depthwise", (8, 8, 9, 9, 5, 2, 2, 8), 0.3),
    ("winograd", (5, 7, 13, 11, 3, 1, 1, 1), 0.0),
]


@pytest.mark.parametrize("activation", NEW)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}_{c[1]}" if isinstance(
    c, tuple) else str(c))
def test_conv_kernels_fuse_each_activation(case, activation, simd_level, rng):
    kernel, (c, o, h, w, k, s, p, g), sparsity = case
    x = (rng.standard_normal((2, c, h, w)) * 3).astype(np.float32)
    wt = sparse_weight((o, c // g, k, k), sparsity, rng)
    b = rng.standard_normal(o).astype(np.float32)
    op = Conv2dOp(wt, b, stride=s, padding=p, groups=g, activation=activation, kernel=kernel)
    assert op.kernel_for(x.shape) == kernel
    ref = TORCH[activation](_torch_conv(x, wt, b, stride=s, padding=p, groups=g)).numpy()
    assert_close(op(x), ref, rtol=1e-5 if kernel == "winograd" else None)


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
@pytest.mark.parametrize("activation", ["silu", "hardswish"])
def test_fused_pool_comes_after_the_activation(kernel, activation, simd_level, rng):
    # silu and hardswish are not monotonic: max-pooling before them gives other values
    x = (rng.standard_normal((1, 6, 12, 10)) * 3).astype(np.float32)
    wt = sparse_weight((8, 6, 3, 3), 0.5, rng)
    b = rng.standard_normal(8).astype(np.float32) - 2
    op = Conv2dOp(wt, b, padding=1, activation=activation, kernel=kernel, pool="max2x2")
    conv = _torch_conv(x, wt, b, padding=1)
    ref = TF.max_pool2d(TORCH[activation](conv), 2).numpy()
    wrong = TORCH[activation](TF.max_pool2d(conv, 2)).numpy()
    assert np.abs(ref - wrong).max() > 0.1  # the case tells the two orders apart
    assert_close(op(x), ref)


@pytest.mark.parametrize("activation", NEW)
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_linear_kernels_fuse_each_activation(kernel, activation, simd_level, rng):
    w = sparse_weight((37, 50), 0.6, rng)  # 37 outputs: a tail after the vectors
    b = rng.standard_normal(37).astype(np.float32)
    x = (4 * rng.standard_normal((3, 50))).astype(np.float32)
    ref = TF.linear(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(
        w.astype(np.float64)), torch.from_numpy(b.astype(np.float64)))
    y = LinearOp(w, b, activation=activation, kernel=kernel)(x)
    assert_close(y, TORCH[activation](ref).numpy())


def test_unknown_activation_names_the_layer(rng):
    w = sparse_weight((4, 3, 3, 3), 0.0, rng)
    with pytest.raises(ValueError, match="stem: activation must be one of.*'silu'.*'mish'"):
        Conv2dOp(w, activation="mish", name="stem")
    with pytest.raises(ValueError, match="head: activation must be one of"):
        LinearOp(w.reshape(4, -1), activation="swish", name="head")


def _randomize(net, rng):
    for m in net.modules():
        state = {}
        for key, value in m.state_dict().items():
            if key == "running_var" or (isinstance(m, nn.BatchNorm2d) and key == "weight"):
                state[key] = rng.uniform(0.5, 1.5, value.shape)
            elif key == "weight" and value.ndim > 1:
                state[key] = rng.standard_normal(value.shape) / np.sqrt(np.prod(value.shape[1:]))
            else:
                state[key] = rng.normal(0, 0.3, value.shape)
        if state and not list(m.children()):
            m.load_state_dict(state)


def _to_torch(net):
    """The same network in torch, float64, with fscnn's weights."""
    layers = []
    for m in net:
        name = type(m).__name__
        if name == "Conv2d":
            t = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                m.padding, groups=m.groups)
        elif name == "Linear":
            t = torch.nn.Linear(m.in_features, m.out_features)
        elif name == "BatchNorm2d":
            t = torch.nn.BatchNorm2d(m.num_features)
        elif name == "Hardsigmoid" and m._fused_activation is None:
            t = None
        else:
            t = getattr(torch.nn, name)()
        if t is not None:
            t.load_state_dict({k: torch.from_numpy(np.array(v))
                               for k, v in m.state_dict().items()})
            layers.append(t)
        else:
            layers.append(m)  # ONNX-style hardsigmoid: fscnn's own, applied in float64
    return layers


def test_prepared_mobile_blocks_fuse_and_match_torch(rng):
    # an EfficientNet / MobileNetV3 style stack: stem+BN+SiLU, depthwise+BN+Hardswish,
    # pointwise+Sigmoid, Hardsigmoid; Linear+SiLU, Linear+Hardsigmoid (torch's, fused) and a
    # Hardsigmoid with ONNX's alpha=0.2, which is not fused
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.SiLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 24, 1), nn.Sigmoid(),
        nn.Conv2d(24, 8, 3, padding=1), nn.Hardsigmoid(),
        nn.Conv2d(8, 8, 1), nn.Hardsigmoid(alpha=0.2, beta=0.5),
        nn.Flatten(), nn.Linear(8 * 64, 20), nn.SiLU(), nn.Linear(20, 10), nn.Hardsigmoid())
    _randomize(net, rng)
    x = (rng.standard_normal((2, 3, 16, 16)) * 2).astype(np.float32)
    expected = x.astype(np.float64)
    with torch.no_grad():
        t = torch.from_numpy(expected)
        for layer in _to_torch(net):
            if isinstance(layer, torch.nn.Module):
                t = layer.double().eval()(t)
            else:
                t = torch.from_numpy(0.2 * t.numpy() + 0.5).clamp(0, 1)
    unprepared = net(x)
    net.prepare(input_shape=x.shape)
    assert [row.layers for row in net.plan()] == [
        "Conv2d+BatchNorm2d+SiLU", "Conv2d+BatchNorm2d+Hardswish", "Conv2d+Sigmoid",
        "Conv2d+Hardsigmoid", "Conv2d", "Linear+SiLU", "Linear+Hardsigmoid"]
    assert_close(net(x), t.numpy())
    assert_close(unprepared, t.numpy())
