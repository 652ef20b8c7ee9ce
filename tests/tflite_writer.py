"""A test-only TFLite model writer, so tests can build small models operator by operator and
run them on LiteRT as the reference.

It writes the flatbuffer with the builder functions that the ``tflite`` package generates
from TFLite's ``schema.fbs`` (``Conv2DOptionsStart``, ``TensorAddShape``, ...): one subgraph,
buffer 0 empty, one buffer per constant. :func:`sparsify` encodes a dense array in TFLite's
sparsity format, the inverse of ``fscnn.importers.tflite.densify``.
"""
import flatbuffers
import numpy as np
import tflite

TYPES = {"float32": 0, "float16": 1, "int32": 2, "uint8": 3, "int64": 4, "bool": 6,
         "int16": 7, "int8": 9}
CODES = {name: code for code, name in tflite.utils.BUILTIN_OPCODE2NAME.items()}
INDEX_VECTORS = {np.int32: ("Int32Vector", 1), np.uint16: ("Uint16Vector", 2),
                 np.uint8: ("Uint8Vector", 3)}


def _camel(field):
    return "".join(part.capitalize() for part in field.split("_"))


def _fn(table, what):
    return getattr(tflite, f"{table}{what}")


def _numbers(b, values, dtype):
    """A vector of ``values`` as ``dtype``."""
    arr = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
    return b.CreateNumpyVector(arr)


def _bytes(b, data):
    """A ubyte vector of ``data``, its start 16-byte aligned (as TFLite's converter writes)."""
    b.StartVector(1, len(data), 16)
    b.head = b.head - len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _offsets(b, table, field, offsets):
    getattr(tflite, f"{table}Start{_camel(field)}Vector")(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def sparsify(dense, traversal_order, block_map, block_size, formats, index_dtype=np.int32):
    """``dense`` in TFLite's sparsity format: (values, sparsity parameters for
    :meth:`ModelWriter.tensor`).

    Levels follow ``traversal_order`` over the n dimensions (blocked ones counted in blocks)
    and then the block dimensions; ``formats`` gives each level 'dense' or 'sparse'. A sparse
    level keeps the entries whose subtree holds a non-zero.
    """
    dense = np.asarray(dense)
    n = dense.ndim
    split_shape, axes = [], []
    for d in range(n):
        if d in block_map:
            bs = block_size[block_map.index(d)]
            split_shape += [dense.shape[d] // bs, bs]
            axes.append(("outer", d))
            axes.append(("inner", d))
        else:
            split_shape.append(dense.shape[d])
            axes.append(("outer", d))
    expanded = dense.reshape(split_shape)
    position = {}
    for i, (kind, d) in enumerate(axes):
        position[d if kind == "outer" else n + block_map.index(d)] = i
    tree = expanded.transpose([position[e] for e in traversal_order])
    values, segments, indices = [], [[0] for _ in formats], [[] for _ in formats]

    def visit(level, sub):
        if level == len(formats):
            values.append(sub)
            return
        kept = [i for i in range(sub.shape[0])
                if formats[level] == "dense" or np.any(sub[i] != 0)]
        for i in kept:
            if formats[level] == "sparse":
                indices[level].append(i)
            visit(level + 1, sub[i])
        if formats[level] == "sparse":
            segments[level].append(len(indices[level]))

    visit(0, tree)
    metadata = []
    for level, fmt in enumerate(formats):
        size = tree.shape[level]
        if fmt == "dense":
            metadata.append(("dense", size, None, None))
        else:
            metadata.append(("sparse", 0, np.array(segments[level], index_dtype),
                             np.array(indices[level], index_dtype)))
    return (np.array(values, dense.dtype),
            {"traversal_order": list(traversal_order), "block_map": list(block_map),
             "dim_metadata": metadata})


class ModelWriter:
    """Collects tensors and operators of one subgraph; :meth:`build` returns the file."""

    def __init__(self):
        self.tensors, self.ops, self.inputs, self.outputs = [], [], [], []

    def tensor(self, name, shape, dtype="float32", data=None, sparsity=None, quant=None):
        """Add a tensor (a constant when ``data`` is given: its stored values); returns its
        index."""
        self.tensors.append(dict(name=name, shape=list(shape), dtype=dtype, data=data,
                                 sparsity=sparsity, quant=quant))
        return len(self.tensors) - 1

    def input(self, name, shape, dtype="float32"):
        idx = self.tensor(name, shape, dtype)
        self.inputs.append(idx)
        return idx

    def const(self, name, array, dtype=None):
        array = np.asarray(array, dtype=dtype)
        return self.tensor(name, array.shape, str(array.dtype), data=array)

    def op(self, op_type, inputs, outputs, options=None, **fields):
        """Add an operator: ``options`` names its options table (e.g. 'Conv2DOptions'),
        ``fields`` its values by schema name (lists for vectors)."""
        self.ops.append(dict(type=op_type, inputs=list(inputs), outputs=list(outputs),
                             options=options, fields=fields))

    def build(self, output_indices=None):
        """The flatbuffer (bytes) with ``output_indices`` (default: every tensor that no
        operator reads and that is not an input or constant) as the subgraph's outputs."""
        if output_indices is None:
            read = {i for op in self.ops for i in op["inputs"]}
            output_indices = [i for op in self.ops for i in op["outputs"] if i not in read]
        b = flatbuffers.Builder(1024)
        buffers = [self._buffer(b, None)]
        tensor_offsets = []
        for t in self.tensors:
            buffer_index = 0
            if t["data"] is not None:
                buffers.append(self._buffer(b, np.ascontiguousarray(t["data"]).tobytes()))
                buffer_index = len(buffers) - 1
            else:
                buffers.append(self._buffer(b, None))  # as TFLite's converter: one per tensor
                buffer_index = len(buffers) - 1
            tensor_offsets.append(self._tensor(b, t, buffer_index))
        codes = sorted({op["type"] for op in self.ops})
        code_offsets = []
        for name in codes:
            custom = b.CreateString(name[len("CUSTOM:"):]) if name.startswith("CUSTOM:") else None
            code = CODES["CUSTOM"] if custom is not None else CODES[name]
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddVersion(b, 1)
            if custom is not None:
                tflite.OperatorCodeAddCustomCode(b, custom)
            code_offsets.append(tflite.OperatorCodeEnd(b))
        op_offsets = [self._operator(b, op, codes.index(op["type"])) for op in self.ops]
        tensors = _offsets(b, "SubGraph", "tensors", tensor_offsets)
        operators = _offsets(b, "SubGraph", "operators", op_offsets)
        inputs = _numbers(b, self.inputs, np.int32)
        outputs = _numbers(b, output_indices, np.int32)
        name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors)
        tflite.SubGraphAddInputs(b, inputs)
        tflite.SubGraphAddOutputs(b, outputs)
        tflite.SubGraphAddOperators(b, operators)
        tflite.SubGraphAddName(b, name)
        subgraph = tflite.SubGraphEnd(b)
        subgraphs = _offsets(b, "Model", "subgraphs", [subgraph])
        opcodes = _offsets(b, "Model", "operator_codes", code_offsets)
        buffer_vec = _offsets(b, "Model", "buffers", buffers)
        description = b.CreateString("fscnn test model")
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, opcodes)
        tflite.ModelAddSubgraphs(b, subgraphs)
        tflite.ModelAddDescription(b, description)
        tflite.ModelAddBuffers(b, buffer_vec)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _buffer(b, data):
        vec = _bytes(b, data) if data else None
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        return tflite.BufferEnd(b)

    def _tensor(self, b, t, buffer_index):
        name = b.CreateString(t["name"])
        shape = _numbers(b, t["shape"], np.int32)
        sparsity = self._sparsity(b, t["sparsity"]) if t["sparsity"] else None
        quant = None
        if t["quant"] is not None:
            scale, zero, axis = t["quant"]
            scales = _numbers(b, scale, np.float32)
            zeros = _numbers(b, zero, np.int64)
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scales)
            tflite.QuantizationParametersAddZeroPoint(b, zeros)
            tflite.QuantizationParametersAddQuantizedDimension(b, axis)
            quant = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, TYPES[t["dtype"]])
        tflite.TensorAddBuffer(b, buffer_index)
        tflite.TensorAddName(b, name)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        if sparsity is not None:
            tflite.TensorAddSparsity(b, sparsity)
        return tflite.TensorEnd(b)

    @staticmethod
    def _index_vector(b, values):
        name, kind = INDEX_VECTORS[values.dtype.type]
        vec = _numbers(b, values, values.dtype)
        _fn(name, "Start")(b)
        _fn(name, "AddValues")(b, vec)
        return _fn(name, "End")(b), kind

    def _sparsity(self, b, sp):
        dims = []
        for fmt, size, segments, indices in sp["dim_metadata"]:
            if fmt == "sparse":
                seg, seg_kind = self._index_vector(b, segments)
                idx, idx_kind = self._index_vector(b, indices)
            tflite.DimensionMetadataStart(b)
            tflite.DimensionMetadataAddFormat(b, 0 if fmt == "dense" else 1)
            tflite.DimensionMetadataAddDenseSize(b, size)
            if fmt == "sparse":
                tflite.DimensionMetadataAddArraySegmentsType(b, seg_kind)
                tflite.DimensionMetadataAddArraySegments(b, seg)
                tflite.DimensionMetadataAddArrayIndicesType(b, idx_kind)
                tflite.DimensionMetadataAddArrayIndices(b, idx)
            dims.append(tflite.DimensionMetadataEnd(b))
        order = _numbers(b, sp["traversal_order"], np.int32)
        block_map = _numbers(b, sp["block_map"], np.int32) if sp["block_map"] else None
        dim_vec = _offsets(b, "SparsityParameters", "dim_metadata", dims)
        tflite.SparsityParametersStart(b)
        tflite.SparsityParametersAddTraversalOrder(b, order)
        if block_map is not None:
            tflite.SparsityParametersAddBlockMap(b, block_map)
        tflite.SparsityParametersAddDimMetadata(b, dim_vec)
        return tflite.SparsityParametersEnd(b)

    def _operator(self, b, op, opcode_index):
        options = None
        if op["options"]:
            table = op["options"]
            vectors = {f: _numbers(b, v, np.int32) for f, v in op["fields"].items()
                       if isinstance(v, (list, tuple))}
            _fn(table, "Start")(b)
            for field, value in op["fields"].items():
                _fn(table, f"Add{_camel(field)}")(b, vectors.get(field, value))
            options = _fn(table, "End")(b)
        inputs = _numbers(b, op["inputs"], np.int32)
        outputs = _numbers(b, op["outputs"], np.int32)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, opcode_index)
        tflite.OperatorAddInputs(b, inputs)
        tflite.OperatorAddOutputs(b, outputs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions,
                                                            op["options"]))
            tflite.OperatorAddBuiltinOptions(b, options)
        return tflite.OperatorEnd(b)
