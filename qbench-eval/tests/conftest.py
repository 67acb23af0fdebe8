"""Registers qbench-eval's test formats (see eval_helpers) for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import qbench.plugins
from eval_helpers import FormatsForTests, kernels_on


@pytest.fixture(scope="session", autouse=True)
def test_formats() -> None:
    """Registers the test formats in-process for the whole session."""
    qbench.plugins.register_plugin(FormatsForTests, "qbench-eval-test-formats")
    yield
    qbench.plugins.unregister_plugin("qbench-eval-test-formats")


@pytest.fixture(params=["eager", "compiled"])
def kernel_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test with every fused kernel (qbench.kernels) eager, as on small tensors, or
    compiled, as on large ones; a compile that silently fell back to eager fails the test."""
    import qbench.kernels

    with kernels_on(request.param):
        yield request.param
    assert not qbench.kernels._FAILED, "a kernel fell back to eager: its compile failed"
