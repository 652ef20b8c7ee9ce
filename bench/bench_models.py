"""Whole-model benchmark: the seed report's experiment (VGG16 at increasing sparsity vs PyTorch),
extended to ResNet-18, ResNet-50 and MobileNetV2, ONNX Runtime, several thread counts and
batch sizes. Writes JSON, CSV, a Markdown table and a PNG plot of speed-up vs sparsity.

Each configuration runs ``fscnn bench`` in a fresh process (fscnn, PyTorch dense, ONNX Runtime
dense and fscnn's dense path timed round-robin on the same weights; DeepSparse 1.8 too where
``FSCNN_DEEPSPARSE_PYTHON`` names the python of a venv that has it, see BENCHMARKING.md). Peak memory (``--memory``,
``--memory-only``) is measured in separate processes that each hold only one runtime: fscnn
building, pruning in place and holding the pruned model sparse (``to_sparse``); fscnn loading the
pruned model saved with ``fscnn.save`` into a fresh model with ``fscnn.load(sparse=True)``
(the archive is written by a preparatory process that is not measured); and PyTorch running
the dense model.

    python bench/bench_models.py                                  # the full grid (about an hour)
    python bench/bench_models.py --models vgg16 --sparsity 0 0.9 --threads 1 --batch 1

The README's figures come from three runs joined by ``--merge`` (about 50 minutes on 2 cores):

    python bench/bench_models.py --batch 1 --iterations 10 --warmup 1 --out bench/results/b1
    python bench/bench_models.py --batch 8 --iterations 3 --warmup 1 --out bench/results/b8
    python bench/bench_models.py --memory-only --sparsity 0 0.9 --threads 1 --batch 1 \
        --out bench/results/memory
    python bench/bench_models.py --merge bench/results/b1.json bench/results/b8.json \
        bench/results/memory.json --out bench/results/models
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
    """The grid as Markdown: latency rows (median ms and fscnn's speed-up over each runtime)
    and peak-memory rows, each in a table of its own."""
    names = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "deepsparse": "DeepSparse",
             "dense": "fscnn dense"}
    out = []
    timed = [r for r in rows if "fscnn_ms" in r]
    if timed:
        others = [k for k in names if any(f"{k}_ms" in r for r in timed)]
        head = ["model", "batch", "threads", "sparsity", "fscnn ms"]
        for k in others:
            head += [f"{names[k]} ms", f"vs {names[k]}"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in timed:
            cells = [r["model"], str(r["batch"]), str(r["threads"]), f"{r['sparsity']:.2f}",
                     f"{r['fscnn_ms']:.1f}"]
            for k in others:
                cells += ([f"{r[f'{k}_ms']:.1f}", f"x{r[f'speedup_vs_{k}']:.2f}"]
                          if f"{k}_ms" in r else ["-", "-"])
            out.append("| " + " | ".join(cells) + " |")
    memory = [r for r in rows if "fscnn_peak_mb" in r]
    if memory:
        out += ["", "| model | batch | sparsity | fscnn peak MB (build, prune, to_sparse) | "
                "fscnn peak MB (load sparse archive) | PyTorch dense peak MB |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['model']} | {r['batch']} | {r['sparsity']:.2f} | "
                f"{r['fscnn_peak_mb']:.0f} | {r.get('fscnn_load_peak_mb', float('nan')):.0f} | "
                f"{r['torch_dense_peak_mb']:.0f} |" for r in memory]
    return "\n".join(out).lstrip("\n") + "\n"


def plot(rows, path):
    """Speed-up over PyTorch vs sparsity, one panel per batch size, a line per model and
    thread count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    rows = [r for r in rows if r.get("speedup_vs_torch")]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), 5), squeeze=False,
                             sharey=True)
    for ax, batch in zip(axes[0], batches):
        for model, threads in sorted({(r["model"], r["threads"]) for r in rows
                                      if r["batch"] == batch}):
            sel = sorted((r for r in rows if (r["model"], r["threads"], r["batch"]) ==
                          (model, threads, batch)), key=lambda r: r["sparsity"])
            ax.plot([r["sparsity"] for r in sel], [r["speedup_vs_torch"] for r in sel],
                    "o-" if threads == 1 else "s--", label=f"{model}, {threads} thread(s)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"batch {batch}")
        ax.set_xlabel("sparsity (fraction of conv/linear weights zero)")
        ax.set_yscale("log")
        ax.set_yticks([0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"x{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("fscnn speed-up over PyTorch dense (median latency)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(rows, out):
    """rows as OUT.json, OUT.csv, OUT.md and (latency rows, matplotlib installed) OUT.png."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    keys = sorted({k for r in rows for k in r if k != "kernels"})
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(out + ".md", "w") as f:
        f.write(markdown_table(rows))
    written = [".json", ".csv", ".md"]
    if any("speedup_vs_torch" in r for r in rows):
        try:
            plot(rows, out + ".png")
            written.append(".png")
        except ImportError:
            print("matplotlib not installed: no plot", file=sys.stderr)
    print(f"wrote {out}{', '.join(written)}", file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--sparsity", nargs="+", type=float, default=SPARSITIES)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--compare", default="torch,onnxruntime,dense" + (
        ",deepsparse" if os.environ.get("FSCNN_DEEPSPARSE_PYTHON") else ""),
                    help="runtimes to compare with (fscnn bench --compare); deepsparse by "
                         "default where FSCNN_DEEPSPARSE_PYTHON names its interpreter")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--time", type=float, default=10.0)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds per configuration")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory (1 thread)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only measure peak memory (no latency benchmark)")
    ap.add_argument("--out", default="bench/results/models")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="run nothing: join the rows of earlier runs' JSON files into --out")
    args = ap.parse_args(argv)
    if args.merge:
        rows = []
        for path in args.merge:
            with open(path) as f:
                rows += json.load(f)
        write_outputs(rows, args.out)
        return 0
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
                    for other in ("torch", "onnxruntime", "deepsparse", "dense"):
                        if other in lat:
                            row[f"{other}_ms"] = lat[other]["median_ms"]
                            row[f"speedup_vs_{other}"] = lat[other]["fscnn_speedup"]
                    if args.memory and threads == args.threads[0]:
                        row.update(memory_row(model, sp, batch, args.input_size))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    write_outputs(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
