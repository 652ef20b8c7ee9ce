"""Prepared operators: weights converted once, kernels chosen per input shape.

A :class:`Conv2dOp` or :class:`LinearOp` owns a layer's weights, validates its arguments and
inputs, and for each input shape picks a kernel among those registered in
:mod:`fscnn.kernels` (the setting, or with ``kernel="auto"`` the fastest of the candidates
timed on that shape, so a prepared layer is never slower than its dense path) and keeps that
kernel's plan (converted weights, offsets, work split). Calls never re-convert weights; plans
are cached per (shape, threads, SIMD level).

:class:`QuantizedConv2dOp` and :class:`QuantizedLinearOp` are the same operators over int8
weights (:class:`QuantizedWeight`), run by the INT8 kernels of :mod:`fscnn.kernels.int8`.
"""
import contextlib
import threading
from collections import OrderedDict
from typing import NamedTuple, Optional

import numpy as np

from . import _config
from ._ext import _pool
from ._memory import aligned_empty
from ._validate import (activation_code, as_float_array, as_vector, is_int, pair,
                        threads_for)
from .kernels import (CONV, CONV_KERNELS, INT8_CONV, INT8_KERNELS, INT8_LINEAR, LINEAR,
                      LINEAR_KERNELS, runner)
from .kernels import depthwise_conv as _kernels_depthwise
from .kernels.base import INT32_MAX, ConvGeometry, OpError, timing_input
from ._timing import fastest_calls as _fastest_calls
from ._timing import typical_calls as _typical_calls
from .sparse import CSRMatrix, SparseConvWeight

KERNELS = CONV_KERNELS  # the kernel settings of convolutions (fscnn.kernels lists them)
# Below this fraction of zeros 'auto' does not consider the sparse *linear* kernel: SpMV/SpMM
# does not beat GEMM there, and converting a dense 100M-weight classifier costs seconds.
# Convolutions always time both: the direct kernel beats im2col+GEMM even on dense weights
# for few input channels (first layers) and depthwise layers.
AUTO_MIN_SPARSITY_LINEAR = 0.3
ONE_SHOT_SPARSITY = 0.7  # a one-shot call (nothing to amortise timing over) goes sparse above this
_MAX_PLANS = 16  # input shapes whose plans an operator keeps (least recently used dropped)
# 'auto' on several threads times the other candidates on one thread only where the winner
# on one thread came within this factor of its time on all (see _fewer_threads)
ONE_THREAD_PLAUSIBLE = 1.25
# 'auto' times a runner-up whose best call came within this factor of the winner's against
# it again at the next call (see _WeightedOp._second_look)
CLOSE_CALL = 1.25

__all__ = ["Conv2dOp", "ExpandDepthwiseOp", "LinearOp", "QuantizedConv2dOp", "QuantizedLinearOp",
           "QuantizedWeight", "OpError", "KERNELS", "LINEAR_KERNELS", "conv_padding",
           "one_shot_kernel"]


def _check_kernel(kernel, owner, kernels=KERNELS):
    if not isinstance(kernel, str) or kernel not in kernels:
        raise OpError(f"{owner}: kernel must be one of {kernels}, got {kernel!r}")
    return kernel


def one_shot_kernel(kernel, sparsity, owner, kernels=KERNELS):
    """Kernel for a call that is not repeated: by sparsity, without timing."""
    if _check_kernel(kernel, owner, kernels) != "auto":
        return kernel
    return "sparse" if sparsity >= ONE_SHOT_SPARSITY else "dense"


def conv_padding(padding, kernel_size, dilation, owner="conv2d", stride=(1, 1)):
    """Normalise ``padding`` to (top, bottom, left, right).

    Accepts an int, a pair (ph, pw), a 4-tuple (top, bottom, left, right), ``'valid'`` (no
    padding) or ``'same'`` (output size = input size at stride 1; an odd total goes to the
    bottom/right, as in PyTorch).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if tuple(stride) != (1, 1):
                raise OpError(f"{owner}: padding='same' is not supported for strided "
                              f"convolutions (as in PyTorch), got stride {tuple(stride)}")
            out = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise OpError(f"{owner}: padding must be an int, a pair, a 4-tuple, 'same' or 'valid', "
                      f"got {padding!r}")
    if not is_int(padding) and np.ndim(padding) == 1 and len(padding) == 4:
        if not all(is_int(p) for p in padding):
            raise TypeError(f"{owner}: padding must hold ints, got {padding!r}")
        if min(padding) < 0:
            raise OpError(f"{owner}: padding must be non-negative, got {padding!r}")
        return tuple(int(p) for p in padding)
    ph, pw = pair(padding, f"{owner}: padding", minimum=0)
    return (ph, ph, pw, pw)


def _weight_array(weight, owner, ndim, layout):
    w = np.asarray(weight)
    if w.dtype.kind not in "fiu":
        raise TypeError(f"{owner}: weight must be a real numeric array, got dtype {w.dtype}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != ndim or min(w.shape, default=0) < 1:
        raise OpError(f"{owner}: weight must be {ndim}-D {layout} with no empty dimension, got "
                      f"shape {w.shape}")
    return w


class _Plan(NamedTuple):
    """An operator's plan for one input shape: the geometry (a convolution's
    :class:`~fscnn.kernels.base.ConvGeometry`, a linear layer's input shape), the thread count
    and SIMD level it runs with, the kernel setting chosen, the kernel class running it, that
    kernel's own plan and, with ``kernel='auto'``, the timings of the candidates."""

    geo: object
    threads: int
    level: int
    kernel: str
    runner: type
    plan: object
    timings: Optional[dict]


_looking = threading.local()  # .on: this thread's calls take the second looks (second_looks)


@contextlib.contextmanager
def second_looks():
    """Within the block, this thread's calls of an operator whose plan was a close call of
    'auto' time it again (see ``_WeightedOp._second_look``); outside, the first call's choice
    stays, so that a model's later calls give the bits of its first. ``Module.prepare`` runs
    its second call in this block."""
    previous = getattr(_looking, "on", False)
    _looking.on = True
    try:
        yield
    finally:
        _looking.on = previous


class _SecondLook(NamedTuple):
    """What the call after the one that made a plan with 'auto' times again (see
    :meth:`_WeightedOp._second_look`): the winner and its plan on all the caller's threads
    (``name``, ``plan``), the runner-up and its plan (``runner``) where its best call came
    within ``CLOSE_CALL`` of the winner's (else None), and the candidates' best calls."""

    name: str
    plan: object
    runner: Optional[tuple]
    timings: dict


class _WeightedOp:
    """What Conv2dOp and LinearOp share: weights, bias, fused activation, kernel setting, the
    choice among the registered kernels (timed with 'auto'), the plan cache and the weights
    that kernels derive and plans share.

    Given dense weights, the op keeps them as a (O, K) array and builds the sparse form on
    first use. Given a sparse weight (CSRMatrix / SparseConvWeight), it keeps only that: the
    dense form is materialised transiently to time the dense candidate of ``kernel='auto'``
    (one op at a time) and kept only once a plan runs a kernel that reads it (see
    ``holds_dense``).
    """

    sparse_format = None  # CSRMatrix or SparseConvWeight, set by subclasses
    registry = ()  # the kernel classes of this kind of operator (fscnn.kernels)
    kernels = ()  # valid kernel settings
    min_auto_sparsity = 0.0  # below this 'auto' takes the dense kernel without timing

    def _init_weights(self, weight, bias, activation, kernel, name, ndim, layout):
        self.name = name
        self._dense_lock = threading.Lock()
        if isinstance(weight, self.sparse_format):
            weight.check_format(full=True)
            self._sparse = weight
            self._dense = None
            self.weight_shape = tuple(weight.shape)
            csr = weight.csr if isinstance(weight, SparseConvWeight) else weight
            self.nnz = int(np.count_nonzero(csr.data))
        else:
            dense = _weight_array(weight, name, ndim, layout)
            self._sparse = None
            self.weight_shape = dense.shape
            self._dense = dense.reshape(dense.shape[0], -1)
            self.nnz = int(np.count_nonzero(self._dense))
        self._init_common(bias, activation, kernel)

    def _init_common(self, bias, activation, kernel):
        """What every operator sets once ``name``, ``weight_shape`` and ``nnz`` are known: the
        bias, activation, kernel setting and the empty caches."""
        name = self.name
        self.size = int(np.prod(self.weight_shape))
        self.sparsity = 1.0 - self.nnz / self.size
        n_out = self.weight_shape[0]
        self.bias = None if bias is None else as_vector(bias, f"{name}: bias", n_out)
        self.activation = activation
        self.act_code = activation_code(activation, f"{name}: activation")
        self.kernel = _check_kernel(kernel, name, self.kernels)
        self._plans = OrderedDict()
        self._plans_lock = threading.Lock()
        self._last_plan = ((None, None, None), None)  # (key, plan) of the latest call: _plan
        self._derived = {}  # kernel name -> key -> weights derived for it (see derived)
        # (shape, threads, level) -> (kernel, threads it runs with) 'auto' takes untimed
        self._presets = {}
        # while 'auto' chooses (_choose), the transient dense form of sparse-held weights is
        # built once for all candidates' plans, on every thread count: VGG16's 25088x4096
        # classifier at 90% took 0.7 s per copy, six copies when prepared on 2 threads
        self._choosing, self._choice_dense = 0, None
        # (shape, threads, level) -> _SecondLook: the close calls of 'auto' (a runner-up near
        # the winner, or fewer threads than the caller's), until the next call times them again
        self._unconfirmed = {}
        self._dense_given = self._dense is not None  # else the dense form is built on demand

    @property
    def sparse(self):
        """The weights in the sparse format, converted on first use."""
        if self._sparse is None:
            self._sparse = self.sparse_format.from_dense(self._dense.reshape(self.weight_shape))
        return self._sparse

    @property
    def dense(self):
        """The weights as a dense float32 (O, K) array.

        The resident array when the op was given dense weights or a plan runs a kernel that
        reads them; otherwise a fresh copy made from the sparse weights on each access, not
        kept (but shared by the candidates' plans while 'auto' chooses a kernel).
        """
        dense = self._dense
        if dense is None:
            dense = self._choice_dense
        if dense is None:
            dense = self._densify()
            if self._choosing:
                self._choice_dense = dense
        return dense

    @property
    def holds_dense(self):
        """Whether the op keeps a dense (O, K) copy of its weights resident."""
        return self._dense is not None

    def _densify(self):
        return self._sparse.to_dense().reshape(self.weight_shape[0], -1)

    def _keep_dense(self, dense=None):
        """Make the dense form resident (a plan runs a kernel that reads it); return it."""
        with self._dense_lock:
            if self._dense is None:
                self._dense = self._densify() if dense is None else dense
            return self._dense

    def _resolve_kernels(self):
        """Which kernel class runs each setting on this layer (``_runners``) and why none can
        (``ineligible``: setting -> reason, None when one can)."""
        self.ineligible, self._runners = {}, {}
        for name in self.kernels[1:]:
            kernel, self.ineligible[name] = runner(self.registry, name, self)
            if kernel is not None:
                self._runners[name] = kernel

    def _candidates(self):
        """The kernel classes 'auto' times, in registry order (dense last, see _choose)."""
        return tuple(self._runners.values())

    def derived(self, kind, key, build, limit=None):
        """Weights that kernel ``kind`` derives from the op's (reordered values, transformed
        weights), shared by the plans of every input shape: ``build()`` on the first use of
        ``key``. At most ``limit`` are kept per kind (all dropped when one more is built), and
        a kind's are dropped once no cached plan runs that kernel."""
        with self._plans_lock:
            hit = self._derived.get(kind, {}).get(key)
        if hit is None:
            hit = build()
            with self._plans_lock:
                entries = self._derived.setdefault(kind, {})
                if limit is not None and len(entries) >= limit:
                    entries.clear()
                entries[key] = hit
        return hit

    def kernel_choices(self):
        """The kernels chosen so far, as ``[(input shape, threads, SIMD level, kernel), ...]``
        with a fifth item, the threads the kernel runs with, where 'auto' chose fewer than
        the caller's: what :meth:`preset_kernels` takes (pickles and archives carry them)."""
        with self._plans_lock:
            return [(key[0], key[1], key[2], plan.kernel)
                    + ((plan.threads,) if plan.threads != key[1] else ())
                    for key, plan in self._plans.items()]

    def threads_for(self, input_shape):
        """The threads the kernel for inputs of ``input_shape`` runs with at the current
        thread count: that count, or 1 where 'auto' found one thread faster."""
        self.check_input_shape(input_shape)
        return self._plan(tuple(input_shape)).threads

    def preset_kernels(self, choices):
        """Take ``[(input shape, threads, SIMD level, kernel[, run threads]), ...]``
        (:meth:`kernel_choices` of an op with the same weights, e.g. in the process that
        pickled the model) as the choices of ``kernel='auto'`` for those keys: a plan for one
        of them is built without timing the candidates. Other keys are timed as usual;
        kernels this op cannot run are ignored."""
        with self._plans_lock:
            for shape, threads, level, kernel, *run in choices:
                if kernel in self._runners:
                    run_threads = min(int(run[0]), int(threads)) if run else int(threads)
                    self._presets[(tuple(shape), int(threads), int(level))] = (
                        kernel, max(1, run_threads))

    def _plan(self, shape, confirm=False):
        """The plan for inputs of ``shape`` at the current threads and SIMD level, made (and
        with 'auto' timed) on first use. ``confirm``: a call that will run it; the first
        such call after the one whose timing was a close call (a runner-up near the winner,
        or fewer threads) times it again (:meth:`_second_look`) inside :func:`second_looks`
        (``Module.prepare``'s second call) and keeps the first choice elsewhere."""
        threads, level = _config.get_num_threads(), _config.simd_level_index()
        key = (tuple(shape), threads, level)
        last_key, last = self._last_plan  # one read: atomic against another thread's store
        if key == last_key:
            # the common case, a model called on the same shape again: no lock, no LRU
            # update (a plan is never invalidated, only evicted, and eviction leaves it usable)
            return last
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                look = self._unconfirmed.pop(key, None) if confirm else None
                if look is None:
                    if key not in self._unconfirmed:
                        self._last_plan = (key, plan)
                    return plan
        if plan is not None:
            if not getattr(_looking, "on", False):  # not inside prepare: the first choice stays
                self._last_plan = (key, plan)
                return plan
            return self._second_look(key, plan, look)
        plan = self._make_plan(shape, threads, level)
        with self._plans_lock:
            self._plans[key] = plan
            while len(self._plans) > _MAX_PLANS:
                self._unconfirmed.pop(self._plans.popitem(last=False)[0], None)
            if key not in self._unconfirmed:
                self._last_plan = (key, plan)
        return plan

    def _second_look(self, key, plan, look):
        """``plan`` (made by 'auto' for ``key``), or what a second timing, a call of the model
        later, finds faster (``look``: a :class:`_SecondLook`). A burst of load on a shared
        VM (a neighbour taking a vCPU for some milliseconds) slows whatever runs during it:

        - a runner-up within ``CLOSE_CALL`` of the winner is timed against it again, and the
          faster by the best call of both timings wins (noise only adds time). One op in 30
          timed a 90%-sparse 1x1 layer's sparse kernel at 0.73 ms (its calls take ~0.17) and
          picked the dense one (0.66);
        - a layer put on fewer threads than the caller's is timed there against the winner
          on all of them again, by medians, and keeps fewer only where that wins again: the
          burst slows the calls on several threads and not those on one. Timed once, a run of
          consecutive ResNet-50 layers went to one thread (3, 10 and 14 of its 54 layers in
          three fresh processes), each 1.4-1.8x slower there than on two."""
        x = timing_input(key[0])
        threads, geo = key[1], plan.geo
        name, wide, timings = look.name, look.plan, look.timings
        if look.runner is not None:
            other, other_plan = look.runner
            again = _fastest_calls(
                [lambda: self._execute(x, geo, threads, self._runners[name], wide),
                 lambda: self._execute(x, geo, threads, self._runners[other], other_plan)])
            timings = dict(timings)
            for n, t in zip((name, other), again):
                timings[n] = min(timings[n], t)
            if timings[other] < timings[name]:
                name, wide = other, other_plan
        kernel = self._runners[name]
        chosen = plan._replace(threads=threads, kernel=name, runner=kernel, plan=wide,
                               timings=timings)
        if plan.threads < threads:
            t_wide, t_few = _typical_calls(
                [lambda: self._execute(x, geo, threads, kernel, wide),
                 lambda: self._execute(x, geo, plan.threads, plan.runner, plan.plan)])
            if t_few < t_wide:
                chosen = plan._replace(timings=timings)
        with self._plans_lock:
            if key in self._plans:
                self._plans[key] = chosen
            self._last_plan = (key, chosen)
            reads_dense = any(p.runner.reads_dense for p in self._plans.values())
        if chosen.runner.reads_dense:
            self._keep_dense(chosen.plan.weights)
        elif not reads_dense and not self._dense_given:
            with self._dense_lock:
                self._dense = None  # built for the loser, which no plan runs now
        return chosen

    def _make_plan(self, shape, threads, level):
        geo = self._geometry(shape)
        name, kernel, plan, timings, threads = self._choose(geo, shape, threads, level)
        with self._plans_lock:
            # no plan runs the others: do not hold their copies of the weights
            running = {p.kernel for p in self._plans.values()} | {name}
            for kind in [k for k in self._derived if k not in running]:
                del self._derived[kind]
        return _Plan(geo, threads, level, name, kernel, plan, timings)

    def _choose(self, geo, shape, threads, level):
        """(setting, kernel class, its plan, timings, threads it runs with) for inputs of
        ``shape``: the setting, or with 'auto' the fastest of the candidates timed on a zero
        input (the sparse kernel only from ``min_auto_sparsity`` up; see
        :meth:`_choose_by_timing`)."""
        name, run_threads = self.kernel, threads
        if name == "auto":  # chosen before, by a process with the same threads and SIMD level
            name, run_threads = self._presets.get((tuple(shape), threads, level),
                                                  ("auto", threads))
        if name == "auto" and self.sparsity < self.min_auto_sparsity:
            name = "dense"
        if name == "auto":
            with self._plans_lock:
                self._choosing += 1
            try:
                name, kernel, plan, timings, run_threads = self._choose_by_timing(
                    geo, shape, threads, level)
            finally:
                with self._plans_lock:
                    self._choosing -= 1
                    if not self._choosing:
                        self._choice_dense = None
        else:
            kernel = self._runners[name]
            plan = kernel.plan(self, geo, run_threads, level)
            timings = None
        if kernel.reads_dense:
            self._keep_dense(plan.weights)
        return name, kernel, plan, timings, run_threads

    def _choose_by_timing(self, geo, shape, threads, level):
        """'auto': candidates planned in registry order, dense last, then timed round-robin
        (:func:`~fscnn._timing.fastest_calls`: a burst of load hits them all alike); the
        fastest wins. A kernel that reads the dense weights keeps them resident once picked
        (:meth:`_choose`); otherwise the transient dense form built to time it (sparse-held
        weights) is dropped with the losing plans. With more than one thread, the winner then
        runs on one thread where that is faster (see :meth:`_fewer_threads`)."""
        x = timing_input(shape)
        plans = {}
        candidates = [k for k in self._candidates() if k.cannot_win(self, geo) is None]
        for kernel in candidates or self._candidates():
            plans[kernel.name] = kernel, kernel.plan(self, geo, threads, level)
        timings = dict(zip(plans, _fastest_calls(
            [lambda k=k, p=p: self._execute(x, geo, threads, k, p)
             for k, p in plans.values()])))
        name = min(timings, key=timings.get)
        kernel, plan = plans[name]
        close = [n for n in sorted(timings, key=timings.get)[1:2]
                 if timings[n] < CLOSE_CALL * timings[name]]
        look = _SecondLook(name, plan, (close[0], plans[close[0]][1]) if close else None,
                           timings)
        run_threads = threads
        if threads > 1:
            name, run_threads, plan = self._fewer_threads(x, geo, threads, level, name, plans)
            kernel = self._runners[name]
        if close or run_threads < threads:
            with self._plans_lock:
                self._unconfirmed[(tuple(shape), threads, level)] = look
        return name, kernel, plan, timings, run_threads

    def _fewer_threads(self, x, geo, threads, level, name, plans):
        """``(kernel name, threads, plan)``: the winner on ``threads`` threads (``name``, its
        plan in ``plans``), or whichever candidate of ``plans`` runs faster on one thread, by
        the median of calls timed in turns: each call on several threads pays for waking the
        threads that slept since the previous one, a random delay that a minimum would leave
        out. On a shared VM whose idle vCPUs took ~0.1-1 ms to wake (a cross-CPU round trip
        of 0.26 ms median), 2 threads ran ResNet-50 2-3x slower than 1 where every layer took
        both (each layer's best calls were faster on 2). The next call that runs the layer
        times a choice of fewer threads again (:meth:`_second_look`).

        The winner is timed on one thread first; the other candidates only where that came
        within ``ONE_THREAD_PLAUSIBLE`` of its time on all threads: a kernel that lost on all
        threads would have to scale worse than the winner by more than that to win on one.
        Timing every candidate on one thread took ~3 of VGG16's 12 s of preparing on 2."""
        kernel, plan = plans[name]
        single = {name: kernel.plan(self, geo, 1, level)}
        t_all, t_one = _typical_calls([lambda: self._execute(x, geo, threads, kernel, plan),
                                       lambda: self._execute(x, geo, 1, kernel, single[name])])
        if t_one >= ONE_THREAD_PLAUSIBLE * t_all:
            return name, threads, plan
        single.update((n, k.plan(self, geo, 1, level)) for n, (k, _) in plans.items()
                      if n != name)
        times = _typical_calls(
            [lambda: self._execute(x, geo, threads, kernel, plan)]
            + [lambda k=plans[n][0], p=p: self._execute(x, geo, 1, k, p)
               for n, p in single.items()])
        best = min(range(len(times)), key=times.__getitem__)
        if best == 0:
            return name, threads, plan
        name = list(single)[best - 1]
        return name, 1, single[name]


class Conv2dOp(_WeightedOp):
    """A 2-D convolution with prepared weights and per-shape kernel choice.

    Parameters
    ----------
    weight : array of shape (O, C/groups, KH, KW) or SparseConvWeight
    bias : array of shape (O,) or None
    stride, dilation : int or pair
    padding : int, pair, (top, bottom, left, right), 'same' or 'valid'
    groups : int
    activation : None, 'relu' or 'relu6'
        Fused into the kernel epilogue.
    kernel : {'auto', 'sparse', 'dense', 'winograd', 'depthwise'}
        'auto' times the kernels on each new input shape and keeps the fastest. 'depthwise'
        needs one input channel per group. 'winograd' (F(4x4, 3x3)) needs a 3x3 kernel,
        stride 1, dilation 1 and groups 1; its float32 error is larger than the others' (still
        ~1e-5 of the output's scale on 512-channel layers), and a NaN or infinity in the input
        spreads to the whole 4x4 output tiles around it (infinities may turn into NaN). 'auto'
        times these two only on layers they can run.
    name : str
        Used in error messages (the layer's name in its model).
    pool : None or 'max2x2'
        'max2x2': the output is max-pooled with a 2x2 window and stride 2 (floor mode, as
        torch's ``MaxPool2d(2)``), after the activation. The sparse kernel pools each band of
        output rows while it is in cache; the others pool their full output.

    Examples
    --------
    >>> op = Conv2dOp(np.ones((8, 4, 3, 3), np.float32), padding=1, activation="relu")
    >>> op(np.ones((1, 4, 5, 5), np.float32)).shape
    (1, 8, 5, 5)
    """

    sparse_format = SparseConvWeight
    registry = CONV
    kernels = CONV_KERNELS

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, kernel="auto", name="conv2d", pool=None):
        self._init_weights(weight, bias, activation, kernel, name, 4, "(O, C/groups, KH, KW)")
        if pool not in (None, "max2x2"):
            raise OpError(f"{name}: pool must be None or 'max2x2', got {pool!r}")
        self.pool = pool
        O, Cg, KH, KW = self.weight_shape
        if not is_int(groups) or groups < 1:
            raise OpError(f"{name}: groups must be a positive int, got {groups!r}")
        if O % groups:
            raise OpError(f"{name}: groups={groups} must divide the {O} output channels")
        self.groups = int(groups)
        self.in_channels = Cg * self.groups
        self.stride = pair(stride, f"{name}: stride")
        self.dilation = pair(dilation, f"{name}: dilation")
        self.padding = conv_padding(padding, (KH, KW), self.dilation, name, self.stride)
        self._resolve_kernels()
        self.check_kernel(self.kernel)

    def check_kernel(self, kernel, owner=None):
        """Raise OpError when the kernel setting ``kernel`` cannot run this layer."""
        reason = self.ineligible.get(kernel)
        if reason:
            raise OpError(f"{owner or self.name}: kernel={kernel!r}: {reason}")

    def check_input_shape(self, shape):
        if len(shape) != 4:
            raise OpError(f"{self.name}: expected a 4-D input (N, C, H, W), got shape "
                          f"{tuple(shape)}")
        if not all(is_int(s) for s in shape) or min(shape) < 0:
            raise OpError(f"{self.name}: input shape must hold non-negative integer sizes, got "
                          f"{tuple(shape)}")
        if shape[1] != self.in_channels:
            raise OpError(f"{self.name}: expected {self.in_channels} input channels, got "
                          f"{shape[1]} (input shape {tuple(shape)})")

    def output_shape(self, input_shape):
        """(N, O, H_out, W_out) for an input of shape (N, C, H, W) (after the pool, if any)."""
        N, O, H, W = self.conv_output_shape(input_shape)
        if not self.pool:
            return (N, O, H, W)
        if min(H, W) < 2:
            raise OpError(f"{self.name}: the convolution's {H}x{W} output is smaller than the "
                          f"fused 2x2 max pool's window")
        return (N, O, H // 2, W // 2)

    def conv_output_shape(self, input_shape):
        """(N, O, H_out, W_out) of the convolution, before the pool (if any)."""
        self.check_input_shape(input_shape)
        g = ConvGeometry(self, input_shape)
        return (input_shape[0], self.weight_shape[0], g.H_out, g.W_out)

    def _geometry(self, shape):
        self.output_shape(shape)  # refuse an output too small for the pool before any timing
        return ConvGeometry(self, shape)

    def kernel_for(self, input_shape):
        """The kernel ('sparse', 'dense', 'winograd' or 'depthwise') used for inputs of
        ``input_shape``."""
        self.check_input_shape(input_shape)
        return self._plan(tuple(input_shape)).kernel

    def plan_info(self, input_shape):
        """Kernel chosen, the threads it runs with, timings measured (auto only: each
        candidate's best call on the caller's threads), geometry of ``input_shape``."""
        plan = self._plan(tuple(input_shape))
        return {"kernel": plan.kernel, "threads": plan.threads, "timings": plan.timings,
                "nnz": self.nnz,
                "sparsity": self.sparsity, "output_shape": self.output_shape(input_shape)}

    def _execute(self, x, geo, threads, kernel, plan, residual=None, res_act=0):
        """Run ``kernel``'s ``plan`` on ``x`` into a new output, and the pool (unless the kernel
        fuses it); ``residual`` (checked: see :meth:`_residual`) is added in the kernel's
        epilogue, or in one pass after a kernel that cannot add it."""
        N, O = x.shape[0], self.weight_shape[0]
        if self.pool and kernel.fuses_pool:
            out = aligned_empty((N, O, geo.H_out // 2, geo.W_out // 2))
            kernel.run(x, plan, out)
            return out
        out = aligned_empty((N, O, geo.H_out, geo.W_out))
        if residual is None:
            kernel.run(x, plan, out)
        elif kernel.adds_residual(plan):
            kernel.run(x, plan, out, residual, res_act)
        else:
            kernel.run(x, plan, out)
            if out.size:
                flat = out.reshape(-1)
                _pool.add(flat, residual.reshape(-1), flat, res_act,
                          _config.simd_level_index(), threads_for(out.size))
        if self.pool:
            pooled = aligned_empty((N, O, geo.H_out // 2, geo.W_out // 2))
            _pool.max_pool2d(out.reshape(N * O, geo.H_out, geo.W_out),
                             pooled.reshape(N * O, geo.H_out // 2, geo.W_out // 2),
                             2, 2, 2, 2, 0, 0, 1, 1, threads)
            return pooled
        return out

    def __call__(self, x, residual=None, residual_activation=None):
        """Convolve ``x`` of shape (N, C, H, W); returns float32 (N, O, H_out, W_out).

        ``residual``: an array of the output's shape added to the output after the fused
        activation, then ``residual_activation`` (None, 'relu', ...): a residual connection,
        ``residual_activation(act(conv(x) + bias) + residual)``. The sparse and pointwise
        kernels add it in their epilogue, while the output is in registers; the others in one
        pass after the kernel. Not with a fused pool."""
        if not (x.__class__ is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous):
            if isinstance(x, np.ndarray) and x.dtype.kind == "f":
                self.check_input_shape(x.shape)  # before converting: refuse huge bad views
                self._plan(x.shape)  # cheaply
            x = as_float_array(x, f"{self.name}: input")
        elif x.shape != self._last_plan[0][0]:  # else checked when that plan was made
            self.check_input_shape(x.shape)
        plan = self._plan(x.shape, confirm=True)
        if residual is None and residual_activation is None:
            return self._execute(x, plan.geo, plan.threads, plan.runner, plan.plan)
        code = activation_code(residual_activation, f"{self.name}: residual_activation")
        residual = self._residual(residual, (x.shape[0], self.weight_shape[0], plan.geo.H_out,
                                             plan.geo.W_out))
        return self._execute(x, plan.geo, plan.threads, plan.runner, plan.plan, residual, code)

    def _residual(self, residual, shape):
        """``residual`` as a float32 C-contiguous array of the convolution's output ``shape``,
        after the checks that keep the kernels' epilogues in bounds."""
        if (residual.__class__ is np.ndarray and residual.dtype == np.float32
                and residual.flags.c_contiguous and residual.shape == shape and not self.pool):
            return residual
        if residual is None:
            raise OpError(f"{self.name}: residual_activation given without a residual")
        if self.pool:
            raise OpError(f"{self.name}: a residual cannot be added to a convolution with a "
                          f"fused pool")
        if not (isinstance(residual, np.ndarray) and residual.dtype.kind == "f"):
            raise OpError(f"{self.name}: residual must be a float array of the output's shape "
                          f"{shape}, got {type(residual).__name__}"
                          + (f" of dtype {residual.dtype}" if hasattr(residual, "dtype") else ""))
        if residual.shape != shape:
            raise OpError(f"{self.name}: residual of shape {residual.shape} does not match the "
                          f"output's shape {shape}")
        return as_float_array(residual, f"{self.name}: residual")


class PendingOutput:
    """The output of a convolution, computed when first needed: what a prepared model's
    convolution returns where its output goes straight into a residual connection's add
    (``Module._residuals``), so that :func:`fscnn.functional.add` can have the kernel add the
    shortcut in its epilogue (:meth:`result` with the residual) instead of writing the output
    and reading it back in a separate pass. Read in any other way (``np.asarray``, any layer
    of fscnn) it is the plain output.

    Parameters
    ----------
    op : Conv2dOp
        Without a pool.
    x : ndarray
        The input, float32 and C-contiguous, of a shape ``op`` accepts.
    """

    __slots__ = ("op", "x", "_out")

    def __init__(self, op, x):
        self.op, self.x, self._out = op, x, None

    @property
    def shape(self):
        """The output's shape."""
        if self._out is not None:
            return self._out.shape
        geo = self.op._plan(self.x.shape).geo
        return (self.x.shape[0], self.op.weight_shape[0], geo.H_out, geo.W_out)

    def adds_in_epilogue(self):
        """Whether the kernel that computes it adds a residual in its epilogue (else in a
        pass after it): of two pending operands of one add, such a one takes the other."""
        plan = self.op._plan(self.x.shape) if self._out is None else None
        return plan is not None and plan.runner.adds_residual(plan.plan)

    def result(self, residual=None, activation=None):
        """The output, ``activation(output + residual)`` with a residual (computed once: a
        second call returns the first's result, and refuses another residual)."""
        if self._out is None:
            self._out = self.op(self.x) if residual is None else \
                self.op(self.x, residual, activation)
            self.x = None
        elif residual is not None:
            raise RuntimeError(f"{self.op.name}: the output was computed already, without "
                               f"the residual")
        return self._out

    def __array__(self, dtype=None, copy=None):
        out = self.result()
        return out if dtype is None else out.astype(dtype, copy=False)


class ExpandDepthwiseOp:
    """A 1x1 convolution and the depthwise convolution it feeds (MobileNet's expansion and
    depthwise layers), run as one kernel when that is faster: each work item computes one
    expanded channel in cache and convolves it there, so the expanded tensor (MobileNetV2's
    96x112x112: 4.8 MB) is never written out and read back.

    Whether it is faster depends on the layers' density and the plane sizes: the fused kernel
    computes the 1x1 layer a channel at a time (no register blocking over output channels, as
    the pointwise kernel has), so on dense layers the two separate kernels can win. Each new
    (input shape, threads, SIMD level) times both ways and keeps the faster, as
    ``kernel='auto'`` does for one layer.

    Parameters
    ----------
    expand, depthwise : Conv2dOp
        The two layers, each with its fused activation; see :meth:`ineligibility`.
    """

    def __init__(self, expand, depthwise):
        reason = self.ineligibility(expand, depthwise)
        if reason:
            raise OpError(f"{expand.name} and {depthwise.name}: {reason}")
        self.expand, self.depthwise = expand, depthwise
        self.name = f"{expand.name}+{depthwise.name}"
        self._plans = OrderedDict()  # (shape, threads, level) -> plan, or None: run unfused
        self._last_plan = (None, False)  # (key, plan) of the latest call, as Conv2dOp's
        # key -> the fused kernel's plan on all the caller's threads, where the plan put it on
        # fewer, until the next call times that again (as _WeightedOp._unconfirmed)
        self._unconfirmed = {}
        self._lock = threading.Lock()

    @staticmethod
    def ineligibility(expand, depthwise):
        """Why the two operators cannot run as one kernel, or None."""
        if type(expand) is not Conv2dOp or type(depthwise) is not Conv2dOp:
            return "both must be float convolutions"
        if expand.kernel != "auto" or depthwise.kernel != "auto":
            return "both kernel settings must be 'auto' (a fixed setting runs as set)"
        O, C, KH, KW = expand.weight_shape
        if ((KH, KW) != (1, 1) or expand.stride != (1, 1) or any(expand.padding)
                or expand.groups != 1 or expand.pool):
            return ("the first must be a 1x1 convolution with stride 1, no padding, groups 1 "
                    "and no pool")
        if depthwise.in_channels != O or depthwise.pool:
            return f"the second must take the first's {O} channels and have no pool"
        return depthwise.ineligible.get("depthwise")

    def fused_for(self, input_shape):
        """Whether inputs of ``input_shape`` run fused at the current threads and SIMD level
        (None: not timed yet)."""
        key = (tuple(input_shape), _config.get_num_threads(), _config.simd_level_index())
        with self._lock:
            plan = self._plans.get(key, False)
        return None if plan is False else plan is not None

    def _plan(self, shape):
        key = (shape, _config.get_num_threads(), _config.simd_level_index())
        last_key, last = self._last_plan  # one read: atomic against another thread's store
        if key == last_key:
            return last
        with self._lock:
            plan = self._plans.get(key, False)
            wide = self._unconfirmed.pop(key, None)
        if wide is not None and getattr(_looking, "on", False):
            # the fused kernel was put on fewer threads by the call that made the plan: time
            # that again now, as _WeightedOp._second_look does
            x = timing_input(shape)
            t_wide, t_few = _typical_calls([lambda: self._run(x, plan[0], wide),
                                            lambda: self._run(x, plan[0], plan[1])])
            if t_wide <= t_few:
                plan = (plan[0], wide, key[1])
            with self._lock:
                if key in self._plans:
                    self._plans[key] = plan
        if plan is not False:
            self._last_plan = (key, plan)
            return plan
        threads, level = key[1:]
        inner = self.expand.output_shape(shape)
        geo = self.depthwise._geometry(inner)
        plan = None  # an empty input or output has nothing to fuse
        if min(shape) > 0 and geo.H_out > 0 and geo.W_out > 0:
            # on the caller's threads, and on one as the layers may run (_fewer_threads)
            fused = {t: _kernels_depthwise.expand_depthwise_plan(self.expand, self.depthwise,
                                                                 geo, t, level)
                     for t in sorted({threads, 1}, reverse=True)}
            x = timing_input(shape)
            run_threads = self._fastest_way(
                lambda: self.depthwise(self.expand(x)),
                {t: (lambda p=p: self._run(x, geo, p)) for t, p in fused.items()})
            if run_threads is not None:
                plan = (geo, fused[run_threads], run_threads)
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > _MAX_PLANS:
                self._unconfirmed.pop(self._plans.popitem(last=False)[0], None)
            if plan is not None and plan[2] < threads:
                self._unconfirmed[key] = fused[threads]
            else:
                self._last_plan = (key, plan)
        return plan

    @staticmethod
    def _fastest_way(apart, fused):
        """The thread count of the fastest fused kernel (``fused``: threads -> call), or None
        where ``apart()`` (the two layers' own kernels, chosen by their own 'auto' in the
        untimed first call) beats them all, timed round-robin: by their best calls on one
        thread, by their median ones on several (see ``_WeightedOp._fewer_threads``)."""
        timed = _typical_calls if _config.get_num_threads() > 1 else _fastest_calls
        t_apart, *t_fused = timed([apart, *fused.values()])
        best = min(range(len(t_fused)), key=t_fused.__getitem__)
        return list(fused)[best] if t_fused[best] < t_apart else None

    def threads_for(self, input_shape):
        """The threads the fused kernel runs with on inputs of ``input_shape`` at the current
        threads and SIMD level, or None where the layers run apart or it was not timed yet
        (see :meth:`fused_for`)."""
        key = (tuple(input_shape), _config.get_num_threads(), _config.simd_level_index())
        with self._lock:
            plan = self._plans.get(key)
        return None if plan is None else plan[2]

    def _run(self, x, geo, plan):
        out = aligned_empty((x.shape[0], self.depthwise.weight_shape[0], geo.H_out, geo.W_out))
        _kernels_depthwise.DepthwiseConv.run(x, plan, out)
        return out

    def __call__(self, x):
        """Both layers on ``x`` (float32, C-contiguous, shape (N, C, H, W) with the 1x1
        layer's C: validated by the caller, as the layers' first call does)."""
        plan = self._plan(x.shape)
        if plan is None:
            return self.depthwise(self.expand(x))
        geo, fused, _ = plan
        return self._run(x, geo, fused)


class LinearOp(_WeightedOp):
    """A fully connected layer ``y = act(x @ W.T + b)`` with sparse or dense weights.

    Parameters
    ----------
    weight : array of shape (O, I) or CSRMatrix
    bias : array of shape (O,) or None
    activation : None, 'relu' or 'relu6'
    kernel : {'auto', 'sparse', 'dense'}
    name : str
    """

    sparse_format = CSRMatrix
    registry = LINEAR
    kernels = LINEAR_KERNELS
    min_auto_sparsity = AUTO_MIN_SPARSITY_LINEAR

    def __init__(self, weight, bias=None, activation=None, kernel="auto", name="linear"):
        self._init_weights(weight, bias, activation, kernel, name, 2, "(out_features, in_features)")
        self.out_features, self.in_features = self.weight_shape
        self._resolve_kernels()

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        return (input_shape[0], self.out_features)

    def check_input_shape(self, shape):
        if len(shape) != 2 or shape[1] != self.in_features:
            raise OpError(f"{self.name}: expected input (N, {self.in_features}), got shape "
                          f"{tuple(shape)}")

    def _geometry(self, shape):
        return tuple(shape)

    def kernel_for(self, input_shape):
        """The kernel ('sparse' or 'dense') used for inputs of ``input_shape``."""
        self.check_input_shape(input_shape)
        return self._plan(tuple(input_shape)).kernel

    def _execute(self, x, geo, threads, kernel, plan):
        out = np.empty((x.shape[0], self.out_features), dtype=np.float32)
        kernel.run(x, plan, out)
        return out

    def __call__(self, x):
        """Apply to ``x`` of shape (N, in_features); returns float32 (N, out_features)."""
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == 2:
            self.check_input_shape(x.shape)  # before converting: refuse huge bad views cheaply
        x = as_float_array(x, f"{self.name}: input", layout="NF")
        self.check_input_shape(x.shape)
        plan = self._plan(x.shape, confirm=True)
        return self._execute(x, plan.geo, plan.threads, plan.runner, plan.plan)


class QuantizedWeight(NamedTuple):
    """A quantized layer's weights and the quantization of its input.

    ``values``: int8 array of shape (O, ...) in [-127, 127] (symmetric, zero stays zero);
    ``scale``: float32 (O,), the weight of channel o is ``values[o] * scale[o]``;
    ``input_scale``: the input x is quantized to ``round(x / input_scale)`` (ties to even),
    clamped to [0, 255] when ``input_unsigned`` (a non-negative input, e.g. after a ReLU) and
    to [-127, 127] otherwise.
    """

    values: np.ndarray
    scale: np.ndarray
    input_scale: float
    input_unsigned: bool


def _positive_finite(value, what):
    """``value`` as float32, refused unless it and its reciprocal are positive and finite
    in float32 (a float64 scale may underflow to 0, or its inverse overflow)."""
    value = np.asarray(value)
    if value.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be a real number, got dtype {value.dtype}")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        v32 = value.astype(np.float32)
        ok = np.isfinite(v32) & (v32 > 0) & np.isfinite(np.float32(1) / v32)
    if not np.all(ok):
        raise OpError(f"{what} must be positive and finite in float32 (with a finite "
                      f"reciprocal), got {value}")
    return v32


class _QuantizedOp:
    """What QuantizedConv2dOp and QuantizedLinearOp share: int8 weights checked once, the
    per-channel output scale of the epilogue, and the INT8 kernel (the only setting; 'auto'
    runs it without timing).

    Attributes
    ----------
    qweight : int8 array of the weight's shape
    weight_scale : float32 (O,)
    input_scale : float
    input_unsigned : bool
    input_range : (lo, hi) of the quantized input
    scale : float32 (O,), ``float32(input_scale) * weight_scale``: acc * scale[o] + bias[o]
        is the float output of an int32 accumulator.
    """

    kernels = INT8_KERNELS

    def _init_weights(self, weight, bias, activation, kernel, name, ndim, layout):
        self.name = name
        self._dense_lock = threading.Lock()
        if not isinstance(weight, QuantizedWeight):
            raise TypeError(f"{name}: weight must be a QuantizedWeight, got "
                            f"{type(weight).__name__}")
        values = np.asarray(weight.values)
        if values.dtype.kind not in "iu":
            raise TypeError(f"{name}: quantized weight values must be integers, got dtype "
                            f"{values.dtype}")
        if values.ndim != ndim or min(values.shape, default=0) < 1:
            raise OpError(f"{name}: quantized weight must be {ndim}-D {layout} with no empty "
                          f"dimension, got shape {values.shape}")
        if values.size and (values.min() < -127 or values.max() > 127):
            raise OpError(f"{name}: quantized weight values must be in [-127, 127], got "
                          f"[{values.min()}, {values.max()}]")
        self.qweight = np.ascontiguousarray(values, dtype=np.int8)
        self.weight_shape = self.qweight.shape
        O = self.weight_shape[0]
        scale = np.asarray(weight.scale)
        if scale.shape != (O,):
            raise OpError(f"{name}: weight scale must have shape ({O},), got {scale.shape}")
        self.weight_scale = _positive_finite(scale, f"{name}: weight scale")
        self.input_scale = float(_positive_finite(weight.input_scale, f"{name}: input scale"))
        if not isinstance(weight.input_unsigned, (bool, np.bool_)):
            raise TypeError(f"{name}: input_unsigned must be a bool, got "
                            f"{weight.input_unsigned!r}")
        self.input_unsigned = bool(weight.input_unsigned)
        self.input_range = (0, 255) if self.input_unsigned else (-127, 127)
        rows = np.abs(self.qweight.reshape(O, -1).astype(np.int64)).sum(axis=1)
        if int(rows.max()) * self.input_range[1] > INT32_MAX:
            raise OpError(f"{name}: an output channel's sum of |int8 weights| "
                          f"({int(rows.max())}) times {self.input_range[1]} overflows the "
                          f"int32 accumulator")
        self.scale = np.float32(self.input_scale) * self.weight_scale
        self._sparse = self._dense = None
        self.nnz = int(np.count_nonzero(self.qweight))
        self._init_common(bias, activation, "int8" if kernel == "auto" else kernel)

    @property
    def dense(self):
        """The dequantized weights as a fresh float32 (O, K) array."""
        O = self.weight_shape[0]
        return self.qweight.reshape(O, -1).astype(np.float32) * self.weight_scale[:, None]

    @property
    def sparse(self):
        raise OpError(f"{self.name}: a quantized operator holds int8 weights, no float sparse "
                      f"form")


class QuantizedConv2dOp(_QuantizedOp, Conv2dOp):
    """A 2-D convolution over int8 weights (the INT8 kernel, :mod:`fscnn.kernels.int8`):
    float32 in, float32 out, the input quantized as the kernel packs it and the int32 sums
    dequantized, biased and activated in its epilogue.

    Parameters
    ----------
    weight : QuantizedWeight
        Values of shape (O, C/groups, KH, KW).
    bias, stride, padding, dilation, groups, activation, name, pool
        As for :class:`Conv2dOp` (the 2x2 max pool runs after the kernel).
    kernel : {'auto', 'int8'}
        Both run the INT8 kernel.
    """

    registry = INT8_CONV


class QuantizedLinearOp(_QuantizedOp, LinearOp):
    """A linear layer over int8 weights (see :class:`QuantizedConv2dOp`).

    Parameters
    ----------
    weight : QuantizedWeight
        Values of shape (out_features, in_features).
    bias, activation, name
        As for :class:`LinearOp`.
    kernel : {'auto', 'int8'}
    """

    registry = INT8_LINEAR
