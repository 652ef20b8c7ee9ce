"""``fscnn predict``: run a model over a ``.npy`` array or a folder of images and write its
outputs (and the top classes) to files, in this process or on a Dask cluster.

The command line (:mod:`fscnn.cli`) parses the arguments and calls :func:`run`; the model is
built as ``fscnn bench`` builds it (:func:`fscnn.bench.build_model`). Outputs are written to
temporary files beside the targets and renamed into place at the end, so an interrupted or
failed run leaves no half-written file.
"""
import contextlib
import csv
import os
import secrets
import sys
import time

import numpy as np

from . import _config
from ._progress import Progress
from .bench import build_model
from .errors import CommandError, as_command_error

__all__ = ["run", "read_inputs"]


def read_inputs(source, input_size=None, channels=3, mean=None, std=None, strict=False,
                warn=None):
    """The images of ``source`` as a float array (N, C, H, W) and a name per image.

    Parameters
    ----------
    source : str
        A ``.npy`` file holding a float array (N, C, H, W) (memory-mapped, not read whole),
        or a folder of JPEG/PNG images (see :mod:`fscnn.images`).
    input_size, channels, mean, std
        Folders only: crop size (default 224), 1 or 3 channels, normalisation (default
        ImageNet's).
    strict : bool
        A corrupt image fails the run instead of being skipped.
    warn : callable, optional
        Called with a message for each skipped image (default: print to stderr).

    Returns
    -------
    (ndarray, list of str)
    """
    warn = warn or (lambda message: print(f"fscnn: warning: {message}", file=sys.stderr))
    if os.path.isdir(source):
        return _read_folder(source, 224 if input_size is None else input_size, channels, mean,
                            std, strict, warn)
    if not source.endswith(".npy"):
        raise CommandError(f"{source}: expected a .npy array (N, C, H, W) or a folder of images")
    if input_size is not None:
        raise CommandError("--input-size resizes the images of a folder; a .npy array is "
                           "taken as it is")
    with as_command_error(ValueError, context=f"{source}: not a .npy array"):
        x = np.load(source, mmap_mode="r", allow_pickle=False)
    if x.ndim != 4 or x.dtype.kind != "f":
        raise CommandError(f"{source}: expected a float array of shape (N, C, H, W), got "
                           f"{x.dtype} of shape {x.shape}")
    return x, [f"{os.path.basename(source)}[{i}]" for i in range(x.shape[0])]


def _read_folder(folder, size, channels, mean, std, strict, warn):
    from . import images
    mean = images.IMAGENET_MEAN[:channels] if mean is None else mean
    std = images.IMAGENET_STD[:channels] if std is None else std
    if channels == 1 and (len(mean) != 1 or len(std) != 1):
        mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    paths = images.list_images(folder)
    arrays, names, skipped = [], [], []
    with as_command_error(ImportError, ValueError):
        for path in paths:
            try:
                arrays.append(images.load_image(path, size, channels, mean, std))
            except images.ImageDecodeError as exc:
                if strict:
                    raise CommandError(f"{exc} (--strict)") from None
                warn(f"skipping {exc}")
                skipped.append(path)
                continue
            names.append(os.path.basename(path))
    if not arrays:
        found = f"{len(paths)} image files, none decodable" if paths else "no image files"
        raise CommandError(f"{folder}: {found} ({', '.join(images.SUFFIXES)})")
    return np.stack(arrays), names


@contextlib.contextmanager
def _replacing(path, suffix):
    """A temporary path beside ``path``, renamed to ``path`` when the block succeeds and
    removed when it fails."""
    tmp = f"{path}.{secrets.token_hex(6)}.tmp{suffix}"
    try:
        yield tmp
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _client(workers, scheduler, threads, stack):
    """A distributed client on a new LocalCluster (``workers``) or on ``scheduler``."""
    with as_command_error(ImportError):
        import dask
        import fscnn.dask  # noqa: F401  (checks dask and distributed are there)
        from distributed import Client, LocalCluster
    if scheduler is not None:
        with as_command_error(OSError, TimeoutError,
                              context=f"--scheduler {scheduler}: cannot connect"):
            return stack.enter_context(Client(scheduler, timeout=30))
    # without the workers' statistical profiler: it samples the task threads every 10 ms
    # holding the GIL, which each layer waits for after its kernel (see README, Dask)
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = stack.enter_context(LocalCluster(n_workers=workers,
                                                   threads_per_worker=threads or 1,
                                                   processes=True, dashboard_address=None))
    return stack.enter_context(Client(cluster))


def _run_local(model, x, out, batch_size, threads, bar):
    with _config.threads(threads) if threads else contextlib.nullcontext():
        for start in range(0, x.shape[0], batch_size):
            stop = min(start + batch_size, x.shape[0])
            out[start:stop] = model(np.asarray(x[start:stop]))
            bar.update(stop - start)


def _run_dask(model, x, out, batch_size, client, bar):
    import dask.array as da
    from distributed import as_completed

    import fscnn.dask
    y = fscnn.dask.predict(model, da.from_array(np.asarray(x), chunks=(batch_size, -1, -1, -1)))
    starts = np.concatenate([[0], np.cumsum(y.chunks[0])])
    blocks = y.to_delayed().ravel()
    futures = client.compute(list(blocks))
    index = {future.key: i for i, future in enumerate(futures)}
    for future, block in as_completed(futures, with_results=True):
        i = index[future.key]
        out[starts[i]:starts[i + 1]] = block
        bar.update(block.shape[0])


def _write_top_k(path, names, outputs, k):
    k = min(k, outputs.shape[1])
    with open(path, "x", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "class", "score"])
        for start in range(0, outputs.shape[0], 1024):
            chunk = np.asarray(outputs[start:start + 1024])
            top = np.argsort(-chunk, axis=1, kind="stable")[:, :k]
            for name, classes, row in zip(names[start:], top, chunk):
                for c in classes:
                    writer.writerow([name, int(c), f"{row[c]:.6g}"])


def run(target, source, out, *, arch=None, batch_size=32, workers=None, scheduler=None,
        threads=None, input_size=None, channels=3, mean=None, std=None, top_k=None,
        top_k_out=None, strict=False, progress=None):
    """Run ``fscnn predict`` (see ``fscnn predict --help``); returns a summary dict.

    ``target``/``arch`` as in ``fscnn bench``; ``source`` as in :func:`read_inputs`;
    ``out`` the ``.npy`` of outputs (N, ...) in input order; with ``top_k``, a CSV
    ``file,class,score`` (``top_k_out``, default ``out`` with ``.csv``) of the ``top_k``
    largest outputs of each image, largest first. ``workers`` starts a LocalCluster of that
    many processes (``threads`` kernel threads each, default 1); ``scheduler`` connects to a
    running one; neither: this process, with ``threads`` kernel threads.
    """
    from .nn import LayerInputError
    from .nn.module import probe_output
    if workers is not None and scheduler is not None:
        raise CommandError("give --workers (a new local cluster) or --scheduler (a running "
                           "one), not both")
    for path in (out, top_k_out if top_k is not None else None):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise CommandError(f"{path}: the folder {folder} does not exist")
    model, _ = build_model(target, arch)
    x, names = read_inputs(source, input_size, channels, mean, std, strict)
    with as_command_error(LayerInputError, ValueError,
                          context=f"{source}: inputs of shape {tuple(x.shape[1:])} per image "
                                  f"do not fit the model"):
        probe = probe_output(model, x.shape[1:])
    if not isinstance(probe, np.ndarray):
        raise CommandError("the model has several outputs; fscnn predict writes models with one")
    if top_k is not None and probe.ndim != 2:
        raise CommandError(f"--top-k needs outputs of shape (N, classes), the model gives "
                           f"{('N',) + probe.shape[1:]}")
    top_k_out = top_k_out or os.path.splitext(out)[0] + ".csv"
    n = x.shape[0]
    t0 = time.perf_counter()
    with _replacing(out, ".npy") as tmp_out, _replacing(top_k_out, ".csv") as tmp_csv, \
            contextlib.ExitStack() as stack:
        outputs = np.lib.format.open_memmap(tmp_out, mode="w+", dtype=np.float32,
                                            shape=(n,) + probe.shape[1:])
        with Progress(n, "predict", "image", enabled=progress, rate=True) as bar:
            if workers is None and scheduler is None:
                _run_local(model, x, outputs, batch_size, threads, bar)
            else:
                client = _client(workers, scheduler, threads, stack)
                _run_dask(model, x, outputs, batch_size, client, bar)
        seconds = time.perf_counter() - t0
        outputs.flush()
        if top_k is not None:
            _write_top_k(tmp_csv, names, outputs, top_k)
        del outputs
        os.replace(tmp_out, out)
        if top_k is not None:
            os.replace(tmp_csv, top_k_out)
    return {"images": n, "output_shape": (n,) + probe.shape[1:], "seconds": seconds,
            "images_per_second": n / seconds if seconds > 0 else float("inf"),
            "out": out, "top_k_out": top_k_out if top_k is not None else None}
