"""Model zoo: torchvision's VGG, ResNet and MobileNetV2 architectures on :mod:`fscnn.nn`.

Every builder takes ``num_classes=1000`` and returns a model with torchvision's module names,
so a torchvision checkpoint saved as ``.npz`` loads with ``load_state_dict(np.load(path))``.
Fresh models are randomly initialised (see :func:`fscnn.nn.manual_seed`). As in torchvision,
:func:`list_models` names the builders and :func:`get_model` calls one by name.
"""
from .mobilenet import Conv2dNormActivation, InvertedResidual, MobileNetV2, mobilenet_v2
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101
from .vgg import (VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)

__all__ = ["VGG", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
           "vgg19_bn", "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
           "resnet101", "MobileNetV2", "InvertedResidual", "Conv2dNormActivation",
           "mobilenet_v2", "list_models", "get_model"]

_BUILDERS = {name: builder for name, builder in list(globals().items())
             if name in __all__ and name.islower()}
"""name -> builder of every model of the zoo (the lower-case names of ``__all__``)."""


def list_models():
    """Names of the zoo's models, sorted (``["mobilenet_v2", "resnet101", ...]``)."""
    return sorted(_BUILDERS)


def get_model(name, **kwargs):
    """Build the zoo's model ``name`` with fresh weights, like ``torchvision.models.get_model``.

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    **kwargs
        Passed to the builder, e.g. ``num_classes=10``.

    Returns
    -------
    fscnn.nn.Module

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.

    Examples
    --------
    >>> fscnn.models.get_model("resnet18", num_classes=10).fc.out_features
    10
    """
    if name not in _BUILDERS:
        raise ValueError(unknown_model_message(name))
    return _BUILDERS[name](**kwargs)


def unknown_model_message(name):
    """What :func:`get_model` says of an unknown ``name``: it and the known names."""
    return f"unknown model {name!r} (models: {', '.join(list_models())})"
