"""The README's two commands stay true: CI runs exactly the test command."""

from __future__ import annotations

import re

from integration_helpers import REPO


def _quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quickstart = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)]


def test_exactly_two_commands_near_the_top():
    commands = _quickstart_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert "qbench run configs/quickstart.yaml" in commands[0]
    assert "nox" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == _quickstart_commands()[1]
