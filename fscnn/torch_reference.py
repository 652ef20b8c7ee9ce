"""PyTorch versions of the zoo's architectures, in torchvision's exact layout and names.

torchvision's PyPI wheel depends on the CUDA build of torch, so ``fscnn bench`` and the
benchmark scripts do not rely on it: VGG, ResNet and MobileNetV2 are rebuilt here with plain
``torch.nn`` and torchvision's module names and config tables, as the PyTorch side of their
comparisons. The tests check the zoo both against these and against torchvision's own
definitions (``tests/test_torchvision.py``, torchvision installed with ``--no-deps``).
Importing this module does not import torch; calling does.
"""
from . import models as _models

__all__ = ["torch_models", "build"]


def torch_models():
    """(builders, classes): name -> builder(num_classes) of the torch reference models in
    torchvision's layout, and the torch class -> fscnn class mapping for :func:`fscnn.convert.from_torch`."""
    import torch
    from torch import nn as tnn

    cfgs = {
        "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
              "M"],
        "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
              512, 512, 512, "M"],
    }

    class VGG(tnn.Module):
        def __init__(self, features, num_classes):
            super().__init__()
            self.features = features
            self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
            self.classifier = tnn.Sequential(
                tnn.Linear(512 * 7 * 7, 4096), tnn.ReLU(True), tnn.Dropout(),
                tnn.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(),
                tnn.Linear(4096, num_classes))

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    def make_layers(cfg, batch_norm):
        layers, in_channels = [], 3
        for v in cfg:
            if v == "M":
                layers += [tnn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                conv = tnn.Conv2d(in_channels, v, kernel_size=3, padding=1)
                layers += [conv, tnn.BatchNorm2d(v), tnn.ReLU(True)] if batch_norm \
                    else [conv, tnn.ReLU(True)]
                in_channels = v
        return tnn.Sequential(*layers)

    def conv3x3(i, o, stride=1, groups=1, dilation=1):
        return tnn.Conv2d(i, o, 3, stride=stride, padding=dilation, groups=groups, bias=False,
                          dilation=dilation)

    def conv1x1(i, o, stride=1):
        return tnn.Conv2d(i, o, 1, stride=stride, bias=False)

    class BasicBlock(tnn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class Bottleneck(tnn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = conv1x1(inplanes, planes)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes, stride)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.conv3 = conv1x1(planes, planes * 4)
            self.bn3 = tnn.BatchNorm2d(planes * 4)
            self.relu = tnn.ReLU(inplace=True)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class ResNet(tnn.Module):
        def __init__(self, block, layers, num_classes):
            super().__init__()
            self.inplanes = 64
            self.conv1 = tnn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
            self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
            self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(512 * block.expansion, num_classes)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = tnn.Sequential(conv1x1(self.inplanes, planes * block.expansion,
                                                    stride),
                                            tnn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return tnn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class Conv2dNormActivation(tnn.Sequential):
        def __init__(self, i, o, kernel_size=3, stride=1, groups=1):
            super().__init__(tnn.Conv2d(i, o, kernel_size, stride, (kernel_size - 1) // 2,
                                        groups=groups, bias=False),
                             tnn.BatchNorm2d(o), tnn.ReLU6(inplace=True))
            self.out_channels = o

    class InvertedResidual(tnn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            self.stride = stride
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = [Conv2dNormActivation(inp, hidden, kernel_size=1)] if expand_ratio != 1 \
                else []
            layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
                       tnn.Conv2d(hidden, oup, 1, 1, 0, bias=False), tnn.BatchNorm2d(oup)]
            self.conv = tnn.Sequential(*layers)
            self.out_channels = oup
            self._is_cn = stride > 1

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(tnn.Module):
        def __init__(self, num_classes):
            super().__init__()
            setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                       [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
            input_channel, self.last_channel = 32, 1280
            features = [Conv2dNormActivation(3, input_channel, stride=2)]
            for t, c, n, s in setting:
                for i in range(n):
                    features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t))
                    input_channel = c
            features.append(Conv2dNormActivation(input_channel, self.last_channel,
                                                 kernel_size=1))
            self.features = tnn.Sequential(*features)
            self.classifier = tnn.Sequential(tnn.Dropout(p=0.2),
                                             tnn.Linear(self.last_channel, num_classes))

        def forward(self, x):
            x = tnn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    builders = {}
    for cfg, depth in zip("ABDE", (11, 13, 16, 19)):
        builders[f"vgg{depth}"] = lambda n, c=cfg: VGG(make_layers(cfgs[c], False), n)
        builders[f"vgg{depth}_bn"] = lambda n, c=cfg: VGG(make_layers(cfgs[c], True), n)
    for depth, block, layers in ((18, BasicBlock, [2, 2, 2, 2]), (34, BasicBlock, [3, 4, 6, 3]),
                                 (50, Bottleneck, [3, 4, 6, 3]),
                                 (101, Bottleneck, [3, 4, 23, 3])):
        builders[f"resnet{depth}"] = lambda n, b=block, ls=layers: ResNet(b, ls, n)
    builders["mobilenet_v2"] = MobileNetV2
    classes = {VGG: _models.VGG, ResNet: _models.ResNet,
               BasicBlock: _models.BasicBlock, Bottleneck: _models.Bottleneck,
               MobileNetV2: _models.MobileNetV2,
               InvertedResidual: _models.InvertedResidual,
               Conv2dNormActivation: _models.Conv2dNormActivation}
    return builders, classes


def build(name, num_classes=1000):
    """The torch reference model ``name`` (e.g. ``"vgg16"``) with fresh weights, in eval mode."""
    builders, _ = torch_models()
    if name not in builders:
        raise ValueError(f"no torch reference for {name!r} (have: {', '.join(sorted(builders))})")
    return builders[name](num_classes).eval()
