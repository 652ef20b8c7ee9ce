"""Allocation of activations on cache-line boundaries.

numpy aligns its arrays to 16 bytes only. fscnn's operators allocate their outputs with
``aligned_empty`` so that the next layer's kernel can load vectors from them without splitting
cache lines: an unpadded 1x1 convolution's sparse kernel reads its input in place only from a
64-byte aligned array (and copies any other input first).
"""
import math

import numpy as np

ALIGN_BYTES = 64


def aligned_empty(shape, dtype=np.float32):
    """An uninitialised C-contiguous array of ``shape`` starting on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) if isinstance(shape, tuple) else int(np.prod(shape))
    raw = np.empty(size * dtype.itemsize + ALIGN_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN_BYTES
    return raw[start:start + size * dtype.itemsize].view(dtype).reshape(shape)


def is_aligned(a, nbytes=ALIGN_BYTES):
    """Whether array ``a`` starts on an ``nbytes`` boundary."""
    return a.ctypes.data % nbytes == 0
