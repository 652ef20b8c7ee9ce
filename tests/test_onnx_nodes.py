"""Every supported ONNX operator against ONNX's own test cases.

``onnx.backend.test.case.node`` builds, offline, the node tests of the ONNX standard: a
one-operator model (or a function expanded into several), inputs, and outputs computed by
ONNX's reference implementation. Each case whose operators fscnn imports must either match
those outputs or be refused with a :class:`fscnn.ModelImportError` for one of the reasons
listed in :data:`REFUSED` (features fscnn deliberately does not implement); a refusal not
listed, or a listed case that imports, fails the test, so the list cannot silently grow or go
stale.
"""
import re
import warnings

import numpy as np
import pytest

from conftest import import_or_skip

onnx = import_or_skip("onnx", "pip install \"fscnn[onnx]\"")

import fscnn  # noqa: E402
from fscnn.importers.onnx import MIN_OPSET, supported_operators  # noqa: E402

# Reasons fscnn refuses a case, by test-name pattern. Each is a feature outside fscnn's scope
# (2-D CNN inference in float32), refused at import with a message naming it.
REFUSED = {
    r"(pool|convtranspose)_[13]d|causal_conv":
        "1-D and 3-D convolutions and pools (fscnn implements 2-D)",
    r"training|dropout_default_mask": "training mode and dropout masks",
    r"cubic|tf_crop_and_resize|antialias": "cubic, crop-and-resize and antialiased resizing",
    r"FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2|BFLOAT16|e8m0|string":
        "8-bit and smaller float types, packed 4- and 2-bit integers, bfloat16, strings",
    r"averagepool_2d_dilations": "dilated average pooling",
    r"maxpool_with_argmax": "the indices output of MaxPool",
    r"identity_sequence|identity_opt": "sequence and optional values",
    r"wrap_pad": "Pad's 'wrap' mode",
}

# Cases whose reference outputs were written by hand to 4 decimals (apparently from unrounded
# inputs: channel 1 is the mean 2.5564 / 9 = 0.28404, written 0.2841): the absolute error
# allowed.
ROUNDED = {"test_averagepool_2d_ceil_last_window_starts_on_pad": 1e-4}


def _cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case import node
        cases = node.collect_testcases(None)
    ops = set(supported_operators())
    return [c for c in cases if {n.op_type for n in c.model.graph.node} <= ops]


CASES = _cases()


def _array(value):
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) \
        else np.asarray(value)


def _refusal(case):
    opset = {o.domain: o.version for o in case.model.opset_import}.get("", MIN_OPSET)
    if opset < MIN_OPSET:
        return f"opset {opset} (fscnn imports opsets {MIN_OPSET} and newer)"
    for pattern, reason in REFUSED.items():
        if re.search(pattern, case.name, re.IGNORECASE):
            return reason
    return None


def _assert_matches(got, expected, name):
    got, expected = np.asarray(got), _array(expected)
    assert got.shape == expected.shape, f"shape {got.shape}, expected {expected.shape}"
    if expected.dtype.kind not in "fc":
        np.testing.assert_array_equal(got, expected)
        return
    g, e = got.astype(np.float64), expected.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
    inf = np.isinf(e)
    np.testing.assert_array_equal(g[inf], e[inf])
    finite = np.isfinite(e)
    if not finite.any():
        return
    # fscnn computes in float32: float16 references carry float16 rounding
    rtol = 2e-3 if expected.dtype == np.float16 else 1e-5
    scale = max(np.abs(e[finite]).max(), 1e-3)
    err = np.abs(g[finite] - e[finite]).max()
    atol = ROUNDED.get(name, 0.0) + 1e-6
    assert err <= rtol * scale + atol, f"max error {err:.3g} for values up to {scale:.3g}"


def test_the_suite_covers_the_operators():
    covered = {n.op_type for c in CASES for n in c.model.graph.node}
    # operators ONNX's suite has no case of in isolation are exercised by the model tests
    missing = set(supported_operators()) - covered - {"Upsample"}
    assert not missing, f"no ONNX test case imports only supported operators for {missing}"
    assert len(CASES) > 500


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_onnx_node_case(case):
    reason = _refusal(case)
    if reason is not None:
        with pytest.raises(fscnn.ModelImportError):
            fscnn.from_onnx(case.model)
        return
    model = fscnn.from_onnx(case.model)
    for inputs, outputs in case.data_sets:
        got = model(*[_array(x) for x in inputs])
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(outputs)
        for g, e in zip(got, outputs):
            _assert_matches(g, e, case.name)
