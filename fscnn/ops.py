"""Prepared operators: weights converted once, kernels chosen per input shape.

A :class:`Conv2dOp` or :class:`LinearOp` owns a layer's weights in the form its kernels read
(compressed rows for the sparse kernel, a (O, K) matrix for the dense one), plans each input
shape once (input offsets, work split, scratch size) and, with ``kernel="auto"``, times the
candidate kernels on that shape and keeps the fastest, so a prepared layer is never slower than
its dense path. Calls never re-convert weights; plans are cached per (shape, threads, SIMD level).
"""
import functools
import threading
import time
from collections import OrderedDict

import numpy as np

from . import _blas, _config
from ._memory import aligned_empty, is_aligned
from ._ext import _conv, _linear, _pool
from .sparse import CSRMatrix, SparseConvWeight
from ._validate import activation_code, as_float_array, as_vector, is_int, pair

KERNELS = ("auto", "sparse", "dense", "winograd", "depthwise")
LINEAR_KERNELS = ("auto", "sparse", "dense")
# Below this fraction of zeros 'auto' does not consider the sparse *linear* kernel: SpMV/SpMM
# does not beat GEMM there, and converting a dense 100M-weight classifier costs seconds.
# Convolutions always time both: the direct kernel beats im2col+GEMM even on dense weights
# for few input channels (first layers) and depthwise layers.
AUTO_MIN_SPARSITY_LINEAR = 0.3
ONE_SHOT_SPARSITY = 0.7  # a one-shot call (nothing to amortise timing over) goes sparse above this
_INT32_MAX = np.iinfo(np.int32).max
# input window per tile that channel blocking keeps in cache (L1 and the nearest of L2): with
# aligned loads 64 KiB ran VGG16's 3x3 layers at 90% 1.2-1.5x faster than 32 KiB (fewer
# accumulator round trips per non-zero), 4 MiB (no blocking) 1.3x slower
_WINDOW_BYTES = 64 * 1024
_MAX_PLANS = 16  # input shapes whose plans an operator keeps (least recently used dropped)
# Winograd F(4x4, 3x3), interpolation points 0, 1, -1, 1/2, -1/2, infinity (see winograd.h,
# which holds B^T and A^T): the weight transform U = G g G^T, computed in float64.
WINOGRAD_G = np.array([[4, 0, 0], [2 / 3, 2 / 3, 2 / 3], [2 / 3, -2 / 3, 2 / 3],
                       [-8 / 3, -4 / 3, -2 / 3], [-8 / 3, 4 / 3, -2 / 3], [0, 0, 1]])
# Tiles per Winograd chunk: the chunk's transformed input and output (36*(C+O)*chunk floats)
# are kept within this many bytes (the 2 MB L2 of the machines fscnn is tuned on).
_WINOGRAD_CHUNK_BYTES = 2 << 20
_WINOGRAD_U_FACTOR = 1.0
_WINOGRAD_MIN_CHUNK = 16


class OpError(ValueError):
    """Invalid operator argument or input (subclass of ValueError)."""


def _check_kernel(kernel, owner, kernels=KERNELS):
    if not isinstance(kernel, str) or kernel not in kernels:
        raise OpError(f"{owner}: kernel must be one of {kernels}, got {kernel!r}")
    return kernel


def winograd_ineligibility(weight_shape, stride, dilation, groups):
    """Why the Winograd kernel cannot run a convolution, or None when it can: it needs a
    3x3 kernel, stride 1, dilation 1 and groups 1 (any padding)."""
    KH, KW = weight_shape[2:]
    problems = []
    if (KH, KW) != (3, 3):
        problems.append(f"a 3x3 kernel (got {KH}x{KW})")
    if tuple(stride) != (1, 1):
        problems.append(f"stride 1 (got {tuple(stride)})")
    if tuple(dilation) != (1, 1):
        problems.append(f"dilation 1 (got {tuple(dilation)})")
    if groups != 1:
        problems.append(f"groups=1 (got {groups})")
    return "the Winograd kernel needs " + ", ".join(problems) if problems else None


def depthwise_ineligibility(weight_shape, stride, dilation, groups):
    """Why the depthwise kernel cannot run a convolution, or None when it can: it needs one
    input channel per group (groups = input channels; any kernel size, stride, dilation,
    padding and channel multiplier)."""
    if weight_shape[1] != 1:
        return (f"the depthwise kernel needs one input channel per group (groups = input "
                f"channels), got {weight_shape[1]} per group")
    return None


# Kernels that run only some convolutions: name -> function giving the reason it cannot run one
RESTRICTED_KERNELS = {"winograd": winograd_ineligibility, "depthwise": depthwise_ineligibility}


def kernel_ineligibility(kernel, weight_shape, stride, dilation, groups):
    """Why ``kernel`` cannot run a convolution of this geometry, or None when it can."""
    check = RESTRICTED_KERNELS.get(kernel)
    return None if check is None else check(weight_shape, stride, dilation, groups)


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


def _time_call(fn, repeats=3):
    fn()  # warm-up (page faults, caches)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _balanced_blocks(indptr, n_blocks):
    """Split rows into ``n_blocks`` contiguous blocks of about equal non-zeros (+1 per row, so
    empty rows still spread). Returns block boundaries, int64 of length n_blocks + 1."""
    n_rows = indptr.shape[0] - 1
    work = indptr[1:] + np.arange(1, n_rows + 1)
    targets = work[-1] * np.arange(1, n_blocks) / n_blocks
    cuts = np.searchsorted(work, targets, side="left") + 1
    bounds = np.unique(np.concatenate(([0], np.clip(cuts, 0, n_rows), [n_rows])))
    return bounds.astype(np.int64)


_workspace = threading.local()
_NO_BUFFER = np.zeros(1, np.float32)  # the scratch argument of kernels that read x in place


def _scratch(slot, shape):
    """A float32 scratch array of ``shape`` reused across calls of the same Python thread,
    64-byte aligned.

    Scratch is per thread, so concurrent calls never share it, and reusing it avoids the page
    faults of a fresh multi-megabyte allocation on every call. Contents are undefined."""
    size = int(np.prod(shape))
    buf = getattr(_workspace, slot, None)
    if buf is None or buf.size < size:
        buf = aligned_empty(max(size, 1))
        setattr(_workspace, slot, buf)
    return buf[:size].reshape(shape)


# The aligned layout of the sparse kernel computes more positions (padded rows); it is used
# unless that is more than this factor over the plain layout's. Aligned loads ran the kernel
# 1.2-1.5x faster on VGG16's layers; a 7x7 output has rows of 9 floats padded to 16 (2x).
_ALIGNED_WORK_LIMIT = 1.3


def _computed_positions(lay, level):
    """Positions the sparse kernel computes per channel with layout ``lay``: its flat output
    in whole tiles, the better of the full and the half tile."""
    return min(-(-lay["L"] // t) * t for t in (_conv.tile_size(level, False),
                                               _conv.tile_size(level, True)))


def _tap_positions(Cg, KH, KW, dilation, stride, one_phase, plane, Wq):
    """(Cg*KH*KW,) int64: position of each tap (ci, kh, kw) of group 0 in an input packed
    into phase planes ``plane`` floats apart with rows of ``Wq`` floats (see conv_pack.h)."""
    (dh, dw), (sh, sw) = dilation, stride
    phases = 1 if one_phase else sh * sw
    ci, kh, kw = np.meshgrid(np.arange(Cg), np.arange(KH), np.arange(KW), indexing="ij")
    ah, aw = kh * dh, kw * dw
    py, px = (0, 0) if one_phase else (ah % sh, aw % sw)
    tap = (ci * phases + py * sw + px) * plane + (ah // sh) * Wq + aw // sw
    return tap.reshape(-1).astype(np.int64)


def _check_offsets_fit(name, input_shape, packed, L):
    """Raise OpError unless every position the kernels form for an input packed into
    ``packed`` floats with a flat output of ``L`` positions fits a 32-bit offset."""
    if packed + 2 * L + 4096 > _INT32_MAX:
        raise OpError(f"{name}: input of shape {input_shape} is too large for 32-bit offsets "
                      f"({packed + L} positions per image)")


class _ConvGeometry:
    """Everything about one input shape that the kernels need (see conv_pack.h).

    Sizes are computed with Python ints and checked against 32-bit offsets before any array
    is built. A dimension with a single output uses stride 1 (the stride is then irrelevant and
    a huge one would only multiply phase planes)."""

    def __init__(self, op, C, H, W):
        pt, pb, pl, pr = op.padding
        (sh, sw), (dh, dw) = op.stride, op.dilation
        O, Cg, KH, KW = op.weight_shape
        Hp, Wp = H + pt + pb, W + pl + pr
        if Hp < dh * (KH - 1) + 1 or Wp < dw * (KW - 1) + 1:
            raise OpError(f"{op.name}: padded input {Hp}x{Wp} is smaller than the dilated "
                          f"kernel {dh * (KH - 1) + 1}x{dw * (KW - 1) + 1}")
        self.H_out = (Hp - dh * (KH - 1) - 1) // sh + 1
        self.W_out = (Wp - dw * (KW - 1) - 1) // sw + 1
        sh, sw = (1 if self.H_out == 1 else sh), (1 if self.W_out == 1 else sw)
        self.stride = (sh, sw)
        # An unpadded 1x1 layer reads phase (0, 0) only: pack just that one. With stride 1 it
        # reads its input in place: the input already is the packed layout, without the extra
        # row that keeps the reads of wider kernels in bounds (the sparse kernel moves its last
        # tile back instead, see spconv_impl.h).
        self.one_phase = KH == KW == 1 and not any(op.padding)
        self.in_place = self.one_phase and (self.H_out, self.W_out) == (H, W)
        self.Hq = self.H_out + (0 if self.in_place else (dh * (KH - 1)) // sh + 1)
        self.Wq = self.W_out + (dw * (KW - 1)) // sw
        phases = 1 if self.one_phase else sh * sw
        plane = self.Hq * self.Wq
        self.group_stride = Cg * phases * plane
        self.L = self.H_out * self.Wq
        self.packed = C * phases * plane
        self.input_shape = (C, H, W)
        _check_offsets_fit(op.name, self.input_shape, self.packed, self.L)
        # what tap_offsets needs (not the op itself: its plans hold this object)
        self._taps = (Cg, KH, KW, op.dilation, plane, op.groups)

    @functools.cached_property
    def tap_offsets(self):
        """(Cg*KH*KW,) int64: position of each tap (ci, kh, kw) of group 0 in the packed
        input. Built on first use (by a plan): every layer call checks its input shape with
        this class, and building them took ~120 us on a 512-channel 3x3 layer."""
        Cg, KH, KW, dilation, plane, _ = self._taps
        return _tap_positions(Cg, KH, KW, dilation, self.stride, self.one_phase, plane, self.Wq)

    @functools.cached_property
    def max_tap(self):
        return int(self.tap_offsets.max()) + (self._taps[-1] - 1) * self.group_stride

    def scratch(self, reach, packed=None, max_tap=None):
        """A packed-input buffer readable up to ``max_tap + reach``, tail zeroed (this
        geometry's packed size and largest tap unless given)."""
        packed = self.packed if packed is None else packed
        max_tap = self.max_tap if max_tap is None else max_tap
        buf = _scratch("packed", (max(packed, max_tap + reach) + 64,))
        buf[packed:] = 0.0
        return buf


class _WeightedOp:
    """What Conv2dOp and LinearOp share: weights, bias, fused activation, kernel setting and
    timing of candidate kernels.

    Given dense weights, the op keeps them as a (O, K) array and builds the sparse form on
    first use. Given a sparse weight (CSRMatrix / SparseConvWeight), it keeps only that: the
    dense form is materialised transiently to time the dense candidate of ``kernel='auto'``
    (one op at a time) and kept only once a plan picks the dense kernel (see ``holds_dense``).
    """

    sparse_format = None  # CSRMatrix or SparseConvWeight, set by subclasses
    kernels = KERNELS  # valid kernel settings

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
        self.size = int(np.prod(self.weight_shape))
        self.sparsity = 1.0 - self.nnz / self.size
        n_out = self.weight_shape[0]
        self.bias = None if bias is None else as_vector(bias, f"{name}: bias", n_out)
        self.activation = activation
        self.act_code = activation_code(activation, f"{name}: activation")
        self.kernel = _check_kernel(kernel, name, self.kernels)

    @property
    def sparse(self):
        """The weights in the sparse format, converted on first use."""
        if self._sparse is None:
            self._sparse = self.sparse_format.from_dense(self._dense.reshape(self.weight_shape))
        return self._sparse

    @property
    def dense(self):
        """The weights as a dense float32 (O, K) array.

        The resident array when the op was given dense weights or a plan chose the dense
        kernel; otherwise a fresh copy made from the sparse weights on each access, not kept.
        """
        dense = self._dense
        return dense if dense is not None else self._densify()

    @property
    def holds_dense(self):
        """Whether the op keeps a dense (O, K) copy of its weights resident."""
        return self._dense is not None

    def _densify(self):
        return self._sparse.to_dense().reshape(self.weight_shape[0], -1)

    def _keep_dense(self, dense=None):
        """Make the dense form resident (a plan picked the dense kernel); return it."""
        with self._dense_lock:
            if self._dense is None:
                self._dense = self._densify() if dense is None else dense
            return self._dense

    min_auto_sparsity = 0.0  # below this 'auto' takes the dense kernel without timing

    def _candidates(self):
        """Kernels 'auto' times, dense last (see _pick)."""
        return ("sparse", "dense")

    def _pick(self, x, run):
        """(kernel, timings) for input ``x``: the setting, or with 'auto' the fastest of the
        candidates timed on ``x`` (the sparse kernel only from ``min_auto_sparsity`` up).

        ``run(x, kernel, dense)`` runs one kernel, the dense one on the (O, K) ``dense``. The
        dense form is made resident when the dense kernel is picked; a transient one made for
        timing (the last candidate, so it is never alive with another kernel's set-up) is
        dropped otherwise."""
        if self.kernel != "auto":
            if self.kernel == "dense":
                self._keep_dense()
            return self.kernel, None
        if self.sparsity < self.min_auto_sparsity:
            self._keep_dense()
            return "dense", None
        times, dense = {}, None
        for k in self._candidates():
            if k == "dense":
                dense = self.dense
            times[k] = _time_call(lambda: run(x, k, dense))
        choice = min(times, key=times.get)
        if choice == "dense":
            self._keep_dense(dense)
        return choice, times


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
        # kernel name -> why it cannot run this layer (None: it can)
        self.ineligible = {k: kernel_ineligibility(k, self.weight_shape, self.stride,
                                                   self.dilation, self.groups)
                           for k in RESTRICTED_KERNELS}
        self.check_kernel(self.kernel)
        self._winograd_u = None  # (36, O, C) transformed weights, built when first planned
        self._sparse_orders = {}  # sparse kernel's non-zero order -> (values, segment pointers)
        self._plans = OrderedDict()
        self._plans_lock = threading.Lock()

    def check_kernel(self, kernel, owner=None):
        """Raise OpError when the kernel setting ``kernel`` cannot run this layer."""
        reason = self.ineligible.get(kernel)
        if reason:
            raise OpError(f"{owner or self.name}: kernel={kernel!r}: {reason}")

    def _candidates(self):
        return tuple(k for k in ("depthwise", "sparse", "winograd", "dense")
                     if not self.ineligible.get(k))

    def _winograd_weights(self):
        """U = G g G^T as (36, O, C) float32, alpha^2 index a = 6*k + l; built on first use."""
        u = self._winograd_u
        if u is None:
            O, C = self.weight_shape[:2]
            g = self.dense.reshape(self.weight_shape).astype(np.float64)
            u = np.einsum("ki,ocij,lj->kloc", WINOGRAD_G, g, WINOGRAD_G)
            u = np.ascontiguousarray(u.reshape(36, O, C), dtype=np.float32)
            self._winograd_u = u
        return u

    # -- planning ---------------------------------------------------------------------------
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
        g = _ConvGeometry(self, *input_shape[1:])
        return (input_shape[0], self.weight_shape[0], g.H_out, g.W_out)

    def _plan(self, shape):
        threads, level = _config.get_num_threads(), _config.simd_level_index()
        key = (tuple(shape), threads, level)
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = self._make_plan(shape, threads, level)
        with self._plans_lock:
            self._plans[key] = plan
            while len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)
        return plan

    def _make_plan(self, shape, threads, level):
        N, C, H, W = shape
        self.output_shape(shape)  # refuse an output too small for the pool before any timing
        geo = _ConvGeometry(self, C, H, W)
        plan = {"geo": geo, "threads": threads, "level": level, "sparse": None}
        # dense kernel: chunks of the flat output with a (K, chunk) panel of ~1 MiB, at least
        # 128 positions (every chunk streams all the weights: 4.4 ms with 32 positions, 3.9
        # with 64 or more on a 512x512 3x3 layer at 7x7, 10.8 ms with 64 and 9.4 with 224 at
        # 14x14), and no more chunks than threads need
        K = self.size // self.weight_shape[0]
        chunk = int(np.clip((1 << 18) // K, 128, 4096)) // 16 * 16
        plan["chunk"] = max(16, min(chunk, -(-geo.L // max(1, threads)) + 15 & ~15))
        plan["tap_offsets"] = geo.tap_offsets.astype(np.int32)
        if self.kernel in ("dense", "auto") and self._pointwise_ok():
            plan["pointwise"] = self._pointwise_plan(geo, shape, threads, level,
                                                     timed=self.kernel == "auto")
        if self.kernel in ("sparse", "auto"):
            plan["sparse"] = self._sparse_plan(geo, threads, level)
        if self.kernel in ("winograd", "auto") and not self.ineligible["winograd"]:
            plan["winograd"] = self._winograd_plan(geo, C)
        if self.kernel in ("depthwise", "auto") and not self.ineligible["depthwise"]:
            plan["depthwise"] = self._depthwise_plan(geo, threads, level)
        x = np.zeros(shape, np.float32) if self.kernel == "auto" else None
        plan["kernel"], plan["timings"] = self._pick(x, lambda x, k, d: self._run(x, plan, k, d))
        if plan["kernel"] != "sparse":
            plan["sparse"] = None
            with self._plans_lock:
                if not any(p["sparse"] for p in self._plans.values()):
                    self._sparse_orders.clear()  # no plan runs it: do not hold the values twice
        if plan["kernel"] != "depthwise":
            plan.pop("depthwise", None)
        if plan["kernel"] != "dense":
            plan.pop("pointwise", None)
        if plan["kernel"] != "winograd" and "winograd" in plan:
            del plan["winograd"]
            with self._plans_lock:
                if not any("winograd" in p for p in self._plans.values()):
                    self._winograd_u = None  # no plan runs it: do not hold 4x the weights
        return plan

    def _winograd_plan(self, geo, C):
        """Chunk of tiles per work item and scratch shape of the Winograd kernel. The chunk
        depends on the layer's shape only (not on the thread count), so results do not either."""
        O = self.weight_shape[0]
        tiles_w = -(-geo.W_out // 4)
        T = tiles_w * -(-geo.H_out // 4)
        # Each chunk's 36 GEMMs stream all of U (36*O*C floats) from memory: chunks must also
        # be long enough that this costs no more per tile than the chunk's own V and M
        # (36*(C+O) floats per tile), hence at least O*C/(C+O) tiles, even past L2.
        cap = max(_WINOGRAD_MIN_CHUNK, _WINOGRAD_CHUNK_BYTES // (36 * 4 * (C + O)),
                  int(_WINOGRAD_U_FACTOR * O * C / (C + O)))
        n_chunks = -(-T // cap)
        chunk = -(-T // n_chunks)  # equal chunks
        self._winograd_weights()
        return {"chunk": chunk,
                "work": (chunk * 36 * (C + O) + _conv.winograd_tmp_len(tiles_w) + 64,)}

    def _pointwise_ok(self):
        """Whether the dense kernel runs as the pointwise GEMM (1x1, groups 1)."""
        return self.weight_shape[2:] == (1, 1) and self.groups == 1

    def _pointwise_plan(self, geo, shape, threads, level, timed):
        """Packed weights and work split of the pointwise kernel (pointwise.h). ``timed``:
        time every tile-shape variant on ``shape`` and keep the fastest (they give
        bit-identical results); otherwise take the first."""
        dense = self.dense  # transient for sparse-held weights: the packed copy replaces it
        n_variants = len(_conv.pointwise_variants(level))
        if not timed or n_variants == 1:
            return self._pointwise_variant(geo, threads, level, 0, dense)
        x = np.zeros(shape, np.float32)
        best, best_t = None, np.inf
        for v in range(n_variants):
            pw = self._pointwise_variant(geo, threads, level, v, dense)
            t = _time_call(lambda: self._run_pointwise(x, geo, pw, level, threads), repeats=2)
            if t < best_t:
                best, best_t = pw, t
        return best

    def _pointwise_variant(self, geo, threads, level, v, dense):
        """Plan of variant ``v`` of the pointwise kernel: weights packed (O/MR, K, MR), the
        last block padded with zero rows."""
        O, K = self.weight_shape[:2]
        mr, T = _conv.pointwise_variants(level)[v]
        n_blk = -(-O // mr)
        wpack = np.zeros((n_blk * mr, K), np.float32)
        wpack[:O] = dense
        wpack = np.ascontiguousarray(wpack.reshape(n_blk, mr, K).transpose(0, 2, 1))
        n_tiles = -(-geo.L // T)
        # enough items for the threads: chunks of output-channel blocks when tiles are few
        n_bchunks = 1 if n_tiles >= 4 * threads else min(n_blk, -(-4 * threads // n_tiles))
        return {"variant": v, "wpack": wpack, "n_bchunks": n_bchunks, "small": ((K + O) * T,)}

    def _run_pointwise(self, x, geo, pw, level, threads, out=None):
        if out is None:
            out = aligned_empty((x.shape[0], self.weight_shape[0], geo.H_out, geo.W_out))
        pt, _, pl, _ = self.padding
        sh, sw = geo.stride
        _conv.pointwise_conv2d(x, pw["wpack"], self.bias,
                               _NO_BUFFER if geo.in_place else geo.scratch(geo.L),
                               _scratch("small", pw["small"]), out, pt, pl, sh, sw, geo.Hq,
                               geo.Wq, pw["n_bchunks"], self.act_code, level, pw["variant"],
                               not geo.in_place, geo.one_phase, threads)
        return out

    def _depthwise_plan(self, geo, threads, level):
        """Tap offsets within one channel's packed planes (zero taps dropped) and scratch."""
        csr = self.sparse.csr
        T = _conv.depthwise_tile_size(level)
        planes = (1 if geo.one_phase else geo.stride[0] * geo.stride[1]) * geo.Hq * geo.Wq
        return {"ptr": csr.indptr.astype(np.int64),
                "offsets": geo.tap_offsets[csr.indices.astype(np.int64)].astype(np.int32),
                "tail": (planes, planes + T + 16),
                "work": (threads, planes + T + 16 + geo.L + T)}

    def _sparse_layout(self, geo, VL):
        """How the sparse kernel packs the input: every row (plane, for a 1x1 layer) starts on
        a multiple of ``VL`` floats, so that with VL the vector length the kernel's loads are
        all aligned (1.75x the rate of unaligned ones, which split cache lines: see
        spconv_impl.h); VL 1 is the plain layout.

        A 3x3 layer's rows of Wq floats are padded to a whole number of vectors (the padding
        columns are computed and dropped, as the Wq - W_out columns already are). An unpadded
        1x1 layer (not pool-fused) is computed as one flat row per channel: planes of
        H_out*W_out floats rounded up to a vector, no padding columns; with stride 1 and a
        plane that is a whole number of vectors its input is read in place. Hq and Wq are the
        packed rows (for a flat layer, the output's rows, packed contiguously), Wc the row
        length the kernel computes, Hc*Wc == L positions."""
        up = lambda n: -(-n // VL) * VL
        lay = {"VL": VL, "flat": geo.one_phase and not self.pool}
        if lay["flat"]:
            hw = geo.H_out * geo.W_out
            lay.update(Hq=geo.H_out, Wq=geo.W_out, plane=up(hw), Hc=1, Wc_len=hw)
            lay["Wc"] = lay["plane"]
            lay["in_place"] = geo.in_place and lay["plane"] == hw
        else:
            lay.update(Hq=geo.Hq, Wq=up(geo.Wq), Hc=geo.H_out, Wc_len=geo.W_out, in_place=False)
            lay.update(plane=lay["Hq"] * lay["Wq"], Wc=lay["Wq"])
        _, Cg, KH, KW = self.weight_shape
        sh, sw = geo.stride
        phases = 1 if geo.one_phase else sh * sw
        lay["taps"] = _tap_positions(Cg, KH, KW, self.dilation, geo.stride, geo.one_phase,
                                     lay["plane"], lay["Wq"])
        lay["group_stride"] = Cg * phases * lay["plane"]
        lay["packed"] = self.in_channels * phases * lay["plane"]
        lay["L"] = lay["Hc"] * lay["Wc"]
        return lay

    def _sparse_plan(self, geo, threads, level):
        """Packed layout (_sparse_layout), the non-zeros grouped per (output channel, input-
        channel block, residue), tile size and work split.

        A non-zero at packed position ``a + r`` (``a`` a multiple of the vector length, r the
        residue) is stored as ``a``; the kernel loads aligned vectors at ``a`` and shifts the
        sum of its residue's segment by r lanes (spconv_impl.h)."""
        csr = self.sparse.csr
        O, Cg, KH, KW = self.weight_shape
        lay = self._sparse_layout(geo, _conv.vector_len(level))
        plain = self._sparse_layout(geo, 1)
        if _computed_positions(lay, level) > _ALIGNED_WORK_LIMIT * _computed_positions(plain,
                                                                                       level):
            lay = plain  # small planes: padding the rows would more than undo aligned loads
        VL = lay["VL"]
        rows = np.repeat(np.arange(O, dtype=np.int64), np.diff(csr.indptr))
        idx = csr.indices.astype(np.int64)
        pos = lay["taps"][idx] + (rows // (O // self.groups)) * lay["group_stride"]
        _check_offsets_fit(self.name, geo.input_shape, lay["packed"], lay["L"])
        residue = pos % VL
        R = int(residue.max()) + 1 if residue.size else 1
        # the half tile when it computes at least 3% fewer positions (past the end of the flat
        # output): a full tile streams the weights half as often, and on ResNet-50's 56x56 1x1
        # layers (3136 positions, 2% fewer with half tiles) it was 5-8% faster at 90%
        full, half_t = _conv.tile_size(level, False), _conv.tile_size(level, True)
        half = -(-lay["L"] // half_t) * half_t < 0.97 * (-(-lay["L"] // full) * full)
        T = half_t if half else full
        n_tiles = -(-lay["L"] // T)
        n_blocks = 1 if n_tiles >= 8 * threads else min(O, -(-8 * threads // n_tiles))
        oblk = _balanced_blocks(csr.indptr, n_blocks)
        # input-channel blocks: one tile's window of a block (KH kernel rows of T + a vector
        # of floats per phase plane and channel) fits in _WINDOW_BYTES
        (sh, sw), dw = geo.stride, self.dilation[1]
        window = KH * min(KW, sw) * (T + VL + (dw * (KW - 1)) // sw) * 4
        ncb = -(-Cg // max(1, _WINDOW_BYTES // window))
        cb = -(-Cg // ncb)  # equal blocks: no short last block costing a pass over the partials
        order, values, ptr = self._sparse_order(rows, idx, residue, ncb, cb, R)
        plan = {"layout": lay, "R": R, "offsets": (pos - residue)[order].astype(np.int32),
                "values": values, "half_tile": half, "oblk": oblk,
                "reach": n_tiles * T + VL, "pack": not (lay["in_place"] and lay["L"] >= T),
                "ptr": ptr, "partial": (threads, int(np.diff(oblk).max()) * T)}
        plan["max_tap"] = int(pos.max()) if pos.size else 0
        if self.pool:
            rows_ = self._band_rows(geo, lay["Wq"], T)
            plan.update(band_rows=rows_, oblk=np.array([0, O], np.int64),
                        reach=lay["L"] + T + VL, pack=True, partial=(threads, O * T),
                        band=(threads, O * rows_ * geo.W_out))
        return plan

    def _sparse_order(self, rows, idx, residue, ncb, cb, R):
        """The non-zeros (CSR order) stably sorted by (row, input-channel block, residue):
        (order, values in that order, segment pointers of shape (O, ncb*R+1)).

        The order depends on the block size and on the residue of each tap, not on the input
        shape, so plans share their values (a plan per input shape would otherwise hold its
        own copy of the weights)."""
        O, _, KH, KW = self.weight_shape
        tap_residue = np.zeros(idx.max() + 1 if idx.size else 0, np.int64)
        tap_residue[idx] = residue
        cache_key = (cb, R, tap_residue.tobytes())
        key = (rows * ncb + (idx // (KH * KW)) // cb) * R + residue
        order = np.argsort(key, kind="stable")
        with self._plans_lock:
            hit = self._sparse_orders.get(cache_key)
        if hit is None:
            ptr = np.searchsorted(key[order], np.arange(O * ncb * R + 1), side="left")
            ptr = np.concatenate([ptr[:-1].reshape(O, ncb * R), ptr[ncb * R::ncb * R, None]],
                                 axis=1).astype(np.int64)
            hit = (self.sparse.csr.data[order], np.ascontiguousarray(ptr))
            with self._plans_lock:
                if len(self._sparse_orders) >= 4:
                    self._sparse_orders.clear()
                self._sparse_orders[cache_key] = hit
        return (order,) + hit

    _BAND_BYTES = 1 << 20  # scratch of one band of the fused pool (all output channels)

    def _band_rows(self, geo, Wq, T):
        """Rows per band of the fused sparse conv + 2x2 pool: an even number whose bands (all
        output channels, O*rows*W_out floats) fit in ``_BAND_BYTES``, chosen to compute the
        fewest positions: every band is a whole number of T-position tiles, so a band whose
        flat length is not a multiple of T computes positions twice (up to 28% more work on
        VGG's 28x28 layers with 10-row bands). Ties go to the smaller band."""
        used = 2 * (geo.H_out // 2)
        cap = max(2, self._BAND_BYTES // (4 * self.weight_shape[0] * geo.W_out) // 2 * 2)

        def work(rows):
            full, last = divmod(used, rows)
            return (full * -(-rows * Wq // T) + (-(-last * Wq // T) if last else 0))

        return min(range(2, min(used, cap) + 1, 2), key=lambda r: (work(r), r))

    def kernel_for(self, input_shape):
        """The kernel ('sparse', 'dense', 'winograd' or 'depthwise') used for inputs of
        ``input_shape``."""
        self.check_input_shape(input_shape)
        return self._plan(tuple(input_shape))["kernel"]

    def plan_info(self, input_shape):
        """Kernel chosen, timings measured (auto only), geometry of ``input_shape``."""
        plan = self._plan(tuple(input_shape))
        return {"kernel": plan["kernel"], "timings": plan["timings"], "nnz": self.nnz,
                "sparsity": self.sparsity, "output_shape": self.output_shape(input_shape)}

    # -- execution --------------------------------------------------------------------------
    def _run(self, x, plan, kernel, dense=None):
        geo = plan["geo"]
        pt, _, pl, _ = self.padding
        sh, sw = geo.stride
        if self.pool and kernel == "sparse":
            sp = plan["sparse"]
            lay = sp["layout"]
            out = aligned_empty((x.shape[0], self.weight_shape[0], geo.H_out // 2,
                                 geo.W_out // 2))
            _conv.sparse_conv2d_maxpool2(
                x, sp["ptr"], sp["R"], sp["offsets"], sp["values"], self.bias, sp["oblk"],
                geo.scratch(sp["reach"], lay["packed"], sp["max_tap"]),
                _scratch("partial", sp["partial"]), _scratch("band", sp["band"]), out, pt, pl,
                sh, sw, lay["Hq"], lay["Wq"], geo.W_out, sp["band_rows"], self.act_code,
                plan["level"], sp["half_tile"], geo.one_phase, plan["threads"])
            return out
        out = aligned_empty((x.shape[0], self.weight_shape[0], geo.H_out, geo.W_out))
        if kernel == "winograd":
            wp = plan["winograd"]
            threads = plan["threads"] if _blas.can_limit_blas() else 1
            with _blas.single_threaded_blas():
                _conv.winograd_conv2d(x, self._winograd_weights(), self.bias,
                                      _scratch("winograd", (threads,) + wp["work"]), out, pt, pl,
                                      wp["chunk"], self.act_code, plan["level"], threads)
        elif kernel == "depthwise":
            dw = plan["depthwise"]
            work = _scratch("depthwise", dw["work"])
            work[:, dw["tail"][0]:dw["tail"][1]] = 0.0
            _conv.depthwise_conv2d(x, dw["ptr"], dw["offsets"], self.sparse.csr.data, self.bias,
                                   work, out, pt, pl, sh, sw, geo.Hq, geo.Wq, self.act_code,
                                   plan["level"], geo.one_phase, plan["threads"])
        elif kernel == "sparse":
            sp = plan["sparse"]
            lay = sp["layout"]
            # an input in place must be aligned like the packed buffer (numpy's own arrays are
            # 16-byte aligned; fscnn's activations are 64): otherwise it is copied
            pack = sp["pack"] or not is_aligned(x, 4 * lay["VL"])
            # the positions the kernel computes: one row per channel for a flat layer
            view = out.reshape(out.shape[:2] + (lay["Hc"], lay["Wc_len"]))
            _conv.sparse_conv2d(x, sp["ptr"], sp["R"], sp["offsets"], sp["values"], self.bias,
                                sp["oblk"],
                                geo.scratch(sp["reach"], lay["packed"], sp["max_tap"])
                                if pack else _NO_BUFFER,
                                _scratch("partial", sp["partial"]), view, pt, pl, sh, sw,
                                lay["Hq"], lay["Wq"], lay["plane"], lay["Wc"], self.act_code,
                                plan["level"], sp["half_tile"], pack, geo.one_phase,
                                plan["threads"])
        elif "pointwise" in plan:
            self._run_pointwise(x, geo, plan["pointwise"], plan["level"], plan["threads"], out)
        else:
            # one single-threaded GEMM per OpenMP thread (see fscnn._blas)
            threads = plan["threads"] if _blas.can_limit_blas() else 1
            dense = self._dense if dense is None else dense
            panel = (dense.shape[1] + self.weight_shape[0] // self.groups) * plan["chunk"]
            with _blas.single_threaded_blas():
                _conv.dense_conv2d(x, dense, plan["tap_offsets"], geo.group_stride,
                                   self.bias, _NO_BUFFER if geo.in_place else geo.scratch(geo.L),
                                   _scratch("panels", (threads, panel)), out, self.groups, pt, pl,
                                   sh, sw, geo.Hq, geo.Wq, plan["chunk"], self.act_code,
                                   not geo.in_place, geo.one_phase, threads)
        if self.pool:
            N, O, H, W = out.shape
            pooled = aligned_empty((N, O, H // 2, W // 2))
            _pool.max_pool2d(out.reshape(N * O, H, W), pooled.reshape(N * O, H // 2, W // 2),
                             2, 2, 2, 2, 0, 0, 1, 1, plan["threads"])
            return pooled
        return out

    def __call__(self, x):
        """Convolve ``x`` of shape (N, C, H, W); returns float32 (N, O, H_out, W_out)."""
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            self.check_input_shape(x.shape)  # before converting: refuse huge bad views cheaply
            self._plan(x.shape)
        x = as_float_array(x, f"{self.name}: input")
        self.check_input_shape(x.shape)
        plan = self._plan(x.shape)
        return self._run(x, plan, plan["kernel"])


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
    kernels = LINEAR_KERNELS
    min_auto_sparsity = AUTO_MIN_SPARSITY_LINEAR

    def __init__(self, weight, bias=None, activation=None, kernel="auto", name="linear"):
        self._init_weights(weight, bias, activation, kernel, name, 2, "(out_features, in_features)")
        self.out_features, self.in_features = self.weight_shape
        self._choice = {}
        self._panels = None

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        return (input_shape[0], self.out_features)

    def check_input_shape(self, shape):
        if len(shape) != 2 or shape[1] != self.in_features:
            raise OpError(f"{self.name}: expected input (N, {self.in_features}), got shape "
                          f"{tuple(shape)}")

    def kernel_for(self, input_shape):
        """The kernel ('sparse' or 'dense') used for inputs of ``input_shape``."""
        self.check_input_shape(input_shape)
        key = (tuple(input_shape), _config.get_num_threads())
        if key not in self._choice:
            x = np.zeros(input_shape, np.float32) if self.kernel == "auto" else None
            self._choice[key] = self._pick(x, self._run)[0]
        return self._choice[key]

    def _panel_major(self):
        """The sparse weights laid out for the kernel (splinear.h): the columns cut into panels
        of ``_linear.panel_width()``, panel p of row o stored as row p*O + o with indices
        relative to the panel. Returns (indptr, indices uint16, data), built on first use.

        Built by a counting sort over blocks of rows (entries of one (panel, row) group are
        contiguous in the compressed rows, columns ascending), so the transients are a few
        MiB instead of several int64 arrays of all non-zeros."""
        if self._panels is None:
            m = self.sparse
            O, width = self.out_features, _linear.panel_width()
            n_panels = max(1, -(-self.in_features // width))
            counts = np.zeros(n_panels * O, dtype=np.int64)
            for r0, r1, key, _ in self._panel_blocks(m, O, width):
                counts += np.bincount(key, minlength=n_panels * O)
            indptr = np.zeros(n_panels * O + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            del counts
            indices = np.empty(m.nnz, dtype=np.uint16)
            data = np.empty(m.nnz, dtype=np.float32)
            for r0, r1, key, cols in self._panel_blocks(m, O, width):
                e0, e1 = m.indptr[r0], m.indptr[r1]
                n = e1 - e0
                pos = np.arange(n)
                change = np.ones(n, dtype=bool)
                change[1:] = key[1:] != key[:-1]
                group_start = np.maximum.accumulate(np.where(change, pos, 0))
                dest = indptr[key] + (pos - group_start)
                indices[dest] = cols % width
                data[dest] = m.data[e0:e1]
            self._panels = (indptr, indices, data)
        return self._panels

    @staticmethod
    def _panel_blocks(m, O, width, entries=1 << 18):
        """Yield (first row, end row, panel-major key, column) for blocks of ~``entries``
        non-zeros (at least one row)."""
        r0 = 0
        while r0 < O:
            r1 = int(np.searchsorted(m.indptr, m.indptr[r0] + entries, side="right")) - 1
            r1 = min(O, max(r1, r0 + 1))
            cols = m.indices[m.indptr[r0]:m.indptr[r1]].astype(np.int64)
            rows = np.repeat(np.arange(r0, r1, dtype=np.int64), np.diff(m.indptr[r0:r1 + 1]))
            yield r0, r1, (cols // width) * O + rows, cols
            r0 = r1

    def _run(self, x, kernel, dense=None):
        out = np.empty((x.shape[0], self.out_features), dtype=np.float32)
        if kernel == "sparse":
            indptr, indices, data = self._panel_major()
            _linear.sparse_linear(x, indptr, indices, data, self.bias, out, self.act_code,
                                  _config.simd_level_index(), _config.get_num_threads())
            return out
        # one single-threaded GEMV/GEMM per fscnn thread (see fscnn._blas)
        threads = _config.get_num_threads() if _blas.can_limit_blas() else 1
        with _blas.single_threaded_blas():
            _linear.dense_linear(x, self._dense if dense is None else dense, self.bias, out,
                                 self.act_code, threads)
        return out

    def __call__(self, x):
        """Apply to ``x`` of shape (N, in_features); returns float32 (N, out_features)."""
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == 2:
            self.check_input_shape(x.shape)  # before converting: refuse huge bad views cheaply
        x = as_float_array(x, f"{self.name}: input", layout="NF")
        self.check_input_shape(x.shape)
        return self._run(x, self.kernel_for(x.shape))
