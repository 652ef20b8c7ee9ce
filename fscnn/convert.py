"""Convert a PyTorch module into the equivalent :mod:`fscnn.nn` module: layer by layer where
fscnn has twins of its layers and blocks, through an in-memory ONNX export otherwise.

PyTorch is imported only inside :func:`from_torch`; fscnn itself never needs it.
"""
import contextlib
import inspect
import os
import sys
import warnings

from . import models, nn

# torch.nn layer types with an fscnn counterpart of the same name and constructor arguments.
_LAYERS = ("Conv2d", "Linear", "BatchNorm2d", "ReLU", "ReLU6", "LeakyReLU", "PReLU", "Sigmoid",
           "Tanh", "Hardswish", "Hardsigmoid", "SiLU", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Flatten", "Dropout", "Identity", "Softmax",
           "Sequential", "ModuleList")

# torchvision blocks with a custom forward, by "module.QualName", and their fscnn twins.
TORCHVISION_CLASSES = {
    "torchvision.models.vgg.VGG": models.VGG,
    "torchvision.models.resnet.ResNet": models.ResNet,
    "torchvision.models.resnet.BasicBlock": models.BasicBlock,
    "torchvision.models.resnet.Bottleneck": models.Bottleneck,
    "torchvision.models.mobilenetv2.MobileNetV2": models.MobileNetV2,
    "torchvision.models.mobilenetv2.InvertedResidual": models.InvertedResidual,
    "torchvision.ops.misc.Conv2dNormActivation": models.Conv2dNormActivation,
    "torchvision.models.mobilenetv2.ConvBNActivation": models.Conv2dNormActivation,
    "torchvision.models.mobilenetv2.ConvBNReLU": models.Conv2dNormActivation,
}

_PLAIN_TYPES = (bool, int, float, str, type(None))


def _plain(value):
    """Whether ``value`` is a plain hyper-parameter (numbers, strings, None, tuples of them)."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN_TYPES)


def _layer(tmod, cls):
    """The fscnn layer ``cls`` with the hyper-parameters of the torch layer ``tmod``."""
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "bias" and not isinstance(getattr(tmod, "bias", None), bool):
            kwargs["bias"] = getattr(tmod, "bias", None) is not None
        elif name == "return_indices":
            kwargs[name] = bool(getattr(tmod, name, False))
        elif hasattr(tmod, name) and _plain(getattr(tmod, name)):
            kwargs[name] = getattr(tmod, name)
    return cls(**kwargs)


def _twin(tmod, cls):
    """An instance of the fscnn block ``cls`` with ``tmod``'s plain attributes (no children)."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for name, value in vars(tmod).items():
        if not name.startswith("_") and name != "training" and _plain(value):
            setattr(module, name, value)
    return module


def from_torch(module, example_input=None, *, classes=None):
    """The fscnn equivalent of a torch module.

    A module built from layers and blocks fscnn has twins of (the torch.nn layers of
    :mod:`fscnn.nn`, ``Sequential``/``ModuleList``, torchvision's VGG, ResNet and MobileNetV2
    blocks, and classes given in ``classes``) is converted layer by layer and keeps torch's
    ``state_dict`` exactly. Any other traceable module (every torchvision classification
    family: DenseNet, EfficientNet, RegNet, Inception, ...) is exported to ONNX in memory and
    imported with :func:`fscnn.from_onnx`; its state_dict keys are then the exported
    initializer names (torch's parameter names, except where the exporter merged tensors of
    equal values).

    Parameters
    ----------
    module : torch.nn.Module
    example_input : torch.Tensor or tuple of them, optional
        What to trace the module with when it goes through ONNX; default a
        ``(1, 3, 224, 224)`` image. The batch size and, where the exporter can keep them
        free, the image size stay dynamic in the imported graph.
    classes : dict, optional
        Maps torch module classes with a custom ``forward`` to :class:`fscnn.nn.Module`
        subclasses whose ``forward`` does the same with the same attribute names. The fscnn
        instance is built without calling its ``__init__``: children are converted one by
        one and the torch module's public plain attributes (ints, strings, ...) are copied.

    Returns
    -------
    fscnn.nn.Module
        In eval mode (fscnn is inference-only), weights copied as float32; a
        :class:`fscnn.nn.Graph` when converted through ONNX.

    Raises
    ------
    TypeError
        A module with no twin could not be exported to ONNX either; the message names the
        submodules without twins and the exporter's error.
    fscnn.ModelImportError
        The exported graph uses an operator fscnn does not import (all of them listed).

    Examples
    --------
    >>> net = fscnn.from_torch(torchvision.models.resnet18(weights="DEFAULT"))
    >>> dense = fscnn.from_torch(torchvision.models.densenet121(), torch.randn(1, 3, 224, 224))
    """
    unsupported = []
    result = _convert_twins(module, classes, unsupported)
    if not unsupported:
        result.load_state_dict({key: value.detach().cpu().numpy()
                                for key, value in module.state_dict().items()})
        return result.eval()
    return _through_onnx(module, example_input, unsupported)


def _through_onnx(module, example_input, unsupported):
    """Export ``module`` to ONNX in memory and import it (see :func:`from_torch`)."""
    import io

    import torch

    from .importers.onnx import from_onnx

    if example_input is None:
        example_input = torch.randn(1, 3, 224, 224)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    names = [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
    free_image = {n: {0: "batch", 2: "height", 3: "width"} for n, a in zip(names, args)
                  if a.dim() == 4}
    free_batch = {n: {0: "batch"} for n, a in zip(names, args) if a.dim() >= 1}
    errors = []
    training = module.training
    module.eval()
    try:
        # the TorchScript exporter keeps batch norms as nodes (fscnn folds them when it
        # prepares) with their parameter names; adaptive pools refuse free image sizes
        for axes in (free_image, free_batch):
            buffer = io.BytesIO()
            try:  # torch's warnings concern its exporter's options, which are fscnn's choice
                with torch.no_grad(), _quiet_stdout(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, args, buffer, dynamo=False, input_names=names,
                                      dynamic_axes=axes, opset_version=17,
                                      training=torch.onnx.TrainingMode.PRESERVE)
                return from_onnx(buffer.getvalue())
            except Exception as exc:  # the exporter raises many types
                if type(exc).__name__ == "ModelImportError":
                    raise
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    finally:
        module.train(training)
    raise TypeError("from_torch: no fscnn equivalent for " + ", ".join(unsupported)
                    + "; exporting to ONNX failed too (" + "; ".join(errors) + "). Pass "
                    "classes={TorchClass: FscnnClass} for custom blocks, or export the model "
                    "with torch.onnx.export and use fscnn.from_onnx")


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1: the TorchScript exporter prints the whole graph (from C++)
    when it refuses one, which the caller may retry another way."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _convert_twins(module, classes, unsupported):
    """The fscnn twin of ``module`` (children converted recursively); the names of
    submodules without a twin are appended to ``unsupported``."""
    import torch

    by_torch_class = {getattr(torch.nn, name): getattr(nn, name) for name in _LAYERS}
    classes = dict(classes or {})

    def target(tmod):
        kind = type(tmod)
        if kind in classes:
            return classes[kind], True
        if kind in by_torch_class:
            return by_torch_class[kind], kind.__name__ in ("Sequential", "ModuleList")
        twin = TORCHVISION_CLASSES.get(f"{kind.__module__}.{kind.__qualname__}")
        if twin is None and isinstance(tmod, torch.nn.Sequential) \
                and kind.forward is torch.nn.Sequential.forward:
            twin = nn.Sequential
        return twin, True

    def convert(tmod, name):
        cls, is_container = target(tmod)
        if cls is None:
            unsupported.append(f"{name or '(root)'} ({type(tmod).__module__}."
                               f"{type(tmod).__qualname__})")
            return None
        if not is_container:
            try:
                return _layer(tmod, cls)
            except (TypeError, ValueError) as exc:
                unsupported.append(f"{name or '(root)'} ({exc})")
                return None
        out = _twin(tmod, cls)
        for child_name, child in tmod.named_children():
            converted = convert(child, f"{name}.{child_name}" if name else child_name)
            if converted is not None:
                out.add_module(child_name, converted)
        return out

    return convert(module, "")
