"""Imported-model benchmark: torchvision models exported to ONNX, imported with
``fscnn.from_onnx``, against ONNX Runtime on the same file and against fscnn's own zoo model.

For each model: random weights (torch's seed 0, batch-norm statistics perturbed), export at
224x224 with torch's TorchScript exporter, import, magnitude-prune the imported graph in
place to the given sparsity and write the pruned ONNX file (``replace_weights``). Then, in
this one process and round-robin: fscnn (``to_sparse`` and ``prepare``: kernels timed per
layer), ONNX Runtime on the pruned file (``intra_op_num_threads`` = threads, all graph
optimisations), and for the families fscnn's zoo has, the zoo model with the same weights.
Median latency and min-max spread; import time (``from_onnx`` only) too.

    python bench/bench_import.py                         # every family, 90%, 1 thread
    python bench/bench_import.py --models resnet50 mobilenet_v2 --sparsity 0.9 --threads 1

Needs torch, torchvision (``pip install --no-deps torchvision==0.28.0`` beside the CPU torch),
onnx and onnxruntime.
"""
import argparse
import io
import json
import os
import sys
import time
import warnings

import numpy as np

MODELS = ["alexnet", "vgg16", "resnet18", "resnet50", "resnext50_32x4d", "densenet121",
          "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_large",
          "mnasnet1_0", "efficientnet_b0", "regnet_y_400mf", "googlenet", "inception_v3"]
ZOO = {"vgg16", "resnet18", "resnet50", "mobilenet_v2"}


def _torchvision():
    import torch
    register_fake = torch.library.register_fake
    # PyPI's torchvision is built for CUDA torch: with the CPU build its detection operators
    # fail to register; classification models never use them
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
        import torchvision
    finally:
        torch.library.register_fake = register_fake
    return torch, torchvision


def export(name, size):
    torch, torchvision = _torchvision()
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet",
                                                                     "inception_v3") else {}
    model = getattr(torchvision.models, name)(**kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buffer, dynamo=False,
                          input_names=["input"], training=torch.onnx.TrainingMode.PRESERVE)
    return model, buffer.getvalue()


def bench_one(name, sparsity, threads, size, iterations, warmup):
    import fscnn
    import fscnn.bench
    from fscnn.importers.onnx import replace_weights

    fscnn.set_num_threads(threads)
    torch_model, data = export(name, size)
    t0 = time.perf_counter()
    graph = fscnn.from_onnx(data)
    import_s = time.perf_counter() - t0
    fscnn.prune.prune(graph, sparsity, inplace=True)
    pruned = replace_weights(data, {k: graph.state_dict()[k]
                                    for k in fscnn.prune.prunable_names(graph)})
    pruned = pruned.SerializeToString()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    t0 = time.perf_counter()
    graph.to_sparse().prepare(x.shape)
    prepare_s = time.perf_counter() - t0
    session = fscnn.bench.ort_session(pruned, threads)  # without spinning, as fscnn bench
    expected = session.run(None, {"input": x})[0]
    error = float(np.abs(graph(x) - expected).max() / np.abs(expected).max())
    fns = {"fscnn (imported)": lambda: graph(x),
           "onnxruntime": lambda: session.run(None, {"input": x})}
    if name in ZOO:
        zoo = getattr(fscnn.models, name)()
        zoo.load_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})
        weights = {k: graph.state_dict()[k] for k in fscnn.prune.prunable_names(graph)}
        # the TorchScript export keeps parameter names (batch norms are nodes), so the
        # pruned weights go back into the zoo model under the same keys
        zoo.load_state_dict({**zoo.state_dict(), **weights})
        zoo.to_sparse().prepare(x.shape)
        fns["fscnn (zoo)"] = lambda: zoo(x)
    times = fscnn.bench.time_interleaved(fns, warmup=warmup, iterations=iterations,
                                         progress=False)
    row = {"model": name, "sparsity": sparsity, "threads": threads, "size": size,
           "import_s": round(import_s, 3), "prepare_s": round(prepare_s, 2),
           "max_rel_error": error}
    for key, t in times.items():
        row[key] = {"median_ms": 1e3 * float(np.median(t)), "min_ms": 1e3 * float(np.min(t)),
                    "max_ms": 1e3 * float(np.max(t))}
    return row


def markdown(rows):
    lines = ["| model | sparsity | threads | fscnn (imported) | ONNX Runtime | speed-up | "
             "zoo / imported | import |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, o = r["fscnn (imported)"]["median_ms"], r["onnxruntime"]["median_ms"]
        zoo = r.get("fscnn (zoo)")
        lines.append(f"| {r['model']} | {r['sparsity']:.0%} | {r['threads']} | {f:.1f} ms | "
                     f"{o:.1f} ms | x{o / f:.2f} | "
                     f"{'x%.2f' % (zoo['median_ms'] / f) if zoo else '-'} | "
                     f"{r['import_s']:.2f} s |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--sparsity", nargs="+", type=float, default=[0.9])
    ap.add_argument("--threads", nargs="+", type=int, default=[1])
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None, help="write JSON and Markdown here (no suffix)")
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        for sparsity in args.sparsity:
            for threads in args.threads:
                row = bench_one(name, sparsity, threads, args.input_size, args.iterations,
                                args.warmup)
                rows.append(row)
                print(markdown([row]).splitlines()[-1], flush=True)
    table = markdown(rows)
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(rows, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
