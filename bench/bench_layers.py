"""Per-layer benchmark: fscnn sparse, dense and Winograd vs PyTorch dense, side by side in one run.

Layer shapes come from VGG16, ResNet-50 and MobileNetV2 at 224x224, batch 1. For each layer and
sparsity the kernels (Winograd only on 3x3 stride-1 layers) run on the same weights
(magnitude-free random pruning) and the same input, interleaved (one call of each per round),
and the report gives median time, min-max spread, effective GFLOP/s (2 * nnz * H_out * W_out * N
/ time for sparse, all weights for dense, Winograd and torch) and the speed-ups.

    python bench/bench_layers.py --models vgg16 --sparsity 0.9 --threads 1
    python bench/bench_layers.py --json bench/results/layers.json
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import fscnn
from fscnn import _config
from fscnn._memory import aligned_empty
from fscnn.ops import Conv2dOp

# (name, C_in, C_out, kernel, stride, padding, groups, input H=W)
VGG16 = [
    ("vgg16.conv1_2", 64, 64, 3, 1, 1, 1, 224),
    ("vgg16.conv2_1", 64, 128, 3, 1, 1, 1, 112),
    ("vgg16.conv2_2", 128, 128, 3, 1, 1, 1, 112),
    ("vgg16.conv3_1", 128, 256, 3, 1, 1, 1, 56),
    ("vgg16.conv3_2", 256, 256, 3, 1, 1, 1, 56),
    ("vgg16.conv4_1", 256, 512, 3, 1, 1, 1, 28),
    ("vgg16.conv4_2", 512, 512, 3, 1, 1, 1, 28),
    ("vgg16.conv5_1", 512, 512, 3, 1, 1, 1, 14),
]
RESNET50 = [
    ("resnet50.l1.conv1", 64, 64, 1, 1, 0, 1, 56),
    ("resnet50.l1.conv2", 64, 64, 3, 1, 1, 1, 56),
    ("resnet50.l1.conv3", 64, 256, 1, 1, 0, 1, 56),
    ("resnet50.l2.conv1", 256, 128, 1, 1, 0, 1, 56),
    ("resnet50.l2.conv2", 128, 128, 3, 2, 1, 1, 56),
    ("resnet50.l2.conv3", 128, 512, 1, 1, 0, 1, 28),
    ("resnet50.l2.conv2b", 128, 128, 3, 1, 1, 1, 28),
    ("resnet50.l3.conv1", 512, 256, 1, 1, 0, 1, 28),
    ("resnet50.l3.conv2", 256, 256, 3, 1, 1, 1, 14),
    ("resnet50.l3.conv3", 256, 1024, 1, 1, 0, 1, 14),
    ("resnet50.l4.conv1", 1024, 512, 1, 1, 0, 1, 14),
    ("resnet50.l4.conv2", 512, 512, 3, 1, 1, 1, 7),
    ("resnet50.l4.conv3", 512, 2048, 1, 1, 0, 1, 7),
]
MOBILENETV2 = [
    ("mbv2.stem", 3, 32, 3, 2, 1, 1, 224),
    ("mbv2.b1.dw", 32, 32, 3, 1, 1, 32, 112),
    ("mbv2.b2.expand", 16, 96, 1, 1, 0, 1, 112),
    ("mbv2.b2.dw", 96, 96, 3, 2, 1, 96, 112),
    ("mbv2.b4.project", 144, 32, 1, 1, 0, 1, 28),
    ("mbv2.b8.expand", 64, 384, 1, 1, 0, 1, 14),
    ("mbv2.b15.dw", 960, 960, 3, 1, 1, 960, 7),
    ("mbv2.last", 320, 1280, 1, 1, 0, 1, 7),
]
MODELS = {"vgg16": VGG16, "resnet50": RESNET50, "mobilenet_v2": MOBILENETV2}


def prune_random(w, sparsity, rng):
    w = w.copy()
    flat = w.reshape(-1)
    flat[rng.permutation(flat.size)[:int(round(sparsity * flat.size))]] = 0.0
    return w


def median_spread(fns, reps, warmup):
    """{key: (median, min, max) seconds} of the callables in ``fns``, run interleaved: each
    round calls every candidate once, so machine noise hits them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ts = {key: [] for key in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[key].append(time.perf_counter() - t0)
    return {key: (float(np.median(v)), float(np.min(v)), float(np.max(v)))
            for key, v in ts.items()}


def run(args):
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch not installed: PyTorch column omitted", file=sys.stderr)
    rng = np.random.default_rng(0)
    rows = []
    layers = [layer for m in args.models for layer in MODELS[m]
              if not args.layers or any(sub in layer[0] for sub in args.layers)]
    for threads in args.threads:
        if torch is not None:
            torch.set_num_threads(threads)
        with _config.threads(threads):
            for name, cin, cout, k, s, p, g, hw in layers:
                # in a model every layer's input is the 64-byte aligned output of an fscnn op
                x = aligned_empty((args.batch, cin, hw, hw))
                x[...] = rng.standard_normal(x.shape, dtype=np.float32)
                w0 = rng.standard_normal((cout, cin // g, k, k), dtype=np.float32)
                for sp in args.sparsity:
                    w = prune_random(w0, sp, rng)
                    sparse = Conv2dOp(w, None, s, p, 1, g, kernel="sparse")
                    dense = Conv2dOp(w, None, s, p, 1, g, kernel="dense")
                    cands = {"sparse": lambda: sparse(x), "dense": lambda: dense(x)}
                    if k == 3 and s == 1 and g == 1:
                        wino = Conv2dOp(w, None, s, p, 1, g, kernel="winograd")
                        cands["winograd"] = lambda: wino(x)
                    if torch is not None:
                        xt, wt = torch.from_numpy(x), torch.from_numpy(w)

                        def torch_fn():
                            with torch.no_grad():
                                torch.nn.functional.conv2d(xt, wt, None, s, p, 1, g)
                        cands["torch"] = torch_fn
                    res = median_spread(cands, args.reps, args.warmup)
                    ho = sparse.output_shape(x.shape)[2]
                    dense_flop = 2.0 * w.size * ho * ho * args.batch
                    nnz_flop = 2.0 * np.count_nonzero(w) * ho * ho * args.batch
                    row = {"layer": name, "shape": f"{cin}->{cout} k{k} s{s} g{g} {hw}x{hw}",
                           "kernel_size": k, "sparsity": sp, "threads": threads, "batch": args.batch}
                    for key, (med, lo, hi) in res.items():
                        flop = nnz_flop if key == "sparse" else dense_flop
                        row[f"{key}_ms"] = med * 1e3
                        row[f"{key}_spread_ms"] = [lo * 1e3, hi * 1e3]
                        row[f"{key}_gflops"] = flop / med / 1e9
                    row["sparse_vs_dense"] = res["dense"][0] / res["sparse"][0]
                    if "torch" in res:
                        row["sparse_vs_torch"] = res["torch"][0] / res["sparse"][0]
                        row["dense_vs_torch"] = res["torch"][0] / res["dense"][0]
                        row["efficiency"] = row["sparse_gflops"] / row["torch_gflops"]
                        if "winograd" in res:
                            row["winograd_vs_torch"] = res["torch"][0] / res["winograd"][0]
                    rows.append(row)
                    print_row(row)
    return rows


def print_row(row):
    t = row.get("torch_ms")
    print(f"{row['layer']:<20} {row['shape']:<28} s={row['sparsity']:<5} T={row['threads']} "
          f"sparse {row['sparse_ms']:8.2f}ms ({row['sparse_gflops']:6.1f} GF/s) "
          f"dense {row['dense_ms']:8.2f}ms ({row['dense_gflops']:6.1f}) "
          + (f"wino {row['winograd_ms']:8.2f}ms ({row['winograd_gflops']:6.1f}) "
             if "winograd_ms" in row else "")
          + (f"torch {t:8.2f}ms ({row['torch_gflops']:6.1f})  sparse/torch x{row['sparse_vs_torch']:.2f}"
             f"  eff {row['efficiency']:.0%}" if t is not None else ""), flush=True)


def _geomean(values):
    return float(np.exp(np.mean(np.log(values))))


def summary(rows):
    """Geometric means per model, sparsity and thread count, over all its layers and over its
    layers of each kernel size (the issue's targets name VGG16's 3x3 and ResNet-50's 1x1)."""
    print("\nGeometric-mean speed-up of fscnn sparse over PyTorch dense, per model group:")
    keys = sorted({(r["layer"].split(".")[0], r["sparsity"], r["threads"]) for r in rows})
    for model, sp, th in keys:
        sel = [r for r in rows if r["layer"].startswith(model + ".") and r["sparsity"] == sp
               and r["threads"] == th and "sparse_vs_torch" in r]
        sizes = sorted({r["kernel_size"] for r in sel})
        groups = [("all", sel)] + ([(f"{k}x{k}", [r for r in sel if r["kernel_size"] == k])
                                    for k in sizes] if len(sizes) > 1 else [])
        for label, group in groups:
            if not group:
                continue
            gm = _geomean([r["sparse_vs_torch"] for r in group])
            best = _geomean([max(r["sparse_vs_torch"], r["dense_vs_torch"],
                                 r.get("winograd_vs_torch", 0.0)) for r in group])
            eff = _geomean([r["efficiency"] for r in group])
            print(f"  {model:<14} {label:<4} sparsity {sp:<5} threads {th}: sparse x{gm:.2f}, "
                  f"best-of(sparse,dense,winograd) x{best:.2f}, efficiency {eff:.0%} "
                  f"({len(group)} layers)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sparsity", nargs="+", type=float, default=[0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, _config.usable_cpus()])
    ap.add_argument("--layers", nargs="+", help="only layers whose name contains one of these")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="write rows and machine facts to this file")
    args = ap.parse_args(argv)
    rows = run(args)
    summary(rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": platform.processor(),
                       "config": _config.config_dict(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
