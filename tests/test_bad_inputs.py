"""Bad input to every public entry point raises ValueError/TypeError naming the culprit.

Entry points: the functional operators, the prepared operators (Conv2dOp, LinearOp), the layer
classes, zoo models, ``fscnn.sparse``'s constructors, ``fscnn.io.load`` and the CLI. Each bad
input must raise a ``ValueError`` or ``TypeError`` (or a subclass) whose message names the
operator, layer or parameter: never a crash, a hang, an ``OverflowError``/``MemoryError`` from
deep inside, or a silently wrong result. Sizes that would overflow the kernels' 32-bit offsets
are tested through shapes only (``output_shape``) or through zero-stride ``np.broadcast_to``
views larger than any address space, so nothing large is ever allocated.

Tests marked ``xfail(strict=True)`` document bugs found here; the lead fixes the code and
removes the mark.
"""
import numpy as np
import pytest

import fscnn.functional as F
from fscnn import cli, io, models, nn
from fscnn.ops import Conv2dOp, LinearOp
from fscnn.sparse import CSRMatrix, FormatError, SparseConvWeight

X4 = np.ones((1, 3, 8, 8), np.float32)
W4 = np.ones((4, 3, 3, 3), np.float32)

# dtypes that are not floating point, as arrays of shape (1, 3, 8, 8) or any other shape
BAD_DTYPES = {
    "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "bool": np.bool_,
    "complex64": np.complex64, "complex128": np.complex128, "object": object, "str": "U3",
}


def _bad(dtype, shape=X4.shape):
    return np.ones(shape).astype(dtype)


# A zero-stride view whose copy would need more bytes than any 64-bit address space holds
# (2**48 float32 = 1 PiB), so an implementation that converts before validating fails with
# MemoryError at once instead of allocating.
def _huge_view(shape):
    return np.broadcast_to(np.float32(1), shape)


HUGE_HW = (2**23, 2**23)

# ------------------------------------------------------------------ functional operators
# name -> call with x of shape (1, 3, 8, 8) and valid other arguments
FUNCTIONAL = {
    "conv2d": lambda x: F.conv2d(x, W4),
    "max_pool2d": lambda x: F.max_pool2d(x, 2),
    "avg_pool2d": lambda x: F.avg_pool2d(x, 2),
    "adaptive_avg_pool2d": lambda x: F.adaptive_avg_pool2d(x, 2),
    "adaptive_max_pool2d": lambda x: F.adaptive_max_pool2d(x, 2),
    "relu": F.relu, "relu6": F.relu6, "sigmoid": F.sigmoid, "tanh": F.tanh,
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "silu": F.silu,
    "leaky_relu": F.leaky_relu,
    "prelu": lambda x: F.prelu(x, np.ones(3, np.float32)),
    "softmax": lambda x: F.softmax(x, 1),
    "add": lambda x: F.add(x, X4),
    "batch_norm": lambda x: F.batch_norm(x, np.zeros(3), np.ones(3)),
}


@pytest.mark.parametrize("dtype", BAD_DTYPES.values(), ids=BAD_DTYPES.keys())
@pytest.mark.parametrize("name", FUNCTIONAL)
def test_functional_refuses_non_float_inputs(name, dtype):
    with pytest.raises(TypeError, match=rf"{name}\b.*expected a float array"):
        FUNCTIONAL[name](_bad(dtype))


@pytest.mark.parametrize("dtype", BAD_DTYPES.values(), ids=BAD_DTYPES.keys())
def test_linear_refuses_non_float_inputs(dtype):
    with pytest.raises(TypeError, match=r"linear: input: expected a float array"):
        F.linear(_bad(dtype, (2, 5)), np.ones((3, 5), np.float32))


@pytest.mark.parametrize("x", [None, "abc", [[1.0, 2.0], [3.0]], {"a": 1}, object()],
                         ids=["None", "str", "ragged", "dict", "object"])
@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "relu"])
def test_functional_refuses_non_arrays(name, x):
    with pytest.raises(TypeError, match=name):
        FUNCTIONAL[name](x)


@pytest.mark.parametrize("shape", [(3, 8, 8), (8, 8), (1, 1, 3, 8, 8), ()],
                         ids=["CHW", "HW", "5-D", "scalar"])
@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                                  "adaptive_max_pool2d"])
def test_four_d_operators_refuse_other_ranks(name, shape):
    with pytest.raises(ValueError, match=rf"{name}.*\(N, C, H, W\)"):
        FUNCTIONAL[name](np.ones(shape, np.float32))


CONV_HYPER = [
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(stride=-1), ValueError, "stride must be positive"),
    (dict(stride=1.5), TypeError, "stride must be an int"),
    (dict(stride=True), TypeError, "stride must be an int"),
    (dict(stride="2"), TypeError, "stride must be an int"),
    (dict(stride=(1, 2, 3)), ValueError, "stride must be an int or a pair"),
    (dict(dilation=0), ValueError, "dilation must be positive"),
    (dict(dilation=(1, -2)), ValueError, "dilation must be positive"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding=(0, -1)), ValueError, "padding must be non-negative"),
    (dict(padding=(1, 1, 1, -1)), ValueError, "padding must be non-negative"),
    (dict(padding=(1, 1, 1)), ValueError, "padding must be"),
    (dict(padding=1.0), TypeError, "padding must be"),
    (dict(padding="full"), ValueError, "padding must be"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(groups=-1), ValueError, "groups must be a positive int"),
    (dict(groups=1.0), ValueError, "groups must be a positive int"),
    (dict(groups=True), ValueError, "groups must be a positive int"),
    (dict(groups=3), ValueError, "groups=3 must divide the 4 output channels"),
    (dict(activation="gelu"), ValueError, "activation must be one of"),
    (dict(activation=["relu"]), ValueError, "activation must be one of"),
    (dict(kernel="fast"), ValueError, "kernel must be one of"),
    (dict(kernel=None), ValueError, "kernel must be one of"),
    (dict(bias=np.ones(3, np.float32)), ValueError, r"bias: expected an array of shape \(4,\)"),
    (dict(bias=np.ones((4, 1), np.float32)), ValueError, r"bias: expected an array of shape"),
    (dict(bias=np.ones(4, np.complex64)), TypeError, "bias: expected a float array"),
    (dict(bias="b"), TypeError, "bias: expected a float array"),
]


@pytest.mark.parametrize("kwargs, error, message", CONV_HYPER,
                         ids=[f"{k}={v!r}"[:30] for k, v in (next(iter(c[0].items()))
                                                             for c in CONV_HYPER)])
def test_conv_hyper_parameters(kwargs, error, message):
    with pytest.raises(error, match=message) as functional:
        F.conv2d(X4, W4, **kwargs)
    assert str(functional.value).startswith("conv2d")
    with pytest.raises(error, match=message) as op:
        Conv2dOp(W4, name="features.7", **kwargs)
    assert str(op.value).startswith("features.7")


@pytest.mark.parametrize("weight, error, message", [
    (np.ones((3, 3, 3), np.float32), ValueError, "weight must be 4-D"),
    (np.ones((1, 4, 3, 3, 3), np.float32), ValueError, "weight must be 4-D"),
    (np.ones((0, 3, 3, 3), np.float32), ValueError, "weight must be 4-D .*empty"),
    (np.ones((4, 0, 3, 3), np.float32), ValueError, "weight must be 4-D .*empty"),
    (np.ones((4, 3, 3, 3), bool), TypeError, "weight must be a real numeric array"),
    (np.ones((4, 3, 3, 3), np.complex64), TypeError, "weight must be a real numeric array"),
    (np.ones((4, 3, 3, 3)).astype(object), TypeError, "weight must be a real numeric array"),
    (None, TypeError, "weight must be a real numeric array"),
    ("w", TypeError, "weight must be a real numeric array"),
])
def test_conv_bad_weights(weight, error, message):
    with pytest.raises(error, match=message):
        F.conv2d(X4, weight)


@pytest.mark.parametrize("shape, message", [
    ((1, 2, 8, 8), r"expected 3 input channels, got 2"),
    ((1, 3, 2, 2), "smaller than the dilated kernel"),
    ((1, 3, 8, 2), "smaller than the dilated kernel"),
    ((1, 3, 0, 8), "smaller than the dilated kernel"),
])
def test_conv_input_shape_mismatch(shape, message):
    with pytest.raises(ValueError, match=message):
        F.conv2d(np.ones(shape, np.float32), W4)
    with pytest.raises(ValueError, match="^features.0: .*" + message):
        Conv2dOp(W4, name="features.0")(np.ones(shape, np.float32))


def test_conv_dilated_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="padded input 6x6 is smaller than the dilated kernel "
                                         "7x7"):
        F.conv2d(np.ones((1, 3, 4, 4)), W4, padding=1, dilation=3)


def test_conv_groups_not_dividing_the_input_channels():
    # 4 outputs in 2 groups of 1-channel kernels need 2 input channels, not 3
    with pytest.raises(ValueError, match="expected 2 input channels, got 3"):
        F.conv2d(X4, np.ones((4, 1, 3, 3)), groups=2)


@pytest.mark.parametrize("input_shape", [(1, 3, 2**16, 2**16), (1, 3, 4, 2**31),
                                         (2**40, 3, 2**16, 2**16)])
def test_conv_geometry_beyond_32_bit_offsets_is_refused(input_shape):
    op = Conv2dOp(W4, name="features.0")
    with pytest.raises(ValueError, match="features.0: .*too large for 32-bit offsets"):
        op.output_shape(input_shape)
    with pytest.raises(ValueError, match="features.0: .*too large for 32-bit offsets"):
        op.kernel_for(input_shape)


@pytest.mark.parametrize("case", ["output_shape 2**40", "padding 2**40", "padding 2**31"])
def test_conv_sizes_beyond_int64_raise_value_error(case):
    if case == "output_shape 2**40":
        call = lambda: Conv2dOp(W4).output_shape((1, 3, 2**40, 2**40))  # noqa: E731
    else:
        pad = 2**40 if case.endswith("40") else 2**31
        call = lambda: F.conv2d(X4, W4, padding=pad)  # noqa: E731
    with pytest.raises(ValueError, match=r"too large|at most 2\*\*31 - 1"):
        call()


@pytest.mark.parametrize("shape", [(-1, 3, 8, 8), (1, 3, 8.5, 8), (1.0, 3, 8, 8)])
def test_output_shape_refuses_non_sizes(shape):
    with pytest.raises((ValueError, TypeError)):
        Conv2dOp(W4).output_shape(shape)


@pytest.mark.parametrize("shape", [(1, 5) + HUGE_HW, (1, 3) + HUGE_HW],
                         ids=["wrong-channels", "over-32-bit"])
@pytest.mark.parametrize("entry", ["Conv2dOp", "nn.Conv2d"])
def test_huge_views_are_refused_before_conversion(entry, shape):
    call = Conv2dOp(W4, name="conv1") if entry == "Conv2dOp" else nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="input channels|32-bit"):
        call(_huge_view(shape))


def test_conv_huge_stride_is_refused_or_computed():
    # a stride past the input gives one output pixel in torch; fscnn may refuse it, but only
    # with a ValueError
    try:
        y = F.conv2d(X4, W4, stride=2**40)
    except ValueError as exc:
        assert "conv2d" in str(exc)
    else:
        assert y.shape == (1, 4, 1, 1) and np.all(y == 27)


def test_same_padding_with_stride_is_refused():
    with pytest.raises(ValueError, match="same"):
        F.conv2d(X4, W4, stride=2, padding="same")


# ------------------------------------------------------------------ linear
@pytest.mark.parametrize("x, weight, kwargs, error, message", [
    (np.ones(5), np.ones((3, 5)), {}, ValueError, r"linear: input: expected an array of shape "
                                                  r"\(N, F\)"),
    (np.ones((2, 2, 5)), np.ones((3, 5)), {}, ValueError, r"expected an array of shape \(N, F\)"),
    (np.ones((2, 4)), np.ones((3, 5)), {}, ValueError, r"expected input \(N, 5\)"),
    (np.ones((2, 5)), np.ones(5), {}, ValueError, "weight must be 2-D"),
    (np.ones((2, 5)), np.ones((0, 5)), {}, ValueError, "weight must be 2-D .*empty"),
    (np.ones((2, 5)), np.ones((3, 5), np.complex64), {}, TypeError, "weight must be a real"),
    (np.ones((2, 5)), np.ones((3, 5)), dict(bias=np.ones(2)), ValueError, "bias: expected"),
    (np.ones((2, 5)), np.ones((3, 5)), dict(activation="tanh"), ValueError, "activation"),
    (np.ones((2, 5)), np.ones((3, 5)), dict(kernel="csr"), ValueError, "kernel must be one of"),
])
def test_linear_bad_arguments(x, weight, kwargs, error, message):
    with pytest.raises(error, match=message):
        F.linear(x, weight, **kwargs)


def test_linear_op_errors_name_the_layer():
    op = LinearOp(np.ones((3, 5), np.float32), name="classifier.6")
    for x in (np.ones((2, 4), np.float32), np.ones(5, np.float32)):
        with pytest.raises(ValueError, match="classifier.6"):
            op(x)
    with pytest.raises(TypeError, match="classifier.6"):
        op(np.ones((2, 5), np.int64))


# ------------------------------------------------------------------ pooling
POOL_HYPER = [
    ((0,), {}, ValueError, "kernel_size must be positive"),
    ((-2,), {}, ValueError, "kernel_size must be positive"),
    ((2.0,), {}, TypeError, "kernel_size must be an int"),
    ((2,), dict(stride=0), ValueError, "stride must be positive"),
    ((2,), dict(stride=(1, -1)), ValueError, "stride must be positive"),
    ((2,), dict(padding=-1), ValueError, "padding must be non-negative"),
    ((2,), dict(padding=2), ValueError, "padding must be at most half"),
    ((9,), {}, ValueError, "too small for kernel_size"),
    ((2**40,), {}, ValueError, "kernel_size must be at most 2\\*\\*31 - 1"),
]


@pytest.mark.parametrize("args, kwargs, error, message", POOL_HYPER)
@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_pool_hyper_parameters(pool, args, kwargs, error, message):
    with pytest.raises(error, match=f"^{pool}: .*{message}"):
        getattr(F, pool)(X4, *args, **kwargs)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(dilation=0), ValueError, "dilation must be positive"),
    (dict(dilation=2**40), ValueError, "dilation must be at most 2\\*\\*31 - 1"),
])
def test_max_pool_dilation(kwargs, error, message):
    with pytest.raises(error, match=message):
        F.max_pool2d(X4, 2, **kwargs)


@pytest.mark.parametrize("divisor, error", [(0, ValueError), (2.0, TypeError), ("2", TypeError)])
def test_avg_pool_divisor_override(divisor, error):
    with pytest.raises(error, match="divisor_override"):
        F.avg_pool2d(X4, 2, divisor_override=divisor)


@pytest.mark.parametrize("call", [
    lambda: F.max_pool2d(X4, 2, stride=2**31),
    lambda: F.avg_pool2d(X4, 2, stride=(1, 2**40)),
    lambda: F.avg_pool2d(X4, 2, divisor_override=2**40),
    lambda: nn.MaxPool2d(2, stride=2**32)(X4),
], ids=["max-stride", "avg-stride", "divisor", "MaxPool2d"])
def test_pool_parameters_beyond_int32_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("output_size, error", [
    (0, ValueError), (-1, ValueError), ((2, 0), ValueError), (2.0, TypeError),
    ((1, 2, 3), TypeError), ("2", TypeError),
])
@pytest.mark.parametrize("pool", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
def test_adaptive_pool_output_size(pool, output_size, error):
    with pytest.raises(error, match=f"{pool}: output_size"):
        getattr(F, pool)(X4, output_size)


# ------------------------------------------------------------------ elementwise
@pytest.mark.parametrize("call, error, message", [
    (lambda: F.softmax(X4, 4), ValueError, "softmax: dim"),
    (lambda: F.softmax(X4, None), TypeError, "softmax: dim"),
    (lambda: F.leaky_relu(X4, "a"), TypeError, "leaky_relu: negative_slope"),
    (lambda: F.leaky_relu(X4, np.nan), ValueError, "leaky_relu: negative_slope"),
    (lambda: F.prelu(X4, np.ones(2)), ValueError, "prelu: weight"),
    (lambda: F.add(X4, np.ones((1, 2, 1, 1))), ValueError, "add: shapes .* do not broadcast"),
    (lambda: F.add(X4, X4, activation="tanh"), ValueError, "add: activation"),
    (lambda: F.batch_norm(X4, np.zeros(2), np.ones(2)), ValueError, "batch_norm: running_mean"),
    (lambda: F.batch_norm(X4, np.zeros(3), -np.ones(3)), ValueError, "batch_norm: running_var"),
    (lambda: F.batch_norm(X4, np.zeros(3), np.ones(3), eps=-1.0), ValueError, "batch_norm: eps"),
], ids=["softmax-dim", "softmax-None", "leaky-str", "leaky-nan", "prelu", "add-shape", "add-act",
        "bn-shape", "bn-var", "bn-eps"])
def test_elementwise_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------ layers
@pytest.mark.parametrize("build, error, message", [
    (lambda: nn.Conv2d(0, 4, 3), ValueError, "Conv2d: in_channels"),
    (lambda: nn.Conv2d(3.0, 4, 3), TypeError, "Conv2d: in_channels"),
    (lambda: nn.Conv2d(3, -4, 3), ValueError, "Conv2d: out_channels"),
    (lambda: nn.Conv2d(3, 4, 0), ValueError, "Conv2d: kernel_size"),
    (lambda: nn.Conv2d(3, 4, 3, stride=0), ValueError, "Conv2d: stride"),
    (lambda: nn.Conv2d(3, 4, 3, dilation=(1, 0)), ValueError, "Conv2d: dilation"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), ValueError, "Conv2d: padding"),
    (lambda: nn.Conv2d(3, 4, 3, padding="full"), ValueError, "Conv2d: padding"),
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding="same"), ValueError, "Conv2d: padding='same'"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "Conv2d: in_channels .* groups"),
    (lambda: nn.Conv2d(4, 3, 3, groups=2), ValueError, "Conv2d: out_channels .* groups"),
    (lambda: nn.Conv2d(3, 4, 3, groups=0), ValueError, "Conv2d: groups"),
    (lambda: nn.Conv2d(3, 4, 3, padding_mode="reflect"), ValueError, "Conv2d: padding_mode"),
    (lambda: nn.Linear(0, 3), ValueError, "Linear: in_features"),
    (lambda: nn.Linear(3, "4"), TypeError, "Linear: out_features"),
    (lambda: nn.BatchNorm2d(0), ValueError, "BatchNorm2d: num_features"),
    (lambda: nn.BatchNorm2d(3, eps=0), ValueError, "BatchNorm2d: eps"),
    (lambda: nn.BatchNorm2d(3, eps=float("nan")), ValueError, "BatchNorm2d: eps"),
    (lambda: nn.BatchNorm2d(3, momentum=2), ValueError, "BatchNorm2d: momentum"),
    (lambda: nn.MaxPool2d(0), ValueError, "MaxPool2d: kernel_size"),
    (lambda: nn.MaxPool2d(2, stride=-1), ValueError, "MaxPool2d: stride"),
    (lambda: nn.MaxPool2d(2, padding=2), ValueError, "MaxPool2d: padding"),
    (lambda: nn.MaxPool2d(2, return_indices=True), ValueError, "MaxPool2d: return_indices"),
    (lambda: nn.AvgPool2d(-1), ValueError, "AvgPool2d: kernel_size"),
    (lambda: nn.AvgPool2d(2, divisor_override=0), ValueError, "AvgPool2d: divisor_override"),
    (lambda: nn.AdaptiveAvgPool2d(0), ValueError, "AdaptiveAvgPool2d: output_size"),
    (lambda: nn.AdaptiveMaxPool2d((1, 2, 3)), ValueError, "AdaptiveMaxPool2d: output_size"),
    (lambda: nn.LeakyReLU("a"), TypeError, "LeakyReLU: negative_slope"),
    (lambda: nn.PReLU(0), ValueError, "PReLU: num_parameters"),
    (lambda: nn.Dropout(p=1.5), ValueError, "Dropout: p"),
    (lambda: nn.Flatten(2, 1), ValueError, "Flatten: start_dim"),
    (lambda: nn.Sequential(3), TypeError, "Sequential"),
])
def test_layer_constructors(build, error, message):
    with pytest.raises(error, match=message):
        build()


LAYER_CALLS = [
    (lambda: nn.Conv2d(3, 4, 3), (8, 8), "expected a 4-D input"),
    (lambda: nn.Conv2d(3, 4, 3), (1, 1, 3, 8, 8), "expected a 4-D input"),
    (lambda: nn.Conv2d(3, 4, 3), (1, 2, 8, 8), "expected 3 input channels, got 2"),
    (lambda: nn.Conv2d(3, 4, 3), (1, 3, 2, 9), "too small for kernel_size"),
    (lambda: nn.Conv2d(3, 4, 3, dilation=4), (1, 3, 8, 8), "too small for kernel_size"),
    (lambda: nn.Conv2d(4, 4, 3, groups=2), (1, 2, 8, 8), "expected 4 input channels"),
    (lambda: nn.Linear(8, 2), (2, 7), r"expected an input of shape \(\*, 8\)"),
    (lambda: nn.Linear(8, 2), (), r"expected an input of shape \(\*, 8\)"),
    (lambda: nn.BatchNorm2d(3), (1, 2, 4, 4), "expected 3 input channels"),
    (lambda: nn.BatchNorm2d(3), (4, 4), "expected a 4-D input"),
    (lambda: nn.MaxPool2d(9), (1, 3, 8, 8), "too small for kernel_size"),
    (lambda: nn.AvgPool2d(2), (1, 1, 3, 8, 8), "expected a 4-D input"),
    (lambda: nn.AdaptiveAvgPool2d(1), (1, 3, 0, 4), "non-zero height and width"),
    (lambda: nn.PReLU(3), (1, 2, 4), "expected 3 channels"),
    (lambda: nn.Softmax(4), (1, 3, 8, 8), "dim 4 is out of range"),
    (lambda: nn.Flatten(), (3,), "cannot flatten"),
]


@pytest.mark.parametrize("build, shape, message", LAYER_CALLS)
def test_layer_calls_name_the_layer(build, shape, message):
    layer = build()
    with pytest.raises(nn.LayerInputError, match=f"^{type(layer).__name__}: .*{message}"):
        layer(np.ones(shape, np.float32))


@pytest.mark.parametrize("dtype", BAD_DTYPES.values(), ids=BAD_DTYPES.keys())
@pytest.mark.parametrize("build", [lambda: nn.Conv2d(3, 4, 3), lambda: nn.BatchNorm2d(3),
                                   lambda: nn.MaxPool2d(2), lambda: nn.ReLU(),
                                   lambda: nn.Linear(8, 2)],
                         ids=["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU", "Linear"])
def test_layers_refuse_non_float_inputs(build, dtype):
    layer = build()
    with pytest.raises(TypeError, match=f"{type(layer).__name__}: expected a float array"):
        layer(_bad(dtype))


def test_layer_call_with_wrong_arguments():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(TypeError, match="expected one input array"):
        conv(X4, X4)
    with pytest.raises(TypeError, match="expected one input array"):
        conv(x=X4)


def test_load_state_dict_collects_every_problem():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    bad = {"0.weight": np.ones((4, 3, 5, 5)), "0.bias": np.array(["a"] * 4),
           "1.weight": np.ones(4, np.complex64), "extra": np.ones(1)}
    with pytest.raises(nn.StateDictError) as info:
        seq.load_state_dict(bad)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, KeyError)
    assert [k for k, *_ in err.mismatched] == ["0.weight"]
    assert sorted(k for k, _ in err.invalid) == ["0.bias", "1.weight"]
    assert "extra" in err.unexpected_keys and "1.running_mean" in err.missing_keys
    assert np.all(seq[0].weight.shape == (4, 3, 3, 3))  # nothing loaded


# ------------------------------------------------------------------ zoo models
@pytest.fixture(scope="module")
def zoo():
    return {"resnet18": models.resnet18(num_classes=10), "vgg11": models.vgg11(num_classes=10),
            "mobilenet_v2": models.mobilenet_v2(num_classes=10)}


@pytest.mark.parametrize("name, x, error, message", [
    ("resnet18", np.ones((1, 4, 32, 32)), ValueError,
     r"^conv1 \(Conv2d\): expected 3 input channels, got 4"),
    ("resnet18", np.ones((32, 32)), ValueError, r"^conv1 \(Conv2d\): expected a 4-D input"),
    ("resnet18", np.ones((1, 3, 32, 32), np.int64), TypeError, r"^conv1 \(Conv2d\)"),
    ("vgg11", np.ones((1, 3, 16, 16)), ValueError, r"^features\.\d+ \(MaxPool2d\): .*too small"),
    ("vgg11", np.ones((1, 1, 32, 32)), ValueError, r"^features\.0 \(Conv2d\): expected 3 input"),
    ("mobilenet_v2", np.ones((1, 3, 32)), ValueError, r"^features\.0\.0 \(Conv2d\)"),
    ("mobilenet_v2", np.ones((1, 3, 32, 32), bool), TypeError, r"^features\.0\.0 \(Conv2d\)"),
], ids=["resnet-channels", "resnet-rank", "resnet-int", "vgg-small", "vgg-channels",
        "mobilenet-rank", "mobilenet-bool"])
def test_zoo_models_name_the_failing_layer(zoo, name, x, error, message):
    with pytest.raises(error, match=message):
        zoo[name](x)


@pytest.mark.parametrize("kwargs, error", [(dict(num_classes=0), ValueError),
                                           (dict(num_classes="10"), TypeError)])
def test_zoo_builders_validate_arguments(kwargs, error):
    with pytest.raises(error, match="out_features"):
        models.resnet18(**kwargs)


# ------------------------------------------------------------------ sparse formats
def _csr_parts():
    m = CSRMatrix.from_dense(np.array([[0, 1.5, 0], [2.0, 0, 3.0]], np.float32))
    return m.indptr, m.indices, m.data


@pytest.mark.parametrize("shape, error", [
    ((2, 3, 1), FormatError), ((-2, 3), FormatError), ((3, 3), FormatError),
    ("ab", ValueError), (None, TypeError), ((2,), FormatError),
])
def test_csr_bad_shapes(shape, error):
    with pytest.raises(error):
        CSRMatrix(*_csr_parts(), shape)


def test_csr_unknown_check_mode_is_refused():
    indptr, indices, data = _csr_parts()
    with pytest.raises(ValueError, match="check"):
        CSRMatrix(indptr, indices, data, (2, 3), check="ful")


@pytest.mark.parametrize("dense, error", [
    (np.ones(3, np.float32), FormatError), (np.ones((1, 2, 3)), FormatError),
    (np.array([["a", "b"]]), TypeError),
])
def test_csr_from_dense_refuses(dense, error):
    with pytest.raises(error):
        CSRMatrix.from_dense(dense)


@pytest.mark.filterwarnings("ignore:Casting complex values")
@pytest.mark.parametrize("dense", [np.ones((2, 2), np.complex64), np.array([[None, 1.0]])],
                         ids=["complex", "object"])
def test_csr_from_dense_refuses_non_real(dense):
    with pytest.raises(TypeError):
        CSRMatrix.from_dense(dense)


@pytest.mark.parametrize("kernel_shape", [(1, 2, 2), (3, 3), (1, 1, 1, 9)])
def test_sparse_conv_weight_kernel_shape_must_match(kernel_shape):
    csr = CSRMatrix.from_dense(np.ones((2, 9), np.float32))
    with pytest.raises(FormatError, match="kernel_shape"):
        SparseConvWeight(csr, kernel_shape)


@pytest.mark.parametrize("make", [
    lambda: SparseConvWeight(CSRMatrix.from_dense(np.ones((2, 9), np.float32)), (-1, -3, 3)),
    lambda: SparseConvWeight(np.ones((2, 9), np.float32), (1, 3, 3)),
], ids=["negative-dims", "dense-array"])
def test_sparse_conv_weight_validates_its_parts(make):
    with pytest.raises((FormatError, TypeError)):
        make()


def test_corrupt_sparse_weights_are_refused_by_the_operators():
    good = CSRMatrix.from_dense(np.ones((2, 9), np.float32))
    indices = good.indices.copy()
    indices[3] = 9  # out of range: the kernels would read past the input
    csr = CSRMatrix(good.indptr, indices, good.data, good.shape, check=None)
    with pytest.raises(FormatError, match="out of range"):
        Conv2dOp(SparseConvWeight(csr, (1, 3, 3)))
    with pytest.raises(FormatError, match="out of range"):
        LinearOp(csr)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_sparse_weights_given_to_operators_cannot_change_afterwards(kind):
    """The operators check a sparse weight once; afterwards the user cannot write indices
    past the input into it (the kernels would read out of bounds unchecked)."""
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    dense[np.abs(dense) < 1] = 0
    if kind == "linear":
        weight = CSRMatrix.from_dense(dense.reshape(6, 36))
        op, x = LinearOp(weight), rng.standard_normal((2, 36)).astype(np.float32)
    else:
        weight = SparseConvWeight.from_dense(dense)
        op, x = Conv2dOp(weight, padding=1), rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    before = op(x)
    csr = getattr(weight, "csr", weight)
    with pytest.raises(ValueError, match="read-only"):
        csr.indices[0] = 60000
    with pytest.raises(ValueError, match="read-only"):
        csr.indptr[-1] = 10**9
    with pytest.raises(AttributeError, match="immutable"):
        csr.indices = np.full_like(csr.indices, 60000)
    np.testing.assert_array_equal(op(x), before)


# ------------------------------------------------------------------ fscnn.io.load
@pytest.mark.parametrize("path, error", [(None, TypeError), (5, TypeError), (3.5, TypeError)])
def test_load_refuses_non_paths(path, error):
    with pytest.raises(error):
        io.load(path)


def test_load_filesystem_problems_are_os_errors(tmp_path):
    with pytest.raises(IsADirectoryError):
        io.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"PK"], ids=["empty", "zeros", "PK"])
def test_load_non_archives(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(io.ArchiveError, match="bad.npz"):
        io.load(path)


def test_load_respects_max_bytes(tmp_path):
    path = tmp_path / "a.npz"
    io.save({"w": np.ones((16, 16), np.float32)}, path)
    with pytest.raises(io.ArchiveError, match="max_bytes"):
        io.load(path, max_bytes=100)


# ------------------------------------------------------------------ CLI
@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "w.npz"
    io.save({"fc.weight": np.ones((4, 8), np.float32)}, path)
    return str(path)


@pytest.mark.parametrize("argv", [
    ["prune", "{archive}", "{tmp}/out.npz", "--sparsity", "nan"],
    ["prune", "{archive}", "{tmp}/out.npz", "--sparsity", "inf"],
    ["prune", "{archive}", "{tmp}/out.npz", "--sparsity", "1.5"],
    ["prune", "{archive}", "{tmp}", "--sparsity", "0.5"],
    ["prune", "{tmp}", "{tmp}/out.npz", "--sparsity", "0.5"],
    ["prune", "{tmp}/empty.npz", "{tmp}/out.npz", "--sparsity", "0.5"],
    ["prune", "{archive}", "{tmp}/out.npz", "--pattern", "4:2"],
    ["info", "{tmp}/empty.npz"],
    ["info", "resnet18", "--input-size", "-3"],
    [],
], ids=["nan", "inf", "above-1", "out-is-dir", "in-is-dir", "empty-file", "bad-pattern",
        "info-empty", "info-negative-size", "no-command"])
def test_cli_user_errors(capsys, tmp_path, archive, argv):
    (tmp_path / "empty.npz").write_bytes(b"")
    status = cli.main([a.format(archive=archive, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("fscnn: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out.npz").exists()
