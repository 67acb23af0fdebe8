"""Per-role and per-layer QuantSpec resolution (the `quantization:` keys of the README's config reference)."""

from __future__ import annotations

import pytest
from qbench.errors import QBenchError
from qbench.spec import layer_specs, role_spec, spec_from_arguments
from qbench.types import Scaling


def test_role_keys_override_global(toy_plugins):
    q = {
        "format": "toy3",
        "mode": "chunk",
        "chunk_size": 64,
        "weight_mode": "channel",
        "act_chunk_size": 16,
    }
    assert role_spec(q, "weight").scaling.mode == "channel"
    assert role_spec(q, "input").scaling == Scaling(mode="chunk", chunk_size=64)
    assert role_spec(q, "act").scaling == Scaling(mode="chunk", chunk_size=16)
    assert role_spec(q, "stats") == role_spec(q, "weight")


def test_role_format_override_and_disable(toy_plugins):
    q = {"format": "toy3", "weight_format": "toy3_block", "input_enabled": False}
    assert role_spec(q, "weight").format == "toy3_block"
    assert role_spec(q, "input") is None
    assert role_spec(q, "act").format == "toy3"
    assert role_spec({**q, "stats_enabled": False}, "stats") is None


def test_preset_brings_its_scaling_and_explicit_role_keys_win(toy_plugins):
    q = {"format": "toy3", "mode": "tensor", "weight_format": "toy3_block"}
    # the global mode belongs to the global format, not to the weight preset
    assert role_spec(q, "weight").scaling == Scaling(
        mode="chunk", chunk_size=4, axis=-1, scale_format="toy3"
    )
    q["weight_chunk_size"] = 8
    assert role_spec(q, "weight").scaling.chunk_size == 8
    # a global preset with explicit global keys: the explicit keys win
    assert role_spec({"format": "toy3_block", "chunk_size": 2}, "input").scaling.chunk_size == 2


def test_chunk_mode_without_size_is_an_error(toy_plugins):
    with pytest.raises(QBenchError, match="weight_chunk_size"):
        role_spec({"format": "toy3", "weight_mode": "chunk"}, "weight")


class Named:
    pass


class Linear(Named):
    pass


def test_layer_overrides_first_match_wins(toy_plugins):
    q = {
        "format": "toy3",
        "layers": [
            {"match": "layer4.*", "format": "toy3_block"},
            {"type": "Linear", "enabled": False},
            {"match": "layer4.1", "enabled": False},
        ],
    }
    assert layer_specs(q, "layer4.1", Named()).weight.format == "toy3_block"
    assert not layer_specs(q, "fc", Linear()).enabled
    assert layer_specs(q, "layer1.0", Named()).weight.format == "toy3"
    both = {"format": "toy3", "layers": [{"match": "a*", "type": "Linear", "enabled": False}]}
    assert layer_specs(both, "a1", Named()).enabled
    assert not layer_specs(both, "a1", Linear()).enabled


def test_quantize_arguments_default_to_tensor_mode(toy_plugins):
    assert spec_from_arguments("toy3").scaling.mode == "tensor"
    assert spec_from_arguments("toy3_block").scaling.mode == "chunk"
    assert spec_from_arguments("toy3_block", mode="tensor").scaling.mode == "tensor"
