"""The layer graph: layers against the float64 reference and torch.nn, the module contract
(registration, state_dict, strict loading, repr, containers), the call contract, and
preparation (folding, fusion, invalidation, per-layer kernels, plan)."""
from collections import OrderedDict

import numpy as np
import pytest

import fscnn
import reference as R
from conftest import assert_close, import_or_skip, torch_or_skip
from fscnn import nn

# (id, constructor taking a namespace with torch.nn's layer names, input shape, reference)
# The same constructor builds the fscnn layer and the torch layer.
LAYERS = [
    ("conv3x3", lambda n: n.Conv2d(4, 8, 3, padding=1), (2, 4, 9, 9),
     lambda m, x: R.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)),
    ("conv_stride2_nobias", lambda n: n.Conv2d(4, 8, 3, stride=2, padding=1, bias=False),
     (2, 4, 10, 11),
     lambda m, x: R.conv2d(x, m.weight, None, m.stride, m.padding, m.dilation, m.groups)),
    ("conv_same_dilated", lambda n: n.Conv2d(4, 6, (3, 4), padding="same", dilation=2),
     (1, 4, 12, 10),
     lambda m, x: R.conv2d(x, m.weight, m.bias, 1, R.conv_padding("same", (3, 4), (2, 2)),
                           (2, 2))),
    ("conv_groups_valid", lambda n: n.Conv2d(4, 6, 3, groups=2, padding="valid"), (3, 4, 7, 7),
     lambda m, x: R.conv2d(x, m.weight, m.bias, 1, 0, 1, 2)),
    ("conv_depthwise", lambda n: n.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
     (2, 8, 9, 9),
     lambda m, x: R.conv2d(x, m.weight, m.bias, 2, 1, 1, 8)),
    ("conv1x1", lambda n: n.Conv2d(5, 7, 1), (2, 5, 6, 6),
     lambda m, x: R.conv2d(x, m.weight, m.bias)),
    ("conv_asymmetric", lambda n: n.Conv2d(3, 4, (1, 3), stride=(2, 1), padding=(0, 2),
                                           dilation=(1, 2)), (1, 3, 8, 9),
     lambda m, x: R.conv2d(x, m.weight, m.bias, (2, 1), (0, 2), (1, 2))),
    ("linear", lambda n: n.Linear(16, 7), (3, 16), lambda m, x: R.linear(x, m.weight, m.bias)),
    ("linear_3d_nobias", lambda n: n.Linear(16, 7, bias=False), (2, 3, 16),
     lambda m, x: R.linear(x.reshape(-1, 16), m.weight).reshape(2, 3, 7)),
    ("batchnorm", lambda n: n.BatchNorm2d(6), (2, 6, 5, 4),
     lambda m, x: R.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, m.eps)),
    ("batchnorm_no_affine", lambda n: n.BatchNorm2d(6, eps=1e-3, affine=False), (2, 6, 5, 4),
     lambda m, x: R.batch_norm(x, m.running_mean, m.running_var, eps=1e-3)),
    ("batchnorm_batch_stats", lambda n: n.BatchNorm2d(6, track_running_stats=False),
     (3, 6, 5, 4),
     lambda m, x: R.batch_norm(x, x.mean((0, 2, 3)), x.var((0, 2, 3)), m.weight, m.bias)),
    ("relu", lambda n: n.ReLU(), (2, 3, 4, 5), lambda m, x: R.relu(x)),
    ("relu6", lambda n: n.ReLU6(inplace=True), (2, 3, 4, 5), lambda m, x: R.relu6(x)),
    ("leaky_relu", lambda n: n.LeakyReLU(0.2), (2, 3, 4, 5), lambda m, x: R.leaky_relu(x, 0.2)),
    ("prelu_shared", lambda n: n.PReLU(), (2, 3, 4, 5), lambda m, x: R.prelu(x, m.weight)),
    ("prelu_channels", lambda n: n.PReLU(3, init=0.1), (2, 3, 4, 5),
     lambda m, x: R.prelu(x, m.weight)),
    ("sigmoid", lambda n: n.Sigmoid(), (2, 3, 4, 5), lambda m, x: R.sigmoid(x)),
    ("tanh", lambda n: n.Tanh(), (2, 3, 4, 5), lambda m, x: R.tanh(x)),
    ("hardswish", lambda n: n.Hardswish(), (2, 3, 4, 5), lambda m, x: R.hardswish(x)),
    ("hardsigmoid", lambda n: n.Hardsigmoid(), (2, 3, 4, 5), lambda m, x: R.hardsigmoid(x)),
    ("silu", lambda n: n.SiLU(), (2, 3, 4, 5), lambda m, x: R.silu(x)),
    ("softmax", lambda n: n.Softmax(dim=1), (2, 3, 4, 5), lambda m, x: R.softmax(x, 1)),
    ("softmax_last", lambda n: n.Softmax(-1), (4, 10), lambda m, x: R.softmax(x, -1)),
    ("maxpool", lambda n: n.MaxPool2d(2), (2, 3, 8, 9), lambda m, x: R.max_pool2d(x, 2)),
    ("maxpool_padded", lambda n: n.MaxPool2d(3, 2, 1), (2, 3, 9, 8),
     lambda m, x: R.max_pool2d(x, 3, 2, 1)),
    ("maxpool_dilated_ceil", lambda n: n.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True),
     (1, 2, 10, 11), lambda m, x: R.max_pool2d(x, 3, 2, 1, 2, True)),
    ("avgpool_padded", lambda n: n.AvgPool2d(3, 2, 1), (2, 3, 9, 8),
     lambda m, x: R.avg_pool2d(x, 3, 2, 1)),
    ("avgpool_exclude_pad", lambda n: n.AvgPool2d(3, 2, 1, count_include_pad=False),
     (2, 3, 9, 8), lambda m, x: R.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    ("avgpool_ceil", lambda n: n.AvgPool2d(2, ceil_mode=True), (1, 2, 7, 7),
     lambda m, x: R.avg_pool2d(x, 2, ceil_mode=True)),
    ("avgpool_divisor", lambda n: n.AvgPool2d(3, divisor_override=5), (1, 2, 7, 7),
     lambda m, x: R.avg_pool2d(x, 3, divisor_override=5)),
    ("adaptive_avg", lambda n: n.AdaptiveAvgPool2d((7, 7)), (2, 3, 10, 13),
     lambda m, x: R.adaptive_avg_pool2d(x, (7, 7))),
    ("adaptive_avg_none", lambda n: n.AdaptiveAvgPool2d((3, None)), (2, 3, 10, 13),
     lambda m, x: R.adaptive_avg_pool2d(x, (3, None))),
    ("adaptive_max", lambda n: n.AdaptiveMaxPool2d(1), (2, 3, 5, 6),
     lambda m, x: R.adaptive_max_pool2d(x, 1)),
    ("adaptive_max_rect", lambda n: n.AdaptiveMaxPool2d((2, 3)), (2, 3, 5, 7),
     lambda m, x: R.adaptive_max_pool2d(x, (2, 3))),
    ("flatten", lambda n: n.Flatten(), (2, 3, 4, 5), lambda m, x: x.reshape(2, -1)),
    ("flatten_0_2", lambda n: n.Flatten(0, 2), (2, 3, 4, 5), lambda m, x: x.reshape(24, 5)),
    ("dropout", lambda n: n.Dropout(0.3), (2, 3), lambda m, x: x),
    ("identity", lambda n: n.Identity(), (2, 3, 4, 5), lambda m, x: x),
]
OP_LAYERS = {"conv3x3", "conv_stride2_nobias", "conv_same_dilated", "conv_groups_valid",
             "conv_depthwise", "conv1x1", "conv_asymmetric", "linear", "linear_3d_nobias"}
CASES = [pytest.param(make, shape, ref, kernel, id=f"{name}-{kernel}")
         for name, make, shape, ref in LAYERS
         for kernel in (("sparse", "dense") if name in OP_LAYERS else ("auto",))]


def randomize(layer, rng, sparsity=0.5):
    """Load random parameters into ``layer``: half-pruned weights, non-trivial batch norm."""
    state = {}
    for key, value in layer.state_dict().items():
        if key == "running_var" or (isinstance(layer, nn.BatchNorm2d) and key == "weight"):
            state[key] = rng.uniform(0.5, 1.5, value.shape)
        elif key == "weight" and value.ndim > 1:
            state[key] = rng.standard_normal(value.shape)
            state[key][rng.random(value.shape) < sparsity] = 0.0
        else:
            state[key] = rng.normal(0, 0.3, value.shape)
    layer.load_state_dict(state)
    return layer


@pytest.mark.parametrize("make, shape, ref, kernel", CASES)
def test_layer_matches_reference(make, shape, ref, kernel, rng):
    layer = randomize(make(nn), rng).prepare(kernel=kernel)
    x = rng.standard_normal(shape)
    out = layer(x)
    assert out.dtype == np.float32
    assert_close(out, ref(layer, x))


@pytest.mark.parametrize("make, shape, ref, kernel", CASES)
def test_layer_matches_torch(make, shape, ref, kernel, rng):
    torch = torch_or_skip()
    layer = randomize(make(nn), rng).prepare(kernel=kernel)
    reference = make(torch.nn).eval()
    reference.load_state_dict({k: torch.from_numpy(np.array(v))
                               for k, v in layer.state_dict().items()})
    x = rng.standard_normal(shape, dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert_close(layer(x), expected)
    assert repr(layer) == repr(reference)
    assert list(layer.state_dict()) == list(reference.state_dict())


def test_standalone_layer_loads_and_runs(rng):
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    m = nn.Conv2d(4, 8, 3, padding=1)
    m.load_state_dict({"weight": w, "bias": b})
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    assert_close(m(x), R.conv2d(x, w, b, padding=1))


# ---------------------------------------------------------------- call contract
def small_net():
    """Sequential net; "features.3" expects 64 input channels but receives 32."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32),
                                          nn.ReLU(), nn.Conv2d(64, 64, 3))
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.features(x).mean(axis=(2, 3)))
    return Net()


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.float32])
def test_input_dtypes_are_converted(dtype, rng):
    m = randomize(nn.Conv2d(3, 4, 3), rng)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    out = m(x)
    assert out.dtype == np.float32
    assert_close(out, R.conv2d(x.astype(np.float32), m.weight, m.bias))


def test_non_contiguous_and_read_only_inputs(rng):
    m = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), rng)
    base = rng.standard_normal((2, 6, 3, 12)).astype(np.float32)
    x = base.transpose(0, 2, 1, 3)[..., ::2]  # (2, 3, 6, 6), non-contiguous
    assert not x.flags.c_contiguous
    expected = R.relu(R.conv2d(x, m[0].weight, m[0].bias))
    assert_close(m(x), expected)
    frozen = np.ascontiguousarray(x)
    frozen.setflags(write=False)
    assert_close(m(frozen), expected)
    assert_close(m(x.tolist()), expected)


@pytest.mark.parametrize("bad", [np.zeros((1, 3, 8, 8), np.int32), np.zeros((1, 3, 8, 8), bool),
                                 np.zeros((1, 3, 8, 8), np.complex64)])
def test_non_float_input_raises_type_error(bad):
    with pytest.raises(TypeError, match="Conv2d.*dtype"):
        nn.Conv2d(3, 4, 3)(bad)


def test_wrong_channels_name_the_layer_in_the_model():
    with pytest.raises(ValueError, match=r"^features\.3 \(Conv2d\): expected 64 input "
                                         r"channels, got 32"):
        small_net()(np.zeros((1, 3, 8, 8)))


def test_errors_are_layer_input_errors():
    with pytest.raises(nn.LayerInputError, match=r"^Conv2d: expected a 4-D input"):
        nn.Conv2d(3, 4, 3)(np.zeros((8, 8)))
    with pytest.raises(nn.LayerInputError, match=r"^1 \(BatchNorm2d\): expected 4 input "
                                                 r"channels, got 3"):
        nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4))(np.zeros((1, 3, 2, 2)))
    net = nn.Sequential(OrderedDict(classifier=nn.Sequential(nn.Linear(12, 3))))
    with pytest.raises(nn.LayerInputError, match=r"^classifier\.0 \(Linear\): expected an "
                                                 r"input of shape \(\*, 12\)"):
        net(np.zeros((1, 100)))


def test_too_small_input_names_the_layer():
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), pool=nn.MaxPool2d(2)))
    with pytest.raises(nn.LayerInputError, match=r"^conv \(Conv2d\).*too small"):
        net(np.zeros((1, 1, 2, 5)))
    with pytest.raises(nn.LayerInputError, match=r"^pool \(MaxPool2d\).*too small"):
        net(np.zeros((1, 1, 3, 5)))
    with pytest.raises(nn.LayerInputError, match=r"^AdaptiveAvgPool2d: .*non-zero"):
        nn.AdaptiveAvgPool2d(1)(np.zeros((1, 1, 0, 5)))


def test_layer_takes_exactly_one_input():
    with pytest.raises(TypeError, match="one input"):
        nn.ReLU()(np.zeros(3), np.zeros(3))


# ---------------------------------------------------------------- constructor validation
@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.Conv2d(4, 8, 3, groups=3), ValueError, "in_channels .* divisible by groups"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), ValueError, "out_channels .* divisible by groups"),
    (lambda: nn.Conv2d(4, 8, 3, stride=2, padding="same"), ValueError, "strided"),
    (lambda: nn.Conv2d(4, 8, 3, padding="full"), ValueError, "padding"),
    (lambda: nn.Conv2d(4, 8, 3, padding=-1), ValueError, "padding"),
    (lambda: nn.Conv2d(4, 8, 0), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(4, 8, (3, 3, 3)), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(4, 8, 3, stride=0), ValueError, "stride"),
    (lambda: nn.Conv2d(4, 8, 3, dilation=(1, 0)), ValueError, "dilation"),
    (lambda: nn.Conv2d(0, 8, 3), ValueError, "in_channels"),
    (lambda: nn.Conv2d(4.0, 8, 3), TypeError, "in_channels"),
    (lambda: nn.Conv2d(4, 8, 3, padding_mode="reflect"), ValueError, "padding_mode"),
    (lambda: nn.Linear(0, 3), ValueError, "in_features"),
    (lambda: nn.Linear(3, True), TypeError, "out_features"),
    (lambda: nn.BatchNorm2d(4, eps=0), ValueError, "eps"),
    (lambda: nn.BatchNorm2d(4, momentum=2), ValueError, "momentum"),
    (lambda: nn.MaxPool2d(3, padding=2), ValueError, "padding"),
    (lambda: nn.MaxPool2d(2, return_indices=True), ValueError, "return_indices"),
    (lambda: nn.MaxPool2d(2, stride=0), ValueError, "stride"),
    (lambda: nn.AvgPool2d(2, divisor_override=0), ValueError, "divisor_override"),
    (lambda: nn.AdaptiveAvgPool2d(0), ValueError, "output_size"),
    (lambda: nn.AdaptiveMaxPool2d((1, 2, 3)), ValueError, "output_size"),
    (lambda: nn.Flatten(2, 1), ValueError, "start_dim"),
    (lambda: nn.Dropout(1.5), ValueError, "p must be"),
    (lambda: nn.PReLU(0), ValueError, "num_parameters"),
    (lambda: nn.Softmax(1.5), TypeError, "dim"),
])
def test_constructors_validate(make, error, match):
    with pytest.raises(error, match=match):
        make()


# ---------------------------------------------------------------- module contract
def composite(n):
    """A small torch-or-fscnn model using both positional and named Sequentials."""
    return n.Sequential(OrderedDict([
        ("stem", n.Sequential(n.Conv2d(3, 8, 3, padding=1, bias=False), n.BatchNorm2d(8),
                              n.ReLU(inplace=True), n.MaxPool2d(2))),
        ("body", n.Sequential(n.Conv2d(8, 8, 3, groups=2), n.ReLU6(), n.AvgPool2d(2))),
        ("flat", n.Flatten()),
        ("head", n.Sequential(n.Dropout(0.2), n.Linear(8, 5), n.Softmax(dim=1))),
    ]))


def test_composite_matches_torch_names_repr_and_outputs(rng):
    torch = torch_or_skip()
    model = composite(nn)
    randomize(model.stem[1], rng)
    reference = composite(torch.nn).eval()
    reference.load_state_dict({k: torch.from_numpy(np.array(v))
                               for k, v in model.state_dict().items()})
    assert repr(model) == repr(reference)
    assert [name for name, _ in model.named_modules()] == \
        [name for name, _ in reference.named_modules()]
    assert list(model.state_dict()) == list(reference.state_dict())
    x = rng.standard_normal((2, 3, 10, 10), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert_close(model(x), expected)


def test_children_are_registered_in_assignment_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.ReLU()
            self.a = nn.Linear(2, 2)
            self.skip = None
            self.plain = 3

    net = Net()
    assert [name for name, _ in net.named_children()] == ["b", "a"]
    assert list(net.children()) == [net.b, net.a]
    assert [name for name, _ in net.named_modules()] == ["", "b", "a"]
    assert list(net.state_dict()) == ["a.weight", "a.bias"]
    assert [name for name, _ in net.named_parameters()] == ["a.weight", "a.bias"]
    net.a = nn.Linear(2, 3, bias=False)  # replacing a child keeps its place
    assert list(net.state_dict()) == ["a.weight"]
    with pytest.raises(TypeError, match="child module 'a'"):
        net.a = 4
    del net.a
    assert list(net.state_dict()) == []


def test_parameters_are_read_only_float32_copies(rng):
    m = nn.Linear(3, 2)
    w = rng.standard_normal((2, 3))  # float64
    m.weight = w
    assert m.weight.dtype == np.float32 and not m.weight.flags.writeable
    w[0, 0] = 100.0
    assert m.weight[0, 0] != 100.0
    with pytest.raises(ValueError, match="read-only"):
        m.weight[0, 0] = 1.0
    with pytest.raises(ValueError, match=r"Linear.weight: expected shape \(2, 3\), got \(3, 2\)"):
        m.weight = w.T
    with pytest.raises(TypeError, match="Linear.bias"):
        m.bias = np.array(["a", "b"])
    m.bias = None
    assert list(m.state_dict()) == ["weight"]


def test_state_dict_round_trip_through_npz(tmp_path, rng):
    model = composite(nn)
    randomize(model.stem[1], rng)
    path = tmp_path / "model.npz"
    np.savez(path, **model.state_dict())
    fresh = composite(nn)
    with np.load(path) as archive:
        assert fresh.load_state_dict(archive) == ([], [])
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert k1 == k2 and np.array_equal(v1, v2)
    x = rng.standard_normal((1, 3, 10, 10))
    # the same kernels on both: 'auto' times three kernels per layer, and two timings need not
    # pick the same one (each kernel rounds differently)
    model.prepare(kernel="dense")
    fresh.prepare(kernel="dense")
    assert np.array_equal(model(x), fresh(x))


def test_strict_load_reports_every_problem_at_once():
    model = composite(nn)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = dict(model.state_dict())
    del state["stem.0.weight"], state["head.1.bias"]
    state["head.1.weight"] = np.zeros((5, 9))
    state["stem.1.bias"] = np.zeros(3)
    state["extra.weight"] = np.zeros(1)
    state["stem.1.running_mean"] = np.array(["x"] * 8)
    with pytest.raises(nn.StateDictError) as info:
        model.load_state_dict(state)
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    message = str(err)
    for key in ("stem.0.weight", "head.1.bias", "extra.weight", "head.1.weight", "stem.1.bias",
                "stem.1.running_mean"):
        assert repr(key) in message
    assert "expected (5, 8), got (5, 9)" in message
    assert err.missing_keys == ["stem.0.weight", "head.1.bias"]
    assert err.unexpected_keys == ["extra.weight"]
    assert [k for k, _, _ in err.mismatched] == ["stem.1.bias", "head.1.weight"]
    for k, v in model.state_dict().items():  # nothing was loaded
        assert np.array_equal(v, before[k])


def test_non_strict_load_returns_missing_and_unexpected():
    model = composite(nn)
    state = {"stem.0.weight": np.ones((8, 3, 3, 3)), "nope": np.zeros(2)}
    result = model.load_state_dict(state, strict=False)
    # a missing num_batches_tracked is not reported, as in torch (old checkpoints lack it)
    assert result.missing_keys == [k for k in model.state_dict() if k != "stem.0.weight"
                                   and not k.endswith("num_batches_tracked")]
    assert result.unexpected_keys == ["nope"]
    assert (model.stem[0].weight == 1).all()
    with pytest.raises(nn.StateDictError, match="shape mismatch for 'stem.0.weight'"):
        model.load_state_dict({"stem.0.weight": np.ones((8, 3, 1, 1))}, strict=False)


def test_num_batches_tracked_is_kept_like_torch_and_optional_on_load():
    bn = nn.BatchNorm2d(3)
    state = dict(bn.state_dict())
    assert list(state) == ["weight", "bias", "running_mean", "running_var",
                           "num_batches_tracked"]
    tracked = state["num_batches_tracked"]
    assert tracked.shape == () and tracked.dtype == np.int64 and tracked == 0
    bn.load_state_dict({**state, "num_batches_tracked": np.array(7.0)})
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked == 7
    del state["num_batches_tracked"]  # a checkpoint older than torch 0.4.1
    assert bn.load_state_dict(state) == ([], [])
    assert bn.num_batches_tracked == 7
    assert "num_batches_tracked" not in nn.BatchNorm2d(3, track_running_stats=False).state_dict()
    with pytest.raises(nn.StateDictError, match="unexpected keys.*num_batches_tracked"):
        nn.BatchNorm2d(3, track_running_stats=False).load_state_dict(
            {"weight": np.ones(3), "bias": np.ones(3), "num_batches_tracked": np.array(1)})


def test_sequential_indexing_and_editing():
    a, b, c = nn.ReLU(), nn.Tanh(), nn.Sigmoid()
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and list(seq) == [a, b, c]
    assert seq[0] is a and seq[-1] is c
    head = seq[1:]
    assert isinstance(head, nn.Sequential) and list(head._modules) == ["1", "2"]
    with pytest.raises(IndexError, match="out of range"):
        seq[3]
    with pytest.raises(TypeError, match="integers or slices"):
        seq["0"]
    seq[1] = nn.ReLU6()
    del seq[0]
    assert list(seq._modules) == ["0", "1"] and isinstance(seq[0], nn.ReLU6)
    seq.append(nn.Identity())
    assert len(seq) == 3
    named = nn.Sequential(OrderedDict(first=a, second=b))
    assert named.first is a and named[1] is b
    with pytest.raises(TypeError, match="Module"):
        nn.Sequential(a, "relu")


def test_module_list():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and list(layers.state_dict())[:2] == ["0.weight", "0.bias"]
    assert isinstance(layers[-2:], nn.ModuleList)
    layers.insert(0, nn.ReLU())
    assert isinstance(layers[0], nn.ReLU) and len(layers) == 4
    with pytest.raises(NotImplementedError, match="forward"):
        layers(np.zeros((1, 2)))


def test_copies_and_pickles_prepare_their_own_plan(rng):
    import copy
    import pickle
    net = conv_bn_relu(rng)
    x = rng.standard_normal((1, 3, 5, 5))
    expected = net(x)
    assert expected.any()  # else zeroing the weights below would change nothing
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert_close(clone(x), expected)
        clone[0].weight = np.zeros_like(clone[0].weight)
        assert not np.array_equal(clone(x), expected)
    assert_close(net(x), expected)


def test_train_and_eval_are_accepted():
    model = composite(nn)
    assert model.eval() is model and not any(m.training for m in model.modules())
    assert model.train() is model and all(m.training for m in model.modules())


def test_manual_seed_makes_init_reproducible():
    nn.manual_seed(3)
    a = nn.Conv2d(3, 4, 3).state_dict()
    nn.manual_seed(3)
    b = nn.Conv2d(3, 4, 3).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    bound = 1 / np.sqrt(27)
    assert np.abs(a["weight"]).max() <= bound and np.abs(a["weight"]).std() > bound / 4


# ---------------------------------------------------------------- user modules
class TwoHeads(nn.Module):
    """Residual block with a declared fusion, returning two heads."""

    _fusions = (("conv", "bn", "act"),)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.cls = nn.Linear(4, 3)
        self.box = nn.Linear(4, 2)

    def forward(self, x):
        y = self.act(x + self.act(self.bn(self.conv(x))))  # act reused outside the chain
        z = self.pool(y).reshape(len(y), -1)
        return self.cls(z), self.box(z)


def two_heads_reference(m, x):
    y = R.relu(R.batch_norm(R.conv2d(x, m.conv.weight, m.conv.bias, padding=1),
                            m.bn.running_mean, m.bn.running_var, m.bn.weight, m.bn.bias))
    z = R.relu(x + y).mean(axis=(2, 3))
    return R.linear(z, m.cls.weight, m.cls.bias), R.linear(z, m.box.weight, m.box.bias)


def test_user_module_with_fusion_and_two_heads(rng):
    m = TwoHeads()
    randomize(m.bn, rng)
    x = rng.standard_normal((2, 4, 5, 5))
    cls, box = m(x)
    ref_cls, ref_box = two_heads_reference(m, x)
    assert_close(cls, ref_cls)
    assert_close(box, ref_box)
    assert {row.name: row.layers for row in m.plan()}["conv"] == "Conv2d+BatchNorm2d+ReLU"


def test_broken_fusion_declaration_raises(rng):
    class Wrong(TwoHeads):
        def forward(self, x):  # applies bn to the input, not to conv's output
            return self.act(self.conv(self.bn(x)))

    class Unfinished(TwoHeads):
        def forward(self, x):  # skips the declared activation
            return self.bn(self.conv(x))

    with pytest.raises(RuntimeError, match=r"bn \(BatchNorm2d\).*folded"):
        Wrong()(np.zeros((1, 4, 5, 5)))
    with pytest.raises(RuntimeError, match=r"conv \(Conv2d\).*act \(ReLU\)"):
        Unfinished()(np.zeros((1, 4, 5, 5)))


def test_shared_modules_are_not_folded_twice(rng):
    conv = randomize(nn.Conv2d(3, 3, 3, padding=1), rng)
    bn = randomize(nn.BatchNorm2d(3), rng)
    relu = nn.ReLU()
    net = nn.Sequential(conv, bn, relu, conv, relu)
    x = rng.standard_normal((1, 3, 6, 6))

    def c(t):
        return R.conv2d(t, conv.weight, conv.bias, padding=1)
    bn_ref = R.batch_norm(c(x), bn.running_mean, bn.running_var, bn.weight, bn.bias)
    assert_close(net(x), R.relu(c(R.relu(bn_ref))))
    assert [row.layers for row in net.plan()] == ["Conv2d"]


# ---------------------------------------------------------------- preparation
def conv_bn_relu(rng):
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 4, 1), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 25, 3),
                        nn.ReLU())
    for layer in (net[0], net[1], net[3], net[6]):  # independent of the global init seed
        randomize(layer, rng)
    return net


def conv_bn_relu_reference(net, x):
    y = R.conv2d(x, net[0].weight, net[0].bias, padding=1)
    y = R.relu(R.batch_norm(y, net[1].running_mean, net[1].running_var, net[1].weight,
                            net[1].bias))
    y = R.relu6(R.conv2d(y, net[3].weight, net[3].bias)).reshape(len(x), -1)
    return R.relu(R.linear(y, net[6].weight, net[6].bias))


def test_prepare_folds_and_fuses_without_touching_the_module(rng):
    net = conv_bn_relu(rng)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    x = rng.standard_normal((2, 3, 5, 5))
    net.prepare(input_shape=(2, 3, 5, 5))
    plan = net.plan()
    assert [(row.name, row.layers) for row in plan] == [
        ("0", "Conv2d+BatchNorm2d+ReLU"), ("3", "Conv2d+ReLU6"), ("6", "Linear+ReLU")]
    assert [list(row.kernels) for row in plan] == [[(2, 3, 5, 5)], [(2, 6, 5, 5)], [(2, 100)]]
    assert all(k in ("sparse", "dense", "winograd", "depthwise") for row in plan
               for k in row.kernels.values())
    assert "Conv2d+BatchNorm2d+ReLU" in str(plan)
    assert_close(net(x), conv_bn_relu_reference(net, x))
    for k, v in net.state_dict().items():
        assert np.array_equal(v, before[k])
    assert repr(net).count("BatchNorm2d(6") == 1


def test_sequential_runs_fused_chains_without_calling_their_followers(rng, monkeypatch):
    """Inside a prepared call a Sequential runs each fused chain's head and skips the
    absorbed batch norm and activation (their forward is never called), on batched and
    unbatched inputs."""
    calls = []
    for cls in (nn.BatchNorm2d, nn.ReLU, nn.ReLU6):
        monkeypatch.setattr(cls, "forward", lambda self, x, _f=cls.forward: (
            calls.append(type(self).__name__), _f(self, x))[1])
    net = conv_bn_relu(rng)
    x = rng.standard_normal((2, 3, 5, 5))
    expected = conv_bn_relu_reference(net, x)
    net.prepare(input_shape=(2, 3, 5, 5))
    assert [(type(m).__name__, fused) for m, fused in net._prepared.sequence(net)] == [
        ("Conv2d", True), ("Conv2d", True), ("Flatten", False), ("Linear", True)]
    head = net[:3]  # Conv2d, BatchNorm2d, ReLU
    batched = head(x)
    del calls[:]
    assert_close(net(x), expected)
    assert_close(head(x[1]), batched[1])
    assert calls == []


def test_sequential_calls_known_layers_directly_unless_watched(rng, monkeypatch):
    """A prepared layer on an input shape it ran before skips _Run.call (its lookups and checks
    passed for that shape); profiling and calibration still see every layer."""
    from fscnn.nn import _plan
    net = conv_bn_relu(rng)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    expected = conv_bn_relu_reference(net, x)
    net(x)
    called = []
    original = _plan._Run.call
    monkeypatch.setattr(_plan._Run, "call", lambda self, module, *a, **k: (
        called.append(type(module).__name__), original(self, module, *a, **k))[1])
    assert_close(net(x), expected)
    assert called == ["Sequential", "Flatten"]  # the root and the one layer without a step
    with nn.profile() as records:
        assert_close(net(x), expected)
    assert [r.name for r in records] == ["0", "3", "5", "6"]
    assert_close(net(x[:1].copy()), expected[:1])  # a new shape: checked through call
    assert called.count("Conv2d") == 4  # twice while profiled, twice for the new shape


@pytest.fixture
def count_ops(monkeypatch):
    """Counts the operators built (each one converts its weights)."""
    built = []
    for name in ("Conv2dOp", "LinearOp"):
        cls = getattr(fscnn.ops, name)

        def counting(*args, _cls=cls, **kwargs):
            built.append(_cls)
            return _cls(*args, **kwargs)
        monkeypatch.setattr(fscnn.ops, name, counting)
    return built


def test_inference_never_reconverts_weights(rng, count_ops):
    net = conv_bn_relu(rng)
    x = rng.standard_normal((1, 3, 5, 5))
    first = net(x)
    assert len(count_ops) == 3
    for _ in range(3):
        assert np.array_equal(net(x), first)
    net(rng.standard_normal((4, 3, 5, 5)))
    net.plan()
    nn.Conv2d(2, 2, 1)  # unrelated module changes do not invalidate the plan
    net(x)
    assert len(count_ops) == 3


@pytest.mark.parametrize("change", ["assign", "load_state_dict", "replace_child", "hyper"])
def test_weight_changes_invalidate_the_plan(change, rng, count_ops):
    net = conv_bn_relu(rng)
    x = rng.standard_normal((1, 3, 5, 5))
    net(x)
    if change == "assign":
        net[1].running_var = net[1].running_var * 4
    elif change == "load_state_dict":
        net.load_state_dict({**net.state_dict(), "0.bias": np.ones(6)})
    elif change == "replace_child":
        net[3] = randomize(nn.Conv2d(6, 4, 1), rng)
    else:
        net[3].stride = (1, 1)  # same value, but any public attribute counts as a change
    assert_close(net(x), conv_bn_relu_reference(net, x))
    assert len(count_ops) == 6


def test_kernel_override_per_model_and_per_layer(rng):
    net = conv_bn_relu(rng)
    x = rng.standard_normal((1, 3, 5, 5))
    expected = conv_bn_relu_reference(net, x)
    net.prepare(kernel="dense")
    assert_close(net(x), expected)
    assert [row.kernel_setting for row in net.plan()] == ["dense"] * 3
    assert [list(row.kernels.values()) for row in net.plan()] == [["dense"]] * 3
    net.prepare(kernel={"3": "sparse", "6": "dense"})
    assert_close(net(x), expected)
    assert [row.kernel_setting for row in net.plan()] == ["auto", "sparse", "dense"]
    assert [row.kernels[s] for row, s in zip(net.plan()[1:], [(1, 6, 5, 5), (1, 100)])] == \
        ["sparse", "dense"]
    net[0].weight = net[0].weight  # lazy re-preparation keeps the per-layer setting
    net(x)
    assert [row.kernel_setting for row in net.plan()] == ["auto", "sparse", "dense"]
    net[3] = nn.Identity()  # and ignores layers that are gone
    net[4] = nn.Identity()
    net[6] = nn.Linear(6 * 25, 3)
    assert net(x).shape == (1, 3)
    assert [row.kernel_setting for row in net.plan()] == ["auto", "dense"]


def test_winograd_setting_for_a_model(rng):
    net = conv_bn_relu(rng)
    x = rng.standard_normal((1, 3, 5, 5))
    expected = conv_bn_relu_reference(net, x)
    net.prepare(kernel="winograd")  # the 3x3 layer only; 'auto' for the 1x1 and the linear
    assert_close(net(x), expected, rtol=1e-4)  # Winograd's float32 budget (see test_conv.py)
    assert [row.kernel_setting for row in net.plan()] == ["winograd", "auto", "auto"]
    assert net.plan()[0].kernels[(1, 3, 5, 5)] == "winograd"
    net.prepare(kernel={"0": "winograd"})
    assert_close(net(x), expected, rtol=1e-4)
    with pytest.raises(ValueError, match=r"needs a 3x3 kernel \(got 1x1\)"):
        net.prepare(kernel={"3": "winograd"})
        net(x)


def test_depthwise_setting_for_a_model(rng):
    # a MobileNet block: depthwise 3x3 + BN + ReLU6, then a pointwise 1x1
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4),
                        nn.ReLU6(), nn.Conv2d(4, 6, 1))
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    expected = net.prepare(kernel="dense")(x)  # the GEMM path (each kernel has its own tests)
    net.prepare(kernel="depthwise")  # the depthwise layer only; 'auto' for the 1x1
    assert [row.kernel_setting for row in net.plan()] == ["depthwise", "auto"]
    assert_close(net(x), expected)
    assert net.plan()[0].kernels[(2, 4, 9, 9)] == "depthwise"
    with pytest.raises(ValueError, match="needs one input channel per group"):
        net.prepare(kernel={"3": "depthwise"})
        net(x)


def test_a_shape_already_run_still_converts_and_checks_other_inputs(rng):
    """A prepared layer skips its checks only for float32 C-contiguous inputs of a shape it
    already ran: other dtypes and layouts of that shape are converted, other shapes checked."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3))
    model.eval()
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
    model.prepare(input_shape=x.shape)
    expected = model(x)
    assert_close(model(x.astype(np.float64)), expected)
    strided = np.ascontiguousarray(np.swapaxes(x, 2, 3)).swapaxes(2, 3)  # same values, F-order
    assert not strided.flags.c_contiguous
    assert_close(model(strided), expected)
    with pytest.raises(nn.LayerInputError, match=r"0 \(Conv2d\): expected 3 input channels"):
        model(np.zeros((2, 5, 10, 10), np.float32))
    with pytest.raises(nn.LayerInputError, match=r"3 \(Conv2d\)"):
        model(np.zeros((2, 3, 2, 2), np.float32))  # too small for the second convolution
    with pytest.raises(TypeError):
        model(x.astype(np.int32))


def test_prepare_validates_its_arguments():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"kernel must be one of"):
        net.prepare(kernel="fast")
    with pytest.raises(ValueError, match=r"no convolution or linear layer named '1'.*'0'"):
        net.prepare(kernel={"1": "dense"})
    with pytest.raises(ValueError, match=r"'0': 'gpu'"):
        net.prepare(kernel={"0": "gpu"})
    with pytest.raises(ValueError, match="input_shape"):
        net.prepare(input_shape=(1, 3, 0, 8))


def test_plan_reports_density_after_folding(rng):
    net = conv_bn_relu(rng)
    w = np.array(net[0].weight)
    w[:, :, 0, :] = 0.0
    net[0].weight = w
    density = next(row.density for row in net.plan() if row.name == "0")
    assert density == pytest.approx(np.count_nonzero(w) / w.size)


# ---------------------------------------------------------------- sparse-held weights
def _pruned_composite(n, rng):
    """``composite`` with random batch-norm statistics and 70% of each weight zero."""
    model = composite(n)
    randomize(model.stem[1], rng)
    state = fscnn.prune.prune(model.state_dict(), 0.7)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("kernel", ["auto", "sparse", "dense"])
def test_sparse_held_model_matches_dense_and_torch(kernel, rng):
    torch = torch_or_skip()
    dense = _pruned_composite(nn, rng)
    held = composite(nn)
    held.load_state_dict(dense.state_dict())
    assert held.to_sparse() is held
    assert isinstance(held.stem[0].weight, fscnn.sparse.SparseConvWeight)
    assert isinstance(held.head[1].weight, fscnn.sparse.CSRMatrix)
    x = rng.standard_normal((2, 3, 10, 10), dtype=np.float32)
    dense.prepare(x.shape, kernel="dense" if kernel == "dense" else "sparse")
    held.prepare(x.shape, kernel=kernel)  # the stem's batch norm is folded into sparse rows
    out = held(x)
    if kernel != "auto":  # same kernel: the same result bit for bit
        np.testing.assert_array_equal(out, dense.prepare(x.shape, kernel=kernel)(x))
    assert_close(out, dense(x))
    reference = composite(torch.nn).eval()
    reference.load_state_dict({k: torch.from_numpy(np.array(v))
                               for k, v in held.state_dict().items()})
    with torch.no_grad():
        assert_close(out, reference(torch.from_numpy(x)).numpy())
    assert [(r.name, r.layers, r.density) for r in held.plan()] == \
        [(r.name, r.layers, r.density) for r in dense.plan()]
    with nn.profile() as records:
        held(x)
    with nn.profile() as expected:
        dense(x)
    assert [(r.name, r.type, r.sparsity, r.flops_dense, r.flops_sparse) for r in records] == \
        [(r.name, r.type, r.sparsity, r.flops_dense, r.flops_sparse) for r in expected]


def test_sparse_held_forward_unprepared_matches_reference(rng):
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    conv.weight = fscnn.prune.prune({"weight": conv.weight}, 0.6)["weight"]
    dense_weight = conv.weight
    conv.to_sparse()
    x = rng.standard_normal((2, 4, 7, 7), dtype=np.float32)
    expected = R.conv2d(x, dense_weight, conv.bias, 1, 1, 1, 2)
    assert_close(conv.forward(x), expected)
    assert_close(conv(x), expected)
    lin = nn.Linear(12, 5)
    lin.weight = fscnn.prune.prune({"weight": lin.weight}, 0.6)["weight"]
    dense_lin = lin.weight
    lin.to_sparse()
    xl = rng.standard_normal((3, 2, 12), dtype=np.float32)
    expected = R.linear(xl.reshape(-1, 12), dense_lin, lin.bias).reshape(3, 2, 5)
    assert_close(lin.forward(xl), expected)
    assert_close(lin(xl), expected)


def test_sparse_held_state_dict_equals_dense(rng):
    dense = _pruned_composite(nn, rng)
    held = composite(nn)
    held.load_state_dict(dense.state_dict())
    held.to_sparse()
    sd, expected = held.state_dict(), dense.state_dict()
    assert list(sd) == list(expected) and len(sd) == len(expected)
    for key in expected:
        value = sd[key]
        assert isinstance(value, np.ndarray) and value.dtype == expected[key].dtype
        assert value.dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32)
        assert not value.flags.writeable
        np.testing.assert_array_equal(value, expected[key])
    assert isinstance(sd.stored("stem.0.weight"), fscnn.sparse.SparseConvWeight)
    # round trips: into a dense model (dense arrays), into another model (kept sparse)
    other = composite(nn)
    other.load_state_dict(sd)
    assert isinstance(other.stem[0].weight, fscnn.sparse.SparseConvWeight)
    assert other.stem[0].weight.nnz == held.stem[0].weight.nnz
    other.load_state_dict(dict(sd))  # dense arrays: dense-held again
    assert isinstance(other.stem[0].weight, np.ndarray)
    held.to_dense()
    assert isinstance(held.stem[0].weight, np.ndarray)
    for key, value in held.state_dict().items():
        np.testing.assert_array_equal(value, expected[key])


def test_to_sparse_min_sparsity_and_validation(rng):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    model.load_state_dict(fscnn.prune.prune(model.state_dict(), 0.5, keep="2"))
    model.to_sparse(min_sparsity=0.6)  # the conv has 50% zeros: stays dense
    assert isinstance(model[0].weight, np.ndarray) and isinstance(model[2].weight, np.ndarray)
    model.to_sparse(min_sparsity=0.5)
    assert isinstance(model[0].weight, fscnn.sparse.SparseConvWeight)
    assert isinstance(model[2].weight, np.ndarray)
    model.to_sparse(min_sparsity=0.0)
    assert isinstance(model[2].weight, fscnn.sparse.CSRMatrix)
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="min_sparsity"):
            model.to_sparse(min_sparsity=bad)


def test_load_sparse_values_validates_shape_type_and_format():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    good = model.state_dict()
    wrong_shape = dict(good, **{"0.weight": fscnn.sparse.SparseConvWeight.from_dense(
        np.ones((4, 3, 1, 1), np.float32)), "3.weight": fscnn.sparse.CSRMatrix.from_dense(
        np.ones((3, 4), np.float32))})
    with pytest.raises(nn.StateDictError) as info:
        model.load_state_dict(wrong_shape)
    assert info.value.mismatched == [("0.weight", (4, 3, 3, 3), (4, 3, 1, 1)),
                                     ("3.weight", (2, 4), (3, 4))]
    assert "shape mismatch for '0.weight'" in str(info.value)
    wrong_type = dict(good, **{
        "0.weight": fscnn.sparse.CSRMatrix.from_dense(np.ones((4, 27), np.float32)),
        "1.weight": fscnn.sparse.CSRMatrix.from_dense(np.ones((1, 4), np.float32))})
    with pytest.raises(nn.StateDictError) as info:
        model.load_state_dict(wrong_type)
    assert [key for key, _ in info.value.invalid] == ["0.weight", "1.weight"]
    assert "Conv2d.weight cannot be held as a CSRMatrix" in str(info.value)
    assert "BatchNorm2d.weight cannot be held as a CSRMatrix" in str(info.value)
    eye = fscnn.sparse.CSRMatrix.from_dense(np.eye(2, 4, dtype=np.float32))
    broken = fscnn.sparse.CSRMatrix(eye.indptr, np.array([3, 9], np.uint16), eye.data,
                                    eye.shape, check=None)  # column out of range
    with pytest.raises(nn.StateDictError, match="invalid value for '3.weight': invalid CSRMatrix"):
        model.load_state_dict(dict(good, **{"3.weight": broken}))
    assert isinstance(model[0].weight, np.ndarray)  # nothing loaded
    with pytest.raises(TypeError, match="cannot be held as a CSRMatrix"):
        model[1].weight = fscnn.sparse.CSRMatrix.from_dense(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected shape \(2, 4\)"):
        model[3].weight = fscnn.sparse.CSRMatrix.from_dense(np.ones((2, 5), np.float32))


def test_sparse_held_ops_keep_no_dense_copy(rng):
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 36, 6))
    model.load_state_dict(fscnn.prune.prune(model.state_dict(), 0.9))
    model.to_sparse()
    x = rng.standard_normal((1, 4, 6, 6), dtype=np.float32)
    model.prepare(x.shape, kernel="sparse")
    ops = [step.op for step in model._prepared.steps.values()]
    assert [op.holds_dense for op in ops] == [False, False]
    assert ops[0].dense.shape == (8, 36)  # on demand, not kept
    assert [op.holds_dense for op in ops] == [False, False]
    model.prepare(x.shape)  # auto: dense kept exactly where the plan picked it
    for step in model._prepared.steps.values():
        shapes = list(step.shapes)
        picked = {step.op.kernel_for(s) for s in shapes}
        assert step.op.holds_dense == ("dense" in picked)
    model.prepare(x.shape, kernel={"0": "dense", "4": "sparse"})
    ops = [step.op for step in model._prepared.steps.values()]
    assert [op.holds_dense for op in ops] == [True, False]
    # a dense-held model's ops keep the dense weights as before
    dense = nn.Sequential(nn.Conv2d(4, 8, 3)).prepare((1, 4, 6, 6), kernel="sparse")
    assert [s.op.holds_dense for s in dense._prepared.steps.values()] == [True]


@pytest.mark.parametrize("pool, fused", [
    (nn.MaxPool2d(2), True), (nn.MaxPool2d((2, 2), stride=2), True),
    (nn.MaxPool2d(2, ceil_mode=True), False), (nn.MaxPool2d(3, stride=2), False),
    (nn.MaxPool2d(2, stride=1), False), (nn.MaxPool2d(2, padding=1), False),
])
def test_max_pool_fuses_into_the_preceding_convolution(pool, fused, rng):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), pool)
    x = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)
    expected = pool(net[1](net[0](x)))  # each layer on its own (separately prepared)
    y = net(x)
    assert [row.layers for row in net.plan()] == \
        ["Conv2d+ReLU+MaxPool2d" if fused else "Conv2d+ReLU"]
    assert_close(y, expected)
    # without the activation the pool still fuses
    bare = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), pool)
    assert (bare.plan()[0].layers == "Conv2d+MaxPool2d") == fused


def test_profile_counts_the_flops_of_a_pooled_convolution(rng):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    x = rng.standard_normal((1, 3, 10, 10)).astype(np.float32)
    with fscnn.nn.profile() as records:
        net(x)
    conv = [r for r in records if r.kernel is not None][0]
    assert conv.type == "Conv2d+ReLU+MaxPool2d"
    assert conv.flops_dense == 2 * 8 * 3 * 9 * 10 * 10  # the convolution's 10x10 output


# ------------------------------------------------------------------ state dict errors, archives
def test_key_mismatch_errors_summarise_and_hint():
    model = fscnn.models.resnet18(num_classes=10)
    with pytest.raises(nn.StateDictError) as info:  # another architecture: 314 keys vs 102
        model.load_state_dict(fscnn.models.mobilenet_v2(num_classes=10).state_dict())
    message = str(info.value)
    assert len(message) < 800, message
    assert "missing keys (102): 'conv1.weight', " in message and "... and 97 more" in message
    assert "unexpected keys (314): " in message and "... and 309 more" in message
    assert "hint: no key of the mapping is one of the model's" in message
    assert len(info.value.missing_keys) == 102 and len(info.value.unexpected_keys) == 314
    wrapped = {"module." + k: v for k, v in model.state_dict().items()}  # DataParallel's names
    with pytest.raises(nn.StateDictError, match=r"hint: every unexpected key starts with "
                                                r"'module\.' \(the checkpoint of a DataParallel"):
        model.load_state_dict(wrapped)
    with pytest.raises(nn.StateDictError) as info:
        model.load_state_dict(fscnn.models.resnet50(num_classes=10).state_dict())
    assert "... and 19 more shape mismatches" in str(info.value)
    assert len(info.value.mismatched) == 24


def test_np_load_of_an_fscnn_archive_loads(tmp_path):
    """np.load() of what fscnn.save / `fscnn prune` writes holds encoded members
    ('NAME::values', ...): load_state_dict decodes them as fscnn.load does."""
    model = small_net()
    fscnn.prune(model, 0.9, inplace=True)
    path = tmp_path / "pruned.npz"
    fscnn.save(model, path)
    with np.load(path) as archive:
        assert any("::" in key for key in archive.files)  # stored sparse
        other = small_net()
        assert other.load_state_dict(archive) == ([], [])
    for key, value in fscnn.load(path).items():
        np.testing.assert_array_equal(other.state_dict()[key], value)
    with np.load(path) as archive:  # the members without the format key: a pointed hint
        members = {k: archive[k] for k in archive.files if k != "__fscnn_format__"}
    with pytest.raises(nn.StateDictError, match=r"hint: .*fscnn archive: read the file with "
                                                r"fscnn\.load\(path\)"):
        small_net().load_state_dict(members)


# ------------------------------------------------------------------ prepare's progress
class _Terminal:
    """A stand-in stderr that says it is a terminal and keeps what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def _three_layers():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 2))


@pytest.mark.parametrize("tqdm", [False, True], ids=["counter", "tqdm"])
def test_prepare_shows_progress_when_asked(monkeypatch, capsys, tqdm):
    import sys
    import fscnn._progress
    if tqdm:
        import_or_skip("tqdm", "pip install tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    monkeypatch.setattr(fscnn._progress, "DELAY", 0.0)  # show it at once
    _three_layers().prepare((1, 3, 8, 8), progress=True)
    err = capsys.readouterr().err
    if tqdm:  # tqdm redraws at most every 0.1 s: the last steps may not be drawn
        assert "\rprepare: " in err and "/3 [" in err and "layer/s" in err
    else:
        assert "\rprepare: layer 1/3\rprepare: layer 2/3\rprepare: layer 3/3" in err


def test_prepare_progress_off_by_default_outside_a_terminal(monkeypatch, capsys):
    import sys
    import fscnn._progress
    monkeypatch.setattr(fscnn._progress, "DELAY", 0.0)
    _three_layers().prepare((1, 3, 8, 8))  # pytest's captured stderr is not a terminal
    assert capsys.readouterr().err == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    _three_layers().prepare((1, 3, 8, 8), progress=False)
    assert terminal.text == ""
    _three_layers().prepare((1, 3, 8, 8))  # a terminal: shown
    assert "prepare: layer 3/3" in terminal.text
    monkeypatch.setattr(fscnn._progress, "DELAY", 3600.0)
    terminal.text = ""
    _three_layers().prepare((1, 3, 8, 8), progress=True)  # quicker than the delay: nothing
    assert terminal.text == ""
    with pytest.raises(TypeError, match="progress must be None, True or False"):
        _three_layers().prepare((1, 3, 8, 8), progress="yes")


def test_num_batches_tracked_goes_through_save_load_prune_and_reports(tmp_path, capsys):
    """The 0-d int64 entry of every batch norm, through each place that walks a state_dict."""
    from fscnn import cli
    from fscnn.prune import sparsity_report
    model = fscnn.models.resnet18(num_classes=10)
    model.load_state_dict({**model.state_dict(), "bn1.num_batches_tracked": np.array(12)})
    fscnn.prune(model, 0.9, inplace=True)
    assert sparsity_report(model).total.sparsity == pytest.approx(0.9, abs=1e-3)
    for held in ("dense", "sparse"):
        if held == "sparse":
            model.to_sparse()
        path = tmp_path / f"{held}.npz"
        fscnn.save(model, path)
        for loaded in (fscnn.load(path), fscnn.load(path, sparse=True)):
            tracked = loaded["bn1.num_batches_tracked"]
            assert tracked.shape == () and tracked.dtype == np.int64 and tracked == 12
            other = fscnn.models.resnet18(num_classes=10)
            other.load_state_dict(loaded)
            assert other.bn1.num_batches_tracked == 12
    assert cli.main(["info", str(path)]) == 0
    assert "(other entries)" in capsys.readouterr().out


# ---------------------------------------------------------------- residual connections
class ResBlock(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2, plus the input, then relu: conv2's epilogue adds
    the shortcut (``_residuals``)."""

    _fusions = (("conv1", "bn1", "relu"), ("conv2", "bn2"))
    _residuals = (("conv2", "bn2"),)

    def __init__(self, c, k2=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, k2, padding=k2 // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return fscnn.functional.add(self.bn2(self.conv2(y)), x, activation="relu")


def res_block_reference(m, x):
    def cbn(t, conv, bn):
        y = R.conv2d(t, conv.weight, None, padding=conv.padding)
        return R.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias)
    return R.relu(cbn(R.relu(cbn(x, m.conv1, m.bn1)), m.conv2, m.bn2) + x)


def _count_residual_epilogues(monkeypatch):
    """A list that counts the convolutions computed with a residual (PendingOutput.result)."""
    calls = []
    result = fscnn.ops.PendingOutput.result

    def counting(self, residual=None, activation=None):
        if residual is not None:
            calls.append(self.op.name)
        return result(self, residual, activation)
    monkeypatch.setattr(fscnn.ops.PendingOutput, "result", counting)
    return calls


@pytest.mark.parametrize("k2", [1, 3])
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_declared_residual_runs_in_the_convolution(k2, kernel, rng, monkeypatch):
    m = ResBlock(8, k2)
    for layer in (m.conv1, m.bn1, m.conv2, m.bn2):
        randomize(layer, rng)
    x = rng.standard_normal((2, 8, 7, 7)).astype(np.float32)
    m.prepare(x.shape, kernel=kernel)
    calls = _count_residual_epilogues(monkeypatch)
    y = m(x)
    assert calls == ["conv2 (Conv2d)"]
    assert isinstance(y, np.ndarray)
    assert_close(y, res_block_reference(m, x))
    with fscnn.nn.profile():  # profiled, each layer runs on its own: the same bits
        np.testing.assert_array_equal(m(x), y)
    assert calls == ["conv2 (Conv2d)"]
    assert {r.name: r.layers for r in m.plan()}["conv2"] == "Conv2d+BatchNorm2d+add"
    np.testing.assert_array_equal(m(x[0]), y[0])  # unbatched


def test_misdeclared_residual_gives_the_plain_output(rng):
    class NotAnAdd(ResBlock):  # concatenates the chain's output, returns it, feeds a layer
        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return np.concatenate([y, x], axis=1)

    class Returned(ResBlock):
        def forward(self, x):
            return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    class Broadcast(ResBlock):  # an add that broadcasts: not the output's shape
        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return fscnn.functional.add(y, x[:, :1], activation="relu")

    x = rng.standard_normal((1, 8, 5, 5)).astype(np.float32)
    for cls in (NotAnAdd, Returned, Broadcast):
        m = cls(8)
        for layer in (m.conv1, m.bn1, m.conv2, m.bn2):
            randomize(layer, rng)
        m.prepare(x.shape)
        y = m(x)
        with fscnn.nn.profile():
            expected = m(x)
        assert isinstance(y, np.ndarray)
        np.testing.assert_array_equal(y, expected)


def _residual_graph(rng, c=6, extra_reader=False):
    Node = nn.Node
    nodes = [Node("conv", "Conv2d", {"in_channels": c, "out_channels": c, "kernel_size": 1,
                                     "bias": False}, ("x",), ("c",), {"weight": "w"}),
             Node("bn", "BatchNorm2d", {"num_features": c}, ("c",), ("b",),
                  {"weight": "g", "bias": "beta", "running_mean": "m", "running_var": "v"}),
             Node("add", "Add", {"activation": "relu"}, ("x", "b"), ("y",), {})]
    outputs = ["y", "b"] if extra_reader else ["y"]
    tensors = {"w": rng.standard_normal((c, c, 1, 1)), "g": rng.uniform(0.5, 1.5, c),
               "beta": rng.normal(0, 0.3, c), "m": rng.normal(0, 0.3, c),
               "v": rng.uniform(0.5, 1.5, c)}
    return nn.Graph([("x", (None, c, None, None))], outputs, nodes, tensors), tensors


def test_graph_add_after_a_convolution_runs_in_its_epilogue(rng, monkeypatch):
    g, t = _residual_graph(rng)
    x = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    g.prepare(x.shape)
    calls = _count_residual_epilogues(monkeypatch)
    y = g(x)
    expected = R.relu(x + R.batch_norm(R.conv2d(x, t["w"]), t["m"], t["v"], t["g"], t["beta"]))
    assert_close(y, expected)
    assert calls == ["conv (Conv2d)"]
    assert [r.layers for r in g.plan()] == ["Conv2d+BatchNorm2d+add"]
    # the chain's output also a graph output: read twice, so not pending
    g2, _ = _residual_graph(rng, extra_reader=True)
    g2.prepare(x.shape)
    assert [r.layers for r in g2.plan()] == ["Conv2d+BatchNorm2d"]
    y2, b2 = g2(x)
    assert isinstance(b2, np.ndarray)


@pytest.mark.parametrize("name, blocks", [("resnet18", 8), ("resnet50", 16),
                                          ("mobilenet_v2", 10)])
def test_zoo_residual_blocks_add_in_the_epilogue(name, blocks, rng, monkeypatch):
    fscnn.nn.manual_seed(0)
    m = getattr(fscnn.models, name)(num_classes=10)
    fscnn.prune.prune(m, 0.8, inplace=True)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    m.prepare(x.shape)
    calls = _count_residual_epilogues(monkeypatch)
    y = m(x)
    assert len(calls) == blocks
    assert sum("+add" in r.layers for r in m.plan()) == blocks
    with fscnn.nn.profile():
        np.testing.assert_array_equal(m(x), y)


def test_graph_add_of_two_convolutions_goes_to_the_one_that_adds_in_its_epilogue(
        rng, monkeypatch):
    # a ResNet block's first add in an imported graph: its last 3x3 convolution and the 1x1
    # shortcut both feed only the add
    Node = nn.Node
    nodes = [Node("wide", "Conv2d", {"in_channels": 4, "out_channels": 6, "kernel_size": 3,
                                     "padding": 1}, ("x",), ("a",), {"weight": "w3", "bias": "b3"}),
             Node("short", "Conv2d", {"in_channels": 4, "out_channels": 6, "kernel_size": 1},
                  ("x",), ("s",), {"weight": "w1", "bias": "b1"}),
             Node("add", "Add", {"activation": "relu"}, ("a", "s"), ("y",), {})]
    t = {"w3": rng.standard_normal((6, 4, 3, 3)), "b3": rng.standard_normal(6),
         "w1": rng.standard_normal((6, 4, 1, 1)), "b1": rng.standard_normal(6)}
    g = nn.Graph([("x", (None, 4, None, None))], ["y"], nodes, t)
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    g.prepare(x.shape, kernel="sparse")
    calls = _count_residual_epilogues(monkeypatch)
    y = g(x)
    assert calls == ["short (Conv2d)"]
    assert_close(y, R.relu(R.conv2d(x, t["w3"], t["b3"], padding=1)
                           + R.conv2d(x, t["w1"], t["b1"])))
