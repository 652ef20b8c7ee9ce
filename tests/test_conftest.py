"""The test helpers themselves: a required optional reference fails instead of skipping."""
import pytest

from conftest import import_or_skip, required

MISSING = "fscnn_no_such_module"


def test_a_missing_module_skips_by_default(monkeypatch):
    monkeypatch.delenv("FSCNN_REQUIRE_ALL", raising=False)
    monkeypatch.delenv("FSCNN_REQUIRE_" + MISSING.upper(), raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"needs {MISSING}"):
        import_or_skip(MISSING)


@pytest.mark.parametrize("variable", ["FSCNN_REQUIRE_" + MISSING.upper(), "FSCNN_REQUIRE_ALL"])
def test_a_required_module_fails_instead_of_skipping(monkeypatch, variable):
    monkeypatch.delenv("FSCNN_REQUIRE_ALL", raising=False)
    monkeypatch.setenv(variable, "1")
    assert required(MISSING)
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        import_or_skip(MISSING)


def test_an_installed_module_is_returned():
    assert import_or_skip("numpy").__name__ == "numpy"
