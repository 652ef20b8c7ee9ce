"""DeepSparse as a comparison for ``fscnn bench``: an engine in a subprocess of its own.

DeepSparse 1.8 (the sparse engine fscnn measures itself against; end of life) pins old onnx and
numpy, so it lives in a virtual environment of its own and is never imported here:
``FSCNN_DEEPSPARSE_PYTHON`` names that environment's interpreter (see BENCHMARKING.md). A
:class:`DeepSparseWorker` starts it on an ONNX file and an input saved to a temporary folder;
the worker compiles the engine once and then answers one line per request on its stdin:
``run`` (one timed call; it answers the seconds that call took, measured in the worker, so the
pipe's round trip is not counted), ``out`` (saves its output, to check it against fscnn's) and
``quit``. The bench times it round-robin with the others (``time_interleaved`` takes the
seconds it reports).
"""
import json
import os
import subprocess
import tempfile

import numpy as np

ENV = "FSCNN_DEEPSPARSE_PYTHON"

WORKER = r"""
import json, os, sys, time
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
import numpy as np
from deepsparse import compile_model
folder, threads = sys.argv[1], int(sys.argv[2])
x = np.load(os.path.join(folder, "x.npy"))
engine = compile_model(os.path.join(folder, "model.onnx"), batch_size=x.shape[0],
                       num_cores=threads)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = line.strip()
    if request == "run":
        t0 = time.perf_counter()
        engine([x])
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    elif request == "out":
        np.save(os.path.join(folder, "y.npy"), engine([x])[0])
        print(json.dumps({"saved": True}), flush=True)
    else:
        break
"""


def missing_interpreter():
    """What to do when no DeepSparse interpreter is set."""
    return (f"DeepSparse runs in a virtual environment of its own: set {ENV} to its python "
            f"(python3.11 -m venv ds && ds/bin/pip install deepsparse==1.8.0)")


class DeepSparseError(RuntimeError):
    """DeepSparse cannot be run (no interpreter set, it failed to start or to answer)."""


class DeepSparseWorker:
    """A DeepSparse engine of ``model`` (ONNX bytes) on input ``x`` with ``threads`` cores, in
    the interpreter named by ``python`` (default: the ``FSCNN_DEEPSPARSE_PYTHON`` variable).

    Calling it runs the engine once and returns the seconds the call took (``self_timed``);
    :meth:`output` returns its output for ``x``. Close it (or use it as a context manager)
    to end the subprocess.
    """

    self_timed = True

    def __init__(self, model, x, threads, python=None):
        python = python or os.environ.get(ENV)
        if not python:
            raise DeepSparseError(missing_interpreter())
        self._folder = tempfile.TemporaryDirectory(prefix="fscnn-deepsparse-")
        with open(os.path.join(self._folder.name, "model.onnx"), "wb") as f:
            f.write(model)
        np.save(os.path.join(self._folder.name, "x.npy"), np.ascontiguousarray(x))
        try:
            self._proc = subprocess.Popen(
                [python, "-c", WORKER, self._folder.name, str(int(threads))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, bufsize=1)
        except OSError as exc:
            self._folder.cleanup()
            raise DeepSparseError(f"{ENV}={python}: cannot start it ({exc})") from exc
        self._answer("ready")

    def _answer(self, key):
        line = self._proc.stdout.readline()
        try:
            reply = json.loads(line)
            return reply[key]
        except (ValueError, KeyError, TypeError):
            self._proc.kill()
            err = self._proc.stderr.read().strip().splitlines()
            self._folder.cleanup()
            raise DeepSparseError("DeepSparse worker failed: " + (
                err[-1] if err else f"unexpected reply {line!r}")) from None

    def _ask(self, request, key):
        self._proc.stdin.write(request + "\n")
        self._proc.stdin.flush()
        return self._answer(key)

    def __call__(self):
        return float(self._ask("run", "seconds"))

    def output(self):
        """The engine's output for ``x``."""
        self._ask("out", "saved")
        return np.load(os.path.join(self._folder.name, "y.npy"))

    def close(self):
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write("quit\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            stream.close()
        self._folder.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
