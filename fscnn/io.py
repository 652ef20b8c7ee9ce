"""Compact ``.npz`` archives of (sparse) state_dicts, and a loader that is safe on hostile files.

Archive format, version 1
-------------------------
An archive is a plain NumPy ``.npz`` file (a zip of ``.npy`` members, no pickles) that
``numpy.load(path, allow_pickle=False)`` can open. Its keys are:

``__fscnn_format__``
    int64 scalar, the format version (1). A ``.npz`` without it is read as a plain dense
    archive, e.g. one written by ``np.savez(path, **state_dict)``.
``__fscnn_graph__``
    optional, uint8 of shape (n,): the UTF-8 JSON of :meth:`fscnn.nn.Graph.spec` (layer type
    names from a fixed list, constructor arguments, value names), present when the archive
    holds a whole model (an imported graph): :func:`load_model` rebuilds it without the
    packages it was imported with. Saved from a prepared model, the description also holds
    ``"plan"``: layer name -> ``[[input shape], threads, SIMD level, kernel]`` rows, the kernels
    its layers chose, which the loaded model takes instead of timing them again (older fscnn
    versions ignore it).
``NAME``
    a tensor stored dense, with its own dtype and shape.
``NAME::shape``, ``NAME::values`` and exactly one of ``NAME::delta16``, ``NAME::index32``,
``NAME::bitmask``
    a tensor stored sparse. ``shape`` is int64 of shape (ndim,); ``values`` of shape (k,) holds
    the stored entries in C (row-major) order with the tensor's dtype; the index array says
    where they go in the flattened tensor:

    - ``delta16``: uint16 of shape (k,), gaps between consecutive flat positions
      ``p[i] = p[i-1] + delta[i]`` with ``p[-1] = -1``; every gap is >= 1. A gap larger than
      65535 is bridged by storing a zero entry every 65535 positions.
    - ``index32``: uint32 of shape (k,), strictly increasing flat positions.
    - ``bitmask``: uint8 of shape (ceil(numel / 8),), ``np.packbits`` (big bit order) of the
      stored-entry mask; padding bits are zero and k bits are set.

An entry is stored when it is not zero: ``-0.0`` is a zero like ``+0.0`` (PyTorch's pruning,
``weight * mask``, leaves ``-0.0`` in place of every pruned negative weight, about half of
them) and loads as ``+0.0``, as ``CSRMatrix.from_dense`` drops it too; NaN is stored. A round
trip is bit-exact but for the sign of zeros in sparse-stored tensors (dense-stored tensors
are written as they are). ``save`` stores a tensor sparse when at least ``min_sparsity`` of its
entries are zero and the smallest of the three encodings, plus about 600 bytes for the two
extra members, is smaller than the dense bytes. Archives holding stored ``-0.0`` entries
(written before zeros were compared by value) load unchanged.
Names may not start with ``__fscnn``. Allowed dtypes: bool, (u)int8-64, float16/32/64.

Format version 2
----------------
Version 1 with every name percent-encoded for ``%`` and ``:`` (``%25``, ``%3A``), so that
names holding ``::`` (ONNX exporters write ``onnx::Conv_193``) or ``:`` (TFLite's tensor
names) are stored. ``save`` writes version 1 whenever no name holds ``%`` or ``:``, so such
archives stay readable by fscnn versions that know version 1 only.
"""
import json
import math
import os
import re
import secrets
import tokenize
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

__all__ = ["ArchiveError", "FORMAT_KEY", "FORMAT_VERSION", "GRAPH_KEY", "save", "load",
           "encode_tensor", "decode_tensor",
           "load_model", "holds_model", "decode", "is_encoded", "encoded_nbytes", "state_dict_of"]

FORMAT_KEY = "__fscnn_format__"
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)  # what load reads
GRAPH_KEY = "__fscnn_graph__"
_MAX_GRAPH_BYTES = 64 << 20  # a model description larger than this is not one fscnn wrote
_RESERVED_PREFIX = "__fscnn"
_SEP = "::"
_DELTA_MAX = np.iinfo(np.uint16).max
_INDEX_DTYPES = {"delta16": np.dtype(np.uint16), "index32": np.dtype(np.uint32),
                 "bitmask": np.dtype(np.uint8)}
_FIELDS = frozenset(("shape", "values", *_INDEX_DTYPES))
_ITEMSIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8)}
_MAX_NDIM = 32
_MAX_HEADER = 10000
# Deflate cannot expand data by more than ~1032x; a member claiming more is lying.
_MAX_DEFLATE_RATIO = 1032
_MIN_BYTES_LIMIT = 1 << 30
# A sparse tensor takes two more members than a dense one: each costs a 128-byte .npy header
# and ~100 bytes of zip records plus twice its name.
_SPARSE_OVERHEAD = 600
_BYTES_PER_FILE_BYTE = 64
# What zipfile, zlib and numpy's .npy header parser raise on corrupt input.
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError,
            tokenize.TokenError)


class ArchiveError(ValueError):
    """A ``.npz`` archive is malformed, inconsistent or unsupported.

    Parameters
    ----------
    path : str
        The archive.
    key : str or None
        The archive key at fault, None for a problem with the whole file.
    problem : str
        What was expected and what was found.
    """

    def __init__(self, path, key, problem):
        self.path = path
        self.key = key
        where = f"{path}" if key is None else f"{path}: key {key!r}"
        super().__init__(f"{where}: {problem}")


def state_dict_of(obj):
    """The mapping name -> array of a model (anything with ``state_dict()``) or a mapping.

    Parameters
    ----------
    obj : Mapping or object with a ``state_dict()`` method

    Returns
    -------
    Mapping
        ``obj`` itself when it is a mapping, else ``obj.state_dict()``.
    """
    if isinstance(obj, Mapping):
        return obj
    method = getattr(obj, "state_dict", None)
    if not callable(method):
        raise TypeError("expected a state_dict (mapping name -> array) or a model with "
                        f"state_dict(), received {type(obj).__name__}")
    return method()


def _check_dtype(dtype):
    """Whether ``dtype`` is one an archive may hold (plain bool, integer or float)."""
    return (dtype.fields is None and dtype.subdtype is None
            and dtype.itemsize in _ITEMSIZES.get(dtype.kind, ()))


def _encode(array, min_sparsity):
    """Choose the smallest encoding of ``array``.

    Parameters
    ----------
    array : ndarray
        Any allowed dtype and shape.
    min_sparsity : float
        Fraction of zero entries below which the tensor stays dense.

    Returns
    -------
    tuple (encoding, values, index) or None
        None when the tensor is to be stored dense.
    """
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.size == 0:
        return None
    positions = np.flatnonzero(flat)  # by value: -0.0 is a zero, NaN is not
    return _encode_positions(positions, lambda p: flat[p], flat.size, flat.dtype, min_sparsity,
                             lambda: np.packbits(flat != 0))


def _encode_positions(positions, values_at, numel, dtype, min_sparsity, bitmask):
    """The encoding of a tensor of ``numel`` entries whose stored entries (non-zero bit
    patterns) are at the increasing flat ``positions``; ``values_at(p)`` gives the values at
    positions ``p`` and ``bitmask()`` the packed mask. None when it is to be stored dense."""
    itemsize = dtype.itemsize
    nnz = positions.size
    if 1.0 - nnz / numel < min_sparsity:
        return None
    gaps = np.diff(positions, prepend=-1)
    bridges = (gaps - 1) // _DELTA_MAX
    costs = {"delta16": (nnz + int(bridges.sum())) * (itemsize + 2),
             "bitmask": -(-numel // 8) + nnz * itemsize}
    if numel <= 1 << 32:
        costs["index32"] = nnz * (itemsize + 4)
    encoding = min(costs, key=costs.get)
    if costs[encoding] + _SPARSE_OVERHEAD >= numel * itemsize:
        return None
    if encoding == "bitmask":
        return encoding, values_at(positions), bitmask()
    if encoding == "index32":
        return encoding, values_at(positions), positions.astype(np.uint32)
    if bridges.any():
        gapped = bridges > 0
        counts = bridges[gapped]
        starts = np.repeat(positions[gapped] - gaps[gapped], counts)
        step = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        positions = np.sort(np.concatenate([positions, starts + step * _DELTA_MAX]))
    return encoding, values_at(positions), np.diff(positions, prepend=-1).astype(np.uint16)


def _encode_rows(weight, min_sparsity):
    """:func:`_encode` of the dense float32 tensor of a CSRMatrix or SparseConvWeight, computed
    from its compressed rows (the same members, no dense intermediate)."""
    csr = getattr(weight, "csr", weight)
    n_rows, n_cols = csr.shape
    numel = n_rows * n_cols
    if numel == 0:
        return None
    data = csr.data
    stored = data != 0  # an explicit +0.0 or -0.0 is not stored, as from dense
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(csr.indptr))
    positions = rows * n_cols + csr.indices
    del rows
    if not stored.all():
        positions, data = positions[stored], data[stored]
    del stored

    def values_at(p):  # p: the stored positions, plus zeros bridging long delta16 gaps
        if p.size == positions.size:
            return data
        out = np.zeros(p.size, np.float32)
        out[np.isin(p, positions, assume_unique=True)] = data
        return out

    def bitmask():
        packed = np.zeros(-(-numel // 8), np.uint8)
        for a in range(0, positions.size, _POSITION_CHUNK):
            p = positions[a:a + _POSITION_CHUNK]
            np.bitwise_or.at(packed, p >> 3, (0x80 >> (p & 7)).astype(np.uint8))
        return packed
    return _encode_positions(positions, values_at, numel, np.dtype(np.float32), min_sparsity,
                             bitmask)


def encoded_nbytes(array, min_sparsity=0.5):
    """Bytes of array data that ``save`` writes for one tensor (``.npy`` headers excluded).

    Parameters
    ----------
    array : array_like
    min_sparsity : float, default 0.5
        As in `save`.

    Returns
    -------
    int
    """
    array = np.asarray(array)
    encoded = _encode(array, min_sparsity)
    if encoded is None:
        return array.nbytes
    return encoded[1].nbytes + encoded[2].nbytes + 8 * array.ndim


def encode_tensor(value, min_sparsity=0.5):
    """One tensor in the encoding `save` would store it with, for pickles of models.

    Parameters
    ----------
    value : ndarray, CSRMatrix or SparseConvWeight
    min_sparsity : float
        As in `save`.

    Returns
    -------
    dict or None
        ``{"shape": ..., "values": ..., ENCODING: index}`` (the members of a sparse-stored
        tensor, without its name), or None when `save` would store it dense.
    """
    from .sparse import CSRMatrix, SparseConvWeight
    if isinstance(value, (CSRMatrix, SparseConvWeight)):
        encoded = _encode_rows(value, min_sparsity)
    else:
        value = np.asarray(value)
        encoded = _encode(value, min_sparsity)
    if encoded is None:
        return None
    encoding, values, index = encoded
    return {"shape": np.array(value.shape, dtype=np.int64), "values": values, encoding: index}


def decode_tensor(fields, rows=False):
    """The tensor of :func:`encode_tensor`'s fields: a dense array, or with ``rows`` a
    CSRMatrix (2-D) / SparseConvWeight (4-D), checked as `load` checks archives."""
    where, name = "pickled tensor", fields.get("shape", np.zeros(0)).tolist()
    if rows:
        return _decode_rows(where, str(name), fields, np.iinfo(np.int64).max)
    return _decode_sparse(where, str(name), fields, np.iinfo(np.int64).max)


def _members(state_dict, min_sparsity, spec=None):
    """The (key, array) pairs that represent ``state_dict`` (and a graph's ``spec``) in an
    archive."""
    from .sparse import CSRMatrix, SparseConvWeight
    for name in state_dict:
        if not isinstance(name, str) or not name or name.startswith(_RESERVED_PREFIX):
            raise ValueError(f"cannot save key {name!r}: expected a non-empty str that does "
                             f"not start with {_RESERVED_PREFIX!r}")
    escape = any("%" in name or ":" in name for name in state_dict)
    yield FORMAT_KEY, np.array(2 if escape else 1, dtype=np.int64)
    if spec is not None:
        yield GRAPH_KEY, np.frombuffer(json.dumps(spec).encode("utf-8"), dtype=np.uint8)
    stored = getattr(state_dict, "stored", None)  # a model's StateDict: sparse weights as held
    for key in state_dict:
        value = stored(key) if stored is not None else state_dict[key]
        name = key.replace("%", "%25").replace(":", "%3A") if escape else key
        if isinstance(value, (CSRMatrix, SparseConvWeight)):
            value.check_format(full=False)
            encoded = _encode_rows(value, min_sparsity)
            if encoded is None:
                yield name, value.to_dense()
            else:
                encoding, values, index = encoded
                yield f"{name}{_SEP}shape", np.array(value.shape, dtype=np.int64)
                yield f"{name}{_SEP}values", values
                yield f"{name}{_SEP}{encoding}", index
            continue
        array = np.asarray(value)
        if not _check_dtype(array.dtype):
            raise TypeError(f"cannot save {name!r}: expected a bool, integer or float16/32/64 "
                            f"array, received dtype {array.dtype}")
        encoded = _encode(array, min_sparsity)
        if encoded is None:
            yield name, array
        else:
            encoding, values, index = encoded
            yield f"{name}{_SEP}shape", np.array(array.shape, dtype=np.int64)
            yield f"{name}{_SEP}values", values
            yield f"{name}{_SEP}{encoding}", index


def save(model_or_state_dict, path, *, min_sparsity=0.5, compress=False):
    """Write a state_dict to a ``.npz`` archive, storing sparse tensors compactly; for a
    graph model (:class:`fscnn.nn.Graph`, e.g. an imported ONNX or TFLite model) the archive
    holds the whole model, which :func:`load_model` rebuilds.

    The archive is written to a temporary file next to ``path`` and renamed into place, so
    an existing file is replaced only by a complete archive. See the module docstring for the format.

    Parameters
    ----------
    model_or_state_dict : Mapping or model
        name -> array (bool, integer or float16/32/64), or an object with ``state_dict()``.
        A :class:`~fscnn.sparse.CSRMatrix` or :class:`~fscnn.sparse.SparseConvWeight` value
        (a model's sparse-held weight, or what ``load(sparse=True)`` returns) is written as
        the dense float32 tensor it stands for, encoded from its rows without densifying.
    path : str or os.PathLike
        The file to write (no suffix is added).
    min_sparsity : float, default 0.5
        A tensor with at least this fraction of zero entries is stored sparse when that is
        smaller than dense (tensors under ~1 KiB stay dense).
    compress : bool, default False
        Deflate the zip members (as ``np.savez_compressed``); slower to read and write.
    """
    state_dict = state_dict_of(model_or_state_dict)
    spec_of = getattr(model_or_state_dict, "spec", None)  # a Graph: the whole model
    spec = spec_of() if callable(spec_of) else None
    if spec is not None:  # and its kernel choices, so that load_model does not time them again
        choices = model_or_state_dict._kernel_choices()
        if choices:
            spec["plan"] = {name: [[list(shape), *rest] for shape, *rest in rows]
                            for name, rows in choices.items()}
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], received {min_sparsity!r}")
    path = os.fspath(path)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    # a new file beside the target (so the rename is atomic) created with the umask's mode
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    try:
        f = open(tmp, "xb")
    except OSError as exc:  # name the file asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, path) from exc
    try:
        with f, zipfile.ZipFile(f, "w", compression=method, allowZip64=True) as zf:
            for key, array in _members(state_dict, min_sparsity, spec):
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _check_zip_entries(path, infos, file_size, max_bytes):
    """Reject zip members that are not plain ``.npy`` files or that claim impossible sizes."""
    seen = set()
    declared = 0
    for info in infos:
        name = info.filename
        if not name.endswith(".npy"):
            raise ArchiveError(path, name, "expected only '.npy' members in a .npz archive")
        if name in seen:
            raise ArchiveError(path, name[:-4], "the key appears twice")
        seen.add(name)
        key = name[:-4]
        if info.flag_bits & 0x1:
            raise ArchiveError(path, key, "the member is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveError(path, key, "expected a stored or deflated member, received "
                                          f"compression method {info.compress_type}")
        if info.header_offset + info.compress_size > file_size:
            raise ArchiveError(path, key, f"the member claims {info.compress_size} bytes at "
                                          f"offset {info.header_offset}, past the end of the "
                                          f"{file_size}-byte file")
        limit = (info.compress_size if info.compress_type == zipfile.ZIP_STORED
                 else _MAX_DEFLATE_RATIO * info.compress_size + 1024)
        if info.file_size > limit:
            raise ArchiveError(path, key, f"the member claims {info.file_size} bytes, more than "
                                          f"its {info.compress_size} stored bytes can hold")
        declared += info.file_size
        if declared > max_bytes:
            raise ArchiveError(path, key, f"the members hold more than max_bytes={max_bytes} "
                                          "bytes of data")


def _check_shape(path, key, shape, dtype):
    """Raise unless ``shape`` (tuple of int) is one numpy can hold with ``dtype``."""
    if len(shape) > _MAX_NDIM or min(shape, default=0) < 0 or \
            math.prod(s for s in shape if s) * dtype.itemsize > np.iinfo(np.intp).max:
        raise ArchiveError(path, key, f"expected at most {_MAX_NDIM} non-negative sizes that "
                                      f"numpy can hold, received shape {shape}")


def _read_member(path, zf, info):
    """Read one ``.npy`` member after checking its header against the zip entry.

    Returns
    -------
    ndarray
        Native byte order, writeable.
    """
    key = info.filename[:-4]
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, _MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, _MAX_HEADER)
        else:
            raise ArchiveError(path, key, f"expected .npy format 1.0 or 2.0, received {version}")
        if not _check_dtype(dtype):
            raise ArchiveError(path, key, "expected a bool, integer or float16/32/64 array, "
                                          f"received dtype {dtype}")
        _check_shape(path, key, shape, dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        header = f.tell()
        if header + nbytes != info.file_size:
            raise ArchiveError(path, key, f"the header announces {nbytes} bytes of data for "
                                          f"shape {shape}, the member holds "
                                          f"{info.file_size - header}")
        data = np.empty(math.prod(shape), dtype=dtype)
        if f.readinto(data.view(np.uint8)) != nbytes or f.read(1):
            raise ArchiveError(path, key, "the member ends before its data does")
    if fortran:
        data = data.reshape(shape[::-1]).T
    else:
        data.shape = shape  # not a view: an array owning its memory is frozen without a copy
    return data.astype(dtype.newbyteorder("="), copy=False)


_BITMASK_CHUNK = 1 << 20  # mask bytes unpacked at a time (8 Mi entries)


def _sparse_fields(path, name, fields):
    """Validate one ``NAME::field`` group; return (shape, values, encoding, index)."""
    def fail(field, problem):
        raise ArchiveError(path, f"{name}{_SEP}{field}", problem)

    encodings = [field for field in fields if field in _INDEX_DTYPES]
    for field in ("shape", "values"):
        if field not in fields:
            fail(field, "missing")
    if len(encodings) != 1:
        fail(encodings[1] if encodings else "index",
             f"expected exactly one of {sorted(_INDEX_DTYPES)}, received {encodings}")
    encoding = encodings[0]
    shape, values, index = fields["shape"], fields["values"], fields[encoding]
    if shape.dtype != np.int64 or shape.ndim != 1:
        fail("shape", f"expected int64 of shape (ndim,), received {shape.dtype} of shape "
                      f"{shape.shape}")
    shape = tuple(shape.tolist())
    _check_shape(path, f"{name}{_SEP}shape", shape, values.dtype)
    return shape, values, encoding, index


def _check_budget(path, name, shape, dtype, nbytes, budget):
    if nbytes > budget:
        raise ArchiveError(path, f"{name}{_SEP}shape",
                           f"a tensor of shape {shape} and dtype {dtype} needs {nbytes} bytes, "
                           f"over the {budget} bytes left under max_bytes (pass a larger "
                           "max_bytes to load it)")


_POSITION_CHUNK = 1 << 18  # stored entries decoded at a time


def _position_chunks(path, name, shape, values, encoding, index):
    """Yield ``(offset, positions)``: the flat positions (int64) of ``values[offset:offset +
    len(positions)]``, validated (strictly increasing, in range, one per value) as they go.

    Works a chunk of stored entries at a time (a bitmask a chunk of bytes at a time), so
    the transients are a few MiB whatever the size of the tensor. A problem raises
    ArchiveError naming the key, possibly after earlier chunks were yielded."""
    def fail(field, problem):
        raise ArchiveError(path, f"{name}{_SEP}{field}", problem)

    numel = math.prod(shape)
    if values.ndim != 1:
        fail("values", f"expected 1 dimension, received shape {values.shape}")
    expected = _INDEX_DTYPES[encoding]
    if index.dtype != expected or index.ndim != 1:
        fail(encoding, f"expected {expected} of 1 dimension, received {index.dtype} of shape "
                       f"{index.shape}")
    if encoding == "bitmask":
        if index.size != -(-numel // 8):
            fail(encoding, f"expected {-(-numel // 8)} bytes for {numel} entries, received "
                           f"{index.size}")
        if numel % 8 and int(index[-1]) & ((1 << (8 - numel % 8)) - 1):
            fail(encoding, "padding bits after the last entry are set")
        step = max(1, _POSITION_CHUNK // 8)
        counts = [int(np.unpackbits(index[b0:b0 + step]).sum())
                  for b0 in range(0, index.size, step)]
        if sum(counts) != values.size:
            fail(encoding, f"{sum(counts)} positions for {values.size} values")
        offset = 0
        for b0 in range(0, index.size, step):
            positions = np.flatnonzero(np.unpackbits(index[b0:b0 + step])) + 8 * b0
            yield offset, positions
            offset += positions.size
        return
    if index.size != values.size:
        fail(encoding, f"expected {values.size} entries like 'values', received {index.size}")
    last = -1
    for offset in range(0, index.size, _POSITION_CHUNK):
        chunk = index[offset:offset + _POSITION_CHUNK]
        if encoding == "delta16":
            if (chunk == 0).any():
                fail(encoding, "a zero gap repeats a position")
            positions = np.cumsum(chunk, dtype=np.int64) + last
        else:
            positions = chunk.astype(np.int64)
            if positions[0] <= last or (np.diff(positions) <= 0).any():
                fail(encoding, "positions are not strictly increasing")
        last = int(positions[-1])
        if last >= numel:
            fail(encoding, f"position {last} is out of range for {numel} entries")
        yield offset, positions


def _decode_sparse(path, name, fields, budget):
    """Rebuild a dense tensor from its validated ``shape``, ``values`` and index arrays.

    Parameters
    ----------
    fields : dict
        field name -> array for one ``NAME::field`` group.
    budget : int
        Bytes the dense result may still take.

    Returns
    -------
    ndarray
    """
    shape, values, encoding, index = _sparse_fields(path, name, fields)
    numel = math.prod(shape)
    _check_budget(path, name, shape, values.dtype, numel * values.dtype.itemsize, budget)
    dense = np.zeros(numel, dtype=values.dtype)
    for offset, positions in _position_chunks(path, name, shape, values, encoding, index):
        dense[positions] = values[offset:offset + positions.size]
    return dense.reshape(shape)


def _decodes_to_rows(fields):
    """Whether ``load(sparse=True)`` returns this sparse group as compressed rows."""
    shape, values = fields.get("shape"), fields.get("values")
    return (shape is not None and values is not None and shape.dtype == np.int64
            and shape.shape in ((2,), (4,)) and values.dtype.kind == "f")


def _decode_rows(path, name, fields, budget):
    """A CSRMatrix (2-D) or SparseConvWeight (4-D) straight from a sparse group.

    Values become float32 and entries that are then zero (stored ``-0.0``, the zeros that
    bridge long delta16 gaps) are dropped, so the result equals ``from_dense`` of the dense
    tensor; it is checked with ``check_format(full=True)``. No dense intermediate."""
    from .sparse import CSRMatrix, FormatError, SparseConvWeight
    from .sparse.formats import _index_dtype

    shape, values, encoding, index = _sparse_fields(path, name, fields)
    n_rows, n_cols = shape[0], math.prod(shape[1:])
    index_dtype = np.dtype(_index_dtype(n_cols))
    _check_budget(path, name, shape, values.dtype,
                  8 * (n_rows + 1) + values.size * (8 + index_dtype.itemsize), budget)
    stored = values.astype(np.float32, copy=False)
    nnz = int(np.count_nonzero(stored))
    data = stored if nnz == stored.size else np.empty(nnz, np.float32)
    cols = np.empty(nnz, dtype=index_dtype)
    counts = np.zeros(n_rows, dtype=np.int64)
    done = 0
    for offset, positions in _position_chunks(path, name, shape, values, encoding, index):
        chunk = stored[offset:offset + positions.size]
        if data is not stored:
            nonzero = chunk != 0
            positions, chunk = positions[nonzero], chunk[nonzero]
            data[done:done + chunk.size] = chunk
        rows, cols[done:done + positions.size] = np.divmod(positions, n_cols)
        counts += np.bincount(rows, minlength=n_rows)
        done += positions.size
    del stored
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    try:
        csr = CSRMatrix(indptr, cols, data, (n_rows, n_cols), check="full")
        return csr if len(shape) == 2 else SparseConvWeight(csr, shape[1:])
    except (FormatError, ValueError) as exc:
        raise ArchiveError(path, name, f"cannot form compressed rows: {exc}") from exc


def _assemble(path, arrays, max_bytes, sparse=False):
    """Turn the archive's arrays (key -> array, file order) into name -> dense array (or,
    with ``sparse``, compressed rows for sparse-stored 2-D and 4-D float tensors)."""
    tagged = FORMAT_KEY in arrays
    escaped = False
    if tagged:
        version = arrays.pop(FORMAT_KEY)
        if version.shape != () or version.dtype.kind not in "iu" \
                or int(version) not in FORMAT_VERSIONS:
            raise ArchiveError(path, FORMAT_KEY, f"unsupported format version {version.tolist()!r} "
                                                 f"({version.dtype}): this fscnn reads versions "
                                                 f"{', '.join(map(str, FORMAT_VERSIONS))}")
        escaped = int(version) == 2
    graph = arrays.pop(GRAPH_KEY, None)
    if graph is not None and not tagged:
        raise ArchiveError(path, GRAPH_KEY, f"a model description needs the {FORMAT_KEY!r} "
                                            "key, which is missing")
    groups = OrderedDict()
    for key, array in arrays.items():
        name, sep, field = key.partition(_SEP)
        if key.startswith(_RESERVED_PREFIX):
            raise ArchiveError(path, key, "unknown reserved key")
        if sep and not tagged:
            raise ArchiveError(path, key, f"sparse entries need the {FORMAT_KEY!r} key, which "
                                          "is missing")
        if sep and field not in _FIELDS:
            raise ArchiveError(path, key, f"unknown field {field!r}, expected one of "
                                          f"{sorted(_FIELDS)}")
        group = groups.setdefault(name, {})
        if ("" in group) if sep else bool(group):
            raise ArchiveError(path, key, f"{name!r} is stored both dense and sparse")
        group[field if sep else ""] = array
    if escaped:  # version 2: names are percent-encoded for '%' and ':'
        groups = OrderedDict((_unescape(path, name), fields) for name, fields in groups.items())
    result = OrderedDict()
    budget = max_bytes
    for name, fields in groups.items():
        if "" in fields:
            result[name] = fields[""]
        elif (sparse is True or (sparse and name in sparse)) and _decodes_to_rows(fields):
            result[name] = _decode_rows(path, name, fields, budget)
        else:
            result[name] = _decode_sparse(path, name, fields, budget)
        budget -= result[name].nbytes
        if budget < 0:
            raise ArchiveError(path, name, f"the tensors take more than max_bytes={max_bytes} "
                                           "bytes (pass a larger max_bytes to load them)")
    return result


def _unescape(path, name):
    if re.search(r"%(?!25|3A)", name):
        raise ArchiveError(path, name, "invalid escape in a version-2 name (only %25 and %3A "
                                       "are written)")
    return name.replace("%3A", ":").replace("%25", "%")


def is_encoded(mapping):
    """Whether ``mapping`` holds an archive's members as `save` wrote them (it has the
    ``__fscnn_format__`` key), e.g. ``np.load(path)`` of such an archive."""
    keys = mapping.keys() if hasattr(mapping, "keys") else ()
    return FORMAT_KEY in keys


def decode(members, *, sparse=False, max_bytes=None):
    """The state_dict that an archive's members stand for, as `load` returns it.

    For archives opened another way than `load`, e.g. ``np.load(path)`` of a file that
    `save` wrote (its sparse tensors appear as ``NAME::shape``, ``NAME::values`` and an index
    member). Every member is checked as `load` checks it.

    Parameters
    ----------
    members : mapping of str -> array
    sparse, max_bytes
        As in `load` (``max_bytes`` defaults to ``max(2**30, 64 * bytes of the members)``).

    Returns
    -------
    OrderedDict

    Raises
    ------
    ArchiveError
        The members do not form a valid archive.
    """
    where = getattr(getattr(members, "zip", None), "filename", None) or "archive members"
    arrays = OrderedDict()
    for key in members.keys():
        array = np.asarray(members[key])
        if not _check_dtype(array.dtype):
            raise ArchiveError(where, key, "expected a bool, integer or float16/32/64 array, "
                                           f"received dtype {array.dtype}")
        arrays[key] = array.astype(array.dtype.newbyteorder("="), copy=False)
    if max_bytes is None:
        max_bytes = max(_MIN_BYTES_LIMIT,
                        _BYTES_PER_FILE_BYTE * sum(a.nbytes for a in arrays.values()))
    return _assemble(where, arrays, max_bytes, sparse=bool(sparse))


def _read(path, max_bytes):
    """(the archive's arrays by key in file order, the max_bytes bound applied)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        if max_bytes is None:
            max_bytes = max(_MIN_BYTES_LIMIT, _BYTES_PER_FILE_BYTE * file_size)
        key = None
        try:
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                _check_zip_entries(path, infos, file_size, max_bytes)
                arrays = OrderedDict()
                for info in infos:
                    key = info.filename[:-4]
                    arrays[key] = _read_member(path, zf, info)
        except ArchiveError:
            raise
        except _CORRUPT as exc:
            what = "not a valid .npz (zip) archive" if key is None else "unreadable member"
            raise ArchiveError(path, key, f"{what}: {exc}") from exc
    return arrays, max_bytes


def load(path, *, max_bytes=None, sparse=False):
    """Read an archive written by `save`, or any plain dense ``.npz`` of named arrays.

    Nothing is unpickled and every size and index is checked before memory is allocated or
    written, so a corrupt or hostile file raises `ArchiveError` naming the file and the key.

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int, optional
        Bound on the bytes of the returned arrays (and of the raw data read). Default:
        ``max(2**30, 64 * file size)``.
    sparse : bool, default False
        Return every float tensor of 2 or 4 dimensions that is stored in a sparse encoding
        as compressed rows, decoded without a dense intermediate: a
        :class:`~fscnn.sparse.CSRMatrix` (2-D, a linear weight) or
        :class:`~fscnn.sparse.SparseConvWeight` (4-D, a convolution weight) with float32
        values, validated with ``check_format(full=True)``. ``Module.load_state_dict`` keeps
        them sparse, so a pruned model loads without ever holding its dense weights. Other
        tensors are returned as with ``sparse=False``.

    Returns
    -------
    OrderedDict
        name -> dense array (original dtype, native byte order), or sparse weight with
        ``sparse=True``, in the archive's order; ``Module.load_state_dict`` accepts it.

    Raises
    ------
    ArchiveError
        The file is not a valid archive; a ValueError subclass.
    OSError
        The file cannot be opened (missing, a directory, no permission).
    """
    arrays, max_bytes = _read(path, max_bytes)
    return _assemble(os.fspath(path), arrays, max_bytes, sparse=bool(sparse))


MODEL_SUFFIXES = (".onnx", ".tflite", ".npz")


def load_model(path, *, max_bytes=None, sparse=True, input_shapes=None):
    """A runnable model from a file: a whole-model archive written by :func:`save` (no
    optional package needed), an ONNX file (:func:`fscnn.from_onnx`) or a TFLite file
    (:func:`fscnn.from_tflite`), by its suffix.

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int, optional
        As in :func:`load`, for archives.
    sparse : bool, default True
        Archives: load the convolution and linear weights that are stored sparse as
        compressed rows (as :func:`load` with ``sparse=True``), never densified.
    input_shapes : optional
        ONNX files: as in :func:`fscnn.from_onnx`.

    Returns
    -------
    fscnn.nn.Graph

    Raises
    ------
    ArchiveError
        An archive is corrupt, holds weights only (no model: load those into a model with
        ``model.load_state_dict(fscnn.load(path))``), or its model description is invalid.
    fscnn.ModelImportError
        An ONNX or TFLite file cannot be imported.
    ValueError
        The suffix is none of ``.npz``, ``.onnx``, ``.tflite``.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".onnx":
        from .importers.onnx import from_onnx
        return from_onnx(path, input_shapes=input_shapes)
    if suffix == ".tflite":
        from .importers.tflite import from_tflite
        return from_tflite(path)
    if suffix != ".npz":
        raise ValueError(f"{path}: expected a .npz archive, an .onnx or a .tflite file")
    from .nn.graph import LAYERS, Graph, GraphError
    arrays, max_bytes = _read(path, max_bytes)
    if GRAPH_KEY not in arrays:
        raise ArchiveError(path, None, "holds weights only, no model description: load them "
                                       "into a model with model.load_state_dict(fscnn.load("
                                       "path)) (fscnn bench/info: give --model ARCH)")
    spec = _graph_spec(path, arrays[GRAPH_KEY])
    choices = _plan_choices(path, spec.pop("plan", None))
    weights = set()
    if sparse:  # the weights a layer can hold sparse; other 2-D/4-D tensors stay dense
        try:
            for node in spec["nodes"]:
                layer = LAYERS.get(node["op"])
                held = getattr(layer, "_sparse_weights", {})
                weights.update(key for attr, key in node.get("params", {}).items()
                               if attr in held)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArchiveError(path, GRAPH_KEY, f"malformed model description ({exc!r})") \
                from None
    tensors = _assemble(path, arrays, max_bytes, sparse=weights)
    try:
        model = Graph.from_spec(spec, tensors)
    except (GraphError, TypeError, ValueError, KeyError, MemoryError) as exc:
        raise ArchiveError(path, GRAPH_KEY, f"invalid model description: {exc}") from None
    model._carry_choices(choices)
    return model


def _plan_choices(path, plan):
    """The kernel choices of a model description's ``plan`` entry (written by `save` from a
    prepared model: layer name -> ``[[input shape], threads, SIMD level, kernel], ...``,
    a row with a fifth item, the threads the kernel runs with, where 'auto' chose fewer),
    checked as plain data; None when absent."""
    if plan is None:
        return None

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 31

    def row_ok(row):
        return (isinstance(row, list) and len(row) in (4, 5) and isinstance(row[0], list)
                and len(row[0]) <= _MAX_NDIM and all(is_int(s) for s in row[0])
                and is_int(row[1]) and is_int(row[2]) and isinstance(row[3], str)
                and (len(row) == 4 or (is_int(row[4]) and row[4] >= 1)))

    if not isinstance(plan, dict) or not all(
            isinstance(name, str) and isinstance(rows, list) and all(map(row_ok, rows))
            for name, rows in plan.items()):
        raise ArchiveError(path, GRAPH_KEY, "malformed kernel plan in the model description "
                                            "(expected layer name -> [[input shape], threads, "
                                            "SIMD level, kernel(, run threads)] rows)")
    return {name: [(tuple(shape), *rest) for shape, *rest in rows]
            for name, rows in plan.items()}


def holds_model(path):
    """Whether the ``.npz`` at ``path`` is a whole-model archive (has a model description);
    False for weights-only archives and for files that are no zip archive at all."""
    try:
        with zipfile.ZipFile(os.fspath(path)) as zf:
            return GRAPH_KEY + ".npy" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _graph_spec(path, member):
    if member.dtype != np.uint8 or member.ndim != 1 or member.size > _MAX_GRAPH_BYTES:
        raise ArchiveError(path, GRAPH_KEY, f"expected UTF-8 JSON bytes (uint8 of shape (n,), "
                                            f"n <= {_MAX_GRAPH_BYTES}), got {member.dtype} of "
                                            f"shape {member.shape}")
    try:
        spec = json.loads(member.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArchiveError(path, GRAPH_KEY, f"not a JSON model description ({exc})") from None
    if not isinstance(spec, dict):
        raise ArchiveError(path, GRAPH_KEY, "the model description is not a JSON object")
    if spec.get("format") != 1:
        raise ArchiveError(path, GRAPH_KEY, f"unsupported format {spec.get('format')!r} of the "
                                            f"model description (this fscnn reads format 1)")
    return spec
