"""Plugin discovery with real entry points of real installed distributions.

Each throwaway distribution is written to a temp dir and installed (``uv pip install
--target`` or pip) into a folder put on PYTHONPATH of a fresh ``qbench`` process, so
``importlib.metadata`` finds genuine dist-info entry points, exactly as for a user's install.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from qbench.testing import install_into, run_cli

FORMAT_CLASS = """
class Fmt:
    def __init__(self, name):
        self.name = name
        self.bits = 2
        self.max_value = 1.0
        self.min_normal = 1.0
        self.min_subnormal = 1.0
        self.default_scaling = None
        self.element = name

    def values(self):
        import torch

        return torch.tensor([-1.0, 0.0, 1.0])

    def quantize(self, x, spec, *, return_codes=False, generator=None):
        return x.clamp(-1, 1).round()
"""

DISTRIBUTIONS = {
    "qbench-good-plugin": FORMAT_CLASS
    + textwrap.dedent(
        """
        from qbench import hookimpl

        @hookimpl
        def qbench_register_formats(register):
            register(Fmt("goodfmt"))
        """
    ),
    "qbench-broken-import": "raise ImportError('this plugin needs a library that is missing')\n",
    "qbench-broken-register": textwrap.dedent(
        """
        from qbench import hookimpl

        @hookimpl
        def qbench_register_formats(register):
            raise RuntimeError('registration exploded')
        """
    ),
    "qbench-typo-hook": textwrap.dedent(
        """
        from qbench import hookimpl

        @hookimpl
        def qbench_register_format(register):  # misspelled: no such hook
            pass
        """
    ),
    "qbench-dup-a": FORMAT_CLASS
    + "from qbench import hookimpl\n\n@hookimpl\ndef qbench_register_formats(register):\n    register(Fmt('dupfmt'))\n",
    "qbench-dup-b": FORMAT_CLASS
    + "from qbench import hookimpl\n\n@hookimpl\ndef qbench_register_formats(register):\n    register(Fmt('dupfmt'))\n",
}


def _write_distribution(root: Path, dist: str, module_source: str) -> Path:
    module = dist.replace("-", "_")
    src = root / dist
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(module_source)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "1.2.3"

            [tool.setuptools]
            packages = ["{module}"]

            [project.entry-points.qbench]
            {dist} = "{module}"
            """
        )
    )
    return src


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dists")
    target = tmp_path_factory.mktemp("site")
    sources = [_write_distribution(root, name, source) for name, source in DISTRIBUTIONS.items()]
    install_into(sources, target)
    return target


def qbench(site: Path, *args: str, disable: str = "") -> subprocess.CompletedProcess[str]:
    # keep first-party plugins out so each assertion is about the throwaway distributions
    blocked = ["qbench-formats", "qbench-ops", "qbench-adapters", "qbench-eval"]
    env = {"QBENCH_DISABLE_PLUGINS": ",".join(blocked + ([disable] if disable else []))}
    return run_cli(*args, pythonpath=site, env=env, timeout=120)


def _by_name(listing: list[dict]) -> dict[str, dict]:
    return {p["name"]: p for p in listing}


def test_discovery_lists_every_distribution_with_version(site):
    result = qbench(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = _by_name(json.loads(result.stdout))
    good = plugins["qbench-good-plugin"]
    assert good["status"] == "ok"
    assert good["distribution"] == "qbench-good-plugin" and good["version"] == "1.2.3"
    assert good["components"] == {"format": ["goodfmt"]}


def test_broken_plugins_are_isolated_and_reported(site):
    result = qbench(site, "plugins", "--json")
    plugins = _by_name(json.loads(result.stdout))
    assert plugins["qbench-broken-import"]["status"] == "broken"
    assert (
        "ImportError: this plugin needs a library that is missing"
        in plugins["qbench-broken-import"]["error"]
    )
    assert plugins["qbench-broken-register"]["status"] == "broken"
    assert "RuntimeError: registration exploded" in plugins["qbench-broken-register"]["error"]
    assert plugins["qbench-typo-hook"]["status"] == "broken"
    assert "qbench_register_format" in plugins["qbench-typo-hook"]["error"]
    # reported once each on stderr, naming distribution and version
    for dist in ("qbench-broken-import", "qbench-broken-register", "qbench-typo-hook"):
        lines = [
            line for line in result.stderr.splitlines() if f"from {dist} 1.2.3 is broken" in line
        ]
        assert len(lines) == 1, result.stderr


def test_other_commands_keep_working_beside_broken_plugins(site):
    result = qbench(site, "formats")
    assert result.returncode == 0, result.stderr
    assert "goodfmt" in result.stdout
    assert "qbench-good-plugin" in result.stdout


def test_duplicate_name_is_refused_naming_both_distributions(site):
    result = qbench(site, "formats", "dupfmt")
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("qbench: error:")]
    assert len(error) == 1
    assert "qbench-dup-a 1.2.3" in error[0] and "qbench-dup-b 1.2.3" in error[0]
    assert "Traceback" not in result.stderr
    listing = _by_name(json.loads(qbench(site, "plugins", "--json").stdout))
    assert "duplicate format 'dupfmt'" in (listing["qbench-dup-a"]["error"] or "") + (
        listing["qbench-dup-b"]["error"] or ""
    )


def test_disable_env_blocks_a_plugin(site):
    result = qbench(site, "formats", "dupfmt", disable="qbench-dup-b")
    assert result.returncode == 0, result.stderr
    listing = _by_name(json.loads(qbench(site, "plugins", "--json", disable="qbench-dup-b").stdout))
    assert listing["qbench-dup-b"]["status"] == "disabled"
    assert listing["qbench-dup-a"]["components"] == {"format": ["dupfmt"]}
    blocked_good = _by_name(
        json.loads(qbench(site, "plugins", "--json", disable="qbench-good-plugin").stdout)
    )
    assert blocked_good["qbench-good-plugin"]["status"] == "disabled"
    assert qbench(site, "formats", "goodfmt", disable="qbench-good-plugin").returncode == 2


def test_unknown_component_suggests_closest(site):
    result = qbench(site, "formats", "goodfm")
    assert result.returncode == 2
    assert "did you mean 'goodfmt'?" in result.stderr
    assert "installed formats:" in result.stderr
