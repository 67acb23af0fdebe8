from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def install_target(sources: list[Path], target: Path) -> None:
    """pip-install distributions (without dependencies) into a folder for PYTHONPATH."""
    uv = shutil.which("uv")
    if uv:
        cmd = [
            uv,
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--python",
            sys.executable,
            "--target",
            str(target),
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
        ]
    subprocess.run([*cmd, *map(str, sources)], check=True, capture_output=True, text=True)


def run_python(
    code: str,
    *args: str,
    pythonpath: Path | None = None,
    cwd: Path | None = None,
    timeout: int = 300,
):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


QBENCH = "import sys; from qbench.cli import main; main(sys.argv[1:])"


@pytest.fixture
def repo() -> Path:
    return REPO
