"""Magnitude pruning of convolution and linear weights, and sparsity reports.

Prunable entries are the ``*.weight`` entries of a state_dict with 4 dimensions (convolution,
shape (O, I/groups, kh, kw)) or 2 dimensions (linear, shape (O, I)); biases, BatchNorm
parameters and buffers are never touched. Patterns work along the *input* dimension: axis 1
of the weight, separately for every output channel and kernel tap (this is how N:M sparse
hardware and ``torch.sparse.to_sparse_semi_structured`` group a KRSC/NHWC weight).

Ties between equal magnitudes are broken deterministically: the entry (or block) that comes
first in the flattened C order of the weight is pruned first; with ``scope="global"``, layers
count in state_dict order.

The module itself is callable: ``fscnn.prune(model, 0.9)`` is ``fscnn.prune.prune(model,
0.9)``, while ``fscnn.prune.sparsity_report`` and the other functions stay reachable.
"""
import fnmatch
import inspect
import math
import numbers
import re
import sys
import types
import warnings
from collections import OrderedDict
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ._table import format_table
from .io import state_dict_of

__all__ = ["prune", "prunable_names", "sparsity_report", "format_sparsity_report",
           "SparsityRow", "SparsityReport", "PruningWarning"]

_PATTERN_NM = re.compile(r"([0-9]+):([0-9]+)")
_PATTERN_BLOCK = re.compile(r"([0-9]+)x([0-9]+)")


class PruningWarning(UserWarning):
    """Global pruning zeroed every weight of a layer (see :func:`prune`)."""


def _warn_if_emptied(before, weights):
    """Warn about the weights of ``weights`` (name -> array) that had non-zeros (``before``:
    name -> count) and have none left."""
    emptied = [name for name, weight in weights.items()
               if before[name] and not np.count_nonzero(weight)]
    if emptied:
        warnings.warn(f"global pruning zeroed every weight of {', '.join(map(repr, emptied))}: "
                      "such a layer outputs only its bias; keep it dense (keep=...) or prune "
                      "each layer to the sparsity (scope='layer')", PruningWarning, stacklevel=3)


class SparsityRow(NamedTuple):
    """Zero counts of one weight, or of all of them (``name == "total"``, ``shape is None``)."""

    name: str
    shape: Optional[Tuple[int, ...]]
    params: int
    nonzeros: int
    sparsity: float


class SparsityReport(NamedTuple):
    """Per-weight rows in state_dict order, and their sum."""

    rows: list
    total: SparsityRow


class _Pattern(NamedTuple):
    kind: str  # "unstructured", "nm" or "block"
    a: int = 1  # N of N:M, rows R of an RxC block
    b: int = 1  # M of N:M, columns C of an RxC block


def _is_prunable(name, array):
    ndim = len(array.shape) if hasattr(array, "shape") else np.ndim(array)
    return (name == "weight" or name.endswith(".weight")) and ndim in (2, 4)


def _stored_items(state_dict):
    """(name, value) pairs; a model's :class:`~fscnn.nn.StateDict` gives its sparse-held
    weights as held (not densified)."""
    stored = getattr(state_dict, "stored", None)
    if stored is None:
        return state_dict.items()
    return ((name, stored(name)) for name in state_dict)


def _is_sparse(value):
    return hasattr(value, "csr") or hasattr(value, "indptr")


def prunable_names(model_or_state_dict):
    """Names of the convolution and linear weights: for an fscnn model, its Conv2d, Linear
    and Gemm layers' weights (whatever their keys, e.g. an imported graph's tensor names);
    for a state_dict, the 4-D and 2-D ``*.weight`` entries.

    Parameters
    ----------
    model_or_state_dict : Mapping or model

    Returns
    -------
    list of str
        In state_dict order.
    """
    slots = _module_slots(model_or_state_dict)
    if slots is not None:  # a model knows its layers' weights whatever their names
        return [name for name, (module, attribute, _) in slots.items()
                if attribute in getattr(module, "_sparse_weights", {})]
    state_dict = state_dict_of(model_or_state_dict)
    return [name for name, value in _stored_items(state_dict) if _is_prunable(name, value)]


def _parse_pattern(pattern):
    if pattern == "unstructured":
        return _Pattern("unstructured")
    text = pattern if isinstance(pattern, str) else ""
    nm = _PATTERN_NM.fullmatch(text)
    if nm:
        n, m = int(nm[1]), int(nm[2])
        if not 0 < n <= m:
            raise ValueError(f"pattern {pattern!r}: N:M needs 0 < N <= M")
        return _Pattern("nm", n, m)
    block = _PATTERN_BLOCK.fullmatch(text)
    if block:
        rows, cols = int(block[1]), int(block[2])
        if rows < 1 or cols < 1:
            raise ValueError(f"pattern {pattern!r}: RxC blocks need R >= 1 and C >= 1")
        return _Pattern("block", rows, cols)
    raise ValueError("pattern must be 'unstructured', 'N:M' (e.g. '2:4') or 'RxC' (e.g. "
                     f"'1x4'), received {pattern!r}")


def _check_sparsity(sparsity, pattern):
    if pattern.kind == "nm":
        implied = 1.0 - pattern.a / pattern.b
        if sparsity is not None and not (isinstance(sparsity, numbers.Real)
                                         and math.isclose(sparsity, implied, abs_tol=1e-9)):
            raise ValueError(f"pattern '{pattern.a}:{pattern.b}' fixes the sparsity at "
                             f"{implied:g}; pass sparsity=None or {implied:g}, received "
                             f"{sparsity!r}")
        return implied
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1], received {sparsity!r}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], received {sparsity!r}")
    return float(sparsity)


def _select_kept(names, keep):
    """Split prunable ``names`` by the ``keep`` patterns; unknown patterns raise."""
    if isinstance(keep, str):
        keep = (keep,)
    kept, unknown = set(), []
    for pattern in keep:
        if not isinstance(pattern, str):
            raise TypeError(f"keep entries must be str, received {pattern!r}")
        hits = [name for name in names
                if fnmatch.fnmatchcase(name, pattern)
                or fnmatch.fnmatchcase(name.rpartition(".")[0], pattern)]
        if not hits:
            unknown.append(pattern)
        kept.update(hits)
    if unknown:
        raise ValueError(f"keep: {unknown} match no prunable weight; prunable weights are "
                         f"{names}")
    return kept


def _n_pruned(sparsity, count):
    """round(sparsity * count), halves rounded up."""
    return min(count, int(math.floor(sparsity * count + 0.5)))


_CHUNK = 1 << 18  # entries per chunk of the selection passes (1 MiB of float32 scores)
_DIGIT = 16  # bits of the key resolved per radix pass (65536-bin histograms)


def _chunks(array):
    """Consecutive pieces of ``array`` in flattened C order: (start, 1-D piece, zero).

    Each piece holds about ``_CHUNK`` entries and ``zero(mask)`` sets the masked entries of
    that piece to zero in ``array`` itself. Nothing larger than a piece is copied, also for a
    non-contiguous array (pieces are then whole slices along axis 0)."""
    size = array.size
    if size == 0:
        return
    if array.flags.c_contiguous or array.ndim <= 1:
        flat = array.reshape(-1)
        for start in range(0, size, _CHUNK):
            piece = flat[start:start + _CHUNK]
            yield start, piece, lambda mask, piece=piece: piece.__setitem__(mask, 0)
        return
    row = size // array.shape[0]
    step = max(1, _CHUNK // max(row, 1))
    for r0 in range(0, array.shape[0], step):
        block = array[r0:r0 + step]
        yield r0 * row, block.reshape(-1), \
            lambda mask, block=block: block.__setitem__(mask.reshape(block.shape), 0)


class _Keys:
    """Magnitudes of a list of score arrays as unsigned integer keys, chunk by chunk.

    The bit pattern of a non-negative IEEE float, read as an unsigned integer of its width,
    orders like the float, so |score| cast to the common float type of all arrays (exact)
    and viewed as uint gives keys that rank exactly as ``np.abs`` of the concatenated
    scores does. Keys are computed per chunk, never for a whole array at once."""

    def __init__(self, arrays):
        self.arrays = arrays
        dtype = np.result_type(*[a.dtype for a in arrays]) if arrays else np.dtype(np.float32)
        if dtype.kind != "f":
            dtype = np.dtype(np.float64)
        self.float = dtype
        self.uint = np.dtype(f"u{dtype.itemsize}")
        self.bits = 8 * dtype.itemsize

    def of(self, piece):
        return np.abs(piece.astype(self.float, copy=False)).view(self.uint)

    def chunks(self, index):
        for start, piece, write in _chunks(self.arrays[index]):
            yield start, self.of(piece), write


def _threshold(keys, k):
    """(key of rank k (1-based) among all keys, number of keys smaller than it).

    A most-significant-digit radix select: each pass histograms the next ``_DIGIT`` bits
    of the keys that share the prefix found so far (``np.bincount`` over chunks), so the
    memory used is one chunk plus a 65536-bin histogram."""
    prefix, below, rank = 0, 0, k
    for shift in range(keys.bits - _DIGIT, -1, -_DIGIT):
        hist = np.zeros(1 << _DIGIT, dtype=np.int64)
        for index in range(len(keys.arrays)):
            for _, key, _ in keys.chunks(index):
                if shift + _DIGIT < keys.bits:
                    key = key[(key >> (shift + _DIGIT)) == prefix]
                digit = ((key >> shift) & ((1 << _DIGIT) - 1)).astype(np.intp)
                hist += np.bincount(digit, minlength=1 << _DIGIT)
        cumulative = np.cumsum(hist)
        d = int(np.searchsorted(cumulative, rank))  # first digit reaching the rank
        before = int(cumulative[d - 1]) if d else 0
        below += before
        rank -= before
        prefix = (prefix << _DIGIT) | d
    return prefix, below


class _Selection:
    """The ``k`` smallest |entries| of ``arrays`` taken together.

    Ties at the threshold go to lower indices (earlier arrays first, then C order), exactly
    like ``np.partition`` of the concatenation followed by taking the first tied entries.
    :meth:`chunks` must be called for the arrays in order (the tie quota is spent along the
    way); memory is bounded by a chunk (see :func:`_chunks`)."""

    def __init__(self, arrays, k):
        self.keys = _Keys(arrays)
        self.k = k
        self.threshold, below = _threshold(self.keys, k) if k > 0 else (0, 0)
        self.quota = k - below

    def chunks(self, index):
        """Yield ``(start, mask, zero)`` for the chunks of array ``index``: mask of the
        selected entries of the chunk, and the function zeroing them in the array."""
        for start, key, zero in self.keys.chunks(index):
            if self.k == 0:
                mask = np.zeros(key.size, dtype=bool)
            else:
                mask = key < self.threshold
                if self.quota:
                    ties = np.flatnonzero(key == self.threshold)[:self.quota]
                    mask[ties] = True
                    self.quota -= ties.size
            yield start, mask, zero

    def mask(self, index):
        """The selection in array ``index`` as one flat boolean mask."""
        out = np.zeros(self.keys.arrays[index].size, dtype=bool)
        for start, chunk, _ in self.chunks(index):
            out[start:start + chunk.size] = chunk
        return out


def _to_rows(weight):
    """The weight as (O, K, I): output channel, kernel tap (K = kh*kw, 1 for linear), input."""
    if weight.ndim == 2:
        return weight[:, None, :]
    out, inp = weight.shape[:2]
    return np.moveaxis(weight, 1, -1).reshape(out, -1, inp)


def _from_rows(rows, shape):
    """Inverse of `_to_rows` for a mask of shape (O, K, I)."""
    if len(shape) == 2:
        return rows[:, 0, :]
    out, inp, kh, kw = shape
    return np.moveaxis(rows.reshape(out, kh, kw, inp), -1, 1)


def _pad(array, axis, multiple, fill):
    extra = -array.shape[axis] % multiple
    if not extra:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return np.pad(array, widths, constant_values=fill)


def _nm_mask(weight, n, m):
    """Pruned-entry mask keeping the ``n`` largest of every ``m`` consecutive inputs.

    A trailing group of r < m inputs (when I is not a multiple of m) keeps its min(n, r)
    largest entries, as if padded with zeros to m.
    """
    rows = _to_rows(np.abs(weight))
    out, taps, inp = rows.shape
    groups = _pad(rows, 2, m, -1.0).reshape(out, taps, -1, m)
    order = np.argsort(groups, axis=-1, kind="stable")
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[..., :m - n], True, axis=-1)
    return _from_rows(mask.reshape(out, taps, -1)[..., :inp], weight.shape)


def _block_scores(weight, rows_per_block, cols_per_block):
    """Squared L2 norms of RxC blocks, shape (ceil(O/R), K, ceil(I/C)).

    Blocks at the edges that would run past O or I hold only the entries that exist.
    """
    rows = _pad(_pad(_to_rows(weight.astype(np.float64)), 0, rows_per_block, 0.0), 2,
                cols_per_block, 0.0)
    out, taps, inp = rows.shape
    blocks = rows.reshape(out // rows_per_block, rows_per_block, taps, inp // cols_per_block,
                          cols_per_block)
    return np.einsum("arkbc,arkbc->akb", blocks, blocks)


def _expand_blocks(block_mask, shape, rows_per_block, cols_per_block):
    """Entry mask of a weight of ``shape`` from a mask over its RxC blocks."""
    out, inp = shape[:2]
    rows = np.repeat(np.repeat(block_mask, rows_per_block, axis=0), cols_per_block, axis=2)
    return _from_rows(rows[:out, :, :inp], shape)


def _scores(weight, pattern):
    """1-D scores ranked by unstructured or block pruning (one per entry or per block)."""
    if pattern.kind == "block":
        return _block_scores(weight, pattern.a, pattern.b).reshape(-1)
    return np.abs(weight).reshape(-1)


def _scores_to_mask(pruned, weight, pattern):
    """Entry mask of ``weight`` from the pruned mask over its scores."""
    if pattern.kind == "block":
        shape = weight.shape
        grid = (-(-shape[0] // pattern.a), math.prod(shape[2:]), -(-shape[1] // pattern.b))
        return _expand_blocks(pruned.reshape(grid), shape, pattern.a, pattern.b)
    return pruned.reshape(weight.shape)


def _unstructured_selections(weights, sparsity, scope):
    """Yield ``(name, selection, index)`` per weight for unstructured pruning, in order."""
    if scope == "layer":
        for name, weight in weights.items():
            yield name, _Selection([weight], _n_pruned(sparsity, weight.size)), 0
    else:
        arrays = list(weights.values())
        selection = _Selection(arrays, _n_pruned(sparsity, sum(a.size for a in arrays)))
        for index, name in enumerate(weights):
            yield name, selection, index


def _masks(weights, sparsity, scope, pattern):
    """Yield ``(name, boolean mask of the entries to zero)`` for the prunable ``weights``, one
    weight at a time (only one mask is alive at once when the caller drops it).

    Unstructured and block selections rank with :class:`_Selection` (exact, no copy of all
    scores); block scores (one float64 per block) are computed per weight, and for
    ``scope="global"`` kept for all weights during the selection. N:M masks are computed per
    weight with sorts of the weight's groups (transients the size of that weight)."""
    if pattern.kind == "nm":
        for name, w in weights.items():
            yield name, _nm_mask(w, pattern.a, pattern.b)
    elif pattern.kind == "unstructured":
        for name, selection, index in _unstructured_selections(weights, sparsity, scope):
            yield name, selection.mask(index).reshape(weights[name].shape)
    elif scope == "layer":
        for name, weight in weights.items():
            scores = _scores(weight, pattern)
            pruned = _Selection([scores], _n_pruned(sparsity, scores.size)).mask(0)
            yield name, _scores_to_mask(pruned, weight, pattern)
    else:
        scores = [_scores(weight, pattern) for weight in weights.values()]
        selection = _Selection(scores, _n_pruned(sparsity, sum(s.size for s in scores)))
        for index, (name, weight) in enumerate(weights.items()):
            yield name, _scores_to_mask(selection.mask(index), weight, pattern)


def _zero_in_place(weights, sparsity, scope, pattern):
    """Zero the pruned entries of the (writeable) ``weights`` themselves. Unstructured
    pruning goes chunk by chunk, with no mask or copy the size of a weight."""
    if pattern.kind != "unstructured":
        for name, mask in _masks(weights, sparsity, scope, pattern):
            weights[name][mask] = 0
        return
    for _, selection, index in _unstructured_selections(weights, sparsity, scope):
        for _, mask, zero in selection.chunks(index):
            zero(mask)


def _has_nan(weight):
    return any(np.isnan(piece).any() for _, piece, _ in _chunks(weight))


def _module_slots(obj):
    """``{key: (module, attribute, value)}`` of an fscnn Module, else None."""
    from .nn import Module
    return obj._state_slots() if isinstance(obj, Module) else None


class _Writeable:
    """Make the read-only parameter arrays of an fscnn module writeable for in-place pruning,
    and read-only again (and the module marked changed, so plans are rebuilt) afterwards.
    An array that cannot be made writeable (a view of read-only memory) is replaced by a
    writeable copy, assigned back to its module at the end."""

    def __init__(self, slots, names):
        self.slots, self.names, self.arrays, self.copies = slots, names, {}, set()

    def __enter__(self):
        for name in self.names:
            array = self.slots[name][2]
            try:
                array.setflags(write=True)
            except ValueError:
                array = np.array(array)
                self.copies.add(name)
            self.arrays[name] = array
        return self.arrays

    def __exit__(self, *exc):
        for name, array in self.arrays.items():
            module, attribute, _ = self.slots[name]
            if name in self.copies:
                setattr(module, attribute, array)
            else:
                array.setflags(write=False)
                module._touch()


def prune(model_or_state_dict, sparsity=None, *, scope="layer", keep=(),
          pattern="unstructured", inplace=False):
    """Zero the smallest-magnitude convolution and linear weights.

    Parameters
    ----------
    model_or_state_dict : Mapping or model
        name -> array, or an object with ``state_dict()`` (and ``load_state_dict()`` when
        ``inplace``). Weights must be float arrays without NaN.
    sparsity : float in [0, 1]
        Fraction of weights (or of blocks, for ``"RxC"``) to zero: exactly
        ``round(sparsity * size)`` per weight with ``scope="layer"``, of all prunable
        weights together with ``scope="global"``. For ``"N:M"`` it is implied (1 - N/M) and
        may be None.
    scope : {"layer", "global"}
        Rank each weight on its own, or all of them against one threshold (not for N:M).
        A global threshold can zero every weight of a layer whose weights are small (a
        large, finely spread linear layer, say); that raises a :class:`PruningWarning`
        naming the layers.
    keep : str or iterable of str
        Names or fnmatch patterns of weights kept dense; a pattern may name the weight
        (``"features.0.weight"``) or its layer (``"features.0"``, ``"classifier.*"``).
    pattern : str
        ``"unstructured"``; ``"N:M"`` such as ``"2:4"``: of every M consecutive inputs (axis 1)
        keep the N largest in magnitude, a trailing group of r < M keeps min(N, r);
        ``"RxC"`` such as ``"1x4"``: blocks of R outputs x C consecutive inputs, ranked by
        L2 norm; edge blocks hold only the entries that exist.
    inplace : bool, default False
        Zero the input's arrays (a state_dict of writeable ndarrays, or the parameter arrays
        of an fscnn model, whose plan is then rebuilt on the next call) or load the pruned
        weights into another model, and return the input. Otherwise the input is untouched.
        Unstructured pruning in place allocates no copy or mask the size of a weight: the
        ranking is an exact radix select over chunks of a few MiB. An fscnn model holding
        weights sparse (:meth:`~fscnn.nn.Module.to_sparse`) cannot be pruned in place:
        prune before converting, or call ``model.to_dense()`` first.

    Returns
    -------
    OrderedDict or the input
        With ``inplace=False``, a new state_dict: pruned weights are new arrays, the other
        entries are the input's own objects.

    Examples
    --------
    >>> sd = {"conv.weight": np.arange(1.0, 9.0).reshape(2, 4, 1, 1)}
    >>> prune(sd, 0.5)["conv.weight"].reshape(2, 4)
    array([[0., 0., 0., 0.],
           [5., 6., 7., 8.]])
    >>> prune(sd, pattern="2:4")["conv.weight"].reshape(2, 4)
    array([[0., 0., 3., 4.],
           [0., 0., 7., 8.]])
    """
    pattern = _parse_pattern(pattern)
    sparsity = _check_sparsity(sparsity, pattern)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', received {scope!r}")
    if scope == "global" and pattern.kind == "nm":
        raise ValueError("scope='global' does not apply to N:M patterns, which prune every "
                         "group alike")
    if _module_slots(model_or_state_dict) is not None:
        from .quantization import quantized_weight_names
        quantized = quantized_weight_names(model_or_state_dict)
        if quantized:  # pruning would skip them silently: their int8 weights are not prunable
            raise ValueError(f"the model holds INT8 layers ({', '.join(quantized[:3])}"
                             f"{', ...' if len(quantized) > 3 else ''}): prune the float "
                             f"model, then fscnn.quantize it")
    slots = _module_slots(model_or_state_dict) if inplace else None
    if slots is not None:
        state_dict = OrderedDict((key, slot[2]) for key, slot in slots.items())
    else:
        state_dict = state_dict_of(model_or_state_dict)
    names = prunable_names(model_or_state_dict if _module_slots(model_or_state_dict)
                           is not None else state_dict)
    kept = _select_kept(names, keep)
    pruned = [name for name in names if name not in kept]
    for name in pruned:
        if slots is not None and _is_sparse(state_dict[name]):
            raise TypeError(f"{name!r}: the model holds this weight sparse (Module.to_sparse); "
                            "prune before converting, call model.to_dense() first, or prune "
                            "with inplace=False and load the result")
        weight = np.asarray(state_dict[name])
        if weight.dtype.kind != "f":
            raise TypeError(f"{name!r}: expected a float weight, received dtype {weight.dtype}")
        if _has_nan(weight):
            raise ValueError(f"{name!r}: the weight contains NaN, which has no magnitude rank")
        if inplace and slots is None and state_dict is model_or_state_dict and \
                not (weight is state_dict[name] and weight.flags.writeable):
            raise TypeError(f"{name!r}: inplace=True needs a writeable numpy array")
    # a global threshold can take every weight of a layer whose weights are all small (at
    # sparsity 1 that is what was asked)
    before = ({name: np.count_nonzero(state_dict[name]) for name in pruned}
              if scope == "global" and sparsity < 1 else None)
    if slots is not None:  # an fscnn model: zero its parameter arrays themselves
        with _Writeable(slots, pruned) as weights:
            _zero_in_place(weights, sparsity, scope, pattern)
            if before is not None:
                _warn_if_emptied(before, weights)
        return model_or_state_dict
    weights = {name: np.asarray(state_dict[name]) for name in pruned}
    if inplace and state_dict is model_or_state_dict:
        _zero_in_place(weights, sparsity, scope, pattern)
        if before is not None:
            _warn_if_emptied(before, weights)
        return state_dict
    result = OrderedDict(state_dict)
    for name, mask in _masks(weights, sparsity, scope, pattern):
        result[name] = np.where(mask, np.zeros((), weights[name].dtype), weights[name])
    if before is not None:
        _warn_if_emptied(before, {name: result[name] for name in pruned})
    if inplace:
        model_or_state_dict.load_state_dict(result)
        return model_or_state_dict
    return result


def sparsity_report(model_or_state_dict):
    """Parameter and non-zero counts of the convolution and linear weights.

    Parameters
    ----------
    model_or_state_dict : Mapping or model

    Returns
    -------
    SparsityReport
        ``rows``: one `SparsityRow` (name, shape, params, nonzeros, sparsity) per prunable
        weight in state_dict order; ``total``: their sum, with ``shape=None``. The sparsity of
        an empty weight is 0.
    """
    state_dict = state_dict_of(model_or_state_dict)
    prunable = set(prunable_names(model_or_state_dict))
    rows = []
    for name, weight in _stored_items(state_dict):
        if name not in prunable:
            continue
        if _is_sparse(weight):  # a sparse-held weight of a model: count without densifying
            csr = getattr(weight, "csr", weight)
            shape = tuple(weight.shape)
            rows.append(_row(name, shape, math.prod(shape), int(np.count_nonzero(csr.data))))
            continue
        weight = np.asarray(weight)
        rows.append(_row(name, weight.shape, weight.size, int(np.count_nonzero(weight))))
    total = _row("total", None, sum(r.params for r in rows), sum(r.nonzeros for r in rows))
    return SparsityReport(rows, total)


def _row(name, shape, params, nonzeros):
    return SparsityRow(name, shape, params, nonzeros, 1.0 - nonzeros / params if params else 0.0)


def format_sparsity_report(report):
    """Format a `SparsityReport` as an aligned text table (no trailing newline)."""
    def cells(row):
        shape = "" if row.shape is None else "x".join(map(str, row.shape))
        return [row.name, shape, f"{row.params:,}", f"{row.nonzeros:,}", f"{row.sparsity:.2%}"]

    return format_table(["layer", "shape", "params", "nonzeros", "sparsity"],
                        [cells(r) for r in report.rows] + [None, cells(report.total)],
                        align="llrrr")


class _CallableModule(types.ModuleType):
    """The type of this module: calling it calls :func:`prune`."""

    def __call__(self, *args, **kwargs):
        return prune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(prune)  # what help() and inspect show for fscnn.prune(...)
