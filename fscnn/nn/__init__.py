"""The layer graph: torch.nn-style modules that run on NumPy arrays.

Layers keep torch.nn's constructor signatures, attribute names and ``state_dict`` keys, so a
model written here loads a torch checkpoint saved as ``.npz`` (``np.savez(path, **{k:
v.numpy() for k, v in torch_model.state_dict().items()})``) with ``load_state_dict``.
Calling a module runs its prepared plan: batch norms folded into convolutions, ReLUs fused
into kernel epilogues and weights converted once to sparse form (:meth:`Module.prepare`,
:meth:`Module.plan`). Inference only: there are no gradients and no training mode.
"""
from ._plan import LayerPlan, LayerTime, PlanReport, profile
from .activation import (ELU, GELU, Hardsigmoid, Hardswish, LeakyReLU, LocalResponseNorm,
                         LogSoftmax, PReLU, ReLU, ReLU6, Sigmoid, SiLU, Softmax, Tanh)
from .container import ModuleList, Sequential
from .errors import LayerInputError, ModelPickleError, StateDictError
from .init import manual_seed
from .graph import Graph, GraphError, GraphInput, Node
from .layers import BatchNorm2d, Conv2d, ConvTranspose2d, Dropout, Flatten, Gemm, Identity, Linear
from .module import IncompatibleKeys, Layer, Module, StateDict
from . import tensor
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from .quantized import QuantizedConv2d, QuantizedLinear

__all__ = ["Module", "Layer", "Sequential", "ModuleList", "Conv2d", "Linear", "BatchNorm2d",
           "ReLU", "ReLU6", "LeakyReLU", "PReLU", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid",
           "SiLU", "Softmax", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
           "Flatten", "Dropout", "Identity", "StateDictError", "LayerInputError", "ModelPickleError",
           "IncompatibleKeys", "StateDict", "LayerPlan", "PlanReport", "LayerTime", "profile",
           "manual_seed", "ConvTranspose2d", "Gemm", "ELU", "GELU", "LogSoftmax",
           "LocalResponseNorm", "Graph", "GraphError", "GraphInput", "Node", "tensor",
           "QuantizedConv2d", "QuantizedLinear"]
