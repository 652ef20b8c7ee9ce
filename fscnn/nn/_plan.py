"""Prepared plans: the fused, converted form that a module runs when it is called.

A :class:`Plan` is built from a module tree in one walk and kept beside it (the tree is not
modified). It holds one *step* per convolution or linear layer: a :mod:`fscnn.ops` operator
owning the layer's converted weights, with a following BatchNorm2d folded into them, a
following ReLU/ReLU6 fused into the kernel's epilogue and a following 2x2 stride-2 max pool
computed by the convolution's kernel.

Fusion chains come from the containers: :class:`~fscnn.nn.Sequential` finds adjacent
Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d runs itself, other modules declare theirs in
``_fusions``. A convolution's chain whose output goes straight into a residual add (declared
in ``_residuals``; found by :class:`~fscnn.nn.Graph` itself) returns a
:class:`~fscnn.ops.PendingOutput`, computed when :func:`fscnn.functional.add` gets it with
the shortcut, which the kernel then adds in its epilogue. A 1x1 convolution's step followed by a depthwise convolution's step that alone
reads its output (in a Sequential, each alone or in a nested plain Sequential, as in
MobileNet's blocks; in a Graph, along an edge nothing else reads) runs as one
:class:`~fscnn.ops.ExpandDepthwiseOp` where that is faster (:class:`_PairStep`).
The module's ordinary ``forward`` still runs: the step of the head layer returns
the fused output, and the absorbed batch norm, activation and pool, when then called on exactly
that array, return it unchanged. A folded batch norm called on anything else raises, and so does a forward that
returns with a chain left half-run, so a wrong declaration cannot give silently wrong results.

A plan is current while no module of its tree has changed since it was built: every
attribute assignment on a module bumps that module's version and a global epoch, and the
plan compares versions only when the epoch moved.
"""
import contextlib
import threading
import time
from collections import Counter, namedtuple
from collections.abc import Mapping

import numpy as np

from .._config import get_num_threads
from .._table import format_table
from .._validate import as_float_array
from ..kernels import (CONV, CONV_KERNELS, LINEAR, LINEAR_KERNELS, ConvLayer, LinearLayer,
                       ineligibility)
from ..ops import Conv2dOp, ExpandDepthwiseOp, PendingOutput, QuantizedWeight
from .errors import LayerInputError

KERNELS = tuple(dict.fromkeys(CONV_KERNELS + LINEAR_KERNELS))  # the settings of prepare
FUSED_KERNEL = "expand+depthwise"  # what reports name a fused 1x1 + depthwise pair's kernel

_epoch = [0]


class _ThreadState(threading.local):
    """This thread's runs in progress and what watches its calls (profile, observing,
    reporting). The defaults are class attributes so that a call on a thread where none was
    set finds them: a missing attribute of a threading.local costs an AttributeError inside
    getattr (~0.3 us, and every layer of every call looks up several)."""

    runs = None
    progress = None
    profiles = ()
    observers = ()


_local = _ThreadState()


def bump_epoch():
    """Record that some module changed (plans re-check their versions on the next call)."""
    _epoch[0] += 1


def current_run():
    """The innermost run in progress on this thread, or None."""
    runs = _local.runs
    return runs[-1] if runs else None


@contextlib.contextmanager
def reporting(progress):
    """Count every prepared step run on this thread inside the block on ``progress`` (a
    :class:`fscnn._progress.Progress`): :meth:`Module.prepare` shows its layers so."""
    previous = _local.progress
    _local.progress = progress
    try:
        yield progress
    finally:
        _local.progress = previous


@contextlib.contextmanager
def running(plan):
    """Make a new run of ``plan`` the current one for the duration of the block."""
    runs = _local.__dict__.setdefault("runs", [])
    run = _Run(plan)
    runs.append(run)
    try:
        yield run
    finally:
        runs.pop()


LayerTime = namedtuple("LayerTime", ["name", "type", "input_shape", "kernel", "sparsity",
                                     "seconds", "flops_dense", "flops_sparse"])
LayerTime.__doc__ = """One layer call recorded by :func:`profile`.

Fields: ``name`` (qualified name), ``type`` (what runs, e.g. ``"Conv2d+BatchNorm2d+ReLU"``),
``input_shape``, ``kernel`` (the kernel, e.g. 'sparse' or 'dense', for convolution and linear layers,
else None),
``sparsity`` (of the prepared weights, else None), ``seconds``, and the FLOPs of the call
counted on all weights (``flops_dense``) and on the non-zeros (``flops_sparse``), 2 per
multiply-add, None for layers without weights.
"""


@contextlib.contextmanager
def profile():
    """Record every leaf-layer call made on this thread inside the block.

    Yields a list that fills with :class:`LayerTime` records, in call order; layers absorbed
    by a fused operator (a folded batch norm, a fused ReLU or max pool) take no time of their
    own and are not listed. A residual add that a convolution's epilogue makes in a plain call
    (``Module._residuals``) runs on its own while profiling, so that each record times its
    layer alone.

    Examples
    --------
    >>> with fscnn.nn.profile() as records:
    ...     model(x)
    >>> sum(r.seconds for r in records)
    """
    records = []
    stack = _local.__dict__.setdefault("profiles", [])
    stack.append(records)
    try:
        yield records
    finally:
        stack.pop()


@contextlib.contextmanager
def observing(callback):
    """Call ``callback(name, layer, x)`` with the input ``x`` (float32, as the layer's
    operator receives it) of every prepared convolution and linear layer run on this thread
    inside the block, before it runs; ``name`` is the layer's qualified name. What
    :func:`fscnn.quantize` calibrates with."""
    stack = _local.__dict__.setdefault("observers", [])
    stack.append(callback)
    try:
        yield
    finally:
        stack.pop()


def _watched():
    """Whether calibration, profiling or ``prepare``'s progress watches the calls of this
    thread: each layer then runs when it is called (no pending residual convolutions)."""
    return bool(_local.observers or _local.profiles or _local.progress is not None)


def _record(records, name, layer, step, x, out, seconds):
    if step is None:
        records.append(LayerTime(name, type(layer).__name__, x.shape, None, None, seconds, None,
                                 None))
        return
    op = step.op
    if step.pool is not None:  # FLOPs of the convolution, whose output the pool shrank
        out = np.empty(op.conv_output_shape(x.shape), np.int8)
    positions = out.size // out.shape[1] if out.ndim == 4 else out.size // out.shape[-1]
    rows = x.reshape(-1, x.shape[-1]).shape if out.ndim != 4 else x.shape
    kernel = op.kernel_for(rows)
    records.append(LayerTime(name, step.layers, x.shape, kernel, op.sparsity, seconds,
                             2.0 * op.size * positions, 2.0 * op.nnz * positions))


def _density(weight):
    """Fraction of non-zero entries of a dense or sparse (CSRMatrix, SparseConvWeight) or
    quantized (QuantizedWeight) weight."""
    if isinstance(weight, QuantizedWeight):
        weight = weight.values
    size = int(np.prod(weight.shape))
    if isinstance(weight, np.ndarray):
        return float(np.count_nonzero(weight)) / max(size, 1)
    csr = getattr(weight, "csr", weight)
    return float(np.count_nonzero(csr.data)) / max(size, 1)


def label(name, module):
    """How errors name a module: ``"features.3 (Conv2d)"``, or the type for a root."""
    kind = type(module).__name__
    return f"{name} ({kind})" if name else kind


def fusable_chain(modules):
    """The prefix of ``modules`` that runs as one kernel, as ``(head, norm, activation, pool)``.

    ``head`` is a layer with an operator (Conv2d, Linear); ``norm`` a batch norm it can fold,
    ``activation`` a layer its kernel can apply in the epilogue, ``pool`` a 2x2 stride-2 max
    pool after a convolution (see ``MaxPool2d._fused_pool``); any of them may be None. Returns
    None when the first module has no operator.
    """
    if not modules or not hasattr(modules[0], "_make_op"):
        return None
    head, rest = modules[0], list(modules[1:])
    norm = rest.pop(0) if rest and head._can_fold(rest[0]) else None
    act = rest.pop(0) if rest and getattr(rest[0], "_fused_activation", None) else None
    pool = rest[0] if (rest and hasattr(head, "kernel_size")
                       and getattr(rest[0], "_fused_pool", None)) else None
    return head, norm, act, pool


def _occurrences(module):
    """Count how many places of the tree each module fills (shared modules count > 1)."""
    counts = Counter()

    def walk(m):
        counts[id(m)] += 1
        for child in m.children():
            walk(child)
    walk(module)
    return counts


def _kernel_ok(module, kernel):
    """Whether a kernel named ``kernel`` can run this convolution or linear layer."""
    shape = tuple(module.weight.shape)
    if hasattr(module, "kernel_size"):
        return ineligibility(CONV, kernel, ConvLayer(shape, module.stride, module.dilation,
                                                     module.groups)) is None
    return ineligibility(LINEAR, kernel, LinearLayer(shape)) is None


def _kernel_choice(kernel, named, strict):
    """Validate the ``kernel`` setting of ``prepare``; return name -> kernel for op layers.

    With ``strict=False`` (a lazy re-preparation after the tree changed) names of layers
    that are gone are ignored."""
    op_names = [name for name, m in named if hasattr(m, "_make_op")]
    if not strict and isinstance(kernel, Mapping):
        kernel = {k: v for k, v in kernel.items() if k in op_names}
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ValueError(f"prepare: kernel must be one of {', '.join(map(repr, KERNELS))} "
                             f"or a dict of layer name -> kernel, got {kernel!r}")
        # for the whole model: the layers it can run, 'auto' for the others
        return {name: kernel if _kernel_ok(m, kernel) else "auto" for name, m in named
                if hasattr(m, "_make_op")}
    if not isinstance(kernel, Mapping):
        raise TypeError(f"prepare: kernel must be a str or a dict of layer name -> kernel, "
                        f"got {type(kernel).__name__}")
    unknown = [k for k in kernel if k not in op_names]
    invalid = [f"{k!r}: {v!r}" for k, v in kernel.items() if v not in KERNELS]
    if unknown or invalid:
        problems = []
        if unknown:
            problems.append(f"no convolution or linear layer named {', '.join(map(repr, unknown))}"
                            f" (layers: {', '.join(map(repr, op_names))})")
        if invalid:
            problems.append(f"kernels must be one of {', '.join(map(repr, KERNELS))}, got "
                            f"{', '.join(invalid)}")
        raise ValueError("prepare: " + "; ".join(problems))
    return {name: kernel.get(name, "auto") for name in op_names}


class _Step:
    """One prepared operator: a convolution or linear layer and what it absorbed."""

    def __init__(self, name, label, head, norm, act, owner, kernel, pool=None):
        weight, bias = head._fold(norm) if norm is not None else (head.weight, head.bias)
        self.name = name
        self.head = head
        self.pool = pool
        self.followers = tuple(m for m in (norm, act, pool) if m is not None)
        self.owner = owner
        self.layers = "+".join(type(m).__name__ for m in (head,) + self.followers)
        self.kernel = kernel
        self.density = _density(weight)
        self.shapes = {}
        # the chain's output goes straight into a residual add (Plan marks it): the step
        # returns a PendingOutput for the add to compute with the shortcut
        self.residual = False
        extra = {"pool": pool._fused_pool} if pool is not None else {}
        self.op = head._make_op(weight, bias, act._fused_activation if act else None, kernel,
                                label, **extra)

    def __call__(self, x):
        self.shapes[x.shape] = None
        if self.residual and not _watched():
            return PendingOutput(self.op, x)
        return self.head._apply_op(self.op, x)


class _PairStep:
    """A 1x1 convolution's step and the depthwise convolution's step it feeds, run as one
    :class:`~fscnn.ops.ExpandDepthwiseOp` when that is faster: two adjacent entries of a
    Sequential's run (see ``Plan._entry_step``), or a graph's nodes from the 1x1 layer to the
    depthwise one (see ``Plan.graph_pairs``).

    A shape's first call runs the entries as usual (their checks, their own kernel choices,
    errors naming the layer), then times the pair on that shape; later calls on it go straight
    to the operator. Calibration (``observing``) and ``prepare``'s progress see the entries
    run separately.

    Parameters
    ----------
    entries : list of (module, fused)
        What runs when the pair does not: each is called as ``_Run.call(module, (x,), {},
        fused)`` on the previous one's output.
    first, second : _Step
        The two layers' steps.
    hand_on : bool
        Whether the layers that ``second`` absorbed are still called on its output (a graph's
        nodes; a Sequential's run skips them): they are then told to hand it back.
    """

    def __init__(self, entries, first, second, hand_on=False):
        self.entries = entries
        self.steps = first, second
        self.hand_on = hand_on
        self.op = ExpandDepthwiseOp(first.op, second.op)
        self.layers = f"{first.layers}+{second.layers}"
        self.shapes = {}  # input shapes run so far, timed both ways
        self.inner = {}  # the depthwise layer's input shape -> the pair's

    def run(self, run, x):
        known = x.__class__ is np.ndarray and x.shape in self.shapes
        if (known and x.dtype == np.float32 and x.flags.c_contiguous
                and not _local.observers and _local.progress is None):
            profiles = _local.profiles
            out = None
            if not profiles:
                out = self.op(x)
            elif self.op.fused_for(x.shape):
                t0 = time.perf_counter()
                out = self.op(x)
                self._record(profiles[-1], x, out, time.perf_counter() - t0)
            if out is not None:
                if self.hand_on:
                    second = self.steps[1]
                    for follower in second.followers:
                        run.pending.setdefault(id(follower), []).append((out, second))
                return out
        out = x
        for module, fused in self.entries:  # each records itself when profiled
            out = run.call(module, (out,), {}, fused)
        if (not known and x.__class__ is np.ndarray and x.ndim == 4
                and x.dtype == np.float32 and x.flags.c_contiguous):
            self.op(x)  # time both ways now (within prepare, when it made this call)
            self.inner[self.steps[0].op.output_shape(x.shape)] = x.shape
            self.shapes[x.shape] = None
        return out

    def _record(self, records, x, out, seconds):
        a, b = (step.op for step in self.steps)
        positions = x.shape[0] * x.shape[2] * x.shape[3]
        outputs = out.shape[0] * out.shape[2] * out.shape[3]
        records.append(LayerTime(
            self.steps[0].name, self.layers, x.shape, FUSED_KERNEL,
            1.0 - (a.nnz + b.nnz) / (a.size + b.size), seconds,
            2.0 * (a.size * positions + b.size * outputs),
            2.0 * (a.nnz * positions + b.nnz * outputs)))


LayerPlan = namedtuple("LayerPlan", ["name", "layers", "density", "kernel_setting", "kernels",
                                     "threads"], defaults=(None,))
LayerPlan.__doc__ = """One prepared operator of a plan.

Fields: ``name`` (qualified name of the convolution or linear layer), ``layers`` (what it
fuses, e.g. ``"Conv2d+BatchNorm2d+ReLU"``), ``density`` (fraction of non-zero weights after
folding), ``kernel_setting`` ('auto' or a kernel: 'sparse', 'block_sparse', 'dense', ...),
``kernels`` (dict: input shape -> kernel chosen, for each shape the layer has run on) and
``threads`` (dict: input shape -> the threads that kernel runs with, at the current thread
count: fewer where 'auto' found one thread faster).
"""


class PlanReport(list):
    """List of :class:`LayerPlan` rows that prints as a table."""

    def __str__(self):
        header = ("layer", "fused", "density", "setting", "input shape -> kernel")
        several = get_num_threads() > 1  # then say which kernels 'auto' put on one thread
        rows = [(r.name or "(root)", r.layers, f"{r.density:.3f}", r.kernel_setting,
                 ", ".join(f"{s} -> {k}" + (" (1 thread)" if several and (r.threads or {})
                                           .get(s) == 1 else "")
                           for s, k in r.kernels.items()) or "(not run yet)")
                for r in self]
        return format_table(header, rows, align="lllll")


class Plan:
    """The prepared form of a module tree (see the module docstring).

    Parameters
    ----------
    root : Module
    kernel : str or mapping
        The ``kernel`` argument of :meth:`Module.prepare`.
    strict : bool
        Refuse names in a ``kernel`` mapping that match no layer (else ignore them).
    choices : dict, optional
        :meth:`choices` of a plan of the same tree (e.g. carried by a pickle): the layers set
        to 'auto' take those kernels for the recorded input shapes, thread counts and SIMD
        levels without timing them again.
    """

    def __init__(self, root, kernel, strict=True, choices=None):
        named = list(root.named_modules())
        kernels = _kernel_choice(kernel, named, strict)
        self.labels = {id(m): label(name, m) for name, m in named}
        self.names = {id(m): name for name, m in named}
        self._versions = [(m, m._version) for _, m in named]
        self._epoch = _epoch[0]
        uses = _occurrences(root)
        self.steps = {}
        self.folded = set()
        self.owners = set()
        names = {id(m): name for name, m in named}
        for _, owner in named:
            for chain in owner._fusion_chains():
                found = fusable_chain(chain)
                if found is None or found[1:] == (None, None, None):
                    continue
                head, norm, act, pool = found
                if uses[id(head)] > 1 or id(head) in self.steps or (
                        norm is not None and (uses[id(norm)] > 1 or id(norm) in self.folded)):
                    continue
                name = names[id(head)]
                self.steps[id(head)] = _Step(name, self.labels[id(head)], head, norm, act, owner,
                                             kernels[name], pool)
                self.owners.add(id(owner))
                if norm is not None:
                    self.folded.add(id(norm))
        for name, m in named:
            if hasattr(m, "_make_op") and id(m) not in self.steps:
                self.steps[id(m)] = _Step(name, self.labels[id(m)], m, None, None, None,
                                          kernels[name])
        self.residual_owners = set()  # modules that declared residual chains marked here
        for _, owner in named:
            for chain in owner._residual_chains():
                step = self.steps.get(id(chain[0]))
                if (step is not None and isinstance(step.op, Conv2dOp) and not step.op.pool
                        and uses[id(chain[0])] == 1 and len(chain) == 1 + len(step.followers)
                        and all(a is b for a, b in zip(chain[1:], step.followers))):
                    step.residual = True
                    step.layers += "+add"
                    self.residual_owners.add(id(owner))
        self._sequences = {}  # id(Sequential) -> its children as _Run.sequence runs them
        self._pair_of = {}  # id(step) -> (its _PairStep, 0 or 1: which layer of the pair)
        self._graph_pairs = {}  # id(Graph) -> Plan.graph_pairs(graph)
        order = {id(m): i for i, (_, m) in enumerate(named)}
        self._ordered_steps = sorted(self.steps.values(), key=lambda s: order[id(s.head)])
        for step in self._ordered_steps:
            if choices and step.kernel == "auto" and step.name in choices:
                step.op.preset_kernels(choices[step.name])

    def choices(self):
        """The kernels that the layers set to 'auto' chose so far: qualified layer name ->
        ``[(input shape, threads, SIMD level, kernel), ...]`` (plain data: what a pickle of
        the model carries and ``fscnn.save`` writes with a whole model)."""
        found = {}
        for step in self._ordered_steps:
            if step.kernel == "auto":
                rows = step.op.kernel_choices()
                if rows:
                    found[step.name] = rows
        return found

    def sequence(self, seq):
        """The children of ``seq`` (a Sequential of this tree) as ``[(module, fused), ...]``,
        in order, without the followers of a chain fused into the head before them (``fused``
        True): what that head's step returns is already their output."""
        entries = self._sequences.get(id(seq))
        if entries is None:
            children = list(seq)
            entries, i = [], 0
            while i < len(children):
                step = self.steps.get(id(children[i]))
                n = len(step.followers) if step is not None and step.owner is seq else 0
                fused = n > 0 and len(children) > i + n and all(
                    a is b for a, b in zip(children[i + 1:i + 1 + n], step.followers))
                entries.append((children[i], fused))
                i += 1 + (n if fused else 0)
            entries = self._pairs(entries)
            self._sequences[id(seq)] = entries
        return entries

    def graph_pairs(self, graph):
        """The fused pairs of ``graph`` (a Graph of this tree), as ``{index of the 1x1
        layer's node: (its _PairStep, indices of the other nodes it runs)}``: a 1x1
        convolution's node, the nodes it absorbed, and the depthwise convolution's node that
        alone reads their output."""
        pairs = self._graph_pairs.get(id(graph))
        if pairs is not None:
            return pairs
        pairs = {}
        nodes = graph.nodes
        modules = [graph._modules[n.name] for n in nodes]
        at = {id(m): i for i, m in enumerate(modules)}
        readers = {}
        for i, node in enumerate(nodes):
            for v in node.inputs:
                if v is not None:
                    readers.setdefault(v, []).append(i)
        outputs = set(graph.output_names)
        taken = set()
        for i, module in enumerate(modules):
            a = self.steps.get(id(module))
            if a is None or i in taken or (a.followers and a.owner is not graph):
                continue
            group = [i] + sorted(at[id(f)] for f in a.followers)
            last = nodes[group[-1]]
            if len(last.outputs) != 1 or last.outputs[0] in outputs:
                continue
            found = readers.get(last.outputs[0], [])
            if len(found) != 1 or tuple(nodes[found[0]].inputs) != (last.outputs[0],):
                continue
            j = found[0]
            b = self.steps.get(id(modules[j]))
            if (b is None or j in taken or (b.followers and b.owner is not graph)
                    or not isinstance(a.op, Conv2dOp) or not isinstance(b.op, Conv2dOp)
                    or ExpandDepthwiseOp.ineligibility(a.op, b.op) is not None):
                continue
            group.append(j)
            pair = _PairStep([(modules[k], False) for k in group], a, b, hand_on=True)
            self._pair_of[id(a)], self._pair_of[id(b)] = (pair, 0), (pair, 1)
            pairs[i] = pair, tuple(group[1:])
            taken.update(group)
        self._graph_pairs[id(graph)] = pairs
        return pairs

    def _entry_step(self, module, fused):
        """The step that an entry of a Sequential's run amounts to: a head whose followers it
        absorbs (or that has none), or a plain Sequential whose run is one such entry; None
        for anything else."""
        step = self.steps.get(id(module))
        if step is not None:
            return step if (fused or not step.followers) else None
        if getattr(module, "_plain_sequence", False) and self.contains(module):
            inner = self.sequence(module)
            if len(inner) == 1 and not isinstance(inner[0][0], _PairStep):
                return self._entry_step(*inner[0])
        return None

    def _pairs(self, entries):
        """``entries`` with each 1x1 convolution step and the depthwise step after it that
        ExpandDepthwiseOp can run together replaced by one :class:`_PairStep` entry."""
        out, i = [], 0
        while i < len(entries):
            if i + 1 < len(entries):
                a, b = (self._entry_step(*e) for e in entries[i:i + 2])
                if (a is not None and b is not None and isinstance(a.op, Conv2dOp)
                        and isinstance(b.op, Conv2dOp)
                        and ExpandDepthwiseOp.ineligibility(a.op, b.op) is None):
                    pair = _PairStep(entries[i:i + 2], a, b)
                    self._pair_of[id(a)], self._pair_of[id(b)] = (pair, 0), (pair, 1)
                    out.append((pair, True))
                    i += 2
                    continue
            out.append(entries[i])
            i += 1
        return out

    def contains(self, module):
        """Whether ``module`` is part of the tree this plan was built from."""
        return id(module) in self.labels

    def is_current(self):
        """Whether no module of the tree changed since the plan was built."""
        if self._epoch == _epoch[0]:
            return True
        if all(m._version == version for m, version in self._versions):
            self._epoch = _epoch[0]
            return True
        return False

    def report(self):
        """The :class:`PlanReport` of this plan's steps, in module order."""
        report = PlanReport()
        for s in self._ordered_steps:
            runs = {shape: self._run_by(s, shape) for shape in s.shapes}
            report.append(LayerPlan(s.name, s.layers, s.density, s.kernel,
                                    {shape: k for shape, (k, _) in runs.items()},
                                    {shape: t for shape, (_, t) in runs.items()}))
        return report

    def _run_by(self, step, shape):
        """``(kernel, threads)`` that run ``step`` on inputs of ``shape``: 'expand+depthwise'
        and the fused kernel's threads where it runs fused with the other layer of its pair."""
        pair, which = self._pair_of.get(id(step), (None, 0))
        if pair is not None:
            outer = shape if which == 0 else pair.inner.get(shape)
            if outer is not None and pair.op.fused_for(outer):
                return FUSED_KERNEL, pair.op.threads_for(outer)
        return step.op.kernel_for(shape), step.op.threads_for(shape)


class _Run:
    """State of one call of a plan's root: fused outputs waiting for their absorbed layers."""

    def __init__(self, plan):
        self.plan = plan
        self.pending = {}

    def sequence(self, seq, x):
        """Sequential ``seq``'s forward within this run: its children in order, except the
        followers of a fused chain, which are not called at all (rather than called to hand
        the head's output back, as for other modules' chains): ~10 us less per fused layer,
        which a network of 50 small layers (MobileNetV2) notices. A prepared layer given an
        input of a shape it ran before goes straight to its step (what :meth:`call` would end
        up doing, without its lookups) unless calibration, profiling or progress is watching."""
        plan = self.plan
        direct = not _watched()
        for module, fused in plan.sequence(seq):
            if module.__class__ is _PairStep:
                x = module.run(self, x)
                continue
            step = plan.steps.get(id(module)) if direct else None
            if (step is not None and (fused or not step.followers)
                    and x.__class__ is np.ndarray and x.shape in step.shapes
                    and x.dtype == np.float32 and x.flags.c_contiguous):
                x = step(x)
            else:
                x = self.call(module, (x,), {}, fused)
        return x

    def call(self, module, args, kwargs, fused=False):
        """Run ``module`` (part of the plan's tree) on ``args`` within this run; ``fused``: the
        caller skips the followers of its step (see :meth:`sequence`)."""
        key = id(module)
        waiting = self.pending.get(key)
        if waiting and len(args) == 1 and not kwargs:
            for i, (out, _) in enumerate(waiting):
                if args[0] is out:
                    del waiting[i]
                    return out
        if key in self.plan.folded:
            raise RuntimeError(f"{self.plan.labels[key]}: this batch norm was folded into the "
                               f"preceding convolution when the model was prepared, but forward "
                               f"called it on another input; fix the module's _fusions")
        name = self.plan.labels[key]
        # an unbatched input, e.g. (C, H, W) for an image layer or model: run as a batch of
        # one and return the output without the batch dimension, as torch's layers do
        unbatched = (module._unbatched_ndim is not None and len(args) == 1 and not kwargs
                     and np.ndim(args[0]) == module._unbatched_ndim)
        if unbatched:
            args = (np.asarray(args[0])[None],)
        try:
            # looked up on the class: on a module without it, Module.__getattr__ would build
            # and raise an AttributeError, ~1.5 us for every container of every call
            if hasattr(module.__class__, "_check_input"):
                out = self._call_layer(module, args, kwargs, name, unbatched, fused)
            elif module._modules or not _local.profiles:
                out = module.forward(*args, **kwargs)
                if unbatched and isinstance(out, np.ndarray):
                    out = out[0]
            else:  # a leaf operation of a graph (Add, Concat, ...): profiled too
                t0 = time.perf_counter()
                out = module.forward(*args, **kwargs)
                shape = np.shape(args[0]) if args else ()
                _record(_local.profiles[-1], self.plan.names[key], module, None,
                        np.broadcast_to(np.int8(0), shape), out, time.perf_counter() - t0)
        except ValueError as exc:
            if isinstance(exc, LayerInputError):
                raise
            raise LayerInputError(f"{name}: {exc}") from exc
        if key in self.plan.owners:
            self._check_chains_done(module)
        if out.__class__ is PendingOutput and key in self.plan.residual_owners:
            out = out.result()  # the forward of a declared residual did not add it
        return out

    def _call_layer(self, layer, args, kwargs, name, unbatched=False, fused=False):
        if len(args) != 1 or kwargs:
            raise TypeError(f"{name}: expected one input array, got {len(args)} positional and "
                            f"{len(kwargs)} keyword arguments")
        step = self.plan.steps.get(id(layer))
        raw = args[0]
        if (step is not None and raw.__class__ is np.ndarray and raw.shape in step.shapes
                and raw.dtype == np.float32 and raw.flags.c_contiguous):
            # a float32 input of a shape this step already ran: every check below passed for
            # it and would pass again (they read only the shape and the prepared layers);
            # skipping them is ~30% of a MobileNetV2 call at 64x64
            x = raw
        else:
            x = self._checked_input(layer, raw, name, step)
        if step is not None:
            for observe in _local.observers:
                observe(self.plan.names[id(layer)], layer, x)
        profiles = _local.profiles
        t0 = time.perf_counter() if profiles else 0.0
        out = layer.forward(x) if step is None else step(x)
        progress = _local.progress if step is not None else None
        if progress is not None:
            progress.update()
        if profiles:
            _record(profiles[-1], self.plan.names[id(layer)], layer, step, x, out,
                    time.perf_counter() - t0)
        if unbatched:  # the followers of a fused chain are then called on this very view
            out = (out.result() if out.__class__ is PendingOutput else out)[0]
        if step is None or fused:
            return out
        for follower in step.followers:
            self.pending.setdefault(id(follower), []).append((out, step))
        return out

    def _checked_input(self, layer, raw, name, step):
        """``raw`` as the float32 C-contiguous array ``layer`` (prepared as ``step``) runs on,
        after the checks that name the layer when it does not fit."""
        if isinstance(raw, np.ndarray) and raw.dtype.kind == "f":
            # refuse a wrong shape before converting: a huge bad view must not be copied
            layer._check_input(raw, name)
            if step is not None and isinstance(step.op, Conv2dOp):
                self._check_pool(step, raw.shape)
                step.op.output_shape(raw.shape)
        x = as_float_array(raw, name)
        layer._check_input(x, name)
        self._check_pool(step, x.shape)
        return x

    def _check_pool(self, step, shape):
        """A fused pool refuses an input too small for it as the pool layer itself would,
        naming itself (the convolution's output it would have been given is never made)."""
        if step is not None and step.pool is not None:
            conv_out = np.broadcast_to(np.float32(0), step.op.conv_output_shape(shape))
            step.pool._check_input(conv_out, self.plan.labels[id(step.pool)])

    def _check_chains_done(self, owner):
        for key, waiting in self.pending.items():
            for _, step in waiting:
                if step.owner is owner:
                    raise RuntimeError(
                        f"{self.plan.labels[id(owner)]}: forward did not pass the output of "
                        f"{self.plan.labels[id(step.head)]} straight to "
                        f"{self.plan.labels[key]}, but the plan fused them "
                        f"({step.layers}); fix the module's _fusions")
