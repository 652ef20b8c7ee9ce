"""The ``fscnn`` command line: help, one-line errors with exit status 2, info and prune."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fscnn
from conftest import import_or_skip, torch_or_skip
from fscnn import __version__, models, nn
from fscnn._table import format_table
from fscnn.cli import main
from fscnn.io import load

# where the fscnn under test lives: the source tree for an in-place build, site-packages for an
# installed one (the source tree then has no compiled extensions)
FSCNN_HOME = os.path.dirname(os.path.dirname(os.path.abspath(fscnn.__file__)))


def _toy():
    """conv 3->4 (3x3, pad 1), conv 4->8 (3x3, stride 2, pad 1), global pool, linear 8->10."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


ZOO = {"toy": _toy, "nopad": lambda: nn.Sequential(nn.Conv2d(3, 4, 5))}


@pytest.fixture(autouse=True)
def toy_zoo(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_BUILDERS", dict(models._BUILDERS, **ZOO))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def dense_npz(tmp_path):
    """A toy model's weights as torch users save them: a plain dense ``np.savez``."""
    nn.manual_seed(0)
    path = tmp_path / "dense.npz"
    np.savez(path, **_toy().state_dict())
    return str(path)


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _cells(out, name):
    """The cells of the table row that starts with ``name`` (columns split on 2+ spaces)."""
    for line in out.splitlines():
        if line.startswith(name + " "):
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no row {name!r} in\n{out}")


@pytest.mark.parametrize("argv", [[], ["info"], ["prune"], ["predict"]])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_at_every_level(capsys, argv, flag):
    status, out, err = _run(capsys, *argv, flag)
    assert status == 0 and err == ""
    assert out.startswith(f"usage: fscnn {' '.join(argv)}".rstrip())


def test_top_level_help_lists_only_working_commands(capsys):
    _, out, _ = _run(capsys, "--help")
    listed = re.findall(r"^    (\w+)\s", out, flags=re.MULTILINE)
    assert listed == ["bench", "info", "prune", "predict"]


def test_version(capsys):
    assert _run(capsys, "--version") == (0, f"fscnn {__version__}\n", "")


def _user_errors(dense, corrupt, ints, other):
    return [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["prune", "missing.npz", "out.npz", "--sparsity", "0.5"],
         "missing.npz: No such file or directory"),
        (["prune", dense, "out.npz", "--sparsity", "abc"],
         "argument --sparsity: expected a number in [0, 1], received 'abc'"),
        (["prune", dense, "out.npz", "--sparsity", "1.5"], "received '1.5'"),
        (["prune", dense, "out.npz", "--sparsity", "nan"], "received 'nan'"),
        (["prune", dense, "out.npz"], "--sparsity is required unless --pattern is N:M"),
        (["prune", dense, "out.npz", "--sparsity", "0.5", "--pattern", "3:2"], "0 < N <= M"),
        (["prune", dense, "out.npz", "--sparsity", "0.5", "--pattern", "dense"],
         "pattern must be 'unstructured'"),
        (["prune", dense, "out.npz", "--sparsity", "0.5", "--keep", "0,features.9"],
         "keep: ['features.9'] match no prunable weight"),
        (["prune", dense, "out.npz", "--sparsity", "0.5", "--pattern", "2:4", "--global"],
         "scope='global' does not apply"),
        (["prune", corrupt, "out.npz", "--sparsity", "0.5"], "not a valid .npz (zip) archive"),
        (["prune", ints, "out.npz", "--sparsity", "0.5"], "'fc.weight': expected a float"),
        (["prune", dense, "no/such/dir/out.npz", "--sparsity", "0.5"],
         "No such file or directory"),
        (["info"], "the following arguments are required: MODEL|FILE"),
        (["info", "nosuchmodel"], "unknown model 'nosuchmodel' (models: mobilenet_v2, nopad, "
                                  "resnet101,"),
        (["info", "missing.npz"], "missing.npz: No such file or directory"),
        (["info", dense, "--input-size", "0"], "expected a positive integer, received '0'"),
        (["info", dense, "--input-size", "2.5"], "received '2.5'"),
        (["info", dense, "--model", "vgg99"], "unknown model 'vgg99'"),
        (["info", "toy", "--model", "toy"], "--model describes a .npz file"),
        (["info", other, "--model", "toy"],
         "the weights do not fit --model toy: '0.weight' has shape (4, 3, 5, 5)"),
        (["info", "nopad", "--input-size", "4"], "cannot run on inputs of shape (1, 3, 4, 4)"),
        (["info", dense, "--bogus"], "unrecognized arguments: --bogus"),
    ]


def test_user_errors_are_one_line_with_status_2(capsys, tmp_path, dense_npz):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip")
    ints = tmp_path / "ints.npz"
    np.savez(ints, **{"fc.weight": np.ones((2, 2), np.int32)})
    other = tmp_path / "other.npz"
    np.savez(other, **ZOO["nopad"]().state_dict())
    for argv, message in _user_errors(dense_npz, str(corrupt), str(ints), str(other)):
        status, out, err = _run(capsys, *argv)
        assert status == 2, argv
        assert out == "", argv
        assert err.count("\n") == 1 and err.startswith("fscnn: error: "), (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err
    assert not os.path.exists("out.npz")


def test_prune_command(capsys, dense_npz):
    status, out, err = _run(capsys, "prune", dense_npz, "pruned.npz", "--sparsity", "0.75",
                            "--keep", "5")
    assert (status, err) == (0, "")
    assert _cells(out, "0.weight") == ["0.weight", "4x3x3x3", "108", "27", "75.00%"]
    assert _cells(out, "5.weight") == ["5.weight", "10x8", "80", "80", "0.00%"]
    assert out.splitlines()[-1].startswith("wrote pruned.npz (")
    original, pruned = load(dense_npz), load("pruned.npz")
    assert list(pruned) == list(original)
    for name, value in original.items():
        kept = pruned[name] != 0
        np.testing.assert_array_equal(pruned[name][kept], value[kept])
    assert np.count_nonzero(pruned["2.weight"]) == 72
    with np.load("pruned.npz") as archive:  # too small to gain from sparse storage: 0.weight
        assert {"0.weight", "2.weight::bitmask"} <= set(archive.files)


@pytest.mark.parametrize("options, nonzeros", [
    (["--pattern", "2:4"], {"0.weight": 72, "2.weight": 144, "5.weight": 40}),
    (["--sparsity", "0.5", "--pattern", "1x4"], {"0.weight": 54, "2.weight": 144,
                                                 "5.weight": 40}),
    (["--sparsity", "0.9", "--global", "--keep", "0.weight", "--keep", "5"],
     {"0.weight": 108, "2.weight": 29, "5.weight": 80}),
])
def test_prune_options(capsys, dense_npz, options, nonzeros):
    status, _, _ = _run(capsys, "prune", dense_npz, "pruned.npz", *options)
    assert status == 0
    pruned = load("pruned.npz")
    assert {name: np.count_nonzero(pruned[name]) for name in nonzeros} == nonzeros


def test_info_archive_without_model(capsys, dense_npz):
    assert _run(capsys, "prune", dense_npz, "p.npz", "--sparsity", "0.9")[0] == 0
    status, out, err = _run(capsys, "info", "p.npz")
    assert (status, err) == (0, "")
    assert _cells(out, "2.weight")[:5] == ["2.weight", "8x4x3x3", "288", "29", "89.93%"]
    assert _cells(out, "2.weight")[5] == "1.12 KiB"
    assert _cells(out, "total")[:3] == ["total", "498", "70"]  # biases stay dense
    assert "FLOPs" not in out.splitlines()[0]
    assert out.splitlines()[-1].startswith("FLOPs: pass --model ARCH")


def test_info_flops(capsys, dense_npz):
    assert _run(capsys, "prune", dense_npz, "p.npz", "--sparsity", "0.5")[0] == 0
    status, out, err = _run(capsys, "info", "p.npz", "--model", "toy", "--input-size", "32")
    assert (status, err) == (0, "")
    # dense: 2 * weight.size * Ho * Wo; sparse: 2 * nonzeros * Ho * Wo
    assert _cells(out, "0.weight")[-2:] == ["221.18 K", "110.59 K"]  # 32x32 outputs
    assert _cells(out, "2.weight")[-2:] == ["147.46 K", "73.73 K"]  # 16x16 outputs
    assert _cells(out, "5.weight")[-2:] == ["160", "80"]
    assert _cells(out, "total")[-2:] == ["368.80 K", "184.40 K"]
    status, out, _ = _run(capsys, "info", "toy", "--input-size", "64")
    assert status == 0
    assert _cells(out, "0.weight")[-2:] == ["884.74 K", "884.74 K"]


def test_format_table():
    text = format_table(["name", "n"], [["a", 1], None, ["total", "1,000"]])
    assert text.splitlines() == ["name       n", "-----  -----", "a          1",
                                 "-----  -----", "total  1,000"]
    assert format_table(["x", "y"], [["1", "2"]], align="rl").splitlines()[2] == "1  2"
    with pytest.raises(ValueError, match="align"):
        format_table(["x", "y"], [], align="l")
    with pytest.raises(ValueError, match="expected 2 cells"):
        format_table(["x", "y"], [["1"]])


def test_python_m_fscnn(tmp_path):
    env = dict(os.environ, PYTHONPATH=FSCNN_HOME + os.pathsep + os.environ.get("PYTHONPATH", ""))
    help_run = subprocess.run([sys.executable, "-m", "fscnn", "--help"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)
    assert help_run.returncode == 0 and "usage: fscnn" in help_run.stdout
    error_run = subprocess.run([sys.executable, "-m", "fscnn", "info", "missing.npz"],
                               capture_output=True, text=True, env=env, cwd=tmp_path,
                               timeout=120)
    assert error_run.returncode == 2
    assert error_run.stderr == "fscnn: error: missing.npz: No such file or directory\n"


# ------------------------------------------------------------------ bench
def test_bench_runs_checks_and_writes_json(capsys, tmp_path):
    out_json = tmp_path / "r.json"
    status, out, err = _run(capsys, "bench", "resnet18", "--input-size", "32", "--threads", "1",
                            "--iterations", "2", "--warmup", "0", "--per-layer", "--compare",
                            "dense", "--json", out_json)
    assert status == 0, err
    assert "check: max|fscnn - " in out and "(ok)" in out
    assert _cells(out, "fscnn") and _cells(out, "dense")
    assert _cells(out, "layer1.0.conv1")[1] == "Conv2d+BatchNorm2d+ReLU"
    import json
    report = json.loads(out_json.read_text())
    assert report["model"] == "resnet18" and report["threads"] == 1
    assert abs(report["sparsity"] - 0.9) < 0.01
    assert report["check"]["ok"] and report["latency"]["fscnn"]["runs"] == 2
    assert {r["layer"] for r in report["layers"]} >= {"conv1", "fc"}


def test_bench_prunes_in_4x1_blocks(capsys, tmp_path):
    out_json = tmp_path / "r.json"
    status, out, err = _run(capsys, "bench", "toy", "--pattern", "4x1", "--sparsity", "0.75",
                            "--threads", "1", "--iterations", "1", "--warmup", "0",
                            "--compare", "dense", "--kernel", "block_sparse", "--json", out_json)
    assert status == 0, err
    assert "pruned to 75% in 4x1 blocks" in out and "(ok)" in out
    import json
    report = json.loads(out_json.read_text())
    assert report["pattern"] == "4x1" and report["kernels"].get("block_sparse", 0) >= 1


def test_bench_of_an_archive_needs_its_architecture(capsys, tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, x=np.ones(3, np.float32))
    status, _, err = _run(capsys, "bench", path)
    assert status == 2 and "--model" in err and "Traceback" not in err
    status, _, err = _run(capsys, "bench", "alexnet")
    assert status == 2 and "unknown model 'alexnet'" in err
    status, _, err = _run(capsys, "bench", "--compare", "tensorflow")
    assert status == 2 and "tensorflow" in err


def test_bench_user_errors_are_one_line(capsys, tmp_path, dense_npz):
    for argv, message in [
            (["bench", "nopad", "--input-size", "4", "--compare", "dense"],
             "--input-size 4: 0 (Conv2d): input of spatial size (H, W) = (4, 4) is too small"),
            (["bench", "toy", "--keep", "nosuch", "--compare", "dense"],
             "keep: ['nosuch'] match no prunable weight"),
            (["bench", dense_npz, "--model", "nopad", "--compare", "dense"],
             "the weights do not fit --model nopad: Error(s) in loading state_dict"),
            (["bench", dense_npz, "--model", "toy", "--pattern", "4x1"],
             "--pattern 4x1 prunes: give --sparsity too"),
            (["bench", "toy", "--pattern", "2:4", "--compare", "dense"],
             "pattern '2:4' fixes the sparsity at 0.5")]:
        status, out, err = _run(capsys, *argv)
        assert status == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("fscnn: error: "), (argv, err)
        assert message in err, (argv, err)


@pytest.mark.parametrize("command, target", [
    (["prune", "{npz}", "out.npz", "--sparsity", "0.5"], "fscnn.prune.sparsity_report"),
    (["info", "{npz}"], "fscnn.io.encoded_nbytes"),
    (["bench", "toy", "--compare", "dense", "--iterations", "1", "--warmup", "0"],
     "fscnn.bench.latency_stats"),
])
def test_internal_errors_are_not_reported_as_user_errors(capsys, monkeypatch, dense_npz,
                                                         command, target):
    """A ValueError from inside the library is a bug: it propagates with its traceback
    instead of becoming a one-line 'fscnn: error:'."""
    def broken(*args, **kwargs):
        raise ValueError("an internal bug")
    monkeypatch.setattr(target, broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main([a.format(npz=dense_npz) for a in command])
    assert "fscnn: error" not in capsys.readouterr().err


def test_bench_compares_with_torch_and_onnxruntime(capsys):
    """The comparisons themselves (skipped without torch / ONNX Runtime, failed in CI)."""
    torch_or_skip()
    import_or_skip("onnx", "pip install onnx")
    import_or_skip("onnxruntime", "pip install onnxruntime")
    status, out, err = _run(capsys, "bench", "resnet18", "--input-size", "32", "--threads",
                            "1", "--iterations", "1", "--warmup", "0", "--compare",
                            "torch,onnxruntime")
    assert status == 0, err
    assert "check: max|fscnn - torch|" in out and "(ok)" in out
    for reference in ("torch", "onnxruntime"):
        assert _cells(out, reference)[-1].startswith("x")  # fscnn's speed-up over it


FAKE_DEEPSPARSE = """
import numpy as np
import fscnn

class _Engine:
    def __init__(self, path, batch_size, num_cores):
        if {fail!r}:
            raise RuntimeError("NM: error: no engine today")
        self.graph = fscnn.from_onnx(path)
        self.batch_size, self.num_cores = batch_size, num_cores

    def __call__(self, inputs):
        assert inputs[0].shape[0] == self.batch_size and self.num_cores == 1
        return [self.graph(inputs[0])]

def compile_model(path, batch_size=1, num_cores=None):
    return _Engine(path, batch_size, num_cores)
"""


@pytest.mark.parametrize("fail", [False, True])
def test_bench_compares_with_deepsparse_in_its_own_interpreter(capsys, tmp_path, monkeypatch,
                                                               fail):
    """The DeepSparse worker's plumbing, with a stand-in ``deepsparse`` package whose engine
    runs fscnn on the exported ONNX file: the weights it gets are fscnn's, its timings are
    its own, and a worker that fails to start is skipped with its error."""
    torch_or_skip()
    import_or_skip("onnx", "pip install onnx")
    (tmp_path / "deepsparse").mkdir()
    (tmp_path / "deepsparse" / "__init__.py").write_text(FAKE_DEEPSPARSE.format(fail=fail))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), os.path.dirname(os.path.dirname(fscnn.__file__))]))
    monkeypatch.setenv("FSCNN_DEEPSPARSE_PYTHON", sys.executable)
    out_json = tmp_path / "r.json"
    status, out, err = _run(capsys, "bench", "resnet18", "--input-size", "32", "--threads",
                            "1", "--iterations", "2", "--warmup", "0", "--compare",
                            "deepsparse", "--json", out_json)
    assert status == 0, err
    import json
    report = json.loads(out_json.read_text())
    if fail:
        assert "deepsparse: DeepSparse worker failed: RuntimeError: NM: error: no engine " \
            "today; skipped" in out
        assert "deepsparse" not in report["latency"]
    else:
        assert "check: max|fscnn - deepsparse|" in out and report["check_deepsparse"]["ok"]
        assert report["latency"]["deepsparse"]["runs"] == 2
        assert _cells(out, "deepsparse")[-1].startswith("x")


def test_bench_without_a_deepsparse_interpreter_says_how_to_get_one(capsys, monkeypatch):
    monkeypatch.delenv("FSCNN_DEEPSPARSE_PYTHON", raising=False)
    status, out, err = _run(capsys, "bench", "toy", "--threads", "1", "--iterations", "1",
                            "--warmup", "0", "--compare", "deepsparse")
    assert status == 0, err
    assert "deepsparse: DeepSparse runs in a virtual environment of its own: set " \
        "FSCNN_DEEPSPARSE_PYTHON to its python" in out
    monkeypatch.setenv("FSCNN_DEEPSPARSE_PYTHON", sys.executable)
    status, out, err = _run(capsys, "bench", "toy", "--threads", "1", "--iterations", "1",
                            "--warmup", "0", "--compare", "deepsparse")
    assert status == 0, err
    assert "deepsparse: needs torch and a torch reference of toy" in out


def test_prune_global_warns_about_emptied_layers(capsys, tmp_path):
    nn.manual_seed(0)
    state = {k: np.array(v) for k, v in _toy().state_dict().items()}
    state["5.weight"] *= 1e-3  # the linear layer's weights: the smallest of all
    path = tmp_path / "small_fc.npz"
    np.savez(path, **state)
    status, out, err = _run(capsys, "prune", path, "pruned.npz", "--sparsity", "0.3",
                            "--global")
    assert status == 0
    assert err.startswith("fscnn: warning: global pruning zeroed every weight of '5.weight'")
    assert err.count("\n") == 1
    assert _cells(out, "5.weight")[3] == "0"


def _options(parser):
    """(command, option) of every argument of ``parser`` and of its subcommands."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {option}", help) for option, help in _options(sub))
        else:
            yield "/".join(action.option_strings) or action.dest, action.help


def test_every_option_has_help_text():
    from fscnn.cli import build_parser
    options = dict(_options(build_parser()))
    assert {"bench --batch", "bench --input-size", "prune input", "info target"} <= set(options)
    assert [name for name, help in options.items() if not help or help == "==SUPPRESS=="] == []


def test_bench_measures_an_archive_as_given(capsys, tmp_path):
    """A user's own 50%-pruned weights are measured as they are, not re-pruned to 90%."""
    nn.manual_seed(0)
    model = _toy()
    fscnn.prune(model, 0.5, inplace=True)
    fscnn.save(model, tmp_path / "half.npz")
    common = ["--model", "toy", "--input-size", "8", "--compare", "dense", "--iterations", "1",
              "--warmup", "0", "--json"]
    status, out, err = _run(capsys, "bench", tmp_path / "half.npz", *common, "as_given.json")
    assert status == 0, err
    assert "50.0% of conv/linear weights zero (as given)" in out
    import json
    assert json.loads(open("as_given.json").read())["pruned_to"] is None
    status, out, _ = _run(capsys, "bench", tmp_path / "half.npz", "--sparsity", "0.8", *common,
                          "pruned.json")
    assert status == 0 and "(pruned to 80%)" in out
    status, out, _ = _run(capsys, "bench", "toy", *common[2:], "zoo.json")
    assert status == 0 and "(pruned to 90%)" in out  # random zoo weights: 90% by default


# -- model files: .onnx, .tflite, whole-model archives ---------------------------------
@pytest.fixture
def toy_onnx(tmp_path):
    """The toy model (conv, relu, strided conv, global pool, linear) as an ONNX file."""
    onnx = import_or_skip("onnx", 'pip install "fscnn[onnx]"')
    from onnx import TensorProto, helper, numpy_helper
    nn.manual_seed(0)
    sd = _toy().state_dict()
    t = lambda k: numpy_helper.from_array(np.asarray(sd[k]), k)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "0.weight", "0.bias"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "2.weight", "2.bias"], ["c"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c"], ["d"]),
             helper.make_node("Flatten", ["d"], ["e"]),
             helper.make_node("Gemm", ["e", "5.weight", "5.bias"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [t(k) for k in ("0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "toy.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_prune_onnx_to_onnx_and_to_a_whole_model_archive(capsys, tmp_path, toy_onnx):
    status, out, err = _run(capsys, "prune", toy_onnx, tmp_path / "p.onnx", "--sparsity", "0.5")
    assert status == 0, err
    assert _cells(out, "total")[-1] == "50.00%"
    pruned = fscnn.from_onnx(str(tmp_path / "p.onnx"))  # a valid ONNX file
    assert fscnn.prune.sparsity_report(pruned).total.sparsity == pytest.approx(0.5, abs=0.01)
    ort = import_or_skip("onnxruntime")
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], pruned(x), rtol=1e-4, atol=1e-6)

    status, out, err = _run(capsys, "prune", toy_onnx, tmp_path / "p.npz", "--sparsity", "0.5")
    assert status == 0, err
    whole = fscnn.load_model(tmp_path / "p.npz")  # no onnx needed to read it back
    np.testing.assert_allclose(whole(x), pruned(x), rtol=1e-5, atol=1e-6)
    assert list(whole.state_dict()) == list(pruned.state_dict())


def test_bench_and_info_take_model_files(capsys, tmp_path, toy_onnx):
    status, out, err = _run(capsys, "bench", toy_onnx, "--input-size", "16", "--iterations",
                            "2", "--warmup", "0", "--threads", "1")
    assert status == 0, err
    assert "0.0% of conv/linear weights zero (as given), input 1x3x16x16" in out
    assert "check: max|fscnn - onnxruntime|" in out and "(ok)" in out
    assert _cells(out, "onnxruntime") and _cells(out, "dense")
    _run(capsys, "prune", toy_onnx, tmp_path / "p.npz", "--sparsity", "0.75")
    status, out, err = _run(capsys, "bench", tmp_path / "p.npz", "--input-size", "16",
                            "--iterations", "2", "--warmup", "0", "--threads", "1")
    assert status == 0, err
    assert "75.0% of conv/linear weights zero (as given)" in out
    assert "check: max|fscnn - fscnn dense|" in out
    status, out, err = _run(capsys, "info", tmp_path / "p.npz", "--input-size", "16")
    assert status == 0, err
    # conv 3->4 3x3 at 16x16: 108 weights, 27 kept, 2*27*256 sparse FLOPs
    assert _cells(out, "0.weight")[:5] == ["0.weight", "4x3x3x3", "108", "27", "75.00%"]
    assert _cells(out, "0.weight")[-1] == "13.82 K"


def test_model_file_user_errors(capsys, tmp_path, toy_onnx):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    for argv in (["bench", bad], ["info", bad], ["prune", bad, tmp_path / "o.npz",
                                                 "--sparsity", "0.5"],
                 ["bench", toy_onnx, "--model", "toy"],
                 ["prune", toy_onnx, tmp_path / "o.tflite", "--sparsity", "0.5"]):
        status, _, err = _run(capsys, *argv)
        assert status == 2 and err.startswith("fscnn: error:") and "Traceback" not in err, argv
    weights = tmp_path / "w.npz"
    fscnn.save({"w": np.ones(3)}, weights)
    with pytest.raises(fscnn.io.ArchiveError, match="weights only"):
        fscnn.load_model(weights)
