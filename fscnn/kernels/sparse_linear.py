"""Sparse linear layer (include/splinear.h): the kernel of ``kernel='sparse'`` for linear
layers, the weights laid out panel-major so that each panel of columns is one contiguous
stream and the input panel it reads stays in L1.
"""
from typing import NamedTuple

import numpy as np

from .._ext import _linear
from .base import Kernel, scratch


# Batches from this size run the batched path (x transposed, broadcast FMAs over the batch;
# see splinear.h) instead of one gather pass per vector.
BATCH_MIN = 4


class SparseLinearPlan(NamedTuple):
    """The sparse linear kernel's plan: the compiled kernel bound to the operator's
    panel-major weights (``call``) and, for the batched path, the shape of the transposed
    input (``xt``: (I, N rounded up to the vector width)), else None."""

    call: _linear.SparseLinear
    xt: tuple = None


def _panel_blocks(m, O, width, entries=1 << 18):
    """Yield (first row, end row, panel-major key, column) for blocks of ~``entries``
    non-zeros (at least one row) of the CSRMatrix ``m``."""
    r0 = 0
    while r0 < O:
        r1 = int(np.searchsorted(m.indptr, m.indptr[r0] + entries, side="right")) - 1
        r1 = min(O, max(r1, r0 + 1))
        cols = m.indices[m.indptr[r0]:m.indptr[r1]].astype(np.int64)
        rows = np.repeat(np.arange(r0, r1, dtype=np.int64), np.diff(m.indptr[r0:r1 + 1]))
        yield r0, r1, (cols // width) * O + rows, cols
        r0 = r1


def panel_major(m):
    """The CSRMatrix ``m`` of shape (O, I) laid out for the kernel (splinear.h): the columns
    cut into panels of ``_linear.panel_width()``, panel p of row o stored as row p*O + o with
    indices relative to the panel. Returns (indptr, indices uint16, data).

    Built by a counting sort over blocks of rows (entries of one (panel, row) group are
    contiguous in the compressed rows, columns ascending), so the transients are a few MiB
    instead of several int64 arrays of all non-zeros."""
    O, n_in = m.shape
    width = _linear.panel_width()
    n_panels = max(1, -(-n_in // width))
    counts = np.zeros(n_panels * O, dtype=np.int64)
    for r0, r1, key, _ in _panel_blocks(m, O, width):
        counts += np.bincount(key, minlength=n_panels * O)
    indptr = np.zeros(n_panels * O + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    del counts
    indices = np.empty(m.nnz, dtype=np.uint16)
    data = np.empty(m.nnz, dtype=np.float32)
    for r0, r1, key, cols in _panel_blocks(m, O, width):
        e0, e1 = m.indptr[r0], m.indptr[r1]
        n = e1 - e0
        pos = np.arange(n)
        change = np.ones(n, dtype=bool)
        change[1:] = key[1:] != key[:-1]
        group_start = np.maximum.accumulate(np.where(change, pos, 0))
        dest = indptr[key] + (pos - group_start)
        indices[dest] = cols % width
        data[dest] = m.data[e0:e1]
    return indptr, indices, data


class SparseLinear(Kernel):
    """Panel-major sparse rows times a batch of vectors: any linear layer."""

    name = "sparse"

    @staticmethod
    def plan(op, shape, threads, level):
        """The panel-major weights are shared by the plans of every input shape
        (``op.derived``)."""
        indptr, indices, data = op.derived(SparseLinear.name, None,
                                           lambda: panel_major(op.sparse))
        call = _linear.SparseLinear(indptr, indices, data, op.bias, op.in_features,
                                    op.out_features, op.act_code, level, threads)
        N, width = shape[0], _linear.batch_width(level)
        xt = (op.in_features, -(-N // width) * width) if N >= BATCH_MIN else None
        return SparseLinearPlan(call, xt)

    @staticmethod
    def run(x, plan, out):
        if plan.xt is None:
            plan.call(x, out)
            return
        xt = scratch("linear_xt", plan.xt)
        N = x.shape[0]
        xt[:, :N] = x.T
        xt[:, N:] = 0.0  # padded lanes are computed, then dropped: no NaNs or subnormals there
        plan.call.batched(xt, N, out)
