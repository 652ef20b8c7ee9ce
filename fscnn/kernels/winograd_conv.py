"""Winograd F(4x4, 3x3) convolution (include/winograd.h): the kernel of ``kernel='winograd'``,
for 3x3 stride-1, dilation-1, ungrouped layers.

The transforms run in C; the 36 element-wise products of a chunk of tiles are 36 GEMMs of
scipy's single-threaded SGEMM, one chunk per fscnn thread (fscnn._blas).
"""
from typing import NamedTuple

import numpy as np

from .. import _blas
from .._ext import _conv
from .base import Kernel, scratch

# Interpolation points 0, 1, -1, 1/2, -1/2, infinity (see winograd.h, which holds B^T and
# A^T): the weight transform U = G g G^T, computed in float64.
WINOGRAD_G = np.array([[4, 0, 0], [2 / 3, 2 / 3, 2 / 3], [2 / 3, -2 / 3, 2 / 3],
                       [-8 / 3, -4 / 3, -2 / 3], [-8 / 3, 4 / 3, -2 / 3], [0, 0, 1]])
# Tiles per chunk: the chunk's transformed input and output (36*(C+O)*chunk floats) are kept
# within this many bytes (the 2 MB L2 of the machines fscnn is tuned on).
CHUNK_BYTES = 2 << 20
U_FACTOR = 1.0
MIN_CHUNK = 16


class WinogradPlan(NamedTuple):
    """The Winograd kernel's plan: tiles per work item (``chunk``), the scratch shape per
    thread (``work``) and the compiled kernel bound to the transformed weights (``call``)."""

    chunk: int
    work: tuple
    call: _conv.WinogradConv


def transformed_weights(op):
    """U = G g G^T of ``op``'s weights as (36, O, C) float32, alpha^2 index a = 6*k + l."""
    O, C = op.weight_shape[:2]
    g = op.dense.reshape(op.weight_shape).astype(np.float64)
    u = np.einsum("ki,ocij,lj->kloc", WINOGRAD_G, g, WINOGRAD_G)
    return np.ascontiguousarray(u.reshape(36, O, C), dtype=np.float32)


class WinogradConv(Kernel):
    """Winograd F(4x4, 3x3): 3x3 kernels, stride 1, dilation 1, groups 1, any padding."""

    name = "winograd"

    @staticmethod
    def ineligibility(layer):
        KH, KW = layer.weight_shape[2:]
        problems = []
        if (KH, KW) != (3, 3):
            problems.append(f"a 3x3 kernel (got {KH}x{KW})")
        if tuple(layer.stride) != (1, 1):
            problems.append(f"stride 1 (got {tuple(layer.stride)})")
        if tuple(layer.dilation) != (1, 1):
            problems.append(f"dilation 1 (got {tuple(layer.dilation)})")
        if layer.groups != 1:
            problems.append(f"groups=1 (got {layer.groups})")
        return "the Winograd kernel needs " + ", ".join(problems) if problems else None

    @staticmethod
    def cannot_win(op, geo):
        """Two cases where the kernel lost to the other kernels in every layer measured and
        timing it only gave 'auto' a chance to pick it by noise: output planes that fill less
        than half of its 4x4 tiles (2x2, 5x5, a row: most of what it computes is discarded), and
        calls of fewer than 4 tiles in all, where each element of U (4x the dense weights) is
        streamed from memory for almost no arithmetic. Measured on 512/256-channel 3x3 layers
        of ResNet-18 at batch 2 (AVX2, 1 thread): 2x2 planes 18.4 ms vs 8.8 ms (im2col), 4x4
        planes 8.0 vs 1.9 ms; at 8x8 planes (8 tiles) Winograd won, 0.81 vs 1.1 ms."""
        tiled = (-(-geo.H_out // 4) * 4) * (-(-geo.W_out // 4) * 4)
        if 2 * geo.H_out * geo.W_out < tiled:
            return (f"its 4x4 tiles would be {geo.H_out * geo.W_out / tiled:.0%} used on "
                    f"{geo.H_out}x{geo.W_out} output planes")
        if geo.batch * tiled // 16 < 4:
            return f"{geo.batch * tiled // 16} tiles per call are too few to amortise its weights"
        return None

    @staticmethod
    def plan(op, geo, threads, level):
        """Chunk of tiles per work item and scratch shape. The chunk depends on the layer's
        shape only (not on the thread count), so results do not either. The transformed
        weights are shared by the plans of every input shape (``op.derived``)."""
        O, C = op.weight_shape[:2]
        tiles_w = -(-geo.W_out // 4)
        T = tiles_w * -(-geo.H_out // 4)
        # Each chunk's 36 GEMMs stream all of U (36*O*C floats) from memory: chunks must also
        # be long enough that this costs no more per tile than the chunk's own V and M
        # (36*(C+O) floats per tile), hence at least O*C/(C+O) tiles, even past L2.
        cap = max(MIN_CHUNK, CHUNK_BYTES // (36 * 4 * (C + O)), int(U_FACTOR * O * C / (C + O)))
        n_chunks = -(-T // cap)
        chunk = -(-T // n_chunks)  # equal chunks
        threads = _blas.gemm_threads(threads)
        u = op.derived(WinogradConv.name, None, lambda: transformed_weights(op))
        pt, _, pl, _ = op.padding
        call = _conv.WinogradConv(u, op.bias, pt, pl, chunk, op.act_code, level, threads)
        work = (threads, chunk * 36 * (C + O) + _conv.winograd_tmp_len(tiles_w) + 64)
        return WinogradPlan(chunk, work, call)

    @staticmethod
    def run(x, plan, out):
        with _blas.single_threaded_blas():
            plan.call(x, scratch("winograd", plan.work), out)
