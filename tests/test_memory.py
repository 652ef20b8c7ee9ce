"""Repeated calls do not grow the process's memory.

Each test warms up (plans, scratch buffers, caches), then makes hundreds or thousands of
calls and bounds the growth of the resident set size (RSS, from /proc/self/statm) by a
generous margin that is still far below what a per-call leak of the arrays involved would
add. Freed heap memory is handed back with glibc's ``malloc_trim`` before each reading, so
allocator caching is not mistaken for a leak. Linux only.
"""
import ctypes
import ctypes.util
import gc
import os
import threading

import numpy as np
import pytest

import fscnn.functional as F
from conftest import sparse_weight
from fscnn import _config, io, nn
from fscnn.ops import Conv2dOp, LinearOp

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="reads RSS from /proc/self/statm")

MB = 2**20
BOUND = 20 * MB
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None)


def rss():
    """Resident set size in bytes, after a garbage collection and a heap trim."""
    gc.collect()
    if hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def growth(call, n, warmup=20):
    """RSS growth (bytes) over ``n`` calls of ``call(i)`` after ``warmup`` calls."""
    for i in range(warmup):
        call(i)
    before = rss()
    for i in range(n):
        call(i)
    return rss() - before


@pytest.fixture(autouse=True)
def one_thread():
    """One kernel thread: on a busy two-core machine every two-thread call waits for the
    second core, which would make thousands of calls slow (threads are covered below)."""
    with _config.threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((2, 16, 20, 20)).astype(np.float32),
            "w": sparse_weight((32, 16, 3, 3), 0.8, rng),
            "b": rng.standard_normal(32).astype(np.float32),
            "xl": rng.standard_normal((4, 256)).astype(np.float32),
            "wl": sparse_weight((128, 256), 0.9, rng)}


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
@pytest.mark.parametrize("n_threads, calls", [(1, 2000), (2, 300)])
def test_repeated_operator_calls(kernel, n_threads, calls, data):
    conv = Conv2dOp(data["w"], data["b"], padding=1, activation="relu", kernel=kernel)
    lin = LinearOp(data["wl"], kernel=kernel)
    with _config.threads(n_threads):
        assert growth(lambda i: (conv(data["x"]), lin(data["xl"])), calls) < BOUND


@pytest.mark.parametrize("n_threads, calls", [(1, 2000), (2, 300)])
def test_repeated_winograd_calls(n_threads, calls, data):
    conv = Conv2dOp(data["w"], data["b"], padding=1, activation="relu", kernel="winograd")
    with _config.threads(n_threads):
        assert growth(lambda i: conv(data["x"]), calls) < BOUND


def test_repeated_one_shot_functional_calls(data):
    def call(i):
        F.conv2d(data["x"], data["w"], data["b"], padding=1,
                 kernel=("sparse", "dense", "winograd")[i % 3])
        F.linear(data["xl"], data["wl"])
        F.max_pool2d(data["x"], 3, 2, 1)
        F.avg_pool2d(data["x"], 2)
        F.adaptive_avg_pool2d(data["x"], 3)
        F.add(data["x"], data["x"], activation="relu")
    assert growth(call, 1000) < BOUND


def test_repeated_model_calls(data):
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 100, 10))
    assert growth(lambda i: model(data["x"]), 1000) < BOUND


def test_repeated_preparation(data):
    """Changing weights re-prepares the model on the next call; old plans must be freed
    (about 0.5 MB each here, so a leak shows after a few hundred)."""
    model = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.Linear(20, 5))
    state = model.state_dict()

    def call(i):
        model.load_state_dict(state)
        model(data["x"])
    assert growth(call, 300) < BOUND


def test_repeated_errors(data):
    op = Conv2dOp(data["w"], name="conv")
    bad = np.zeros((1, 3, 20, 20), np.float32)

    def call(i):
        with pytest.raises(ValueError):
            op(bad)
        with pytest.raises(TypeError):
            F.max_pool2d(bad.astype(np.int32), 2)
    assert growth(call, 2000) < BOUND


def test_repeated_archive_loads(tmp_path, data):
    path = tmp_path / "w.npz"
    io.save({"w": data["w"], "b": data["b"], "fc": data["wl"]}, path)
    assert growth(lambda i: io.load(path), 500) < BOUND


def test_scratch_of_finished_threads_is_freed():
    """Each thread keeps its own scratch buffers (here ~16 MB); they must go with the thread."""
    rng = np.random.default_rng(1)
    op = Conv2dOp(sparse_weight((16, 64, 3, 3), 0.5, rng), padding=1, kernel="sparse")
    x = rng.standard_normal((1, 64, 128, 128)).astype(np.float32)

    def in_a_thread(i):
        t = threading.Thread(target=op, args=(x,))
        t.start()
        t.join()
    assert growth(in_a_thread, 30, warmup=3) < 2 * BOUND


def test_plans_for_many_input_shapes_are_bounded():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((256, 256, 3, 3), dtype=np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    op = Conv2dOp(w, padding=1, kernel="sparse")
    # 60 shapes: 72 MB of plans when all are kept, 19 MB with 16
    shapes = growth(lambda i: op(np.zeros((1, 256, 3 + i, 3), np.float32)), 60, warmup=1)
    assert shapes < 32 * MB
