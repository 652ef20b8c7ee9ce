"""Thread scaling in one process (issue #14, item 1): a zoo model with random weights pruned to
--sparsity, prepared for each thread count, then called round-robin at each count (median of
--iterations calls), so that a noisy shared machine slows every count alike. Prints ms per
call per thread count and the speed-up over the first count.

    python bench/bench_threads.py
    python bench/bench_threads.py --models vgg16 resnet50 --threads 1 2 4 8 16
"""
import argparse
import time

import numpy as np

import fscnn
import fscnn.models
import fscnn.nn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iterations", type=int, default=8)
    args = ap.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size),
                                                 dtype=np.float32)
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.sparsity:.0%} sparsity, SIMD "
          f"{fscnn.get_simd_level()}; median of {args.iterations} round-robin calls")
    for name in args.models:
        fscnn.nn.manual_seed(0)
        model = fscnn.models.get_model(name)
        fscnn.prune(model, args.sparsity, inplace=True)
        model.to_sparse()
        for t in args.threads:  # plans are per thread count: make each before timing
            fscnn.set_num_threads(t)
            model.prepare(x.shape)
            model(x)
        times = {t: [] for t in args.threads}
        for _ in range(args.iterations):
            for t in args.threads:
                fscnn.set_num_threads(t)
                t0 = time.perf_counter()
                model(x)
                times[t].append(time.perf_counter() - t0)
        base = np.median(times[args.threads[0]])
        print(f"{name:12s} " + "  ".join(
            f"{t} threads {1e3 * np.median(times[t]):7.1f} ms (x{base / np.median(times[t]):.2f})"
            for t in args.threads))


if __name__ == "__main__":
    main()
