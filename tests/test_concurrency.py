"""Thread safety, GIL release and fork safety.

One operator, layer or model may be called from several Python threads at once: every call
must return what a call alone returns (bit for bit with a fixed kernel, since plans and work
splits do not depend on the calling thread). The compiled kernels release the GIL, which is
checked by the progress a pure-Python counting thread makes while a kernel runs, relative to
its progress during a call known to release the GIL, with a GIL-holding call as the negative
control (a relative measure, not a timing bound). Fork: see docs/GUARANTEES.md.
"""
import hashlib
import multiprocessing
import queue as queue_module
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fscnn.functional as F
from conftest import assert_close, import_or_skip, sparse_weight
from fscnn import _blas, _config, models, nn
from fscnn.ops import Conv2dOp, LinearOp

N_THREADS = 4


def _run_together(fn, args, rounds=2):
    """``[fn(a) for a in args]`` with the calls spread over N_THREADS threads that all start
    at once (a barrier), ``rounds`` times; returns the results of every round."""
    barrier = threading.Barrier(N_THREADS)

    def worker(chunk):
        barrier.wait()
        return [fn(a) for a in chunk]

    results = []
    for _ in range(rounds):
        chunks = [args[i::N_THREADS] for i in range(N_THREADS)]
        with ThreadPoolExecutor(N_THREADS) as pool:
            done = list(pool.map(worker, chunks))
        ordered = [None] * len(args)
        for i, chunk in enumerate(done):
            ordered[i::N_THREADS] = chunk
        results.append(ordered)
    return results


def _assert_same(got, expected, exact):
    for g, e in zip(got, expected):
        if exact:
            np.testing.assert_array_equal(g, e)
        else:
            assert_close(g, e)


def _small_model(rng):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU6(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 5))
    state = {}
    for key, value in model.state_dict().items():
        sparsity = 0.7 if key.endswith("weight") and value.ndim > 1 else 0.0
        state[key] = (np.abs(sparse_weight(value.shape, 0.0, rng)) + 0.5 if "var" in key
                      else sparse_weight(value.shape, sparsity, rng))
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("kernel", ["sparse", "dense", "auto"])
def test_model_called_from_threads_matches_sequential_calls(kernel, threads, rng):
    model = _small_model(rng)
    # differently sized inputs, so that threads also plan new shapes at the same time
    xs = [rng.standard_normal((1 + i % 2, 3, 12 + 2 * (i % 2), 12)).astype(np.float32)
          for i in range(8)]
    reference = _small_model(np.random.default_rng(0))
    reference.load_state_dict(model.state_dict())
    reference.prepare(kernel=kernel)
    expected = [reference(x) for x in xs]
    model.prepare(kernel=kernel)  # not run yet: the threads plan every shape concurrently
    for got in _run_together(model, xs):
        _assert_same(got, expected, exact=kernel != "auto")


def test_zoo_model_called_from_threads(rng):
    model = models.resnet18(num_classes=10).prepare(kernel="dense")
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(N_THREADS)]
    with _config.threads(1):
        expected = [model(x) for x in xs]
        fresh = models.resnet18(num_classes=10)
        fresh.load_state_dict(model.state_dict())
        fresh.prepare(kernel="dense")
        _assert_same(_run_together(fresh, xs, rounds=1)[0], expected, exact=True)


@pytest.mark.parametrize("make, shapes", [
    (lambda rng, k: Conv2dOp(sparse_weight((8, 6, 3, 3), 0.8, rng), rng.standard_normal(8),
                             stride=(1, 2), padding=1, activation="relu", kernel=k),
     [(1, 6, 9, 9), (2, 6, 9, 9), (1, 6, 17, 5)]),
    (lambda rng, k: Conv2dOp(sparse_weight((8, 2, 3, 3), 0.5, rng), groups=4, dilation=2,
                             kernel=k),
     [(1, 8, 11, 11), (3, 8, 6, 7)]),
    (lambda rng, k: LinearOp(sparse_weight((7, 40), 0.9, rng), activation="relu6", kernel=k),
     [(1, 40), (5, 40), (2, 40)]),
], ids=["conv", "grouped-conv", "linear"])
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_operator_called_from_threads(make, shapes, kernel, threads, rng):
    xs = [rng.standard_normal(shapes[i % len(shapes)]).astype(np.float32) for i in range(12)]
    alone = make(np.random.default_rng(1), kernel)
    expected = [alone(x) for x in xs]
    shared = make(np.random.default_rng(1), kernel)
    for got in _run_together(shared, xs):
        _assert_same(got, expected, exact=True)


@pytest.mark.parametrize("fn", [
    lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
    lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
    lambda x: F.adaptive_avg_pool2d(x, (3, 5)),
    lambda x: F.add(x, x, activation="relu"),
], ids=["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "add"])
def test_functional_called_from_threads(fn, threads, rng):
    xs = [rng.standard_normal((2, 16, 33, 31)).astype(np.float32) for _ in range(8)]
    expected = [fn(x) for x in xs]
    for got in _run_together(fn, xs):
        _assert_same(got, expected, exact=True)


# ------------------------------------------------------------------ GIL
def _increments_during(call):
    """How often a pure-Python thread ran while ``call()`` ran in this thread.

    The switch interval is made huge, so the interpreter never takes the GIL away from a thread
    that holds it: the counting thread can run during ``call()`` only if ``call()`` releases
    the GIL itself, and it hands the GIL back after every increment (``sleep(0)`` releases
    it). The result is a count, not a time: exactly 0 for a call that holds the GIL."""
    count, stop, started = [0], threading.Event(), threading.Event()

    def spin():
        started.set()
        while not stop.is_set():
            count[0] += 1
            time.sleep(0)

    spinner = threading.Thread(target=spin)
    old = sys.getswitchinterval()
    spinner.start()
    started.wait()
    sys.setswitchinterval(1000.0)
    # a GIL request the spinner made under the old interval may still force one switch: let
    # it happen before counting (it once added 1 to sum()'s count on a loaded machine)
    time.sleep(4 * old)
    try:
        c0 = count[0]
        call()
        c1 = count[0]
    finally:
        sys.setswitchinterval(old)
        stop.set()
        spinner.join()
    return c1 - c0


def _half_zero(rng, shape):
    w = rng.standard_normal(shape, dtype=np.float32)
    w[rng.random(shape, dtype=np.float32) < 0.5] = 0
    return w


def _gil_workloads():
    """Kernel calls of about 0.1 s each on one thread."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 64, 56, 56), dtype=np.float32)
    xl = rng.standard_normal((32, 4096), dtype=np.float32)
    sparse, dense = (Conv2dOp(_half_zero(rng, (64, 64, 3, 3)), padding=1, kernel=k)
                     for k in ("sparse", "dense"))
    linear = LinearOp(_half_zero(rng, (1024, 4096)), kernel="sparse")
    return {
        "sparse-conv": lambda: sparse(x), "dense-conv": lambda: dense(x),
        "sparse-linear": lambda: [linear(xl) for _ in range(4)],
        "pools": lambda: [F.max_pool2d(x, 3, 1, 1), F.avg_pool2d(x, 3, 1, 1)],
    }


def test_kernels_release_the_gil():
    """A Python thread runs while a kernel runs (as while hashlib, which releases the GIL, runs),
    and never while sum() over a range, which holds the GIL, runs."""
    data = bytes(8 << 20)
    assert _increments_during(lambda: sum(range(2 * 10**6))) == 0
    assert _increments_during(lambda: hashlib.sha256(data).digest()) > 0
    with _config.threads(1):  # leave the other core to the counting thread
        for name, call in _gil_workloads().items():
            call()  # plan and warm up
            assert _increments_during(call) > 0, name


# ------------------------------------------------------------------ BLAS thread limit
def test_blas_limit_survives_interleaved_dense_calls():
    threadpoolctl = import_or_skip("threadpoolctl", "pip install threadpoolctl")
    if not _blas.can_limit_blas():
        pytest.skip("BLAS threads cannot be limited here")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        # two dense convolutions overlapping in two threads: A enters, B enters, A leaves,
        # B leaves
        first, second = _blas.single_threaded_blas(), _blas.single_threaded_blas()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        during_second = blas_threads()
        second.__exit__(None, None, None)
        after = blas_threads()
    assert during_second == [1] * len(before)
    assert after == before


def test_blas_limit_works_from_any_thread():
    """The limit applies whichever Python thread takes or releases it (threadpoolctl >= 3.8
    lets only one thread change OpenBLAS's pool and silently ignores the others)."""
    threadpoolctl = import_or_skip("threadpoolctl", "pip install threadpoolctl")
    if not _blas.can_limit_blas():
        pytest.skip("BLAS threads cannot be limited here")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        with _blas.single_threaded_blas():  # the main thread first: threadpoolctl's controller
            pass
        seen = []

        def worker():
            with _blas.single_threaded_blas():
                seen.append(blas_threads())
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen == [[1] * len(before)]
        assert blas_threads() == before
        # taken in the main thread, released last in another one
        entered, leave = threading.Event(), threading.Event()

        def second():
            with _blas.single_threaded_blas():
                entered.set()
                leave.wait()
        first = _blas.single_threaded_blas()
        first.__enter__()
        thread = threading.Thread(target=second)
        thread.start()
        entered.wait()
        first.__exit__(None, None, None)
        during_second = blas_threads()
        leave.set()
        thread.join()
        after = blas_threads()
    assert during_second == [1] * len(before)
    assert after == before


# ------------------------------------------------------------------ fork
def _forking(test):
    """Marks of the fork tests: Linux only; Python >= 3.12 warns when a process with threads
    forks."""
    test = pytest.mark.skipif(sys.platform != "linux", reason="fork start method on Linux")(test)
    return pytest.mark.filterwarnings(
        "ignore:This process.*multi-threaded:DeprecationWarning")(test)


def _child_conv(queue, w, x, n_threads):
    _config.set_num_threads(n_threads)
    queue.put(Conv2dOp(w, padding=1, kernel="sparse")(x))


def _conv_in_forked_child(rng, child_threads):
    """(expected, result or None if the child hung) of a convolution run in a child forked
    after this process ran a 2-thread kernel."""
    w = sparse_weight((8, 4, 3, 3), 0.5, rng)
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    with _config.threads(2):
        expected = Conv2dOp(w, padding=1, kernel="sparse")(x)  # starts the OpenMP pool
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_conv, args=(queue, w, x, child_threads))
    child.start()
    try:
        result = queue.get(timeout=4)
    except queue_module.Empty:
        result = None
    child.join(timeout=1)
    if child.is_alive():
        child.kill()
        child.join()
    return expected, result


@_forking
def test_forked_child_can_run_kernels(rng):
    if not _config._runtime.openmp_enabled() or _config.usable_cpus() < 2:
        pytest.skip("needs OpenMP and two cores")
    expected, result = _conv_in_forked_child(rng, child_threads=2)
    assert result is not None, "the forked child hung in its first multi-threaded kernel"
    np.testing.assert_array_equal(result, expected)


@_forking
def test_forked_child_runs_kernels_single_threaded(rng):
    """The documented work-around: one kernel thread in the child (e.g. a Pool initializer
    calling fscnn.set_num_threads(1))."""
    expected, result = _conv_in_forked_child(rng, child_threads=1)
    assert result is not None, "the forked child hung"
    np.testing.assert_array_equal(result, expected)
