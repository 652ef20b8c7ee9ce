"""Model zoo: torchvision's VGG, ResNet and MobileNetV2 architectures on :mod:`fscnn.nn`.

Every builder takes ``num_classes=1000`` and returns a model with torchvision's module names,
so a torchvision checkpoint saved as ``.npz`` loads with ``load_state_dict(np.load(path))``.
Fresh models are randomly initialised (see :func:`fscnn.nn.manual_seed`).
"""
from .mobilenet import Conv2dNormActivation, InvertedResidual, MobileNetV2, mobilenet_v2
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101
from .vgg import (VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)

__all__ = ["VGG", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
           "vgg19_bn", "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
           "resnet101", "MobileNetV2", "InvertedResidual", "Conv2dNormActivation",
           "mobilenet_v2"]
