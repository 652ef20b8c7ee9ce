"""fscnn.io: bit-exact round trips, compact sparse storage, and hostile-file safety."""
import io as _bytes_io
import os
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import torch_or_skip
from fscnn.io import FORMAT_KEY, ArchiveError, encoded_nbytes, load, save
from fscnn.sparse import SparseConvWeight

SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int8, np.uint16, np.bool_]


def _sparse_array(rng, shape, sparsity, dtype=np.float32):
    values = rng.standard_normal(shape) * 10
    values[rng.random(shape) < sparsity] = 0
    return values.astype(dtype)


def _write_members(path, members, compression=zipfile.ZIP_STORED):
    """Write a zip of ``(name, array or raw bytes)`` members, duplicates and all."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are intended
        for name, content in members:
            if isinstance(content, bytes):
                zf.writestr(name, content)
            else:
                buffer = _bytes_io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(content), allow_pickle=True)
                zf.writestr(name, buffer.getvalue())


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return [name[:-4] for name in zf.namelist()]


def _assert_same(expected, loaded):
    assert list(loaded) == list(expected)
    for name, value in expected.items():
        value = np.asarray(value)
        got = loaded[name]
        assert got.shape == value.shape and got.dtype == value.dtype.newbyteorder("="), name
        assert np.ascontiguousarray(got).tobytes() == \
            np.ascontiguousarray(value.astype(got.dtype)).tobytes(), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", [(7,), (16, 33), (8, 5, 3, 3)])
def test_round_trip_is_bit_exact(tmp_path, dtype, sparsity, shape):
    rng = np.random.default_rng(len(shape))
    state = {"layer.weight": _sparse_array(rng, shape, sparsity, dtype),
             "layer.bias": _sparse_array(rng, shape[:1], 0.0, dtype)}
    path = tmp_path / "w.npz"
    save(state, path)
    loaded = load(path)
    _assert_same(state, loaded)
    assert all(a.flags.writeable for a in loaded.values())


def test_special_values_and_layouts_survive(tmp_path):
    rng = np.random.default_rng(0)
    signed_zeros = np.zeros((40, 40), np.float32)
    signed_zeros[::3, ::5] = -0.0
    signed_zeros[1, 1] = np.nan
    signed_zeros[2, 2] = np.inf
    state = {"zeros": signed_zeros,
             "scalar": np.array(7, np.int64),
             "empty": np.zeros((0, 4), np.float32),
             "fortran": np.asfortranarray(_sparse_array(rng, (30, 20), 0.9)),
             "big_endian": _sparse_array(rng, (50, 50), 0.95).astype(">f4"),
             "flags": rng.random(500) < 0.1}
    path = tmp_path / "special.npz"
    save(state, path)
    assert "zeros::values" in _members(path)
    # -0.0 is a zero (not stored): it loads as +0.0; NaN and inf are stored bit-exactly
    _assert_same(dict(state, zeros=signed_zeros + np.float32(0.0)), load(path))


def _with_negative_zeros(rng, shape, sparsity):
    """Weights pruned the way ``weight * mask`` does: a pruned negative weight becomes -0.0."""
    weight = rng.standard_normal(shape).astype(np.float32)
    mask = np.ones(weight.size, np.float32)
    mask[rng.permutation(weight.size)[:round(sparsity * weight.size)]] = 0
    return weight * mask.reshape(shape)


@pytest.mark.parametrize("sparse", [False, True])
def test_negative_zeros_are_zeros(tmp_path, sparse):
    rng = np.random.default_rng(5)
    weight = _with_negative_zeros(rng, (64, 32, 3, 3), 0.9)
    assert np.signbit(weight[weight == 0]).mean() > 0.4  # the premise: ~half are -0.0
    value = SparseConvWeight.from_dense(weight) if sparse else weight
    path, dense_path = tmp_path / "w.npz", tmp_path / "dense.npz"
    save({"conv.weight": value}, path)
    np.savez(dense_path, **{"conv.weight": weight})
    assert "conv.weight::values" in _members(path)
    assert os.path.getsize(path) <= 0.2 * os.path.getsize(dense_path)
    loaded = load(path)["conv.weight"]
    np.testing.assert_array_equal(loaded, weight)  # -0.0 == 0.0
    assert not np.signbit(loaded[loaded == 0]).any()
    assert encoded_nbytes(weight) <= 0.2 * weight.nbytes


def test_torch_pruned_model_saves_compactly(tmp_path):
    """A model pruned with torch.nn.utils.prune (weight_orig * weight_mask) has -0.0 for
    about half of its zeros; its archive must still be compact."""
    torch = torch_or_skip()
    from torch.nn.utils import prune as torch_prune
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(32 * 6 * 6, 256))
    for layer in (model[0], model[3]):
        torch_prune.l1_unstructured(layer, "weight", amount=0.9)
        torch_prune.remove(layer, "weight")
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    zeros = state["3.weight"][state["3.weight"] == 0]
    assert zeros.size > 0.85 * state["3.weight"].size and np.signbit(zeros).mean() > 0.3
    path, dense_path = tmp_path / "pruned.npz", tmp_path / "dense.npz"
    save(state, path)
    np.savez(dense_path, **state)
    assert os.path.getsize(path) <= 0.2 * os.path.getsize(dense_path)
    for name, value in load(path).items():
        np.testing.assert_array_equal(value, state[name])


@pytest.mark.parametrize("encoding, array", [
    ("bitmask", np.where(np.arange(4000) % 10 == 0, 1.5, 0.0).astype(np.float32)),
    ("delta16", np.where(np.arange(4000) % 50 == 0, 1.5, 0.0).astype(np.float32)),
    # gaps of 100000 > 65535: delta16 would need a bridging entry per gap
    ("index32", np.where(np.arange(10**6) % 100000 == 7, 2.5, 0.0).astype(np.float32)),
    # a gap of ~290000 bridged by zero entries: still the smallest
    ("delta16", np.where((np.arange(300000) % 10 == 0) & (np.arange(300000) < 10000)
                         | (np.arange(300000) == 299999), -1.0, 0.0)),
])
def test_smallest_encoding_is_chosen(tmp_path, encoding, array):
    path = tmp_path / "e.npz"
    save({"w": array}, path)
    assert _members(path) == [FORMAT_KEY, "w::shape", "w::values", f"w::{encoding}"]
    _assert_same({"w": array}, load(path))
    with np.load(path, allow_pickle=False) as archive:
        payload = sum(archive[k].nbytes for k in archive.files if k.startswith("w::"))
    assert encoded_nbytes(array) == payload < array.nbytes


@pytest.mark.parametrize("sparsity, min_sparsity, sparse", [
    (0.3, 0.5, False), (0.6, 0.5, True), (0.6, 0.7, False), (0.0, 0.0, False)])
def test_min_sparsity_threshold(tmp_path, sparsity, min_sparsity, sparse):
    rng = np.random.default_rng(1)
    array = np.ones(1000, np.float32)
    array[rng.permutation(1000)[:int(sparsity * 1000)]] = 0
    path = tmp_path / "t.npz"
    save({"w": array}, path, min_sparsity=min_sparsity)
    assert ("w::values" in _members(path)) == sparse
    assert (encoded_nbytes(array, min_sparsity) < array.nbytes) == sparse


def test_pruned_model_file_is_small(tmp_path):
    """A 90%-pruned model-shaped state_dict takes <= 20% of its dense ``.npz``."""
    rng = np.random.default_rng(2)
    state = {}
    for i, (o, c) in enumerate([(64, 32), (128, 64), (128, 128)]):
        state[f"features.{i}.weight"] = _sparse_array(rng, (o, c, 3, 3), 0.9)
        state[f"features.{i}.bias"] = rng.standard_normal(o).astype(np.float32)
    state["classifier.weight"] = _sparse_array(rng, (100, 2048), 0.9)
    dense, sparse = tmp_path / "dense.npz", tmp_path / "sparse.npz"
    np.savez(dense, **state)
    save(state, sparse)
    assert os.path.getsize(sparse) <= 0.2 * os.path.getsize(dense)
    _assert_same(state, load(sparse))


def test_compressed_archive_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    state = {"a": _sparse_array(rng, (64, 64), 0.9), "b": np.zeros(1000, np.float32)}
    path = tmp_path / "c.npz"
    save(state, path, compress=True)
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    _assert_same(state, load(path))


def test_plain_numpy_npz_loads_in_order(tmp_path):
    rng = np.random.default_rng(4)
    state = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "bn.num_batches_tracked": np.array(5, np.int64),
             "a.bias": rng.standard_normal(4)}
    for writer in (np.savez, np.savez_compressed):
        path = tmp_path / f"{writer.__name__}.npz"
        writer(path, **state)
        _assert_same(state, load(path))


def test_archive_opens_with_numpy_without_pickle(tmp_path):
    path = tmp_path / "w.npz"
    save({"w": np.eye(50, dtype=np.float32)}, path)
    with np.load(path, allow_pickle=False) as archive:
        assert int(archive[FORMAT_KEY]) == 1
        assert archive["w::values"].tolist() == [1.0] * 50


def test_save_accepts_a_model(tmp_path):
    class Model:
        def state_dict(self):
            return {"fc.weight": np.zeros((3, 4), np.float32)}

    path = tmp_path / "m.npz"
    save(Model(), path)
    assert list(load(path)) == ["fc.weight"]


def test_names_with_colons_and_percents_round_trip(tmp_path):
    """ONNX's 'onnx::Conv_193', TFLite's 'conv:0': version 2 percent-encodes '%' and ':'."""
    state = {"onnx::Conv_193": np.zeros((8, 8), np.float32), "a%3Ab": np.ones(2),
             "t:0": np.arange(3.0)}
    state["onnx::Conv_193"][0, 0] = 1.0  # stored sparse: 'NAME::values' members
    path = tmp_path / "m.npz"
    save(state, path)
    assert int(np.load(path)[FORMAT_KEY]) == 2
    loaded = load(path)
    assert list(loaded) == list(state)
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])
    save({"plain": np.ones(2)}, path)  # nothing to escape: version 1, as older fscnn reads
    assert int(np.load(path)[FORMAT_KEY]) == 1


@pytest.mark.parametrize("state, error, match", [
    ({"__fscnn_x": np.zeros(3)}, ValueError, "__fscnn"),
    ({"": np.zeros(3)}, ValueError, "non-empty"),
    ({3: np.zeros(3)}, ValueError, "str"),
    ({"w": np.array([{}], dtype=object)}, TypeError, "object"),
    ({"w": np.zeros(3, np.complex64)}, TypeError, "complex64"),
    ({"w": np.array(["x"])}, TypeError, "<U1"),
])
def test_save_rejects_bad_entries(tmp_path, state, error, match):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"previous")
    with pytest.raises(error, match=match):
        save(state, path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["bad.npz"]


def test_save_rejects_bad_min_sparsity(tmp_path):
    with pytest.raises(ValueError, match="min_sparsity"):
        save({"w": np.zeros(3)}, tmp_path / "x.npz", min_sparsity=1.5)
    with pytest.raises(TypeError, match="state_dict"):
        save([np.zeros(3)], tmp_path / "x.npz")


def test_missing_file_and_directory_raise_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError):
        load(tmp_path)


# --------------------------------------------------------------------------- hostile files

_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)


class _Payload:
    def __reduce__(self):
        return _record_unpickling, ()


def _expect_archive_error(path, *fragments, **kwargs):
    with pytest.raises(ArchiveError) as info:
        load(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError)
    return info.value


def _sparse_members(shape=(4, 5), values=(1.0, 2.0), index=("index32", [3, 17]), version=1):
    members = [] if version is None else [(FORMAT_KEY + ".npy", np.array(version))]
    encoding, positions = index
    dtype = {"index32": np.uint32, "delta16": np.uint16, "bitmask": np.uint8}[encoding]
    return members + [("w::shape.npy", np.array(shape, np.int64)),
                      ("w::values.npy", np.array(values, np.float32)),
                      (f"w::{encoding}.npy", np.array(positions, dtype))]


def test_crafted_valid_archive_loads(tmp_path):
    """The crafting helper itself writes what the format describes."""
    path = tmp_path / "ok.npz"
    _write_members(path, _sparse_members())
    expected = np.zeros(20, np.float32)
    expected[[3, 17]] = [1.0, 2.0]
    np.testing.assert_array_equal(load(path)["w"], expected.reshape(4, 5))


@pytest.mark.parametrize("content", [b"", b"this is not a zip file at all", b"PK\x03\x04"])
def test_not_a_zip(tmp_path, content):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    _expect_archive_error(path, "not a valid .npz (zip) archive")


def test_empty_zip_is_an_empty_state_dict(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path)
    assert load(path) == {}


def test_truncated_files(tmp_path):
    rng = np.random.default_rng(5)
    good = tmp_path / "good.npz"
    save({"w": _sparse_array(rng, (32, 32), 0.9), "b": np.ones(10)}, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    for size in sorted({1, 4, 30, len(data) // 3, len(data) // 2, len(data) - 23, len(data) - 1}):
        cut.write_bytes(data[:size])
        _expect_archive_error(cut)


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, w=np.array([_Payload()], dtype=object))
    _expect_archive_error(path, "'w'", "dtype object")
    assert _UNPICKLED == []


@pytest.mark.parametrize("array", [
    np.zeros(3, np.complex128), np.array(["a", "b"]), np.array([b"a"]),
    np.zeros(2, dtype=[("a", np.float32)]), np.zeros(2, np.longdouble),
    np.array(["2020-01-01"], dtype="datetime64[D]"), np.zeros(2, dtype="V4")])
def test_wrong_dtypes(tmp_path, array):
    path = tmp_path / "dtype.npz"
    np.savez(path, w=array)
    _expect_archive_error(path, "'w'", "expected a bool, integer or float16/32/64")


@pytest.mark.parametrize("change, key, fragment", [
    ({"index": ("index32", [3, 20])}, "w::index32", "out of range"),
    ({"index": ("index32", [17, 3])}, "w::index32", "strictly increasing"),
    ({"index": ("index32", [3, 3])}, "w::index32", "strictly increasing"),
    ({"index": ("index32", [3])}, "w::index32", "expected 2 entries"),
    ({"index": ("delta16", [4, 0])}, "w::delta16", "zero gap"),
    ({"index": ("delta16", [4, 17])}, "w::delta16", "out of range"),
    ({"index": ("bitmask", [0, 0, 0])}, "w::bitmask", "0 positions for 2 values"),
    ({"index": ("bitmask", [0b10000000, 0, 0, 0b00100000])}, "w::bitmask",
     "expected 3 bytes"),
    ({"index": ("bitmask", [0b10000000, 0, 0b00001000])}, "w::bitmask", "padding bits"),
    ({"shape": (4, -5)}, "w::shape", "non-negative"),
    ({"shape": [[4, 5]]}, "w::shape", "expected int64 of shape"),
    ({"shape": (1,) * 33}, "w::shape", "at most 32"),
    ({"shape": (0, 2**40, 2**40)}, "w::shape", "numpy can hold"),
    ({"shape": (2**40, 2**10)}, "w::shape", "max_bytes"),
    ({"shape": (2**62, 2**62, 2**62)}, "w::shape", "numpy can hold"),
    ({"values": [[1.0, 2.0]]}, "w::values", "expected 1 dimension"),
    ({"version": 3}, FORMAT_KEY, "unsupported format version 3"),
    ({"version": 1.0}, FORMAT_KEY, "unsupported format version"),
    ({"version": "1"}, FORMAT_KEY, "expected a bool, integer"),
    ({"version": [1]}, FORMAT_KEY, "unsupported format version"),
    ({"version": None}, "w::shape", "missing"),
])
def test_inconsistent_sparse_entries(tmp_path, change, key, fragment):
    path = tmp_path / "bad.npz"
    _write_members(path, _sparse_members(**change))
    _expect_archive_error(path, repr(key), fragment)


def test_shape_must_be_int64(tmp_path):
    members = _sparse_members()
    members[1] = ("w::shape.npy", np.array([4, 5], np.int32))
    path = tmp_path / "bad.npz"
    _write_members(path, members)
    _expect_archive_error(path, "'w::shape'", "int32")


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int64])
def test_index_dtype_must_match_encoding(tmp_path, dtype):
    members = _sparse_members()
    members[-1] = ("w::index32.npy", np.array([3, 17], dtype))
    path = tmp_path / "bad.npz"
    _write_members(path, members)
    _expect_archive_error(path, "'w::index32'", "expected uint32")


@pytest.mark.parametrize("members, key, fragment", [
    ([(FORMAT_KEY + ".npy", np.array(1)), ("w::values.npy", np.zeros(2, np.float32)),
      ("w::index32.npy", np.zeros(2, np.uint32))], "w::shape", "missing"),
    ([(FORMAT_KEY + ".npy", np.array(1)), ("w::shape.npy", np.array([4], np.int64)),
      ("w::values.npy", np.zeros(1, np.float32))], "w::index", "exactly one"),
    (_sparse_members() + [("w::delta16.npy", np.array([1, 2], np.uint16))], "w::delta16",
     "exactly one"),
    (_sparse_members() + [("w::offsets.npy", np.zeros(2))], "w::offsets", "unknown field"),
    (_sparse_members() + [("w.npy", np.zeros(20))], "w", "both dense and sparse"),
    ([("w.npy", np.zeros(20))] + _sparse_members(version=1), "w::shape",
     "both dense and sparse"),
    (_sparse_members() + [("__fscnn_meta__.npy", np.zeros(1))], "__fscnn_meta__",
     "unknown reserved key"),
    ([("a.npy", np.zeros(2)), ("a.npy", np.ones(2))], "a", "appears twice"),
    ([("a.npy", np.zeros(2)), ("notes.txt", b"hello")], "notes.txt", "'.npy' members"),
    ([("dir/", b"")], "dir/", "'.npy' members"),
])
def test_inconsistent_archive_structure(tmp_path, members, key, fragment):
    path = tmp_path / "bad.npz"
    _write_members(path, members)
    _expect_archive_error(path, repr(key), fragment)


def _npy_bytes(array):
    buffer = _bytes_io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("raw, fragment", [
    (_npy_bytes(np.zeros(100, np.float32))[:-4], "announces 400 bytes"),
    (_npy_bytes(np.zeros(100, np.float32)) + b"\x00" * 4, "announces 400 bytes"),
    (_npy_bytes(np.zeros(3))[:40], "unreadable member"),
    (b"\x93NUMPY\x03\x00" + _npy_bytes(np.zeros(3))[8:], "format 1.0 or 2.0"),
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',}" + b"\x00" * 4, "unreadable member"),
    (_npy_bytes(np.zeros(3)).replace(b"(3,)", b"(-3,)"), "non-negative"),
    (_npy_bytes(np.zeros(0)).replace(b"(0,)", b"(0, 12157665459056928801)"), "numpy can hold"),
    (b"not a npy file", "unreadable member"),
])
def test_malformed_npy_members(tmp_path, raw, fragment):
    path = tmp_path / "bad.npz"
    _write_members(path, [("w.npy", raw)])
    _expect_archive_error(path, "'w'", fragment)


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_unsupported_compression(tmp_path, compression):
    path = tmp_path / "bad.npz"
    _write_members(path, [("w.npy", np.zeros(3))], compression=compression)
    _expect_archive_error(path, "'w'", f"compression method {compression}")


def test_encrypted_member(tmp_path):
    path = tmp_path / "bad.npz"
    _write_members(path, [("w.npy", np.zeros(3))])
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 8] |= 1  # general purpose flag: encrypted
    path.write_bytes(bytes(data))
    _expect_archive_error(path, "'w'", "encrypted")


def test_member_claiming_more_than_the_file(tmp_path):
    path = tmp_path / "bad.npz"
    _write_members(path, [("w.npy", np.zeros(3))])
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 20:central + 28] = (10**6).to_bytes(4, "little") * 2  # sizes
    path.write_bytes(bytes(data))
    _expect_archive_error(path, "'w'", "past the end")


def test_max_bytes_bounds_dense_and_compressed_data(tmp_path):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, w=np.zeros(10**6, np.float32))
    assert os.path.getsize(path) < 10**5
    _expect_archive_error(path, "max_bytes=1000000", max_bytes=10**6)
    assert load(path, max_bytes=4 * 10**6 + 1000)["w"].shape == (10**6,)
    sparse = tmp_path / "sparse.npz"
    save({"w": np.zeros(10**6, np.float32)}, sparse)
    _expect_archive_error(sparse, "'w::shape'", "max_bytes", max_bytes=10**6)


# --------------------------------------------------------------------------- fuzzing

def _valid_archive_bytes(tmp_path_factory, compress):
    rng = np.random.default_rng(6)
    state = {"bitmask": _sparse_array(rng, (16, 24), 0.9),
             "delta": np.where(np.arange(700) % 40 == 0, 1.0, 0.0).astype(np.float32),
             "index": np.where(np.arange(300000) % 100000 == 5, 3.0, 0.0).astype(np.float32),
             "dense": rng.standard_normal(5), "count": np.array(3, np.int64)}
    path = tmp_path_factory.mktemp("fuzz") / "valid.npz"
    save(state, path, compress=compress)
    return path.read_bytes()


@pytest.fixture(scope="module", params=[False, True], ids=["stored", "deflated"])
def valid_archive(request, tmp_path_factory):
    return _valid_archive_bytes(tmp_path_factory, request.param)


def _load_bytes(tmp_path, data):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(data)
    try:
        result = load(path, max_bytes=10**7)
    except ArchiveError as exc:
        assert str(path) in str(exc)
        return None
    assert all(isinstance(v, np.ndarray) for v in result.values())
    return result


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.one_of(st.binary(max_size=600),
                      st.binary(max_size=600).map(lambda b: b"PK\x03\x04" + b),
                      st.binary(max_size=600).map(lambda b: b + b"PK\x05\x06" + b"\x00" * 18)))
def test_fuzz_random_bytes(tmp_path, data):
    # only an empty end-of-archive record after junk is a (valid, empty) archive
    assert _load_bytes(tmp_path, data) in (None, {})


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=6))
def test_fuzz_mutated_bytes(tmp_path, valid_archive, edits):
    data = bytearray(valid_archive)
    for where, value in edits:
        data[int(where * len(data))] = value
    _load_bytes(tmp_path, bytes(data))


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True), insert=st.binary(max_size=8))
def test_fuzz_truncated_or_spliced(tmp_path, valid_archive, cut, insert):
    where = int(cut * len(valid_archive))
    _load_bytes(tmp_path, valid_archive[:where])
    _load_bytes(tmp_path, valid_archive[:where] + insert + valid_archive[where:])


@FUZZ
@given(shape=st.lists(st.integers(-3, 2**40), max_size=4),
       positions=st.lists(st.integers(0, 2**32 - 1), max_size=6),
       encoding=st.sampled_from(["index32", "delta16", "bitmask"]),
       n_values=st.integers(0, 6))
def test_fuzz_sparse_fields(tmp_path, shape, positions, encoding, n_values):
    dtype = {"index32": np.uint32, "delta16": np.uint16, "bitmask": np.uint8}[encoding]
    members = [(FORMAT_KEY + ".npy", np.array(1)),
               ("w::shape.npy", np.array(shape, np.int64)),
               ("w::values.npy", np.arange(1, n_values + 1, dtype=np.float32)),
               (f"w::{encoding}.npy", np.array(positions, np.uint64).astype(dtype))]
    path = tmp_path / "fuzz.npz"
    _write_members(path, members)
    try:
        result = load(path, max_bytes=10**7)
    except ArchiveError:
        return
    assert result["w"].shape == tuple(shape)
    assert np.count_nonzero(result["w"]) <= n_values


# --------------------------------------------------------------------------- sparse loading

def _as_dense(value):
    return value.to_dense() if hasattr(value, "to_dense") else value


@pytest.mark.parametrize("chunk", [3, 1 << 20])
@pytest.mark.parametrize("encoding, array", [
    ("bitmask", np.where(np.arange(4 * 3 * 5 * 5).reshape(4, 3, 5, 5) % 3 == 0, -1.5, 0)),
    ("delta16", np.where(np.arange(3 * 70000).reshape(3, 70000) % 40000 == 7, 2.5, 0)),
    ("index32", np.where(np.arange(2 * 300000).reshape(2, 300000) % 100000 == 5, 3.0, 0)),
])
def test_sparse_load_decodes_each_encoding_to_rows(tmp_path, monkeypatch, chunk, encoding,
                                                    array):
    import fscnn.io
    from fscnn.sparse import CSRMatrix, SparseConvWeight
    monkeypatch.setattr(fscnn.io, "_POSITION_CHUNK", chunk)  # several chunks per tensor
    array = array.astype(np.float32)
    array.reshape(-1)[1] = -0.0  # a zero: neither stored nor in the rows
    path = tmp_path / "w.npz"
    save({"layer.weight": array, "layer.bias": np.ones(3, np.float32)}, path)
    assert f"layer.weight::{encoding}" in _members(path)
    loaded = load(path, sparse=True)
    weight = loaded["layer.weight"]
    expected_type = SparseConvWeight if array.ndim == 4 else CSRMatrix
    assert type(weight) is expected_type and weight.shape == array.shape
    weight.check_format(full=True)
    reference = expected_type.from_dense(array)
    csr, ref = getattr(weight, "csr", weight), getattr(reference, "csr", reference)
    for field in ("indptr", "indices", "data"):
        got, want = getattr(csr, field), getattr(ref, field)
        assert got.dtype == want.dtype and np.array_equal(got, want), field
    np.testing.assert_array_equal(loaded["layer.bias"], np.ones(3))  # 1-D: dense as before
    np.testing.assert_array_equal(load(path)["layer.weight"], array)


def test_sparse_load_into_a_model_keeps_weights_sparse(tmp_path):
    from fscnn import nn, prune
    from fscnn.sparse import CSRMatrix, SparseConvWeight

    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Flatten(), nn.Linear(8 * 25, 4))
    model = build()
    prune.prune(model, 0.8, inplace=True)
    path = tmp_path / "pruned.npz"
    save(model, path)
    loaded = load(path, sparse=True)
    assert isinstance(loaded["0.weight"], SparseConvWeight)
    assert isinstance(loaded["4.weight"], CSRMatrix)
    fresh = build()
    fresh.load_state_dict(loaded)
    assert isinstance(fresh[0].weight, SparseConvWeight) and isinstance(fresh[4].weight, CSRMatrix)
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5), dtype=np.float32)
    for kernel in ("sparse", "dense"):
        np.testing.assert_array_equal(fresh.prepare(x.shape, kernel=kernel)(x),
                                      model.prepare(x.shape, kernel=kernel)(x))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key], value)
    again = tmp_path / "again.npz"
    save(fresh, again)  # a sparse-held model saves the same archive
    _assert_same({k: _as_dense(v) for k, v in load(path).items()}, load(again))


def test_sparse_load_float64_and_float16_values_become_float32(tmp_path):
    from fscnn.sparse import CSRMatrix
    array = np.zeros((20, 500))
    array[::2, ::7] = 1e-300  # underflows to zero in float32: dropped like from_dense does
    array[1::2, ::5] = 0.1
    path = tmp_path / "f64.npz"
    save({"w": array, "h": array.astype(np.float16)}, path)
    assert {"w::values", "h::values"} <= set(_members(path))
    loaded = load(path, sparse=True)
    for key in ("w", "h"):
        reference = CSRMatrix.from_dense(np.asarray(array, np.float32 if key == "w" else
                                                    np.float16))
        assert loaded[key].data.dtype == np.float32
        np.testing.assert_array_equal(loaded[key].to_dense(), reference.to_dense())
        assert loaded[key].nnz == reference.nnz


@pytest.mark.parametrize("change, key, fragment", [
    ({"index": ("index32", [3, 20])}, "w::index32", "out of range"),
    ({"index": ("index32", [17, 3])}, "w::index32", "strictly increasing"),
    ({"index": ("index32", [3])}, "w::index32", "expected 2 entries"),
    ({"index": ("delta16", [4, 0])}, "w::delta16", "zero gap"),
    ({"index": ("delta16", [4, 17])}, "w::delta16", "out of range"),
    ({"index": ("bitmask", [0, 0, 0])}, "w::bitmask", "0 positions for 2 values"),
    ({"index": ("bitmask", [0b10000000, 0, 0b00001000])}, "w::bitmask", "padding bits"),
    ({"shape": (4, -5)}, "w::shape", "non-negative"),
    ({"shape": (2**40, 2**10)}, "w::shape", "max_bytes"),
    ({"shape": (2**40, 2, 2, 2)}, "w::shape", "max_bytes"),
    ({"values": [[1.0, 2.0]]}, "w::values", "expected 1 dimension"),
])
def test_sparse_load_rejects_corrupt_archives(tmp_path, change, key, fragment):
    path = tmp_path / "bad.npz"
    _write_members(path, _sparse_members(**change))
    _expect_archive_error(path, repr(key), fragment, sparse=True)


def test_sparse_load_budget_counts_compressed_rows(tmp_path):
    path = tmp_path / "big.npz"
    array = np.zeros((1000, 1000), np.float32)
    array[::10, ::10] = 1.0
    save({"w": array}, path)
    _expect_archive_error(path, "'w::shape'", "max_bytes", max_bytes=10**6)  # dense: 4 MB
    assert load(path, sparse=True, max_bytes=10**6)["w"].nnz == 10**4  # rows: ~0.1 MB


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=6))
def test_fuzz_mutated_bytes_sparse(tmp_path, valid_archive, edits):
    data = bytearray(valid_archive)
    for where, value in edits:
        data[int(where * len(data))] = value
    path = tmp_path / "fuzz.npz"
    path.write_bytes(bytes(data))
    try:
        result = load(path, max_bytes=10**7, sparse=True)
    except ArchiveError as exc:
        assert str(path) in str(exc)
        return
    for value in result.values():
        if not isinstance(value, np.ndarray):
            value.check_format(full=True)


def _member_arrays(path):
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.mark.parametrize("make", [
    lambda rng: _sparse_array(rng, (16, 8, 3, 3), 0.9),  # bitmask
    lambda rng: np.where(np.arange(6 * 30000).reshape(6, 30000) % 3001 == 0, -2.0, 0),
    lambda rng: np.where(np.arange(2 * 400000).reshape(2, 400000) % 190000 == 3, 1.5, 0),
    lambda rng: np.concatenate([rng.standard_normal((1, 1500)), np.zeros((1, 100000)),
                                rng.standard_normal((1, 1500))], axis=1),  # bridged gap
    lambda rng: _sparse_array(rng, (40, 40), 0.3),  # stays dense
])
def test_sparse_weights_save_like_their_dense_tensor(tmp_path, make):
    from fscnn.sparse import CSRMatrix, SparseConvWeight
    array = make(np.random.default_rng(4)).astype(np.float32)
    sparse = (SparseConvWeight if array.ndim == 4 else CSRMatrix).from_dense(array)
    dense_path, sparse_path = tmp_path / "d.npz", tmp_path / "s.npz"
    save({"w": array}, dense_path)
    save({"w": sparse}, sparse_path)
    expected, got = _member_arrays(dense_path), _member_arrays(sparse_path)
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(got[key], expected[key])
    # a hand-built explicit +0.0 or -0.0 is not stored (as from a dense array)
    csr = CSRMatrix(np.array([0, 3]), np.array([0, 5, 9], np.uint16),
                    np.array([0.0, -0.0, 1.0], np.float32), (1, 5000))
    save({"w": csr}, sparse_path)
    dense = np.zeros((1, 5000), np.float32)
    dense[0, 5], dense[0, 9] = -0.0, 1.0
    save({"w": dense}, dense_path)
    assert list(_member_arrays(sparse_path)) == list(_member_arrays(dense_path))
    for key, value in _member_arrays(dense_path).items():
        assert _member_arrays(sparse_path)[key].tobytes() == value.tobytes()


def test_decode_of_np_loaded_members_equals_load(tmp_path):
    from fscnn.io import decode, is_encoded
    rng = np.random.default_rng(3)
    state = {"w": _sparse_array(rng, (64, 70), 0.9), "b": np.ones(3, np.float32)}
    path = tmp_path / "a.npz"
    save(state, path)
    with np.load(path) as archive:
        assert is_encoded(archive) and not is_encoded(state)
        decoded = decode(archive)
        sparse = decode(archive, sparse=True)
        members = {k: archive[k] for k in archive.files}
    _assert_same(load(path), decoded)
    np.testing.assert_array_equal(sparse["w"].to_dense(), state["w"])
    members["w::values"] = members["w::values"][:-1]  # one value fewer than the positions
    with pytest.raises(ArchiveError, match="w::"):
        decode(members)
    with pytest.raises(ArchiveError, match="dtype"):
        decode(dict(members, b=np.array(["x"])))
