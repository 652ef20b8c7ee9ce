"""Whole-model benchmark: the seed report's experiment (VGG16 at increasing sparsity vs PyTorch),
extended to ResNet-18, ResNet-50 and MobileNetV2, ONNX Runtime, several thread counts and
batch sizes. Writes CSV + JSON and a PNG plot of speed-up vs sparsity.

Each configuration runs ``fscnn bench`` in a fresh process (fscnn, PyTorch dense, ONNX Runtime
dense and fscnn's dense path timed round-robin on the same weights). Peak memory (``--memory``,
``--memory-only``) is measured in separate processes that each hold only one runtime: fscnn
building, pruning in place and holding the pruned model sparse (``to_sparse``); fscnn loading the
pruned model saved with ``fscnn.save`` into a fresh model with ``fscnn.load(sparse=True)``
(the archive is written by a preparatory process that is not measured); and PyTorch running
the dense model.

    python bench/bench_models.py                                  # the full grid (about an hour)
    python bench/bench_models.py --models vgg16 --sparsity 0 0.9 --threads 1 --batch 1
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

SPARSITIES = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
MODELS = ["vgg16", "resnet18", "resnet50", "mobilenet_v2"]

_MEMORY_PROBE = r"""
import resource, sys, numpy as np
runtime, model_name, sparsity, batch, size = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
if runtime == "fscnn-save":  # preparatory, not measured: the pruned model as an archive
    import fscnn, fscnn.models, fscnn.prune, fscnn.nn
    fscnn.nn.manual_seed(0)
    model = getattr(fscnn.models, model_name)()
    fscnn.prune.prune(model, sparsity, inplace=True)
    fscnn.save(model, sys.argv[6])
    sys.exit()
if runtime == "fscnn":  # build, prune in place, hold the weights sparse, prepare, run
    import fscnn, fscnn.models, fscnn.prune, fscnn.nn
    fscnn.nn.manual_seed(0)
    model = getattr(fscnn.models, model_name)()
    fscnn.prune.prune(model, sparsity, inplace=True)
    model.to_sparse()
    model.prepare(x.shape)
    for _ in range(3):
        model(x)
elif runtime == "fscnn-load":  # a fresh model loads the pruned archive sparse, prepare, run
    import fscnn, fscnn.models
    model = getattr(fscnn.models, model_name)()
    model.load_state_dict(fscnn.load(sys.argv[6], sparse=True))
    model.prepare(x.shape)
    for _ in range(3):
        model(x)
else:  # the dense model in PyTorch alone, as a PyTorch user would run it
    import torch
    from fscnn.torch_reference import build
    tm = build(model_name, num_classes=1000)
    with torch.no_grad():
        for _ in range(3):
            tm(torch.from_numpy(x))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def bench_one(model, sparsity, threads, batch, args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, "-m", "fscnn", "bench", model, "--sparsity", str(sparsity),
               "--threads", str(threads), "--batch", str(batch), "--input-size",
               str(args.input_size), "--compare", args.compare, "--json", out]
        cmd += ["--iterations", str(args.iterations)] if args.iterations else ["--time", str(args.time)]
        cmd += ["--warmup", str(args.warmup)]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        with open(out) as f:
            return json.load(f)


def peak_memory(runtime, model, sparsity, batch, size, archive=""):
    """Peak RSS (MB, ru_maxrss) of a fresh single-thread process running ``runtime``:
    'fscnn' (build, prune in place, to_sparse, prepare, 3 runs), 'fscnn-load' (a fresh model
    loads ``archive`` with ``fscnn.load(sparse=True)``, prepare, 3 runs) or 'torch' (dense)."""
    res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, runtime, model, str(sparsity),
                          str(batch), str(size), archive], check=True, capture_output=True,
                         text=True)
    return float(res.stdout.strip().splitlines()[-1]) if runtime != "fscnn-save" else None


def memory_row(model, sparsity, batch, size):
    """The three peak-memory figures of one configuration (see :func:`peak_memory`)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "pruned.npz")
        peak_memory("fscnn-save", model, sparsity, batch, size, archive)
        return {"fscnn_peak_mb": peak_memory("fscnn", model, sparsity, batch, size),
                "fscnn_load_peak_mb": peak_memory("fscnn-load", model, sparsity, batch, size,
                                                  archive),
                "torch_dense_peak_mb": peak_memory("torch", model, 0.0, batch, size)}


def markdown_table(rows):
    """The grid as a Markdown table (median ms and fscnn's speed-up over each runtime)."""
    others = [k for k in ("torch", "onnxruntime", "dense") if any(f"{k}_ms" in r for r in rows)]
    names = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "dense": "fscnn dense"}
    head = ["model", "batch", "threads", "sparsity", "fscnn ms"]
    for k in others:
        head += [f"{names[k]} ms", f"vs {names[k]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["batch"]), str(r["threads"]), f"{r['sparsity']:.2f}",
                 f"{r['fscnn_ms']:.1f}"]
        for k in others:
            cells += [f"{r[f'{k}_ms']:.1f}", f"x{r[f'speedup_vs_{k}']:.2f}"] if f"{k}_ms" in r \
                else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    configs = sorted({(r["model"], r["threads"], r["batch"]) for r in rows})
    fig, ax = plt.subplots(figsize=(8, 5))
    for model, threads, batch in configs:
        sel = sorted((r for r in rows if (r["model"], r["threads"], r["batch"]) ==
                      (model, threads, batch) and r.get("speedup_vs_torch")),
                     key=lambda r: r["sparsity"])
        if sel:
            ax.plot([r["sparsity"] for r in sel], [r["speedup_vs_torch"] for r in sel], "o-",
                    label=f"{model} T={threads} N={batch}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("sparsity (fraction of conv/linear weights zero)")
    ax.set_ylabel("speed-up of fscnn over PyTorch dense (median latency)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--sparsity", nargs="+", type=float, default=SPARSITIES)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--compare", default="torch,onnxruntime,dense")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--time", type=float, default=10.0)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds per configuration")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory (1 thread)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only measure peak memory (no latency benchmark)")
    ap.add_argument("--out", default="bench/results/models")
    args = ap.parse_args(argv)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows = []
    for model in args.models:
        for batch in args.batch:
            for threads in args.threads:
                for sp in args.sparsity:
                    if args.memory_only:
                        if threads == args.threads[0]:
                            row = {"model": model, "sparsity": sp, "batch": batch}
                            row.update(memory_row(model, sp, batch, args.input_size))
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                        continue
                    rep = bench_one(model, sp, threads, batch, args)
                    lat = rep["latency"]
                    row = {"model": model, "sparsity": sp, "threads": threads, "batch": batch,
                           "date": rep["date"], "cpu": rep["cpu"],
                           "fscnn_ms": lat["fscnn"]["median_ms"],
                           "kernels": rep["kernels"], "check": rep["check"]["max_rel_error"]}
                    for other in ("torch", "onnxruntime", "dense"):
                        if other in lat:
                            row[f"{other}_ms"] = lat[other]["median_ms"]
                            row[f"speedup_vs_{other}"] = lat[other]["fscnn_speedup"]
                    if args.memory and threads == args.threads[0]:
                        row.update(memory_row(model, sp, batch, args.input_size))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    with open(args.out + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    keys = sorted({k for r in rows for k in r if k != "kernels"})
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(args.out + ".md", "w") as f:
        f.write(markdown_table(rows))
    try:
        if not args.memory_only:
            plot(rows, args.out + ".png")
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    print(f"wrote {args.out}.json, .csv, .md, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
