"""Allocation of activations on cache-line boundaries.

numpy aligns its arrays to 16 bytes only. fscnn's operators allocate their outputs with
``aligned_empty`` so that the next layer's kernel can load vectors from them without splitting
cache lines: an unpadded 1x1 convolution's sparse kernel reads its input in place only from a
64-byte aligned array (and copies any other input first).
"""
import math

import numpy as np

from ._ext._runtime import address

ALIGN_BYTES = 64


def aligned_empty(shape, dtype=np.float32):
    """An uninitialised C-contiguous array of ``shape`` starting on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) if isinstance(shape, tuple) else int(np.prod(shape))
    if ALIGN_BYTES % dtype.itemsize == 0:
        # numpy's buffers start on a multiple of 16 bytes, hence of the item size: shift by
        # whole items (one array fewer to build than a byte buffer viewed as dtype; this runs
        # once per layer per call)
        raw = np.empty(size + ALIGN_BYTES // dtype.itemsize, dtype)
        start = (-address(raw) % ALIGN_BYTES) // dtype.itemsize
        return raw[start:start + size].reshape(shape)
    raw = np.empty(size * dtype.itemsize + ALIGN_BYTES, dtype=np.uint8)
    start = -address(raw) % ALIGN_BYTES
    return raw[start:start + size * dtype.itemsize].view(dtype).reshape(shape)


def is_aligned(a, nbytes=ALIGN_BYTES):
    """Whether array ``a`` starts on an ``nbytes`` boundary."""
    return address(a) % nbytes == 0
