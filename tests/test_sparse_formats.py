"""Sparse weight formats: conversion, validation, storage size."""
import re

import numpy as np
import pytest

from conftest import sparse_weight
from fscnn.sparse import CSRMatrix, FormatError, SparseConvWeight


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (16, 64, 1, 1), (8, 1, 5, 7), (1, 1, 1, 1)])
def test_conv_weight_round_trip(shape, sparsity, rng):
    w = sparse_weight(shape, sparsity, rng)
    s = SparseConvWeight.from_dense(w)
    s.check_format(full=True)
    assert s.shape == shape
    assert s.nnz == np.count_nonzero(w)
    assert np.array_equal(s.to_dense(), w)
    assert s.sparsity == pytest.approx(1 - np.count_nonzero(w) / w.size)


def test_storage_is_six_bytes_per_nonzero_with_uint16_indices(rng):
    w = sparse_weight((512, 512, 3, 3), 0.9, rng)
    s = SparseConvWeight.from_dense(w)
    assert s.csr.indices.dtype == np.uint16
    per_nnz = (s.csr.indices.nbytes + s.csr.data.nbytes) / s.nnz
    assert per_nnz == 6
    assert s.nbytes <= 6 * s.nnz + 8 * 513


def test_wide_rows_use_int32_indices(rng):
    m = CSRMatrix.from_dense(sparse_weight((2, 70000), 0.99, rng))
    assert m.indices.dtype == np.int32
    m.check_format(full=True)


def _valid(rng):
    return CSRMatrix.from_dense(sparse_weight((5, 12), 0.5, rng))


def _rebuilt(m, **arrays):
    """``m`` with some of its arrays replaced, unchecked (the formats are immutable)."""
    fields = dict(indptr=m.indptr, indices=m.indices, data=m.data)
    fields.update(arrays)
    return CSRMatrix(**fields, shape=m.shape, check=None)


def _first_pointer_1(m):
    indptr = m.indptr.copy()
    indptr[0] = 1
    return _rebuilt(m, indptr=indptr)


@pytest.mark.parametrize("corrupt, message", [
    (lambda m: _rebuilt(m, indptr=m.indptr.astype(np.int32)), "indptr: expected a 1-D int64"),
    (lambda m: _rebuilt(m, indptr=m.indptr[:-1]), "expected length 6"),
    (_first_pointer_1, r"indptr\[0\]: expected 0"),
    (lambda m: _rebuilt(m, data=m.data.astype(np.float64)), "data: expected a 1-D float32"),
    (lambda m: _rebuilt(m, indices=m.indices[:-1]), "expected length indptr"),
    (lambda m: _rebuilt(m, indices=m.indices.astype(np.float32)), "indices: expected"),
])
def test_cheap_checks(corrupt, message, rng):
    m = corrupt(_valid(rng))
    with pytest.raises(FormatError, match=message):
        m.check_format(full=False)


def test_full_checks_catch_bounds_order_and_pointers(rng):
    m = _valid(rng)
    indices = m.indices.copy()
    indices[0] = 12
    m = _rebuilt(m, indices=indices)
    m.check_format(full=False)  # O(1) checks do not look at values
    with pytest.raises(FormatError, match="out of range"):
        m.check_format(full=True)
    m = _valid(rng)
    r = int(np.argmax(np.diff(m.indptr) >= 2))
    k = m.indptr[r]
    indices = m.indices.copy()
    indices[k], indices[k + 1] = indices[k + 1], indices[k]
    with pytest.raises(FormatError, match="strictly increasing"):
        _rebuilt(m, indices=indices).check_format(full=True)
    m = CSRMatrix(np.array([0, 3, 1, 4], np.int64), np.array([0, 1, 2, 3], np.uint16),
                  np.ones(4, np.float32), (3, 5), check="cheap")
    with pytest.raises(FormatError, match="non-decreasing"):
        m.check_format(full=True)


def test_constructor_validates_and_errors_are_value_errors(rng):
    m = _valid(rng)
    with pytest.raises(ValueError, match="out of range"):
        CSRMatrix(m.indptr, m.indices.astype(np.int32) + 100, m.data, m.shape)
    with pytest.raises(FormatError, match="kernel_shape"):
        SparseConvWeight(m, (5, 3, 3))
    with pytest.raises(FormatError, match="4-D"):
        SparseConvWeight.from_dense(np.ones((3, 3)))


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])
def test_full_check_in_chunks_finds_the_same_first_problem(monkeypatch, chunk):
    import fscnn.sparse.formats as formats
    monkeypatch.setattr(formats, "_CHECK_CHUNK", chunk)
    dense = np.array([[0, 1, 2, 0], [0, 0, 0, 0], [3, 0, 0, 4], [5, 6, 7, 8]], np.float32)
    good = CSRMatrix.from_dense(dense)
    good.check_format(full=True)  # row starts at chunk boundaries are not order errors
    cases = [([1, 2, 0, 3, 0, 1, 3, 2], "entry 7 (2) follows 3"),
             ([1, 1, 0, 3, 0, 1, 2, 3], "entry 1 (1) follows 1"),
             ([2, 1, 0, 3, 0, 1, 2, 9], "indices[7] = 9 is out of range"),  # before order
             ([1, 2, 0, 3, 0, 2, 1, 3], "entry 6 (1) follows 2")]
    for indices, message in cases:
        bad = CSRMatrix(good.indptr, np.array(indices, np.uint16), good.data, good.shape,
                        check=None)
        with pytest.raises(FormatError, match=re.escape(message)):
            bad.check_format(full=True)


@pytest.mark.parametrize("chunk", [1, 5, 1 << 18])
def test_to_dense_in_chunks(monkeypatch, chunk, rng):
    import fscnn.sparse.formats as formats
    monkeypatch.setattr(formats, "_CHECK_CHUNK", chunk)
    for shape, sparsity in [((7, 13), 0.6), ((1, 70000), 0.999), ((5, 4), 1.0), ((3, 2), 0.0)]:
        w = sparse_weight(shape, sparsity, rng)
        w[min(2, shape[0] - 1)] = 0  # an empty row
        assert np.array_equal(CSRMatrix.from_dense(w).to_dense(), w)
    w = sparse_weight((6, 3, 2, 2), 0.5, rng)
    assert np.array_equal(SparseConvWeight.from_dense(w).to_dense(), w)


def test_formats_are_immutable(rng):
    """A checked matrix stays valid: its arrays are read-only and cannot be reassigned."""
    m = _valid(rng)
    for name in ("indptr", "indices", "data"):
        array = getattr(m, name)
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
        with pytest.raises(AttributeError, match="immutable"):
            setattr(m, name, array.copy())
    with pytest.raises(AttributeError, match="immutable"):
        m.shape = (5, 13)
    conv = SparseConvWeight.from_dense(sparse_weight((4, 2, 3, 3), 0.5, rng))
    with pytest.raises(AttributeError, match="immutable"):
        conv.csr = m
    with pytest.raises(AttributeError, match="immutable"):
        conv.kernel_shape = (1, 1, 18)


def test_constructor_freezes_owned_arrays_and_copies_writeable_views(rng):
    dense = sparse_weight((4, 6), 0.5, rng)
    ref = CSRMatrix.from_dense(dense)
    indptr, indices, data = ref.indptr.copy(), ref.indices.copy(), ref.data.copy()
    m = CSRMatrix(indptr, indices, data, ref.shape)
    assert m.indices is indices and not indices.flags.writeable  # frozen in place, no copy
    buffer = ref.indices.copy()
    view = buffer[:]
    m = CSRMatrix(ref.indptr, view, ref.data, ref.shape)
    buffer[0] = 5  # the caller's buffer stays writeable; the matrix holds its own copy
    assert not np.shares_memory(m.indices, buffer)
    assert np.array_equal(m.to_dense(), dense)
    readonly = np.frombuffer(ref.data.tobytes(), np.float32)  # read-only memory: no copy
    assert CSRMatrix(ref.indptr, ref.indices, readonly, ref.shape).data is readonly


def test_pickled_formats_stay_immutable(rng):
    import pickle
    conv = SparseConvWeight.from_dense(sparse_weight((4, 2, 3, 3), 0.5, rng))
    copy = pickle.loads(pickle.dumps(conv))
    assert np.array_equal(copy.to_dense(), conv.to_dense())
    assert not any(a.flags.writeable for a in (copy.csr.indptr, copy.csr.indices,
                                               copy.csr.data))
