"""The zoo against torchvision's own model definitions (not the project's torch rebuild).

For each architecture: the same state_dict keys and shapes (``num_batches_tracked``
included), torchvision's randomly initialised weights (batch norm statistics and affine
parameters perturbed, so that folding is exercised) loaded into the fscnn model, the same
outputs on small inputs, and fscnn's state_dict loaded back into torchvision's model with
``strict=True``. ResNeXt and Wide ResNet have no builder in the zoo; they are the zoo's
``ResNet`` class with torchvision's ``groups`` / ``width_per_group``.

torchvision is a test-only dependency, installed with ``--no-deps`` beside the CPU build of
torch (see ``conftest.import_torchvision``).
"""
import numpy as np
import pytest

import fscnn
from conftest import assert_close, import_torchvision, torch_or_skip
from fscnn import models

NUM_CLASSES = 10
RTOL = 1e-4  # max|error| <= 1e-4 * max|output|: float32 through up to 50 layers

FSCNN_BUILDERS = {
    "vgg16": models.vgg16,
    "vgg16_bn": models.vgg16_bn,
    "resnet18": models.resnet18,
    "resnet50": models.resnet50,
    "resnext50_32x4d": lambda num_classes: models.ResNet(
        models.Bottleneck, [3, 4, 6, 3], num_classes=num_classes, groups=32, width_per_group=4),
    "wide_resnet50_2": lambda num_classes: models.ResNet(
        models.Bottleneck, [3, 4, 6, 3], num_classes=num_classes, width_per_group=128),
    "mobilenet_v2": models.mobilenet_v2,
}


def _torchvision_model(name, seed=0):
    """torchvision's ``name`` with its own random init, batch norms perturbed, eval mode."""
    torch = torch_or_skip()
    torchvision = import_torchvision()
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(num_classes=NUM_CLASSES)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.1 * torch.randn(c, generator=generator))
                module.num_batches_tracked.fill_(7)
    return model.eval()


def _numpy_state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=sorted(FSCNN_BUILDERS))
def pair(request):
    """(name, torchvision model, fscnn model holding its weights), built once per name."""
    reference = _torchvision_model(request.param)
    model = FSCNN_BUILDERS[request.param](num_classes=NUM_CLASSES)
    model.load_state_dict(_numpy_state(reference))  # strict
    return request.param, reference, model


def test_state_dict_keys_and_shapes_match(pair):
    _, reference, model = pair
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in reference.state_dict().items()]


def test_outputs_match(pair):
    torch = torch_or_skip()
    name, reference, model = pair
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert np.abs(expected).max() > 0
    assert_close(model.prepare(kernel="auto")(x), expected, rtol=RTOL, atol=0)


def test_state_dict_loads_back_strictly(pair):
    torch = torch_or_skip()
    name, reference, model = pair
    torchvision = import_torchvision()
    with torch.device("meta"):  # no init: every tensor comes from fscnn's state_dict
        fresh = getattr(torchvision.models, name)(num_classes=NUM_CLASSES)
    state = model.state_dict()
    result = fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                                   strict=True, assign=True)
    assert list(result.missing_keys) == list(result.unexpected_keys) == []
    for key, value in fresh.state_dict().items():
        expected = reference.state_dict()[key]
        assert value.dtype == expected.dtype, key
        assert torch.equal(value, expected), key


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_pruned_outputs_match_with_the_sparse_kernel(name):
    """torchvision's weights pruned to 90% by fscnn, then the sparse kernels against torch."""
    torch = torch_or_skip()
    reference = _torchvision_model(name, seed=1)
    state = fscnn.prune(_numpy_state(reference), 0.9)
    reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    model = FSCNN_BUILDERS[name](num_classes=NUM_CLASSES)
    model.load_state_dict(state)
    x = np.random.default_rng(1).standard_normal((1, 3, 40, 40), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert_close(model.prepare(kernel="sparse")(x), expected, rtol=RTOL, atol=0)
