"""scale_method percentile/mse reach the spec from a config and from qbench.quantize, and
say so in the spec's description."""

from __future__ import annotations

import pytest
import yaml
from core_toys import toy_config
from qbench.config import load_config
from qbench.spec import role_spec
from qbench.types import QuantSpec, Scaling


def test_percentile_reaches_every_role_and_can_be_set_per_role(toy_plugins, tmp_path):
    quantization = {
        "format": "toy3",
        "scale_method": "percentile",
        "percentile": 99.5,
        "act_format": "toy3",
        "act_percentile": 90.0,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(toy_config(quantization=quantization)))
    q = load_config(path)["quantization"]
    weight, act = role_spec(q, "weight"), role_spec(q, "act")
    assert (weight.scaling.scale_method, weight.scaling.percentile) == ("percentile", 99.5)
    assert act.scaling.percentile == 90.0
    assert weight.describe() == "toy3 tensor percentile=99.5"


@pytest.mark.parametrize("value", [0, 100.5, "high"])
def test_a_percentile_out_of_range_is_refused_in_one_line(toy_plugins, tmp_path, value):
    path = tmp_path / "bad.yaml"
    quantization = {"format": "toy3", "scale_method": "percentile", "percentile": value}
    path.write_text(yaml.safe_dump(toy_config(quantization=quantization)))
    with pytest.raises(Exception) as info:
        load_config(path)
    assert "quantization.percentile" in str(info.value)


def test_mse_is_named_in_the_description():
    spec = QuantSpec("fp8_e4m3", Scaling(mode="channel", axis=0, scale_method="mse"))
    assert spec.describe() == "fp8_e4m3 channel mse"
