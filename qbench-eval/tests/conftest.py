"""Registers qbench-eval's test formats (see eval_helpers) for the whole test session."""

from __future__ import annotations

import pytest
import qbench.plugins
from eval_helpers import FormatsForTests


@pytest.fixture(scope="session", autouse=True)
def test_formats() -> None:
    """Registers the test formats in-process for the whole session."""
    qbench.plugins.register_plugin(FormatsForTests, "qbench-eval-test-formats")
    yield
    qbench.plugins.unregister_plugin("qbench-eval-test-formats")
