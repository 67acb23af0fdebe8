"""``qbench run --reproduce`` on the demo (the real zoo model and digits data, all three
metrics) reports a match: same code, same data, same machine, same bits."""

from __future__ import annotations

import json

import pytest
from integration_helpers import REPO
from qbench.cli import main


def test_the_demo_reproduces(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(
            [
                "run",
                str(REPO / "configs" / "quickstart.yaml"),
                "--limit",
                "64",
                "--output",
                "first",
                "--no-progress",
            ]
        )
    assert info.value.code == 0
    report = tmp_path / "first" / "zoo_tiny_resnet" / "quickstart" / "report.json"
    recorded = json.loads(report.read_text())["provenance"]
    assert recorded["data_sha256"] and recorded["config"]["dataset"]["limit"] == 64
    with pytest.raises(SystemExit) as info:
        main(["run", "--reproduce", str(report), "--output", "second", "--no-progress"])
    assert info.value.code == 0, capsys.readouterr().err
    assert "reproduced: every number of" in capsys.readouterr().out
