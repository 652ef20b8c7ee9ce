"""The ``fscnn`` command: ``fscnn bench``, ``fscnn info``, ``fscnn prune``.

Every subcommand registers itself through an ``add_<name>_parser(subparsers)`` function listed
in `SUBCOMMANDS`. User mistakes (a missing file, a bad number, an unknown model, a corrupt
archive) print one line ``fscnn: error: ...`` on stderr and exit with status 2: those are the
errors a subcommand raises as :class:`~fscnn.errors.CommandError` (the library calls that check
the user's input are wrapped in :func:`~fscnn.errors.as_command_error`), argparse's, and an
``OSError`` naming a file. Any other exception is an internal error and keeps its traceback.
"""
import argparse
import math
import os
import sys
import warnings

from . import __version__
from ._table import format_table
from .errors import CommandError, as_command_error
from .kernels import CONV_KERNELS

__all__ = ["main", "build_parser", "format_table", "CommandError", "SUBCOMMANDS"]


class _UsageError(Exception):
    """A command line that argparse rejected."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that reports errors to `main` instead of printing usage and exiting."""

    def error(self, message):
        raise _UsageError(message)


def _count(n):
    return f"{n:,}"


def _human(n, base, units):
    """``n`` in the largest of ``units`` (successive factors of ``base``) that keeps it >= 1."""
    scale = 0
    while scale + 1 < len(units) and n >= base ** (scale + 1):
        scale += 1
    return f"{n} {units[0]}".rstrip() if scale == 0 else f"{n / base ** scale:.2f} {units[scale]}"


def _bytes(n):
    return _human(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"))


def _flops(n):
    return _human(n, 1000, ("", "K", "M", "G", "T"))


def _fraction(text):
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], received {text!r}")
    return value


def _positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _floats(text):
    """argparse type: comma-separated numbers, e.g. ``0.485,0.456,0.406``."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, received "
                                         f"{text!r}") from None


def _build_model(name):
    from .bench import zoo_model
    return zoo_model(name)


def _output_positions(model, input_size):
    """Output positions per image of each convolution (Ho*Wo) and linear layer (1).

    Runs the model once on zeros of one image (``bench.input_shape``: (1, C, S, S) for the
    zoo's models, the declared input of a graph; (1, I) when a zoo model's first layer is a
    linear one) and reads each layer's input shapes from ``model.plan()``.

    Parameters
    ----------
    model : fscnn.nn.Module
    input_size : int
        S, for the free image sizes.

    Returns
    -------
    dict
        state_dict key of each layer's weight -> int, summed over the layer's input shapes.
    """
    import numpy as np

    from ._validate import sliding_output_hw
    from .bench import input_shape
    from .nn import Graph, LayerInputError

    modules = dict(model.named_modules())
    layers = [m for m in modules.values() if np.ndim(getattr(m, "weight", None)) in (2, 4)]
    if not layers:
        return {}
    weight_shape = np.shape(layers[0].weight)
    if isinstance(model, Graph):
        shape = input_shape(model, 1, input_size)
    elif len(weight_shape) == 4:
        shape = (1, getattr(layers[0], "in_channels", weight_shape[1]), input_size, input_size)
    else:
        shape = (1, weight_shape[1])
    with as_command_error(LayerInputError,
                          context=f"the model cannot run on inputs of shape {shape}"):
        model.prepare(input_shape=shape, kernel="dense")
    key_of = {id(module): key for key, (module, attribute, _) in model._state_slots().items()
              if attribute == "weight"}
    positions = {}
    for row in model.plan():
        layer = modules[row.name]
        total = 0
        for in_shape in row.kernels:
            if np.ndim(layer.weight) == 4:
                total += math.prod(sliding_output_hw(row.name, in_shape[2:], layer.kernel_size,
                                                     layer.stride, layer._pads(),
                                                     layer.dilation))
            else:  # a linear layer maps every row of (N, *, I) inputs
                total += math.prod(in_shape[1:-1])
        positions[key_of[id(layer)]] = total
    return positions


def _check_same_layers(state_dict, model_state, model_name):
    """Raise unless every weight of ``state_dict`` has the same shape in the model."""
    import numpy as np

    from .prune import prunable_names

    for name in prunable_names(state_dict):
        expected = np.shape(model_state[name]) if name in model_state else None
        if expected != np.shape(state_dict[name]):
            raise CommandError(f"the weights do not fit --model {model_name}: {name!r} has shape "
                               f"{np.shape(state_dict[name])}, the model expects "
                               f"{'no such layer' if expected is None else expected}")


def _run_info(args):
    import numpy as np

    from .bench import is_model_file, load_model_file
    from .io import ArchiveError, encoded_nbytes, load
    from .prune import prunable_names

    if is_model_file(args.target):
        if args.model:
            raise CommandError(f"{args.target} holds a whole model: --model ARCH is for "
                               "archives of weights only")
        model = load_model_file(args.target)
        state_dict = model.state_dict()
    elif os.path.isfile(args.target) or args.target.endswith(".npz"):
        with as_command_error(ArchiveError):
            state_dict = load(args.target)
        model = _build_model(args.model) if args.model else None
        if model is not None:
            _check_same_layers(state_dict, model.state_dict(), args.model)
    else:
        if args.model:
            raise CommandError(f"--model describes a .npz file; {args.target!r} is a model name "
                               "already")
        model = _build_model(args.target)
        state_dict = model.state_dict()
    positions = None if model is None else _output_positions(model, args.input_size)

    def stats(arrays):
        params = sum(a.size for a in arrays)
        nonzeros = sum(int(np.count_nonzero(a)) for a in arrays)
        return [params, nonzeros, 1.0 - nonzeros / params if params else 0.0,
                sum(a.nbytes for a in arrays), sum(encoded_nbytes(a) for a in arrays)]

    def cells(name, shape, values, flops):
        params, nonzeros, sparsity, dense, stored = values
        row = [name, shape, _count(params), _count(nonzeros), f"{sparsity:.2%}", _bytes(dense),
               _bytes(stored)]
        if positions is not None:
            row += ["", ""] if flops is None else [_flops(f) for f in flops]
        return row

    names = prunable_names(model if model is not None else state_dict)
    if model is not None:  # a quantized model's int8 weights (no pruning applies to them)
        from .quantization import quantized_weight_names
        listed = set(names) | set(quantized_weight_names(model))
        names = [name for name in state_dict if name in listed]
    rows, total_flops = [], [0, 0]
    for name in names:
        weight = np.asarray(state_dict[name])
        values = stats([weight])
        flops = None
        if positions is not None:
            if name not in positions:
                raise CommandError(f"{name!r} is not a convolution or linear layer of the model")
            flops = [2 * weight.size * positions[name], 2 * values[1] * positions[name]]
            total_flops = [t + f for t, f in zip(total_flops, flops)]
        rows.append(cells(name, "x".join(map(str, weight.shape)), values, flops))
    pruned = set(names)
    others = [np.asarray(v) for k, v in state_dict.items() if k not in pruned]
    rows += [cells("(other entries)", "", stats(others), None), None,
             cells("total", "", stats([np.asarray(v) for v in state_dict.values()]),
                   total_flops)]
    headers = ["layer", "shape", "params", "nonzeros", "sparsity", "dense bytes",
               "stored bytes"]
    if positions is not None:
        headers += [f"dense FLOPs@{args.input_size}", f"sparse FLOPs@{args.input_size}"]
    print(format_table(headers, rows, align="ll" + "r" * (len(headers) - 2)))
    if positions is None:
        print("FLOPs: pass --model ARCH to count them (an archive holds no layer geometry)")
    return 0


def _run_prune(args):
    from .bench import is_model_file, load_model_file
    from .io import ArchiveError, load, save
    from .prune import PruningWarning, format_sparsity_report, prune, sparsity_report

    if args.sparsity is None and ":" not in args.pattern:
        raise CommandError("--sparsity is required unless --pattern is N:M (e.g. 2:4)")
    keep = [name for group in args.keep for name in group.split(",") if name]
    onnx_out = args.output.lower().endswith(".onnx")
    if args.output.lower().endswith(".tflite"):
        raise CommandError("fscnn writes .onnx files (from an .onnx input) and .npz archives, "
                           "not .tflite")
    if onnx_out and not args.input.lower().endswith(".onnx"):
        raise CommandError(f"{args.output}: an .onnx output needs an .onnx input (the pruned "
                           f"weights are written into a copy of it)")
    if is_model_file(args.input):
        target = load_model_file(args.input)  # a graph, pruned in place
    else:
        with as_command_error(ArchiveError):
            target = load(args.input)
    # prune validates the options and the weights (a bad --pattern or --keep, an integer or
    # NaN weight in the user's file)
    with as_command_error(ValueError, TypeError, context=args.input), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PruningWarning)
        prune(target, args.sparsity, scope="global" if args.global_ else "layer",
              keep=keep, pattern=args.pattern, inplace=True)
    for warning in caught:
        print(f"fscnn: warning: {warning.message}", file=sys.stderr)
    if onnx_out:
        _write_pruned_onnx(args.input, target, args.output)
    else:
        save(target, args.output)  # a graph: the whole model, loadable with fscnn.load_model
    print(format_sparsity_report(sparsity_report(target)))
    print(f"wrote {args.output} ({_bytes(os.path.getsize(args.output))})")
    return 0


def _write_pruned_onnx(source, graph, path):
    """Write ``source`` (an ONNX file) with ``graph``'s pruned weights, atomically."""
    import secrets

    from .importers.onnx import replace_weights
    from .prune import prunable_names

    state = graph.state_dict()
    model = replace_weights(source, {k: state[k] for k in prunable_names(graph)})
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_info_parser(subparsers):
    """Register ``fscnn info``."""
    parser = subparsers.add_parser(
        "info", help="per-layer parameters, sparsity, storage and FLOPs",
        description="Per layer and in total: parameters, non-zeros, sparsity, bytes dense and "
                    "as stored by fscnn.io.save, and (for a model) dense and sparse FLOPs of "
                    "one image. FLOPs count 2 per multiply-add of convolution and linear "
                    "weights.")
    parser.add_argument("target", metavar="MODEL|FILE",
                        help="a model name of fscnn.models, a model file (.onnx, .tflite, or "
                             "a whole-model .npz written by fscnn.save/fscnn prune) or a .npz "
                             "archive of weights")
    parser.add_argument("--model", metavar="ARCH",
                        help="architecture of a .npz archive of weights, to count its FLOPs")
    parser.add_argument("--input-size", type=_positive_int, default=224, metavar="S",
                        help="image height and width for FLOPs (default: 224)")
    parser.set_defaults(run=_run_info)


def add_prune_parser(subparsers):
    """Register ``fscnn prune``."""
    parser = subparsers.add_parser(
        "prune", help="magnitude-prune a model file or the weights of a .npz archive",
        description="Zero the smallest-magnitude convolution and linear weights of IN and "
                    "write OUT; print a sparsity report. IN is a model file (.onnx, .tflite, "
                    "a whole-model .npz) or a .npz of weights. OUT is an .npz in fscnn's "
                    "compact archive format (a whole model when IN is one: fscnn bench and "
                    "fscnn.load_model take it) or, for an .onnx IN, an .onnx file any ONNX "
                    "runtime loads.")
    parser.add_argument("input", metavar="IN",
                        help="what to prune: an .onnx, .tflite or whole-model .npz file, or a "
                             ".npz of named arrays (np.savez of a state_dict) / fscnn archive")
    parser.add_argument("output", metavar="OUT",
                        help="where to write the result: .npz (fscnn archive; read weights "
                             "with fscnn.load, models with fscnn.load_model) or .onnx (for an "
                             ".onnx IN)")
    parser.add_argument("--sparsity", type=_fraction, metavar="S",
                        help="fraction of weights to zero, in [0, 1] (implied by N:M)")
    parser.add_argument("--global", dest="global_", action="store_true",
                        help="one magnitude threshold over all layers (default: per layer)")
    parser.add_argument("--keep", action="append", default=[], metavar="NAME,...",
                        help="layers or weights kept dense, fnmatch patterns allowed "
                             "(e.g. features.0,classifier.6); repeatable")
    parser.add_argument("--pattern", default="unstructured", metavar="P",
                        help="unstructured (default), N:M such as 2:4, or RxC blocks such as "
                             "4x1 (R output by C input channels at a tap; 4x1 blocks run on "
                             "the block kernel)")
    parser.set_defaults(run=_run_prune)


def _run_bench(args):
    from . import bench
    compare = None if args.compare is None else [c for c in args.compare.split(",") if c]
    sparsity = "default" if args.sparsity is None else args.sparsity
    report = bench.run(args.target, arch=args.model, sparsity=sparsity, batch=args.batch,
                       threads=args.threads, input_size=args.input_size, warmup=args.warmup,
                       iterations=args.iterations, seconds=args.time, compare=compare,
                       per_layer=args.per_layer, kernel=args.kernel,
                       keep=[n for group in args.keep for n in group.split(",") if n],
                       seed=args.seed, pattern=args.pattern)
    if args.json:
        bench.write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0 if report["check"]["ok"] else 1


def add_bench_parser(subparsers):
    """Register ``fscnn bench``."""
    parser = subparsers.add_parser(
        "bench", help="time a pruned model against PyTorch and the dense path (the main job)",
        description="Build MODEL (default vgg16, random weights, pruned to 90%) or load a "
                    "model file or WEIGHTS.npz (measured as given), prune to --sparsity by "
                    "magnitude when given, check fscnn's output against the model's own "
                    "runtime (PyTorch for the zoo, ONNX Runtime for an .onnx file, LiteRT for "
                    "a .tflite file; fscnn's dense path otherwise), then time fscnn and the "
                    "comparisons round-robin on the same input and print latency statistics "
                    "and speed-ups.")
    parser.add_argument("target", nargs="?", default="vgg16", metavar="MODEL|FILE",
                        help="a model name of fscnn.models, a model file (.onnx, .tflite, or a "
                             "whole-model .npz written by fscnn.save/fscnn prune) or a .npz "
                             "archive of weights with --model (default: vgg16)")
    parser.add_argument("--model", metavar="ARCH",
                        help="architecture of a .npz archive of weights")
    parser.add_argument("--sparsity", type=_fraction, metavar="S",
                        help="magnitude-prune every conv/linear weight to this fraction of "
                             "zeros (default: 0.9 for a model name, whose weights are random; "
                             "the weights of a .npz archive are measured as given)")
    parser.add_argument("--keep", action="append", default=[], metavar="NAME,...",
                        help="layers kept dense when pruning; repeatable")
    parser.add_argument("--pattern", default="unstructured", metavar="P",
                        help="what --sparsity prunes: unstructured (default), N:M such as 2:4, "
                             "or RxC blocks such as 4x1 (4 output channels at a tap, which "
                             "the block kernel runs)")
    parser.add_argument("--batch", type=_positive_int, default=1, metavar="N",
                        help="images per call (default 1)")
    parser.add_argument("--threads", type=_positive_int, metavar="T",
                        help="threads for fscnn and every comparison (default: all usable cores)")
    parser.add_argument("--input-size", type=_positive_int, default=224, metavar="H",
                        help="image height and width: the input is (N, 3, H, H), or a model "
                             "file's declared input with its free sizes set to H (default 224)")
    parser.add_argument("--warmup", type=int, default=2, metavar="W", help="untimed rounds")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--iterations", type=_positive_int, metavar="I", help="timed rounds")
    group.add_argument("--time", type=float, default=10.0, metavar="SEC",
                       help="time budget of the timed rounds when --iterations is not given "
                            "(default 10)")
    parser.add_argument("--compare", metavar="LIST",
                        help="comparisons among torch, onnxruntime, litert, deepsparse, "
                             "dense (default: torch,dense for a zoo model; onnxruntime,dense "
                             "for an .onnx file, run by ONNX Runtime with the same pruned "
                             "weights; litert,dense for a .tflite file; dense for an .npz "
                             "model). deepsparse runs DeepSparse 1.8 on the same weights in "
                             "the interpreter that FSCNN_DEEPSPARSE_PYTHON names (a venv of "
                             "its own)")
    parser.add_argument("--kernel", choices=CONV_KERNELS,
                        default="auto",
                        help="fscnn's kernel choice per layer (default auto: timed; winograd: "
                             "on 3x3 stride-1 convolutions, depthwise: on depthwise "
                             "convolutions, block_sparse: on convolutions, auto elsewhere)")
    parser.add_argument("--per-layer", action="store_true",
                        help="add a per-layer table: shape, sparsity, kernel, time, GFLOP/s")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of a zoo model's random weights and of the input (default 0)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")
    parser.set_defaults(run=_run_bench)


def _run_predict(args):
    from . import predict
    report = predict.run(args.target, args.input, args.out, arch=args.model,
                         batch_size=args.batch_size, workers=args.workers,
                         scheduler=args.scheduler, threads=args.threads,
                         input_size=args.input_size, channels=args.channels, mean=args.mean,
                         std=args.std, top_k=args.top_k, strict=args.strict)
    print(f"wrote {report['out']}: outputs of shape {report['output_shape']}, "
          f"{report['images_per_second']:.1f} images/s")
    if report["top_k_out"]:
        print(f"wrote {report['top_k_out']}: the top {args.top_k} classes of each image")
    return 0


def add_predict_parser(subparsers):
    """Register ``fscnn predict``."""
    parser = subparsers.add_parser(
        "predict", help="run a model over a .npy array or a folder of images, in this process "
                        "or on a Dask cluster",
        description="Run MODEL on every image of INPUT (a .npy float array (N, C, H, W), or a "
                    "folder of JPEG/PNG images, resized and centre-cropped to --input-size "
                    "and normalised) and write the outputs (N, ...) to OUT (.npy), with "
                    "--top-k also a CSV of file, class, score. Runs in this process, on a new "
                    "local Dask cluster (--workers) or on a running one (--scheduler). "
                    "Corrupt images are reported and skipped (--strict: fail); outputs are "
                    "renamed into place only when complete.")
    parser.add_argument("target", metavar="MODEL|FILE",
                        help="as for fscnn bench: a model name of fscnn.models, a model file "
                             "(.onnx, .tflite, whole-model .npz) or a .npz of weights with "
                             "--model")
    parser.add_argument("input", metavar="INPUT", help="a .npy array (N, C, H, W) or a folder "
                                                       "of images")
    parser.add_argument("--out", required=True, metavar="OUT.npy", help="outputs, in input order")
    parser.add_argument("--model", metavar="ARCH",
                        help="architecture of a .npz archive of weights")
    parser.add_argument("--batch-size", type=_positive_int, default=32, metavar="B",
                        help="images per model call (and per Dask chunk) (default 32)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, metavar="N",
                       help="run on a new local Dask cluster of N worker processes (needs "
                            "fscnn[dask])")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask cluster of this scheduler, e.g. tcp://host:8786")
    parser.add_argument("--threads", type=_positive_int, metavar="T",
                        help="kernel threads: of this process, or of each --workers worker "
                             "(default: all usable cores in process, 1 per worker)")
    parser.add_argument("--input-size", type=_positive_int, metavar="H",
                        help="folders: crop the images to H x H (default 224)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3,
                        help="folders: 3 (RGB, default) or 1 (grey-scale)")
    parser.add_argument("--mean", type=_floats, metavar="M,...",
                        help="folders: per-channel mean of (x / 255 - mean) / std (default "
                             "ImageNet's 0.485,0.456,0.406)")
    parser.add_argument("--std", type=_floats, metavar="S,...",
                        help="folders: per-channel std (default ImageNet's 0.229,0.224,0.225)")
    parser.add_argument("--top-k", type=_positive_int, metavar="K",
                        help="also write OUT with .csv: the K largest outputs of each image "
                             "(file, class, score)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on a corrupt image instead of skipping it")
    parser.set_defaults(run=_run_predict)


# The subcommands, in the order ``fscnn --help`` lists them. To add one, write
# ``add_<name>_parser(subparsers)`` like the functions above: ``subparsers.add_parser(...)``,
# its arguments, and ``set_defaults(run=handler)`` where ``handler(args) -> int`` prints its
# output and raises CommandError (or OSError for a file) for user mistakes; then append it here.
SUBCOMMANDS = [add_bench_parser, add_info_parser, add_prune_parser, add_predict_parser]


def build_parser():
    """The ``fscnn`` argument parser with every subcommand of `SUBCOMMANDS`."""
    parser = _Parser(prog="fscnn", description="Fast inference of pruned CNNs on CPUs.")
    parser.add_argument("--version", action="version", version=f"fscnn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv=None):
    """Run the ``fscnn`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 for a user mistake (reported as one line on stderr).
    """
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version print and exit
            return exc.code if isinstance(exc.code, int) else 0
        return args.run(args)
    except OSError as exc:  # a file the user named cannot be read or written
        if not exc.filename:
            raise
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.strerror else exc)
    except (_UsageError, CommandError) as exc:
        return _fail(exc)


def _fail(message):
    text = " ".join(str(message).split())
    print(f"fscnn: error: {text}", file=sys.stderr)
    return 2
