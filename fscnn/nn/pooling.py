"""Pooling layers over (N, C, H, W) inputs (or one (C, H, W) image, as in torch), wrapping
:mod:`fscnn.functional`'s pooling.

Hyper-parameters are kept as given (an int or a pair), as torch keeps them, and validated in
the constructor with torch's constraints.
"""
import numbers

from .. import functional as F
from .._validate import is_padding4, padding4, pair
from .errors import LayerInputError
from .layers import check_spatial
from .module import Layer


class _Pool2d(Layer):
    """Shared checks of the sliding-window pools."""

    _unbatched_ndim = 3
    dilation = 1
    ceil_mode = False

    def _window(self):
        """(kernel, stride, padding, dilation) as pairs, validated with torch's rules; a
        4-tuple padding (top, bottom, left, right: ONNX's asymmetric pads, not in torch)
        comes back as it is and may pad more than half the kernel."""
        name = self._get_name()
        kernel = pair(self.kernel_size, f"{name}: kernel_size")
        stride = pair(self.stride, f"{name}: stride")
        dilation = pair(self.dilation, f"{name}: dilation")
        if is_padding4(self.padding):
            return kernel, stride, padding4(self.padding, f"{name}: padding"), dilation
        padding = pair(self.padding, f"{name}: padding", minimum=0)
        if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
            raise ValueError(f"{name}: padding {self.padding} must be at most half of "
                             f"kernel_size {self.kernel_size}")
        return kernel, stride, padding, dilation

    def _check_input(self, x, label):
        self._require_ndim(x, 4, label)
        kernel, stride, padding, dilation = self._window()
        check_spatial(label, x.shape[2:], kernel, stride, padding, dilation, self.ceil_mode)


class MaxPool2d(_Pool2d):
    """Maximum over sliding windows, like ``torch.nn.MaxPool2d``.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        At most half the kernel size; padded positions never win.
    dilation : int or (int, int)
    return_indices : bool
        Must be False (indices are a training feature).
    ceil_mode : bool
        Round the output size up instead of down.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d: return_indices=True is not supported (inference only)")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        self.return_indices = False
        self.ceil_mode = bool(ceil_mode)
        self._window()

    @property
    def _fused_pool(self):
        """'max2x2' when a preceding convolution's kernel can pool for this layer (a 2x2
        window, stride 2, no padding or dilation, floor mode), else None."""
        if self.ceil_mode or self._window() != ((2, 2), (2, 2), (0, 0), (1, 1)):
            return None
        return "max2x2"

    def forward(self, x):
        """Pooled ``x``: (N, C, H, W) -> (N, C, Ho, Wo)."""
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(_Pool2d):
    """Mean over sliding windows, like ``torch.nn.AvgPool2d``.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        At most half the kernel size.
    ceil_mode : bool
    count_include_pad : bool
        Count padded zeros in the divisor.
    divisor_override : int, optional
        Divide every window sum by this instead.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        if divisor_override is not None and (not isinstance(divisor_override, numbers.Integral)
                                             or divisor_override < 1):
            raise ValueError(f"AvgPool2d: divisor_override must be None or a positive int, got "
                             f"{divisor_override!r}")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override
        self._window()

    def forward(self, x):
        """Pooled ``x``: (N, C, H, W) -> (N, C, Ho, Wo)."""
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _AdaptivePool2d(Layer):
    """Pools to a fixed output size; ``None`` in ``output_size`` keeps that input size."""

    _unbatched_ndim = 3
    _function = None

    def __init__(self, output_size):
        super().__init__()
        name = self._get_name()
        sizes = (output_size, output_size) if output_size is None or isinstance(
            output_size, numbers.Integral) else tuple(output_size)
        if len(sizes) != 2 or not all(s is None or (isinstance(s, numbers.Integral)
                                                    and not isinstance(s, bool) and s >= 1)
                                      for s in sizes):
            raise ValueError(f"{name}: output_size must be a positive int or a pair of positive "
                             f"ints or None, got {output_size!r}")
        self.output_size = output_size

    def _check_input(self, x, label):
        self._require_ndim(x, 4, label)
        if min(x.shape[2:]) < 1:
            raise LayerInputError(f"{label}: expected an input with non-zero height and width, "
                                  f"got shape {x.shape}")

    def forward(self, x):
        """Pooled ``x``: (N, C, H, W) -> (N, C, *output_size)."""
        size = self.output_size
        size = (size, size) if size is None or isinstance(size, numbers.Integral) else size
        size = tuple(x.shape[2 + i] if s is None else int(s) for i, s in enumerate(size))
        return self._function(x, size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Mean over torch's adaptive windows, like ``torch.nn.AdaptiveAvgPool2d``.

    Examples
    --------
    >>> fscnn.nn.AdaptiveAvgPool2d((7, 7))(np.ones((1, 512, 14, 14))).shape
    (1, 512, 7, 7)
    """

    _function = staticmethod(F.adaptive_avg_pool2d)


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Maximum over torch's adaptive windows, like ``torch.nn.AdaptiveMaxPool2d``."""

    _function = staticmethod(F.adaptive_max_pool2d)

    def __init__(self, output_size, return_indices=False):
        if return_indices:
            raise ValueError("AdaptiveMaxPool2d: return_indices=True is not supported")
        super().__init__(output_size)
        self.return_indices = False
