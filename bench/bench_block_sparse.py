"""Block sparsity against unstructured sparsity at the same sparsity (issue #17, item 1): whole
models pruned by magnitude with ``pattern="unstructured"``, ``"4x1"`` (blocks of 4 output
channels at one tap, which the block kernel runs: one loaded input vector feeds 4 FMAs) and
``"1x4"`` (blocks of 4 input channels, which no float kernel exploits), each prepared with
``kernel='auto'`` and timed round-robin in one process (median of --iterations calls per
model). Prints ms per call, the speed-up over unstructured and the kernels 'auto' chose.

    python bench/bench_block_sparse.py
    python bench/bench_block_sparse.py --models vgg16 --patterns unstructured 4x1 --threads 2
"""
import argparse
import collections
import time

import numpy as np

import fscnn
import fscnn.models
import fscnn.nn


def build(name, sparsity, pattern, shape):
    fscnn.nn.manual_seed(0)  # the same dense weights for every pattern
    model = fscnn.models.get_model(name)
    fscnn.prune(model, sparsity, pattern=pattern, keep=[], inplace=True)
    model.to_sparse()
    model.prepare(shape)
    kernels = collections.Counter(k for row in model.plan() for k in row.kernels.values())
    return model, dict(kernels)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    ap.add_argument("--patterns", nargs="+", default=["unstructured", "4x1", "1x4"])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args(argv)
    fscnn.set_num_threads(args.threads)
    shape = (args.batch, 3, args.size, args.size)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    print(f"{args.threads} thread(s), batch {args.batch}, {args.size}x{args.size}, "
          f"{args.sparsity:.0%} sparsity, SIMD {fscnn.get_simd_level()}; median ms of "
          f"{args.iterations} round-robin calls")
    for name in args.models:
        models = {p: build(name, args.sparsity, p, shape) for p in args.patterns}
        times = {p: [] for p in args.patterns}
        for model, _ in models.values():
            model(x)  # warm-up
        for _ in range(args.iterations):
            for p, (model, _) in models.items():
                t0 = time.perf_counter()
                model(x)
                times[p].append(time.perf_counter() - t0)
        base = np.median(times[args.patterns[0]])
        for p, (model, kernels) in models.items():
            ms = 1e3 * np.median(times[p])
            print(f"{name:10s} {p:13s} {ms:8.1f} ms  x{base * 1e3 / ms:4.2f} of "
                  f"{args.patterns[0]}   kernels {kernels}")


if __name__ == "__main__":
    main()
