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
:func:`import_or_skip`, :func:`torch_or_skip`, :func:`import_torchvision`, :func:`to_torch`.

Optional references (PyTorch, torchvision, ONNX Runtime, threadpoolctl, the notebooks'
packages) skip the tests that need them when they are missing, except where they must be
there: ``FSCNN_REQUIRE_<MODULE>=1`` (e.g. ``FSCNN_REQUIRE_TORCH=1``) or ``FSCNN_REQUIRE_ALL=1``
turns that skip into a failure. ``.ci/run`` sets ``FSCNN_REQUIRE_ALL=1``, so CI cannot pass
by skipping the comparisons with PyTorch and torchvision.
"""
import contextlib
import importlib
import importlib.util
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fscnn import _config  # noqa: E402  (after the sys.path line on purpose)

# The contention guard puts model calls on one thread when the calling thread gets too little
# CPU time: on a loaded test machine it would change the thread count that tests ask for.
# Its own tests (test_config.py) use guards of their own.
_config.set_adaptive_threads(False)

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


def required(module):
    """Whether ``module`` must be importable here (``FSCNN_REQUIRE_<MODULE>=1`` or
    ``FSCNN_REQUIRE_ALL=1``): then a test needing it fails instead of skipping."""
    variable = "FSCNN_REQUIRE_" + module.upper().replace(".", "_")
    return "1" in (os.environ.get(variable), os.environ.get("FSCNN_REQUIRE_ALL"))


def import_or_skip(module, how=None):
    """The module ``module``; when it cannot be imported, skip the calling test, or fail it
    when the module is :func:`required`.

    Parameters
    ----------
    module : str
    how : str, optional
        How to install it, added to the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"needs {module}{f' ({how})' if how else ''}: {exc}"
        if required(module):
            pytest.fail(f"{message}; FSCNN_REQUIRE_{module.upper()}=1 or FSCNN_REQUIRE_ALL=1 "
                        "forbids skipping", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def package_dir_or_skip(package, how=None):
    """The folder of the installed package ``package``, found without importing it (for
    packages installed only for their data files, such as ``digit_recognizer``, whose import
    pulls in torchvision); skip the calling test when it is missing, or fail it when it is
    :func:`required`."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return spec.submodule_search_locations[0]
    message = f"needs the data of {package}{f' ({how})' if how else ''}: not installed"
    if required(package):
        pytest.fail(f"{message}; FSCNN_REQUIRE_{package.upper()}=1 or FSCNN_REQUIRE_ALL=1 "
                    "forbids skipping", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def torch_or_skip():
    """The ``torch`` module, or skip the calling test when PyTorch is not installed (fail
    when it is :func:`required`)."""
    return import_or_skip("torch", "pip install torch==2.13.0")


def import_torchvision():
    """The ``torchvision`` module (for its model definitions), or skip / fail like
    :func:`import_or_skip`.

    PyPI's torchvision wheel is built against the CUDA build of torch; with the CPU build its
    import fails registering fake kernels for its C++ operators (``operator torchvision::nms
    does not exist``). Those operators (detection ops) are not needed for the classification
    models, so ``torch.library.register_fake`` is a no-op decorator while torchvision is
    imported, and restored afterwards. Tests only.
    """
    torch = torch_or_skip()
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if importlib.util.find_spec("torchvision") is None:
        return import_or_skip("torchvision", "pip install --no-deps torchvision==0.28.0")

    def register_fake(op, func=None, *args, **kwargs):
        return func if func is not None else (lambda f: f)

    with _patched(torch.library, "register_fake", register_fake):
        return import_or_skip("torchvision", "pip install --no-deps torchvision==0.28.0")


@contextlib.contextmanager
def _patched(owner, name, value):
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


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
