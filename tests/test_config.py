"""Run-time configuration read at import: the thread count (OMP_NUM_THREADS) and OpenMP's wait
policy (spin briefly, then sleep, unless the user chose one). Each case runs a fresh
interpreter, because both are fixed when fscnn (and with it the OpenMP runtime) is loaded."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fscnn
from fscnn import _config

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fscnn.__file__)))
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")

# After one 2-thread convolution, the process sleeps; the CPU time it uses meanwhile is what
# OpenMP's idle worker spends spinning for the next parallel region.
_IDLE_CPU = r"""
import json, os, time, numpy as np, fscnn
import fscnn.functional as F
fscnn.set_num_threads(2)
x = np.ones((1, 16, 64, 64), np.float32)
w = np.ones((16, 16, 3, 3), np.float32)
for _ in range(3):
    F.conv2d(x, w, padding=1, kernel="sparse")
before = time.process_time()
time.sleep(1.0)
print(json.dumps({"idle_cpu_s": time.process_time() - before,
                  "wait": fscnn._config.config_dict()["openmp_wait"],
                  "env": {k: os.environ.get(k) for k in %r}}))
""" % (WAIT_VARIABLES,)


def _run(code, tmp_path, **env_vars):
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(env_vars)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # cwd outside the checkout, whose source tree would shadow the package under test
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


needs_openmp = pytest.mark.skipif(not _config._runtime.openmp_enabled(),
                                  reason="a build without OpenMP has no wait policy")


@needs_openmp
def test_idle_threads_sleep_by_default(tmp_path):
    """libgomp's own default spins ~300,000 times (milliseconds) after every region; fscnn's
    threads sleep after a short spin and leave the variable unset for other libraries."""
    out = _run(_IDLE_CPU, tmp_path)
    assert out["wait"].startswith("fscnn's default")
    assert out["env"]["GOMP_SPINCOUNT"] is None, "fscnn's spin count leaked into os.environ"


@needs_openmp
def test_a_child_of_an_fscnn_process_gets_the_default_too(tmp_path):
    """What fscnn leaves in os.environ (libomp's KMP_BLOCKTIME) does not count as the user's
    choice in a child process (a Dask or multiprocessing worker)."""
    out = _run(_IDLE_CPU, tmp_path, KMP_BLOCKTIME=str(_config.DEFAULT_BLOCKTIME_MS))
    if "clang" not in _config._runtime.compiler():
        assert out["wait"].startswith("fscnn's default")
    assert out["idle_cpu_s"] < 0.15, out
    assert out["idle_cpu_s"] < 0.15, out


@needs_openmp
def test_the_users_wait_policy_is_kept(tmp_path):
    """A policy in the environment is the user's: fscnn neither changes nor removes it. Spinning
    without end (``OMP_WAIT_POLICY=active``) also shows the idle measurement can fail."""
    libomp = "clang" in _config._runtime.compiler()
    spin = {"KMP_BLOCKTIME": "infinite"} if libomp else {"GOMP_SPINCOUNT": "infinite"}
    out = _run(_IDLE_CPU, tmp_path, OMP_WAIT_POLICY="active", **spin)
    (name, value), = spin.items()
    assert out["wait"] == f"set by the environment: OMP_WAIT_POLICY=active, {name}={value}"
    assert out["env"]["OMP_WAIT_POLICY"] == "active"
    assert out["env"][name] == value
    assert out["idle_cpu_s"] > 0.15, out


@pytest.mark.parametrize("value, threads", [("3", 3), ("1,2", 1)])
def test_omp_num_threads_sets_the_default_thread_count(tmp_path, value, threads):
    out = _run("import json, fscnn; print(json.dumps(fscnn.get_num_threads()))", tmp_path,
               OMP_NUM_THREADS=value)
    assert out == threads


def test_bad_omp_num_threads_warns_and_uses_the_usable_cores(tmp_path):
    code = ("import json, warnings, fscnn\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    n = fscnn.get_num_threads()\n"
            "print(json.dumps([n, fscnn._config.usable_cpus(), [str(x.message) for x in w]]))")
    n, usable, messages = _run(code, tmp_path, OMP_NUM_THREADS="many")
    assert n == usable
    assert any("OMP_NUM_THREADS='many'" in m for m in messages), messages


# -- the contention guard: model calls on one thread while the process is starved of cores ---

def test_contention_guard_backs_off_while_starved_and_recovers():
    guard = _config.ContentionGuard()
    assert guard.threads_for_call(2) == 2
    guard.record(2, wall=0.010, cpu=0.0095)  # a quiet call: the caller ran all through it
    assert guard.threads_for_call(2) == 2
    periods = []
    for _ in range(9):  # starved probes: one thread for 4, 8, ... calls, at most 256
        guard.record(2, wall=0.010, cpu=0.005)
        n = 0
        while guard.threads_for_call(2) == 1:
            n += 1
        periods.append(n)  # the loop ended on a probe, which runs on 2 threads
    assert periods == [4, 8, 16, 32, 64, 128, 256, 256, 256]
    guard.record(2, wall=0.010, cpu=0.010)  # the probe was not starved: all threads again
    assert [guard.threads_for_call(2) for _ in range(3)] == [2, 2, 2]
    guard.record(2, wall=0.010, cpu=0.005)
    assert [guard.threads_for_call(2) for _ in range(5)] == [1, 1, 1, 1, 2]  # from 4 again
    assert guard.starved_calls == 10


def test_contention_guard_judges_only_long_multithreaded_calls():
    guard = _config.ContentionGuard()
    guard.record(1, wall=0.010, cpu=0.001)  # one thread: nothing to fall back from
    guard.record(2, wall=0.0005, cpu=0.0)  # too short to judge
    assert guard.threads_for_call(2) == 2 and guard.starved_calls == 0
    assert guard.threads_for_call(1) == 1
    off = _config.ContentionGuard(enabled=False)
    off.record(2, wall=0.010, cpu=0.001)
    assert off.threads_for_call(2) == 2


def test_a_starved_call_puts_the_next_model_calls_on_one_thread(monkeypatch, rng):
    """Through Module.__call__: the calls after a starved one run on one thread (the layers see
    it), give the same bits, and a quiet probe brings back all threads."""
    from fscnn import nn
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(fscnn.get_num_threads())
            return x

    class Judged(_config.ContentionGuard):
        def record(self, threads, wall, cpu):
            pass  # the real calls' timings are not judged: a loaded test machine would be

    guard = Judged()
    monkeypatch.setattr(_config, "contention", guard)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), Spy())
    x = rng.standard_normal((1, 4, 12, 12)).astype(np.float32)
    with _config.threads(2):
        quiet = model(x)
        _config.ContentionGuard.record(guard, 2, wall=1.0, cpu=0.2)  # as a starved call would
        starved = [model(x) for _ in range(5)]
    assert seen == [2, 1, 1, 1, 1, 2]
    assert all(np.array_equal(y, quiet) for y in starved)
    assert fscnn.get_num_threads() == _config.get_num_threads()  # the limit did not leak


def test_the_contention_guard_can_be_turned_off(tmp_path):
    code = ("import json, fscnn\n"
            "on = fscnn._config.config_dict()['adaptive_threads']\n"
            "fscnn.set_adaptive_threads(True)\n"
            "print(json.dumps([on, fscnn._config.contention.enabled]))")
    assert _run(code, tmp_path, FSCNN_ADAPTIVE_THREADS="0") == [False, True]
    assert _run(code, tmp_path) == [True, True]
