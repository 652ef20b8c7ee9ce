"""MobileNetV2, laid out exactly as torchvision's.

``features`` holds a stem ``Conv2dNormActivation``, 17 ``InvertedResidual`` blocks (each with
its ``conv`` Sequential) and a final 1x1 ``Conv2dNormActivation``; ``classifier`` is dropout
and a linear layer. Every Conv2d -> BatchNorm2d (-> ReLU6) run sits in a Sequential, so
preparation folds and fuses all of them.
"""
import math

from .. import functional as F
from .. import nn


def _make_divisible(v, divisor, min_value=None):
    """Round ``v`` to a multiple of ``divisor``, never below 90% of ``v`` (torchvision's rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """Conv2d, BatchNorm2d and an activation in a Sequential, as torchvision's block.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, groups, dilation : int
    padding : int, optional
        Defaults to ``(kernel_size - 1) // 2 * dilation`` ("same" for odd kernels).
    norm_layer : callable or None
        Builds the normalisation from the channel count; None for none.
    activation_layer : callable or None
        Builds the activation (called with ``inplace=True``); None for none.
    bias : bool, optional
        Defaults to ``norm_layer is None``.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None,
                 groups=1, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU, dilation=1,
                 bias=None):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                            dilation=dilation, groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection (``conv``),
    with a residual connection when the shape is kept.

    Parameters
    ----------
    inp, oup : int
        Input and output channels.
    stride : {1, 2}
    expand_ratio : int
        Hidden channels = ``round(inp * expand_ratio)``; 1 skips the expansion.
    """

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1,
                                               activation_layer=nn.ReLU6))
        layers += [
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim,
                                 activation_layer=nn.ReLU6),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        if self.use_res_connect:  # the projection adds x in its epilogue
            last = len(layers) - 2
            self._residuals = ((f"conv.{last}", f"conv.{last + 1}"),)

    def forward(self, x):
        """``x + conv(x)`` with the residual, ``conv(x)`` without."""
        if self.use_res_connect:
            return F.add(x, self.conv(x))
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) as in torchvision.

    Parameters
    ----------
    num_classes : int
    width_mult : float
        Channel multiplier.
    inverted_residual_setting : list of [t, c, n, s], optional
        Expansion, channels, repeats, first stride per stage; torchvision's table by default.
    round_nearest : int
        Channel counts are rounded to multiples of this.
    dropout : float
        Kept for torchvision compatibility (identity at inference).
    """

    _unbatched_ndim = 3  # one (C, H, W) image gives (num_classes,) scores

    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None,
                 round_nearest=8, dropout=0.2):
        super().__init__()
        if inverted_residual_setting is None:
            inverted_residual_setting = [
                # t, c, n, s
                [1, 16, 1, 1],
                [6, 24, 2, 2],
                [6, 32, 3, 2],
                [6, 64, 4, 2],
                [6, 96, 3, 1],
                [6, 160, 3, 2],
                [6, 320, 1, 1],
            ]
        if not inverted_residual_setting or any(len(row) != 4 for row in
                                                inverted_residual_setting):
            raise ValueError(f"MobileNetV2: inverted_residual_setting must be a non-empty list "
                             f"of [t, c, n, s] rows, got {inverted_residual_setting!r}")
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [Conv2dNormActivation(3, input_channel, stride=2, activation_layer=nn.ReLU6)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel,
                                                 s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1,
                                             activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                        nn.Linear(self.last_channel, num_classes))

    def forward(self, x):
        """Class scores of shape (N, num_classes) for images ``x`` of shape (N, 3, H, W)."""
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(x.reshape(x.shape[0], math.prod(x.shape[1:])))


def mobilenet_v2(num_classes=1000, width_mult=1.0):
    """MobileNetV2 with torchvision's configuration.

    Examples
    --------
    >>> model = fscnn.models.mobilenet_v2()
    >>> model.load_state_dict(np.load("mobilenet_v2.npz"))
    """
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult)
