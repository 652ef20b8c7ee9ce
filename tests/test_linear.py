"""Linear kernels (sparse CSR and dense) against the float64 reference and PyTorch."""
import numpy as np
import pytest

import fscnn.functional as F
from conftest import assert_close, sparse_weight, to_torch, torch_or_skip
from fscnn.ops import LinearOp
from reference import linear as ref_linear


@pytest.mark.parametrize("shape", [(1, 1), (10, 17), (64, 300), (5, 70000)])
@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_linear_matches_reference(shape, batch, sparsity, kernel, threads, rng):
    w = sparse_weight(shape, sparsity, rng)
    b = rng.standard_normal(shape[0]).astype(np.float32)
    x = rng.standard_normal((batch, shape[1])).astype(np.float32)
    y = LinearOp(w, b, kernel=kernel)(x)
    assert y.shape == (batch, shape[0]) and y.dtype == np.float32
    assert_close(y, ref_linear(x, w, b))


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_linear_fused_activation(activation, kernel, rng):
    w = sparse_weight((20, 30), 0.5, rng)
    x = 10 * rng.standard_normal((2, 30)).astype(np.float32)
    ref = np.maximum(ref_linear(x, w), 0)
    if activation == "relu6":
        ref = np.minimum(ref, 6)
    assert_close(LinearOp(w, activation=activation, kernel=kernel)(x), ref)


def test_linear_matches_torch(rng):
    torch = torch_or_skip()
    w = sparse_weight((33, 65), 0.9, rng)
    b = rng.standard_normal(33).astype(np.float32)
    x = rng.standard_normal((3, 65)).astype(np.float32)
    ref = torch.nn.functional.linear(to_torch(x), to_torch(w), to_torch(b)).numpy()
    for kernel in ("sparse", "dense", "auto"):
        assert_close(F.linear(x, w, b, kernel=kernel), ref, rtol=1e-4)
    assert_close(LinearOp(w, b)(x), ref, rtol=1e-4)


def test_linear_errors(rng):
    op = LinearOp(sparse_weight((4, 6), 0.5, rng), name="classifier.0")
    with pytest.raises(ValueError, match=r"classifier.0: expected input \(N, 6\)"):
        op(np.zeros((1, 5), np.float32))
    with pytest.raises(TypeError, match="expected a float array"):
        op(np.zeros((1, 6), np.int64))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        LinearOp(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("shape", [(3, 6143), (40, 6145), (7, 13000), (2, 70001)])
@pytest.mark.parametrize("sparsity", [0.0, 0.7, 0.97])
def test_sparse_linear_panels_and_tails(shape, sparsity, simd_level, threads, rng):
    # several column panels (panel_width() inputs each), rows whose non-zero counts hit every
    # remainder of the 16/32-wide gather loops, inputs past 65536 (16-bit relative indices)
    w = sparse_weight(shape, sparsity, rng)
    w[0, :] = 0  # an empty row
    w[-1, :45] = 1.5  # a dense run across the first gather blocks
    b = rng.standard_normal(shape[0]).astype(np.float32)
    x = rng.standard_normal((2, shape[1])).astype(np.float32)
    assert_close(LinearOp(w, b, kernel="sparse")(x), ref_linear(x, w, b))


@pytest.mark.parametrize("shape", [(3, 6143), (40, 6145), (2, 70001)])
@pytest.mark.parametrize("batch", [4, 9, 33, 70])
def test_sparse_linear_batched_path(shape, batch, simd_level, threads, rng):
    """From BATCH_MIN vectors the sparse kernel multiplies x transposed (rows padded to the
    vector width) with broadcast weights: blocks of 4, 2 and 1 vectors of images, across
    column panels, with bias and a fused activation; the result does not depend on the thread
    count."""
    from fscnn import _config
    from fscnn.kernels.sparse_linear import BATCH_MIN
    w = sparse_weight(shape, 0.8, rng)
    w[0, :] = 0  # an empty row
    b = rng.standard_normal(shape[0]).astype(np.float32)
    x = rng.standard_normal((batch, shape[1])).astype(np.float32)
    op = LinearOp(w, b, activation="relu6", kernel="sparse")
    y = op(x)
    assert batch >= BATCH_MIN and op._plan(x.shape).plan.xt is not None
    assert_close(y, np.minimum(np.maximum(ref_linear(x, w, b), 0), 6))
    with _config.threads(3 - threads):
        assert np.array_equal(LinearOp(w, b, activation="relu6", kernel="sparse")(x), y)


def _panel_major_by_argsort(m, width):
    """The panel-major layout as first written (a stable argsort of all non-zeros): the
    reference for the blockwise counting sort."""
    O, n_cols = m.shape
    cols = m.indices.astype(np.int64)
    rows = np.repeat(np.arange(O, dtype=np.int64), np.diff(m.indptr))
    key = (cols // width) * O + rows
    order = np.argsort(key, kind="stable")
    n_panels = max(1, -(-n_cols // width))
    indptr = np.zeros(n_panels * O + 1, dtype=np.int64)
    np.cumsum(np.bincount(key, minlength=n_panels * O), out=indptr[1:])
    return indptr, (cols[order] % width).astype(np.uint16), m.data[order]


@pytest.mark.parametrize("entries", [1, 7, 1 << 18])
@pytest.mark.parametrize("shape, sparsity", [((3, 6143), 0.0), ((40, 6145), 0.7),
                                             ((2, 70001), 0.97), ((1, 9000), 0.5),
                                             ((5, 10), 1.0)])
def test_panel_major_layout_matches_argsort(monkeypatch, entries, shape, sparsity, rng):
    from fscnn._ext import _linear
    from fscnn.kernels import sparse_linear
    from fscnn.sparse import CSRMatrix
    blocks = sparse_linear._panel_blocks
    monkeypatch.setattr(sparse_linear, "_panel_blocks",
                        lambda m, O, width: blocks(m, O, width, entries))
    m = CSRMatrix.from_dense(sparse_weight(shape, sparsity, rng))
    got = sparse_linear.panel_major(m)
    want = _panel_major_by_argsort(m, _linear.panel_width())
    for g, e in zip(got, want):
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("one_thread_close", [True, False])
def test_auto_builds_the_dense_form_of_sparse_weights_once_per_choice(one_thread_close, rng,
                                                                      monkeypatch):
    """Sparse-held weights get a transient dense form to time the dense candidate: one copy
    shared by the plans on every thread count (VGG16's classifier took 0.7 s per copy), not
    kept once the choice is made unless the dense kernel won."""
    from fscnn import _config, ops
    from fscnn.sparse import CSRMatrix
    w = sparse_weight((64, 96), 0.9, rng)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    op = LinearOp(CSRMatrix.from_dense(w), kernel="auto")
    copies = []
    densify = op._densify
    monkeypatch.setattr(op, "_densify", lambda: copies.append(1) or densify())
    # the winner on one thread within ONE_THREAD_PLAUSIBLE of all threads, or not: then the
    # other candidates (the dense one among them) are planned on one thread too, or not
    monkeypatch.setattr(ops, "_typical_calls",
                        lambda fns: [1.0] + [1.1 if one_thread_close else 2.0] * (len(fns) - 1))
    with _config.threads(2):
        assert_close(op(x), ref_linear(x, w))
        winner = op.kernel_for(x.shape)
    assert len(copies) == 1
    assert op._choice_dense is None and op.holds_dense == (winner == "dense")
