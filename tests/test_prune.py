"""fscnn.prune: exact magnitude pruning, structured patterns, keep lists and reports."""
import math
from collections import OrderedDict

import numpy as np
import pytest
from conftest import assert_close, torch_or_skip

from fscnn.io import state_dict_of
from fscnn.prune import (SparsityRow, format_sparsity_report, prunable_names, prune,
                         sparsity_report)

SPARSITIES = [0.0, 0.1, 0.5, 0.9, 0.99, 1.0]
WEIGHT_SHAPES = [(8, 3, 3, 3), (16, 8, 1, 1), (6, 10, 3, 5), (10, 16), (1, 1)]


def _state(seed=0, scales=(1.0, 1.0, 1.0)):
    rng = np.random.default_rng(seed)
    return OrderedDict([
        ("features.0.weight", scales[0] * rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        ("features.0.bias", rng.standard_normal(8).astype(np.float32)),
        ("features.1.weight", rng.random(8).astype(np.float32)),  # BatchNorm
        ("features.1.running_mean", rng.standard_normal(8).astype(np.float32)),
        ("features.1.num_batches_tracked", np.array(3, np.int64)),
        ("features.3.weight", scales[1] * rng.standard_normal((16, 8, 3, 3)).astype(np.float32)),
        ("classifier.weight", scales[2] * rng.standard_normal((10, 64)).astype(np.float32)),
        ("classifier.bias", rng.standard_normal(10).astype(np.float32)),
    ])


PRUNABLE = ["features.0.weight", "features.3.weight", "classifier.weight"]


class _Model:
    """The duck-typed model interface that prune uses."""

    def __init__(self, state):
        self.state = OrderedDict((k, v.copy()) for k, v in state.items())
        self.loaded = None

    def state_dict(self):
        return OrderedDict((k, v.copy()) for k, v in self.state.items())

    def load_state_dict(self, state_dict):
        self.loaded = state_dict
        self.state = OrderedDict(state_dict)


def _half_up(x):
    return int(math.floor(x + 0.5))


def _rows(weight):
    """(O, K, I) view: output, kernel tap, input channel (the pattern axis)."""
    if weight.ndim == 2:
        return weight[:, None, :]
    return np.moveaxis(weight, 1, -1).reshape(weight.shape[0], -1, weight.shape[1])


def test_prunable_names_are_conv_and_linear_weights():
    state = _state()
    state["weight"] = np.ones((2, 2))
    state["conv1d.weight"] = np.ones((2, 2, 3))
    assert prunable_names(state) == PRUNABLE + ["weight"]


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_layerwise_count_is_exact_and_keeps_the_largest(shape, sparsity):
    rng = np.random.default_rng(len(shape))
    weight = rng.standard_normal(shape).astype(np.float32)
    pruned = prune({"layer.weight": weight}, sparsity)["layer.weight"]
    zeros = pruned == 0
    assert np.count_nonzero(zeros) == _half_up(sparsity * weight.size)
    assert pruned.dtype == weight.dtype and pruned.shape == shape
    np.testing.assert_array_equal(pruned[~zeros], weight[~zeros])
    if zeros.any() and (~zeros).any():
        assert np.abs(weight[zeros]).max() <= np.abs(weight[~zeros]).min()


def test_rounding_is_half_up():
    weight = np.arange(1, 11, dtype=np.float64).reshape(2, 5)
    assert np.count_nonzero(prune({"w.weight": weight}, 0.25)["w.weight"] == 0) == 3
    assert np.count_nonzero(prune({"w.weight": weight}, 0.24)["w.weight"] == 0) == 2


def test_ties_prune_the_first_entries_in_c_order():
    weight = np.ones((3, 4), np.float32)
    weight[0, 0] = -1.0
    pruned = prune({"fc.weight": weight}, 0.5)["fc.weight"]
    np.testing.assert_array_equal(pruned.ravel(), [0] * 6 + [1] * 6)
    again = prune({"fc.weight": weight}, 0.5)["fc.weight"]
    np.testing.assert_array_equal(pruned, again)


def test_other_entries_and_input_are_untouched():
    state = _state()
    before = {k: v.copy() for k, v in state.items()}
    out = prune(state, 0.7)
    assert list(out) == list(state)
    for name, value in state.items():
        np.testing.assert_array_equal(value, before[name])
        if name not in PRUNABLE:
            assert out[name] is value
    assert all(np.count_nonzero(out[n] == 0) > 0 for n in PRUNABLE)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 1.0])
def test_global_uses_one_threshold(sparsity):
    state = _state(scales=(1.0, 10.0, 0.1))
    out = prune(state, sparsity, scope="global")
    pruned = np.concatenate([np.abs(state[n][out[n] == 0]) for n in PRUNABLE])
    kept = np.concatenate([np.abs(state[n][out[n] != 0]) for n in PRUNABLE])
    total = sum(state[n].size for n in PRUNABLE)
    assert pruned.size == _half_up(sparsity * total)
    if pruned.size and kept.size:
        assert pruned.max() <= kept.min()
    if 0 < sparsity < 1:
        report = {r.name: r.sparsity for r in sparsity_report(out).rows}
        assert report["classifier.weight"] >= report["features.0.weight"] > \
            report["features.3.weight"]


def test_global_ties_follow_state_dict_order():
    state = {"a.weight": np.ones((2, 2)), "b.weight": np.ones((2, 2))}
    out = prune(state, 0.5, scope="global")
    assert np.count_nonzero(out["a.weight"]) == 0 and np.count_nonzero(out["b.weight"]) == 4


@pytest.mark.parametrize("keep, dense", [
    (["features.0"], ["features.0.weight"]),
    ("features.0.weight", ["features.0.weight"]),
    (["features.0", "classifier"], ["features.0.weight", "classifier.weight"]),
    (["features.*"], ["features.0.weight", "features.3.weight"]),
    (["*.weight"], PRUNABLE),
])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_keep(keep, dense, scope):
    state = _state()
    out = prune(state, 0.8, keep=keep, scope=scope)
    for name in PRUNABLE:
        assert (np.count_nonzero(out[name]) == out[name].size) == (name in dense), name
    if scope == "global" and len(dense) < len(PRUNABLE):
        pool = sum(state[n].size for n in PRUNABLE if n not in dense)
        zeros = sum(np.count_nonzero(out[n] == 0) for n in PRUNABLE)
        assert zeros == _half_up(0.8 * pool)


def test_unknown_keep_names_are_listed():
    with pytest.raises(ValueError, match=r"\['feature.0', 'fc\*'\] match no prunable weight"):
        prune(_state(), 0.5, keep=["features.0", "feature.0", "fc*"])
    with pytest.raises(ValueError, match="features.0.bias"):
        prune(_state(), 0.5, keep=["features.0.bias"])
    with pytest.raises(TypeError, match="keep entries must be str"):
        prune(_state(), 0.5, keep=[0])


def _nm_reference(weight, n, m):
    """Loop reference: prune all but the n largest of each group of (up to) m inputs."""
    rows = _rows(np.abs(weight))
    keep = np.ones(rows.shape, dtype=bool)
    for o in range(rows.shape[0]):
        for k in range(rows.shape[1]):
            for start in range(0, rows.shape[2], m):
                group = rows[o, k, start:start + m]
                order = sorted(range(group.size), key=lambda j: (group[j], j))
                keep[o, k, start + np.array(order[:max(0, group.size - n)], dtype=int)] = False
    return keep


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 3), (2, 3)])
@pytest.mark.parametrize("shape", [(4, 8, 3, 3), (5, 6, 1, 1), (3, 10), (4, 3, 2, 2)])
def test_n_m(shape, n, m):
    rng = np.random.default_rng(7)
    weight = rng.standard_normal(shape)
    pruned = prune({"w.weight": weight}, pattern=f"{n}:{m}")["w.weight"]
    rows = _rows(pruned)
    padded = np.pad(rows, [(0, 0), (0, 0), (0, -rows.shape[2] % m)])
    per_group = np.count_nonzero(padded.reshape(rows.shape[0], rows.shape[1], -1, m), axis=-1)
    assert per_group.max() <= n
    np.testing.assert_array_equal(rows != 0, _nm_reference(weight, n, m))


def test_n_m_ties_prune_the_first_inputs():
    pruned = prune({"fc.weight": np.ones((2, 6))}, pattern="2:4")["fc.weight"]
    np.testing.assert_array_equal(pruned, [[0, 0, 1, 1, 1, 1]] * 2)


def test_n_m_sparsity_argument():
    state = _state()
    a = prune(state, pattern="2:4")
    b = prune(state, 0.5, pattern="2:4")
    for name in PRUNABLE:
        np.testing.assert_array_equal(a[name], b[name])
    with pytest.raises(ValueError, match="fixes the sparsity at 0.5"):
        prune(state, 0.9, pattern="2:4")
    with pytest.raises(ValueError, match="global"):
        prune(state, scope="global", pattern="2:4")


def _block_reference(weight, rows_per_block, cols_per_block, sparsity):
    """Loop reference of layer-wise RxC block pruning by L2 norm, ties by block order."""
    rows = _rows(weight.astype(np.float64))
    out, taps, inp = rows.shape
    blocks = []
    for bo in range(0, out, rows_per_block):
        for k in range(taps):
            for bi in range(0, inp, cols_per_block):
                block = rows[bo:bo + rows_per_block, k, bi:bi + cols_per_block]
                blocks.append((np.sum(block ** 2), len(blocks), (bo, k, bi)))
    keep = np.ones(rows.shape, dtype=bool)
    for _, _, (bo, k, bi) in sorted(blocks)[:_half_up(sparsity * len(blocks))]:
        keep[bo:bo + rows_per_block, k, bi:bi + cols_per_block] = False
    return keep


@pytest.mark.parametrize("block", [(1, 4), (2, 2), (4, 1), (3, 5)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(8, 8, 3, 3), (6, 10), (5, 3, 1, 1)])
def test_blocks(shape, sparsity, block):
    rng = np.random.default_rng(8)
    weight = rng.standard_normal(shape).astype(np.float32)
    pruned = prune({"w.weight": weight}, sparsity, pattern="{}x{}".format(*block))["w.weight"]
    np.testing.assert_array_equal(_rows(pruned) != 0, _block_reference(weight, *block, sparsity))


def test_blocks_global_one_threshold():
    state = _state(scales=(1.0, 10.0, 0.1))
    out = prune(state, 0.6, scope="global", pattern="1x4")
    norms = {True: [], False: []}
    for name in PRUNABLE:
        rows = _rows(out[name])
        original = _rows(state[name].astype(np.float64))
        for o in range(rows.shape[0]):
            for k in range(rows.shape[1]):
                for i in range(0, rows.shape[2], 4):
                    zero = not rows[o, k, i:i + 4].any()
                    norms[zero].append(np.sum(original[o, k, i:i + 4] ** 2))
    assert len(norms[True]) == _half_up(0.6 * (len(norms[True]) + len(norms[False])))
    assert max(norms[True]) <= min(norms[False])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sparsity": -0.1}, ValueError, r"in \[0, 1\], received -0.1"),
    ({"sparsity": 1.5}, ValueError, "received 1.5"),
    ({"sparsity": float("nan")}, ValueError, "received nan"),
    ({"sparsity": True}, TypeError, "received True"),
    ({"sparsity": "0.5"}, TypeError, "received '0.5'"),
    ({}, TypeError, "received None"),
    ({"sparsity": 0.5, "scope": "model"}, ValueError, "scope must be"),
    ({"pattern": "0:4"}, ValueError, "0 < N <= M"),
    ({"pattern": "5:4"}, ValueError, "0 < N <= M"),
    ({"sparsity": 0.5, "pattern": "0x4"}, ValueError, "R >= 1"),
    ({"sparsity": 0.5, "pattern": "2:"}, ValueError, "received '2:'"),
    ({"sparsity": 0.5, "pattern": " 2:4"}, ValueError, "received ' 2:4'"),
    ({"sparsity": 0.5, "pattern": "block"}, ValueError, "'unstructured', 'N:M'"),
    ({"sparsity": 0.5, "pattern": None}, ValueError, "received None"),
])
def test_argument_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        prune(_state(), **kwargs)


def test_weight_validation():
    with pytest.raises(ValueError, match="'fc.weight': the weight contains NaN"):
        prune({"fc.weight": np.array([[1.0, np.nan]])}, 0.5)
    with pytest.raises(TypeError, match="'fc.weight': expected a float weight"):
        prune({"fc.weight": np.ones((2, 2), np.int32)}, 0.5)
    with pytest.raises(TypeError, match="state_dict"):
        prune([np.ones((2, 2))], 0.5)
    assert np.count_nonzero(prune({"fc.weight": np.ones((2, 2), np.int32)}, 0.5,
                                  keep="fc")["fc.weight"]) == 4


def test_inplace_state_dict():
    state = _state()
    reference = prune(state, 0.6)
    out = prune(state, 0.6, inplace=True)
    assert out is state
    for name in state:
        np.testing.assert_array_equal(state[name], reference[name])
    mixed = {"a.weight": np.ones((2, 2)), "fc.weight": np.ones((2, 2))}
    mixed["fc.weight"].flags.writeable = False
    with pytest.raises(TypeError, match="'fc.weight': inplace=True needs a writeable"):
        prune(mixed, 0.5, inplace=True)
    assert mixed["a.weight"].all()  # nothing changed before the error
    with pytest.raises(TypeError, match="'fc.weight': inplace=True needs a writeable"):
        prune({"fc.weight": [[1.0, 2.0]]}, 0.5, inplace=True)


def test_model_inplace_and_not():
    state = _state()
    model = _Model(state)
    out = prune(model, 0.6)
    assert isinstance(out, OrderedDict) and model.loaded is None
    assert prune(model, 0.6, inplace=True) is model
    for name in state:
        np.testing.assert_array_equal(model.loaded[name], out[name])


def test_matches_torch_prune():
    torch = torch_or_skip()
    from torch.nn.utils import prune as torch_prune

    # sizes where sparsity * size is not a half, so torch's round() agrees with half-up
    state = _state(scales=(1.0, 3.0, 0.5))
    modules = {}
    for name in PRUNABLE:
        weight = torch.from_numpy(state[name].copy())
        module = torch.nn.Conv2d(1, 1, 1) if weight.ndim == 4 else torch.nn.Linear(1, 1)
        module.weight = torch.nn.Parameter(weight)
        modules[name] = module
    for name, module in modules.items():
        torch_prune.l1_unstructured(module, "weight", amount=0.7)
    ours = prune(state, 0.7)
    for name, module in modules.items():
        np.testing.assert_array_equal(module.weight_mask.numpy() == 0, ours[name] == 0)
    for name, module in modules.items():
        torch_prune.remove(module, "weight")
        module.weight = torch.nn.Parameter(torch.from_numpy(state[name].copy()))
    torch_prune.global_unstructured([(m, "weight") for m in modules.values()],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.7)
    ours = prune(state, 0.7, scope="global")
    for name, module in modules.items():
        np.testing.assert_array_equal(module.weight_mask.numpy() == 0, ours[name] == 0)


def test_sparsity_report_numbers():
    state = _state()
    state["features.3.weight"][:8] = 0
    state["empty.weight"] = np.zeros((0, 4), np.float32)
    report = sparsity_report(_Model(state))
    assert [r.name for r in report.rows] == PRUNABLE + ["empty.weight"]
    conv = report.rows[1]
    assert conv == SparsityRow("features.3.weight", (16, 8, 3, 3), 1152, 576, 0.5)
    assert report.rows[3].sparsity == 0.0
    assert report.total == SparsityRow("total", None, 216 + 1152 + 640, 216 + 576 + 640,
                                       1 - (216 + 576 + 640) / (216 + 1152 + 640))


def test_format_sparsity_report():
    text = format_sparsity_report(sparsity_report(prune(_state(), 0.9)))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "shape", "params", "nonzeros", "sparsity"]
    assert lines[3].split() == ["features.3.weight", "16x8x3x3", "1,152", "115", "90.02%"]
    assert lines[-1].split() == ["total", "2,008", "201", "89.99%"]
    assert len({len(line) for line in lines[:2]}) == 1


# -- exact selection without full-size transients -------------------------------------------

def _old_smallest(scores, k):
    """The selection before the chunked radix select (np.partition of a full copy), kept as
    the reference: mask of the k smallest; ties at the threshold go to lower indices."""
    if k == 0:
        return np.zeros(scores.size, dtype=bool)
    threshold = np.partition(scores, k - 1)[k - 1]
    mask = scores < threshold
    ties = np.flatnonzero(scores == threshold)[:k - np.count_nonzero(mask)]
    mask[ties] = True
    return mask


def _old_masks(weights, sparsity, scope):
    """name -> mask of unstructured pruning as computed before (per layer or one concatenation)."""
    if scope == "layer":
        return {name: _old_smallest(np.abs(w).reshape(-1), _half_up(sparsity * w.size))
                .reshape(w.shape) for name, w in weights.items()}
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])
    mask = _old_smallest(flat, min(flat.size, _half_up(sparsity * flat.size)))
    bounds = np.cumsum([w.size for w in weights.values()])[:-1]
    return {name: m.reshape(w.shape)
            for (name, w), m in zip(weights.items(), np.split(mask, bounds))}


def _tied_state(rng, dtypes=(np.float32, np.float32, np.float32)):
    """Weights drawn from a few magnitudes of both signs (many ties, also across layers,
    and -0.0 next to 0.0)."""
    values = np.array([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 0.25])
    shapes = [(6, 5, 3, 3), (7, 11), (4, 3, 1, 2)]
    return OrderedDict((f"l{i}.weight", rng.choice(values, size=shape).astype(dtype))
                       for i, (shape, dtype) in enumerate(zip(shapes, dtypes)))


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.77, 0.9, 1.0])
def test_selection_matches_partition_with_ties(monkeypatch, chunk, scope, sparsity):
    import fscnn.prune as fp
    monkeypatch.setattr(fp, "_CHUNK", chunk)  # chunk boundaries inside tie runs
    rng = np.random.default_rng(int(sparsity * 100) + chunk)
    for dtypes in [(np.float32,) * 3, (np.float16, np.float64, np.float32)]:
        state = _tied_state(rng, dtypes)
        expected = _old_masks(state, sparsity, scope)
        out = prune(state, sparsity, scope=scope)
        inplace = OrderedDict((k, v.copy()) for k, v in state.items())
        prune(inplace, sparsity, scope=scope, inplace=True)
        for name, w in state.items():
            np.testing.assert_array_equal(out[name] == 0, expected[name] | (w == 0), err_msg=name)
            np.testing.assert_array_equal(out[name], np.where(expected[name], 0, w))
            np.testing.assert_array_equal(inplace[name], out[name])


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_selection_matches_partition_random_and_non_contiguous(monkeypatch, scope):
    import fscnn.prune as fp
    monkeypatch.setattr(fp, "_CHUNK", 50)
    rng = np.random.default_rng(5)
    base = rng.standard_normal((9, 4, 5, 5)).astype(np.float32)
    state = OrderedDict([("a.weight", base.transpose(1, 0, 2, 3)),  # non-contiguous
                         ("b.weight", rng.standard_normal((13, 17)).astype(np.float64)),
                         ("c.weight", np.zeros((3, 2), np.float32))])  # all ties at zero
    for sparsity in (0.3, 0.95):
        expected = _old_masks(state, sparsity, scope)
        out = prune(state, sparsity, scope=scope)
        inplace = OrderedDict((k, np.array(v)) for k, v in state.items())
        inplace["a.weight"] = base.copy().transpose(1, 0, 2, 3)
        prune(inplace, sparsity, scope=scope, inplace=True)
        for name, w in state.items():
            np.testing.assert_array_equal(out[name], np.where(expected[name], 0, w))
            np.testing.assert_array_equal(inplace[name], out[name])


def test_fscnn_model_is_pruned_in_place_without_copies():
    from fscnn import nn
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    before = model(x)  # prepared on the dense weights
    reference = prune(model.state_dict(), 0.7, scope="global")
    arrays = [model[0].weight, model[3].weight]
    assert prune(model, 0.7, scope="global", inplace=True) is model
    assert model[0].weight is arrays[0] and model[3].weight is arrays[1]  # zeroed in place
    assert not model[0].weight.flags.writeable  # read-only again
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, reference[name])
    after = model(x)  # the plan was rebuilt on the pruned weights
    expected = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 5))
    expected.load_state_dict(reference)
    assert_close(after, expected(x))  # kernels may differ ('auto'), so not bit-equal
    assert not np.allclose(after, before)


def test_prune_of_sparse_held_model():
    from fscnn import nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    prune(model, 0.8, inplace=True)
    dense_state = OrderedDict((k, v.copy()) for k, v in model.state_dict().items())
    model.to_sparse()
    with pytest.raises(TypeError, match=r"'0.weight'.*sparse.*to_dense\(\)"):
        prune(model, 0.9, inplace=True)
    out = prune(model, 0.9)  # not in place: a dense state_dict, the model untouched
    np.testing.assert_array_equal(out["2.weight"], prune(dense_state, 0.9)["2.weight"])
    report = sparsity_report(model)  # counted on the sparse weights, not densified
    assert report == sparsity_report(dense_state)
    assert prunable_names(model) == prunable_names(dense_state)
    model.to_dense()
    prune(model, 0.9, inplace=True)
    np.testing.assert_array_equal(model.state_dict()["2.weight"], out["2.weight"])


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_selection_with_empty_and_strided_weights(scope):
    state = OrderedDict([("a.weight", np.zeros((0, 4), np.float32)),
                         ("b.weight", np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::-2]),
                         ("c.weight", np.zeros((4, 0, 3, 3), np.float32)[:, :, ::2])])
    expected = _old_masks(state, 0.5, scope)
    out = prune(state, 0.5, scope=scope)
    for name, w in state.items():
        assert out[name].shape == w.shape
        np.testing.assert_array_equal(out[name], np.where(expected[name], 0, w))


def test_the_package_attribute_prunes_as_documented():
    """``fscnn.prune(model, ...)`` (Module.to_sparse's example) is ``fscnn.prune.prune``."""
    import fscnn
    from fscnn import nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    assert fscnn.prune(model, 0.9, inplace=True) is model
    assert sparsity_report(model).total.nonzeros == round(0.1 * 216) + round(0.1 * 512)
    model.to_sparse().prepare((1, 3, 6, 6))
    state = _state()
    for a, b in zip(fscnn.prune(state, 0.5).values(), prune(state, 0.5).values()):
        np.testing.assert_array_equal(a, b)
    assert fscnn.prune.sparsity_report is sparsity_report


@pytest.mark.parametrize("target", ["state_dict", "state_dict in place", "model in place"])
def test_global_pruning_warns_when_it_empties_a_layer(target):
    import warnings
    from fscnn import nn
    from fscnn.prune import PruningWarning
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    state["2.weight"] *= 1e-3  # all smaller than every conv weight
    model.load_state_dict(state)
    obj, inplace = {"state_dict": (state, False), "state_dict in place": (state, True),
                    "model in place": (model, True)}[target]
    with pytest.warns(PruningWarning, match=r"zeroed every weight of '2\.weight'") as record:
        pruned = prune(obj, 0.2, scope="global", inplace=inplace)
    assert len(record) == 1 and "0.weight" not in str(record[0].message)
    assert not np.count_nonzero(state_dict_of(pruned)["2.weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningWarning)
        prune(model.state_dict(), 0.2, scope="layer")  # asked for per layer: no surprise
        prune(model.state_dict(), 0.05, scope="global")  # leaves some of 2.weight
