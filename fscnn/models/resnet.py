"""ResNet-18/34/50/101, laid out exactly as torchvision's.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``; blocks with
``conv1``/``bn1``/..., ``downsample``), so its checkpoints saved as ``.npz`` load strictly. The
blocks declare their conv -> bn -> relu chains in ``_fusions`` so that preparation folds each
batch norm into its convolution and fuses the ReLU into the kernel.
"""
import math

from .. import functional as F
from .. import nn


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    """3x3 convolution with padding, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, bias=False, dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Parameters
    ----------
    inplanes, planes : int
        Input and output channels.
    stride : int
        Stride of the first convolution.
    downsample : Module, optional
        Maps the input to the output's shape for the residual (1x1 conv + batch norm).
    groups, base_width, dilation : int
        Must be 1, 64 and 1, as in torchvision.
    """

    expansion = 1
    _fusions = (("conv1", "bn1", "relu"), ("conv2", "bn2"))
    _residuals = (("conv2", "bn2"),)  # the shortcut is added in conv2's epilogue

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(f"BasicBlock: only groups=1 and base_width=64 are supported, got "
                             f"groups={groups}, base_width={base_width}")
        if dilation > 1:
            raise ValueError(f"BasicBlock: dilation > 1 is not supported, got {dilation}")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.add(out, identity, activation="relu")


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) convolutions with a residual (ResNet-50/101).

    Parameters
    ----------
    inplanes, planes : int
        Input channels and bottleneck width (the output has ``4 * planes`` channels).
    stride : int
        Stride of the 3x3 convolution (torchvision's "ResNet V1.5").
    downsample : Module, optional
    groups, base_width, dilation : int
        Grouped/wide variants (ResNeXt, Wide ResNet) as in torchvision.
    """

    expansion = 4
    _fusions = (("conv1", "bn1", "relu"), ("conv2", "bn2", "relu"), ("conv3", "bn3"))
    _residuals = (("conv3", "bn3"),)  # the shortcut is added in conv3's epilogue

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        """``relu(bn3(conv3(...(x))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.add(out, identity, activation="relu")


class ResNet(nn.Module):
    """ResNet: a 7x7 stem, four stages of residual blocks, global average pool, ``fc``.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
    layers : list of 4 int
        Blocks per stage.
    num_classes : int
    groups, width_per_group : int
        Grouped/wide bottlenecks, as in torchvision.
    replace_stride_with_dilation : list of 3 bool, optional
        Dilate stages 2-4 instead of striding them, as in torchvision.
    """

    _unbatched_ndim = 3  # one (C, H, W) image gives (num_classes,) scores

    _fusions = (("conv1", "bn1", "relu"),)

    def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None):
        super().__init__()
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(f"ResNet: replace_stride_with_dilation must have 3 entries, got "
                             f"{replace_stride_with_dilation!r}")
        if len(layers) != 4:
            raise ValueError(f"ResNet: layers must give 4 block counts, got {layers!r}")
        self.inplanes = 64
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups,
                                base_width=self.base_width, dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward(self, x):
        """Class scores of shape (N, num_classes) for images ``x`` of shape (N, 3, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        return self.fc(x.reshape(x.shape[0], math.prod(x.shape[1:])))


def resnet18(num_classes=1000):
    """ResNet-18: BasicBlocks [2, 2, 2, 2]."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


def resnet34(num_classes=1000):
    """ResNet-34: BasicBlocks [3, 4, 6, 3]."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


def resnet50(num_classes=1000):
    """ResNet-50: Bottlenecks [3, 4, 6, 3].

    Examples
    --------
    >>> model = fscnn.models.resnet50()
    >>> model.load_state_dict(np.load("resnet50.npz"))  # torchvision's state_dict as .npz
    >>> model.prepare(input_shape=(1, 3, 224, 224))
    >>> print(model.plan())
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


def resnet101(num_classes=1000):
    """ResNet-101: Bottlenecks [3, 4, 23, 3]."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes)
