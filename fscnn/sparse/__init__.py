"""Sparse weight storage formats.

:class:`CSRMatrix` is compressed sparse rows for Linear weights and is the storage behind
:class:`SparseConvWeight`, which keeps one compressed row per output channel of a convolution
weight with each non-zero's tap index ``(ci*KH + kh)*KW + kw`` (input offsets for a given input
geometry are derived from these when a layer is prepared).
"""
from .formats import CSRMatrix, FormatError, SparseConvWeight

__all__ = ["CSRMatrix", "SparseConvWeight", "FormatError"]
