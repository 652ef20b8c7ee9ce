"""The model zoo against PyTorch models built with torchvision's exact layout.

``fscnn.torch_reference`` rebuilds torchvision's VGG, ResNet and MobileNetV2 with plain
``torch.nn`` and torchvision's module names and config tables (``fscnn bench`` compares with
it); ``tests/test_torchvision.py`` checks the zoo against torchvision's own definitions too.
Key-by-key equality of the two ``state_dict``s is the check that torchvision checkpoints
load; the numerical tests then load one random, BatchNorm-perturbed and
magnitude-pruned state into both and compare outputs.

Inputs are small (32x32, batch 1 or 3) except for a few models at 224x224, batch 1.
"""
import os

import numpy as np
import pytest

import fscnn.models
from fscnn.torch_reference import torch_models
from conftest import assert_close, torch_or_skip
from fscnn import nn

SPARSITIES = (0.0, 0.5, 0.9, 0.99)
MODEL_NAMES = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
               "vgg19_bn", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")
NUM_CLASSES = 10
RTOL = 1e-4  # max|error| <= 1e-4 * max|output|: float32 through up to 100 layers


@pytest.fixture(scope="module")
def torch_zoo():
    """(builders, classes): torch reference builders and the from_torch class mapping."""
    torch_or_skip()
    return torch_models()


def torch_model(torch_zoo, name, state):
    """The torch reference ``name`` holding ``state`` (built on the meta device: no init)."""
    import torch
    with torch.device("meta"):
        model = torch_zoo[0][name](NUM_CLASSES)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                          assign=True)
    return model.eval()


# ---------------------------------------------------------------- random pruned states
def magnitude_prune(w, sparsity):
    """A copy of ``w`` with its ``round(sparsity * size)`` smallest-magnitude entries zeroed
    (exactly that many when magnitudes are distinct, as for random normal weights)."""
    w = np.array(w, dtype=np.float32)
    k = int(round(sparsity * w.size))
    if k:
        magnitude = np.abs(w).reshape(-1)
        magnitude.partition(k - 1)  # in place: VGG's classifier has 102M weights
        np.putmask(w, np.abs(w) <= magnitude[k - 1], 0.0)
    return w


def random_state(model, rng):
    """A state_dict for ``model``: He-scaled normal weights, and batch norms with
    non-trivial statistics and affine parameters."""
    state = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight
            w = rng.standard_normal(w.shape, dtype=np.float32)
            w *= np.float32(np.sqrt(2 * w.shape[0] / w.size))
            state[prefix + "weight"] = w
            if module.bias is not None:
                state[prefix + "bias"] = rng.normal(0, 0.1, module.bias.shape)
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            state[prefix + "weight"] = rng.uniform(0.5, 1.5, c)
            state[prefix + "bias"] = rng.normal(0, 0.1, c)
            state[prefix + "running_mean"] = rng.normal(0, 0.1, c)
            state[prefix + "running_var"] = rng.uniform(0.5, 1.5, c)
            state[prefix + "num_batches_tracked"] = np.array(rng.integers(1, 1000), np.int64)
    return {k: v if k.endswith("num_batches_tracked") else np.asarray(v, dtype=np.float32)
            for k, v in state.items()}


def pruned(state, sparsity):
    """``state`` with every convolution and linear weight magnitude-pruned to ``sparsity``."""
    return {k: magnitude_prune(v, sparsity) if v.ndim in (2, 4) else v
            for k, v in state.items()}


class Zoo:
    """One model of the zoo with its torch twin and a random state, built once per module."""

    def __init__(self, name, torch_zoo):
        self.name = name
        self.model = getattr(fscnn.models, name)(num_classes=NUM_CLASSES)
        self.torch_zoo = torch_zoo
        self._state = None

    def state(self):
        if self._state is None:
            self._state = random_state(self.model, np.random.default_rng(len(self.name)))
        return self._state


@pytest.fixture(scope="module")
def zoo(request, torch_zoo):
    return Zoo(request.param, torch_zoo)


# (kernel, batch) per sparsity: each kernel sees dense-ish and very sparse weights, batch 1
# and batch 3 (each new input shape costs a planning pass per layer).
CASE_AT = {0.0: ("dense", 3), 0.5: ("sparse", 1), 0.9: ("dense", 1), 0.99: ("sparse", 3)}
FULL_ZOO = os.environ.get("FSCNN_TEST_FULL_ZOO") == "1"


def quick_case(name, sparsity):
    """Whether (model, sparsity) runs by default. The VGG variants differ only in their
    config table and share a 102M-weight classifier that makes each case cost seconds, so
    beyond VGG-11 each runs at one sparsity (all four between them) unless
    FSCNN_TEST_FULL_ZOO=1."""
    i, j = MODEL_NAMES.index(name), SPARSITIES.index(sparsity)
    return FULL_ZOO or not name.startswith("vgg") or name == "vgg11" or i % 4 == j


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("zoo", MODEL_NAMES, indirect=True)
def test_state_dict_keys_match_torchvision_layout(zoo, torch_zoo):
    import torch
    with torch.device("meta"):
        reference = torch_zoo[0][zoo.name](NUM_CLASSES)
    expected = [(k, tuple(v.shape)) for k, v in reference.state_dict().items()]
    assert [(k, v.shape) for k, v in zoo.model.state_dict().items()] == expected


@pytest.mark.parametrize("zoo", MODEL_NAMES, indirect=True)
def test_state_dict_loads_strictly_into_torch(zoo):
    """fscnn's state_dict, num_batches_tracked included (0-d int64), is a torch checkpoint."""
    import torch
    state = zoo.model.state_dict()
    tracked = [k for k in state if k.endswith("num_batches_tracked")]
    assert all(state[k].shape == () and state[k].dtype == np.int64 for k in tracked)
    assert len(tracked) == sum(isinstance(m, nn.BatchNorm2d) for m in zoo.model.modules())
    with torch.device("meta"):
        reference = zoo.torch_zoo[0][zoo.name](NUM_CLASSES)
    result = reference.load_state_dict({k: torch.from_numpy(np.array(v))
                                        for k, v in state.items()}, strict=True, assign=True)
    assert list(result.missing_keys) == list(result.unexpected_keys) == []
    assert all(reference.state_dict()[k].dtype == torch.int64 for k in tracked)


def test_repr_matches_torch(torch_zoo):
    import torch
    with torch.device("meta"):
        reference = torch_zoo[0]["resnet18"](NUM_CLASSES)
    assert repr(fscnn.models.resnet18(num_classes=NUM_CLASSES)) == repr(reference)


@pytest.mark.parametrize("zoo, sparsity", [(n, s) for n in MODEL_NAMES for s in SPARSITIES
                                            if quick_case(n, s)], indirect=["zoo"])
def test_matches_torch(zoo, sparsity):
    import torch
    state = pruned(zoo.state(), sparsity)
    zoo.model.load_state_dict(state)
    kernel, batch = CASE_AT[sparsity]
    zoo.model.prepare(kernel=kernel)
    x = np.random.default_rng(3).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = torch_model(zoo.torch_zoo, zoo.name, state)(torch.from_numpy(x)).numpy()
    assert_close(zoo.model(x), expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize("name, kernel", [("vgg11", "sparse"), ("resnet18", "auto"),
                                          ("mobilenet_v2", "dense")])
def test_matches_torch_at_224(torch_zoo, name, kernel):
    import torch
    model = getattr(fscnn.models, name)(num_classes=NUM_CLASSES)
    state = pruned(random_state(model, np.random.default_rng(224)), 0.9)
    model.load_state_dict(state)
    model.prepare(kernel=kernel)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        expected = torch_model(torch_zoo, name, state)(torch.from_numpy(x)).numpy()
    assert_close(model(x), expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_from_torch_round_trip(torch_zoo, name):
    import torch
    from fscnn.convert import from_torch
    fresh = getattr(fscnn.models, name)(num_classes=NUM_CLASSES)
    state = pruned(random_state(fresh, np.random.default_rng(7)), 0.5)
    reference = torch_model(torch_zoo, name, state)
    converted = from_torch(reference, classes=torch_zoo[1])
    assert type(converted) is type(fresh)
    assert repr(converted) == repr(fresh)
    assert list(converted.state_dict()) == list(state)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert_close(converted.prepare(kernel="dense")(x), expected, rtol=RTOL, atol=0)


def test_from_torch_knows_torchvision_classes(torch_zoo):
    from fscnn.convert import from_torch
    builders, classes = torch_zoo
    model = builders["resnet18"](NUM_CLASSES)
    renamed = [type(model), type(model.layer1[0])]  # pose as torchvision.models.resnet's
    saved = [(cls.__module__, cls.__qualname__) for cls in renamed]
    for cls in renamed:
        cls.__module__, cls.__qualname__ = "torchvision.models.resnet", cls.__name__
    try:
        converted = from_torch(model)
    finally:
        for cls, (module, qualname) in zip(renamed, saved):
            cls.__module__, cls.__qualname__ = module, qualname
    assert isinstance(converted, fscnn.models.ResNet)
    assert isinstance(converted.layer1[0], fscnn.models.BasicBlock)


def test_resnet_blocks_fold_and_fuse():
    model = fscnn.models.resnet50(num_classes=NUM_CLASSES)
    rows = {row.name: row.layers for row in model.plan()}
    assert rows["conv1"] == "Conv2d+BatchNorm2d+ReLU"
    assert rows["layer1.0.conv1"] == rows["layer1.0.conv2"] == "Conv2d+BatchNorm2d+ReLU"
    assert rows["layer1.0.downsample.0"] == "Conv2d+BatchNorm2d"
    assert rows["layer1.0.conv3"] == "Conv2d+BatchNorm2d+add"  # the shortcut, in its epilogue
    assert rows["fc"] == "Linear"
    assert len(rows) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_mobilenet_v2_folds_every_batch_norm():
    model = fscnn.models.mobilenet_v2(num_classes=NUM_CLASSES)
    rows = model.plan()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum("BatchNorm2d" in row.layers for row in rows) == n_bn == 52
    assert sum(row.layers.endswith("ReLU6") for row in rows) == 35


def test_vgg_plan_fuses_relu_into_classifier_and_pools_into_convolutions():
    model = fscnn.models.vgg11_bn(num_classes=NUM_CLASSES)
    rows = {row.name: row.layers for row in model.plan()}
    # vgg11's features: conv-bn-relu-pool twice, then pairs of convolutions before each pool
    assert rows["features.0"] == rows["features.4"] == "Conv2d+BatchNorm2d+ReLU+MaxPool2d"
    assert rows["features.8"] == "Conv2d+BatchNorm2d+ReLU"
    assert rows["features.11"] == "Conv2d+BatchNorm2d+ReLU+MaxPool2d"
    assert sum(r.endswith("MaxPool2d") for r in rows.values()) == 5
    assert rows["classifier.0"] == rows["classifier.3"] == "Linear+ReLU"
    assert rows["classifier.6"] == "Linear"


def test_resnet_rejects_torchvision_unsupported_options():
    with pytest.raises(ValueError, match="groups=1 and base_width=64"):
        fscnn.models.ResNet(fscnn.models.BasicBlock, [2, 2, 2, 2], groups=2)
    with pytest.raises(ValueError, match="layers"):
        fscnn.models.ResNet(fscnn.models.BasicBlock, [2, 2, 2])
    with pytest.raises(ValueError, match="stride"):
        fscnn.models.InvertedResidual(16, 16, 3, 6)
