"""Resizing of (N, C, ...) arrays by nearest-neighbour or linear interpolation, with ONNX
Resize's coordinate rules (torch's ``interpolate`` modes are among them)."""
import numpy as np

from .._memory import aligned_empty
from .._validate import as_float_array

MODES = ("nearest", "linear")
COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _source_coords(out_len, in_len, scale, mode):
    """Coordinates in the input (float64) of the ``out_len`` output positions along one axis.

    As ONNX's reference, 'align_corners' and 'pytorch_half_pixel' use the unrounded output
    length ``in_len * scale`` (the integer size when sizes were given)."""
    x = np.arange(out_len, dtype=np.float64)
    length = in_len * scale
    if mode == "align_corners":
        return x * ((in_len - 1) / (length - 1)) if length != 1 else np.zeros(out_len)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if length != 1 else np.full(out_len, -0.5)
    if mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / length)
        return offset + (x + 0.5) / scale - 0.5
    return (x + 0.5) / scale - 0.5  # half_pixel


def _nearest_index(coords, in_len, rounding):
    if rounding == "floor":
        idx = np.floor(coords)
    elif rounding == "ceil":
        idx = np.ceil(coords)
    elif rounding == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    else:  # round_prefer_floor: halves go down
        idx = np.ceil(coords - 0.5)
    return np.clip(idx, 0, in_len - 1).astype(np.intp)


def resize(x, sizes=None, scales=None, mode="nearest", coordinate_transformation_mode="half_pixel",
           nearest_mode="round_prefer_floor"):
    """Resize every axis of ``x`` to ``sizes`` (or by ``scales``).

    Parameters
    ----------
    x : array_like of any rank >= 1
        Floating-point input; converted to float32.
    sizes : sequence of int, optional
        Output size per axis (one entry per axis of ``x``).
    scales : sequence of float, optional
        Scale per axis, when ``sizes`` is not given: output size ``floor(size * scale)``.
    mode : {'nearest', 'linear'}
        'linear' interpolates along every resized axis (bilinear on images), clamping source
        coordinates to the input.
    coordinate_transformation_mode : str
        How an output coordinate maps to the input: 'half_pixel' (torch's
        ``align_corners=False``), 'pytorch_half_pixel', 'align_corners', 'asymmetric'
        (torch's nearest), 'half_pixel_symmetric'.
    nearest_mode : {'round_prefer_floor', 'round_prefer_ceil', 'floor', 'ceil'}
        Rounding of source coordinates in 'nearest' mode.

    Returns
    -------
    ndarray, float32
    """
    x = as_float_array(x, "resize: x", min_ndim=1)
    for value, allowed, what in ((mode, MODES, "mode"),
                                 (coordinate_transformation_mode, COORDINATE_MODES,
                                  "coordinate_transformation_mode"),
                                 (nearest_mode, NEAREST_MODES, "nearest_mode")):
        if value not in allowed:
            raise ValueError(f"resize: {what} must be one of {allowed}, got {value!r}")
    if (sizes is None) == (scales is None):
        raise ValueError("resize: give exactly one of sizes and scales")
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        if len(sizes) != x.ndim or min(sizes) < 1:
            raise ValueError(f"resize: sizes must hold {x.ndim} positive ints, got {sizes}")
        scales = [s / n if n else 1.0 for s, n in zip(sizes, x.shape)]
    else:
        scales = [float(s) for s in scales]
        if len(scales) != x.ndim or not all(s > 0 and np.isfinite(s) for s in scales):
            raise ValueError(f"resize: scales must hold {x.ndim} positive numbers, got {scales}")
        sizes = [int(np.floor(n * s)) for n, s in zip(x.shape, scales)]
        if min(sizes) < 1:
            raise ValueError(f"resize: scales {scales} shrink an input of shape {x.shape} to "
                             f"{tuple(sizes)}")
    out = x
    for axis, (out_len, scale) in enumerate(zip(sizes, scales)):
        in_len = x.shape[axis]
        if out_len == in_len and scale == 1.0:
            continue
        coords = _source_coords(out_len, in_len, scale, coordinate_transformation_mode)
        if mode == "nearest":
            out = np.take(out, _nearest_index(coords, in_len, nearest_mode), axis=axis)
            continue
        coords = np.clip(coords, 0, in_len - 1)
        lo = np.floor(coords).astype(np.intp)
        hi = np.minimum(lo + 1, in_len - 1)
        shape = [1] * x.ndim
        shape[axis] = out_len
        frac = (coords - lo).astype(np.float32).reshape(shape)
        a = np.take(out, lo, axis=axis)
        b = np.take(out, hi, axis=axis)
        out = a + (b - a) * frac
    result = aligned_empty(out.shape)
    result[...] = out
    return result
