"""INT8 against float32 (issue #17): a zoo model with random weights magnitude-pruned to
--sparsity (in --pattern), its float32 form held sparse and its INT8 form from
``fscnn.quantize`` (calibrated on random inputs), both prepared with kernel='auto' and timed
round-robin in one process: median ms per call, images/s and the largest difference of the
outputs relative to the float32 ones. On a CPU with AVX512-VNNI, the INT8 model also runs at
the AVX2 level (vpmaddwd + add, what the AVX-512 level runs without VNNI), in the same round.

    python bench/bench_int8.py
    python bench/bench_int8.py --models resnet50 vgg16 --batch 16 --pattern 1x2
"""
import argparse
import time

import numpy as np

import fscnn
import fscnn.models
import fscnn.nn
from fscnn._ext import _int8


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50"])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iterations", type=int, default=7)
    args = ap.parse_args(argv)
    fscnn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    shape = (args.batch, 3, args.size, args.size)
    print(f"{args.threads} thread(s), batch {args.batch}, {args.size}x{args.size}, "
          f"{args.sparsity:.0%} {args.pattern}, SIMD {fscnn.get_simd_level()}; median of "
          f"{args.iterations} round-robin calls")
    for name in args.models:
        fscnn.nn.manual_seed(0)
        model = fscnn.models.get_model(name)
        fscnn.prune(model, args.sparsity, pattern=args.pattern, inplace=True)
        calibration = [rng.standard_normal((2,) + shape[1:], dtype=np.float32)
                       for _ in range(2)]
        qmodel = fscnn.quantize(model, calibration)
        model.to_sparse()
        x = rng.standard_normal(shape, dtype=np.float32)
        model.prepare(shape)
        qmodel.prepare(shape)
        ref, y = model(x), qmodel(x)
        diff = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
        runs = [("float32", model, None), ("int8", qmodel, None)]
        level = fscnn.get_simd_level()
        if level == "avx512" and _int8.vnni():
            runs.append(("int8 without VNNI", qmodel, "avx2"))
            fscnn.set_simd_level("avx2")
            qmodel.prepare(shape)
            fscnn.set_simd_level(level)
        times = {key: [] for key, _, _ in runs}
        for _ in range(args.iterations):
            for key, m, at in runs:
                fscnn.set_simd_level(at or level)
                t0 = time.perf_counter()
                m(x)
                times[key].append(time.perf_counter() - t0)
        fscnn.set_simd_level(level)
        f32, i8 = (1e3 * np.median(times[k]) for k in ("float32", "int8"))
        print(f"{name:12s} float32 {f32:8.1f} ms  int8 {i8:8.1f} ms  x{f32 / i8:4.2f}  "
              f"int8 {args.batch * 1e3 / i8:6.1f} images/s  max|int8 - float32| / "
              f"max|float32| {diff:.1e}")
        if "int8 without VNNI" in times:
            plain = 1e3 * np.median(times["int8 without VNNI"])
            print(f"{'':12s} int8 without VNNI {plain:8.1f} ms: VNNI x{plain / i8:4.2f}")


if __name__ == "__main__":
    main()
