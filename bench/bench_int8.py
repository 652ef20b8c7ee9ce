"""INT8 against float32 (issue #17): a zoo model with random weights magnitude-pruned to
--sparsity (in --pattern), its float32 form held sparse and its INT8 form from
``fscnn.quantize`` (calibrated on random inputs), both prepared with kernel='auto' and timed
round-robin in one process: median ms per call, images/s and the largest difference of the
outputs relative to the float32 ones. On a CPU with AVX512-VNNI, the INT8 model also runs at
the AVX2 level (vpmaddwd + add, what the AVX-512 level runs without VNNI), in the same round.

With ``--ort``, ONNX Runtime runs the same pruned float32 weights (exported through the torch
reference model) and its own static INT8 quantization of them (``quant_pre_process``, then
``quantize_static``: QDQ, per-channel int8 weights, uint8 activations, calibrated on the same
batches) in the same round.

    python bench/bench_int8.py
    python bench/bench_int8.py --models resnet50 vgg16 --batch 16 --pattern 1x2
    python bench/bench_int8.py --ort           # needs torch, onnx, onnxruntime
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
    ap.add_argument("--ort", action="store_true",
                    help="also time ONNX Runtime float32 and its static INT8 quantization")
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
        if args.ort:
            runs += _ort_runs(name, model, calibration, x, args.threads)
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
        for key in ("ONNX Runtime float32", "ONNX Runtime int8"):
            if key in times:
                t = 1e3 * np.median(times[key])
                print(f"{'':12s} {key} {t:8.1f} ms: fscnn int8 x{t / i8:4.2f} its speed")


def _ort_runs(name, model, calibration, x, threads):
    """[(label, callable, None)] for ONNX Runtime float32 and static INT8 on ``model``'s
    weights."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fscnn.bench import onnx_of_torch, ort_session, torch_model
    onnx = onnx_of_torch(torch_model(name, model.state_dict()), x)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": b[i:i + len(x)]} for b in calibration
                                 for i in range(0, len(b), len(x))])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = f"{tmp}/f32.onnx", f"{tmp}/pre.onnx", f"{tmp}/int8.onnx"
        with open(src, "wb") as f:
            f.write(onnx)
        quant_pre_process(src, pre)  # ONNX Runtime's recommended step: shapes, fusions
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        f32, i8 = ort_session(onnx, threads), ort_session(dst, threads)
    return [("ONNX Runtime float32", lambda _x: f32.run(None, {"x": _x}), None),
            ("ONNX Runtime int8", lambda _x: i8.run(None, {"x": _x}), None)]


if __name__ == "__main__":
    main()
