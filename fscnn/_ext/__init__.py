"""Compiled kernels (Cython extensions and the C micro-kernel headers in ``include/``).

Nothing here validates its inputs: callers in :mod:`fscnn.functional` and the layer classes
check shapes, dtypes, contiguity and index bounds before calling in.
"""
