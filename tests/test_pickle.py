"""Pickles of models: lean (the weights as compact as fscnn.save's archive), carrying the
kernel choices of the prepared plan so that a process with the same threads and SIMD level
does not time kernels again, refused across fscnn versions; and the plan saved with a whole
model (fscnn.save / fscnn.load_model)."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fscnn
from fscnn import nn
from fscnn._config import threads
from fscnn.nn.graph import GraphInput, Node

from conftest import assert_close

SHAPE = (2, 3, 32, 32)


def _resnet(sparsity=0.9, sparse=False):
    nn.manual_seed(0)
    model = fscnn.models.resnet18(num_classes=10).eval()
    if sparsity:
        fscnn.prune(model, sparsity, inplace=True)
    return model.to_sparse() if sparse else model


def _graph(rng):
    """A small imported-style model: conv, relu, global pool, flatten, linear."""
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    tensors = {"c.w": w, "c.b": rng.standard_normal(16).astype(np.float32),
               "fc.w": rng.standard_normal((4, 16)).astype(np.float32),
               "fc.b": np.zeros(4, np.float32)}
    nodes = [Node("conv", "Conv2d", {"in_channels": 3, "out_channels": 16, "kernel_size": 3,
                                     "padding": 1}, ("x",), ("c",), {"weight": "c.w",
                                                                    "bias": "c.b"}),
             Node("relu", "ReLU", {}, ("c",), ("r",), {}),
             Node("pool", "AdaptiveAvgPool2d", {"output_size": 1}, ("r",), ("p",), {}),
             Node("flat", "Flatten", {}, ("p",), ("f",), {}),
             Node("fc", "Linear", {"in_features": 16, "out_features": 4}, ("f",), ("y",),
                  {"weight": "fc.w", "bias": "fc.b"})]
    return nn.Graph([GraphInput("x", [None, 3, 16, 16], "float32")], ["y"], nodes, tensors)


def _steps(model):
    return model._current_plan()._ordered_steps


def _kernels(model):
    """Layer name -> {input shape: kernel chosen}."""
    return {row.name: row.kernels for row in model.plan()}


def _timed(model, n_threads):
    """The layers whose plans for ``n_threads`` threads were chosen by timing the kernels."""
    return [s.name for s in _steps(model)
            if any(key[1] == n_threads and plan.timings for key, plan in s.op._plans.items())]


def _run_fresh(code, tmp_path, **files):
    """Run ``code`` in a fresh interpreter (this checkout first on its path) with the pickles
    ``files`` written to tmp_path; returns its stdout."""
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fscnn.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-held", "sparse-held"])
def test_round_trip_in_a_fresh_process_keeps_results_and_kernel_choices(sparse, tmp_path, rng):
    model = _resnet(sparse=sparse)
    x = rng.random(SHAPE, dtype=np.float32)
    with threads(1):
        model.prepare(SHAPE)
        expected = model(x)
        kernels = _kernels(model)  # plan() reports the kernels of the current thread count
    assert len(_timed(model, 1)) == 21  # the parent timed every layer
    np.save(tmp_path / "x.npy", x)
    out = _run_fresh("""
        import pickle, numpy as np, fscnn
        from test_pickle import _kernels, _timed
        fscnn.set_num_threads(1)
        model = pickle.load(open("model.pkl", "rb"))
        np.save("y.npy", model(np.load("x.npy")))
        print(repr({"kernels": _kernels(model), "timed": _timed(model, 1),
                    "sparse": type(model.conv1.weight).__name__}))
    """, tmp_path, **{"model.pkl": pickle.dumps(model)})
    report = eval(out.strip().splitlines()[-1])
    assert_close(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)
    assert report["kernels"] == kernels
    assert report["timed"] == []  # same threads and SIMD level: nothing timed again
    assert report["sparse"] == ("SparseConvWeight" if sparse else "ndarray")


def test_other_thread_count_times_again(rng):
    model = _resnet()
    with threads(1):
        model.prepare(SHAPE)
    copy = pickle.loads(pickle.dumps(model))
    x = rng.random(SHAPE, dtype=np.float32)
    with threads(2):
        copy(x)
    assert len(_timed(copy, 2)) == 21
    with threads(1):  # and the carried choices still apply at one thread
        copy(x)
    assert _timed(copy, 1) == []


@pytest.mark.parametrize("sparsity,sparse,prepared", [(0.9, False, True), (0.9, True, True),
                                                      (0.9, False, False), (0.0, False, False),
                                                      (0.7, True, False)])
def test_pickle_is_at_most_1_25x_the_archive(sparsity, sparse, prepared, tmp_path):
    model = _resnet(sparsity, sparse)
    if prepared:
        model.prepare((1, 3, 32, 32))
    fscnn.save(model, tmp_path / "m.npz")
    size = len(pickle.dumps(model))
    assert size <= 1.25 * os.path.getsize(tmp_path / "m.npz")
    # a dense-held model stays dense-held, with the same weights
    copy = pickle.loads(pickle.dumps(model))
    assert type(copy.layer1[0].conv1.weight) is type(model.layer1[0].conv1.weight)
    assert_close(copy.state_dict()["layer1.0.conv1.weight"],
                 model.state_dict()["layer1.0.conv1.weight"], rtol=0, atol=0)


def test_pickle_of_another_fscnn_version_is_refused():
    data = pickle.dumps(nn.Conv2d(3, 4, 3))
    version = fscnn.__version__.encode()
    assert data.count(version) >= 1
    other = data.replace(version, b"9" * len(version))
    with pytest.raises(nn.ModelPickleError, match="pickled by fscnn 9+, this is fscnn"):
        pickle.loads(other)


def test_unpickled_module_without_version_is_refused():
    conv = nn.Conv2d(3, 4, 3)
    state = dict(conv.__dict__)  # what a pickle from before versioned pickles held
    fresh = nn.Conv2d.__new__(nn.Conv2d)
    with pytest.raises(nn.ModelPickleError, match="another fscnn version"):
        fresh.__setstate__(state)


def test_changed_weights_are_timed_again(rng):
    model = _resnet()
    with threads(1):
        model.prepare(SHAPE)
        copy = pickle.loads(pickle.dumps(model))
        copy.fc.weight = 2 * copy.fc.weight  # the carried choices were made for the old weights
        copy(rng.random(SHAPE, dtype=np.float32))
    assert len(_timed(copy, 1)) == 21


def _prepared_and_saved(graph, x, path):
    """Prepare ``graph`` for ``x``'s shape, save it with its plan to ``path``; its output."""
    graph.prepare(x.shape)
    expected = graph(x)
    fscnn.save(graph, path)
    return expected


def test_whole_model_archive_keeps_the_plan(tmp_path, rng):
    graph = _graph(rng)
    x = rng.random((4, 3, 16, 16), dtype=np.float32)
    with threads(1):
        expected = _prepared_and_saved(graph, x, tmp_path / "g.npz")
        loaded = fscnn.load_model(tmp_path / "g.npz")
        assert_close(loaded(x), expected, rtol=1e-5, atol=1e-6)
        assert _kernels(loaded) == _kernels(graph)
    assert _timed(graph, 1) == ["conv"] and _timed(loaded, 1) == []  # fc: dense, never timed
        # an unprepared model's archive has no plan: its first call times the kernels
    fscnn.save(_graph(rng), tmp_path / "u.npz")
    unprepared = fscnn.load_model(tmp_path / "u.npz")
    with threads(1):
        unprepared(x)
    assert _timed(unprepared, 1) == ["conv"]


def test_a_layer_put_on_one_thread_stays_there_through_archives_and_pickles(tmp_path, rng,
                                                                              monkeypatch):
    from fscnn import ops
    # 'auto' on 2 threads finds the conv faster on one (see test_conv's test of the choice)
    monkeypatch.setattr(ops, "_typical_calls", lambda fns: [2.0] + [1.0] * (len(fns) - 1))
    graph = _graph(rng)
    x = rng.random((4, 3, 16, 16), dtype=np.float32)
    with threads(2):
        expected = _prepared_and_saved(graph, x, tmp_path / "g.npz")
        [conv] = [s for s in _steps(graph) if s.name == "conv"]
        kernel = conv.op.plan_info(x.shape)["kernel"]  # the winner on 2 threads: timed
        for copy in (fscnn.load_model(tmp_path / "g.npz"), pickle.loads(pickle.dumps(graph))):
            assert_close(copy(x), expected, rtol=1e-5, atol=1e-6)
            [conv] = [s for s in _steps(copy) if s.name == "conv"]
            assert conv.op.plan_info(x.shape)["threads"] == 1
            assert conv.op.plan_info(x.shape)["kernel"] == kernel
            assert _timed(copy, 2) == []
            [row] = [r for r in copy.plan() if r.name == "conv"]
            assert row.threads == {x.shape: 1} and f"{kernel} (1 thread)" in str(copy.plan())


def test_prepare_times_a_choice_of_fewer_threads_twice(rng, monkeypatch):
    """prepare(input_shape) on several threads calls the model twice, so that a layer put on
    one thread by a burst of load during its timing is timed again before prepare returns
    (ops._WeightedOp._second_look): here the second look finds all threads faster."""
    from fscnn import ops
    looks = []

    def typical_calls(fns):  # the first call's two timings find one thread faster
        looks.append(len(fns))
        return [2.0] + [1.0] * (len(fns) - 1) if len(looks) <= 2 else [1.0, 2.0]

    monkeypatch.setattr(ops, "_typical_calls", typical_calls)
    graph = _graph(rng)
    x = rng.random((4, 3, 16, 16), dtype=np.float32)
    with threads(2):
        graph.prepare(x.shape)
        assert looks[0] == 2 and looks[1] > 2 and looks[2:] == [2]  # then the second look
        [conv] = [s for s in _steps(graph) if s.name == "conv"]
        assert conv.op.plan_info(x.shape)["threads"] == 2
        assert "1 thread" not in str(graph.plan())
        graph(x)
    assert len(looks) == 3


@pytest.mark.parametrize("plan", [["not", "a", "dict"], {"conv": [[[1, 2], 1, 0]]},
                                  {"conv": [[[1, -2], 1, 0, "sparse"]]},
                                  {"conv": [[[1, 2], True, 0, "sparse"]]},
                                  {"conv": [[[1, 2], 2, 0, "sparse", 0]]},
                                  {"conv": [[[1, 2], 2, 0, "sparse", "1"]]},
                                  {"conv": [[[1, 2], 2, 0, "sparse", 1, 1]]}])
def test_malformed_plan_in_an_archive_is_refused(plan, tmp_path, rng):
    import json
    import zipfile
    graph = _graph(rng)
    fscnn.save(graph, tmp_path / "g.npz")
    arrays = dict(np.load(tmp_path / "g.npz"))
    spec = json.loads(arrays["__fscnn_graph__"].tobytes())
    spec["plan"] = plan
    arrays["__fscnn_graph__"] = np.frombuffer(json.dumps(spec).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    assert zipfile.is_zipfile(tmp_path / "bad.npz")
    with pytest.raises(fscnn.io.ArchiveError, match="malformed kernel plan"):
        fscnn.load_model(tmp_path / "bad.npz")
