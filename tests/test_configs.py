"""Every example config in configs/ validates against the merged schema."""

from __future__ import annotations

import pytest
from conftest import QBENCH, REPO
from qbench.testing import run_python

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_configs():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "fp8_e4m3_chunk128", "imagenet_fp8"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid(path):
    result = run_python(QBENCH, "validate", str(path), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok" in result.stdout
