"""Where the repository is, and the ``python -c`` code that runs the qbench CLI."""

from __future__ import annotations

from pathlib import Path

from qbench.testing import CLI_CODE

REPO = Path(__file__).resolve().parents[1]

#: ``run_python(QBENCH, *arguments)`` runs ``qbench *arguments`` in a fresh process.
QBENCH = CLI_CODE
