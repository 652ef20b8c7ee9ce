"""Odd but valid inputs give the right answer (float64 reference, PyTorch when installed).

Odd: other float dtypes (float64, float16, long double, big-endian), non-contiguous,
channels-last and reversed views, read-only arrays, memory-mapped weights, nested lists, empty
batches, 1x1 images, strides past the input, all-zero weights, NaN and infinity. Also checked:
inputs are never written to, and a result stays valid after later calls (no shared scratch).
"""
import numpy as np
import pytest

import fscnn.functional as F
import reference as ref
from conftest import assert_close, sparse_weight, to_torch, torch_or_skip
from fscnn import models, nn
from fscnn.ops import Conv2dOp, LinearOp
from fscnn.sparse import CSRMatrix, SparseConvWeight

KERNELS = ("sparse", "dense")


def _memmap(tmp_path, a, name="array"):
    path = tmp_path / f"{name}.npy"
    np.save(path, a)
    return np.load(path, mmap_mode="r")


# name -> (make the odd variant of a float64 array a, dtype the values are rounded to)
# Every variant holds the values of a (rounded to that dtype), so the reference is computed
# on a.astype(dtype).
VARIANTS = {
    "float64": (lambda a, tmp: a, np.float64),
    "float16": (lambda a, tmp: a.astype(np.float16), np.float16),
    "longdouble": (lambda a, tmp: a.astype(np.longdouble), np.float64),
    "big-endian": (lambda a, tmp: a.astype(">f4"), np.float32),
    "sliced": (lambda a, tmp: np.repeat(a, 2, axis=-1).astype(np.float32)[..., ::2], np.float32),
    "channels-last": (lambda a, tmp: a.astype(np.float32).transpose(0, 2, 3, 1).copy()
                      .transpose(0, 3, 1, 2), np.float32),
    "fortran": (lambda a, tmp: np.asfortranarray(a, dtype=np.float32), np.float32),
    "reversed": (lambda a, tmp: a.astype(np.float32)[..., ::-1, ::-1].copy()[..., ::-1, ::-1],
                 np.float32),
    "read-only": (lambda a, tmp: _read_only(a.astype(np.float32)), np.float32),
    "memmap": (lambda a, tmp: _memmap(tmp, a.astype(np.float32)), np.float32),
    "list": (lambda a, tmp: a.tolist(), np.float64),
}


def _read_only(a):
    a.setflags(write=False)
    return a


def _variant(name, a, tmp_path):
    make, dtype = VARIANTS[name]
    x = make(a, tmp_path)
    np.testing.assert_array_equal(np.asarray(x, dtype=np.float64),
                                  a.astype(dtype).astype(np.float64))
    return x, a.astype(dtype)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_conv_input_variants(variant, kernel, rng, tmp_path):
    a = rng.standard_normal((2, 4, 9, 7))
    x, exact = _variant(variant, a, tmp_path)
    w = sparse_weight((6, 2, 3, 3), 0.5, rng)
    b = rng.standard_normal(6).astype(np.float32)
    hp = dict(stride=(2, 1), padding=(1, 0, 2, 1), groups=2)
    y = Conv2dOp(w, b, kernel=kernel, **hp)(x)
    assert_close(y, ref.conv2d(exact, w, b, **hp))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op, args", [
    ("max_pool2d", (3, 2, 1)), ("avg_pool2d", (3, 2, 1, True, False)),
    ("adaptive_avg_pool2d", ((3, 2),)), ("adaptive_max_pool2d", (2,)),
])
def test_pool_input_variants(op, args, variant, rng, tmp_path):
    x, exact = _variant(variant, rng.standard_normal((2, 3, 9, 8)), tmp_path)
    assert_close(getattr(F, op)(x, *args), getattr(ref, op)(exact, *args))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "channels-last"])
def test_linear_input_variants(variant, kernel, rng, tmp_path):
    x, exact = _variant(variant, rng.standard_normal((3, 5)), tmp_path)
    w = sparse_weight((4, 5), 0.5, rng)
    assert_close(LinearOp(w, kernel=kernel)(x), ref.linear(exact, w))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("form", ["memmap", "read-only", "float64", "int", "fortran",
                                  "big-endian", "sliced"])
def test_weight_variants(form, kernel, rng, tmp_path):
    w = sparse_weight((4, 3, 3, 3), 0.5, rng)
    if form == "int":
        w = np.round(w * 4).astype(np.float32)
    odd = {"memmap": lambda: _memmap(tmp_path, w), "read-only": lambda: _read_only(w.copy()),
           "float64": lambda: w.astype(np.float64), "int": lambda: w.astype(np.int16),
           "fortran": lambda: np.asfortranarray(w), "big-endian": lambda: w.astype(">f4"),
           "sliced": lambda: np.repeat(w, 2, axis=0)[::2]}[form]()
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    expected = ref.conv2d(x, w, padding=1)
    assert_close(Conv2dOp(odd, padding=1, kernel=kernel)(x), expected)
    assert_close(F.conv2d(x, odd, padding=1, kernel=kernel), expected)
    w2 = odd.reshape(4, 27) if form != "fortran" else np.asfortranarray(w.reshape(4, 27))
    assert_close(LinearOp(w2, kernel=kernel)(x[:, :, :3, :3].reshape(1, 27)),
                 ref.linear(x[:, :, :3, :3].reshape(1, 27), w.reshape(4, 27)))


def test_memory_mapped_checkpoint_loads_into_a_model(rng, tmp_path):
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    state = {k: _memmap(tmp_path, rng.standard_normal(v.shape).astype(np.float32), k)
             for k, v in seq.state_dict().items()}
    state["1.running_var"] = np.abs(state["1.running_var"]) + 0.5
    seq.load_state_dict(state)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    y = ref.conv2d(x, state["0.weight"], state["0.bias"], padding=1)
    y = ref.batch_norm(y, state["1.running_mean"], state["1.running_var"], state["1.weight"],
                       state["1.bias"])
    assert_close(seq(x), np.maximum(y, 0))


# ------------------------------------------------------------------ empty and tiny inputs
@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_batch_through_operators(kernel, rng):
    x = np.zeros((0, 4, 6, 6), np.float32)
    w = sparse_weight((5, 4, 3, 3), 0.5, rng)
    assert Conv2dOp(w, padding=1, stride=2, kernel=kernel)(x).shape == (0, 5, 3, 3)
    assert LinearOp(sparse_weight((3, 4), 0.5, rng), kernel=kernel)(x[:, :, 0, 0]).shape == (0, 3)
    assert F.max_pool2d(x, 2).shape == (0, 4, 3, 3)
    assert F.adaptive_avg_pool2d(x, 1).shape == (0, 4, 1, 1)


def test_empty_batch_through_a_sequential():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5))
    y = seq(np.zeros((0, 3, 8, 8), np.float32))
    assert y.shape == (0, 5) and y.dtype == np.float32


@pytest.mark.parametrize("build", [models.resnet18, models.vgg11, models.mobilenet_v2])
def test_empty_batch_through_zoo_models(build):
    assert build(num_classes=10)(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 10)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("hp", [dict(padding=1), dict(padding=1, stride=2),
                                dict(padding=(1, 1, 1, 1), dilation=1),
                                dict(padding="same"), dict(padding=(0, 2, 2, 0))],
                         ids=["pad1", "pad1-stride2", "pad4", "same", "one-sided"])
def test_one_by_one_images(hp, kernel, rng):
    x = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
    w = sparse_weight((4, 3, 3, 3), 0.5, rng)
    assert_close(Conv2dOp(w, kernel=kernel, **hp)(x), ref.conv2d(x, w, **hp))


def test_one_by_one_images_through_pools_and_a_model(rng):
    x = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
    assert_close(F.max_pool2d(x, 3, 2, 1), ref.max_pool2d(x, 3, 2, 1))
    assert_close(F.avg_pool2d(x, 3, 2, 1, True), ref.avg_pool2d(x, 3, 2, 1, True))
    assert_close(F.adaptive_avg_pool2d(x, 2), ref.adaptive_avg_pool2d(x, 2))
    assert models.resnet18(num_classes=10)(x).shape == (2, 10)


@pytest.mark.parametrize("stride", [7, 9, (64, 1)])
@pytest.mark.parametrize("kernel", KERNELS)
def test_strides_past_the_input(stride, kernel, rng):
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = sparse_weight((4, 3, 3, 3), 0.5, rng)
    assert_close(Conv2dOp(w, stride=stride, kernel=kernel)(x), ref.conv2d(x, w, stride=stride))


def test_kernel_covering_the_whole_padded_input(rng):
    x = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    w = sparse_weight((3, 2, 5, 4), 0.3, rng)
    for kernel in KERNELS:
        y = Conv2dOp(w, padding=(1, 1, 0, 0), kernel=kernel)(x)
        assert y.shape == (1, 3, 1, 1)
        assert_close(y, ref.conv2d(x, w, padding=(1, 1, 0, 0)))


# ------------------------------------------------------------------ all-zero weights
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_all_zero_weights_give_the_activated_bias(kernel, activation, rng):
    b = np.array([-1.0, 0.5, 7.0], np.float32)
    expected = {None: b, "relu": np.maximum(b, 0), "relu6": np.clip(b, 0, 6)}[activation]
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    y = Conv2dOp(np.zeros((3, 4, 3, 3)), b, activation=activation, kernel=kernel)(x)
    np.testing.assert_array_equal(y, np.broadcast_to(expected[:, None, None], (2, 3, 3, 3)))
    lin = LinearOp(np.zeros((3, 4)), b, activation=activation, kernel=kernel)(x[:, :, 0, 0])
    np.testing.assert_array_equal(lin, np.broadcast_to(expected, (2, 3)))


@pytest.mark.parametrize("kernel", KERNELS)
def test_some_output_channels_all_zero(kernel, rng):
    w = sparse_weight((6, 4, 3, 3), 0.5, rng)
    w[[0, 3, 5]] = 0
    x = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    y = Conv2dOp(w, padding=1, kernel=kernel)(x)
    assert_close(y, ref.conv2d(x, w, padding=1))
    assert not y[:, [0, 3, 5]].any()


# ------------------------------------------------------------------ NaN and infinity
def _special_input(rng):
    x = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    x[0, 1, 3, 3] = np.nan
    x[0, 2, 0, 6] = np.inf
    x[0, 3, 6, 0] = -np.inf
    return x


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_dense_kernel_propagates_nan_and_inf_as_torch(activation, rng):
    torch = torch_or_skip()
    x = _special_input(rng)
    w = sparse_weight((5, 4, 3, 3), 0.5, rng)
    t = torch.nn.functional.conv2d(to_torch(x), to_torch(w), padding=1)
    t = {None: t, "relu": torch.relu(t), "relu6": torch.nn.functional.relu6(t)}[activation]
    y = Conv2dOp(w, padding=1, activation=activation, kernel="dense")(x)
    assert_close(y, t.numpy(), rtol=1e-4)  # checks NaN and inf positions exactly


def test_sparse_kernel_propagates_nan_only_through_non_zero_weights(rng):
    """The sparse kernel skips pruned weights, so it never computes 0 * NaN: a NaN or infinite
    input reaches exactly the outputs a non-zero weight connects it to (the dense kernel and
    torch also make NaN of the others, 0 * inf = NaN). Finite outputs match the reference."""
    x = _special_input(rng)
    w = sparse_weight((5, 4, 3, 3), 0.5, rng)
    y = Conv2dOp(w, padding=1, kernel="sparse")(x)
    special = ~np.isfinite(x)
    reached = ref.conv2d(special.astype(np.float64), (w != 0).astype(np.float64), padding=1) > 0
    assert np.array_equal(~np.isfinite(y), reached)
    finite_x = np.where(special, 0, x)
    assert_close(y[~reached], ref.conv2d(finite_x, w, padding=1)[~reached])
    # with no zero weights both kernels agree with torch's dense semantics
    dense_w = sparse_weight((5, 4, 3, 3), 0.0, rng)
    assert_close(Conv2dOp(dense_w, padding=1, kernel="sparse")(x),
                 ref.conv2d(x, dense_w, padding=1))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_linear_keeps_nan_through_fused_activations(kernel, activation, rng):
    x = rng.standard_normal((2, 6)).astype(np.float32)
    x[0, 2] = np.nan
    w = sparse_weight((3, 6), 0.0, rng)
    y = LinearOp(w, activation=activation, kernel=kernel)(x)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


def test_sequential_with_nan_matches_torch(rng):
    torch = torch_or_skip()
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    seq.prepare(kernel="dense")
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    tseq = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2))
    tseq.load_state_dict({k: to_torch(v) for k, v in seq.state_dict().items()})
    with torch.no_grad():
        assert_close(seq(x), tseq(to_torch(x)).numpy(), rtol=1e-4)


# ------------------------------------------------------------------ unbatched inputs
UNBATCHED_LAYERS = [
    lambda n: n.Conv2d(3, 4, 3, stride=2, padding=1),
    lambda n: n.MaxPool2d(3, 2, 1),
    lambda n: n.AvgPool2d(2),
    lambda n: n.AdaptiveAvgPool2d((2, 3)),
    lambda n: n.AdaptiveMaxPool2d(1),
    lambda n: n.Sequential(n.Conv2d(3, 4, 3, padding=1), n.ReLU(), n.MaxPool2d(2)),  # fused
]


@pytest.mark.parametrize("make", UNBATCHED_LAYERS,
                         ids=["conv", "maxpool", "avgpool", "adaptive-avg", "adaptive-max",
                              "fused-conv-relu-pool"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_image_layers_take_unbatched_images_like_torch(make, kernel, rng):
    torch = torch_or_skip()
    layer = make(nn).prepare(kernel=kernel)
    reference = make(torch.nn).eval()
    reference.load_state_dict({k: to_torch(v) for k, v in layer.state_dict().items()})
    x = rng.standard_normal((3, 9, 10)).astype(np.float32)
    y = layer(x)
    with torch.no_grad():
        expected = reference(to_torch(x)).numpy()
    assert y.shape == expected.shape and y.ndim == 3
    assert_close(y, expected)
    np.testing.assert_array_equal(y, layer(x[None])[0])


def test_batch_norm_takes_unbatched_images(rng):
    """torch's BatchNorm2d refuses (C, H, W); fscnn's takes it, so that whole models do."""
    bn = nn.BatchNorm2d(3)
    bn.load_state_dict({"weight": rng.random(3) + 0.5, "bias": rng.standard_normal(3),
                        "running_mean": rng.standard_normal(3), "running_var": rng.random(3) + 1})
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    assert_close(bn(x), bn(x[None])[0])
    assert bn(x).shape == (3, 4, 5)
    chain = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU6())
    assert chain.plan()[0].layers == "Conv2d+BatchNorm2d+ReLU6"  # folded and fused
    np.testing.assert_array_equal(chain(x), chain(x[None])[0])


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "mobilenet_v2"])
def test_zoo_models_take_one_unbatched_image(name, rng):
    model = getattr(models, name)(num_classes=10)
    x = rng.standard_normal((3, 32, 32)).astype(np.float32)
    y = model(x)
    assert y.shape == (10,)
    np.testing.assert_array_equal(y, model(x[None])[0])


def test_unbatched_inputs_of_the_wrong_rank_are_refused():
    with pytest.raises(nn.LayerInputError,
                       match=r"expected a 4-D input \(N, C, H, W\) or an unbatched \(C, H, W\)"):
        nn.Conv2d(3, 4, 3)(np.ones((8, 8), np.float32))
    with pytest.raises(nn.LayerInputError, match=r"expected 3 input channels, got 2"):
        nn.Conv2d(3, 4, 3)(np.ones((2, 8, 8), np.float32))


def test_rank_agnostic_layers_accept_unbatched_inputs(rng):
    x = rng.standard_normal(8).astype(np.float32)
    lin = nn.Linear(8, 3)
    assert_close(lin(x), ref.linear(x[None], lin.weight, lin.bias)[0])
    assert_close(nn.ReLU()(x), np.maximum(x, 0))
    assert nn.Flatten(0)(rng.standard_normal((3, 8, 8))).shape == (192,)


# ------------------------------------------------------------------ no aliasing, no writes
@pytest.mark.parametrize("call", [
    lambda x: Conv2dOp(np.ones((4, 3, 3, 3)), kernel="sparse")(x),
    lambda x: Conv2dOp(np.ones((4, 3, 3, 3)), kernel="dense")(x),
    lambda x: F.max_pool2d(x, 2), lambda x: F.relu(x), lambda x: nn.ReLU(inplace=True)(x),
    lambda x: F.add(x, x, activation="relu"), lambda x: F.batch_norm(x, np.ones(3), np.ones(3)),
    lambda x: models.resnet18(num_classes=4)(x),
], ids=["conv-sparse", "conv-dense", "max_pool2d", "relu", "ReLU-inplace", "add", "batch_norm",
        "resnet18"])
def test_inputs_are_never_modified(call, rng):
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    before = x.copy()
    call(x)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("make", [
    lambda: Conv2dOp(np.ones((4, 3, 3, 3)), kernel="sparse"),
    lambda: Conv2dOp(np.ones((4, 3, 3, 3)), kernel="dense"),
    lambda: (lambda x: F.avg_pool2d(x, 2)),
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
], ids=["conv-sparse", "conv-dense", "avg_pool2d", "sequential"])
def test_results_stay_valid_after_later_calls(make, rng):
    call = make()
    x1, x2 = (rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(2))
    y1 = call(x1)
    kept = y1.copy()
    call(x2)
    call(x2[:, :, :6, :7])
    np.testing.assert_array_equal(y1, kept)


# ------------------------------------------------------------------ sparse formats
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_csr_from_strided_views_works(kind, rng):
    w = sparse_weight((3, 9), 0.5, rng)
    m = CSRMatrix.from_dense(w)
    strided = CSRMatrix(*(np.repeat(a, 2)[::2] for a in (m.indptr, m.indices, m.data)), m.shape)
    x = rng.standard_normal((2, 9)).astype(np.float32)
    if kind == "linear":
        assert_close(LinearOp(strided, kernel="sparse")(x), ref.linear(x, w))
    else:
        x4 = x.reshape(2, 1, 3, 3)
        y = Conv2dOp(SparseConvWeight(strided, (1, 3, 3)), kernel="sparse")(x4)
        assert_close(y, ref.conv2d(x4, w.reshape(3, 1, 3, 3)))


def test_csr_with_explicit_zeros_and_empty_rows(rng):
    indptr = np.array([0, 2, 2, 4], np.int64)
    indices = np.array([0, 3, 1, 2], np.uint16)
    data = np.array([0.0, 2.0, -1.0, 0.0], np.float32)
    m = CSRMatrix(indptr, indices, data, (3, 4))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    for kernel in KERNELS:
        assert_close(LinearOp(m, kernel=kernel)(x), ref.linear(x, m.to_dense()))
