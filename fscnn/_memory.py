"""Allocation of activations: on cache-line boundaries, in pooled memory.

numpy aligns its arrays to 16 bytes only. fscnn's operators allocate their outputs with
``aligned_empty`` so that the next layer's kernel can load vectors from them without splitting
cache lines: an unpadded 1x1 convolution's sparse kernel reads its input in place only from a
64-byte aligned array (and copies any other input first).

The memory comes from a pool (``fscnn._ext._runtime.pooled_empty``): a freed activation's
block is handed out again for the next array of the same size, so a model's repeated calls
reuse mapped memory instead of faulting in fresh pages for every activation (why, and what it
cost, is in _runtime.pyx). ``FSCNN_POOL_MB`` (default 1024) caps the bytes kept; 0 keeps
none.
"""
import math
import os
import warnings

import numpy as np

from ._ext._runtime import address, pool_info, pooled_empty, set_pool_limit

ALIGN_BYTES = 64
DEFAULT_POOL_MB = 1024


def _pool_limit_from_env():
    env = os.environ.get("FSCNN_POOL_MB", "").strip()
    if not env:
        return DEFAULT_POOL_MB << 20
    try:
        mb = float(env)
        if not mb >= 0:
            raise ValueError
    except ValueError:
        warnings.warn(f"ignoring FSCNN_POOL_MB={env!r}: expected a number of MiB >= 0")
        return DEFAULT_POOL_MB << 20
    return int(mb * (1 << 20))


set_pool_limit(_pool_limit_from_env())


def aligned_empty(shape, dtype=np.float32):
    """An uninitialised C-contiguous array of ``shape`` starting on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    if not isinstance(shape, tuple):
        shape = tuple(shape) if np.ndim(shape) else (int(shape),)
    if dtype.kind in "biuf":
        return pooled_empty(shape, dtype)
    size = math.prod(shape)
    raw = np.empty(size * dtype.itemsize + ALIGN_BYTES, dtype=np.uint8)
    start = -address(raw) % ALIGN_BYTES
    return raw[start:start + size * dtype.itemsize].view(dtype).reshape(shape)


def is_aligned(a, nbytes=ALIGN_BYTES):
    """Whether array ``a`` starts on an ``nbytes`` boundary."""
    return address(a) % nbytes == 0


def release_memory():
    """Free the activation memory the pool keeps for reuse (it fills again as models run)."""
    limit = pool_info()[2]
    set_pool_limit(0)
    set_pool_limit(limit)
