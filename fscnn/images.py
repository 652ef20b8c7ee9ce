"""Image files to model inputs: decode (Pillow), resize, centre-crop, normalise.

``pip install "fscnn[images]"`` brings Pillow; nothing else in fscnn imports this module.
The preprocessing is torchvision's classification recipe: the shorter side resized to
``size * 256 / 224`` (bilinear), the central ``size x size`` crop, values scaled to [0, 1]
and normalised per channel with ImageNet's mean and standard deviation by default.
"""
import os

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SUFFIXES", "list_images", "load_image",
           "ImageDecodeError"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUFFIXES = (".jpg", ".jpeg", ".png")
"""The files of a folder that :func:`list_images` takes (case-insensitive)."""


class ImageDecodeError(ValueError):
    """An image file cannot be decoded (corrupt, truncated or not an image)."""


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError('decoding images needs Pillow: pip install "fscnn[images]"') from exc
    return Image


def list_images(folder):
    """The image files (by suffix, :data:`SUFFIXES`) directly in ``folder``, sorted by name."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(SUFFIXES))
    return [os.path.join(folder, n) for n in names]


def load_image(path, size, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """One image file as a float32 array of shape (channels, size, size).

    Parameters
    ----------
    path : str
    size : int
        Height and width of the central crop.
    channels : {1, 3}
        Grey-scale (Pillow's mode 'L') or RGB.
    mean, std : sequences of ``channels`` floats
        ``(x / 255 - mean) / std`` per channel.

    Raises
    ------
    ImageDecodeError
        The file cannot be decoded; names the file.
    """
    Image = _pillow()
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean and std need {channels} values (std > 0), got mean={mean!r}, "
                         f"std={std!r}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # OSError: unidentified or truncated files; SyntaxError: malformed PNG chunks
        raise ImageDecodeError(f"{path}: cannot decode the image ({exc})") from None
    width, height = image.size
    scale = size * 256 / 224 / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(resized, Image.BILINEAR)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.float32).reshape(size, size, channels) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
