"""The fused 1x1 + depthwise operator (fscnn.ops.ExpandDepthwiseOp) and the plans that use it.

The fused kernel is checked against float64 NumPy references on a grid of small shapes (every
SIMD level, 1 and 2 threads), always through the fused plan itself: which way 'auto' picks is
timing. The plan tests force the choice (``_fastest_way``) both ways and check the model
against torch.
"""
import numpy as np
import pytest
from conftest import assert_close, import_or_skip, sparse_weight, torch_or_skip
from reference import conv2d, hardswish, relu, relu6

import fscnn
from fscnn import _config, nn
from fscnn.nn import _plan
from fscnn.kernels import depthwise_conv
from fscnn.ops import Conv2dOp, ExpandDepthwiseOp, OpError, QuantizedConv2dOp

ACTS = {None: lambda v: v, "relu": relu, "relu6": relu6, "hardswish": hardswish}


def _weight(rng, shape, density):
    return sparse_weight(shape, 1.0 - density, rng)


def _pair(rng, C, M, mult=1, k=3, stride=1, padding=1, dilation=1, density=0.3,
          acts=("relu6", "relu6"), bias=(True, True)):
    w1 = _weight(rng, (M, C, 1, 1), density)
    w2 = _weight(rng, (M * mult, 1, k, k), density)
    b1 = rng.standard_normal(M).astype(np.float32) if bias[0] else None
    b2 = rng.standard_normal(M * mult).astype(np.float32) if bias[1] else None
    a = Conv2dOp(w1, b1, activation=acts[0], name="expand")
    b = Conv2dOp(w2, b2, stride=stride, padding=padding, dilation=dilation, groups=M,
                 activation=acts[1], name="dw")
    spec = dict(w1=w1, b1=b1, w2=w2, b2=b2, stride=stride, padding=padding, dilation=dilation,
                groups=M, acts=acts)
    return a, b, spec


def _reference(x, s):
    h = ACTS[s["acts"][0]](conv2d(x.astype(np.float64), s["w1"], s["b1"]))
    return ACTS[s["acts"][1]](conv2d(h, s["w2"], s["b2"], s["stride"], s["padding"],
                                     s["dilation"], s["groups"]))


def _force(monkeypatch, fused):
    """Make every pair's timing come out ``fused`` (True: the fused kernel on the caller's
    threads is the fastest way)."""
    monkeypatch.setattr(ExpandDepthwiseOp, "_fastest_way",
                        staticmethod(lambda apart, ways: max(ways) if fused else None))


def _fused(a, b, x, threads):
    """The fused kernel's output for ``x`` (whatever 'auto' would pick)."""
    op = ExpandDepthwiseOp(a, b)
    geo = b._geometry(a.output_shape(x.shape))
    plan = depthwise_conv.expand_depthwise_plan(a, b, geo, threads,
                                                _config.simd_level_index())
    return op._run(x, geo, plan)


CASES = [
    # C, M, H, W, mult, k, stride, padding, dilation, density, acts
    (3, 5, 9, 7, 1, 3, 1, 1, 1, 0.5, ("relu6", "relu6")),
    (4, 8, 11, 13, 1, 3, 2, 1, 1, 0.3, ("relu6", "relu6")),
    (16, 24, 20, 20, 1, 3, 2, 1, 1, 0.1, ("relu6", "relu6")),   # several full tiles
    (8, 12, 7, 7, 1, 3, 1, 1, 1, 1.0, ("relu", None)),          # dense, positions < a tile
    (6, 4, 1, 1, 1, 3, 1, 1, 1, 0.7, ("relu6", "relu6")),       # one position
    (5, 6, 3, 17, 2, 3, 1, 1, 1, 0.6, (None, "relu")),          # channel multiplier 2
    (4, 6, 10, 9, 1, 5, 1, 2, 1, 0.4, ("hardswish", "hardswish")),
    (4, 6, 12, 12, 1, 3, 1, 2, 2, 0.4, ("relu6", None)),         # dilation 2
    (4, 6, 9, 9, 1, 3, 2, 0, 1, 0.4, ("relu6", "relu6")),        # no padding, stride 2
    (5, 7, 8, 8, 1, 3, 1, 1, 1, 0.0, ("relu6", "relu6")),        # all weights zero
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_fused_kernel_matches_float64(case, rng, threads, simd_level):
    C, M, H, W, mult, k, stride, padding, dilation, density, acts = case
    a, b, spec = _pair(rng, C, M, mult, k, stride, padding, dilation, density, acts)
    x = rng.standard_normal((2, C, H, W)).astype(np.float32)
    out = _fused(a, b, x, threads)
    assert out.dtype == np.float32 and out.shape == b.output_shape(a.output_shape(x.shape))
    assert_close(out, _reference(x, spec))


def test_fused_kernel_without_biases(rng):
    a, b, spec = _pair(rng, 6, 10, stride=2, bias=(False, False))
    x = rng.standard_normal((1, 6, 15, 16)).astype(np.float32)
    assert_close(_fused(a, b, x, 1), _reference(x, spec))


def test_fused_kernel_carries_nan_as_the_layers_do(rng):
    a, b, spec = _pair(rng, 4, 6, density=1.0, acts=(None, None))
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    x[0, :, 3, 4] = np.nan
    out, apart = _fused(a, b, x, 1), b(a(x))
    assert np.array_equal(np.isnan(out), np.isnan(apart)) and np.isnan(out).any()


@pytest.mark.parametrize("faster", [True, False])
def test_op_runs_the_way_it_timed_faster(rng, monkeypatch, faster):
    _force(monkeypatch, fused=faster)
    a, b, spec = _pair(rng, 5, 8, stride=2)
    op = ExpandDepthwiseOp(a, b)
    x = rng.standard_normal((2, 5, 12, 10)).astype(np.float32)
    assert op.fused_for(x.shape) is None
    assert_close(op(x), _reference(x, spec))
    assert op.fused_for(x.shape) is faster
    assert_close(op(x[:1].copy()), _reference(x[:1], spec))  # another shape, planned anew


@pytest.mark.parametrize("again_faster_on_one", [True, False])
def test_fused_kernel_put_on_one_thread_is_timed_again_by_the_next_call(rng, monkeypatch,
                                                                         again_faster_on_one):
    from fscnn import ops
    monkeypatch.setattr(ExpandDepthwiseOp, "_fastest_way",
                        staticmethod(lambda apart, ways: min(ways)))  # one thread wins
    looks = []

    def typical_calls(fns):  # (all threads, fewer)
        looks.append(len(fns))
        return [2.0, 1.0] if again_faster_on_one else [1.0, 2.0]

    monkeypatch.setattr(ops, "_typical_calls", typical_calls)
    a, b, spec = _pair(rng, 5, 8, stride=2)
    x = rng.standard_normal((2, 5, 12, 10)).astype(np.float32)
    with _config.threads(2):
        op = ExpandDepthwiseOp(a, b)
        assert_close(op(x), _reference(x, spec))
        assert op.fused_for(x.shape) and op.threads_for(x.shape) == 1 and looks == []
        with ops.second_looks():  # as prepare's second call
            assert_close(op(x), _reference(x, spec))
        assert looks == [2] and op.threads_for(x.shape) == (1 if again_faster_on_one else 2)
        assert_close(op(x), _reference(x, spec))
        assert looks == [2]


def _ineligible(rng, **changes):
    w1 = _weight(rng, (6, 4, 1, 1), 0.5)
    w2 = _weight(rng, (6, 1, 3, 3), 0.5)
    first = dict(weight=w1, activation="relu6", name="expand")
    second = dict(weight=w2, padding=1, groups=6, name="dw")
    first.update(changes.get("first", {}))
    second.update(changes.get("second", {}))
    return ExpandDepthwiseOp.ineligibility(Conv2dOp(**first), Conv2dOp(**second))


@pytest.mark.parametrize("changes, reason", [
    ({}, None),
    ({"first": {"stride": 2}}, "1x1 convolution with stride 1"),
    ({"first": {"padding": 1}}, "no padding"),
    ({"first": {"pool": "max2x2"}}, "no pool"),
    ({"first": {"weight": np.ones((6, 4, 3, 3), np.float32)}}, "1x1 convolution"),
    ({"first": {"weight": np.ones((6, 2, 1, 1), np.float32), "groups": 2}}, "groups 1"),
    ({"first": {"kernel": "sparse"}}, "must be 'auto'"),
    ({"second": {"kernel": "depthwise"}}, "must be 'auto'"),
    ({"second": {"pool": "max2x2"}}, "no pool"),
    ({"second": {"weight": np.ones((6, 3, 3, 3), np.float32), "groups": 2}},
     "one input channel per group"),
])
def test_ineligibility(rng, changes, reason):
    found = _ineligible(rng, **changes)
    assert (found is None) if reason is None else reason in found


def test_mismatched_channels_and_quantized_layers_are_refused(rng):
    a = Conv2dOp(np.ones((6, 4, 1, 1), np.float32))
    b = Conv2dOp(np.ones((8, 1, 3, 3), np.float32), groups=8)
    assert "take the first's 6 channels" in ExpandDepthwiseOp.ineligibility(a, b)
    with pytest.raises(OpError, match="take the first's 6 channels"):
        ExpandDepthwiseOp(a, b)
    q = QuantizedConv2dOp.__new__(QuantizedConv2dOp)
    assert "float convolutions" in ExpandDepthwiseOp.ineligibility(q, b)


# -- in prepared models ---------------------------------------------------------------------
def _block(rng, C=8, M=24, out=8, stride=1, nested=True):
    """A MobileNetV2 inverted residual's layers, as torchvision nests them (or flat)."""
    expand = [nn.Conv2d(C, M, 1, bias=False), nn.BatchNorm2d(M), nn.ReLU6()]
    dw = [nn.Conv2d(M, M, 3, stride, 1, groups=M, bias=False), nn.BatchNorm2d(M), nn.ReLU6()]
    project = [nn.Conv2d(M, out, 1, bias=False), nn.BatchNorm2d(out)]
    parts = [nn.Sequential(*expand), nn.Sequential(*dw)] if nested else expand + dw
    block = nn.Sequential(*parts, *project)
    for name, module in block.named_modules():
        if isinstance(module, nn.Conv2d):
            module.weight = _weight(rng, module.weight.shape, 0.3)
        elif isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.load_state_dict({"weight": rng.random(n) + 0.5,
                                    "bias": rng.standard_normal(n),
                                    "running_mean": rng.standard_normal(n) * 0.1,
                                    "running_var": rng.random(n) + 0.5})
    return block


def _torch_twin(block, nested):
    """The torch layers of :func:`_block` holding its state."""
    import torch
    t = torch.nn
    convs = [m for _, m in block.named_modules() if isinstance(m, nn.Conv2d)]
    C, M, out = convs[0].in_channels, convs[0].out_channels, convs[2].out_channels
    stride = convs[1].stride
    expand = [t.Conv2d(C, M, 1, bias=False), t.BatchNorm2d(M), t.ReLU6()]
    dw = [t.Conv2d(M, M, 3, stride, 1, groups=M, bias=False), t.BatchNorm2d(M), t.ReLU6()]
    project = [t.Conv2d(M, out, 1, bias=False), t.BatchNorm2d(out)]
    parts = [t.Sequential(*expand), t.Sequential(*dw)] if nested else expand + dw
    twin = t.Sequential(*parts, *project).eval()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                          block.state_dict().items()})
    return twin


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("faster", [True, False])
def test_prepared_block_matches_torch(rng, monkeypatch, nested, faster):
    torch = torch_or_skip()
    _force(monkeypatch, fused=faster)
    block = _block(rng, stride=2, nested=nested)
    x = rng.standard_normal((2, 8, 14, 13)).astype(np.float32)
    with torch.no_grad():
        expected = _torch_twin(block, nested)(torch.from_numpy(x)).numpy()
    block.prepare(x.shape)
    kinds = [type(m).__name__ for m, _ in block._prepared.sequence(block)]
    assert kinds == ["_PairStep", "Conv2d"]
    assert_close(block(x), expected)
    assert_close(block(x), expected)  # the fused path, once the shape is known
    kernels = [k for row in block.plan() for k in row.kernels.values()]
    assert (kernels[:2] == ["expand+depthwise"] * 2) is faster
    assert_close(block(x[0]), expected[0])  # unbatched


def test_fused_pair_never_calls_the_absorbed_layers(rng, monkeypatch):
    _force(monkeypatch, fused=True)
    block = _block(rng)
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    block(x)
    calls = []
    monkeypatch.setattr(Conv2dOp, "__call__", lambda self, v: calls.append(self.name))
    block(x)  # the pair's operator calls its kernel, not the layers' operators
    assert calls == ["2 (Conv2d)"]  # the projection alone


def test_profile_names_the_fused_pair(rng, monkeypatch):
    _force(monkeypatch, fused=True)
    block = _block(rng)
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    block(x)
    with nn.profile() as records:
        block(x)
    assert [(r.name, r.kernel) for r in records][0] == ("0.0", "expand+depthwise")
    assert records[0].type == "Conv2d+BatchNorm2d+ReLU6+Conv2d+BatchNorm2d+ReLU6"
    assert 0 < records[0].flops_sparse < records[0].flops_dense
    assert len(records) == 2


def test_calibration_sees_both_layers_of_a_fused_pair(rng, monkeypatch):
    """fscnn.quantize observes every convolution's input: a fused pair runs apart for it."""
    _force(monkeypatch, fused=True)
    block = _block(rng)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    block(x)
    seen = []
    with _plan.observing(lambda name, layer, v: seen.append(name)):
        block(x)
    assert seen == ["0.0", "1.0", "2"]
    q = fscnn.quantize(block, [x])
    assert_close(q(x), block(x), rtol=0.05, atol=0.05)


def test_fixed_kernels_are_not_fused(rng):
    block = _block(rng)
    block.prepare((1, 8, 9, 9), kernel="sparse")
    assert not any(type(m).__name__ == "_PairStep" for m, _ in block._prepared.sequence(block))


def test_pair_refuses_a_wrong_input_naming_the_layer(rng):
    block = _block(rng)
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    block(x)
    block(x)
    with pytest.raises(ValueError, match=r"0\.0 \(Conv2d\).*8 input channels"):
        block(rng.standard_normal((1, 5, 9, 9)).astype(np.float32))


def test_mobilenet_v2_fuses_its_blocks(rng, monkeypatch):
    torch = torch_or_skip()
    from fscnn.torch_reference import torch_models
    _force(monkeypatch, fused=True)
    model = fscnn.models.mobilenet_v2(num_classes=10)
    fscnn.prune.prune(model, 0.8, inplace=True)
    x = rng.standard_normal((1, 3, 48, 48)).astype(np.float32)
    reference = torch_models()[0]["mobilenet_v2"](10).eval()
    reference.load_state_dict({k: torch.from_numpy(np.array(v))
                               for k, v in model.state_dict().items()})
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    model(x)
    kernels = [k for row in model.plan() for k in row.kernels.values()]
    assert kernels.count("expand+depthwise") == 2 * 16  # every block with an expansion
    assert_close(model(x), expected, rtol=1e-4, atol=0)


# -- in imported graphs ----------------------------------------------------------------------
def _onnx_block(rng, C=6, M=12, stride=2, tap_expansion=False):
    """An ONNX graph x -> Conv 1x1 -> Clip(0, 6) -> Conv depthwise 3x3 -> Clip(0, 6) ->
    Conv 1x1 -> y (as torch exports MobileNetV2's blocks); with ``tap_expansion`` the
    expansion's output is also a graph output (so it cannot be fused away)."""
    import_or_skip("onnx", 'pip install "fscnn[onnx]"')
    from onnx import TensorProto, helper, numpy_helper
    w1 = _weight(rng, (M, C, 1, 1), 0.4)
    w2 = _weight(rng, (M, 1, 3, 3), 0.4)
    w3 = _weight(rng, (C, M, 1, 1), 0.4)
    b1, b2 = (rng.standard_normal(M).astype(np.float32) for _ in range(2))
    six = np.float32(6)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["e"], name="expand"),
        helper.make_node("Clip", ["e", "lo", "hi"], ["er"], name="expand_act"),
        helper.make_node("Conv", ["er", "w2", "b2"], ["d"], name="dw", group=M,
                         pads=[1, 1, 1, 1], strides=[stride, stride]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["dr"], name="dw_act"),
        helper.make_node("Conv", ["dr", "w3"], ["y"], name="project"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in
             [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3),
              ("lo", np.float32(0)), ("hi", six)]]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if tap_expansion:
        outputs.append(helper.make_tensor_value_info("er", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", C, "H", "W"])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort(model, x):
    """ONNX Runtime's outputs for ``x``, on one thread (no thread pool of its own, which
    ThreadSanitizer builds would report)."""
    import_or_skip("onnxruntime", "pip install onnxruntime")
    from fscnn.bench import ort_session
    return ort_session(model.SerializeToString(), 1).run(None, {"x": x})


@pytest.mark.parametrize("faster", [True, False])
def test_imported_graph_fuses_the_pair_and_matches_onnxruntime(rng, monkeypatch, faster):
    _force(monkeypatch, fused=faster)
    model = _onnx_block(rng)
    g = fscnn.from_onnx(model)
    x = rng.standard_normal((2, 6, 11, 12)).astype(np.float32)
    expected = _ort(model, x)[0]
    assert_close(g(x), expected)
    pairs = g._prepared.graph_pairs(g)
    assert list(pairs) == [0] and pairs[0][1] == (1, 2)  # the Clip and the depthwise node
    for _ in range(2):  # the pair's own path, once the shape is known
        assert_close(g(x), expected)
    kernels = {r.name: k for r in g.plan() for k in r.kernels.values()}
    assert (kernels["expand"] == kernels["dw"] == "expand+depthwise") is faster
    with nn.profile() as records:
        g(x)
    names = [r.name for r in records]
    assert names == (["expand", "project"] if faster else ["expand", "dw", "project"])


def test_graph_output_read_elsewhere_is_not_fused(rng):
    model = _onnx_block(rng, tap_expansion=True)
    g = fscnn.from_onnx(model)
    x = rng.standard_normal((1, 6, 9, 9)).astype(np.float32)
    y, er = g(x)
    assert g._prepared.graph_pairs(g) == {}
    expected = _ort(model, x)
    assert_close(y, expected[0])
    assert_close(er, expected[1])


def test_empty_inputs_run_apart(rng, monkeypatch):
    _force(monkeypatch, fused=True)
    a, b, spec = _pair(rng, 4, 6, padding=2)
    op = ExpandDepthwiseOp(a, b)
    out = op(np.zeros((0, 4, 5, 5), np.float32))
    assert out.shape == (0, 6, 7, 7) and op.fused_for((0, 4, 5, 5)) is False
    with pytest.raises(OpError, match="expand: padded input 0x3 is smaller"):
        op(np.zeros((1, 4, 0, 3), np.float32))
