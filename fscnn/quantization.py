"""Post-training INT8 quantization: :func:`quantize` and the arithmetic it defines.

Weights: symmetric, one scale per output channel, ``scale = max|w| / 127`` and
``q = round(w / scale)`` in [-127, 127], so a pruned zero stays zero (small weights may round
to zero too). Activations: one scale per layer input, from calibration batches run through
the float model: an input never negative on them is unsigned (``round(x / s)`` in [0, 255],
e.g. after a ReLU), any other signed ([-127, 127]); ``s`` maps the largest magnitude seen
(``scheme='minmax'``) or a percentile of the magnitudes (``'percentile'``) to the top of the
range, larger inputs saturate. Rounding is to nearest, ties to even, of the float32 product
``x * float32(1 / s)``; NaN quantizes to 0.

A quantized Conv2d or Linear (:class:`fscnn.nn.QuantizedConv2d`,
:class:`~fscnn.nn.QuantizedLinear`) sums exact int32 products in the INT8 kernel
(:mod:`fscnn.kernels.int8`) and returns ``act(fma(float32(acc), float32(s) * w_scale[o],
bias[o]))``. In this stage every quantized layer takes and returns float32: the input is
quantized and the output dequantized at each quantized layer's boundary; pooling, additions,
activations that are not fused and the other layers (ConvTranspose2d, Gemm, ...) stay float.
"""
from collections import OrderedDict
from copy import deepcopy

import numpy as np

from .nn import init
from .nn._plan import observing
from .nn.graph import Graph, Node
from .nn.layers import Conv2d, Linear
from .nn.module import Module
from .nn.quantized import QuantizedConv2d, QuantizedLinear

__all__ = ["quantize", "dequantize", "is_quantized", "quantize_weight", "quantize_input",
           "quantized_weight_names", "SCHEMES"]

SCHEMES = ("minmax", "percentile")
SIGNED_MAX, UNSIGNED_MAX = 127, 255
_SAMPLES_PER_BATCH = 1 << 16  # magnitudes kept per layer and batch for 'percentile'


def quantize_weight(weight):
    """Symmetric per-output-channel int8 quantization of a float weight.

    Parameters
    ----------
    weight : array of shape (O, ...)

    Returns
    -------
    values : int8 ndarray of the weight's shape, in [-127, 127]
    scale : float32 ndarray of shape (O,)
        ``max|weight[o]| / 127`` (1 for an all-zero channel); ``values * scale[:, None...]``
        approximates the weight within half a step per entry.
    """
    w = np.asarray(weight, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("quantize_weight: the weight holds NaN or infinite values")
    O = w.shape[0]
    amax = np.abs(w.reshape(O, -1)).max(axis=1) if w.size else np.zeros(O)
    scale = np.where(amax > 0, amax / SIGNED_MAX, 1.0).astype(np.float32)
    q = np.rint(w / scale.astype(np.float64).reshape((O,) + (1,) * (w.ndim - 1)))
    return np.clip(q, -SIGNED_MAX, SIGNED_MAX).astype(np.int8), scale


def quantize_input(x, scale, unsigned):
    """The quantized input the INT8 kernel computes with (its exact NumPy definition).

    Parameters
    ----------
    x : array_like of floats
    scale : float
        The input scale.
    unsigned : bool
        [0, 255] instead of [-127, 127].

    Returns
    -------
    int32 ndarray of x's shape: ``clip(rint(float32(x) * float32(1 / scale)))``, NaN -> 0.
    """
    lo, hi = (0, UNSIGNED_MAX) if unsigned else (-SIGNED_MAX, SIGNED_MAX)
    v = np.asarray(x, dtype=np.float32) * np.float32(1.0 / np.float64(scale))
    v = np.where(np.isnan(v), np.float32(0), v)
    return np.rint(np.clip(v, lo, hi)).astype(np.int32)


class _Calibration:
    """Per layer (qualified name): the smallest input seen, the largest magnitude and, for
    'percentile', a strided sample of the magnitudes of each batch."""

    def __init__(self, scheme):
        self.scheme = scheme
        self.low, self.high, self.samples = {}, {}, {}

    def __call__(self, name, layer, x):
        if x.size == 0:
            return
        a = np.abs(x)
        high = float(a.max())
        if not np.isfinite(high):
            raise ValueError(f"quantize: layer {name!r} received NaN or infinite values on the "
                             f"calibration batches")
        self.low[name] = min(self.low.get(name, np.inf), float(x.min()))
        self.high[name] = max(self.high.get(name, 0.0), high)
        if self.scheme == "percentile":
            flat = a.reshape(-1)
            step = max(1, flat.size // _SAMPLES_PER_BATCH)
            self.samples.setdefault(name, []).append(flat[::step].copy())

    def input_quantization(self, name, percentile):
        """(scale, unsigned) of layer ``name``'s input."""
        unsigned = self.low[name] >= 0.0
        amax = self.high[name]
        if self.scheme == "percentile":
            amax = float(np.percentile(np.concatenate(self.samples[name]), percentile))
        top = UNSIGNED_MAX if unsigned else SIGNED_MAX
        return (np.float32(amax / top) if amax > 0 else np.float32(1.0)), unsigned


def is_quantized(model):
    """Whether ``model`` holds quantized layers."""
    return any(isinstance(m, (QuantizedConv2d, QuantizedLinear)) for _, m in model.named_modules())


def _float_layer(q):
    """The float Conv2d/Linear of the quantized layer ``q``: weights ``values * scale``."""
    O = q.weight.shape[0]
    weight = q.weight.astype(np.float32) * q.weight_scale.reshape((O,) + (1,) * (q.weight.ndim - 1))
    with init.uninitialized():
        if isinstance(q, QuantizedConv2d):
            m = Conv2d(q.in_channels, q.out_channels, q.kernel_size, q.stride, q.padding,
                       q.dilation, q.groups, q.bias is not None, q.padding_mode)
        else:
            m = Linear(q.in_features, q.out_features, q.bias is not None)
    m.weight = weight
    if q.bias is not None:
        m.bias = q.bias
    return m


def dequantize(model):
    """A float copy of a quantized model: each QuantizedConv2d/QuantizedLinear becomes the
    Conv2d/Linear with the dequantized weights ``values * weight_scale`` (the float model the
    int8 one approximates with quantized activations; ``fscnn bench`` compares with it).

    Parameters
    ----------
    model : fscnn.nn.Module

    Returns
    -------
    fscnn.nn.Module
        A new model (a Graph for a Graph); the other layers are copies.
    """
    named = dict(model.named_modules())
    layers = OrderedDict((name, _float_layer(m)) for name, m in named.items()
                         if isinstance(m, (QuantizedConv2d, QuantizedLinear)))
    if isinstance(model, Graph):
        tensors = OrderedDict(model.tensors())
        nodes = []
        for node in model.nodes:
            m = layers.get(node.name)
            if m is None:
                nodes.append(node)
                continue
            tensors[node.params["weight"]] = m.weight
            params = {k: v for k, v in node.params.items()
                      if k not in ("weight_scale", "input_scale")}
            args = {k: v for k, v in node.args.items() if k != "input_unsigned"}
            nodes.append(Node(node.name, node.op[len("Quantized"):], args, node.inputs,
                              node.outputs, params))
        return Graph(model.inputs, model.output_names, nodes, tensors)
    copy = deepcopy(model)
    _replace(copy, layers)
    return copy


def quantized_weight_names(model):
    """state_dict keys of the int8 weights of ``model``'s quantized layers, in state_dict
    order (``fscnn info`` lists them beside the float layers' weights)."""
    return [key for key, (module, attribute, _) in model._state_slots().items()
            if attribute == "weight" and isinstance(module, (QuantizedConv2d, QuantizedLinear))]


def _targets(model, keep):
    """Qualified name -> module of the Conv2d and Linear layers to quantize (exactly those
    types: ConvTranspose2d, Gemm and subclasses stay float), shared modules once."""
    found, seen = OrderedDict(), set()
    for name, module in model.named_modules():
        if type(module) in (Conv2d, Linear) and name not in keep and id(module) not in seen:
            seen.add(id(module))
            found[name] = module
    return found


def _dense(weight):
    return weight.to_dense() if hasattr(weight, "to_dense") else np.asarray(weight)


def _quantized_layer(module, scale, unsigned):
    """The quantized counterpart of the Conv2d or Linear ``module``."""
    values, w_scale = quantize_weight(_dense(module.weight))
    with init.uninitialized():
        if isinstance(module, Conv2d):
            q = QuantizedConv2d(module.in_channels, module.out_channels, module.kernel_size,
                                module.stride, module.padding, module.dilation, module.groups,
                                module.bias is not None, module.padding_mode,
                                input_unsigned=bool(unsigned))
        else:
            q = QuantizedLinear(module.in_features, module.out_features,
                                module.bias is not None, input_unsigned=bool(unsigned))
    q.weight, q.weight_scale, q.input_scale = values, w_scale, scale
    if module.bias is not None:
        q.bias = module.bias
    return q


def _quantized_graph(graph, layers):
    """A new Graph with the nodes of ``layers`` (node name -> quantized layer) replaced; the
    scales are stored under ``<node>.weight_scale`` and ``<node>.input_scale``."""
    tensors = OrderedDict(graph.tensors())
    users = {}
    for node in graph.nodes:
        for key in node.params.values():
            users.setdefault(key, set()).add(node.name)
    nodes = []
    for node in graph.nodes:
        q = layers.get(node.name)
        if q is None:
            nodes.append(node)
            continue
        key = node.params["weight"]
        others = users[key] - set(layers)
        if others:
            raise ValueError(f"quantize: the weight {key!r} of {node.name!r} is shared with "
                             f"layers left float ({sorted(others)})")
        tensors[key] = q.weight
        params = dict(node.params, weight_scale=f"{node.name}.weight_scale",
                      input_scale=f"{node.name}.input_scale")
        tensors[params["weight_scale"]], tensors[params["input_scale"]] = \
            q.weight_scale, q.input_scale
        nodes.append(Node(node.name, "Quantized" + node.op,
                          dict(node.args, input_unsigned=q.input_unsigned), node.inputs,
                          node.outputs, params))
    return Graph(graph.inputs, graph.output_names, nodes, tensors)


def _replace(model, layers):
    """Put the quantized layers (qualified name -> layer) in place of the float ones in
    ``model`` (a copy), wherever each float module appears."""
    by_id = {}
    originals = dict(model.named_modules())
    for name, q in layers.items():
        by_id[id(originals[name])] = q
    for _, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child is not None and id(child) in by_id:
                setattr(parent, child_name, by_id[id(child)])


def quantize(model, calibration_batches, *, scheme="minmax", percentile=99.99, keep=()):
    """A copy of ``model`` whose Conv2d and Linear layers run in INT8.

    The float model runs on ``calibration_batches`` to find each layer's input scale (and
    whether that input is non-negative); the weights are quantized per output channel (see
    the module docstring for the exact arithmetic). Batch norms after a convolution fold into
    its weight scales when the quantized model is prepared, ReLUs and 2x2 max pools fuse as
    for the float model. Each quantized layer takes and returns float32 (in this stage the
    activations are quantized and dequantized at every quantized layer).

    Parameters
    ----------
    model : fscnn.nn.Module
        The float model (not modified; it is run, and prepared if it was not).
    calibration_batches : iterable of arrays (or of tuples of arrays, for models with several
        inputs)
        Representative inputs, e.g. a few batches of real images (N, C, H, W).
    scheme : {'minmax', 'percentile'}
        'minmax': the largest input magnitude seen maps to the top of the int8 range;
        'percentile': the ``percentile``-th percentile of the magnitudes does (outliers
        saturate).
    percentile : float
        In (0, 100], for ``scheme='percentile'``.
    keep : iterable of str
        Qualified names of Conv2d/Linear layers to leave float (e.g. a sensitive first layer).

    Returns
    -------
    fscnn.nn.Module
        A new model of the same type (for a :class:`~fscnn.nn.Graph`, a new graph whose
        nodes are ``QuantizedConv2d``/``QuantizedLinear``: :func:`fscnn.save` writes it as a
        whole-model archive of int8 values and scales that :func:`fscnn.load_model` and the
        CLI read).

    Raises
    ------
    ValueError
        Unknown scheme or percentile, no calibration batch, a layer that no batch reached, a
        NaN or infinity in a layer's calibration input, a name in ``keep`` that is no
        Conv2d/Linear layer.

    Examples
    --------
    >>> qmodel = fscnn.quantize(model, [x[i:i + 64] for i in range(0, 512, 64)])
    >>> qmodel(x[:8]).shape
    (8, 10)
    """
    if not isinstance(model, Module):
        raise TypeError(f"quantize: expected an fscnn.nn.Module, got {type(model).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: scheme must be one of {SCHEMES}, got {scheme!r}")
    if not (isinstance(percentile, (int, float)) and 0 < percentile <= 100):
        raise ValueError(f"quantize: percentile must be in (0, 100], got {percentile!r}")
    keep = set([keep] if isinstance(keep, str) else keep)
    named = dict(model.named_modules())
    bad = sorted(k for k in keep if type(named.get(k)) not in (Conv2d, Linear))
    if bad:
        raise ValueError(f"quantize: keep names no Conv2d or Linear layer: {bad}")
    targets = _targets(model, keep)
    calibration = _Calibration(scheme)
    batches = 0
    with observing(calibration):
        for batch in calibration_batches:
            model(*batch) if isinstance(batch, tuple) else model(batch)
            batches += 1
    if batches == 0:
        raise ValueError("quantize: calibration_batches is empty")
    missing = [name for name in targets if name not in calibration.high]
    if missing:
        raise ValueError(f"quantize: the calibration batches never reached the layers "
                         f"{missing} (give inputs that run them, or keep them float)")
    layers = OrderedDict((name, _quantized_layer(module, *calibration.input_quantization(
        name, percentile))) for name, module in targets.items())
    if isinstance(model, Graph):
        return _quantized_graph(model, layers)
    copy = deepcopy(model)
    _replace(copy, {name: layers[name] for name in layers})
    return copy
