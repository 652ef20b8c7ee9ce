"""Control of the BLAS library's own threads around fscnn's parallel GEMM calls.

fscnn's dense convolution calls scipy's SGEMM from inside its own OpenMP loop, one GEMM per
thread, so BLAS itself must run single-threaded there: an OpenBLAS built on pthreads that
starts its own threads inside an OpenMP region oversubscribes the cores and can hang. The BLAS
thread count is changed through threadpoolctl when it is installed (an optional dependency).
Without it fscnn cannot limit BLAS, so the dense path then runs its GEMMs one after another
and lets BLAS use its own threads.
"""
import contextlib
import threading

_controller = []  # lazily built ThreadpoolController selecting the BLAS libraries, or None
# The BLAS thread count is process-wide: overlapping callers share one limit, set by the first
# to enter and restored by the last to leave.
_lock = threading.Lock()
_active = {"depth": 0, "limiter": None}


def _blas_controller():
    if not _controller:
        try:
            import scipy.linalg  # noqa: F401  (loads the BLAS that scipy.linalg.cython_blas uses)
            from threadpoolctl import ThreadpoolController
            _controller.append(ThreadpoolController().select(user_api="blas"))
        except ImportError:
            _controller.append(None)
    return _controller[0]


def can_limit_blas():
    """True when BLAS threads can be limited (threadpoolctl is installed)."""
    return _blas_controller() is not None


def _take_control(controller):
    """Let the calling Python thread change the BLAS thread count.

    threadpoolctl >= 3.8 lets only one Python thread (the first to set a limit) change the
    size of OpenBLAS's process-wide pthreads pool and silently ignores the others, so a
    limit taken in any other thread (a thread pool calling a model) left BLAS multi-threaded
    inside fscnn's OpenMP loop, and a restore from another thread left it at one thread.
    fscnn changes the count only under ``_lock`` (first caller in, last caller out), so it
    makes the calling thread the controlling one each time."""
    for lib in controller.lib_controllers:
        clear = getattr(type(lib), "clear_controlling_thread", None)
        if clear is not None:
            clear(force=True)


def gemm_threads(threads):
    """How many of fscnn's ``threads`` a kernel that calls BLAS from its OpenMP loop uses: all,
    each calling single-threaded BLAS (:func:`single_threaded_blas`), when BLAS can be
    limited; else 1, its GEMMs one after another with BLAS's own threads."""
    return threads if can_limit_blas() else 1


@contextlib.contextmanager
def single_threaded_blas():
    """Run the block with BLAS limited to one thread (no-op when that is impossible)."""
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with _lock:
        if _active["depth"] == 0:
            _take_control(controller)
            _active["limiter"] = controller.limit(limits=1)
        _active["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _active["depth"] -= 1
            if _active["depth"] == 0:
                _take_control(controller)
                _active["limiter"].restore_original_limits()
                _active["limiter"] = None
