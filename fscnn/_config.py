"""Run-time configuration: thread count, SIMD level, and a report of the build."""
import contextlib
import os
import platform
import sys
import threading
import warnings

# OpenMP's wait policy. Threads that finish a parallel region spin, waiting for the next one,
# before they sleep: GNU libgomp for 300,000 spins by default, LLVM's libomp for 200 ms. When
# other processes (or several workers of one job) compete for the cores, a spinning thread
# holds the core its descheduled sibling needs to reach the next barrier: a 2-thread call
# beside one busy process then takes several times the time of a 1-thread call (issue #14).
# Too short a spin loses the quiet machine's speed-up instead: the threads fall asleep in the
# Python between two layers and every layer pays their wake-up.
# libgomp reads GOMP_SPINCOUNT when it is loaded (by the extension below), so fscnn's value is
# set only for that load and removed again: it never reaches another library's OpenMP runtime
# (PyTorch bundles its own libgomp) nor child processes, which decide for themselves. libomp
# (clang builds) reads KMP_BLOCKTIME when its first parallel region starts, so that one stays
# set; libgomp ignores it.
# 30000 spins: ~0.35 ms where PAUSE takes 11 ns (the 2-core Xeon VM, 2026-12-05), ~2 ms where
# it takes 140 cycles. 1000 spins (11 us there) let the threads sleep between layers: ResNet-50
# at 90% on 2 threads 21.6-22.3 ms against 17.2-18.6 with 10000-300000 spins (1 thread 27.5-28.9),
# MobileNetV2 at 90% slower on 2 threads than on 1 (4.8 against 4.7-5.1 ms; 3.0-3.6 with
# 100000 spins). The contention that long spins cause is handled by the contention guard below
# instead: it puts calls on one thread while the process is starved of cores.
DEFAULT_SPIN_COUNT = 30000  # libgomp spins before a waiting thread sleeps
DEFAULT_BLOCKTIME_MS = 1  # libomp's equivalent, in milliseconds


def _load_runtime():
    """Import the runtime extension (which loads the OpenMP runtime) under fscnn's wait
    policy; returns (module, a description of the policy in force)."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    spin_default = policy is None and "GOMP_SPINCOUNT" not in os.environ
    if spin_default:
        os.environ["GOMP_SPINCOUNT"] = str(DEFAULT_SPIN_COUNT)
    try:
        from ._ext import _runtime as runtime
    finally:
        if spin_default:
            del os.environ["GOMP_SPINCOUNT"]
    if "clang" in runtime.compiler():  # built against LLVM's libomp
        if policy is None and "KMP_BLOCKTIME" not in os.environ:
            os.environ["KMP_BLOCKTIME"] = str(DEFAULT_BLOCKTIME_MS)
            return runtime, f"fscnn's default: spin {DEFAULT_BLOCKTIME_MS} ms, then sleep"
        chosen = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")
    elif spin_default:
        return runtime, f"fscnn's default: spin {DEFAULT_SPIN_COUNT} times, then sleep"
    else:
        chosen = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    return runtime, "set by the environment: " + ", ".join(
        f"{k}={os.environ[k]}" for k in chosen if k in os.environ)


_runtime, _wait_policy = _load_runtime()

SIMD_LEVELS = _runtime.SIMD_NAMES  # index = level passed to the kernels

_state = {"threads": None, "simd": None, "forked": False}


class _ThreadLimit(threading.local):
    """Per-thread override of the thread count (see thread_limit); None: none. A class
    default, so that get_num_threads, called for every layer, finds it without the
    AttributeError that a missing threading.local attribute costs inside getattr."""

    threads = None


_local = _ThreadLimit()


def _after_fork_in_child():
    # GNU libgomp cannot start a parallel region in a child forked after the parent ran one
    # with more than one thread: the child would hang. A forked child therefore runs fscnn's
    # kernels on one thread (use the 'spawn' or 'forkserver' start methods for parallel
    # children).
    _state["forked"] = True


if hasattr(os, "register_at_fork") and _runtime.openmp_enabled():
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cgroup_cpu_limit():
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota) limit, or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) // int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, quota // period)
    except (OSError, ValueError):
        pass
    return None


def usable_cpus():
    """Cores this process may run on: CPU affinity, then any cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n > 0:
                return n
        except ValueError:
            pass
        warnings.warn(f"ignoring OMP_NUM_THREADS={env!r}: expected a positive integer")
    return usable_cpus()


def get_num_threads():
    """Number of threads fscnn's kernels use.

    Defaults to the cores usable by this process (CPU affinity and cgroup limits), or to
    ``OMP_NUM_THREADS`` when that is set. Always 1 effective thread when fscnn was built
    without OpenMP, and 1 in a child process created by ``fork`` (see docs/GUARANTEES.md).
    """
    if _state["threads"] is None:
        _state["threads"] = _default_threads()
    limit = _local.threads
    if limit is not None and not _state["forked"]:
        return limit
    if _state["forked"] and _state["threads"] > 1:
        warnings.warn("fscnn: this process was forked from one that may have run OpenMP "
                      "threads, which GNU libgomp cannot do safely; fscnn's kernels run on one "
                      "thread here (use multiprocessing's 'spawn' or 'forkserver' start method "
                      "for parallel children)", RuntimeWarning, stacklevel=2)
        _state["threads"] = 1
    return _state["threads"]


def set_num_threads(n):
    """Set the number of threads fscnn's kernels use; ``None`` restores the default.

    Parameters
    ----------
    n : int or None
        A positive thread count.
    """
    if n is None:
        _state["threads"] = None
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive integer or None, got {n!r}")
    _state["threads"] = int(n)


@contextlib.contextmanager
def threads(n):
    """Context manager that runs its block with ``n`` threads."""
    old = _state["threads"]
    set_num_threads(n)
    try:
        yield
    finally:
        _state["threads"] = old


@contextlib.contextmanager
def thread_limit(n):
    """Context manager: fscnn calls made by the *calling* Python thread inside the block use
    ``n`` kernel threads; other Python threads keep the process's setting.

    For work split among concurrent Python threads (a Dask task per chunk on a thread pool),
    so that their kernel threads together do not exceed the cores they were given.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"thread_limit: expected a positive integer, got {n!r}")
    old = _local.threads
    _local.threads = int(n)
    try:
        yield
    finally:
        _local.threads = old


# The contention guard (issue #14, item 2). On a quiet machine the thread that makes a model
# call runs all through it: in the kernels' parallel regions, in the Python between layers,
# spinning at the regions' ends, so its CPU time is about the call's wall time. Beside a busy
# process it is descheduled, and sleeps at barriers waiting for a descheduled sibling: 2 threads
# beside one busy loop on 2 cores got about one core between them, and the call took 6-10x
# the time of a 1-thread call (ResNet-18 and MobileNetV2 at 90%, 30000 spins: 37-57 ms against
# 6-12 ms), where one thread would have run at full speed. So a call whose calling thread got
# less than STARVED_FRACTION of its wall time as CPU time puts the next calls on one thread;
# a probe on all threads then checks again, after 4, 8, ... up to 256 calls while the
# starvation lasts. (The CPU time of the whole process is no measure: the other threads sleep
# wherever 'auto' put a layer on one thread.)
STARVED_FRACTION = 0.75
MIN_JUDGED_SECONDS = 1e-3  # shorter calls are not judged (timer and scheduling noise)
FIRST_BACKOFF, MAX_BACKOFF = 4, 256


class ContentionGuard:
    """Runs model calls on one thread while the process does not get the cores it asks for
    (see the comment above); used by :meth:`fscnn.nn.Module.__call__` around each top-level
    call. Its state is per process: contention is a property of the machine. Off where
    ``FSCNN_ADAPTIVE_THREADS=0`` is set at import, or after ``set_adaptive_threads(False)``."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.single_left = 0  # calls still to run on one thread
        self.backoff = FIRST_BACKOFF  # single_left after the next starved call
        self.starved_calls = 0  # starved calls seen (for reports and tests)

    def threads_for_call(self, threads):
        """The threads to run the next top-level call with, where ``threads`` are asked for."""
        if threads <= 1 or not self.enabled or self.single_left <= 0:
            return threads
        self.single_left -= 1
        return 1

    def record(self, threads, wall, cpu):
        """Judge a top-level call that ran on ``threads`` threads, ``wall`` seconds long, in
        which the calling thread ran ``cpu`` seconds."""
        if threads <= 1 or not self.enabled or wall < MIN_JUDGED_SECONDS:
            return
        if cpu < STARVED_FRACTION * wall:
            self.starved_calls += 1
            self.single_left = self.backoff
            self.backoff = min(2 * self.backoff, MAX_BACKOFF)
        else:
            self.backoff = FIRST_BACKOFF


contention = ContentionGuard(os.environ.get("FSCNN_ADAPTIVE_THREADS", "1").strip() != "0")


def set_adaptive_threads(enabled):
    """Turn the contention guard on or off: while on (the default), a process that runs model
    calls on several threads but gets fewer cores (other busy processes) runs its next calls on
    one thread and probes again later (see docs/GUARANTEES.md). ``FSCNN_ADAPTIVE_THREADS=0``
    turns it off at import."""
    contention.enabled = bool(enabled)
    contention.single_left, contention.backoff = 0, FIRST_BACKOFF


def cpu_simd_level():
    """Name of the widest SIMD level the CPU supports."""
    return SIMD_LEVELS[_runtime.cpu_simd_level()]


def _level_index(name, source):
    if name not in SIMD_LEVELS:
        raise ValueError(f"{source}: expected one of {', '.join(SIMD_LEVELS)}, got {name!r}")
    return SIMD_LEVELS.index(name)


def _default_simd():
    cpu = _runtime.cpu_simd_level()
    env = os.environ.get("FSCNN_SIMD", "").strip().lower()
    if not env:
        return cpu
    level = _level_index(env, "FSCNN_SIMD")
    if level > cpu:
        warnings.warn(f"FSCNN_SIMD={env} is above what this CPU supports "
                      f"({SIMD_LEVELS[cpu]}); using {SIMD_LEVELS[cpu]}")
        return cpu
    return level


def simd_level_index():
    """SIMD level passed to the kernels (0 baseline, 1 AVX2+FMA, 2 AVX-512)."""
    if _state["simd"] is None:
        _state["simd"] = _default_simd()
    return _state["simd"]


def get_simd_level():
    """Name of the SIMD level in use ('baseline', 'avx2' or 'avx512')."""
    return SIMD_LEVELS[simd_level_index()]


def set_simd_level(name):
    """Force a SIMD level no higher than the CPU supports; ``None`` restores the default.

    The environment variable ``FSCNN_SIMD`` sets the same thing at start-up.
    """
    if name is None:
        _state["simd"] = None
        return
    level = _level_index(name, "set_simd_level")
    cpu = _runtime.cpu_simd_level()
    if level > cpu:
        raise ValueError(f"set_simd_level: this CPU supports up to {SIMD_LEVELS[cpu]!r}, "
                         f"cannot use {name!r}")
    _state["simd"] = level


@contextlib.contextmanager
def simd(name):
    """Context manager that runs its block at SIMD level ``name``."""
    old = _state["simd"]
    set_simd_level(name)
    try:
        yield
    finally:
        _state["simd"] = old


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (install threadpoolctl for details)"
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS so threadpoolctl sees it)
    rows = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
            f"{i.get('num_threads')} threads, {os.path.basename(i.get('filepath', ''))})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(rows) or "none found"


def config_dict():
    """The facts :func:`show_config` prints, as a dict."""
    import numpy
    import scipy

    from . import __version__
    return {
        "fscnn": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "compiler": _runtime.compiler(),
        "openmp": _runtime.openmp_enabled(),
        "openmp_wait": _wait_policy if _runtime.openmp_enabled() else "-",
        "threads": get_num_threads(),
        "adaptive_threads": contention.enabled,
        "usable_cpus": usable_cpus(),
        "simd_detected": cpu_simd_level(),
        "simd_in_use": get_simd_level(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "blas": _blas_info(),
    }


def show_config(file=None):
    """Print fscnn's version, build (compiler, OpenMP), threads, SIMD levels and BLAS."""
    info = config_dict()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}} : {value}", file=file or sys.stdout)
