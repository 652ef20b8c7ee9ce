"""The sparse linear kernel's two paths against the dense one, per batch size (issue #14,
item 3): the gather path (one pass per vector) and the batched path (x transposed, broadcast
FMAs over the batch; from fscnn.kernels.sparse_linear.BATCH_MIN vectors), side by side in one
process, one thread, best of --repeats calls, with each path's error against float64.

    python bench/bench_sparse_linear.py
    python bench/bench_sparse_linear.py --batches 1 8 64 --repeats 10
"""
import argparse
import time

import numpy as np

import fscnn
from fscnn.kernels import sparse_linear
from fscnn.ops import LinearOp

LAYERS = [(4096, 25088, 0.9), (1000, 2048, 0.9), (4096, 4096, 0.97)]  # VGG16 fc6, ResNet fc, ...


def best_ms(op, x, repeats):
    op(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        op(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    fscnn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    default_min = sparse_linear.BATCH_MIN
    print(f"ms, best of {args.repeats}, {args.threads} thread(s); error = max |y - ref| / max |ref|")
    for O, n_in, sparsity in LAYERS:
        w = rng.standard_normal((O, n_in)).astype(np.float32)
        w[rng.random(w.shape) < sparsity] = 0
        b = rng.standard_normal(O).astype(np.float32)
        dense = LinearOp(w, b, kernel="dense")
        for N in args.batches:
            x = rng.standard_normal((N, n_in)).astype(np.float32)
            ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
            row = []
            for path, minimum in (("gather", 10 ** 9), ("batched", 1)):
                sparse_linear.BATCH_MIN = minimum  # plans are made with the setting in force
                op = LinearOp(w, b, kernel="sparse")
                err = np.abs(op(x) - ref).max() / np.abs(ref).max()
                row.append(f"{path} {best_ms(op, x, args.repeats):8.2f} (err {err:.1e})")
            sparse_linear.BATCH_MIN = default_min
            row.append(f"dense {best_ms(dense, x, args.repeats):8.2f}")
            print(f"{O}x{n_in} at {sparsity:.0%}, N={N:3d}: " + " | ".join(row))


if __name__ == "__main__":
    main()
