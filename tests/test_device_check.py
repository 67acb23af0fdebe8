"""The prepared device check (``benchmarks/device``): what a session lent a GPU runs in one
or two calls, on a machine that reaches no package registry. A mistake found there costs
minutes of a 15-minute lease, so what can be checked here is checked here: both scripts
parse, every benchmark option the check passes exists, every format it names is registered,
and the wheels it installs are the versions ``uv.lock`` pins."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from integration_helpers import REPO

DEVICE = REPO / "benchmarks" / "device"
sys.path.insert(0, str(DEVICE))
import pins  # noqa: E402  (benchmarks/device/pins.py)


def _commands(script: Path) -> list[list[str]]:
    """The benchmark commands of ``script``: joined continuation lines, split like a shell."""
    text = script.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if "benchmarks/" in line and ".py" in line and not line.lstrip().startswith("#"):
            words = shlex.split(line.replace('"$PYTHON"', "python").replace('"$DEVICE"', "cuda"))
            commands.append(words)
    return commands


@pytest.mark.parametrize("script", ["check.sh", "wheels.sh"])
def test_the_device_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(DEVICE / script)], check=True)


def test_the_check_refuses_an_unknown_phase_before_installing_anything(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(DEVICE / "check.sh"), "everything"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)},
    )
    assert done.returncode == 2 and "usage" in done.stderr
    assert not any(tmp_path.iterdir())


def test_every_benchmark_option_the_check_passes_exists() -> None:
    import qbench

    commands = [c for c in _commands(DEVICE / "check.sh") if any(".py" in w for w in c)]
    scripts = {Path(w).name for c in commands for w in c if w.startswith("benchmarks/")}
    assert scripts == {"quantize.py", "call_overhead.py", "run_overhead.py"}, scripts
    for words in commands:
        script = next(w for w in words if w.startswith("benchmarks/"))
        source = (REPO / script).read_text()
        options = [w for w in words if w.startswith("--") and not w.startswith("--kill")]
        for option in options:
            assert f'"{option}"' in source, (script, option)
        if "--formats" in words:
            names = words[words.index("--formats") + 1 :]
            names = names[: next((i for i, w in enumerate(names) if w.startswith("-")), None)]
            assert names and all(qbench.get_format(name).name == name for name in names)
        if "--model" in words:
            assert words[words.index("--model") + 1] in re.findall(r'"(\w+)"', source)


def test_the_wheels_are_the_versions_the_lock_pins() -> None:
    lock = (REPO / "uv.lock").read_text()
    # read apart from pins.py's TOML parse: each package's name line, then its version line
    lines = lock.splitlines()
    locked = {
        line.split('"')[1]: following.split('"')[1]
        for line, following in zip(lines, lines[1:], strict=False)
        if line.startswith("name = ") and following.startswith("version = ")
    }
    names = re.search(r"pins\.py ([^)\n]+)", (DEVICE / "wheels.sh").read_text()).group(1).split()
    assert "jsonschema" in names and "rpds-py" in names
    assert pins.pins(names, lock) == [f"{name}=={locked[name]}" for name in names]
    with pytest.raises(SystemExit, match="no package 'not-a-dependency'"):
        pins.pins(["not-a-dependency"], lock)
