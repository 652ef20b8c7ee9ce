"""What the ONNX and TFLite importers share: building a :class:`~fscnn.nn.Graph` node by node,
folding what is known at import, fusing activation patterns, and reporting every problem of
a model in one error.
"""
import re
from collections import Counter

import numpy as np

from ..nn import init
from ..nn.graph import LAYERS, Graph, Node


class ModelImportError(ValueError):
    """A model file cannot be imported: unreadable, unsupported or inconsistent.

    Attributes
    ----------
    problems : list of (str, str, str)
        ``(node name, operator type, what is wrong)`` for every node at fault, all found in
        one pass over the model (empty for a problem with the whole file).
    """

    def __init__(self, message, problems=()):
        self.problems = list(problems)
        if self.problems:
            lines = [f"  {name or '(unnamed)'} ({op}): {why}" for name, op, why in self.problems]
            message = f"{message}\n" + "\n".join(lines)
        super().__init__(message)


class Unsupported(Exception):
    """Raised by a converter: this node cannot be imported (the reason is the message)."""


# Layers whose output is known at import when every input is (shape arithmetic, casts, ...).
# Layers with weights never fold (they are the model's state).
_FOLDABLE = {name for name, cls in LAYERS.items() if not getattr(cls, "_sparse_weights", None)}
_FOLD_LIMIT = 1 << 24  # elements: a folded constant larger than this stays a node


def _same_array(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


class GraphBuilder:
    """Collects :class:`~fscnn.nn.graph.Node` specs and the tensors they name.

    Values are named by the source model's tensor names. A value is either *known* (a
    constant, in :attr:`consts`) or produced at run time by a node. Nodes whose inputs are all
    known are evaluated at import instead of emitted (shape subgraphs fold this way); a known
    value read by an emitted node becomes a ``Constant`` node, float ones with their tensor
    in the state_dict under the value's name.
    """

    def __init__(self):
        self.nodes = []
        self.tensors = {}
        self.consts = {}
        self.shapes = {}  # value name -> static shape (ints, None for unknown sizes)
        self.dtypes = {}  # value name -> numpy dtype, where the model says
        self._names = set()
        self.state_keys = {}  # known value -> state_dict key its Constant node uses
        self._materialized = {}
        self._alias = {}

    def alias(self, value, source):
        """Make ``value`` another name of ``source`` (an Identity costs nothing)."""
        self._alias[value] = self.resolve(source)

    def resolve(self, value):
        """The value a name stands for after aliasing."""
        return self._alias.get(value, value)

    # -- names ----------------------------------------------------------------------------
    def node_name(self, raw, fallback):
        """A unique child-module name from a model's node name (no dots, no leading '/')."""
        base = re.sub(r"[.\s]", "_", (raw or "").strip("/")) or fallback
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    # -- tensors --------------------------------------------------------------------------
    def weight(self, value, array=None):
        """Register the known value ``value`` (or ``array`` under that name) as a float32
        state tensor; returns its key: ``value``, or ``value:2``, ... when that name already
        holds a different array (a tensor that an importer also stores transformed)."""
        arr = np.asarray(self.consts[value] if array is None else array, dtype=np.float32,
                         order="C")
        key, k = value, 1
        while key in self.tensors and not _same_array(self.tensors[key], arr):
            k += 1
            key = f"{value}:{k}"
        self.tensors.setdefault(key, arr)
        return key

    def _materialize(self, value):
        """The name of a run-time value for the known value ``value`` (a Constant node)."""
        if value not in self._materialized:
            arr = np.asarray(self.consts[value])
            name = self.node_name(value, "constant")
            if arr.dtype.kind == "f":
                key = self.weight(self.state_keys.get(value, value), arr)
                self.nodes.append(Node(name, "Constant", {"shape": list(arr.shape)}, (),
                                       (value,), {"value": key}))
            else:
                self.nodes.append(Node(name, "Constant", {"value": arr.tolist(),
                                                          "dtype": str(arr.dtype)},
                                       (), (value,), {}))
            self._materialized[value] = value
        return value

    # -- nodes ----------------------------------------------------------------------------
    def add(self, name, op, args, inputs, outputs, params=None):
        """Emit a node, or evaluate it now when its inputs are all known (see class doc)."""
        inputs, outputs, params = tuple(inputs), tuple(outputs), dict(params or {})
        present = [v for v in inputs if v is not None]
        if (op in _FOLDABLE and not params and all(v in self.consts for v in present)
                and sum(np.size(self.consts[v]) for v in present) <= _FOLD_LIMIT):
            with init.uninitialized():
                layer = LAYERS[op](**args)
            with np.errstate(all="ignore"):
                result = layer.forward(*[None if v is None else self.consts[v] for v in inputs])
            results = result if isinstance(result, tuple) else (result,)
            if len(results) == len(outputs) and all(np.size(r) <= _FOLD_LIMIT for r in results):
                for value, r in zip(outputs, results):
                    self.consts[value] = np.asarray(r)
                return
        inputs = tuple(None if v is None else self._materialize(v) if v in self.consts else v
                       for v in inputs)
        self.nodes.append(Node(name, op, args, inputs, outputs, params))

    # -- finishing ------------------------------------------------------------------------
    def build(self, inputs, outputs):
        """The :class:`Graph`, after fusing activation patterns and dropping unread nodes."""
        outputs = [self.resolve(v) for v in outputs]
        for value in outputs:
            if value in self.consts:
                self._materialize(value)
        self._fuse(outputs)
        self._prune_dead(outputs)
        used = {k for n in self.nodes for k in n.params.values()}
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        return Graph(inputs, outputs, self.nodes, tensors, copy=False)

    def _prune_dead(self, outputs):
        needed = set(outputs)
        kept = []
        for node in reversed(self.nodes):
            if any(v in needed for v in node.outputs):
                kept.append(node)
                needed.update(v for v in node.inputs if v is not None)
        self.nodes = kept[::-1]

    def _fuse(self, outputs):
        """Activation patterns as one layer: Add+ReLU(6) (a residual's ReLU in the same
        pass), ``x * sigmoid(x)`` as SiLU, and hard-swish written out as ``x *
        HardSigmoid(x)`` or ``x * relu6(x + 3) / 6``."""
        changed = True
        while changed:
            changed = False
            readers = Counter(v for n in self.nodes for v in n.inputs if v is not None)
            readers.update(outputs)
            writer = {v: i for i, n in enumerate(self.nodes) for v in n.outputs}
            for i, node in enumerate(self.nodes):
                fused = _fuse_at(self, i, node, readers, writer)
                if fused:
                    changed = True
                    break

    def const_scalar(self, value):
        """The known scalar value ``value`` holds, or None."""
        arr = self.consts.get(value)
        if arr is None or np.size(arr) != 1:
            return None
        return float(np.asarray(arr).reshape(-1)[0])


def _only_reader(builder, readers, value, op=None):
    """The node that alone reads ``value`` (of type ``op``), or None."""
    if readers[value] != 1:
        return None
    for k, n in enumerate(builder.nodes):
        if value in n.inputs:
            return (k, n) if op is None or n.op == op else None
    return None


def _fuse_at(builder, i, node, readers, writer):
    nodes = builder.nodes
    if node.op == "Add" and node.args.get("activation") is None:
        nxt = _only_reader(builder, readers, node.outputs[0])
        if nxt and nxt[1].op in ("ReLU", "ReLU6") and nxt[1].inputs == node.outputs:
            act = "relu" if nxt[1].op == "ReLU" else "relu6"
            nodes[i] = node._replace(args={"activation": act}, outputs=nxt[1].outputs)
            del nodes[nxt[0]]
            return True
    if node.op == "Mul" and len(node.inputs) == 2:
        a, b = node.inputs
        for x, gate in ((a, b), (b, a)):
            k = writer.get(gate)
            if k is None or readers[gate] != 1:
                continue
            g = nodes[k]
            if g.op == "Sigmoid" and g.inputs == (x,):
                nodes[i] = Node(node.name, "SiLU", {}, (x,), node.outputs, {})
                del nodes[k]
                return True
            if g.op == "Hardsigmoid" and g.inputs == (x,) and \
                    abs(g.args.get("alpha", 1 / 6) - 1 / 6) < 1e-6 and \
                    abs(g.args.get("beta", 0.5) - 0.5) < 1e-6:
                nodes[i] = Node(node.name, "Hardswish", {}, (x,), node.outputs, {})
                del nodes[k]
                return True
            if _hard_swish_at(builder, i, node, x, k, g, readers, writer):
                return True
    return False


def padding_arg(pads):
    """A Conv2d ``padding`` argument for pads (top, bottom, left, right): a pair when
    symmetric, else the four values."""
    top, bottom, left, right = pads
    return [top, left] if top == bottom and left == right else list(pads)


def pool_padding_arg(pads, kernel):
    """As :func:`padding_arg` for a pool, whose pair form pads at most half the kernel."""
    top, bottom, left, right = pads
    if top == bottom <= kernel[0] // 2 and left == right <= kernel[1] // 2:
        return [top, left]
    return list(pads)


def check_source_names(names, what):
    """Raise ModelImportError for duplicate names (a graph's inputs, outputs, values)."""
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise ModelImportError(f"the model's {what} are not unique: {dup[:10]}")


def _hard_swish_at(builder, i, mul, x, k, gate, readers, writer):
    """Fuse ``x * relu6(x + 3) / 6`` (or ``* (1/6)``) ending at the Mul ``mul`` (position
    ``i``) whose other operand ``gate`` (position ``k``) is the relu6: an Add then a ReLU6,
    or an Add whose ReLU6 is already fused."""
    nodes = builder.nodes
    if gate.op == "ReLU6":
        k2 = writer.get(gate.inputs[0])
        if k2 is None or readers[gate.inputs[0]] != 1:
            return False
        add = nodes[k2]
        if add.op != "Add" or add.args.get("activation"):
            return False
    elif gate.op == "Add" and gate.args.get("activation") == "relu6":
        k2, add = k, gate
    else:
        return False
    if x not in add.inputs:
        return False
    other = add.inputs[1] if add.inputs[0] == x else add.inputs[0]
    if builder.const_scalar(other) != 3.0:
        return False
    div = _only_reader(builder, readers, mul.outputs[0])
    if not div:
        return False
    d = div[1]
    scale = [v for v in d.inputs if v != mul.outputs[0]]
    s = builder.const_scalar(scale[0]) if len(scale) == 1 else None
    if not ((d.op == "Div" and d.inputs[0] == mul.outputs[0] and s == 6.0)
            or (d.op == "Mul" and s is not None and abs(s - 1 / 6) < 1e-7)):
        return False
    nodes[i] = Node(mul.name, "Hardswish", {}, (x,), d.outputs, {})
    for j in sorted({k, k2, div[0]}, reverse=True):
        del nodes[j]
    return True
