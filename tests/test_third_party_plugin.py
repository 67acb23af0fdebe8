"""A third party adds formats by pip-installing a plugin, without touching QBench."""

from __future__ import annotations

import textwrap

import pytest
from conftest import QBENCH, REPO
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
    # E3M4, bias 3, NaN at S.111.1111: max = 2^(7-3) * (1 + 14/16) = 30
    assert "30" in result.stdout and "qbench-example-formats" in result.stdout


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
        q = qbench.quantize(torch.tensor([1.0, -2.0, 28.0]), "fp8_e3m4", mode="tensor")
        assert torch.all(qbench.get_format("fp8_e3m4").is_representable(q / (28.0 / 30.0)))
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
