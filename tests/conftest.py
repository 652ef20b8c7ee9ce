"""Shared test helpers and fixtures.

Importing helpers: this file puts ``tests/`` at the front of ``sys.path`` when pytest loads it,
so test modules write ``from reference import conv2d`` and ``from conftest import assert_close``
whatever pytest's ``--import-mode`` is (``tests/`` is deliberately not a package).

Tolerances: :data:`TOL` maps the dtype a result is computed in to ``rtol``/``atol``, and
:func:`assert_close` applies them norm-wise,

    max|actual - expected| <= atol + rtol * max|expected|,

instead of element by element. A convolution output is a sum of many terms; an element that
cancels to almost zero carries the rounding error of its large terms, so an element-wise
relative test fails on correct kernels, while the error is always small relative to the
largest output. NaN and infinities must appear at the same places in both arrays.

Fixtures: ``rng`` (a NumPy Generator seeded from the test's id, so every test is reproducible
on its own), ``threads`` (runs the test with 1 and 2 kernel threads) and ``simd_level``
(runs the test at every SIMD level the CPU supports). Plain helpers: :func:`sparse_weight`,
:func:`torch_or_skip`, :func:`to_torch`.
"""
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fscnn import _config  # noqa: E402  (after the sys.path line on purpose)

TOL = {
    np.float64: dict(rtol=1e-12, atol=1e-12),
    np.float32: dict(rtol=1e-5, atol=1e-6),
    np.float16: dict(rtol=2e-3, atol=1e-4),
}
"""Norm-wise tolerances per computation dtype, used by :func:`assert_close`."""

THREAD_COUNTS = (1, 2)
SUPPORTED_SIMD_LEVELS = _config.SIMD_LEVELS[:_config.SIMD_LEVELS.index(_config.cpu_simd_level()) + 1]


def assert_close(actual, expected, dtype=np.float32, rtol=None, atol=None, check_dtype=True):
    """Assert that ``actual`` matches ``expected`` within the norm-wise tolerance for ``dtype``.

    Parameters
    ----------
    actual : ndarray
        Result under test; with ``check_dtype`` its dtype must be ``dtype``.
    expected : array_like
        Reference result (usually float64), same shape as ``actual``.
    dtype : numpy float type
        Key into :data:`TOL`: the precision ``actual`` was computed in.
    rtol, atol : float, optional
        Override the table entry (state why at the call site).
    check_dtype : bool
        Also require ``actual.dtype == dtype``.
    """
    tol = dict(TOL[dtype])
    if rtol is not None:
        tol["rtol"] = rtol
    if atol is not None:
        tol["atol"] = atol
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if check_dtype:
        assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype}, expected {np.dtype(dtype)}"
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (
        f"NaN at {np.argwhere(nan_a != nan_e)[:5].tolist()} differs (actual NaN: "
        f"{nan_a.sum()}, expected NaN: {nan_e.sum()})")
    inf_e = np.isinf(e)
    assert np.array_equal(a[inf_e], e[inf_e]) and not np.isinf(a[~inf_e]).any(), \
        "infinities differ"
    finite = ~(nan_e | inf_e)
    if not finite.any():
        return
    with np.errstate(invalid="ignore"):
        err = np.where(finite, np.abs(a - e), 0.0)
    scale = np.abs(e[finite]).max()
    bound = tol["atol"] + tol["rtol"] * scale
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err[worst] <= bound, (
        f"max|actual - expected| = {err[worst]:.3g} > {bound:.3g} "
        f"(atol {tol['atol']:.1g} + rtol {tol['rtol']:.1g} * max|expected| {scale:.3g}); "
        f"worst at {tuple(int(i) for i in worst)}: actual {a[worst]!r}, expected {e[worst]!r}")


def sparse_weight(shape, sparsity, rng, dtype=np.float32):
    """Random weights with exactly ``round(sparsity * size)`` zeros at random positions.

    The non-zeros are normal with standard deviation ``1 / sqrt(fan_in)`` (fan_in = product of
    all dimensions but the first), so layer outputs stay of order one, and are never zero.

    Parameters
    ----------
    shape : tuple of int
    sparsity : float in [0, 1]
        1.0 gives an all-zero array.
    rng : numpy.random.Generator
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparse_weight: sparsity must be in [0, 1], got {sparsity}")
    size = int(np.prod(shape))
    fan_in = max(1, size // shape[0]) if len(shape) > 1 else size
    w = rng.standard_normal(size) / np.sqrt(fan_in)
    w[w == 0.0] = 1.0 / np.sqrt(fan_in)
    w[rng.permutation(size)[:int(round(sparsity * size))]] = 0.0
    return w.reshape(shape).astype(dtype)


def torch_or_skip():
    """The ``torch`` module, or skip the calling test when PyTorch is not installed."""
    return pytest.importorskip("torch")


def to_torch(a):
    """A torch tensor holding a copy of ``a``, same dtype (call after :func:`torch_or_skip`)."""
    import torch
    return torch.from_numpy(np.array(a))


@pytest.fixture
def rng(request):
    """A NumPy Generator seeded from the test's node id."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=THREAD_COUNTS, ids=lambda n: f"threads{n}")
def threads(request):
    """Runs the test with fscnn's kernels set to 1, then 2, threads; yields the count."""
    with _config.threads(request.param):
        yield request.param


@pytest.fixture(params=SUPPORTED_SIMD_LEVELS)
def simd_level(request):
    """Runs the test at each SIMD level this CPU supports; yields the level's name."""
    with _config.simd(request.param):
        yield request.param
