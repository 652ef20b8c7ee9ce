"""Import TFLite models as :class:`fscnn.nn.Graph` modules (``fscnn.from_tflite``).

The flatbuffer is read with the ``tflite`` package (the schema's generated reader) into plain
tensors and operators, every vector bounded by the file's size, so a truncated or foreign
file raises :class:`ModelImportError` rather than anything else. Constants are decoded at
import: float16 weights behind ``DEQUANTIZE``, int8 weights with their scales, and sparse
tensors in TFLite's sparsity format (the ``DENSIFY`` input of XNNPACK-targeted pruned models,
see :func:`densify`).

Layout: TFLite computes in NHWC, fscnn's kernels in NCHW. The graph keeps the model's
interface (NHWC inputs and outputs, exactly as LiteRT takes and returns them) and holds its
4-D activations as NCHW inside: weights are converted once at import (``CONV_2D`` OHWI ->
OIHW, ``DEPTHWISE_CONV_2D`` 1HW(C*M) -> (C*M)1HW with C groups), and a transpose runs only
where an operator needs the other layout (the entry, each 4-D output, a ``RESHAPE`` of a 4-D
tensor). Axes and paddings given in NHWC terms are mapped to the held layout.

One converter function per operator, registered in a table. A converter reads the
operator's options through :class:`_OpContext`, which refuses an option that is set to
something other than its default and that the converter did not read, so an option fscnn
does not implement is an error, never a silently wrong result. A converter also computes its
output shapes, checked against the shapes the file declares. Every problem of a model is
reported in one :class:`ModelImportError`, before any compute. Quantized (int8 activation)
models are refused. Operator versions are not checked: TFLite adds versions for new tensor
types, and the float semantics changes it made came with options, which are checked.

Import needs the ``tflite`` package (``pip install "fscnn[tflite]"``); the imported graph
does not.
"""
import importlib
import math
import os
import re
from collections import Counter, namedtuple

import numpy as np

from ._builder import GraphBuilder, ModelImportError, Unsupported, padding_arg, pool_padding_arg

_CONVERTERS = {}

_TYPES = ("float32", "float16", "int32", "uint8", "int64", "string", "bool", "int16",
          "complex64", "int8", "float64", "complex128", "uint64", "resource", "variant",
          "uint32", "uint16", "int4", "bfloat16")
_NUMERIC = {"float32", "float16", "float64", "int32", "int64", "int16", "int8", "uint8",
            "uint16", "uint32", "uint64", "bool"}
_QUANTIZED = {"int8", "uint8", "int16"}  # activation types of quantized models
_SAME, _VALID = 0, 1
_DENSE, _SPARSE_CSR = 0, 1
_NHWC_TO_NCHW = (0, 3, 1, 2)  # permutation taking an NHWC array to NCHW
_NCHW_TO_NHWC = (0, 2, 3, 1)
_NCHW_AXIS = (0, 2, 3, 1)  # NHWC axis a is axis _NCHW_AXIS[a] of the NCHW array
_MAX_ELEMENTS = 1 << 31  # a decoded constant larger than this is refused (a corrupt shape)

Tensor = namedtuple("Tensor", ["index", "name", "shape", "dtype", "data", "quant", "sparse"])
Tensor.__doc__ = """A tensor of a TFLite subgraph: ``index``, ``name``, ``shape`` (tuple of int,
None when the file gives no rank), ``dtype`` (a NumPy type name or TFLite's name for other
types), ``data`` (ndarray of the constant, sparse ones decoded; None for run-time tensors),
``quant`` ((scale, zero_point, axis) arrays or None) and ``sparse`` (True when the file stores
it in TFLite's sparsity format)."""

Operator = namedtuple("Operator", ["index", "type", "version", "inputs", "outputs", "options",
                                   "defaults"])
Operator.__doc__ = """An operator: ``index`` in execution order, ``type`` (the builtin name such
as 'CONV_2D', or 'CUSTOM:<code>'), ``version``, ``inputs`` / ``outputs`` (tensor indices, -1
for an absent optional input), ``options`` and their ``defaults`` (dicts by schema field
name)."""

TFLiteModel = namedtuple("TFLiteModel", ["tensors", "operators", "inputs", "outputs",
                                         "description"])
TFLiteModel.__doc__ = """The first subgraph of a TFLite file as plain data (see
:func:`load_model`)."""


def _tflite():
    try:
        import tflite
    except ImportError:
        raise ImportError('fscnn.from_tflite needs the tflite package: pip install '
                          '"fscnn[tflite]"') from None
    return tflite


def converter(*op_types):
    """Register the decorated function as the converter of the TFLite ``op_types``."""
    def register(fn):
        for op in op_types:
            _CONVERTERS[op] = fn
        return fn
    return register


def supported_operators():
    """The TFLite builtin operators fscnn imports, sorted."""
    return sorted(_CONVERTERS)


# -- reading the flatbuffer ---------------------------------------------------------------
def _snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_FIELD_CACHE = {}


def _option_fields(tfl, name):
    """(fields, defaults) of the options table ``name``: [(schema name, accessor name,
    None or the kind of vector)], and each field's value in an empty table (its default)."""
    if name not in _FIELD_CACHE:
        import flatbuffers
        cls = getattr(tfl, name)
        fields = []
        for attr, fn in vars(cls).items():
            if (not callable(fn) or attr.startswith(("_", "GetRootAs", "Init"))
                    or attr.endswith(("BufferHasIdentifier", "AsNumpy", "Length", "IsNone"))):
                continue
            vector = fn.__code__.co_argcount > 1
            fields.append((_snake(attr), attr, "numbers" if vector and hasattr(
                cls, attr + "AsNumpy") else "tables" if vector else None))
        module = importlib.import_module(f"{tfl.__name__}.{name}")
        b = flatbuffers.Builder(0)
        getattr(module, f"{name}Start")(b)
        b.Finish(getattr(module, f"{name}End")(b))
        empty = cls.GetRootAs(b.Output(), 0)
        _FIELD_CACHE[name] = (fields, _read_fields(empty, fields))
    return _FIELD_CACHE[name]


def _read_fields(table, fields):
    values = {}
    for field, attr, vector in fields:
        if vector == "numbers":
            arr = getattr(table, attr + "AsNumpy")()
            values[field] = () if isinstance(arr, int) else tuple(arr.tolist())
        elif vector == "tables":
            values[field] = f"({getattr(table, attr + 'Length')()} tables)"
        else:
            value = getattr(table, attr)()
            values[field] = value if isinstance(value, (bool, int, float, bytes, type(None))) \
                else "(a table)"
    return values


def _count(n, data, item):
    """``n`` checked to be a vector length that fits in the file (``item`` bytes each)."""
    if n * item > len(data):
        raise ModelImportError(f"a vector of {n} entries does not fit in the {len(data)}-byte "
                               f"file (truncated or corrupt)")
    return n


def _ints_of(vector):
    """A flatbuffer int vector read with ``...AsNumpy()`` (0 when absent) as a list."""
    return [] if isinstance(vector, int) else [int(v) for v in vector]


def _name(raw):
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


def _int_vector(tfl, kind, table):
    """The values of a SparseIndexVector union member."""
    cls = {1: tfl.Int32Vector, 2: tfl.Uint16Vector, 3: tfl.Uint8Vector}.get(kind)
    if cls is None or table is None:
        raise ModelImportError(f"sparsity metadata: unknown index vector type {kind}")
    vec = cls()
    vec.Init(table.Bytes, table.Pos)
    values = vec.ValuesAsNumpy()
    return np.zeros(0, np.int64) if isinstance(values, int) else values.astype(np.int64)


def _read_sparsity(tfl, sp):
    order = sp.TraversalOrderAsNumpy()
    block_map = sp.BlockMapAsNumpy()
    dims = []
    for k in range(_count(sp.DimMetadataLength(), sp._tab.Bytes, 4)):
        dm = sp.DimMetadata(k)
        if dm.Format() == _DENSE:
            dims.append((_DENSE, int(dm.DenseSize()), None, None))
        else:
            dims.append((dm.Format(), int(dm.DenseSize()),
                         _int_vector(tfl, dm.ArraySegmentsType(), dm.ArraySegments()),
                         _int_vector(tfl, dm.ArrayIndicesType(), dm.ArrayIndices())))
    return _ints_of(order), _ints_of(block_map), dims


def _buffer_bytes(model, index, data):
    """The bytes of buffer ``index`` (a view of the file), or None when it is empty."""
    if index == 0:
        return None
    if index >= model.BuffersLength():
        raise ModelImportError(f"buffer {index} does not exist (the file has "
                               f"{model.BuffersLength()})")
    buf = model.Buffers(index)
    offset = buf.Offset()
    if offset > 1:  # data stored after the flatbuffer (models over 2 GB)
        size = buf.Size()
        if offset + size > len(data):
            raise ModelImportError(f"buffer {index} lies beyond the end of the file "
                                   f"(truncated)")
        raw = np.frombuffer(data, np.uint8, size, offset)
    else:
        raw = buf.DataAsNumpy()
        if isinstance(raw, int):
            return None
    return raw if raw.size else None


def _decode(tensor_name, raw, dtype, shape, sparsity):
    """The constant of a tensor from its buffer's bytes."""
    if dtype not in _NUMERIC:
        raise ModelImportError(f"tensor {tensor_name!r}: constants of type {dtype} are not "
                               f"supported")
    if shape is None:
        raise ModelImportError(f"tensor {tensor_name!r}: a constant without a shape")
    size = math.prod(shape)
    if min(shape, default=0) < 0 or size >= _MAX_ELEMENTS:
        raise ModelImportError(f"tensor {tensor_name!r}: invalid shape {shape} for a constant")
    itemsize = np.dtype(dtype).itemsize
    if raw.size % itemsize:
        raise ModelImportError(f"tensor {tensor_name!r}: {raw.size} bytes of data is not a "
                               f"whole number of {dtype} values")
    values = np.frombuffer(raw.tobytes(), dtype=np.dtype(dtype).newbyteorder("<"))
    values = values.astype(np.dtype(dtype))
    if sparsity is not None:
        try:
            return densify(values, shape, *sparsity)
        except ValueError as exc:
            raise ModelImportError(f"tensor {tensor_name!r}: invalid sparsity metadata: "
                                   f"{exc}") from None
    if values.size != size:
        raise ModelImportError(f"tensor {tensor_name!r}: {values.size} values of data for "
                               f"shape {shape} ({size} values)")
    return values.reshape(shape)


def _read(tfl, data):
    model = tfl.Model.GetRootAs(data, 0)
    if model.Version() != 3:
        raise ModelImportError(f"schema version {model.Version()}; fscnn reads version 3, as "
                               f"LiteRT does")
    if _count(model.SubgraphsLength(), data, 4) < 1:
        raise ModelImportError("the model has no subgraph")
    codes = []
    for k in range(_count(model.OperatorCodesLength(), data, 4)):
        oc = model.OperatorCodes(k)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == 32:  # CUSTOM
            codes.append((f"CUSTOM:{_name(oc.CustomCode())}", oc.Version()))
        else:
            codes.append((tfl.utils.BUILTIN_OPCODE2NAME.get(code, f"BUILTIN_{code}"),
                          oc.Version()))
    option_names = {v: k for k, v in vars(tfl.BuiltinOptions).items() if isinstance(v, int)}
    _count(model.BuffersLength(), data, 4)
    graph = model.Subgraphs(0)
    tensors = []
    for k in range(_count(graph.TensorsLength(), data, 4)):
        t = graph.Tensors(k)
        name = _name(t.Name()) or f"tensor_{k}"
        dtype = _TYPES[t.Type()] if 0 <= t.Type() < len(_TYPES) else f"type {t.Type()}"
        shape = t.ShapeAsNumpy()
        shape = None if isinstance(shape, int) and not t.HasRank() else \
            () if isinstance(shape, int) else tuple(int(s) for s in shape)
        q = t.Quantization()
        quant = None
        if q is not None and q.ScaleLength():
            zero = q.ZeroPointAsNumpy()
            quant = (q.ScaleAsNumpy().astype(np.float64),
                     np.zeros(1, np.int64) if isinstance(zero, int) else zero.astype(np.int64),
                     q.QuantizedDimension())
        sp = t.Sparsity()
        sparsity = None if sp is None else _read_sparsity(tfl, sp)
        raw = _buffer_bytes(model, t.Buffer(), data)
        value = None if raw is None else _decode(name, raw, dtype, shape, sparsity)
        tensors.append(Tensor(k, name, shape, dtype, value, quant, sparsity is not None))
    ops = []
    for k in range(_count(graph.OperatorsLength(), data, 4)):
        op = graph.Operators(k)
        if not 0 <= op.OpcodeIndex() < len(codes):
            raise ModelImportError(f"operator {k} has opcode index {op.OpcodeIndex()} (the "
                                   f"file has {len(codes)} operator codes)")
        op_type, version = codes[op.OpcodeIndex()]
        options, defaults = {}, {}
        kind = op.BuiltinOptionsType()
        table = op.BuiltinOptions()
        if kind and table is not None:
            name = option_names.get(kind)
            if name is None:
                raise ModelImportError(f"operator {k} ({op_type}): unknown options type {kind}")
            fields, defaults = _option_fields(tfl, name)
            opts = getattr(tfl, name)()
            opts.Init(table.Bytes, table.Pos)
            options = _read_fields(opts, fields)
        if op.BuiltinOptions2Type():
            options["builtin_options_2"], defaults["builtin_options_2"] = \
                op.BuiltinOptions2Type(), 0
        ops.append(Operator(k, op_type, version, _ints_of(op.InputsAsNumpy()),
                            _ints_of(op.OutputsAsNumpy()), options, defaults))
    return TFLiteModel(tensors, ops, _ints_of(graph.InputsAsNumpy()),
                       _ints_of(graph.OutputsAsNumpy()), _name(model.Description()))


def load_model(source):
    """The first subgraph of a TFLite file as a :class:`TFLiteModel` (plain data).

    Parameters
    ----------
    source : str, path-like or bytes
        A ``.tflite`` file or its contents.

    Raises
    ------
    ModelImportError
        The file is missing, truncated, corrupt or not a TFLite flatbuffer (file identifier
        ``TFL3``), or a constant or its sparsity metadata is inconsistent.
    """
    tfl = _tflite()
    if isinstance(source, (bytes, bytearray, memoryview)):
        where, data = "bytes", bytes(source)
    else:
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise ModelImportError(f"{where}: no such file")
        with open(where, "rb") as f:
            data = f.read()
    if len(data) < 8 or data[4:8] != b"TFL3":
        what = "an empty file" if not data else f"no 'TFL3' file identifier, found {data[4:8]!r}"
        raise ModelImportError(f"{where}: not a TFLite model ({what})")
    try:
        model = _read(tfl, data)
    except ModelImportError as exc:
        raise ModelImportError(f"{where}: {exc}") from None
    except Exception as exc:  # the reader's IndexError, struct.error, ... on corrupt bytes
        raise ModelImportError(f"{where}: not a readable TFLite model, truncated or corrupt "
                               f"({type(exc).__name__}: {exc})") from None
    n = len(model.tensors)
    for k, op in enumerate(model.operators):
        bad = [i for i in op.inputs + op.outputs if not -1 <= i < n] + \
            [i for i in op.outputs if i < 0]
        if bad:
            raise ModelImportError(f"{where}: operator {k} ({op.type}) names tensors {bad}; "
                                   f"the subgraph has {n} (corrupt file)")
    bad = [i for i in model.inputs + model.outputs if not 0 <= i < n]
    if bad:
        raise ModelImportError(f"{where}: the subgraph's inputs/outputs name tensors {bad}; it "
                               f"has {n} (corrupt file)")
    return model


def densify(values, shape, traversal_order, block_map, dim_metadata):
    """The dense array of a tensor stored in TFLite's sparsity format.

    The format (``SparsityParameters`` of TFLite's schema) stores a tensor of rank n, some of
    whose dimensions may be cut into blocks, as a tree: levels in ``traversal_order`` (the n
    dimensions, block counts for blocked ones, then the k block dimensions), each level
    either DENSE (every index, ``dense_size`` of them) or SPARSE_CSR (for each entry of the
    level above, the indices ``array_indices[array_segments[i]:array_segments[i + 1]]``).
    ``values`` holds the leaves in traversal order. This mirrors TFLite's
    ``FormatConverter::SparseToDense``, checking every index on the way.

    Parameters
    ----------
    values : ndarray, 1-D
        The stored values.
    shape : tuple of int
        The dense shape (n dimensions).
    traversal_order : sequence of int
        n + k entries: a permutation of the n dimensions, then ``n, ..., n + k - 1``.
    block_map : sequence of int
        k increasing dimensions, the ones cut into blocks.
    dim_metadata : sequence of (format, dense_size, array_segments, array_indices)
        One per level, in traversal order; format 0 (DENSE) or 1 (SPARSE_CSR).

    Returns
    -------
    ndarray of ``shape``, ``values``' dtype

    Raises
    ------
    ValueError
        Inconsistent metadata: sizes, an index out of range, segments out of order, or a
        number of leaves other than ``len(values)``.
    """
    shape = tuple(int(s) for s in shape)
    n, k = len(shape), len(block_map)
    order, block_map = [int(t) for t in traversal_order], [int(b) for b in block_map]
    if len(order) != n + k or len(dim_metadata) != n + k:
        raise ValueError(f"{len(order)} traversal entries and {len(dim_metadata)} dimension "
                         f"metadata for a rank-{n} tensor with {k} block dimensions (expected "
                         f"{n + k} of each)")
    if sorted(order[:n]) != list(range(n)) or order[n:] != list(range(n, n + k)):
        raise ValueError(f"traversal order {order} is not a permutation of the {n} dimensions "
                         f"followed by the block dimensions in order")
    if any(not 0 <= b < n for b in block_map) or block_map != sorted(set(block_map)):
        raise ValueError(f"block map {block_map} must hold increasing dimensions below {n}")
    block_size = [int(dim_metadata[n + b][1]) for b in range(k)]
    sizes = list(shape) + block_size  # size of each expanded dimension
    for b, d in enumerate(block_map):
        if block_size[b] < 1 or shape[d] % block_size[b]:
            raise ValueError(f"block size {block_size[b]} does not divide dimension {d} of "
                             f"shape {shape}")
        sizes[d] = shape[d] // block_size[b]
    _check_traversal(values.size, [sizes[t] for t in order], dim_metadata)
    level_index = []
    prev = np.zeros(1, np.int64)  # per path: its position in the level above
    for level, (fmt, dense_size, segments, indices) in enumerate(dim_metadata):
        size = sizes[order[level]]
        if fmt == _DENSE:
            if int(dense_size) != size:
                raise ValueError(f"level {level} is dense of size {dense_size}, its dimension "
                                 f"has {size}")
            level_index = [np.repeat(a, size) for a in level_index]
            current = np.tile(np.arange(size, dtype=np.int64), prev.size)
            prev = np.repeat(prev, size) * size + current
        elif fmt == _SPARSE_CSR:
            segments = np.asarray(segments, np.int64)
            indices = np.asarray(indices, np.int64)
            if prev.size and prev.max() + 1 >= segments.size:
                raise ValueError(f"level {level} has {segments.size} segment bounds for "
                                 f"{prev.max() + 2} needed")
            if segments.size and (segments[0] < 0 or np.any(np.diff(segments) < 0)
                                  or segments[-1] > indices.size):
                raise ValueError(f"level {level}: segments must increase from 0 to at most "
                                 f"{indices.size} (the number of indices)")
            starts, counts = segments[prev], segments[prev + 1] - segments[prev]
            owner = np.repeat(np.arange(prev.size), counts)
            pos = starts[owner] + np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts,
                                                                     counts)
            level_index = [a[owner] for a in level_index]
            current = indices[pos]
            if current.size and (current.min() < 0 or current.max() >= size):
                raise ValueError(f"level {level}: indices must lie in [0, {size}), got "
                                 f"{current.min()}..{current.max()}")
            prev = pos
        else:
            raise ValueError(f"level {level}: unknown dimension format {fmt}")
        level_index.append(current)
    if prev.size != values.size:
        raise ValueError(f"the metadata describe {prev.size} stored values, the buffer holds "
                         f"{values.size}")
    position = {dim: level for level, dim in enumerate(order)}
    coords = []
    for d in range(n):
        idx = level_index[position[d]] if level_index else np.zeros(0, np.int64)
        if d in block_map:
            b = block_map.index(d)
            idx = idx * block_size[b] + level_index[position[n + b]]
        coords.append(idx)
    dense = np.zeros(shape, values.dtype)
    if n == 0:
        dense[()] = values[0] if values.size else 0
    elif values.size:
        dense[tuple(coords)] = values
    return dense


def _check_traversal(n_values, sizes, dim_metadata):
    """Raise ValueError unless the levels hold exactly ``n_values`` leaves, counting without
    allocating: the positions reached at each level are always one contiguous range (all of
    a dense level's for each position above; a sparse level's segments of consecutive
    positions), so a corrupt size cannot make the traversal's arrays huge."""
    first, count = 0, 1
    for level, ((fmt, dense_size, segments, _), size) in enumerate(zip(dim_metadata, sizes)):
        if fmt == _DENSE:
            first, count = first * size, count * size
        elif fmt == _SPARSE_CSR:
            if first + count >= len(segments):
                raise ValueError(f"level {level} has {len(segments)} segment bounds for "
                                 f"{first + count + 1} needed")
            first, count = int(segments[first]), int(segments[first + count] - segments[first])
            if count < 0:
                raise ValueError(f"level {level}: segments decrease")
    if count != n_values:
        raise ValueError(f"the metadata describe {count} stored values, the buffer holds "
                         f"{n_values}")


# -- the conversion state -----------------------------------------------------------------
def _short(name):
    """A node name from a tensor name: TFLite joins the names of fused TensorFlow ops with
    ';', the last being the op that computes the tensor."""
    return name.split(";")[-1]


class _Importer:
    """Which graph value holds each TFLite tensor, in which layout: 'plain' (the model's own
    layout) or 'nchw' (a 4-D NHWC tensor held transposed, as fscnn's kernels take it)."""

    def __init__(self, model):
        self.tensors = model.tensors
        self.builder = GraphBuilder()
        self.taken = set()
        self.names = [self.fresh(t.name) for t in model.tensors]
        self.held = {}  # tensor index -> (graph value, layout)
        self.shapes = {}  # tensor index -> shape in the model's layout
        self.views = {}  # (tensor index, layout) -> graph value holding it so
        self.pads = {}  # tensor index -> (unpadded tensor, (top, bottom, left, right))
        self.readers = Counter(i for op in model.operators for i in op.inputs if i >= 0)
        self.readers.update(model.outputs)

    def fresh(self, base):
        """A graph value name not used yet."""
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}~{k}"
        self.taken.add(name)
        return name

    def define(self, idx, shape, layout):
        """The graph value that will hold tensor ``idx`` (of model shape ``shape``)."""
        value = self.names[idx] if layout == "plain" else self.fresh(self.names[idx] + "::nchw")
        self.held[idx] = (value, layout)
        self.shapes[idx] = tuple(int(s) for s in shape)
        self.builder.state_keys[value] = self.tensors[idx].name
        return value

    def constant(self, idx, array):
        self.builder.consts[self.define(idx, np.shape(array), "plain")] = array

    def view(self, idx, layout):
        """The graph value holding tensor ``idx`` in ``layout`` (a transpose when held in the
        other one, emitted once)."""
        value, held = self.held[idx]
        if held == layout:
            return value
        if (idx, layout) not in self.views:
            if len(self.shapes[idx]) != 4:
                raise Unsupported(f"tensor {self.tensors[idx].name!r} of shape "
                                  f"{self.shapes[idx]} has no NCHW form (not 4-D)")
            perm = _NHWC_TO_NCHW if layout == "nchw" else _NCHW_TO_NHWC
            target = self.names[idx] if layout == "plain" else \
                self.fresh(self.names[idx] + "::nchw")
            self._transform(idx, value, target, perm=perm)
            self.views[(idx, layout)] = target
        return self.views[(idx, layout)]

    def broadcast_view(self, idx):
        """Tensor ``idx`` as an operand of an elementwise operator computing in NCHW: a 4-D
        one transposed, a lower-rank one (which broadcasts against NHWC's trailing axes)
        padded to 4-D with leading ones, then transposed."""
        shape = self.shapes[idx]
        if len(shape) == 4:
            return self.view(idx, "nchw")
        if (idx, "nchw4") not in self.views:
            target = self.fresh(self.names[idx] + "::nchw")
            full = (1,) * (4 - len(shape)) + shape
            self._transform(idx, self.view(idx, "plain"), target, shape=full,
                            perm=_NHWC_TO_NCHW)
            self.views[(idx, "nchw4")] = target
        return self.views[(idx, "nchw4")]

    def _transform(self, idx, value, target, shape=None, perm=None):
        consts = self.builder.consts
        if value in consts:
            arr = consts[value] if shape is None else np.reshape(consts[value], shape)
            consts[target] = np.ascontiguousarray(np.transpose(arr, perm))
            self.builder.state_keys[target] = self.tensors[idx].name
            return
        name = _short(self.tensors[idx].name)
        if shape is not None:
            mid = self.fresh(f"{self.names[idx]}::4d")
            self.builder.add(self.builder.node_name(f"{name}_to_4d", "reshape"), "Reshape",
                             {"shape": list(shape)}, [value], [mid])
            value = mid
        suffix = "to_nchw" if perm == _NHWC_TO_NCHW else "to_nhwc"
        self.builder.add(self.builder.node_name(f"{name}_{suffix}", "transpose"), "Transpose",
                         {"perm": list(perm)}, [value], [target])


class _OpContext:
    """One TFLite operator being converted: its inputs, options and the builder."""

    def __init__(self, imp, op):
        self.imp, self.op, self.type = imp, op, op.type
        self.builder = imp.builder
        self._read = set()
        label = imp.tensors[op.outputs[0]].name if op.outputs else ""
        self.name = self.builder.node_name(_short(label), f"{op.type.lower()}_{op.index}")

    # -- options --------------------------------------------------------------------------
    def opt(self, field, default=None):
        """The option ``field`` (its schema name); reading it marks it as implemented.

        ``default`` is the value when the operator has no options table, where TFLite's
        parser leaves its parameters zero-initialised (so a converter passes 0 or False)."""
        self._read.add(field)
        return self.op.options.get(field, self.op.defaults.get(field, default))

    def unread_options(self):
        return sorted(f for f, v in self.op.options.items()
                      if f not in self._read and v != self.op.defaults.get(f))

    # -- inputs ---------------------------------------------------------------------------
    def inp(self, k):
        """Tensor index of input ``k``, or None when absent."""
        inputs = self.op.inputs
        return inputs[k] if k < len(inputs) and inputs[k] >= 0 else None

    def index(self, k):
        """Tensor index of the required input ``k``."""
        idx = self.inp(k)
        if idx is None:
            raise Unsupported(f"input {k} is absent ({len(self.op.inputs)} inputs given)")
        return idx

    def tensor(self, k):
        return self.imp.tensors[self.index(k)]

    def shape(self, k):
        return self.imp.shapes[self.index(k)]

    def held(self, k):
        """(graph value, layout) of input ``k`` as held."""
        return self.imp.held[self.index(k)]

    def layout(self, k):
        return self.held(k)[1]

    def nchw(self, k):
        return self.imp.view(self.index(k), "nchw")

    def plain(self, k):
        return self.imp.view(self.index(k), "plain")

    def operand(self, k, layout):
        """Input ``k`` for an elementwise operator computing in ``layout``."""
        return self.plain(k) if layout == "plain" else self.imp.broadcast_view(self.index(k))

    def const(self, k):
        """Input ``k`` as an array in the model's layout when known at import, else None."""
        idx = self.inp(k)
        if idx is None:
            return None
        value, layout = self.imp.held[idx]
        if value not in self.builder.consts:
            return None
        return self.builder.consts[value if layout == "plain" else self.imp.view(idx, "plain")]

    def need_const(self, k, what):
        self.index(k)
        value = self.const(k)
        if value is None:
            raise Unsupported(f"{what} must be a constant, not computed by the graph")
        return value

    def ints(self, k, what):
        value = np.asarray(self.need_const(k, what))
        if value.dtype.kind not in "iu":
            raise Unsupported(f"{what} must be integers, got {value.dtype}")
        return [int(v) for v in value.reshape(-1)]

    def float_const(self, k, what):
        value = self.need_const(k, what)
        if value.dtype.kind != "f":
            raise Unsupported(f"{what} has type {value.dtype} without a DEQUANTIZE (weights "
                              f"quantized for dynamic-range kernels: fscnn imports float "
                              f"models)")
        return np.asarray(value, np.float32)

    def weight(self, k, array):
        """The state key of ``array`` (input ``k`` converted), named after the tensor."""
        return self.builder.weight(self.tensor(k).name, array)

    # -- outputs --------------------------------------------------------------------------
    def output(self, shape, layout="plain", k=0):
        """The graph value to write output ``k`` to (of model shape ``shape``)."""
        return self.imp.define(self.op.outputs[k], shape, layout)

    def set_const(self, array, k=0):
        self.imp.constant(self.op.outputs[k], array)

    def emit(self, op, args, inputs, outputs, params=None, suffix=None):
        name = self.name if suffix is None else \
            self.builder.node_name(f"{self.name}_{suffix}", suffix)
        self.builder.add(name, op, args, inputs, outputs, params)

    def emit_activated(self, op, args, inputs, shape, layout, params=None):
        """Emit ``op`` writing the output, then its fused activation if any."""
        act = _fused_activation(self)
        out = self.output(shape, layout)
        if act is None:
            self.emit(op, args, inputs, [out], params)
            return
        tmp = self.imp.fresh(f"{out}::linear")
        self.emit(op, args, inputs, [tmp], params)
        self.emit(act[0], act[1], [tmp], [out], suffix=act[0].lower())


# -- helpers of the converters ------------------------------------------------------------
# TFLite's float kernels clamp to these ranges and ignore TANH and SIGN_BIT (XNNPACK refuses
# them): a model asking for those is refused rather than guessed at.
_ACTIVATIONS = {0: None, 1: ("ReLU", {}), 2: ("Clip", {"min": -1.0, "max": 1.0}),
                3: ("ReLU6", {})}
_ACTIVATION_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH",
                     5: "SIGN_BIT"}


def _fused_activation(n):
    code = n.opt("fused_activation_function", 0) or 0
    if code not in _ACTIVATIONS or (code and n.type == "CONCATENATION"):
        allowed = "NONE" if n.type == "CONCATENATION" else "NONE, RELU, RELU_N1_TO_1 and RELU6"
        raise Unsupported(f"fused activation {_ACTIVATION_NAMES.get(code, code)} (TFLite's "
                          f"{n.type} kernel implements {allowed})")
    return _ACTIVATIONS[code]


def _need_4d(n, k=0):
    shape = n.shape(k)
    if len(shape) != 4:
        raise Unsupported(f"an input of shape {shape}; expected a 4-D (N, H, W, C) tensor")
    return shape


def _positive(n, fields, what):
    values = [n.opt(f) for f in fields]
    if any(not isinstance(v, int) or v < 1 for v in values):
        raise Unsupported(f"{what} {values} (must be positive)")
    return values


def _broadcast(*shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise Unsupported(f"input shapes {list(shapes)} do not broadcast") from None


def _window_padding(n, size, kernel, stride, dilation):
    """((top, bottom, left, right), (out_h, out_w)) of a window sliding over ``size``
    with the options' SAME or VALID padding (SAME puts the odd pixel at the end)."""
    padding = n.opt("padding")
    pads, out = [], []
    for s, k, st, d in zip(size, kernel, stride, dilation):
        eff = (k - 1) * d + 1
        if padding == _SAME:
            o = -(-s // st)
            total = max((o - 1) * st + eff - s, 0)
            pads += [total // 2, total - total // 2]
        elif padding == _VALID:
            if s < eff:
                raise Unsupported(f"a window of {eff} (dilated) over {s} positions with VALID "
                                  f"padding")
            o = (s - eff) // st + 1
            pads += [0, 0]
        else:
            raise Unsupported(f"padding {padding} (TFLite has SAME (0) and VALID (1))")
        out.append(o)
    return tuple(pads), tuple(out)


# -- converters ---------------------------------------------------------------------------
@converter("CONV_2D", "DEPTHWISE_CONV_2D")
def _conv(n):
    shape = _need_4d(n)
    batch, h, w, c = shape
    filt = n.float_const(1, "the filter")
    if filt.ndim != 4:
        raise Unsupported(f"a filter of shape {filt.shape}; expected 4-D")
    bias = None if n.inp(2) is None else n.float_const(2, "the bias")
    stride = _positive(n, ("stride_h", "stride_w"), "strides")
    dilation = _positive(n, ("dilation_h_factor", "dilation_w_factor"), "dilations")
    n.opt("quantized_bias_type")  # quantized kernels only
    if n.type == "DEPTHWISE_CONV_2D":
        n.opt("depth_multiplier")  # TFLite derives it from the shapes, as here
        if filt.shape[0] != 1 or filt.shape[3] % c:
            raise Unsupported(f"a depthwise filter of shape {filt.shape} for {c} input "
                              f"channels; expected (1, KH, KW, {c} * multiplier)")
        out_c, kernel, groups = filt.shape[3], filt.shape[1:3], c
        weight = filt[0].transpose(2, 0, 1)[:, None]
    else:
        out_c, kernel, per_group = filt.shape[0], filt.shape[1:3], filt.shape[3]
        if c % per_group or out_c % (c // per_group):
            raise Unsupported(f"a filter of shape {filt.shape} for {c} input channels (the "
                              f"groups must divide both channel counts)")
        groups = c // per_group
        weight = filt.transpose(0, 3, 1, 2)
    if bias is not None and bias.shape != (out_c,):
        raise Unsupported(f"a bias of shape {bias.shape} for {out_c} output channels")
    pads, out_hw = _window_padding(n, (h, w), kernel, stride, dilation)
    folded = n.imp.pads.get(n.inp(0))
    if folded is not None and n.imp.readers[n.inp(0)] == 1:
        # a zero PAD read by this convolution only: its pixels are the convolution's padding
        source, before = n.imp.view(folded[0], "nchw"), folded[1]
        pads = tuple(a + b for a, b in zip(pads, before))
        c_in = n.imp.shapes[folded[0]][3]
    else:
        source, c_in = n.nchw(0), c
    params = {"weight": n.weight(1, weight)}
    if bias is not None:
        params["bias"] = n.weight(2, bias)
    n.emit_activated("Conv2d", {"in_channels": c_in, "out_channels": out_c,
                                "kernel_size": list(kernel), "stride": stride,
                                "padding": padding_arg(pads), "dilation": dilation,
                                "groups": groups, "bias": bias is not None},
                     [source], (batch,) + out_hw + (out_c,), "nchw", params)


@converter("MAX_POOL_2D", "AVERAGE_POOL_2D")
def _pool(n):
    batch, h, w, c = _need_4d(n)
    kernel = _positive(n, ("filter_height", "filter_width"), "filter size")
    stride = _positive(n, ("stride_h", "stride_w"), "strides")
    pads, out_hw = _window_padding(n, (h, w), kernel, stride, (1, 1))
    args = {"kernel_size": kernel, "stride": stride, "padding": pool_padding_arg(pads, kernel)}
    if n.type == "AVERAGE_POOL_2D":  # TFLite divides by the window's pixels inside the input
        args["count_include_pad"] = False
    n.emit_activated("MaxPool2d" if n.type == "MAX_POOL_2D" else "AvgPool2d", args,
                     [n.nchw(0)], (batch,) + out_hw + (c,), "nchw")


@converter("FULLY_CONNECTED")
def _fully_connected(n):
    shape = n.shape(0)
    weight = n.float_const(1, "the weights")
    if weight.ndim != 2:
        raise Unsupported(f"weights of shape {weight.shape}; expected (outputs, inputs)")
    out_f, in_f = weight.shape
    bias = None if n.inp(2) is None else n.float_const(2, "the bias")
    if bias is not None and bias.shape != (out_f,):
        raise Unsupported(f"a bias of shape {bias.shape} for {out_f} outputs")
    if n.opt("weights_format", 0):
        raise Unsupported(f"weights_format {n.opt('weights_format')} (fscnn reads DEFAULT)")
    n.opt("asymmetric_quantize_inputs")  # quantized kernels only
    n.opt("quantized_bias_type")
    total = math.prod(shape)
    source = n.plain(0)
    if n.opt("keep_num_dims"):
        if not shape or shape[-1] != in_f:
            raise Unsupported(f"keep_num_dims with an input of shape {shape} for {in_f} "
                              f"input features")
        out_shape = tuple(shape[:-1]) + (out_f,)
    else:
        if total % in_f:
            raise Unsupported(f"an input of shape {shape} ({total} values) for {in_f} input "
                              f"features")
        out_shape = (total // in_f, out_f)
        if tuple(shape) != (total // in_f, in_f):
            rows = n.imp.fresh(f"{source}::rows")
            n.emit("Reshape", {"shape": [total // in_f, in_f]}, [source], [rows],
                   suffix="flatten")
            source = rows
    params = {"weight": n.weight(1, weight)}
    if bias is not None:
        params["bias"] = n.weight(2, bias)
    n.emit_activated("Linear", {"in_features": in_f, "out_features": out_f,
                                "bias": bias is not None}, [source], out_shape, "plain", params)


_BINARY = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div", "MAXIMUM": "Max",
           "MINIMUM": "Min"}


@converter(*_BINARY)
def _binary(n):
    n.opt("pot_scale_int16")  # int16 quantized kernels only
    shape = _broadcast(n.shape(0), n.shape(1))
    layout = "nchw" if len(shape) == 4 and "nchw" in (n.layout(0), n.layout(1)) else "plain"
    n.emit_activated(_BINARY[n.type], {}, [n.operand(0, layout), n.operand(1, layout)], shape,
                     layout)


_UNARY = {"RELU": ("ReLU", {}), "RELU6": ("ReLU6", {}),
          "RELU_N1_TO_1": ("Clip", {"min": -1.0, "max": 1.0}),
          "RELU_0_TO_1": ("Clip", {"min": 0.0, "max": 1.0}), "LOGISTIC": ("Sigmoid", {}),
          "TANH": ("Tanh", {}), "HARD_SWISH": ("Hardswish", {}), "ELU": ("ELU", {})}


@converter(*_UNARY, "LEAKY_RELU", "GELU")
def _unary(n):
    if n.type == "LEAKY_RELU":
        op, args = "LeakyReLU", {"negative_slope": float(n.opt("alpha", 0.0))}
    elif n.type == "GELU":
        op, args = "GELU", {"approximate": "tanh" if n.opt("approximate") else "none"}
    else:
        op, args = _UNARY[n.type]
    value, layout = n.held(0)
    n.emit(op, args, [value], [n.output(n.shape(0), layout)])


@converter("PRELU")
def _prelu(n):
    shape = n.shape(0)
    if _broadcast(shape, n.shape(1)) != shape:
        raise Unsupported(f"alpha of shape {n.shape(1)} broadcasts beyond the input's {shape}")
    alpha = n.const(1)
    value, layout = n.held(0)
    channel_axis_last = len(shape) == 2 or (len(shape) == 4 and layout == "nchw")
    if alpha is not None and alpha.dtype.kind == "f" and (
            alpha.size == 1 or (channel_axis_last and alpha.size == shape[-1])):
        # one slope, or one per channel (axis 1 of the held array): fscnn's PReLU layer
        n.emit("PReLU", {"num_parameters": int(alpha.size)}, [value],
               [n.output(shape, layout)], {"weight": n.weight(1, alpha.reshape(-1))})
        return
    layout = "nchw" if len(shape) == 4 and layout == "nchw" else "plain"
    n.emit("PRelu", {}, [n.operand(0, layout), n.operand(1, layout)], [n.output(shape, layout)])


@converter("RESHAPE")
def _reshape(n):
    shape = n.shape(0)
    option = list(n.opt("new_shape") or ())
    target = n.ints(1, "the new shape") if n.inp(1) is not None else option
    total = math.prod(shape)
    if target.count(-1) > 1 or min(target, default=0) < -1:
        raise Unsupported(f"new shape {target} (one -1 at most, no other negative size)")
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or total % known:
            raise Unsupported(f"cannot reshape {shape} ({total} values) to {target}")
        target[target.index(-1)] = total // known
    elif known != total:
        raise Unsupported(f"cannot reshape {shape} ({total} values) to {target}")
    n.emit("Reshape", {"shape": target, "allowzero": True}, [n.plain(0)], [n.output(target)])


@converter("TRANSPOSE")
def _transpose(n):
    shape = n.shape(0)
    perm = [p % len(shape) if -len(shape) <= p < len(shape) else p
            for p in n.ints(1, "the permutation")]
    if sorted(perm) != list(range(len(shape))):
        raise Unsupported(f"permutation {perm} of {len(shape)} axes")
    value, layout = n.held(0)
    held_perm = [_NCHW_TO_NHWC[p] for p in perm] if layout == "nchw" else perm
    n.emit("Transpose", {"perm": held_perm}, [value], [n.output([shape[p] for p in perm])])


@converter("CONCATENATION")
def _concat(n):
    shapes = [n.shape(k) for k in range(len(n.op.inputs))]
    if any(n.inp(k) is None for k in range(len(shapes))) or not shapes:
        raise Unsupported("an absent input")
    rank = len(shapes[0])
    axis = n.opt("axis", 0)
    if rank == 0 or any(len(s) != rank for s in shapes) or not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} of inputs of shapes {shapes}")
    axis %= rank
    if len({s[:axis] + s[axis + 1:] for s in shapes}) != 1:
        raise Unsupported(f"inputs of shapes {shapes} differ outside axis {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    if rank == 4 and any(n.layout(k) == "nchw" for k in range(len(shapes))):
        inputs, axis, layout = [n.nchw(k) for k in range(len(shapes))], _NCHW_AXIS[axis], "nchw"
    else:
        inputs, layout = [n.plain(k) for k in range(len(shapes))], "plain"
    n.emit_activated("Concat", {"axis": axis}, inputs, out, layout)


@converter("PAD", "PADV2")
def _pad(n):
    shape = n.shape(0)
    pads = np.asarray(n.ints(1, "the paddings"), np.int64)
    if pads.size != 2 * len(shape):
        raise Unsupported(f"{pads.size} padding values for a {len(shape)}-D input")
    pads = pads.reshape(len(shape), 2)
    if pads.min(initial=0) < 0:
        raise Unsupported(f"negative paddings {pads.tolist()}")
    value = 0.0
    if n.type == "PADV2" and n.inp(2) is not None:
        fill = n.need_const(2, "the padding value")
        if np.size(fill) != 1:
            raise Unsupported(f"a padding value of shape {np.shape(fill)}")
        value = float(np.asarray(fill).reshape(-1)[0])
    out = [s + int(a) + int(b) for s, (a, b) in zip(shape, pads)]
    if len(shape) == 4:
        rows, source, layout = pads[list(_NHWC_TO_NCHW)], n.nchw(0), "nchw"
    else:
        rows, source, layout = pads, n.plain(0), "plain"
    n.emit("Pad", {"pads": [int(p) for p in rows[:, 0]] + [int(p) for p in rows[:, 1]],
                   "mode": "constant", "value": value}, [source], [n.output(out, layout)])
    if len(shape) == 4 and value == 0.0 and not pads[0].any() and not pads[3].any():
        n.imp.pads[n.op.outputs[0]] = (n.inp(0), tuple(int(p) for p in pads[1:3].reshape(-1)))


@converter("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")
def _resize(n):
    batch, _, _, c = _need_4d(n)
    size = n.ints(1, "the output size")
    if len(size) != 2 or min(size) < 1:
        raise Unsupported(f"output size {size}; expected two positive sizes")
    align, half = bool(n.opt("align_corners")), bool(n.opt("half_pixel_centers"))
    n.opt("new_height")  # deprecated: TFLite reads the size input
    n.opt("new_width")
    if align and half:
        raise Unsupported("align_corners and half_pixel_centers together")
    coord = "align_corners" if align else "half_pixel" if half else "asymmetric"
    if n.type == "RESIZE_BILINEAR":
        mode, nearest = "linear", "round_prefer_floor"
    else:  # TFLite rounds half up with either flag, else floors
        mode, nearest = "nearest", "round_prefer_ceil" if align or half else "floor"
    n.emit("Resize", {"sizes": size, "axes": [2, 3], "mode": mode,
                      "coordinate_transformation_mode": coord, "nearest_mode": nearest},
           [n.nchw(0)], [n.output((batch, size[0], size[1], c), "nchw")])


@converter("DEPTH_TO_SPACE")
def _depth_to_space(n):
    batch, h, w, c = _need_4d(n)
    b = n.opt("block_size")
    if not isinstance(b, int) or b < 1 or c % (b * b):
        raise Unsupported(f"block size {b} for {c} channels")
    n.emit("DepthToSpace", {"block_size": b, "mode": "DCR"}, [n.nchw(0)],
           [n.output((batch, h * b, w * b, c // (b * b)), "nchw")])


@converter("SOFTMAX")
def _softmax(n):
    shape = n.shape(0)
    value, layout = n.held(0)
    beta = float(n.opt("beta", 0.0))  # LiteRT's value without options: all zeros out
    if beta != 1.0:
        scale = n.imp.fresh(f"{value}::beta")
        n.builder.consts[scale] = np.float32(beta)
        scaled = n.imp.fresh(f"{value}::scaled")
        n.emit("Mul", {}, [value, scale], [scaled], suffix="beta")
        value = scaled
    n.emit("Softmax", {"dim": 1 if layout == "nchw" else -1}, [value],
           [n.output(shape, layout)])


_REDUCE = {"MEAN": "mean", "SUM": "sum", "REDUCE_MAX": "max", "REDUCE_MIN": "min",
           "REDUCE_PROD": "prod"}


@converter(*_REDUCE)
def _reduce(n):
    shape = n.shape(0)
    rank = len(shape)
    axes = n.ints(1, "the axes")
    if not axes or any(not -rank <= a < rank for a in axes):
        raise Unsupported(f"axes {axes} for a {rank}-D input")
    axes = sorted({a % rank for a in axes})
    keep = bool(n.opt("keep_dims"))
    out = [1 if a in axes else s for a, s in enumerate(shape)] if keep else \
        [s for a, s in enumerate(shape) if a not in axes]
    op = _REDUCE[n.type]
    value, layout = n.held(0)
    if layout != "nchw":
        n.emit("Reduce", {"op": op, "axes": axes, "keepdims": keep}, [value], [n.output(out)])
        return
    held_axes = sorted(_NCHW_AXIS[a] for a in axes)
    rest = [_NCHW_AXIS[a] for a in range(4) if a not in axes]
    if keep:
        n.emit("Reduce", {"op": op, "axes": held_axes, "keepdims": True}, [value],
               [n.output(out, "nchw")])
    elif rest == sorted(rest):  # the remaining axes keep their order: no transpose
        n.emit("Reduce", {"op": op, "axes": held_axes, "keepdims": False}, [value],
               [n.output(out)])
    else:
        kept = n.imp.fresh(f"{value}::reduced")
        n.emit("Reduce", {"op": op, "axes": held_axes, "keepdims": True}, [value], [kept])
        nhwc = n.imp.fresh(f"{value}::nhwc")
        n.emit("Transpose", {"perm": list(_NCHW_TO_NHWC)}, [kept], [nhwc], suffix="to_nhwc")
        n.emit("Reshape", {"shape": out}, [nhwc], [n.output(out)], suffix="squeeze")


@converter("DEQUANTIZE")
def _dequantize(n):
    x = n.const(0)
    if x is None:
        raise Unsupported("dequantizes a tensor computed at run time (a quantized model; "
                          "fscnn imports float models)")
    quant = n.tensor(0).quant
    if x.dtype.kind == "f":
        n.set_const(np.asarray(x, np.float32))
        return
    if x.dtype.kind not in "iu" or quant is None:
        raise Unsupported(f"a {x.dtype} constant without quantization parameters")
    scale, zero, axis = quant
    if scale.size > 1:
        if not 0 <= axis < x.ndim or x.shape[axis] != scale.size \
                or zero.size not in (1, scale.size):
            raise Unsupported(f"{scale.size} scales along axis {axis} of a constant of shape "
                              f"{x.shape}")
        view = [1] * x.ndim
        view[axis] = -1
        scale, zero = scale.reshape(view), zero.reshape(view if zero.size > 1 else ())
    else:
        scale, zero = scale.reshape(()), zero.reshape(-1)[0]
    n.set_const(((x.astype(np.float64) - zero) * scale).astype(np.float32))


@converter("DENSIFY")
def _densify(n):
    n.set_const(n.need_const(0, "the sparse tensor"))  # decoded when the file was read


# -- import -------------------------------------------------------------------------------
def _label(model, op):
    """How a problem names an operator: its index and first output tensor."""
    out = model.tensors[op.outputs[0]].name if op.outputs else ""
    return f"#{op.index} {out}".strip()


def _check_model(model, where):
    """Raise ModelImportError for a quantized model or unsupported operators (all of them)."""
    runtime = {i for op in model.operators for i in op.inputs + op.outputs if i >= 0}
    runtime.update(model.inputs)
    quantized = [model.tensors[i] for i in sorted(runtime)
                 if model.tensors[i].data is None and model.tensors[i].dtype in _QUANTIZED]
    if quantized:
        types = sorted({t.dtype for t in quantized})
        raise ModelImportError(f"{where}: a quantized model ({len(quantized)} tensors computed "
                               f"in {'/'.join(types)}, e.g. {quantized[0].name!r}); fscnn "
                               f"imports float models (float16 and int8 weights dequantized at "
                               f"import are fine), quantized inference is not supported yet")
    problems = [(_label(model, op), op.type, "operator not supported by fscnn")
                for op in model.operators if op.type not in _CONVERTERS]
    if problems:
        raise ModelImportError(f"{where}: cannot import the model: {len(problems)} unsupported "
                               f"operator(s)", problems)


def _check_dataflow(imp, model):
    """Problems of tensors read before they are written, or written twice."""
    problems = []
    written = set(imp.held)
    for op in model.operators:
        for i in op.inputs:
            if i >= 0 and i not in written and model.tensors[i].shape is not None and \
                    0 in model.tensors[i].shape:
                dtype = model.tensors[i].dtype
                imp.constant(i, np.zeros(model.tensors[i].shape,  # empty, so no data
                                         dtype if dtype in _NUMERIC else np.float32))
                written.add(i)
        unread = [model.tensors[i].name for i in op.inputs if i >= 0 and i not in written]
        twice = [model.tensors[i].name for i in op.outputs if i in written]
        if unread:
            problems.append((_label(model, op), op.type, f"reads {unread}, which no earlier "
                             f"operator writes"))
        if twice:
            problems.append((_label(model, op), op.type, f"writes {twice}, already written"))
        written.update(op.outputs)
    absent = [model.tensors[i].name for i in model.outputs if i not in written]
    if absent:
        problems.append(("outputs", "subgraph", f"{absent} are never written"))
    return problems


def from_tflite(source):
    """Import a TFLite model as an fscnn graph module.

    Parameters
    ----------
    source : str, path-like or bytes
        A ``.tflite`` file (a TFLite flatbuffer) or its contents. The first subgraph is
        imported.

    Returns
    -------
    fscnn.nn.Graph
        Takes the model's inputs as LiteRT does (NHWC images, float32, of the declared
        shapes) and returns its outputs in LiteRT's shapes and layouts: one array for one
        output, a tuple for several. Inside, 4-D tensors are held as NCHW and weights are
        converted once: float16 weights (``DEQUANTIZE``) and int8 weights with their scales
        become float32, sparse tensors (``DENSIFY``) dense float32 arrays, which
        :meth:`~fscnn.nn.Module.to_sparse` holds compressed again and ``prepare`` runs with
        the sparse kernel where that is faster. A zero ``PAD`` read only by a convolution
        becomes the convolution's padding. The ``state_dict`` keys are the tensor names of
        the weights in the file (of the float32 tensors, after ``DEQUANTIZE``).

    Raises
    ------
    ModelImportError
        The file is missing, truncated or not TFLite; the model is quantized (int8 or uint8
        activations); operators, options or shapes are unsupported or inconsistent (all of
        them listed, each with its operator index, output tensor and type, in one error).
    ImportError
        The ``tflite`` package is not installed (``pip install "fscnn[tflite]"``).

    Examples
    --------
    >>> model = fscnn.from_tflite("face_detection_full_range_sparse.tflite")
    >>> model.prepare((1, 192, 192, 3))
    >>> boxes, scores = model(image)   # image: (1, 192, 192, 3) float32, NHWC
    """
    model = load_model(source)
    where = "bytes" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    _check_model(model, where)
    imp = _Importer(model)
    for t in model.tensors:
        if t.data is not None:
            imp.constant(t.index, t.data)
    problems, graph_inputs = [], []
    for idx in model.inputs:
        t = model.tensors[idx]
        if t.data is not None:
            continue
        if t.dtype != "float32":
            problems.append((t.name, "input", f"a {t.dtype} input (fscnn imports float32 "
                             f"inputs)"))
        elif t.shape is None or min(t.shape, default=1) < 1:
            problems.append((t.name, "input", f"no static shape ({t.shape})"))
        else:
            graph_inputs.append((imp.define(idx, t.shape, "plain"), t.shape, "float32"))
    problems += _check_dataflow(imp, model)
    if problems:
        raise ModelImportError(f"{where}: cannot import the model: {len(problems)} problem(s)",
                               problems)
    for op in model.operators:
        if any(i >= 0 and i not in imp.held for i in op.inputs):
            continue  # an input's operator failed: reported there
        ctx = _OpContext(imp, op)
        try:
            _CONVERTERS[op.type](ctx)
            unread = ctx.unread_options()
            if unread:
                raise Unsupported(f"options {', '.join(f'{f}={op.options[f]}' for f in unread)}"
                                  f" are not supported")
            for i in op.outputs:
                declared, computed = model.tensors[i].shape, imp.shapes.get(i)
                if computed is None:
                    raise Unsupported(f"output {model.tensors[i].name!r} is not computed")
                if declared and declared != computed:
                    raise Unsupported(f"the file declares shape {declared} for "
                                      f"{model.tensors[i].name!r}, its inputs give {computed}")
        except Unsupported as exc:
            problems.append((_label(model, op), op.type, str(exc)))
        except (ValueError, TypeError) as exc:
            problems.append((_label(model, op), op.type, f"{type(exc).__name__}: {exc}"))
    if problems:
        raise ModelImportError(f"{where}: cannot import the model: {len(problems)} problem(s)",
                               problems)
    try:
        outputs = [imp.view(i, "plain") for i in model.outputs]
        return imp.builder.build(graph_inputs, outputs)
    except (Unsupported, ValueError, TypeError) as exc:
        raise ModelImportError(f"{where}: cannot build the model: {exc}") from None
