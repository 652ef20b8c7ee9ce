"""Batch inference over Dask arrays: :func:`predict`.

``pip install "fscnn[dask]"`` brings ``dask[array]`` and ``distributed``; the rest of fscnn
never imports this module.

How the work is shared out:

- **The model travels once per worker.** With a ``distributed.Client`` active when
  :func:`predict` is called, it goes to every worker of the cluster, present and future, as a
  worker plugin (``client.register_plugin``) named by its token, and the chunk tasks carry
  only that name; later calls of :func:`predict` on the unchanged model reuse it. (A key
  scattered to every worker did not stay there: the scheduler's active memory manager drops
  the replicas that no waiting task needs a few seconds after a compute, and the next compute
  copied the model to all workers but one again.) Without a client it enters the graph as one
  key (a :class:`_Shipped` wrapper) that every chunk task depends on, not as an argument
  pickled into each task. A pickle of an fscnn model
  carries its kernel choices (see ``docs/GUARANTEES.md``), and each process keeps the first
  copy of a model it receives (by a token naming the model and its weights' versions), so a
  worker prepares it on its first chunk and reuses it for the next chunks and computes.
- **Kernel threads stay within what the workers were given.** Dask runs one chunk task per
  worker thread at a time, so inside a ``distributed`` worker each task runs fscnn on one
  kernel thread (``threads_per_worker`` tasks at once use ``threads_per_worker`` threads).
  On the threaded scheduler of one process, each of its concurrent tasks gets
  ``fscnn.get_num_threads() // num_workers`` kernel threads (at least one), so together
  they use the process's fscnn threads (``fscnn._config.thread_limit``: per calling thread).
"""
import sys
import threading
import uuid
import weakref
from collections import OrderedDict

try:
    import dask
    import dask.array as da
except ImportError as exc:  # an optional extra
    raise ImportError('fscnn.dask needs dask[array]: pip install "fscnn[dask]"') from exc
try:
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # dask without distributed: the local schedulers only
    _WorkerPlugin = object

import numpy as np

from . import _config
from .nn import Module
from .nn.module import probe_output

__all__ = ["predict"]

_KEEP = 4  # models a process keeps by token (workers), model plugins kept per client
_lock = threading.Lock()
_models = OrderedDict()  # token -> the first copy of that model this process received
_arrivals = {}  # token -> times a copy of it was unpickled in this process
_ids = weakref.WeakKeyDictionary()  # model -> its uuid
_registered = weakref.WeakKeyDictionary()  # distributed client -> OrderedDict(token -> None)


class _Shipped:
    """A model and its token, as the one graph key that chunk tasks read the model from.

    Unpickling (on a worker) counts the arrival and returns the copy this process already
    holds for the token, so a model unpickled again (a later compute that carries it in its
    graph) is not prepared again."""

    def __init__(self, token, model):
        self.token, self.model = token, model

    def __reduce__(self):
        return _arrive, (self.token, self.model)


def _arrive(token, model):
    with _lock:
        _arrivals[token] = _arrivals.get(token, 0) + 1
        model = _models.setdefault(token, model)
        _models.move_to_end(token)
        while len(_models) > _KEEP:
            _models.popitem(last=False)
    return _Shipped(token, model)


def arrivals():
    """How many copies of each model (by token) this process has unpickled: one per worker
    is the design (``client.run(fscnn.dask.arrivals)`` asks every worker)."""
    with _lock:
        return dict(_arrivals)


def _token(model):
    """Names the model and the state of its weights: a changed model gets a new token."""
    with _lock:
        ident = _ids.setdefault(model, uuid.uuid4().hex)
    versions = hash(tuple(m._version for m in model.modules()) + (repr(model._kernel),))
    return f"fscnn-model-{ident}-{versions & 0xFFFFFFFFFFFF:x}"


def _client():
    """The distributed client that computes dask collections by default now, or None."""
    if "distributed" not in sys.modules:  # nothing can have created one
        return None
    from distributed import default_client
    try:
        client = default_client()
    except ValueError:
        return None
    return client if dask.base.get_scheduler() == client.get else None


class _ModelPlugin(_WorkerPlugin):
    """A model delivered to every worker of a cluster, present and future, once: the
    scheduler sends the pickled plugin to each worker when it is registered and to each
    worker that joins later; unpickling it there is the model's arrival (:func:`_arrive`)."""

    def __init__(self, shipped):
        self.shipped = shipped


class _Delivered:
    """The chunk tasks' model argument on a cluster: the token of the model that a
    :class:`_ModelPlugin` of that name delivered to the worker."""

    __slots__ = ("token",)

    def __init__(self, token):
        self.token = token

    def model(self):
        from distributed import get_worker
        plugin = get_worker().plugins.get(self.token)
        if plugin is None:
            raise RuntimeError(f"fscnn.dask: the model {self.token} is no longer on this "
                               f"worker ({_KEEP} other models were sent since this graph was "
                               f"made): call fscnn.dask.predict again")
        return plugin.shipped.model


def _model_key(model, token):
    """The graph's model argument: on the active distributed client, the model registered as
    a worker plugin (once per client and model) and named in the tasks; else the model as
    one delayed key."""
    shipped = _Shipped(token, model)
    client = _client()
    if client is None:
        return dask.delayed(shipped, name=token, pure=True)
    with _lock:
        tokens = _registered.setdefault(client, OrderedDict())
        known = token in tokens
    if not known:
        client.register_plugin(_ModelPlugin(shipped), name=token)
        with _lock:
            tokens[token] = None
            stale = [tokens.popitem(last=False)[0] for _ in range(len(tokens) - _KEEP)]
        for old in stale:
            client.unregister_worker_plugin(old)
    return _Delivered(token)


def _threads_per_task():
    """fscnn kernel threads for one chunk task (see the module docstring)."""
    if "distributed" in sys.modules:
        from distributed import get_worker
        try:
            get_worker()
            return 1  # the worker runs threads_per_worker tasks at once
        except ValueError:
            pass
    scheduler = dask.config.get("scheduler", None)
    if scheduler in ("sync", "synchronous", "single-threaded"):
        return _config.get_num_threads()
    slots = dask.config.get("num_workers", None) or dask.system.CPU_COUNT
    return max(1, _config.get_num_threads() // slots)


def _predict_block(block, shipped):
    model = shipped.model() if isinstance(shipped, _Delivered) else shipped.model
    with _config.thread_limit(_threads_per_task()):
        return model(block)


def _check_images(images, batch_size):
    if not isinstance(images, da.Array):
        raise TypeError(f"fscnn.dask.predict: images must be a dask array (N, C, H, W), got "
                        f"{type(images).__name__} (wrap a NumPy array with "
                        f"dask.array.from_array(x, chunks=(batch, -1, -1, -1)))")
    if images.ndim != 4:
        raise ValueError(f"fscnn.dask.predict: images must be 4-D (N, C, H, W), got shape "
                         f"{images.shape}")
    if images.dtype.kind != "f":
        raise TypeError(f"fscnn.dask.predict: images must hold floats (fscnn computes in "
                        f"float32), got dtype {images.dtype}; convert with images.astype("
                        f"'float32') after scaling")
    for axis, name in ((1, "C"), (2, "H"), (3, "W")):
        if len(images.chunks[axis]) > 1:
            raise ValueError(f"fscnn.dask.predict: images are chunked along axis {axis} "
                             f"({name}: chunks {images.chunks[axis]}); a model needs whole "
                             f"images, chunk along N only: images.rechunk({{{axis}: -1}})")
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"fscnn.dask.predict: batch_size must be a positive int or None, got "
                         f"{batch_size!r}")


def predict(model, images, *, batch_size=None):
    """Run ``model`` on every image of a dask array, lazily, chunk by chunk.

    Parameters
    ----------
    model : fscnn.nn.Module
        A model with one image input and one output (a zoo model, an imported graph...).
    images : dask.array.Array of shape (N, C, H, W), floating point
        Chunked along N (each chunk is one call of the model); C, H and W must not be split.
    batch_size : int, optional
        Rechunk N into chunks of this many images (default: keep the chunks of ``images``).

    Returns
    -------
    dask.array.Array
        float32 of shape (N, ...) (the model's output per image), one chunk per chunk of
        ``images``; nothing is computed until it is.

    Raises
    ------
    TypeError
        ``model`` is not an fscnn module, ``images`` not a dask array of floats, or the
        model returns several outputs.
    ValueError
        ``images`` is not 4-D or is chunked along C, H or W; ``batch_size`` is not positive.
    fscnn.nn.LayerInputError
        The images do not fit the model (channel count, size); raised here, before any
        chunk is sent anywhere.

    Examples
    --------
    >>> x = dask.array.from_array(images, chunks=(32, -1, -1, -1))
    >>> logits = fscnn.dask.predict(model, x).compute()
    """
    if not isinstance(model, Module):
        raise TypeError(f"fscnn.dask.predict: model must be an fscnn.nn.Module, got "
                        f"{type(model).__name__}")
    _check_images(images, batch_size)
    if batch_size is not None:
        images = images.rechunk({0: int(batch_size)})
    probe = probe_output(model, images.shape[1:])  # raises here when the images do not fit
    if not isinstance(probe, np.ndarray):
        raise TypeError(f"fscnn.dask.predict: the model returns {type(probe).__name__}, "
                        f"expected one array (models with one output)")
    ndim = probe.ndim
    chunks = (images.chunks[0],) + tuple((s,) for s in probe.shape[1:])
    return da.map_blocks(_predict_block, images, _model_key(model, _token(model)),
                         dtype=np.float32, chunks=chunks, meta=np.empty((0,) * ndim, np.float32),
                         drop_axis=list(range(ndim, 4)), new_axis=list(range(4, ndim)),
                         token="fscnn-predict")
