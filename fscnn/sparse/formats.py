"""Compressed-row storage for sparse Linear and convolution weights.

Canonical form: within each row the column indices are strictly increasing (sorted, no
duplicates) and every stored value is non-zero as converted from a dense array (explicit zeros
may appear only if a user builds the arrays by hand; they are harmless). Column indices are
``uint16`` when the row length fits (6 bytes per non-zero with float32 values), else ``int32``
(8 bytes per non-zero).

Both formats are immutable: their arrays are read-only and their attributes cannot be
reassigned, so a matrix that passed ``check_format(full=True)`` once (as every operator built
from one checks it) stays valid, and the compiled kernels never see indices changed after the
check. An array given to the constructor is made read-only in place when it owns its memory
(no copy), kept when nothing can write its memory, and copied when it is a view of writeable
memory (another array could change it).
"""
import numpy as np


class FormatError(ValueError):
    """A sparse format's arrays are inconsistent (wrong dtype, shape, bounds or order)."""


_CHECK_CHUNK = 1 << 18  # entries at a time in check_format(full=True) and to_dense


def _index_dtype(n_cols):
    return np.uint16 if n_cols <= np.iinfo(np.uint16).max + 1 else np.int32


def _writeable_memory(obj):
    """Whether the memory behind ``obj`` (an array, or the buffer at the end of a chain of
    views) can be written through some object."""
    while isinstance(obj, np.ndarray):
        if obj.flags.writeable:
            return True
        if obj.base is None:
            return False
        obj = obj.base
    try:
        return not memoryview(obj).readonly
    except TypeError:  # not a buffer numpy could have viewed: assume the worst
        return True


def _frozen(array):
    """``array`` (C-contiguous) as an array whose memory nothing can write through numpy:
    itself made read-only when it owns its memory or views read-only memory, else a read-only
    copy. (Views of an owning array made before it is frozen keep their own flag.)"""
    array = np.ascontiguousarray(array)
    if array.base is not None and _writeable_memory(array.base):
        array = array.copy()
    array.setflags(write=False)
    return array


def _immutable(name, doc):
    """A read-only attribute stored as ``_<name>``; assigning it raises AttributeError."""
    def get(self):
        return self.__dict__["_" + name]

    def refuse(self, value):
        raise AttributeError(f"{type(self).__name__}.{name} cannot be reassigned: the format "
                             f"is immutable, build a new {type(self).__name__}")
    return property(get, refuse, doc=doc)


class CSRMatrix:
    """Compressed sparse rows of a float32 matrix.

    Parameters
    ----------
    indptr : array of int64, shape (n_rows + 1,)
        Row ``r`` holds entries ``indptr[r]:indptr[r + 1]``.
    indices : array of uint16 or int32, shape (nnz,)
        Column of each entry, strictly increasing within a row.
    data : array of float32, shape (nnz,)
        Value of each entry.
    shape : tuple (n_rows, n_cols)
    check : {"cheap", "full", None}
        Validation on construction: "cheap" checks dtypes and lengths (O(1)), "full" also checks
        bounds and order (O(nnz)).

    The matrix is immutable: ``indptr``, ``indices`` and ``data`` are read-only (arrays that
    own their memory are made read-only in place, views of writeable memory are copied) and
    cannot be reassigned.

    Examples
    --------
    >>> m = CSRMatrix.from_dense(np.array([[0, 2.0], [3.0, 0]], dtype=np.float32))
    >>> m.nnz, m.to_dense().tolist()
    (2, [[0.0, 2.0], [3.0, 0.0]])
    """

    format = "csr"

    indptr = _immutable("indptr", "Row pointers, read-only int64 array of shape (n_rows + 1,).")
    indices = _immutable("indices", "Column of each entry, read-only uint16 or int32 array.")
    data = _immutable("data", "Value of each entry, read-only float32 array.")
    shape = _immutable("shape", "(n_rows, n_cols).")

    def __init__(self, indptr, indices, data, shape, check="full"):
        if check not in ("full", "cheap", None):
            raise ValueError(f"CSRMatrix: check must be 'full', 'cheap' or None, got {check!r}")
        # the kernels read the arrays as contiguous memory, which must not change once checked
        d = self.__dict__
        d["_indptr"], d["_indices"], d["_data"] = (_frozen(a) for a in (indptr, indices, data))
        try:
            dims = tuple(shape)
        except TypeError:
            raise TypeError(f"shape: expected a pair of sizes, got {shape!r}") from None
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in dims):
            raise FormatError(f"shape: expected integer sizes, got {shape!r}")
        d["_shape"] = tuple(int(s) for s in dims)
        if check is not None:
            self.check_format(full=(check == "full"))

    def __reduce__(self):
        # rebuilt through __init__, so that the unpickled (writeable) arrays are frozen again
        return type(self), (self.indptr, self.indices, self.data, self.shape, "cheap")

    @classmethod
    def from_dense(cls, dense):
        """Compress a 2-D array; exact zeros are dropped, other values converted to float32.

        Works through blocks of rows so that the temporary index arrays stay small even for a
        dense 100-million-entry matrix. O(size)."""
        dense = np.asarray(dense)
        if dense.dtype.kind not in "fiu":
            raise TypeError(f"CSRMatrix.from_dense: expected a real numeric array, got dtype "
                            f"{dense.dtype}")
        if dense.ndim != 2:
            raise FormatError(f"CSRMatrix.from_dense: expected a 2-D array, got shape {dense.shape}")
        n_rows, n_cols = dense.shape
        counts = np.count_nonzero(dense, axis=1) if dense.size else np.zeros(n_rows, np.int64)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.empty(indptr[-1], dtype=_index_dtype(n_cols))
        data = np.empty(indptr[-1], dtype=np.float32)
        step = max(1, (1 << 22) // max(1, n_cols))
        for r0 in range(0, n_rows, step):
            block = np.ascontiguousarray(dense[r0:r0 + step], dtype=np.float32).reshape(-1)
            flat = np.flatnonzero(block)
            k0, k1 = indptr[r0], indptr[min(r0 + step, n_rows)]
            indices[k0:k1] = flat % n_cols
            data[k0:k1] = block[flat]
        return cls(indptr, indices, data, dense.shape, check=None)

    def to_dense(self):
        """The dense float32 array of shape ``self.shape``."""
        out = np.zeros(self.shape, dtype=np.float32)
        flat, n_cols = out.reshape(-1), self.shape[1]
        # a chunk of entries at a time: no int64 row and column arrays of all non-zeros
        for e0 in range(0, self.nnz, _CHECK_CHUNK):
            e1 = min(self.nnz, e0 + _CHECK_CHUNK)
            rows = np.searchsorted(self.indptr, np.arange(e0, e1), side="right") - 1
            flat[rows * n_cols + self.indices[e0:e1]] = self.data[e0:e1]
        return out

    def transpose(self):
        """The transposed matrix, in canonical form (SciPy's CSR transposition)."""
        import scipy.sparse
        t = scipy.sparse.csr_matrix((self.data, self.indices.astype(np.int64), self.indptr),
                                    shape=self.shape).T.tocsr()
        t.sort_indices()
        return CSRMatrix(t.indptr.astype(np.int64), t.indices.astype(_index_dtype(self.shape[0])),
                         t.data.astype(np.float32), (self.shape[1], self.shape[0]), check=None)

    @property
    def nnz(self):
        return int(self.indptr[-1]) if self.indptr.size else 0

    @property
    def nbytes(self):
        """Bytes of the three arrays."""
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes

    def check_format(self, full=True):
        """Raise :class:`FormatError` unless the arrays form a valid canonical CSR matrix.

        The cheap checks (dtypes, ranks, lengths) are O(1); ``full=True`` adds the O(nnz)
        checks: monotone pointers, column bounds, strictly increasing columns within rows.
        """
        n_rows, n_cols = self._check_shape()
        if self.indptr.dtype != np.int64 or self.indptr.ndim != 1:
            raise FormatError(f"indptr: expected a 1-D int64 array, got {self.indptr.dtype} "
                              f"with shape {self.indptr.shape}")
        if self.indices.dtype not in (np.uint16, np.int32) or self.indices.ndim != 1:
            raise FormatError(f"indices: expected a 1-D uint16 or int32 array, got "
                              f"{self.indices.dtype} with shape {self.indices.shape}")
        if self.indices.dtype == np.uint16 and n_cols > 65536:
            raise FormatError(f"indices: uint16 cannot address {n_cols} columns")
        if self.data.dtype != np.float32 or self.data.ndim != 1:
            raise FormatError(f"data: expected a 1-D float32 array, got {self.data.dtype} "
                              f"with shape {self.data.shape}")
        if self.indptr.shape[0] != n_rows + 1:
            raise FormatError(f"indptr: expected length {n_rows + 1} (rows + 1), "
                              f"got {self.indptr.shape[0]}")
        if self.indptr[0] != 0:
            raise FormatError(f"indptr[0]: expected 0, got {self.indptr[0]}")
        nnz = int(self.indptr[-1])
        if self.indices.shape[0] != nnz or self.data.shape[0] != nnz:
            raise FormatError(f"indices/data: expected length indptr[-1] = {nnz}, got "
                              f"{self.indices.shape[0]} and {self.data.shape[0]}")
        if not full:
            return
        counts = np.diff(self.indptr)
        if (counts < 0).any():
            r = int(np.argmax(counts < 0))
            raise FormatError(f"indptr: must be non-decreasing, but indptr[{r + 1}] = "
                              f"{self.indptr[r + 1]} < indptr[{r}] = {self.indptr[r]}")
        if nnz == 0:
            return
        # in chunks, so that checking a 100-million-entry matrix needs a few MiB
        for a in range(0, nnz, _CHECK_CHUNK):
            cols = self.indices[a:a + _CHECK_CHUNK].astype(np.int64)
            if cols.min() < 0 or cols.max() >= n_cols:
                bad = a + int(np.argmax((cols < 0) | (cols >= n_cols)))
                raise FormatError(f"indices[{bad}] = {self.indices[bad]} is out of range "
                                  f"[0, {n_cols})")
        # strictly increasing within each row: a non-increase is allowed only at a row start
        starts = self.indptr[1:-1][counts[1:] > 0]
        for a in range(0, nnz, _CHECK_CHUNK):
            b = min(nnz, a + _CHECK_CHUNK)
            first = max(a, 1)  # entry k is compared with entry k - 1
            cols = self.indices[first - 1:b].astype(np.int64)
            row_start = np.zeros(b - first, dtype=bool)
            lo, hi = np.searchsorted(starts, [first, b])
            row_start[starts[lo:hi] - first] = True
            bad = (np.diff(cols) <= 0) & ~row_start
            if bad.any():
                k = first + int(np.argmax(bad))
                raise FormatError(f"indices: columns must be strictly increasing within a row; "
                                  f"entry {k} ({self.indices[k]}) follows {self.indices[k - 1]}")

    def _check_shape(self):
        if len(self.shape) != 2 or min(self.shape) < 0:
            raise FormatError(f"shape: expected two non-negative sizes, got {self.shape}")
        return self.shape

    def __repr__(self):
        return (f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, "
                f"index={self.indices.dtype}, nbytes={self.nbytes})")


class SparseConvWeight:
    """A convolution weight of shape (O, C/groups, KH, KW), one compressed row per output channel.

    Row ``o`` lists the non-zero taps of output channel ``o`` as column indices
    ``(ci*KH + kh)*KW + kw`` into the flattened (C/groups, KH, KW) kernel.

    Parameters
    ----------
    csr : CSRMatrix of shape (O, C/groups * KH * KW)
    kernel_shape : tuple (C/groups, KH, KW)
    """

    format = "conv-csr"

    csr = _immutable("csr", "The compressed rows, a CSRMatrix of shape (O, C/groups*KH*KW).")
    kernel_shape = _immutable("kernel_shape", "(C/groups, KH, KW).")

    def __init__(self, csr, kernel_shape):
        if not isinstance(csr, CSRMatrix):
            raise TypeError(f"SparseConvWeight: csr must be a CSRMatrix, got {type(csr).__name__}")
        self.__dict__["_csr"] = csr
        self.__dict__["_kernel_shape"] = tuple(int(k) for k in kernel_shape)
        if len(self.kernel_shape) != 3 or min(self.kernel_shape) < 1:
            raise FormatError(f"kernel_shape must be three positive sizes (C/groups, KH, KW), "
                              f"got {self.kernel_shape}")
        if int(np.prod(self.kernel_shape)) != csr.shape[1]:
            raise FormatError(f"kernel_shape {self.kernel_shape} does not match the "
                              f"{csr.shape[1]} columns of the compressed rows")

    @classmethod
    def from_dense(cls, weight):
        """Compress a dense (O, C/groups, KH, KW) weight; exact zeros are dropped."""
        weight = np.asarray(weight)
        if weight.dtype.kind not in "fiu":
            raise TypeError(f"SparseConvWeight.from_dense: expected a real numeric array, got "
                            f"dtype {weight.dtype}")
        if weight.ndim != 4:
            raise FormatError(f"SparseConvWeight.from_dense: expected a 4-D weight "
                              f"(O, C/groups, KH, KW), got shape {weight.shape}")
        return cls(CSRMatrix.from_dense(weight.reshape(weight.shape[0], -1)), weight.shape[1:])

    @property
    def shape(self):
        return (self.csr.shape[0],) + self.kernel_shape

    @property
    def nnz(self):
        return self.csr.nnz

    @property
    def nbytes(self):
        return self.csr.nbytes

    @property
    def sparsity(self):
        size = int(np.prod(self.shape))
        return 1.0 - self.nnz / size if size else 0.0

    def to_dense(self):
        return self.csr.to_dense().reshape(self.shape)

    def check_format(self, full=True):
        self.csr.check_format(full=full)

    def __repr__(self):
        return (f"SparseConvWeight(shape={self.shape}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.3f}, nbytes={self.nbytes})")
