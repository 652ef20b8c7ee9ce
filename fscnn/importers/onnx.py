"""Import ONNX models as :class:`fscnn.nn.Graph` modules (``fscnn.from_onnx``).

One converter function per ONNX operator type, registered with the operator versions
("since" versions of the ONNX schema) whose semantics it implements: a model whose opset
resolves an operator to another version is refused rather than guessed at. A converter reads
the node's attributes through :class:`_NodeContext`, which refuses attributes the converter
did not read, so an attribute fscnn does not implement is an error, never a silently wrong
result. Every problem of a model is reported in one :class:`ModelImportError`.

Weights are the node inputs that are initializers or ``Constant`` outputs; a graph's shape
subgraph (``Shape -> Gather -> Concat -> Reshape`` and the like) is folded at import where
the shapes are static and runs as integer arithmetic where they are not (dynamic batch or
spatial sizes). Import needs the ``onnx`` package (``pip install "fscnn[onnx]"``); the
imported graph does not.
"""
import os

import numpy as np

from ._builder import (GraphBuilder, ModelImportError, Unsupported, check_source_names,
                       padding_arg, pool_padding_arg)

MIN_OPSET = 9
_INPUT_TYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                "uint16", "uint32", "uint64", "bool")
_CONVERTERS = {}
_INT64_MAX = np.iinfo(np.int64).max


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError('fscnn.from_onnx needs the onnx package: pip install "fscnn[onnx]"') \
            from None
    return onnx


def converter(*op_types, versions):
    """Register the decorated function as the converter of ``op_types`` for the given
    ONNX schema versions."""
    def register(fn):
        for op in op_types:
            _CONVERTERS[op] = (fn, frozenset(versions))
        return fn
    return register


def supported_operators():
    """{ONNX operator type: sorted schema versions fscnn imports}."""
    return {op: sorted(v) for op, (_, v) in sorted(_CONVERTERS.items())}


# -- loading ------------------------------------------------------------------------------
def load_model(source):
    """An ``onnx.ModelProto`` from a path, bytes or a ModelProto; ModelImportError if the
    file is missing, truncated or not an ONNX model."""
    onnx = _onnx()
    if isinstance(source, onnx.ModelProto):
        model = source
        where = "model"
    else:
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                where = "bytes"
                model = onnx.load_from_string(bytes(source))
            else:
                where = os.fspath(source)
                if not os.path.isfile(where):
                    raise ModelImportError(f"{where}: no such file")
                model = onnx.load(where)
        except ModelImportError:
            raise
        except Exception as exc:  # protobuf's DecodeError, external data errors, ...
            raise ModelImportError(f"{where}: not a readable ONNX model ({type(exc).__name__}: "
                                   f"{exc})") from None
    if not model.graph.node or not model.ir_version:
        raise ModelImportError(f"{where}: not an ONNX model (no graph nodes or IR version; a "
                               f"truncated or foreign file?)")
    return model


_SKELETON_LIMIT = 1024  # elements: larger initializers leave the skeleton (declared inputs)


def _skeleton(model):
    """The model without its large initializers, which become declared graph inputs of the
    same type and shape: what the checker and shape inference need, without serialising
    the weights (3 s of a VGG's import otherwise)."""
    onnx = _onnx()
    graph = model.graph
    skeleton = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    g = skeleton.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    declared = {i.name for i in graph.input}
    for t in graph.initializer:
        if int(np.prod(t.dims)) <= _SKELETON_LIMIT:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    return skeleton


def _opset(model):
    versions = {o.domain: o.version for o in model.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise ModelImportError("the model imports no version of the default ONNX operator set")
    if version < MIN_OPSET:
        raise ModelImportError(f"the model uses ONNX opset {version}; fscnn imports opsets "
                               f"{MIN_OPSET} and newer (convert it with "
                               f"onnx.version_converter.convert_version)")
    return version


def _dims(value_info):
    """Static shape of a ValueInfoProto: ints, None for symbolic or unknown sizes; None
    when the rank is unknown."""
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in t.tensor_type.shape.dim)


def _with_input_shapes(model, input_shapes, inputs):
    """A copy of ``model`` whose graph inputs declare ``input_shapes``."""
    if input_shapes is None:
        return model
    names = [i.name for i in inputs]
    if not isinstance(input_shapes, dict):
        shapes = list(input_shapes)
        if shapes and all(isinstance(s, (int, np.integer, type(None))) for s in shapes):
            shapes = [shapes]  # one input's shape
        if len(shapes) != len(names):
            raise ValueError(f"from_onnx: input_shapes gives {len(shapes)} shapes for the "
                             f"model's {len(names)} inputs {names}")
        input_shapes = dict(zip(names, shapes))
    unknown = [k for k in input_shapes if k not in names]
    if unknown:
        raise ValueError(f"from_onnx: input_shapes names {unknown}, not inputs of the model "
                         f"(inputs: {names})")
    model = type(model).FromString(model.SerializeToString())
    for proto in model.graph.input:
        if proto.name not in input_shapes:
            continue
        shape = input_shapes[proto.name]
        declared = _dims(proto)
        if declared is not None and len(declared) != len(shape):
            raise ValueError(f"from_onnx: input_shapes[{proto.name!r}] has {len(shape)} "
                             f"dimensions, the model's input has {len(declared)}")
        dims = proto.type.tensor_type.shape
        dims.ClearField("dim")
        for k, d in enumerate(shape):
            dim = dims.dim.add()
            if d is None or isinstance(d, str):
                dim.dim_param = d if isinstance(d, str) else f"{proto.name}_dim{k}"
            elif int(d) < 1:
                raise ValueError(f"from_onnx: input_shapes[{proto.name!r}] has a size {d}")
            else:
                dim.dim_value = int(d)
    return model


def _array(tensor):
    onnx = _onnx()
    try:
        return onnx.numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelImportError(f"tensor {tensor.name!r}: cannot be read ({exc})") from None


# -- the node context ---------------------------------------------------------------------
class _NodeContext:
    """One ONNX node being converted: its inputs, attributes and the builder."""

    def __init__(self, proto, version, builder, name):
        onnx = _onnx()
        self.proto, self.version, self.builder, self.name = proto, version, builder, name
        self.op_type = proto.op_type
        self.attrs = {}
        for a in proto.attribute:
            value = onnx.helper.get_attribute_value(a)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            self.attrs[a.name] = value
        self._read = set()
        self.outputs = [o for o in proto.output]

    def attr(self, name, default=None):
        self._read.add(name)
        return self.attrs.get(name, default)

    def unread_attributes(self):
        return sorted(set(self.attrs) - self._read)

    def inp(self, i):
        """The name of input ``i`` (after aliasing), or None when absent."""
        if i < len(self.proto.input) and self.proto.input[i]:
            return self.builder.resolve(self.proto.input[i])
        return None

    def const(self, i):
        """Input ``i`` as an array when it is known at import, else None."""
        name = self.inp(i)
        return None if name is None else self.builder.consts.get(name)

    def need_const(self, i, what):
        value = self.const(i)
        if value is None:
            raise Unsupported(f"{what} must be a constant (an initializer or a Constant node "
                              f"output), not computed by the graph")
        return value

    def shape(self, i=0):
        """Static shape of input ``i`` (None dims where unknown), or None."""
        name = self.inp(i)
        if name is None:
            return None
        if name in self.builder.consts:
            return np.shape(self.builder.consts[name])
        return self.builder.shapes.get(name)

    def rank(self, i=0):
        shape = self.shape(i)
        return None if shape is None else len(shape)

    def weight(self, i):
        """The state key of constant input ``i`` (registered as a float32 tensor)."""
        return self.builder.weight(self.inp(i))

    def used_outputs(self):
        """Indices of outputs that something reads (or that are graph outputs)."""
        return [k for k, o in enumerate(self.outputs) if o and o in self.builder.read]

    def only_first_output(self):
        extra = [self.outputs[k] for k in self.used_outputs() if k > 0]
        if extra:
            raise Unsupported(f"outputs {extra} (beyond the first) are read by the graph; "
                              f"fscnn computes only the first")

    def emit(self, op, args, inputs, outputs=None, params=None, suffix=None):
        outputs = list(self.outputs[:1] if outputs is None else outputs)
        name = self.name if suffix is None else self.builder.node_name(
            f"{self.name}_{suffix}", suffix)
        self.builder.add(name, op, args, inputs, outputs, params)

    def tmp(self, suffix):
        """A fresh value name for an intermediate result of this node."""
        return f"{self.outputs[0]}::{suffix}"


def _float(value, name):
    return float(np.asarray(value, np.float64).reshape(-1)[0]) if value is not None else None


def _ints_attr(n, name, default):
    value = n.attr(name, default)
    return None if value is None else [int(v) for v in value]


# -- convolution and pooling geometry ------------------------------------------------------
def _explicit_pads(n, kernel, strides, dilations, spatial):
    """(top, bottom, left, right) from ``pads`` or ``auto_pad``."""
    auto = n.attr("auto_pad", "NOTSET")
    pads = _ints_attr(n, "pads", None)
    if auto in ("NOTSET", ""):
        pads = [0] * 4 if pads is None else pads
        if len(pads) != 4:
            raise Unsupported(f"pads {pads}: expected 4 values for a 2-D window")
        if min(pads) < 0:
            raise Unsupported(f"negative pads {pads}")
        return (pads[0], pads[2], pads[1], pads[3])
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad {auto!r}")
    out = []
    for k, s, d, size in zip(kernel, strides, dilations, spatial or (None, None)):
        if s != 1 and size is None:
            raise Unsupported(f"auto_pad {auto} with stride {s} pads by the input size, which "
                              f"is not static here: pass input_shapes to from_onnx")
        total = (k - 1) * d if s == 1 else max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size,
                                               0)
        small = total // 2
        out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    return (out[0][0], out[0][1], out[1][0], out[1][1])


def _check_channels(n, expected, what):
    """Refuse a node whose input's static channel count contradicts its weights."""
    shape = n.shape(0)
    if shape is not None and len(shape) >= 2 and shape[1] is not None and shape[1] != expected:
        raise Unsupported(f"input {n.inp(0)!r} has {shape[1]} channels, {what} {expected}: "
                          f"the model's shapes contradict each other")


def _spatial(n):
    shape = n.shape(0)
    return None if shape is None or len(shape) != 4 else shape[2:]


def _window(n, kernel_from=None):
    kernel = _ints_attr(n, "kernel_shape", kernel_from)
    if kernel is None or len(kernel) != 2:
        raise Unsupported(f"a {len(kernel) if kernel else '?'}-D window (fscnn implements 2-D "
                          f"convolutions and pools)")
    strides = _ints_attr(n, "strides", [1, 1])
    dilations = _ints_attr(n, "dilations", [1, 1])
    if len(strides) != 2 or len(dilations) != 2:
        raise Unsupported(f"strides {strides} / dilations {dilations} for a 2-D window")
    return kernel, strides, dilations


# -- converters ---------------------------------------------------------------------------
@converter("Conv", versions=(1, 11, 22))
def _conv(n):
    w = n.const(1)
    if w is None and n.rank(1) not in (None, 4) or w is not None and w.ndim != 4:
        raise Unsupported(f"a {(w.ndim if w is not None else n.rank(1)) - 2}-D convolution "
                          f"(fscnn implements 2-D convolutions)")
    w_shape = w.shape if w is not None else n.shape(1)
    kernel, strides, dilations = _window(n, None if w_shape is None else w_shape[2:])
    if w is not None and list(w.shape[2:]) != kernel:
        raise Unsupported(f"kernel_shape {kernel} differs from the weights' {w.shape[2:]}")
    group = int(n.attr("group", 1))
    pads = _explicit_pads(n, kernel, strides, dilations, _spatial(n))
    bias = n.inp(2)
    if w is None or (bias is not None and n.const(2) is None):
        n.emit("DynamicConv2d", {"stride": strides, "padding": list(pads),
                                 "dilation": dilations, "groups": group},
               [n.inp(0), n.inp(1), bias])
        return
    out_c, cg = w.shape[:2]
    if out_c % group:
        raise Unsupported(f"group={group} does not divide the {out_c} output channels")
    _check_channels(n, cg * group, "the weights' input channels (W.shape[1] * group)")
    params = {"weight": n.weight(1)}
    if bias is not None:
        params["bias"] = n.weight(2)
    n.emit("Conv2d", {"in_channels": cg * group, "out_channels": out_c, "kernel_size": kernel,
                      "stride": strides, "padding": padding_arg(pads),
                      "dilation": dilations, "groups": group, "bias": bias is not None},
           [n.inp(0)], params=params)


@converter("ConvTranspose", versions=(1, 11, 22))
def _conv_transpose(n):
    w = n.const(1)
    rank = w.ndim if w is not None else n.rank(1)
    if rank not in (None, 4):
        raise Unsupported(f"a {rank - 2}-D transposed convolution (fscnn implements 2-D)")
    w_shape = w.shape if w is not None else n.shape(1)
    kernel, strides, dilations = _window(n, None if w_shape is None else w_shape[2:])
    group = int(n.attr("group", 1))
    out_pad = _ints_attr(n, "output_padding", [0, 0])
    out_shape = _ints_attr(n, "output_shape", None)
    auto = n.attr("auto_pad", "NOTSET")
    if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        spatial = _spatial(n)
        if spatial is None or None in spatial:
            raise Unsupported("output_shape / auto_pad SAME need a static input size: pass "
                              "input_shapes to from_onnx")
        if out_shape is None:
            out_shape = [size * s for size, s in zip(spatial, strides)]
        out_shape = out_shape[-2:]
        pads = []
        for size, s, k, d, op, want in zip(spatial, strides, kernel, dilations, out_pad,
                                           out_shape):
            total = s * (size - 1) + op + (k - 1) * d + 1 - want
            half = total // 2  # floor division, as ONNX's reference: a negative end pad
            pads.append((half, total - half) if auto == "SAME_UPPER" else (total - half, half))
        # a negative end pad extends the output (zeros plus bias): more output padding
        out_pad = [op + max(-end, 0) for op, (_, end) in zip(out_pad, pads)]
        if min(p for pair_ in pads for p in pair_[:1]) < 0:
            raise Unsupported(f"output_shape {out_shape} needs negative leading pads")
        pads = (pads[0][0], max(pads[0][1], 0), pads[1][0], max(pads[1][1], 0))
        n.attr("pads")
    else:
        pads = _explicit_pads(n, kernel, strides, dilations, None)
    bias = n.inp(2)
    args = {"stride": strides, "padding": list(pads), "output_padding": out_pad,
            "groups": group, "dilation": dilations}
    if w is None or (bias is not None and n.const(2) is None):
        n.emit("DynamicConvTranspose2d", args, [n.inp(0), n.inp(1), bias])
        return
    params = {"weight": n.weight(1)}
    if bias is not None:
        params["bias"] = n.weight(2)
    if any(p >= max(s, d) for p, s, d in zip(out_pad, strides, dilations)):
        n.emit("DynamicConvTranspose2d", args, [n.inp(0), n.inp(1), bias])
        return
    n.emit("ConvTranspose2d", dict(args, padding=padding_arg(pads), in_channels=w.shape[0],
                                   out_channels=w.shape[1] * group, kernel_size=kernel,
                                   bias=bias is not None), [n.inp(0)], params=params)


@converter("Gemm", versions=(1, 6, 7, 9, 11, 13))
def _gemm(n):
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    trans_a, trans_b = bool(n.attr("transA", 0)), bool(n.attr("transB", 0))
    a, c = n.inp(0), n.inp(2)
    if trans_a:
        n.emit("Transpose", {"perm": [1, 0]}, [a], [n.tmp("a")], suffix="transpose_a")
        a = n.tmp("a")
    b = n.const(1)
    cv = n.const(2)
    if b is None or b.ndim != 2:
        _matmul_chain(n, a, trans_b, alpha, beta, c)
        return
    out_features = b.shape[0] if trans_b else b.shape[1]
    in_features = b.shape[1] if trans_b else b.shape[0]
    as_bias = c is not None and cv is not None and cv.shape == (out_features,)
    params = {"weight": n.weight(1)}
    if as_bias:
        params["bias"] = n.weight(2)
    out = n.outputs[0] if c is None or as_bias else n.tmp("ab")
    n.emit("Gemm", {"in_features": in_features, "out_features": out_features, "bias": as_bias,
                    "alpha": alpha, "beta": beta, "trans_b": trans_b}, [a], [out], params)
    if c is not None and not as_bias:
        _scaled_add(n, out, c, beta)


def _scaled_add(n, ab, c, beta):
    if beta != 1.0:
        n.builder.consts[n.tmp("beta")] = np.float32(beta)
        n.emit("Mul", {}, [c, n.tmp("beta")], [n.tmp("bc")], suffix="beta")
        c = n.tmp("bc")
    n.emit("Add", {}, [ab, c], suffix="add_c")


def _matmul_chain(n, a, trans_b, alpha, beta, c):
    b = n.inp(1)
    if trans_b:
        n.emit("Transpose", {"perm": [1, 0]}, [b], [n.tmp("b")], suffix="transpose_b")
        b = n.tmp("b")
    ab = n.tmp("ab")
    n.emit("MatMul", {}, [a, b], [ab if alpha != 1.0 or c else n.outputs[0]])
    if alpha != 1.0:
        n.builder.consts[n.tmp("alpha")] = np.float32(alpha)
        n.emit("Mul", {}, [ab, n.tmp("alpha")], [n.tmp("ab2") if c else n.outputs[0]],
               suffix="alpha")
        ab = n.tmp("ab2")
    if c:
        _scaled_add(n, ab, c, beta)


@converter("MatMul", versions=(1, 9, 13))
def _matmul(n):
    b = n.const(1)
    rank = n.rank(0)
    if b is not None and b.ndim == 2 and (rank is None or rank >= 2):
        n.emit("Gemm", {"in_features": b.shape[0], "out_features": b.shape[1], "bias": False,
                        "trans_b": False}, [n.inp(0)], params={"weight": n.weight(1)})
    else:
        n.emit("MatMul", {}, [n.inp(0), n.inp(1)])


@converter("BatchNormalization", versions=(6, 7, 9, 14, 15))
def _batch_norm(n):
    eps = float(n.attr("epsilon", 1e-5))
    n.attr("momentum")
    if n.attr("training_mode", 0):
        raise Unsupported("training_mode=1 (fscnn runs inference: running statistics only)")
    if n.version < 9 and not n.attr("spatial", 1):
        raise Unsupported("spatial=0")
    n.only_first_output()
    consts = [n.const(i) for i in range(1, 5)]
    if all(c is not None for c in consts):
        _check_channels(n, consts[0].size, "the batch norm has")
    if n.rank(0) == 4 and all(c is not None and c.ndim == 1 for c in consts) and eps > 0:
        n.emit("BatchNorm2d", {"num_features": consts[0].shape[0], "eps": eps}, [n.inp(0)],
               params={"weight": n.weight(1), "bias": n.weight(2),
                       "running_mean": n.weight(3), "running_var": n.weight(4)})
    else:
        n.emit("BatchNormalization", {"eps": eps}, [n.inp(i) for i in range(5)])


def _simple(layer, **attrs):
    """A converter emitting ``layer`` with attributes mapped (ONNX name -> (arg, default))."""
    def convert(n):
        args = {arg: n.attr(name, default) for name, (arg, default) in attrs.items()}
        n.emit(layer, args, [n.inp(0)])
    return convert


converter("Relu", versions=(1, 6, 13, 14))(_simple("ReLU"))
converter("Sigmoid", versions=(1, 6, 13))(_simple("Sigmoid"))
converter("Tanh", versions=(1, 6, 13))(_simple("Tanh"))
converter("HardSwish", versions=(14, 22))(_simple("Hardswish"))
converter("LeakyRelu", versions=(1, 6, 16))(_simple("LeakyReLU", alpha=("negative_slope", 0.01)))
converter("HardSigmoid", versions=(1, 6, 22))(_simple("Hardsigmoid", alpha=("alpha", 0.2),
                                                      beta=("beta", 0.5)))
converter("Elu", versions=(1, 6, 22))(_simple("ELU", alpha=("alpha", 1.0)))
converter("Gelu", versions=(20,))(_simple("GELU", approximate=("approximate", "none")))
converter("LRN", versions=(1, 13))(_simple("LocalResponseNorm", size=("size", None),
                                           alpha=("alpha", 1e-4), beta=("beta", 0.75),
                                           bias=("k", 1.0)))


@converter("Identity", versions=(1, 13, 14, 16, 19, 21, 23, 24, 25))
def _identity(n):
    n.builder.alias(n.outputs[0], n.inp(0))
converter("Flatten", versions=(1, 9, 11, 13, 21, 23, 24, 25))(
    _simple("Flatten2d", axis=("axis", 1)))


@converter("Erf", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Floor", "Ceil",
           versions=(1, 6, 9, 13))
def _unary(n):
    n.emit("Unary", {"op": n.op_type.lower()}, [n.inp(0)])


converter("Softplus", "Softsign", versions=(1, 22))(_unary)


@converter("PRelu", versions=(6, 7, 9, 16))
def _prelu(n):
    n.emit("PRelu", {}, [n.inp(0), n.inp(1)])


@converter("Clip", versions=(6, 11, 12, 13))
def _clip(n):
    if n.version < 11:
        lo, hi = n.attr("min", None), n.attr("max", None)
        lo_in = hi_in = None
    else:
        lo_in, hi_in = n.inp(1), n.inp(2)
        lo = _float(n.const(1), "min") if lo_in is not None else None
        hi = _float(n.const(2), "max") if hi_in is not None else None
        if (lo_in is not None and lo is None) or (hi_in is not None and hi is None):
            n.emit("Clip", {}, [n.inp(0), lo_in, hi_in])
            return
    lo = None if lo is None or lo == -np.inf or lo <= -3.4e38 else float(lo)
    hi = None if hi is None or hi == np.inf or hi >= 3.4e38 else float(hi)
    if lo == 0.0 and hi == 6.0:
        n.emit("ReLU6", {}, [n.inp(0)])
    elif lo == 0.0 and hi is None:
        n.emit("ReLU", {}, [n.inp(0)])
    else:
        n.emit("Clip", {"min": lo, "max": hi}, [n.inp(0)])


@converter("Softmax", "LogSoftmax", versions=(1, 11, 13))
def _softmax(n):
    log = n.op_type == "LogSoftmax"
    if n.version >= 13:
        n.emit("LogSoftmax" if log else "Softmax", {"dim": int(n.attr("axis", -1))}, [n.inp(0)])
        return
    axis, rank = int(n.attr("axis", 1)), n.rank(0)
    if rank is not None and axis % rank == rank - 1:  # one axis: the modern definition
        n.emit("LogSoftmax" if log else "Softmax", {"dim": -1}, [n.inp(0)])
    else:
        n.emit("FlatSoftmax", {"axis": axis, "log": log}, [n.inp(0)])


@converter("Add", "Sub", "Mul", "Div", "Pow", versions=(7, 12, 13, 14, 15))
def _binary(n):
    n.emit(n.op_type, {}, [n.inp(0), n.inp(1)])


@converter("Sum", "Max", "Min", "Mean", versions=(6, 8, 12, 13))
def _variadic(n):
    n.emit(n.op_type, {}, [n.inp(i) for i in range(len(n.proto.input))])


@converter("Concat", versions=(4, 11, 13))
def _concat(n):
    n.emit("Concat", {"axis": int(n.attr("axis"))}, [n.inp(i) for i in range(len(n.proto.input))])


@converter("Split", versions=(2, 11, 13, 18))
def _split(n):
    axis = int(n.attr("axis", 0))
    outputs = n.outputs
    sizes = n.attr("split") if n.version < 13 else None
    sizes_in = n.inp(1) if n.version >= 13 else None
    if sizes_in is not None and n.const(1) is not None:
        sizes, sizes_in = [int(v) for v in n.const(1)], None
    num = n.attr("num_outputs") if n.version >= 18 else None
    if sizes is None and sizes_in is None:
        num = len(outputs) if num is None else int(num)
        if n.version < 18:  # equal parts only
            shape = n.shape(0)
            if shape is not None and shape[axis] is not None and shape[axis] % num:
                raise Unsupported(f"cannot split size {shape[axis]} into {num} equal parts")
        n.emit("Split", {"axis": axis, "num_outputs": num}, [n.inp(0)], outputs)
    elif sizes_in is not None:
        n.emit("Split", {"axis": axis, "num_outputs": len(outputs)}, [n.inp(0), sizes_in],
               outputs)
    else:
        n.emit("Split", {"axis": axis, "sizes": list(sizes)}, [n.inp(0)], outputs)


def _const_or_input(n, index, attr=None, version_inputs=0):
    """(value, None) when the operand is known at import, else (None, input name); from the
    attribute ``attr`` before ``version_inputs``."""
    if n.version < version_inputs:
        value = n.attr(attr)
        return (None if value is None else list(value)), None
    value = n.const(index)
    if value is not None:
        return np.asarray(value).reshape(-1).tolist(), None
    return None, n.inp(index)


@converter("Slice", versions=(1, 10, 11, 13))
def _slice(n):
    parts = [_const_or_input(n, i, a, 10)
             for i, a in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]
    args = {k: v for k, (v, _) in zip(("starts", "ends", "axes", "steps"), parts)}
    inputs = [n.inp(0)] + [name for _, name in parts]
    n.emit("Slice", args, inputs)


@converter("Reshape", versions=(5, 13, 14, 19, 21, 23, 24, 25))
def _reshape(n):
    shape, name = _const_or_input(n, 1)
    n.emit("Reshape", {"shape": shape, "allowzero": bool(n.attr("allowzero", 0))},
           [n.inp(0), name])


@converter("DepthToSpace", versions=(1, 11, 13, 28))
def _depth_to_space(n):
    mode = n.attr("mode", "DCR") if n.version >= 11 else "DCR"
    n.emit("DepthToSpace", {"block_size": int(n.attr("blocksize")), "mode": mode}, [n.inp(0)])


@converter("Transpose", versions=(1, 13, 21, 23, 24, 25))
def _transpose(n):
    n.emit("Transpose", {"perm": _ints_attr(n, "perm", None)}, [n.inp(0)])


@converter("Squeeze", "Unsqueeze", versions=(1, 11, 13, 21, 23, 24, 25))
def _squeeze(n):
    axes, name = _const_or_input(n, 1, "axes", 13)
    n.emit(n.op_type, {"axes": axes}, [n.inp(0), name])


@converter("Expand", versions=(8, 13))
def _expand(n):
    shape, name = _const_or_input(n, 1)
    n.emit("Expand", {"shape": shape}, [n.inp(0), name])


@converter("Pad", versions=(2, 11, 13, 18, 19, 21, 23, 24, 25))
def _pad(n):
    mode = n.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"mode {mode!r} (fscnn pads with 'constant', 'reflect' or 'edge')")
    if n.version < 11:
        pads, value = _ints_attr(n, "pads", None), float(n.attr("value", 0.0))
        n.emit("Pad", {"pads": pads, "mode": mode, "value": value}, [n.inp(0)])
        return
    pads = n.const(1)
    value = None if n.inp(2) is None else n.const(2)
    axes = n.const(3) if n.inp(3) is not None else None
    if pads is None or (n.inp(2) is not None and value is None) or \
            (n.inp(3) is not None and axes is None):
        n.emit("Pad", {"mode": mode}, [n.inp(0), n.inp(1), n.inp(2), n.inp(3)])
        return
    value = 0.0 if value is None or np.size(value) == 0 else np.asarray(value).reshape(-1)[0].item()
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if axes is not None:
        rank = n.rank(0)
        if rank is None:
            raise Unsupported("pads with axes need the input's rank")
        full = [0] * (2 * rank)
        axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
        for k, a in enumerate(axes):
            full[a], full[rank + a] = pads[k], pads[len(axes) + k]
        pads = full
    n.emit("Pad", {"pads": pads, "mode": mode, "value": value}, [n.inp(0)])


@converter("MaxPool", versions=(8, 10, 11, 12, 22))
def _max_pool(n):
    n.only_first_output()
    n.attr("storage_order")  # orders the indices output only
    kernel, strides, dilations = _window(n)
    pads = _explicit_pads(n, kernel, strides, dilations, _spatial(n))
    args = {"kernel_size": kernel, "stride": strides, "padding": pool_padding_arg(pads, kernel),
            "dilation": dilations, "ceil_mode": bool(n.attr("ceil_mode", 0))}
    dtype = n.builder.dtypes.get(n.inp(0))
    if dtype is not None and dtype.kind in "iu":  # 8-bit pools: exact in float32
        n.emit("Cast", {"dtype": "float32"}, [n.inp(0)], [n.tmp("f")], suffix="to_float")
        n.emit("MaxPool2d", args, [n.tmp("f")], [n.tmp("pooled")], suffix="pool")
        n.emit("Cast", {"dtype": str(dtype)}, [n.tmp("pooled")])
    else:
        n.emit("MaxPool2d", args, [n.inp(0)])


@converter("AveragePool", versions=(7, 10, 11, 19, 22))
def _avg_pool(n):
    kernel, strides, dilations = _window(n)
    if dilations != [1, 1]:
        raise Unsupported(f"dilations {dilations} (fscnn's average pool has none)")
    pads = _explicit_pads(n, kernel, strides, dilations, _spatial(n))
    n.emit("AvgPool2d", {"kernel_size": kernel, "stride": strides,
                         "padding": pool_padding_arg(pads, kernel),
                         "ceil_mode": bool(n.attr("ceil_mode", 0)),
                         "count_include_pad": bool(n.attr("count_include_pad", 0))}, [n.inp(0)])


@converter("GlobalAveragePool", "GlobalMaxPool", versions=(1, 22))
def _global_pool(n):
    rank = n.rank(0)
    if rank == 4:
        layer = "AdaptiveAvgPool2d" if n.op_type == "GlobalAveragePool" else "AdaptiveMaxPool2d"
        n.emit(layer, {"output_size": 1}, [n.inp(0)])
    elif rank is not None and rank >= 3:
        n.emit("Reduce", {"op": "mean" if n.op_type == "GlobalAveragePool" else "max",
                          "axes": list(range(2, rank)), "keepdims": True}, [n.inp(0)])
    else:
        raise Unsupported("global pooling needs an input of known rank >= 3")


@converter("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
           versions=(1, 11, 12, 13, 18, 20))
def _reduce(n):
    op = n.op_type[len("Reduce"):].lower()
    inputs_from = 13 if op == "sum" else 18
    keepdims = bool(n.attr("keepdims", 1))
    if n.version < inputs_from:
        axes, name = _ints_attr(n, "axes", None), None
    else:
        axes, name = _const_or_input(n, 1)
        noop = bool(n.attr("noop_with_empty_axes", 0))
        if noop and name is None and not axes:
            n.builder.alias(n.outputs[0], n.inp(0))
            return
        if noop:
            n.emit("Reduce", {"op": op, "axes": axes, "keepdims": keepdims,
                              "noop_with_empty_axes": True}, [n.inp(0), name])
            return
    n.emit("Reduce", {"op": op, "axes": axes, "keepdims": keepdims}, [n.inp(0), name])


@converter("Resize", versions=(10, 11, 13, 18, 19))
def _resize(n):
    mode = n.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode {mode!r} (fscnn resizes with 'nearest' or 'linear')")
    if n.version == 10:
        coord, nearest = "asymmetric", "floor"
        scales_i, sizes_i = 1, None
    else:
        coord = n.attr("coordinate_transformation_mode", "half_pixel")
        nearest = n.attr("nearest_mode", "round_prefer_floor")
        n.attr("cubic_coeff_a")
        if n.attr("exclude_outside", 0):
            raise Unsupported("exclude_outside=1")
        n.attr("extrapolation_value")  # used by tf_crop_and_resize only
        scales_i, sizes_i = 2, 3
    if coord == "tf_crop_and_resize":
        raise Unsupported("coordinate_transformation_mode 'tf_crop_and_resize'")
    if n.attr("antialias", 0):
        raise Unsupported("antialias=1")
    policy = n.attr("keep_aspect_ratio_policy", "stretch")
    args = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest,
            "axes": _ints_attr(n, "axes", None), "keep_aspect_ratio_policy": policy}
    sizes_in = n.inp(sizes_i) if sizes_i is not None else None
    scales_in = n.inp(scales_i)
    sizes = n.const(sizes_i) if sizes_in else None
    scales = n.const(scales_i) if scales_in else None
    if sizes is not None and np.size(sizes) == 0:
        sizes_in = None
    if scales is not None and np.size(scales) == 0:
        scales_in = None
    if sizes_in is not None:
        if sizes is not None:
            n.emit("Resize", dict(args, sizes=[int(v) for v in sizes.reshape(-1)]), [n.inp(0)])
        else:
            n.emit("Resize", args, [n.inp(0), sizes_in, None])
    elif scales_in is not None:
        if scales is not None:
            n.emit("Resize", dict(args, scales=[float(v) for v in scales.reshape(-1)]),
                   [n.inp(0)])
        else:
            n.emit("Resize", args, [n.inp(0), None, scales_in])
    else:
        raise Unsupported("neither scales nor sizes given")


@converter("Upsample", versions=(7, 9, 10))
def _upsample(n):
    mode = n.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise Unsupported(f"mode {mode!r}")
    scales = n.attr("scales") if n.version < 9 else n.const(1)
    args = {"mode": "nearest" if mode == "nearest" else "linear",
            "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    if scales is None:
        n.emit("Resize", args, [n.inp(0), None, n.inp(1)])
    else:
        n.emit("Resize", dict(args, scales=[float(s) for s in np.asarray(scales).reshape(-1)]),
               [n.inp(0)])


@converter("Dropout", versions=(7, 10, 12, 13, 22))
def _dropout(n):
    n.attr("ratio")
    n.attr("seed")
    if n.inp(2) is not None:
        mode = n.const(2)
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            raise Unsupported("training_mode (fscnn runs inference: Dropout is the identity)")
    n.only_first_output()
    n.builder.alias(n.outputs[0], n.inp(0))


@converter("Cast", versions=(6, 9, 13, 19, 21, 23, 24, 25, 28))
def _cast(n):
    onnx = _onnx()
    to = n.attr("to")
    n.attr("saturate")  # float8 targets only, which are refused below
    n.attr("round_mode")  # likewise
    try:
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to)))
    except Exception:
        raise Unsupported(f"cast to ONNX type {to}") from None
    if dtype not in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                     "uint8", "uint16", "uint32", "uint64", "bool"):
        raise Unsupported(f"cast to {dtype}")
    n.emit("Cast", {"dtype": dtype}, [n.inp(0)])


@converter("Shape", versions=(1, 13, 15, 19, 21, 23, 24, 25))
def _shape(n):
    start, end = int(n.attr("start", 0)), n.attr("end")
    shape = n.shape(0)
    if shape is not None and None not in shape:  # static: known now
        n.builder.consts[n.outputs[0]] = np.array(shape, np.int64)[
            slice(start, None if end is None else int(end))]
        return
    n.emit("Shape", {"start": start, "end": None if end is None else int(end)}, [n.inp(0)])


@converter("Gather", versions=(1, 11, 13))
def _gather(n):
    n.emit("Gather", {"axis": int(n.attr("axis", 0))}, [n.inp(0), n.inp(1)])


@converter("GatherND", versions=(11, 12, 13))
def _gather_nd(n):
    n.emit("GatherND", {"batch_dims": int(n.attr("batch_dims", 0))}, [n.inp(0), n.inp(1)])


@converter("Where", versions=(9, 16))
def _where(n):
    n.emit("Where", {}, [n.inp(0), n.inp(1), n.inp(2)])


@converter("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor",
           "Not", versions=(1, 7, 9, 11, 12, 13, 16, 19))
def _compare(n):
    op = {"LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal"}.get(
        n.op_type, n.op_type.lower())
    n.emit("Compare", {"op": op}, [n.inp(i) for i in range(len(n.proto.input))])


@converter("Tile", versions=(6, 13))
def _tile(n):
    repeats, name = _const_or_input(n, 1)
    n.emit("Tile", {"repeats": repeats}, [n.inp(0), name])


@converter("Range", versions=(11, 27))
def _range(n):
    n.attr("stash_type")  # the precision of float ranges: fscnn computes them in float64
    n.emit("Range", {}, [n.inp(0), n.inp(1), n.inp(2)])


@converter("ConstantOfShape", versions=(9, 20, 21, 23, 24, 25))
def _constant_of_shape(n):
    value = n.attr("value")
    arr = np.zeros(1, np.float32) if value is None else _array(value)
    if arr.dtype.kind not in "fiub":
        raise Unsupported(f"value of type {arr.dtype}")
    n.emit("ConstantOfShape", {"value": arr.reshape(-1)[0].item(), "dtype": str(arr.dtype)},
           [n.inp(0)])


@converter("Constant", versions=(9, 11, 12, 13, 19, 21, 23, 24, 25))
def _constant(n):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        value = n.attr(key)
        if value is not None:
            break
    else:
        raise Unsupported(f"attributes {sorted(n.attrs)} (fscnn reads numeric constants)")
    if key == "value":
        arr = _array(value)
    else:
        arr = np.array(value, np.float32 if "float" in key else np.int64)
    if arr.dtype.kind not in "fiub":
        raise Unsupported(f"a constant of type {arr.dtype}")
    n.builder.consts[n.outputs[0]] = arr


def _tensor_dtype(value_info):
    onnx = _onnx()
    t = value_info.type
    if not t.HasField("tensor_type"):
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type))
    except Exception:
        return None


# -- import -------------------------------------------------------------------------------
def from_onnx(source, *, input_shapes=None):
    """Import an ONNX model as an fscnn graph module.

    Parameters
    ----------
    source : str, path-like, bytes or onnx.ModelProto
        An ``.onnx`` file (external data is read from beside it), its bytes, or a model.
    input_shapes : dict of str -> tuple, or sequence of tuples, optional
        Shapes to declare for the graph inputs (by name, or in input order), ints for fixed
        sizes and None for sizes chosen per call. Overrides the file's declaration: fixing a
        size lets shape computations fold at import; freeing one lets a model exported with
        fixed sizes run at others.

    Returns
    -------
    fscnn.nn.Graph
        Called with numpy arrays positionally in the graph's input order (or by input name),
        returning one array for one output and a tuple for several. Its ``state_dict`` keys
        are the initializer names. Float tensors are computed in float32 whatever their type
        in the file (float16 and float64 weights are converted once, at import).

    Raises
    ------
    ModelImportError
        The file is unreadable or not ONNX, its opset is older than 9, its shapes contradict
        each other, or operators/attributes are unsupported (all of them listed, with node
        names and types, in one error).
    ImportError
        The ``onnx`` package is not installed (``pip install "fscnn[onnx]"``).

    Examples
    --------
    >>> model = fscnn.from_onnx("resnet50.onnx")
    >>> fscnn.prune.prune(model, 0.9, inplace=True)
    >>> model.prepare((1, 3, 224, 224))
    >>> y = model(np.random.rand(1, 3, 224, 224).astype(np.float32))
    """
    onnx = _onnx()
    model = load_model(source)
    opset = _opset(model)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    skeleton = _with_input_shapes(_skeleton(model), input_shapes, inputs)
    inputs = [i for i in skeleton.graph.input if i.name not in init_names]
    check_source_names([i.name for i in inputs], "input names")
    check_source_names([o.name for o in graph.output], "output names")

    problems = []
    versions = {}
    context = onnx.checker.C.CheckerContext()
    context.ir_version = model.ir_version
    context.opset_imports = {o.domain: o.version for o in model.opset_import}
    for k, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{k}"
        if node.domain in ("", "ai.onnx"):
            try:  # the node against its schema: inputs, attributes and their types
                onnx.checker.check_node(node, context)
            except Exception as exc:
                problems.append((name, node.op_type, f"invalid node: {exc}"))
                continue
        if node.domain not in ("", "ai.onnx"):
            problems.append((name, f"{node.domain}.{node.op_type}",
                             f"operator domain {node.domain!r} is not supported"))
            continue
        entry = _CONVERTERS.get(node.op_type)
        if entry is None:
            problems.append((name, node.op_type, "operator not supported by fscnn"))
            continue
        try:
            since = onnx.defs.get_schema(node.op_type, opset).since_version
        except Exception:
            problems.append((name, node.op_type, f"not an operator of ONNX opset {opset}"))
            continue
        if since not in entry[1]:
            problems.append((name, node.op_type, f"version {since} (opset {opset}); fscnn "
                             f"imports versions {sorted(entry[1])}"))
        versions[k] = since
    if problems:
        raise ModelImportError(f"cannot import the model: {len(problems)} unsupported "
                               f"node(s)", problems)

    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True,
                                                     strict_mode=True,
                                                     data_prop=True)
    except Exception as exc:
        raise ModelImportError(f"the model's shapes or types contradict each other: "
                               f"{str(exc).strip()}") from None

    builder = GraphBuilder()
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + \
            list(inferred.graph.output):
        dims = _dims(vi)
        if dims is not None:
            builder.shapes[vi.name] = dims
        dtype = _tensor_dtype(vi)
        if dtype is not None:
            builder.dtypes[vi.name] = dtype
    for tensor in graph.initializer:
        builder.consts[tensor.name] = _array(tensor)
    graph_inputs = []
    for proto in inputs:
        dtype = _tensor_dtype(proto)
        if str(dtype) not in _INPUT_TYPES:
            kind = proto.type.WhichOneof("value")
            what = f"a {kind.replace('_type', '')} input" if kind != "tensor_type" else \
                f"a tensor of type {dtype}"
            problems.append((proto.name, "input", f"{what} is not supported (fscnn takes "
                             f"float, integer and bool tensors)"))
            continue
        graph_inputs.append((proto.name, _dims(proto),
                             "float32" if dtype.kind == "f" else str(dtype)))
    builder.read = {v for node in graph.node for v in node.input if v} | \
        {o.name for o in graph.output}

    for k, node in enumerate(graph.node):
        raw = node.name or f"{node.op_type}_{k}"
        ctx = _NodeContext(node, versions[k], builder, builder.node_name(node.name,
                                                                          f"{node.op_type}_{k}"))
        try:
            _CONVERTERS[node.op_type][0](ctx)
            unread = ctx.unread_attributes()
            if unread:
                raise Unsupported(f"attributes {unread} are not supported")
        except Unsupported as exc:
            problems.append((raw, node.op_type, str(exc)))
        except (ValueError, TypeError) as exc:
            problems.append((raw, node.op_type, f"{type(exc).__name__}: {exc}"))
    if problems:
        raise ModelImportError(f"cannot import the model: {len(problems)} problem(s)", problems)
    try:
        return builder.build(graph_inputs, [o.name for o in graph.output])
    except (ValueError, TypeError) as exc:
        raise ModelImportError(f"cannot build the model: {exc}") from None


def replace_weights(source, tensors):
    """A copy of an ONNX model with the weights in ``tensors`` replaced, e.g. pruned:
    what ``fscnn prune model.onnx pruned.onnx`` writes, a model any ONNX runtime loads.

    Parameters
    ----------
    source : str, path-like, bytes or onnx.ModelProto
    tensors : mapping of str -> array
        State-dict entries of the graph imported from ``source`` (its tensor names). An
        initializer or ``Constant`` node output is replaced in place, in its own type; a
        weight the graph computed at import (a float16 initializer cast to float32, say)
        becomes a float32 initializer that replaces the nodes computing it.

    Returns
    -------
    onnx.ModelProto
    """
    onnx = _onnx()
    model = load_model(source)
    if model is source:  # never change the caller's model
        model = onnx.ModelProto()
        model.CopyFrom(source)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    computed = {}
    for k, node in enumerate(graph.node):
        for out in node.output:
            computed[out] = k
    doomed = set()
    for key, value in tensors.items():
        value = np.asarray(value)
        if key in inits:
            old = inits[key]
            new = _like(value, old, key)
            old.CopyFrom(new)
        elif key in constants:
            attr = next(a for a in constants[key].attribute if a.name == "value")
            attr.t.CopyFrom(_like(value, attr.t, key))
        elif key in computed:
            doomed.add(computed[key])
            graph.initializer.append(onnx.numpy_helper.from_array(
                np.asarray(value, np.float32), key))
        else:
            raise KeyError(f"replace_weights: the model has no tensor {key!r}")
    if doomed:
        kept = [n for k, n in enumerate(graph.node) if k not in doomed]
        del graph.node[:]
        graph.node.extend(kept)
        used = {v for n in graph.node for v in n.input} | {o.name for o in graph.output}
        unused = [t for t in graph.initializer if t.name not in used]
        for t in unused:
            graph.initializer.remove(t)
    return model


def _like(value, old, key):
    """``value`` as a TensorProto of ``old``'s type and shape."""
    onnx = _onnx()
    shape = tuple(old.dims)
    if value.shape != shape:
        raise ValueError(f"replace_weights: {key!r} has shape {shape} in the model, got "
                         f"{value.shape}")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
    return onnx.numpy_helper.from_array(value.astype(dtype), old.name)
