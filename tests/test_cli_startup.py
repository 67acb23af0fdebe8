"""`qbench --help` answers without importing torch (the CLI must be fast to start)."""

from __future__ import annotations

import textwrap

from qbench.testing import run_python


def test_help_does_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from qbench.cli import main
        try:
            main(["--help"])
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        heavy = sorted(m for m in ("torch", "torchvision", "numpy") if m in sys.modules)
        print("heavy:", heavy)
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout
    assert "qbench run" in result.stdout or "run" in result.stdout


def test_user_error_has_no_traceback_but_debug_shows_it(tmp_path):
    missing = tmp_path / "missing.yaml"
    plain = run_python(
        "import sys; from qbench.cli import main; main(sys.argv[1:])", "run", str(missing)
    )
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines()[-1] == f"qbench: error: {missing}: file not found"
    assert "Traceback" not in plain.stderr
    debug = run_python(
        "import sys; from qbench.cli import main; main(sys.argv[1:])",
        "--debug",
        "run",
        str(missing),
    )
    assert "Traceback" in debug.stderr
