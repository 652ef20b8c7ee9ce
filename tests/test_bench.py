"""fscnn.bench as a library: its JSON report."""
import json

import numpy as np

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
