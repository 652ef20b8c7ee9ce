"""The main job: time a pruned model on fscnn against references, side by side (``fscnn bench``).

Every candidate (fscnn with its per-layer kernel choice, and the comparisons: PyTorch, ONNX
Runtime, fscnn's own dense path) runs on the same weights and the same input, interleaved
round by round so that machine noise hits all of them alike; the report gives latency
statistics per candidate and the speed-up of fscnn over each, from medians.
"""
import contextlib
import json
import math
import os
import platform
import resource
import sys
import time

import numpy as np

from . import _config
from ._progress import Progress
from ._table import format_table
from .errors import CommandError, as_command_error

COMPARISONS = ("torch", "onnxruntime", "litert", "deepsparse", "dense")
DEFAULT_COMPARISONS = {"zoo": ("torch", "dense"), ".onnx": ("onnxruntime", "dense"),
                       ".tflite": ("litert", "dense"), ".npz": ("dense",)}
"""What ``fscnn bench`` compares with when --compare is not given, by kind of target: the
runtime the model came from and fscnn's own dense path."""


def zoo_model(name):
    """A fresh model of the zoo (:func:`fscnn.models.get_model`); an unknown ``name`` is the
    user's mistake (:class:`~fscnn.errors.CommandError`)."""
    from . import models
    if name not in models.list_models():
        raise CommandError(models.unknown_model_message(name))
    return models.get_model(name)


# A quantized model is checked against its dequantized float32 model on random inputs: the
# error of its int8 activations (a few percent where the random input leaves the calibrated
# range and saturates), not a kernel mismatch.
QUANTIZED_CHECK = 0.1

MODEL_FILES = (".onnx", ".tflite")
"""Suffixes of model files (a graph and its weights) the CLI takes wherever it takes a model."""


def is_model_file(target):
    """Whether ``target`` is a whole model in a file: an ``.onnx`` or ``.tflite`` file, or
    an fscnn archive that holds a model description (not just weights)."""
    from . import io
    if target.lower().endswith(MODEL_FILES):
        return True
    return target.endswith(".npz") and os.path.isfile(target) and io.holds_model(target)


def load_model_file(target):
    """:func:`fscnn.load_model` with the user's mistakes (a corrupt file, an operator fscnn
    does not import, a missing format package) as :class:`~fscnn.errors.CommandError`."""
    from . import io
    from .importers import ModelImportError
    with as_command_error(io.ArchiveError, ModelImportError, ImportError, OSError):
        return io.load_model(target)


def build_model(target, arch=None, seed=0):
    """The model to benchmark and its name.

    Parameters
    ----------
    target : str
        A model name of :mod:`fscnn.models` (randomly initialised from ``seed``), a model
        file (``.onnx``, ``.tflite``, or a whole-model archive written by ``fscnn.save``), or
        a ``.npz`` archive of weights (then ``arch`` names its architecture).
    """
    from . import io, models, nn
    if is_model_file(target):
        if arch is not None:
            raise CommandError(f"{target} holds a whole model: --model ARCH is for archives of "
                               f"weights only")
        return load_model_file(target).eval(), os.path.basename(target)
    if target.endswith(".npz"):
        if arch is None:
            raise CommandError(f"{target}: give the architecture of these weights with --model "
                               f"(one of {', '.join(models.list_models())})")
        with as_command_error(io.ArchiveError):
            name, state = arch, io.load(target)
    else:
        name, state = target, None
    nn.manual_seed(seed)
    model = zoo_model(name)
    if state is not None:
        with as_command_error(nn.StateDictError,
                              context=f"{target}: the weights do not fit --model {arch}"):
            model.load_state_dict(state)
    model.eval()
    return model, name


def input_shape(model, batch, input_size):
    """The shape of the benchmark's input: (batch, 3, S, S) for the zoo's image models; for
    a graph, its one input's declared shape with free sizes set (the first to ``batch``, the
    others to ``input_size``) and fixed ones checked against ``batch``."""
    from .nn import Graph
    if not isinstance(model, Graph):
        return (batch, 3, input_size, input_size)
    floats = [i for i in model.inputs if i.dtype.startswith("float")]
    if len(model.inputs) != 1 or not floats:
        raise CommandError(f"the model takes inputs {[i.name for i in model.inputs]}; fscnn "
                           f"bench feeds models with one float input")
    declared = floats[0].shape
    if declared is None:
        raise CommandError(f"input {floats[0].name!r} has no declared shape")
    if declared[0] is not None and declared[0] != batch:
        raise CommandError(f"input {floats[0].name!r} has a fixed batch size {declared[0]}: "
                           f"pass --batch {declared[0]}")
    return (batch,) + tuple(input_size if d is None else d for d in declared[1:])


def torch_model(arch, state_dict):
    """The PyTorch model of ``arch`` holding ``state_dict``, or None when torch is missing."""
    try:
        import torch
    except ImportError:
        return None
    from .torch_reference import build
    model = build(arch, num_classes=state_dict[_last_weight(state_dict)].shape[0])
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    return model.eval()


def _last_weight(state_dict):
    return [k for k, v in state_dict.items() if k.endswith("weight") and np.ndim(v) == 2][-1]


def _onnx_session(tmodel, x, threads):
    """An ONNX Runtime session of the torch model, or None when onnxruntime/onnx are missing."""
    try:
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return None
    return ort_session(onnx_of_torch(tmodel, x), threads)


def onnx_of_torch(tmodel, x, opset=None):
    """The ONNX bytes of the torch model ``tmodel`` exported on input ``x`` (input "x", output
    "y"; torch's TorchScript exporter), at ONNX opset ``opset`` (None: the exporter's
    default; DeepSparse 1.8 reads up to 19)."""
    import io as _io

    import torch
    buf = _io.BytesIO()
    extra = {} if opset is None else {"opset_version": opset}
    with warnings_silenced():
        torch.onnx.export(tmodel, (torch.from_numpy(x),), buf, dynamo=False,
                          input_names=["x"], output_names=["y"], **extra)
    return buf.getvalue()


def ort_session(model, threads):
    """An ONNX Runtime CPU session of ``model`` (ONNX bytes or a path) on ``threads`` intra-op
    threads, run sequentially, its idle threads sleeping (_no_spinning): how every comparison
    with ONNX Runtime is set up."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    _no_spinning(opts)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _no_spinning(opts):
    """Make an ONNX Runtime session's idle threads sleep instead of spin. With spinning (its
    default) they kept the cores long after a call: MobileNetV2 at 90%, 2 threads, 2 cores,
    round-robin with ONNX Runtime: fscnn 23 ms median (6.5 ms beside PyTorch), even with 20 ms
    pauses between the calls; without it fscnn 6.9 ms and ONNX Runtime itself 5.9 ms instead
    of 6.8 ms. No effect at one thread (no worker threads)."""
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")


@contextlib.contextmanager
def warnings_silenced():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def time_interleaved(fns, warmup, iterations=None, seconds=None, progress=True):
    """Time each callable of ``fns`` round-robin; returns name -> array of seconds per call
    (a callable with a true ``self_timed`` attribute returns the seconds it took).

    Runs ``warmup`` untimed rounds, then rounds until ``iterations`` rounds or ``seconds`` of
    wall time have passed (at least 3 rounds).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    bar = Progress(iterations, "timing", "round", enabled=None if progress else False,
                   delay=0)
    rounds = 0
    while True:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            reported = fn()
            elapsed = time.perf_counter() - t0
            # a runtime in another process reports its own time (the pipe not counted)
            times[name].append(reported if getattr(fn, "self_timed", False) else elapsed)
        rounds += 1
        bar.update(1)
        if iterations is not None and rounds >= iterations:
            break
        if iterations is None and rounds >= 3 and time.perf_counter() - start >= seconds:
            break
    bar.close()
    return {name: np.array(t) for name, t in times.items()}


def latency_stats(t, batch):
    """Mean, median, p90, p99, min, max (ms) and images per second of call times ``t``."""
    ms = t * 1e3
    return {"mean_ms": float(ms.mean()), "median_ms": float(np.median(ms)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "runs": int(ms.size),
            "images_per_s": float(batch / np.median(t))}


def per_layer_table(model, x, repeats=5):
    """Rows per layer: name, type, input shape, sparsity, kernel, median ms, effective GFLOP/s
    (2 * non-zeros * output positions / time for the sparse, INT8 and fused expand+depthwise
    kernels, all weights for dense and winograd: an effective rate that Winograd can push past
    the machine's FMA peak), share of the total."""
    from .nn import profile
    runs = []
    for _ in range(repeats):
        with profile() as records:
            model(x)
        runs.append(records)
    rows = []
    for i, rec in enumerate(runs[0]):
        t = float(np.median([r[i].seconds for r in runs]))
        flops = rec.flops_sparse if rec.kernel in ("sparse", "int8", "expand+depthwise") \
            else rec.flops_dense
        rows.append({"layer": rec.name, "type": rec.type, "input_shape": list(rec.input_shape),
                     "sparsity": rec.sparsity, "kernel": rec.kernel, "ms": t * 1e3,
                     "gflops": (flops / t / 1e9) if flops and t > 0 else None})
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total if total else 0.0
    return rows


ZOO_SPARSITY = 0.9
"""Fraction of zeros a zoo model's random weights are pruned to when no sparsity is given."""


def rescale_pruned(model):
    """Scale each pruned convolution and linear weight of ``model`` by 1/sqrt(its density), in
    place: what keeps a randomly initialised model's activations alive once pruned.

    Pruning 90% of random weights divides each layer's output variance by ~10; through
    MobileNetV2's 53 layers its features fell to ~1e-14, its output was the classifier's bias
    alone, and the bench's check against the reference runtime passed whatever the kernels
    computed. The timings do not depend on the scale (no kernel branches on values)."""
    from .nn import Conv2d, Linear
    for module in model.modules():
        if isinstance(module, (Conv2d, Linear)) and isinstance(module.weight, np.ndarray):
            w = module.weight
            density = np.count_nonzero(w) / max(w.size, 1)
            if 0.0 < density < 1.0:
                module.weight = (w / np.float32(math.sqrt(density))).astype(w.dtype)


def run(target="vgg16", arch=None, sparsity="default", batch=1, threads=None, input_size=224,
        warmup=2, iterations=None, seconds=10.0, compare=None, per_layer=False,
        kernel="auto", keep=(), seed=0, out=None, progress=True, pattern="unstructured"):
    """Run the benchmark and print its report (on ``out``, default ``sys.stdout`` at the time
    of the call); returns the report as a dict (see ``--json``).

    ``target``: see :func:`build_model`. ``sparsity``: magnitude-prune every conv/linear
    weight to this fraction of zeros (in ``pattern``: see :func:`fscnn.prune`; '4x1' blocks run
    on the block kernel; a zoo model's random weights are then rescaled by
    :func:`rescale_pruned`); None measures the weights as they are; ``"default"`` is
    :data:`ZOO_SPARSITY` for a zoo model (random weights) and None for a file, whose weights
    are the user's own. ``compare``: names of :data:`COMPARISONS`; None takes
    :data:`DEFAULT_COMPARISONS` for the kind of target (an ONNX file is compared with ONNX
    Runtime running the same file, pruned as fscnn's model is; a TFLite file with LiteRT).
    """
    out = sys.stdout if out is None else out
    is_file = target.lower().endswith(MODEL_FILES + (".npz",))
    if isinstance(sparsity, str):
        if sparsity != "default":
            raise ValueError(f"sparsity must be a number, None or 'default', got {sparsity!r}")
        sparsity = None if is_file else ZOO_SPARSITY
    from .nn import Graph, LayerInputError
    from .prune import prunable_names, prune, sparsity_report
    from .quantization import dequantize, is_quantized, quantized_weight_names
    threads = threads or _config.get_num_threads()
    model, name = build_model(target, arch, seed)
    kind = os.path.splitext(target)[1].lower() if isinstance(model, Graph) else "zoo"
    compare = DEFAULT_COMPARISONS[kind] if compare is None else tuple(compare)
    unknown = set(compare) - set(COMPARISONS)
    if unknown:
        raise CommandError(f"--compare: unknown {', '.join(sorted(unknown))} "
                           f"(choose from {', '.join(COMPARISONS)})")
    if "litert" in compare and sparsity is not None:
        raise CommandError("--compare litert runs the .tflite file as given: measure it without "
                           "--sparsity (or prune it with fscnn prune and compare with dense)")
    if pattern != "unstructured" and sparsity is None:
        raise CommandError(f"--pattern {pattern} prunes: give --sparsity too (a model file is "
                           "measured as given otherwise)")
    if sparsity is not None:
        with as_command_error(ValueError, TypeError):  # --keep names no layer, NaN weights
            prune(model, sparsity, keep=list(keep), pattern=pattern, inplace=True)
        if kind == "zoo" and not target.endswith(".npz"):
            rescale_pruned(model)
    state = model.state_dict()  # dense arrays: the torch model and fscnn's dense path use them
    if is_quantized(model):  # its int8 weights are not prunable ones: count them directly
        weights = [np.asarray(state[k]) for k in prunable_names(model)
                   + quantized_weight_names(model)]
        achieved = 1.0 - sum(np.count_nonzero(w) for w in weights) / sum(w.size for w in weights)
    else:
        achieved = sparsity_report(model).total.sparsity
    # the measured fscnn model holds its pruned weights sparse, as a deployment would: its
    # operators then keep dense copies only where a plan picks the dense kernel
    model.to_sparse()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape(model, batch, input_size), dtype=np.float32)
    report = {"model": name, "target": target, "sparsity": achieved, "pruned_to": sparsity,
              "pattern": pattern, "batch": batch,
              "threads": threads, "input_size": input_size, "kernel": kernel,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": _cpu_name(),
              "simd": _config.get_simd_level(), "fscnn_version": _config.config_dict()["fscnn"]}
    how = "as given" if sparsity is None else f"pruned to {sparsity:.0%}" + (
        "" if pattern == "unstructured" else f" in {pattern} blocks")
    print(f"fscnn bench: {name}, {achieved:.1%} of conv/linear weights zero ({how}), input "
          f"{'x'.join(map(str, x.shape))}, {threads} thread(s), SIMD {report['simd']}",
          file=out)
    with _config.threads(threads), _torch_threads(threads), \
            contextlib.ExitStack() as cleanup:
        t0 = time.perf_counter()
        with as_command_error(LayerInputError, context=f"--input-size {input_size}"):
            model.prepare(x.shape, kernel=kernel)
        report["prepare_s"] = time.perf_counter() - t0
        plan = model.plan()
        chosen = [k for row in plan for k in row.kernels.values()]
        report["kernels"] = {k: chosen.count(k) for k in sorted(set(chosen))}
        # layers that 'auto' runs on one thread of several (waking threads cost more there)
        report["one_thread_layers"] = sum(1 for row in plan for t in (row.threads or {}).values()
                                          if t == 1) if threads > 1 else 0
        print(f"prepared in {report['prepare_s']:.1f} s: "
              + ", ".join(f"{n} layers {k}" for k, n in report["kernels"].items())
              + (f" ({report['one_thread_layers']} of them on one thread)"
                 if report["one_thread_layers"] else ""), file=out)
        fns = {"fscnn": lambda: model(x)}
        # a file's pruned weights, which its own runtimes are given too
        pruned = {k: state[k] for k in prunable_names(model)} \
            if sparsity is not None and kind != "zoo" else None
        tmodel = None  # a zoo model's torch twin, built once for every comparison
        if kind == "zoo":
            runtimes, tmodel = _torch_references(name, state, x, compare, threads, out)
        else:
            runtimes = _file_references(target, kind, pruned, x, compare, threads, out)
        fns.update({k: fn for k, fn in runtimes.items() if k in compare})
        if "deepsparse" in compare:
            worker = _deepsparse_worker(kind, name, state, target, pruned, x, threads, out,
                                        tmodel)
            if worker is not None:
                cleanup.callback(worker.close)
                fns["deepsparse"] = worker
        # a quantized model's dense path is the float32 model of its dequantized weights: the
        # check then measures the quantization error of its activations, not a kernel's
        quantized = is_quantized(model)
        if "dense" in compare or not runtimes:  # fscnn's dense path, or the only reference
            dense_model = dequantize(model) if quantized else _copy(model)
            dense_model.prepare(x.shape, kernel="dense")
            if "dense" in compare:
                fns["dense"] = lambda: dense_model(x)
            runtimes.setdefault("fscnn dense", lambda: dense_model(x))
        ref_name, ref_fn = next(iter(runtimes.items()))
        ref = ref_fn()
        ref = ref[0] if isinstance(ref, (list, tuple)) else ref
        y = model(x)
        y = y[0] if isinstance(y, tuple) else y
        err = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
        bound = QUANTIZED_CHECK if quantized else 1e-3
        report["check"] = {"reference": ref_name, "max_rel_error": err, "ok": err <= bound}
        print(f"check: max|fscnn - {ref_name}| / max|{ref_name}| = {err:.2e} "
              f"({'ok' if err <= bound else 'MISMATCH'}"
              f"{', int8 against the dequantized float32 model' if quantized else ''})",
              file=out)
        if "deepsparse" in fns:  # the same weights? (its own kernels' rounding aside)
            theirs = fns["deepsparse"].output()
            err = float(np.abs(y - theirs).max() / max(np.abs(theirs).max(), 1e-30))
            report["check_deepsparse"] = {"max_rel_error": err, "ok": err <= bound}
            print(f"check: max|fscnn - deepsparse| / max|deepsparse| = {err:.2e} "
                  f"({'ok' if err <= bound else 'MISMATCH'})", file=out)
        times = time_interleaved(fns, warmup, iterations, seconds, progress)
    report["latency"] = {k: latency_stats(t, batch) for k, t in times.items()}
    base = report["latency"]["fscnn"]["median_ms"]
    rows = []
    for k, s in report["latency"].items():
        s["fscnn_speedup"] = s["median_ms"] / base
        rows.append([k, f"{s['mean_ms']:.2f}", f"{s['median_ms']:.2f}", f"{s['p90_ms']:.2f}",
                     f"{s['p99_ms']:.2f}", f"{s['images_per_s']:.1f}",
                     "-" if k == "fscnn" else f"x{s['fscnn_speedup']:.2f}"])
    print(format_table(["", "mean ms", "median ms", "p90 ms", "p99 ms", "images/s",
                        "fscnn speed-up"], rows), file=out)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if per_layer:
        with _config.threads(threads):
            report["layers"] = per_layer_table(model, x)
        print(format_table(
            ["layer", "type", "input", "sparsity", "kernel", "ms", "GFLOP/s", "share"],
            [[r["layer"], r["type"], "x".join(map(str, r["input_shape"][1:])),
              "-" if r["sparsity"] is None else f"{r['sparsity']:.2f}", r["kernel"] or "-",
              f"{r['ms']:.3f}", "-" if r["gflops"] is None else f"{r['gflops']:.1f}",
              f"{r['share']:.1%}"] for r in report["layers"]], align="lllrlrrr"), file=out)
    return report


def _copy(model):
    """An independent copy of ``model`` (weights included), for fscnn's dense path."""
    import pickle
    return pickle.loads(pickle.dumps(model))


def _torch_references(name, state, x, compare, threads, out):
    """(name -> callable of the reference runtimes of a zoo model: PyTorch, and ONNX Runtime
    on its export, on the same weights, when installed; the torch model or None). The first
    runtime is what fscnn's output is checked against."""
    runtimes = {}
    tmodel = torch_model(name, state) if ("torch" in compare or "onnxruntime" in compare) \
        else None
    if tmodel is None:
        if "torch" in compare or "onnxruntime" in compare:
            print("torch: not installed; comparing with fscnn's dense path only", file=out)
        return runtimes, None
    import torch
    xt = torch.from_numpy(x)

    def run_torch():
        with torch.no_grad():
            return tmodel(xt).numpy()
    runtimes["torch"] = run_torch
    if "onnxruntime" in compare:
        session = _onnx_session(tmodel, x, threads)
        if session is None:
            print("onnxruntime: not installed (pip install onnx onnxruntime); skipped", file=out)
        else:
            runtimes["onnxruntime"] = lambda: session.run(None, {"x": x})
    return runtimes, tmodel


def _deepsparse_worker(kind, name, state, target, pruned, x, threads, out, tmodel=None):
    """A :class:`fscnn._deepsparse.DeepSparseWorker` on the same weights as fscnn's model (a
    zoo model's torch export at opset 13, which DeepSparse 1.8 reads, of ``tmodel`` when the
    other comparisons built it; an ONNX file as given or with the pruned weights written in),
    or None after saying why not."""
    from ._deepsparse import ENV, DeepSparseError, DeepSparseWorker, missing_interpreter
    if not os.environ.get(ENV):
        print(f"deepsparse: {missing_interpreter()}; skipped", file=out)
        return None
    if kind == "zoo":
        from .torch_reference import torch_models
        if tmodel is None:
            try:
                tmodel = torch_model(name, state) if name in torch_models()[0] else None
            except ImportError:
                pass
        if tmodel is None:
            print(f"deepsparse: needs torch and a torch reference of {name} to export it to "
                  f"ONNX; skipped", file=out)
            return None
        model = onnx_of_torch(tmodel, x, opset=13)
    elif kind == ".onnx":
        from .importers.onnx import load_model, replace_weights
        model = (replace_weights(target, pruned) if pruned else load_model(target))
        model = model.SerializeToString()
    else:
        print(f"deepsparse: runs ONNX models, not a {kind} model; skipped", file=out)
        return None
    try:
        return DeepSparseWorker(model, x, threads)
    except DeepSparseError as exc:
        print(f"deepsparse: {exc}; skipped", file=out)
        return None


def _file_references(target, kind, pruned, x, compare, threads, out):
    """name -> callable of the runtimes a model file came from: ONNX Runtime on the ONNX
    file (with ``pruned`` weights written into it), LiteRT with XNNPACK on a TFLite file."""
    runtimes = {}
    if kind == ".onnx" and "onnxruntime" in compare:
        try:
            import onnxruntime  # noqa: F401  (ort_session imports it)
        except ImportError:
            print("onnxruntime: not installed (pip install onnxruntime); skipped", file=out)
            return runtimes
        from .importers.onnx import load_model, replace_weights
        model = replace_weights(target, pruned) if pruned else load_model(target)
        session = ort_session(model.SerializeToString(), threads)
        feed = {session.get_inputs()[0].name: x}
        runtimes["onnxruntime"] = lambda: session.run(None, feed)
    elif kind == ".tflite" and "litert" in compare:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            print("litert: not installed (pip install ai-edge-litert); skipped", file=out)
            return runtimes
        interpreter = Interpreter(model_path=target, num_threads=threads)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]["index"]
        outs = [d["index"] for d in interpreter.get_output_details()]

        def run_litert():
            interpreter.set_tensor(inp, x)
            interpreter.invoke()
            return [interpreter.get_tensor(i) for i in outs]
        runtimes["litert"] = run_litert
    elif set(compare) & {"torch", "onnxruntime", "litert"}:
        print(f"{', '.join(sorted(set(compare) - {'dense'}))}: no such runtime for a "
              f"{kind} model; skipped", file=out)
    return runtimes


@contextlib.contextmanager
def _torch_threads(threads):
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            yield
            return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def to_json(value):
    """``value`` with only what strict JSON holds: numpy scalars and arrays as Python numbers
    and lists, tuples as lists, NaN and infinities as None (``null``), keys as str."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report, path):
    """Write ``report`` to ``path`` as strict JSON (see :func:`to_json`)."""
    with open(path, "w") as f:
        json.dump(to_json(report), f, indent=1, allow_nan=False)
