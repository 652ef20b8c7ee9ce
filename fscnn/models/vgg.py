"""VGG 11/13/16/19, with and without batch norm, laid out exactly as torchvision's.

Module names and config tables are torchvision's (``features``, ``avgpool``, ``classifier``),
so ``torchvision.models.vgg16(weights=...).state_dict()`` saved as ``.npz`` loads strictly.
"""
import math

from .. import nn

# Output channels per 3x3 convolution, "M" for a 2x2 max pool (torchvision's cfgs).
CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512,
          512, 512, "M"],
}


class VGG(nn.Module):
    """VGG: convolutional ``features``, a 7x7 adaptive average pool and a 3-layer classifier.

    Parameters
    ----------
    features : Sequential
        The convolutional part, e.g. from :func:`make_layers`.
    num_classes : int
    dropout : float
        Kept for torchvision compatibility (dropout is the identity at inference).
    """

    _unbatched_ndim = 3  # one (C, H, W) image gives (num_classes,) scores

    def __init__(self, features, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        """Class scores of shape (N, num_classes) for images ``x`` of shape (N, 3, H, W)."""
        x = self.avgpool(self.features(x))
        return self.classifier(x.reshape(x.shape[0], math.prod(x.shape[1:])))


def make_layers(cfg, batch_norm=False):
    """The ``features`` Sequential of a VGG config (a list of channel counts and "M")."""
    layers = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
    return nn.Sequential(*layers)


def _vgg(cfg, batch_norm, num_classes, dropout):
    return VGG(make_layers(CFGS[cfg], batch_norm), num_classes=num_classes, dropout=dropout)


def vgg11(num_classes=1000, dropout=0.5):
    """VGG-11 (config "A")."""
    return _vgg("A", False, num_classes, dropout)


def vgg11_bn(num_classes=1000, dropout=0.5):
    """VGG-11 with batch norm."""
    return _vgg("A", True, num_classes, dropout)


def vgg13(num_classes=1000, dropout=0.5):
    """VGG-13 (config "B")."""
    return _vgg("B", False, num_classes, dropout)


def vgg13_bn(num_classes=1000, dropout=0.5):
    """VGG-13 with batch norm."""
    return _vgg("B", True, num_classes, dropout)


def vgg16(num_classes=1000, dropout=0.5):
    """VGG-16 (config "D").

    Examples
    --------
    >>> model = fscnn.models.vgg16()
    >>> model.load_state_dict(np.load("vgg16.npz"))  # torchvision's state_dict as .npz
    """
    return _vgg("D", False, num_classes, dropout)


def vgg16_bn(num_classes=1000, dropout=0.5):
    """VGG-16 with batch norm."""
    return _vgg("D", True, num_classes, dropout)


def vgg19(num_classes=1000, dropout=0.5):
    """VGG-19 (config "E")."""
    return _vgg("E", False, num_classes, dropout)


def vgg19_bn(num_classes=1000, dropout=0.5):
    """VGG-19 with batch norm."""
    return _vgg("E", True, num_classes, dropout)
