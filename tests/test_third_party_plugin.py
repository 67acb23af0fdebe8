"""A third party adds formats by pip-installing a plugin, without touching QBench."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest
from integration_helpers import QBENCH, REPO
from qbench.testing import install_into, run_python


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    install_into([REPO / "examples" / "qbench-example-formats"], target)
    return target


def test_installed_plugin_is_discovered(site):
    result = run_python(QBENCH, "plugins", pythonpath=site)
    assert result.returncode == 0, result.stderr
    assert "qbench-example-formats 0.1.0" in result.stdout
    assert "fp8_e3m4" in result.stdout


def test_new_format_prints_its_value_table(site):
    result = run_python(QBENCH, "formats", "fp8_e3m4", pythonpath=site)
    assert result.returncode == 0, result.stderr
    # IEEE-like E3M4, bias 3 (ml_dtypes.float8_e3m4): field 111 is inf/NaN, so
    # max = 2^(6-3) * (1 + 15/16) = 15.5
    assert "15.5" in result.stdout and "qbench-example-formats" in result.stdout
    assert "30" not in result.stdout


def test_new_format_quantizes_through_the_public_api(site):
    code = textwrap.dedent(
        """
        import torch, qbench
        fmt = qbench.get_format("fp5_e2m2")
        # bias 1, no inf/NaN: subnormal step 2^0 * 1/4, max 2^2 * 1.75 = 7
        assert fmt.max_value == 7.0, fmt.max_value
        assert fmt.values().tolist()[-3:] == [5.0, 6.0, 7.0]
        x = torch.tensor([0.1, 0.125, 0.375, 6.4, 100.0, -3.3])
        y = fmt.round(x)
        assert y.tolist() == [0.0, 0.0, 0.5, 6.0, 7.0, -3.5], y.tolist()
        r = qbench.quantize(torch.tensor([1.0, -2.0, 28.0]), "fp8_e3m4", return_codes=True)
        e3m4 = qbench.get_format("fp8_e3m4")
        assert e3m4.max_value == 15.5 and r.dequantized[2].item() == 28.0
        assert torch.equal(e3m4.decode(r.codes) * r.expand_scales(), r.dequantized)
        print("ok")
        """
    )
    result = run_python(code, pythonpath=site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_config_using_the_new_format_validates(site, tmp_path):
    config = tmp_path / "e3m4.yaml"
    config.write_text(
        (REPO / "configs" / "quickstart.yaml").read_text().replace("fp8_e4m3", "fp8_e3m4")
    )
    assert "fp8_e3m4" in config.read_text()
    result = run_python(QBENCH, "validate", str(config), pythonpath=site)
    assert result.returncode == 0, result.stderr
    # and without the plugin the same file is refused, naming the key
    refused = run_python(QBENCH, "validate", str(config))
    assert refused.returncode == 2
    assert "quantization.format" in refused.stderr


@pytest.mark.slow
def test_the_documented_uv_install_works_from_a_fresh_clone(tmp_path):
    """examples/qbench-example-formats/README.md: `uv sync`, `uv pip install -e
    ./examples/qbench-example-formats`, `uv run qbench ...`, in a clone of the committed
    tree; a plain `uv sync` removes the plugin again, `uv sync --inexact` keeps it."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        return subprocess.run(
            [uv, *args], cwd=clone, capture_output=True, text=True, env=env, timeout=900
        )

    synced = sh("sync", "--offline")
    if synced.returncode != 0:
        pytest.skip(f"uv sync needs the network here: {synced.stderr.strip()[-200:]}")
    installed = sh("pip", "install", "--offline", "-e", "./examples/qbench-example-formats")
    assert installed.returncode == 0, installed.stderr
    listed = sh("run", "--offline", "qbench", "plugins")
    assert listed.returncode == 0, listed.stderr
    assert "qbench-example-formats 0.1.0" in listed.stdout
    assert sh("sync", "--offline", "--inexact").returncode == 0
    assert "fp8_e3m4" in sh("run", "--offline", "qbench", "formats").stdout
    assert sh("sync", "--offline").returncode == 0  # exact: removes what the lock omits
    assert "fp8_e3m4" not in sh("run", "--offline", "--no-sync", "qbench", "formats").stdout
