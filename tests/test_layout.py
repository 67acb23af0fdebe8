"""Test modules cannot collide by name.

pytest imports test modules by path (``--import-mode=importlib``, set in the root
pyproject.toml) and the helper modules beside them are found through its ``pythonpath`` by
their bare names, so every package's tests run in one pytest invocation only while no two
modules in the repository's test folders share a name (``conftest.py`` aside: pytest imports
each one itself, under a name made from its path). A test module imports helpers by their own
name, never ``from conftest`` (a different file in every folder), nor another test module."""

from __future__ import annotations

import ast
import os
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Folders never searched: version control, virtual environments, caches, build output.
SKIPPED_FOLDERS = {".git", ".venv", ".nox", "node_modules", "__pycache__", "build", "dist"}
#: Module names pytest itself gives to several files.
PYTEST_NAMES = {"conftest", "__init__"}

#: Test modules allowed to import helpers ``from conftest`` (none: helpers live in uniquely
#: named modules such as core_toys.py).
STILL_IMPORTING_CONFTEST: set[str] = set()


def _is_test_module(path: Path) -> bool:
    return path.name.startswith("test_") or path.stem.endswith("_test")


def python_files_of_tests() -> list[Path]:
    """Every Python file in a folder named ``tests`` and every test module elsewhere."""
    found = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [
            name
            for name in subfolders
            if name not in SKIPPED_FOLDERS
            and not name.startswith(".")
            and not (Path(folder, name) / "pyvenv.cfg").exists()
        ]
        in_tests = "tests" in Path(folder).relative_to(REPO).parts
        for name in files:
            path = Path(folder, name)
            if path.suffix == ".py" and (in_tests or _is_test_module(path)):
                found.append(path)
    return sorted(found)


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _pytest_options() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def test_every_tests_folder_is_searched():
    folders = {path.parent for path in python_files_of_tests()}
    assert {REPO / "tests", *REPO.glob("qbench-*/tests")} <= folders


def test_no_two_test_modules_share_a_name():
    by_name = defaultdict(list)
    for path in python_files_of_tests():
        if path.stem not in PYTEST_NAMES:
            by_name[path.stem].append(_relative(path))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not shared, (
        f"modules sharing a name (prefix each with its package, e.g. test_formats_gpu.py): {shared}"
    )


def test_pytest_imports_by_path_in_this_session(request: pytest.FixtureRequest):
    # nox and CI run pytest from the repository root, so the root pyproject.toml configures
    # every session; a session that picked up another configuration fails here.
    assert request.config.getoption("importmode") == "importlib"
    assert "--import-mode=importlib" in _pytest_options()["addopts"]


def test_every_test_folder_with_helpers_is_on_pytests_pythonpath():
    pythonpath = _pytest_options()["pythonpath"]
    folders = {
        _relative(path.parent)
        for path in python_files_of_tests()
        if not _is_test_module(path) and path.stem not in PYTEST_NAMES
    }
    assert folders <= set(pythonpath), f"add to [tool.pytest.ini_options] pythonpath: {folders}"
    assert pythonpath[0] == "qbench-core/tests" or not STILL_IMPORTING_CONFTEST


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_test_modules_import_neither_conftest_nor_each_other():
    paths = python_files_of_tests()
    test_modules = {path.stem for path in paths if _is_test_module(path)}
    from_conftest, from_test_modules = set(), {}
    for path in paths:
        imported = _imported_modules(path)
        if "conftest" in imported and path.name != "conftest.py":
            from_conftest.add(_relative(path))
        if imported & test_modules:
            from_test_modules[_relative(path)] = sorted(imported & test_modules)
    assert from_conftest <= STILL_IMPORTING_CONFTEST, (
        "import helpers from a uniquely named module beside the tests (e.g. core_toys), not "
        f"from conftest: {sorted(from_conftest - STILL_IMPORTING_CONFTEST)}"
    )
    assert not from_test_modules, (
        f"test modules importing other test modules (move what they share into a helper "
        f"module): {from_test_modules}"
    )
