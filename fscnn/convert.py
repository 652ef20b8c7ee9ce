"""Convert a PyTorch module into the equivalent :mod:`fscnn.nn` module.

PyTorch is imported only inside :func:`from_torch`; fscnn itself never needs it.
"""
import inspect

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


def from_torch(module, classes=None):
    """The fscnn equivalent of a torch module, with the same ``state_dict``.

    Supports the torch.nn layers that :mod:`fscnn.nn` implements, ``Sequential`` (and its
    subclasses that keep its ``forward``) and ``ModuleList`` containers, torchvision's VGG,
    ResNet and MobileNetV2 blocks, and any class given in ``classes``.

    Parameters
    ----------
    module : torch.nn.Module
    classes : dict, optional
        Maps torch module classes with a custom ``forward`` to :class:`fscnn.nn.Module`
        subclasses whose ``forward`` does the same with the same attribute names. The fscnn
        instance is built without calling its ``__init__``: children are converted one by
        one and the torch module's public plain attributes (ints, strings, ...) are copied.

    Returns
    -------
    fscnn.nn.Module
        In eval mode (fscnn is inference-only), weights copied as float32.

    Raises
    ------
    TypeError
        Naming every submodule (by qualified name and type) that cannot be converted, or
        whose hyper-parameters fscnn does not support (e.g. ``padding_mode='reflect'``).

    Examples
    --------
    >>> net = fscnn.convert.from_torch(torchvision.models.resnet18(weights="DEFAULT"))
    """
    import torch

    by_torch_class = {getattr(torch.nn, name): getattr(nn, name) for name in _LAYERS}
    classes = dict(classes or {})
    unsupported = []

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

    result = convert(module, "")
    if unsupported:
        raise TypeError("from_torch: no fscnn equivalent for " + ", ".join(unsupported)
                        + "; pass classes={TorchClass: FscnnClass} for custom blocks")
    result.load_state_dict({key: value.detach().cpu().numpy()
                            for key, value in module.state_dict().items()})
    return result.eval()
