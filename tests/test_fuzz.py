"""Property-based tests (hypothesis): random configurations against the float64 reference, and
random or mutated data against the validators (which may only raise ValueError subclasses).

Kept small (``max_examples`` 40-60, ``deadline=None``, derandomized so that CI runs are
reproducible) so the file runs in well under a minute on two cores. ``tests/test_pooling.py``
and ``tests/test_io.py`` hold more pooling and archive fuzzing; this file adds what they do not
cover: batch/channel/dtype/NaN variations of the pools, ``.npy`` headers behind valid zip
checksums, and the soundness of the CSR validator (whatever it accepts, the kernels compute
correctly).
"""
import io as _io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import fscnn.functional as F
import reference as ref
from conftest import assert_close, sparse_weight
from fscnn import _config, io
from fscnn.ops import Conv2dOp, LinearOp
from fscnn.sparse import CSRMatrix, FormatError, SparseConvWeight

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
SPARSITIES = st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.99, 1.0]) | st.floats(0, 1)
ACTIVATIONS = {None: lambda y: y, "relu": lambda y: np.maximum(y, 0),
               "relu6": lambda y: np.clip(y, 0, 6)}


def _activate(y, activation):
    return ACTIVATIONS[activation](y)


# ------------------------------------------------------------------ convolution
@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    c, o = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    kind = draw(st.sampled_from(["int", "pair", "four", "same", "valid"]))
    if kind == "same":
        s = (1, 1)
    padding = {"int": lambda: draw(st.integers(0, 3)),
               "pair": lambda: (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
               "four": lambda: tuple(draw(st.integers(0, 3)) for _ in range(4)),
               "same": lambda: "same", "valid": lambda: "valid"}[kind]()
    pads = ref.conv_padding(padding, k, d, s)
    smallest = [max(1, dd * (kk - 1) + 1 - lo - hi)
                for kk, dd, lo, hi in zip(k, d, pads[::2], pads[1::2])]
    hw = tuple(draw(st.integers(lo, lo + 7)) for lo in smallest)
    return dict(n=draw(st.integers(0, 2)), c=c, o=o, hw=hw, k=k,
                hp=dict(stride=s, padding=padding, dilation=d, groups=groups))


@FUZZ
@given(cfg=conv_configs(), sparsity=SPARSITIES, kernel=st.sampled_from(["sparse", "dense"]),
       activation=st.sampled_from(list(ACTIVATIONS)), bias=st.booleans(),
       as_sparse=st.booleans(), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_conv2d_matches_reference(cfg, sparsity, kernel, activation, bias, as_sparse, threads,
                                  seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["n"], cfg["c"]) + cfg["hw"]).astype(np.float32)
    w = sparse_weight((cfg["o"], cfg["c"] // cfg["hp"]["groups"]) + cfg["k"], sparsity, rng)
    b = rng.standard_normal(cfg["o"]).astype(np.float32) if bias else None
    weight = SparseConvWeight.from_dense(w) if as_sparse else w
    with _config.threads(threads):
        y = Conv2dOp(weight, b, activation=activation, kernel=kernel, **cfg["hp"])(x)
    assert_close(y, _activate(ref.conv2d(x, w, b, **cfg["hp"]), activation))


@st.composite
def winograd_configs(draw):
    kind = draw(st.sampled_from(["int", "pair", "four", "same", "valid"]))
    padding = {"int": lambda: draw(st.integers(0, 3)),
               "pair": lambda: (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
               "four": lambda: tuple(draw(st.integers(0, 3)) for _ in range(4)),
               "same": lambda: "same", "valid": lambda: "valid"}[kind]()
    pads = ref.conv_padding(padding, (3, 3), (1, 1), (1, 1))
    smallest = [max(1, 3 - lo - hi) for lo, hi in zip(pads[::2], pads[1::2])]
    hw = tuple(draw(st.integers(lo, lo + 20)) for lo in smallest)  # partial and many tiles
    return dict(n=draw(st.integers(0, 2)), c=draw(st.integers(1, 9)), o=draw(st.integers(1, 6)),
                hw=hw, hp=dict(padding=padding))


@FUZZ
@given(cfg=winograd_configs(), sparsity=SPARSITIES, activation=st.sampled_from(list(ACTIVATIONS)),
       bias=st.booleans(), as_sparse=st.booleans(), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_winograd_conv2d_matches_reference(cfg, sparsity, activation, bias, as_sparse, threads,
                                           seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["n"], cfg["c"]) + cfg["hw"]).astype(np.float32)
    w = sparse_weight((cfg["o"], cfg["c"], 3, 3), sparsity, rng)
    b = rng.standard_normal(cfg["o"]).astype(np.float32) if bias else None
    weight = SparseConvWeight.from_dense(w) if as_sparse else w
    with _config.threads(threads):
        y = Conv2dOp(weight, b, activation=activation, kernel="winograd", **cfg["hp"])(x)
    # Winograd's float32 budget, as in test_conv.py (WINO_RTOL)
    assert_close(y, _activate(ref.conv2d(x, w, b, **cfg["hp"]), activation), rtol=1e-4)


@FUZZ
@given(c=st.integers(1, 8), hw=st.tuples(st.integers(0, 2**20), st.integers(0, 2**20)),
       k=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       s=st.tuples(st.integers(1, 300), st.integers(1, 300)),
       d=st.tuples(st.integers(1, 50), st.integers(1, 50)),
       padding=st.tuples(*[st.integers(0, 300)] * 4))
def test_conv_output_shape_follows_torch_or_refuses(c, hw, k, s, d, padding):
    op = Conv2dOp(np.ones((2, c) + k, np.float32), stride=s, padding=padding, dilation=d)
    expected = tuple((size + lo + hi - dd * (kk - 1) - 1) // ss + 1 for size, lo, hi, kk, dd, ss
                     in zip(hw, padding[::2], padding[1::2], k, d, s))
    try:
        shape = op.output_shape((1, c) + hw)
    except ValueError as exc:
        event("refused")
        assert min(expected) < 1 or "32-bit" in str(exc), str(exc)
    else:
        assert shape == (1, 2) + expected


# ------------------------------------------------------------------ linear
@FUZZ
@given(n=st.integers(0, 4), i=st.integers(1, 40) | st.sampled_from([65535, 65536, 65537]),
       o=st.integers(1, 6), sparsity=SPARSITIES, kernel=st.sampled_from(["sparse", "dense"]),
       activation=st.sampled_from(list(ACTIVATIONS)), bias=st.booleans(),
       threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_linear_matches_reference(n, i, o, sparsity, kernel, activation, bias, threads, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, i)).astype(np.float32)
    w = sparse_weight((o, i), sparsity, rng)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    with _config.threads(threads):
        y = LinearOp(w, b, activation=activation, kernel=kernel)(x)
    assert_close(y, _activate(ref.linear(x, w, b), activation))


# ------------------------------------------------------------------ pooling
@st.composite
def pool_configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    smallest = [max(1, dd * (kk - 1) + 1 - 2 * pp) for kk, pp, dd in zip(k, p, d)]
    hw = tuple(draw(st.integers(lo, lo + 6)) for lo in smallest)
    return (draw(st.integers(0, 2)), draw(st.integers(0, 3))) + hw, k, s, p, d


@FUZZ
@given(cfg=pool_configs(), ceil_mode=st.booleans(), count_include_pad=st.booleans(),
       divisor=st.none() | st.integers(1, 9), dtype=st.sampled_from([np.float16, np.float32,
                                                                     np.float64]),
       layout=st.sampled_from(["contiguous", "channels-last", "sliced"]),
       nans=st.integers(0, 3), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_pools_match_reference(cfg, ceil_mode, count_include_pad, divisor, dtype, layout, nans,
                               threads, seed):
    shape, k, s, p, d = cfg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    if x.size:
        x.reshape(-1)[rng.integers(0, x.size, nans)] = np.nan
    view = {"contiguous": lambda: x,
            "channels-last": lambda: x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2),
            "sliced": lambda: np.repeat(x, 2, axis=3)[..., ::2]}[layout]()
    tol = np.float16 if dtype == np.float16 else np.float32
    with _config.threads(threads):
        assert_close(F.max_pool2d(view, k, s, p, d, ceil_mode),
                     ref.max_pool2d(x, k, s, p, d, ceil_mode), tol, check_dtype=False)
        avg_hw = [ref.pool_output_size(shape[2 + a], k[a], s[a], p[a], 1, ceil_mode)
                  for a in (0, 1)]
        if min(avg_hw) >= 1:
            args = (k, s, p, ceil_mode, count_include_pad, divisor)
            assert_close(F.avg_pool2d(view, *args), ref.avg_pool2d(x, *args), tol,
                         check_dtype=False)
        out = (s[0] + 1, None)
        assert_close(F.adaptive_max_pool2d(view, out), ref.adaptive_max_pool2d(x, out), tol,
                     check_dtype=False)
        assert_close(F.adaptive_avg_pool2d(view, out), ref.adaptive_avg_pool2d(x, out), tol,
                     check_dtype=False)


# ------------------------------------------------------------------ CSR validator soundness
INDEX_DTYPES = [np.int64, np.int32, np.uint16, np.uint32, np.int8, np.float32]


@st.composite
def csr_parts(draw):
    """A valid CSR matrix's (indptr, indices, data, shape), then up to three mutations."""
    rows = draw(st.integers(0, 5))
    cols = draw(st.integers(1, 12) | st.sampled_from([65536, 65537]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dense = np.zeros((rows, cols), np.float32)
    for r in range(rows):
        picked = rng.choice(cols, size=min(cols, draw(st.integers(0, 4))), replace=False)
        dense[r, picked] = rng.standard_normal(len(picked)) + 3
    m = CSRMatrix.from_dense(dense)
    parts = {"indptr": m.indptr.copy(), "indices": m.indices.copy(), "data": m.data.copy()}
    shape = list(m.shape)
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["value", "dtype", "length", "shape"]))
        name = draw(st.sampled_from(sorted(parts)))
        arr = parts[name]
        if what == "value" and arr.size:
            where = draw(st.integers(0, arr.size - 1))
            value = draw(st.integers(-3, cols + 3) | st.sampled_from([-2**31, 2**31 - 1]))
            with np.errstate(over="ignore"):
                arr[where] = np.array(value).astype(arr.dtype)
        elif what == "dtype":
            with np.errstate(over="ignore", invalid="ignore"):
                parts[name] = arr.astype(draw(st.sampled_from(INDEX_DTYPES)))
        elif what == "length":
            parts[name] = (arr[:-1] if draw(st.booleans()) else np.append(arr, arr[-1:]))
        else:
            shape[draw(st.integers(0, 1))] += draw(st.integers(-2, 2))
    return parts["indptr"], parts["indices"], parts["data"], tuple(shape)


@FUZZ
@given(parts=csr_parts(), n=st.integers(1, 2), seed=st.integers(0, 2**32 - 1))
def test_csr_validator_is_sound(parts, n, seed):
    """Mutated arrays are either refused with a FormatError/ValueError or form a matrix the
    sparse kernels compute correctly (an accepted bad index would read out of bounds)."""
    try:
        m = CSRMatrix(*parts, check="full")
    except (FormatError, ValueError) as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted")
    rows, cols = m.shape
    assume(rows > 0)
    dense = m.to_dense()
    x = np.random.default_rng(seed).standard_normal((n, cols)).astype(np.float32)
    assert_close(LinearOp(m, kernel="sparse")(x), ref.linear(x, dense))
    if cols <= 64:
        w = SparseConvWeight(m, (1, 1, cols))
        x4 = x.reshape(n, 1, 1, cols)
        assert_close(Conv2dOp(w, kernel="sparse")(x4), ref.conv2d(x4, dense.reshape(rows, 1, 1,
                                                                                    cols)))


# ------------------------------------------------------------------ .npy headers
DESCRS = ["<f4", ">f4", "<f8", "<f2", "|b1", "<i8", ">u2", "|u1", "<c8", "|O", "<U3", "|V8",
          "<M8[s]", "[('a', '<f4')]", "'<f4'", "f4", "<f16", "garbage"]


def _npy_bytes(descr, fortran, shape, version=(1, 0), body=b"", extra=""):
    """A .npy member written by hand: header fields as source text, then ``body``."""
    text = ("{'descr': %s, 'fortran_order': %s, %s'shape': %s, }" % (
        descr, fortran, extra, shape)).encode("latin1")
    width = 2 if version[0] == 1 else 4
    text += b" " * ((-(6 + 2 + width + len(text) + 1)) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + len(text).to_bytes(width, "little") + text + body


def _exact_size(descr, shape):
    """Bytes of data a valid header with these fields announces, or None."""
    try:
        itemsize = np.dtype(descr).itemsize
    except TypeError:
        return None
    if not all(isinstance(n, int) and 0 <= n < 2**16 for n in shape):
        return None
    return int(np.prod(shape)) * itemsize


@st.composite
def npy_members(draw):
    """Bytes of a .npy member with a random header, about half of them well-formed."""
    descr = draw(st.sampled_from(DESCRS[:6]) | st.sampled_from(DESCRS))
    shape = draw(st.lists(st.integers(0, 5), max_size=3)
                 | st.lists(st.integers(-2, 6) | st.sampled_from([2**31, 2**62, 2**64]),
                            max_size=4))
    size = _exact_size(descr, shape)
    body = draw(st.binary(max_size=80) if size is None or size > 4096 or draw(st.booleans())
                else st.binary(min_size=size, max_size=size))
    return _npy_bytes(descr if descr.startswith("[") else repr(descr),
                      draw(st.sampled_from(["True", "False"]) | st.sampled_from(["1", "None"])),
                      draw(st.sampled_from([repr(tuple(shape))] * 3 + [repr(shape), "'(2, 2)'"])),
                      draw(st.sampled_from([(1, 0), (2, 0)]) | st.sampled_from([(3, 0), (0, 9)])),
                      body, draw(st.sampled_from(["", "", "'extra': 1, "])))


@FUZZ
@given(members=st.lists(npy_members(), min_size=1, max_size=3),
       compress=st.booleans())
def test_load_npy_headers_behind_valid_checksums(tmp_path, members, compress):
    """Byte-level mutations mostly break zip CRCs; these members have valid CRCs, so the .npy
    header parser itself meets every header."""
    buffer = _io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as zf:
        for i, member in enumerate(members):
            zf.writestr(f"k{i}.npy", member)
    path = tmp_path / "headers.npz"
    path.write_bytes(buffer.getvalue())
    try:
        arrays = io.load(path, max_bytes=10**6)
    except io.ArchiveError as exc:
        assert str(path) in str(exc)
        event("refused")
        return
    event("loaded")
    for array in arrays.values():
        assert isinstance(array, np.ndarray) and array.dtype.kind in "biuf"
        assert array.dtype.isnative


@pytest.mark.parametrize("descr, shape, fortran, version", [
    ("<f4", (2, 3), False, (1, 0)), (">f8", (3, 2), True, (2, 0)), ("|b1", (0, 5), False, (1, 0)),
])
def test_hand_written_npy_headers_load_when_valid(tmp_path, descr, shape, fortran, version):
    """The fuzzer's member writer makes real .npy members when the fields are valid."""
    a = np.arange(np.prod(shape)).reshape(shape).astype(descr)
    body = (a.T if fortran else a).tobytes()
    path = tmp_path / "one.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.npy", _npy_bytes(repr(descr), repr(fortran), repr(shape), version, body))
    np.testing.assert_array_equal(io.load(path)["a"], a)
