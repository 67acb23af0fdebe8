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


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """``qbench validate`` of every config at once, schema only and in full: one process
    each (a process per config cost ~10 s of imports each, two minutes in all), each config
    answered on a line of its own."""
    out = tmp_path_factory.mktemp("validate") / "out"
    paths = [str(p) for p in CONFIGS]
    schema = run_python(QBENCH, "validate", "--schema-only", *paths, cwd=REPO)
    full = run_python(QBENCH, "validate", *paths, "--output", str(out), cwd=REPO)
    return {"schema": schema, "full": full, "out": out}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid(path, validated):
    schema, full = validated["schema"], validated["full"]
    assert schema.returncode == 0, schema.stderr
    assert f"{path}: ok (schema only" in schema.stdout
    refusals = [line.removeprefix("qbench: error: ") for line in full.stderr.splitlines()]
    mine = [line for line in refusals if line.startswith(f"{path}:")]
    if path.stem in EXTERNAL:  # needs a download: refused in one line saying what is missing
        assert full.returncode == 2, full.stdout + full.stderr
        assert len(mine) == 1, full.stderr
        assert f"{path}: ok" not in full.stdout
    else:
        assert not mine, full.stderr
        assert f"{path}: ok" in full.stdout and ": model " in full.stdout
        assert "not checked: " in full.stdout
    assert "Traceback" not in full.stderr
    # every line of the refusal names its config: nothing else went wrong
    assert all(line.startswith(tuple(f"{p}:" for p in CONFIGS)) for line in refusals)
    assert not validated["out"].exists()  # validate writes nothing
