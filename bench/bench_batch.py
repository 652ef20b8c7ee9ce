"""Images/s against batch size, 1 to 64, for one pruned model (issue #14, item 3: at batch 8
at least 1.3x batch 1's images/s on one thread for ResNet-50 at 90%, ahead of DeepSparse, and
no throughput cliff at any batch size from 1 to 64).

Each batch size runs ``fscnn bench`` in a fresh process (see bench_models.py: fscnn and the
``--compare`` runtimes timed round-robin on the same weights; DeepSparse 1.8 too where
``FSCNN_DEEPSPARSE_PYTHON`` names the python of a venv that has it, see BENCHMARKING.md).
Writes OUT.json, OUT.md (images/s per runtime, fscnn's images/s over its batch-1 figure and
over each runtime's) and, with matplotlib, OUT.png (images/s vs batch, log-log). A cliff is a
batch size whose fscnn images/s is below 0.9x the best of the smaller batch sizes; the report
names each.

    python bench/bench_batch.py                                   # ResNet-50, 90%, 1 thread
    python bench/bench_batch.py --model mobilenet_v2 --batches 1 8 32 --threads 2
"""
import argparse
import json
import os
import sys

from bench_models import bench_one

NAMES = {"fscnn": "fscnn", "torch": "PyTorch", "onnxruntime": "ONNX Runtime",
         "deepsparse": "DeepSparse", "dense": "fscnn dense"}
CLIFF = 0.9  # images/s below this fraction of the best smaller batch's is a cliff


def images_per_s(report, batch):
    """images/s of each runtime of one ``fscnn bench`` report."""
    return {k: batch * 1e3 / v["median_ms"] for k, v in report["latency"].items()}


def cliffs(rows):
    """The batch sizes whose fscnn images/s fall below CLIFF x the best smaller batch's."""
    found, best = [], 0.0
    for r in sorted(rows, key=lambda r: r["batch"]):
        ips = r["images_per_s"]["fscnn"]
        if best and ips < CLIFF * best:
            found.append({"batch": r["batch"], "images_per_s": ips, "best_before": best})
        best = max(best, ips)
    return found


def markdown(rows, header):
    runtimes = [k for k in NAMES if any(k in r["images_per_s"] for r in rows)]
    others = [k for k in runtimes if k != "fscnn"]
    head = (["batch"] + [f"{NAMES[k]} images/s" for k in runtimes] + ["fscnn / batch 1"]
            + [f"fscnn / {NAMES[k]}" for k in others])
    base = min(rows, key=lambda r: r["batch"])["images_per_s"]["fscnn"]
    lines = [header, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: r["batch"]):
        ips = r["images_per_s"]
        cells = ([str(r["batch"])] + [f"{ips[k]:.1f}" if k in ips else "-" for k in runtimes]
                 + [f"x{ips['fscnn'] / base:.2f}"]
                 + [f"x{ips['fscnn'] / ips[k]:.2f}" if k in ips else "-" for k in others])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(rows, key=lambda r: r["batch"])
    fig, ax = plt.subplots(figsize=(7, 5))
    for k in NAMES:
        sel = [r for r in rows if k in r["images_per_s"]]
        if sel:
            ax.plot([r["batch"] for r in sel], [r["images_per_s"][k] for r in sel],
                    "o-" if k == "fscnn" else "s--", label=NAMES[k])
    from matplotlib.ticker import FuncFormatter
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xticks([r["batch"] for r in rows], [str(r["batch"]) for r in rows])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (median call)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--compare", default="onnxruntime" + (
        ",deepsparse" if os.environ.get("FSCNN_DEEPSPARSE_PYTHON") else ""),
                    help="runtimes to compare with (fscnn bench --compare)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--time", type=float, default=10.0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per batch size")
    ap.add_argument("--out", default="bench/results/batch")
    args = ap.parse_args(argv)
    rows = []
    for batch in args.batches:
        report = bench_one(args.model, args.sparsity, args.threads, batch, args)
        rows.append({"batch": batch, "images_per_s": images_per_s(report, batch),
                     "kernels": report["kernels"], "check": report["check"]["max_rel_error"],
                     "date": report["date"], "cpu": report["cpu"]})
        print(json.dumps(rows[-1]), flush=True)
    title = (f"{args.model} at {args.sparsity:.0%}, {args.threads} thread(s), "
             f"{args.input_size}x{args.input_size}, {rows[0]['cpu']}")
    found = cliffs(rows)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "rows": rows, "cliffs": found}, f, indent=1)
    table = markdown(rows, title)
    with open(args.out + ".md", "w") as f:
        f.write(table)
    print(table)
    print("cliffs (fscnn images/s below "
          f"{CLIFF:.0%} of a smaller batch's): "
          + (", ".join(f"batch {c['batch']} ({c['images_per_s']:.1f} vs "
                       f"{c['best_before']:.1f})" for c in found) or "none"))
    try:
        plot(rows, title, args.out + ".png")
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
