"""``Graph``: a model given as a dataflow graph of layers, the form imported models take.

A graph has named inputs, named outputs and a list of nodes in topological order; each node
is a layer of :mod:`fscnn.nn` (a child module named after the node) that reads named values
and writes named values. It is an ordinary :class:`~fscnn.nn.Module`: ``prepare`` folds batch
norms into convolutions and fuses ReLU/ReLU6 and 2x2 max pools into their kernels (along
edges that nothing else reads), ``plan``, ``profile``, ``to_sparse``, ``fscnn.prune.prune``
and pickling work as on the zoo's models.

Its ``state_dict`` keys are the names the weights had in the imported file (an ONNX graph's
initializer names), mapped to the layers' parameters; a key shared by several nodes loads
into all of them.

A graph is described by plain data (:meth:`Graph.spec`: layer type names, constructor
arguments, value names), so it can be saved without pickles and rebuilt by
:meth:`Graph.from_spec` from the classes listed in :data:`LAYERS` only.
"""
import json
from collections import Counter, OrderedDict, namedtuple

import numpy as np

from .. import ops
from .._validate import as_float_array
from . import _plan, activation, init, layers, pooling, quantized, tensor
from .errors import LayerInputError
from .module import Module

Node = namedtuple("Node", ["name", "op", "args", "inputs", "outputs", "params"])
Node.__doc__ = """One node of a :class:`Graph`.

Fields: ``name`` (the child module's name, no dots), ``op`` (a class name of :data:`LAYERS`),
``args`` (its constructor's keyword arguments: plain numbers, strings, lists, None),
``inputs`` (value names read, in the order ``forward`` takes them; None passes None for an
absent optional input), ``outputs`` (value names written), ``params`` (dict: module attribute
-> state_dict key, for the weights and buffers the node's layer reads from the graph's
tensors).
"""

GraphInput = namedtuple("GraphInput", ["name", "shape", "dtype"])
GraphInput.__doc__ = """A graph input: its ``name``, ``shape`` (ints, None for a size chosen
per call) and ``dtype`` ('float32', or an integer type name for index inputs)."""


def _layer_classes():
    found = {}
    for module in (layers, activation, pooling, tensor, quantized):
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, Module) and not name.startswith("_") \
                    and obj.__module__ == module.__name__:
                found[name] = obj
    return found


LAYERS = _layer_classes()
"""Layer classes a graph node may use, by name (what :meth:`Graph.from_spec` accepts)."""


def _plain(value):
    """``value`` with tuples and NumPy scalars/arrays turned into JSON types."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return {"float": repr(value)}
    return value


def _unplain(value):
    if isinstance(value, dict) and set(value) == {"float"}:
        return float(value["float"])
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


class GraphError(ValueError):
    """A graph description is inconsistent (unknown layer, value read before it is
    written, duplicate names, missing tensors)."""


class Graph(Module):
    """A model given as a dataflow graph of layers (see the module docstring).

    Parameters
    ----------
    inputs : sequence of GraphInput or (name, shape[, dtype])
    outputs : sequence of str
        Value names the call returns (one array for one output, a tuple for several).
    nodes : sequence of Node
        In an order where every value is written before it is read.
    tensors : mapping of str -> array, CSRMatrix or SparseConvWeight
        The arrays the nodes' ``params`` name (the graph's state_dict).
    copy : bool
        Copy the arrays (as assigning a parameter does). ``False`` is for builders that hand
        over fresh float32 arrays nobody else holds (importers: a copy of a VGG's weights
        costs a second): they are made read-only and kept.

    Examples
    --------
    >>> g = Graph([("x", (None, 4))], ["y"], [
    ...     Node("fc", "Linear", {"in_features": 4, "out_features": 2}, ["x"], ["h"],
    ...          {"weight": "fc.w", "bias": "fc.b"}),
    ...     Node("act", "ReLU", {}, ["h"], ["y"], {})],
    ...     {"fc.w": np.ones((2, 4)), "fc.b": np.zeros(2)})
    >>> g(np.ones((3, 4))).shape
    (3, 2)
    """

    def __init__(self, inputs, outputs, nodes, tensors=None, copy=True):
        super().__init__()
        tensors = {} if tensors is None else tensors
        self.__dict__["inputs"] = tuple(self._graph_input(i) for i in inputs)
        self.__dict__["output_names"] = tuple(str(o) for o in outputs)
        self.__dict__["nodes"] = tuple(Node(n.name, n.op, dict(n.args), tuple(n.inputs),
                                            tuple(n.outputs), dict(n.params)) for n in nodes)
        self.__dict__["_keys"] = OrderedDict()  # state_dict key -> [(node name, attribute)]
        self._check_dataflow()
        missing = sorted({k for n in self.nodes for k in n.params.values()} - set(tensors))
        if missing:
            raise GraphError(f"Graph: no tensor for the keys {missing[:10]}"
                             + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
        for node in self.nodes:
            self._modules[node.name] = self._build(node, tensors, copy)
            for attr, key in node.params.items():
                self._keys.setdefault(key, []).append((node.name, attr))
        self.__dict__["_schedule"] = None
        self._touch()

    # -- construction -------------------------------------------------------------------
    @staticmethod
    def _graph_input(item):
        if isinstance(item, GraphInput):
            name, shape, dtype = item
        else:
            name, shape, dtype = (tuple(item) + ("float32",))[:3]
        shape = None if shape is None else tuple(None if d is None else int(d) for d in shape)
        return GraphInput(str(name), shape, str(np.dtype(dtype)))

    def _check_dataflow(self):
        written = {i.name for i in self.inputs}
        if len(written) != len(self.inputs):
            raise GraphError(f"Graph: duplicate input names in {[i.name for i in self.inputs]}")
        names = Counter(n.name for n in self.nodes)
        dup = [n for n, c in names.items() if c > 1]
        if dup:
            raise GraphError(f"Graph: duplicate node names {dup[:10]}")
        for node in self.nodes:
            if not isinstance(node.name, str) or not node.name or "." in node.name:
                raise GraphError(f"Graph: node name must be a non-empty string without '.', got "
                                 f"{node.name!r}")
            if node.op not in LAYERS:
                raise GraphError(f"Graph: node {node.name!r} uses unknown layer {node.op!r}")
            unknown = [v for v in node.inputs if v is not None and v not in written]
            if unknown:
                raise GraphError(f"Graph: node {node.name!r} reads {unknown} before any node "
                                 f"writes them")
            twice = [v for v in node.outputs if v in written]
            if twice:
                raise GraphError(f"Graph: node {node.name!r} writes {twice}, already written")
            written.update(node.outputs)
        absent = [o for o in self.output_names if o not in written]
        if absent:
            raise GraphError(f"Graph: outputs {absent} are never written")

    @staticmethod
    def _build(node, tensors, copy=True):
        cls = LAYERS[node.op]
        try:
            with init.uninitialized():
                module = cls(**{k: _unplain(v) for k, v in node.args.items()})
        except (TypeError, ValueError) as exc:
            raise GraphError(f"Graph: node {node.name!r} ({node.op}): {exc}") from None
        for attr, key in node.params.items():
            registry = ("_parameters" if attr in module._parameters else
                        "_buffers" if attr in module._buffers else None)
            if registry is None:
                raise GraphError(f"Graph: node {node.name!r} ({node.op}) has no parameter or "
                                 f"buffer {attr!r}")
            value = tensors[key]
            try:
                current = getattr(module, attr)
                if not copy and isinstance(value, np.ndarray) and value.dtype == np.float32 \
                        and value.flags.c_contiguous and current is not None \
                        and value.shape == current.shape:
                    module._init_array(attr, value, registry)
                else:
                    setattr(module, attr, value)
            except (TypeError, ValueError) as exc:
                raise GraphError(f"Graph: tensor {key!r} does not fit node {node.name!r} "
                                 f"({node.op}.{attr}): {exc}") from None
        optional = module._optional_state_keys()  # e.g. BatchNorm2d's num_batches_tracked
        missing = [a for reg in ("_parameters", "_buffers")
                   for a, v in module.__dict__[reg].items()
                   if v is not None and a not in node.params and a not in optional]
        if missing:
            raise GraphError(f"Graph: node {node.name!r} ({node.op}) has no tensor for "
                             f"{missing}; give them in params or disable them in args")
        return module

    # -- plain-data description -----------------------------------------------------------
    def spec(self):
        """The graph as JSON-compatible data (no tensors): what :meth:`from_spec` rebuilds."""
        return {"format": 1,
                "inputs": [[i.name, None if i.shape is None else list(i.shape), i.dtype]
                           for i in self.inputs],
                "outputs": list(self.output_names),
                "nodes": [{"name": n.name, "op": n.op, "args": _plain(n.args),
                           "inputs": list(n.inputs), "outputs": list(n.outputs),
                           "params": dict(n.params)} for n in self.nodes]}

    @classmethod
    def from_spec(cls, spec, tensors):
        """Rebuild a graph from :meth:`spec`'s data (a dict or its JSON text) and tensors."""
        if isinstance(spec, (str, bytes)):
            try:
                spec = json.loads(spec)
            except ValueError as exc:
                raise GraphError(f"Graph.from_spec: invalid JSON ({exc})") from None
        try:
            if spec.get("format") != 1:
                raise GraphError(f"Graph.from_spec: unsupported format {spec.get('format')!r}")
            inputs = [GraphInput(*i) for i in spec["inputs"]]
            nodes = [Node(d["name"], d["op"], d.get("args", {}), d["inputs"], d["outputs"],
                          d.get("params", {})) for d in spec["nodes"]]
            outputs = spec["outputs"]
        except (AttributeError, KeyError, TypeError) as exc:
            raise GraphError(f"Graph.from_spec: malformed description ({exc!r})") from None
        return cls(inputs, outputs, nodes, tensors)

    # -- state dict: keys are the tensors' names --------------------------------------------
    def _state_slots(self, prefix=""):
        slots = OrderedDict()
        for key, targets in self._keys.items():
            node_name, attr = targets[0]
            module = self._modules[node_name]
            value = module._parameters.get(attr, module._buffers.get(attr))
            if value is not None:
                slots[prefix + key] = (module, attr, value)
        return slots

    def _optional_state_keys(self, prefix=""):
        return set()

    def load_state_dict(self, state_dict, strict=True):
        """As :meth:`Module.load_state_dict`, with the graph's tensor names as keys; a key
        that several nodes share is loaded into each of them."""
        result = super().load_state_dict(state_dict, strict)
        stored = getattr(state_dict, "stored", None)
        for key, targets in self._keys.items():
            if len(targets) > 1 and key in state_dict:
                first, attr = targets[0]
                value = getattr(self._modules[first], attr)
                for node_name, other in targets[1:]:
                    setattr(self._modules[node_name], other,
                            stored(key) if stored is not None else value)
        return result

    def tensors(self):
        """The graph's tensors as held (sparse weights stay sparse), by key."""
        return OrderedDict((key, slot[2]) for key, slot in self._state_slots().items())

    # -- running --------------------------------------------------------------------------
    def _compiled(self):
        """Nodes as (module, input slots, output slots, slots to free), values numbered."""
        if self._schedule is None:
            slot = {i.name: k for k, i in enumerate(self.inputs)}
            for node in self.nodes:
                for v in node.outputs:
                    slot.setdefault(v, len(slot))
            last = {}
            for i, node in enumerate(self.nodes):
                for v in node.inputs:
                    if v is not None:
                        last[v] = i
            keep = set(self.output_names)
            frees = [[] for _ in self.nodes]
            for v, i in last.items():
                if v not in keep:
                    frees[i].append(slot[v])
            steps = []
            for i, node in enumerate(self.nodes):
                steps.append((self._modules[node.name], node.name,
                              tuple(None if v is None else slot[v] for v in node.inputs),
                              tuple(slot[v] for v in node.outputs), tuple(frees[i]),
                              isinstance(self._modules[node.name], tensor.Constant)))
            self.__dict__["_schedule"] = (len(slot), steps,
                                          tuple(slot[o] for o in self.output_names))
        return self._schedule

    def _touch(self):
        self.__dict__["_schedule"] = None
        super()._touch()

    def _bind(self, args, kwargs):
        """The inputs as a list in graph order, checked against their declared shapes."""
        names = [i.name for i in self.inputs]
        if len(args) > len(names):
            raise TypeError(f"Graph: expected at most {len(names)} inputs ({names}), got "
                            f"{len(args)}")
        values = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"Graph: unknown input {key!r}; inputs are {names}")
            if key in values:
                raise TypeError(f"Graph: input {key!r} given twice")
            values[key] = value
        missing = [n for n in names if n not in values]
        if missing:
            raise TypeError(f"Graph: missing inputs {missing} (inputs: {names})")
        bound = []
        for spec in self.inputs:
            label = f"input {spec.name!r}"
            if np.dtype(spec.dtype).kind == "f":
                raw = values[spec.name]
                x = as_float_array(raw, label)
                if x.ndim != np.ndim(raw):  # a 0-d input (ascontiguousarray makes it 1-d)
                    x = x.reshape(np.shape(raw))
            else:
                x = np.asarray(values[spec.name])
                if x.dtype.kind not in "iub":
                    raise TypeError(f"{label}: expected an integer array ({spec.dtype}), got "
                                    f"dtype {x.dtype}")
            if spec.shape is not None:
                if x.ndim != len(spec.shape):
                    raise LayerInputError(f"{label}: expected a {len(spec.shape)}-D array of "
                                          f"shape {self._shape_text(spec.shape)}, got shape "
                                          f"{x.shape}")
                wrong = [i for i, (d, s) in enumerate(zip(spec.shape, x.shape))
                         if d is not None and d != s]
                if wrong:
                    raise LayerInputError(f"{label}: expected shape "
                                          f"{self._shape_text(spec.shape)}, got {x.shape} "
                                          f"(dimension {wrong[0]} differs)")
            bound.append(x)
        return bound

    @staticmethod
    def _shape_text(shape):
        return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"

    def forward(self, *args, **kwargs):
        """Run the graph: inputs positionally in graph order or by name; returns one array,
        or a tuple for several outputs."""
        n_values, steps, outputs = self._compiled()
        values = [None] * n_values
        values[:len(self.inputs)] = self._bind(args, kwargs)
        run = _plan.current_run()
        pairs = run.plan.graph_pairs(self) if run is not None and run.plan.contains(self) \
            else {}
        skip = set()
        for index, (module, name, ins, outs, frees, constant) in enumerate(steps):
            if index in skip:  # run by a fused pair already
                for k in frees:
                    values[k] = None
                continue
            pair = pairs.get(index)
            if pair is not None:  # a 1x1 convolution and the depthwise one it feeds
                pair, rest = pair
                skip.update(rest)
                module, outs = pair, steps[rest[-1]][3]
                result = pair.run(run, values[ins[0]])
            elif constant:
                result = module.forward()
            else:
                result = module(*[None if i is None else values[i] for i in ins])
            if len(outs) == 1:
                values[outs[0]] = result
            else:
                if not isinstance(result, tuple) or len(result) != len(outs):
                    raise GraphError(f"{name}: expected {len(outs)} outputs")
                for k, r in zip(outs, result):
                    values[k] = r
            for k in frees:
                values[k] = None
        result = tuple(values[k] for k in outputs)
        return result[0] if len(result) == 1 else result

    def prepare(self, input_shape=None, kernel="auto"):
        """As :meth:`Module.prepare`; ``input_shape`` may also be a list of shapes (one per
        graph input, in order) or a dict input name -> shape. Integer inputs get zeros."""
        if input_shape is None or (isinstance(input_shape, tuple) and len(self.inputs) == 1
                                   and all(isinstance(s, (int, np.integer))
                                           for s in input_shape)):
            return super().prepare(input_shape, kernel)
        super().prepare(None, kernel)
        if isinstance(input_shape, dict):
            shapes = [input_shape[i.name] for i in self.inputs]
        else:
            shapes = list(input_shape)
        inputs = [np.zeros(tuple(s), np.dtype(i.dtype)) for s, i in zip(shapes, self.inputs)]
        self(*inputs)
        with ops.second_looks():  # as Module.prepare: the second look at close calls
            self(*inputs)
        return self

    def _fusion_chains(self):
        """Runs of nodes a kernel can fuse: a convolution or linear layer and the nodes that
        follow it along edges nothing else reads (see :func:`~fscnn.nn._plan.fusable_chain`)."""
        readers = Counter(v for n in self.nodes for v in n.inputs if v is not None)
        outputs = set(self.output_names)
        by_input = {}
        for node in self.nodes:
            if node.inputs and node.inputs[0] is not None:
                by_input.setdefault(node.inputs[0], []).append(node)
        chains = []
        for node in self.nodes:
            if not hasattr(self._modules[node.name], "_make_op"):
                continue
            chain, current = [self._modules[node.name]], node
            while len(chain) < 4 and len(current.outputs) == 1:
                value = current.outputs[0]
                if readers[value] != 1 or value in outputs:
                    break
                nxt = by_input.get(value, [])
                if len(nxt) != 1 or len([v for v in nxt[0].inputs if v is not None]) != 1:
                    break
                current = nxt[0]
                chain.append(self._modules[current.name])
            chains.append(chain)
        return chains

    def _residual_chains(self):
        """Chains of nodes whose output only an Add of two values reads (a residual
        connection): a convolution and the nodes after it along edges nothing else reads (as
        :meth:`_fusion_chains` finds them). The plan runs the add in the convolution's
        epilogue where its step fused exactly that chain. Both operands of an add may be such
        chains (a ResNet block's last convolution and its shortcut's): the one whose kernel
        adds in its epilogue takes the add, the other runs plainly."""
        readers = {}
        for node in self.nodes:
            for v in node.inputs:
                if v is not None:
                    readers.setdefault(v, []).append(node)
        outputs = set(self.output_names)
        chains = []
        for node in self.nodes:
            if not hasattr(self._modules[node.name], "kernel_size"):  # convolutions only
                continue
            chain, current = [self._modules[node.name]], node
            while len(chain) <= 4 and len(current.outputs) == 1:
                value = current.outputs[0]
                found = readers.get(value, [])
                if value in outputs or len(found) != 1:  # x + x reads it twice
                    break
                reader = found[0]
                if (isinstance(self._modules[reader.name], tensor.Add)
                        and len(reader.inputs) == 2 and None not in reader.inputs):
                    chains.append(chain)
                    break
                if len([v for v in reader.inputs if v is not None]) != 1:
                    break
                current = reader
                chain.append(self._modules[reader.name])
        return chains

    def __getstate__(self):
        state = super().__getstate__()
        state["_schedule"] = None
        return state

    def extra_repr(self):
        ins = ", ".join(f"{i.name}: {self._shape_text(i.shape) if i.shape else '?'}"
                        for i in self.inputs)
        return f"inputs=[{ins}], outputs={list(self.output_names)}"


__all__ = ["Graph", "GraphError", "GraphInput", "Node", "LAYERS"]
