"""Helpers for testing QBench plugins the way users install them.

A plugin's own tests (and QBench's) install a distribution into a throwaway folder and run
``qbench`` in a fresh process with that folder on ``PYTHONPATH``: ``importlib.metadata`` then
finds the real dist-info and entry points, exactly as after ``pip install``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

#: ``python -c`` code that runs the qbench CLI with the remaining arguments.
CLI_CODE = "import sys; from qbench.cli import main; main(sys.argv[1:])"


def install_into(sources: Sequence[os.PathLike[str] | str], target: os.PathLike[str] | str) -> None:
    """pip-install distributions (source folders or wheels, no dependencies) into ``target``.

    Uses ``uv pip`` when uv is on PATH (fast, cached build backends), else ``pip``.
    """
    uv = shutil.which("uv")
    if uv:
        installer = [uv, "pip", "install", "--python", sys.executable]
    else:
        installer = [sys.executable, "-m", "pip", "install"]
    command = [*installer, "--quiet", "--no-deps", "--target", str(target), *map(str, sources)]
    subprocess.run(command, check=True, capture_output=True, text=True)


def run_python(
    code: str,
    *args: str,
    pythonpath: os.PathLike[str] | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: os.PathLike[str] | str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` in a fresh interpreter, ``pythonpath`` prepended."""
    environment = dict(os.environ)
    environment.update(env or {})
    if pythonpath is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), environment.get("PYTHONPATH", "")]
        )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=timeout,
    )


def run_cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``qbench args...`` in a fresh interpreter (same keywords as :func:`run_python`)."""
    return run_python(CLI_CODE, *args, **kwargs)  # type: ignore[arg-type]


__all__ = ["CLI_CODE", "install_into", "run_cli", "run_python"]
