"""Fixtures for core tests: a plugin host holding only the toy plugin (core_toys.py)."""

from __future__ import annotations

import pytest
import qbench.plugins as plugins
from core_toys import ToyPlugin


@pytest.fixture
def toy_plugins(monkeypatch):
    """A plugin host holding only the toy plugin (installed siblings are blocked)."""
    monkeypatch.setenv(plugins.DISABLE_ENV, "qbench-formats,qbench-ops,qbench-adapters,qbench-eval")
    plugins.reset()
    plugins.register_plugin(ToyPlugin(), "toy")
    yield plugins.host()
    plugins.reset()
