"""Whole models imported from ONNX against ONNX Runtime on the same file.

torchvision's classification families, exported by torch's TorchScript and dynamo exporters
(random weights, batch-norm statistics perturbed, magnitude-pruned to 0% and 90%), and the
architecture graphs bundled with the onnx wheel (``onnx/backend/test/data/light``: real
model-zoo graphs whose weights are ``ConstantOfShape`` placeholders, given random values
here). Small inputs keep the grid within CI's budget; a few run at 224x224.
"""
import io
import os
import warnings

import numpy as np
import pytest

from conftest import import_or_skip, import_torchvision

onnx = import_or_skip("onnx", 'pip install "fscnn[onnx]"')

import fscnn  # noqa: E402
from fscnn.importers.onnx import replace_weights  # noqa: E402

# name -> (input size, exporter): the TorchScript exporter refuses AlexNet's and VGG's
# adaptive pools at small sizes (an output that is not a factor of the input); the dynamo
# exporter writes them as gathers
FAMILIES = {
    "alexnet": (64, "dynamo"), "vgg11_bn": (32, "dynamo"), "resnet18": (40, "torchscript"),
    "resnext50_32x4d": (32, "torchscript"), "densenet121": (32, "torchscript"),
    "squeezenet1_0": (48, "torchscript"), "squeezenet1_1": (48, "torchscript"),
    "shufflenet_v2_x0_5": (32, "torchscript"), "mobilenet_v2": (32, "torchscript"),
    "mobilenet_v3_small": (32, "torchscript"), "mobilenet_v3_large": (32, "torchscript"),
    "mnasnet0_5": (32, "torchscript"), "efficientnet_b0": (32, "dynamo"),
    "regnet_x_400mf": (32, "torchscript"), "regnet_y_400mf": (32, "torchscript"),
    "googlenet": (32, "torchscript"), "inception_v3": (80, "torchscript"),
}
TOLERANCE = 1e-4  # max abs error as a fraction of the largest |output| (the rule)


def _ort():
    return import_or_skip("onnxruntime", 'pip install onnxruntime (in "fscnn[test]")')


def _session(data):
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _assert_matches_ort(model, data, x):
    sess = _session(data)
    expected = sess.run(None, {model.inputs[0].name: x})[0]
    got = model(x)
    scale = np.abs(expected).max()
    assert np.isfinite(scale) and scale > 0
    err = np.abs(got - expected).max()
    assert err <= TOLERANCE * scale, f"max error {err:.3g} for outputs up to {scale:.3g}"


def _torchvision_model(name, rng):
    torch = import_or_skip("torch")
    torchvision = import_torchvision()
    torch.manual_seed(int(rng.integers(1 << 30)))
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet",
                                                                     "inception_v3") else {}
    model = getattr(torchvision.models, name)(**kwargs).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return torch, model


def _export(torch, model, size, exporter):
    """The model exported at (1, 3, size, size): with the TorchScript exporter, batch and
    image sizes free; with the dynamo exporter (torch's default), batch free."""
    buffer = io.BytesIO()
    x = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            import_or_skip("onnxscript", "the test extra; torch's dynamo exporter needs it")
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(model, (x,), buffer, dynamo=True, input_names=["input"],
                              dynamic_shapes=({0: batch},), verbose=False)
        else:
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"],
                              dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}})
    return buffer.getvalue()


@pytest.mark.parametrize("name", FAMILIES)
def test_torchvision_family_against_onnxruntime(name, rng):
    """Dense with the dense kernels, then pruned to 90% (fscnn's graph pruned in place, ONNX
    Runtime running the pruned file fscnn writes) with the sparse kernel; kernels are fixed
    rather than timed ('auto') to keep the grid fast."""
    size, exporter = FAMILIES[name]
    torch, model = _torchvision_model(name, rng)
    data = _export(torch, model, size, exporter)
    graph = fscnn.from_onnx(data)
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    _assert_matches_ort(graph.prepare(kernel="dense"), data, x)
    fscnn.prune.prune(graph, 0.9, inplace=True)
    assert fscnn.prune.sparsity_report(graph).total.sparsity == pytest.approx(0.9, abs=0.01)
    pruned = replace_weights(data, {k: graph.state_dict()[k]
                                    for k in fscnn.prune.prunable_names(graph)})
    graph.to_sparse().prepare(kernel="sparse")
    _assert_matches_ort(graph, pruned.SerializeToString(), x)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_exported_at_224_runs_at_320(name, rng):
    """Exported at 224x224 with free sizes, pruned to 90%, prepared with timed ('auto')
    kernels and run at 224 and 320."""
    torch, model = _torchvision_model(name, rng)
    data = _export(torch, model, 224, "torchscript")
    graph = fscnn.from_onnx(data)
    fscnn.prune.prune(graph, 0.9, inplace=True)
    pruned = replace_weights(data, graph.state_dict()).SerializeToString()
    for size in (224, 320):
        x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        graph.prepare(x.shape)
        _assert_matches_ort(graph, pruned, x)


def test_from_torch_converts_every_family_it_has_no_twin_for(rng):
    torch, model = _torchvision_model("densenet121", rng)
    graph = fscnn.from_torch(model, torch.zeros(1, 3, 32, 32))
    assert isinstance(graph, fscnn.nn.Graph)
    graph.prepare(kernel="dense")
    x = rng.standard_normal((2, 3, 40, 40)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    scale = np.abs(expected).max()
    assert np.abs(graph(x) - expected).max() <= TOLERANCE * scale
    # twins keep torch's state_dict exactly
    torch, resnet = _torchvision_model("resnet18", rng)
    twin = fscnn.from_torch(resnet)
    assert not isinstance(twin, fscnn.nn.Graph)


def _light_models():
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".onnx"))


def _with_random_weights(model, rng):
    """The placeholder weights (ConstantOfShape nodes) replaced by random initializers:
    uniform(+-1/sqrt(fan_in)) for weights, uniform(0.5, 1.5) for vectors (biases, batch-norm
    scales and variances)."""
    from onnx import numpy_helper
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            if len(shape) >= 2:
                bound = 1 / np.sqrt(np.prod(shape[1:]))
                value = rng.uniform(-bound, bound, shape)
            else:
                value = rng.uniform(0.5, 1.5, shape)
            model.graph.initializer.append(
                numpy_helper.from_array(value.astype(np.float32), node.output[0]))
            if model.ir_version < 4:  # initializers are declared as graph inputs then
                model.graph.input.append(onnx.helper.make_tensor_value_info(
                    node.output[0], onnx.TensorProto.FLOAT, shape))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


@pytest.mark.parametrize("name", _light_models())
def test_onnx_light_model_zoo_graphs(name, rng):
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    model = _with_random_weights(onnx.load(os.path.join(folder, name + ".onnx")), rng)
    data = model.SerializeToString()
    graph = fscnn.from_onnx(data).prepare(kernel="dense")
    x = rng.uniform(0, 1, graph.inputs[0].shape).astype(np.float32)
    _assert_matches_ort(graph, data, x)


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 20])
def test_opsets(opset, rng):
    """One model (squeeze-excitation, hard-swish, depthwise convolutions) exported at each
    opset: Clip, Squeeze/Unsqueeze, ReduceMean, Flatten... change form across them."""
    torch, model = _torchvision_model("mobilenet_v3_small", rng)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False,
                          opset_version=opset, input_names=["input"])
    data = buffer.getvalue()
    graph = fscnn.from_onnx(data).prepare(kernel="dense")
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    _assert_matches_ort(graph, data, x)


@pytest.mark.parametrize("name, fused", [
    ("efficientnet_b0", {"Conv2d+SiLU", "Conv2d+Sigmoid"}),
    ("mobilenet_v3_small", {"Conv2d+Hardswish", "Conv2d+Hardsigmoid", "Gemm+Hardswish"})])
def test_mobile_activations_fused_against_onnxruntime(name, fused, rng):
    """SiLU (exported as x * Sigmoid(x)), the squeeze-excitation gates (Sigmoid,
    HardSigmoid) and HardSwish run in the epilogues of the convolutions and linear layers
    before them; pruned to 90%, sparse kernels, batch 1 at the family's size (32x32)."""
    size, exporter = FAMILIES[name]
    torch, model = _torchvision_model(name, rng)
    data = _export(torch, model, size, exporter)
    graph = fscnn.from_onnx(data)
    fscnn.prune.prune(graph, 0.9, inplace=True)
    pruned = replace_weights(data, {k: graph.state_dict()[k]
                                    for k in fscnn.prune.prunable_names(graph)})
    x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    graph.to_sparse().prepare(x.shape, kernel="sparse")
    layers = {row.layers for row in graph.plan()}
    assert fused <= layers, sorted(layers)
    _assert_matches_ort(graph, pruned.SerializeToString(), x)
