"""fscnn: fast inference of pruned convolutional networks on CPUs.

Sparse weight formats and direct sparse convolution kernels (Cython + C micro-kernels),
a torch.nn-like layer graph that loads torchvision-style checkpoints from ``.npz`` archives,
a model zoo, pruning tools and a benchmark CLI. Runtime dependencies: numpy and scipy.
"""
__version__ = "0.1.0"

from ._config import (get_num_threads, get_simd_level, set_adaptive_threads, set_num_threads,
                      set_simd_level, show_config)
from . import functional, models, nn, ops, prune, sparse  # noqa: E402  (after the config)
from .convert import from_torch
from .importers import ModelImportError, from_onnx, from_tflite
from .io import load, load_model, save
from .quantization import quantize

__all__ = ["__version__", "get_num_threads", "set_num_threads", "set_adaptive_threads",
           "get_simd_level", "set_simd_level", "show_config", "functional", "models", "nn", "ops", "prune",
           "sparse", "from_torch", "from_onnx", "from_tflite", "ModelImportError", "load", "load_model", "save",
           "quantize"]
