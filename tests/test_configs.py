"""Every example config in configs/ validates: against the merged schema, and (where its data
ships with QBench) against everything a run checks before its first batch."""

from __future__ import annotations

import pytest
from integration_helpers import QBENCH, REPO
from qbench.testing import run_python

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
#: Configs whose data or weights are downloaded by the user (see their comments).
EXTERNAL = {"fp8_e4m3_chunk128", "imagenet_fp8"}


def test_there_are_configs():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "fp8_e4m3_chunk128", "imagenet_fp8"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid(path, tmp_path):
    schema = run_python(QBENCH, "validate", "--schema-only", str(path), cwd=REPO)
    assert schema.returncode == 0, schema.stderr
    assert f"{path}: ok (schema only" in schema.stdout
    full = run_python(QBENCH, "validate", str(path), "--output", str(tmp_path / "out"), cwd=REPO)
    if path.stem in EXTERNAL:  # needs a download: refused in one line saying what is missing
        assert full.returncode == 2, full.stdout + full.stderr
        assert len(full.stderr.strip().splitlines()) == 1, full.stderr
        assert "Traceback" not in full.stderr
    else:
        assert full.returncode == 0, full.stderr
        assert f"{path}: ok" in full.stdout and ": model " in full.stdout
        assert "not checked: " in full.stdout
    assert not (tmp_path / "out").exists()  # validate writes nothing
