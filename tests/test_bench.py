"""fscnn.bench as a library: its JSON report."""
import json

import numpy as np

import fscnn
from fscnn import bench


def _strict_loads(text):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_write_json_is_strict_json(tmp_path):
    report = {"latency": {"fscnn": {"median_ms": np.float32(1.5), "runs": np.int64(3),
                                    "p99_ms": float("nan")}},
              "check": {"ok": np.bool_(True), "max_rel_error": np.float64(np.inf)},
              "kernels": {"sparse": 2}, "shape": (1, 3, np.int32(8)),
              "times": np.array([0.5, np.nan]), "name": "vgg16", "gflops": None}
    path = tmp_path / "r.json"
    bench.write_json(report, path)
    assert _strict_loads(path.read_text()) == {
        "latency": {"fscnn": {"median_ms": 1.5, "runs": 3, "p99_ms": None}},
        "check": {"ok": True, "max_rel_error": None}, "kernels": {"sparse": 2},
        "shape": [1, 3, 8], "times": [0.5, None], "name": "vgg16", "gflops": None}


def test_pruned_random_zoo_models_keep_their_activations():
    """Without rescale_pruned, MobileNetV2's features at 90% fell to ~1e-14: the output was
    the classifier's bias whatever the kernels computed, and the bench's check could not fail."""
    from fscnn.prune import prune
    model, _ = bench.build_model("mobilenet_v2")
    prune(model, 0.9, inplace=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    before = model.features(x)
    bench.rescale_pruned(model)
    after = model.features(x)
    assert np.abs(before[0] - before[1]).max() < 1e-6  # the problem
    assert np.abs(after[0] - after[1]).max() > 1e-3
    densities = [np.count_nonzero(m.weight) / m.weight.size for m in model.modules()
                 if isinstance(m, fscnn.nn.Conv2d)]
    assert max(densities) <= 0.11  # still pruned: only the scale changed
