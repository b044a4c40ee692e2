"""The test suite's own rule: a missing optional dependency skips locally and fails on CI."""

import pytest
from conftest import REQUIRE_ALL, require_or_skip


def test_a_missing_dependency_skips_locally_and_fails_under_require_all(monkeypatch):
    monkeypatch.delenv(REQUIRE_ALL, raising=False)
    require_or_skip(True, "present")  # nothing happens
    with pytest.raises(pytest.skip.Exception, match="ffcv is not installed"):
        require_or_skip(False, "ffcv is not installed")
    monkeypatch.setenv(REQUIRE_ALL, "1")
    with pytest.raises(pytest.fail.Exception, match="ffcv is not installed; UNIFLOW_REQUIRE_ALL=1 makes"):
        require_or_skip(False, "ffcv is not installed")


def test_every_test_has_a_time_limit(pytestconfig):
    """pytest-timeout is configured: a hung test fails instead of stalling CI."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) > 0
