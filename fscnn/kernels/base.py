"""What every kernel module shares: the interface of a kernel class, the geometry of a
convolution's input shape, per-thread scratch buffers and timing.

A kernel class runs one kernel family for one kind of operator. It is registered as a class
(never instantiated) and answers three questions, all static methods:

``ineligibility(layer)``
    Why the kernel cannot run ``layer`` (an object with ``weight_shape``, and for a
    convolution ``stride``, ``dilation`` and ``groups``: an operator, a :class:`ConvLayer` or
    a :class:`LinearLayer`), or None when it can.
``plan(op, geo, threads, level)``
    Its typed plan for the operator ``op`` (a :class:`fscnn.ops.Conv2dOp` or
    :class:`~fscnn.ops.LinearOp`, whose weights, bias and activation it reads) on inputs of
    one shape: ``geo`` is that shape's :class:`ConvGeometry` (a convolution) or the shape
    itself (a linear layer), ``threads`` and ``level`` the thread count and SIMD level it will
    run with. The plan holds everything the kernel reads (converted weights, offsets, work
    split) and the compiled kernel bound to it (``call``), so that running it converts nothing.
``cannot_win(op, geo)``
    Why ``kernel='auto'`` need not time the kernel for the operator ``op`` on inputs of
    geometry ``geo`` (it cannot be the fastest there), or None (the default).
``run(x, plan, out)``
    Compute ``x`` (validated: float32, C-contiguous, the planned shape) into the preallocated
    ``out``. Kernels never allocate their outputs; their scratch comes from :func:`scratch`.

Validation happens before ``plan`` and ``run``, in :mod:`fscnn.ops` and here: the compiled
code behind ``call`` checks nothing.
"""
import functools
import math
import threading
from collections import namedtuple
from typing import NamedTuple

import numpy as np

from .._memory import aligned_empty

INT32_MAX = np.iinfo(np.int32).max


class OpError(ValueError):
    """Invalid operator argument or input (subclass of ValueError)."""


ConvLayer = namedtuple("ConvLayer", ["weight_shape", "stride", "dilation", "groups"])
ConvLayer.__doc__ = """A convolution's geometry as the kernels' ``ineligibility`` reads it:
``weight_shape`` (O, C/groups, KH, KW), ``stride`` and ``dilation`` pairs, ``groups``."""
LinearLayer = namedtuple("LinearLayer", ["weight_shape"])
LinearLayer.__doc__ = """A linear layer as the kernels' ``ineligibility`` reads it:
``weight_shape`` (out_features, in_features)."""


class Kernel:
    """Base of the kernel classes: the interface of the module docstring.

    Attributes
    ----------
    name : str
        The ``kernel`` setting it runs ('sparse', 'dense', ...). Several classes may run one
        setting (the pointwise and the im2col kernels both run 'dense'): the first of the
        registry that can run a layer does.
    reads_dense : bool
        Its plans read the operator's dense (O, K) weights (``plan.weights``): the operator
        keeps them resident while a plan runs this kernel.
    fuses_pool : bool
        (Convolutions) it computes ``pool='max2x2'`` itself, into the pooled output; the
        operator pools the output of the others.
    """

    name = None
    reads_dense = False
    fuses_pool = False

    @staticmethod
    def ineligibility(layer):
        return None

    @staticmethod
    def cannot_win(op, geo):
        return None

    @staticmethod
    def adds_residual(plan):
        """(Convolutions) whether ``run(x, plan, out, residual, res_act)`` adds ``residual``
        (an array of the output's shape, never ``out`` itself) in its epilogue, then the
        activation code ``res_act``: a residual connection. Where not, the operator adds it
        in one pass after ``run(x, plan, out)``."""
        return False

    @staticmethod
    def plan(op, geo, threads, level):
        raise NotImplementedError

    @staticmethod
    def run(x, plan, out):
        raise NotImplementedError


class Packing(NamedTuple):
    """How the kernels pack one image (conv_pack.h): its input size (H, W), the padding before
    it, the stride (one phase plane per stride phase), planes of Hq rows of Wq floats,
    ``plane`` floats apart, and whether only phase (0, 0) is packed."""

    H: int
    W: int
    pad_top: int
    pad_left: int
    sh: int
    sw: int
    Hq: int
    Wq: int
    plane: int
    one_phase: bool


def tap_positions(Cg, KH, KW, dilation, stride, one_phase, plane, Wq):
    """(Cg*KH*KW,) int64: position of each tap (ci, kh, kw) of group 0 in an input packed
    into phase planes ``plane`` floats apart with rows of ``Wq`` floats (see conv_pack.h)."""
    (dh, dw), (sh, sw) = dilation, stride
    phases = 1 if one_phase else sh * sw
    ci, kh, kw = np.meshgrid(np.arange(Cg), np.arange(KH), np.arange(KW), indexing="ij")
    ah, aw = kh * dh, kw * dw
    py, px = (0, 0) if one_phase else (ah % sh, aw % sw)
    tap = (ci * phases + py * sw + px) * plane + (ah // sh) * Wq + aw // sw
    return tap.reshape(-1).astype(np.int64)


def check_offsets_fit(name, input_shape, packed, L):
    """Raise OpError unless every position the kernels form for an input packed into
    ``packed`` floats with a flat output of ``L`` positions fits a 32-bit offset."""
    if packed + 2 * L + 4096 > INT32_MAX:
        raise OpError(f"{name}: input of shape {input_shape} is too large for 32-bit offsets "
                      f"({packed + L} positions per image)")


class ConvGeometry:
    """Everything about one input shape of a convolution that the kernels need (see
    conv_pack.h).

    Sizes are computed with Python ints and checked against 32-bit offsets before any array
    is built. A dimension with a single output uses stride 1 (the stride is then irrelevant and
    a huge one would only multiply phase planes).

    Parameters
    ----------
    op : Conv2dOp
        Its ``weight_shape``, ``padding``, ``stride``, ``dilation``, ``groups`` and ``name``.
    shape : (N, C, H, W)
        The input's shape.
    """

    def __init__(self, op, shape):
        N, C, H, W = shape
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
        self.padding = op.padding
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
        self.batch, self.input_shape = N, (C, H, W)
        check_offsets_fit(op.name, self.input_shape, self.packed, self.L)
        # what tap_offsets needs (not the op itself: its plans hold this object)
        self._taps = (Cg, KH, KW, op.dilation, plane, op.groups)

    @functools.cached_property
    def tap_offsets(self):
        """(Cg*KH*KW,) int64: position of each tap (ci, kh, kw) of group 0 in the packed
        input. Built on first use (by a plan): every layer call checks its input shape with
        this class, and building them took ~120 us on a 512-channel 3x3 layer."""
        Cg, KH, KW, dilation, plane, _ = self._taps
        return tap_positions(Cg, KH, KW, dilation, self.stride, self.one_phase, plane, self.Wq)

    @functools.cached_property
    def max_tap(self):
        """The largest position a tap of any group reads, relative to an output position."""
        return int(self.tap_offsets.max()) + (self._taps[-1] - 1) * self.group_stride

    def packing(self, Hq=None, Wq=None, plane=None):
        """The :class:`Packing` of this input: this geometry's planes unless given."""
        Hq, Wq = (self.Hq if Hq is None else Hq), (self.Wq if Wq is None else Wq)
        pt, _, pl, _ = self.padding
        return Packing(self.input_shape[1], self.input_shape[2], pt, pl, *self.stride, Hq, Wq,
                       Hq * Wq if plane is None else plane, self.one_phase)


def timing_input(shape):
    """Zeros of ``shape`` for timing kernels on, laid out as a layer's input usually is: an
    activation of fscnn, which starts on 64 bytes (``aligned_empty``). The sparse kernel reads
    an unpadded 1x1 layer's aligned input in place and copies a misaligned one, so on
    ``np.zeros`` (16-byte aligned) it timed the copy too: a 90%-sparse 256->64 1x1 layer at
    56x56 took 0.41 ms there and 0.30-0.32 on aligned inputs, the dense kernel 1.0-1.2 on
    both, and the runner-up came closer to the winner than it is."""
    x = aligned_empty(shape)
    x[...] = 0
    return x


_workspace = threading.local()
NO_BUFFER = np.zeros(1, np.float32)  # the scratch argument of kernels that read x in place


def scratch(slot, shape):
    """A float32 scratch array of ``shape`` reused across calls of the same Python thread,
    64-byte aligned.

    Scratch is per thread, so concurrent calls never share it, and reusing it avoids the page
    faults of a fresh multi-megabyte allocation on every call. Contents are undefined."""
    size = math.prod(shape)
    buf = getattr(_workspace, slot, None)
    if buf is None or buf.size < size:
        buf = aligned_empty(max(size, 1))
        setattr(_workspace, slot, buf)
    return buf[:size].reshape(shape)


def packed_scratch(packed, readable):
    """The scratch that an image is packed into: ``packed`` floats, then zeros up to at least
    ``readable`` floats (the furthest a kernel reads), and 64 floats more."""
    buf = scratch("packed", (max(packed, readable) + 64,))
    buf[packed:] = 0.0
    return buf
