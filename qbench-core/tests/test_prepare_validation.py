"""``qbench.prepare`` validates a ``quantization`` mapping as ``qbench validate`` does, and a
role setting for a role without a format is an error in both."""

from __future__ import annotations

import json

import pytest
import qbench
from core_toys import toy_config
from qbench.cli import main
from qbench.config import ConfigError, config_schema, load_config


@pytest.fixture
def model():
    from torch import nn

    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def _problems(model, spec) -> list[str]:
    with pytest.raises(ConfigError) as info:
        qbench.prepare(model, spec)
    return info.value.problems


def test_misspelled_key_is_refused(toy_plugins, model):
    (line,) = _problems(model, {"fromat": "toy3"})
    assert line.startswith("qbench.prepare: quantization: unknown key 'fromat'")
    assert "did you mean 'format'?" in line


def test_every_problem_is_listed_as_the_cli_lists_it(toy_plugins, model):
    problems = _problems(model, {"format": "toy3", "chunk_size": 0, "rounding": "stocastic"})
    assert problems == [
        "qbench.prepare: quantization.chunk_size: found 0; must be >= 1",
        "qbench.prepare: quantization.rounding: found 'stocastic' (did you mean 'stochastic'?); "
        "allowed: nearest_even, nearest_away, toward_zero, stochastic",
    ]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"format": "toy3", "axis": 1.0}, "quantization.axis: found number 1.0; expected integer"),
        (
            {"format": "toy3", "layers": [{"match": "0", "mode": "chunk"}]},
            "quantization.layers[0].act_chunk_size: mode 'chunk' needs a chunk_size",
        ),
        ({"format": "fp9"}, "quantization.format: unknown format 'fp9'"),
        ({"format": "toy3", "layers": {"match": "0"}}, "quantization.layers: found mapping"),
    ],
    ids=["float axis", "chunk without size", "unknown format", "layers not a list"],
)
def test_prepare_refuses_what_validate_refuses(toy_plugins, model, spec, expected):
    problems = _problems(model, spec)
    assert problems[0].startswith(f"qbench.prepare: {expected}"), problems


@pytest.mark.parametrize(
    "spec, where",
    [
        ({"act_rounding": "stochastic"}, "quantization.act_rounding"),
        ({"format": "toy3", "act_enabled": False, "layers": [{"match": "0"}]}, None),
        (
            {"weight_format": "toy3", "input_chunk_size": 8, "input_mode": "chunk"},
            "quantization.input_chunk_size",
        ),
        (
            {"layers": [{"match": "0", "weight_rounding": "stochastic"}]},
            "quantization.layers[0].weight_rounding",
        ),
    ],
    ids=["act without format", "disabled role is fine", "input without format", "layer key"],
)
def test_role_setting_without_a_format_is_refused(toy_plugins, model, spec, where):
    if where is None:
        qbench.prepare(model, spec)
        return
    problems = _problems(model, spec)
    assert any(line.startswith(f"qbench.prepare: {where}: found ") for line in problems), problems
    line = next(line for line in problems if f"{where}:" in line)
    assert "are not quantized" in line


@pytest.mark.parametrize(
    "spec",
    [
        {"format": "toy3", "act_rounding": "stochastic"},
        {"act_format": "toy3", "act_rounding": "stochastic"},
        {"act_format": "toy3_block", "act_chunk_size": 2},  # a preset is a format
        # the global setting applies to the layers that get a format
        {"act_rounding": "stochastic", "layers": [{"match": "0", "act_format": "toy3"}]},
        {"layers": [{"match": "0", "format": "toy3", "input_rounding": "stochastic"}]},
    ],
    ids=["global format", "role format", "preset", "format in a layer", "format in same layer"],
)
def test_role_setting_with_a_format_is_accepted(toy_plugins, model, spec):
    from qbench.preparation import preparation_report

    twin = qbench.prepare(model, spec)
    assert set(preparation_report(twin)) == {"quantized", "not_quantized", "coverage"}


def test_config_with_a_role_setting_without_format_is_refused_by_the_cli(
    toy_plugins, tmp_path, capsys
):
    path = tmp_path / "no_effect.yaml"
    path.write_text(json.dumps(toy_config(quantization={"act_rounding": "stochastic"})))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(path)])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1, err
    assert f"{path}: quantization.act_rounding: found 'stochastic'" in err[0]
    assert "activations are not quantized" in err[0]


def test_prepare_uses_the_config_schemas_quantization_section(toy_plugins):
    from qbench.config import quantization_schema

    schema = config_schema()
    sub = quantization_schema(schema)
    assert sub["properties"] == schema["properties"]["quantization"]["properties"]
    assert sub["$schema"].endswith("2020-12/schema")
    assert load_config(toy_config(quantization={"format": "toy3", "axis": 0}))


def test_a_quantspec_is_still_accepted(toy_plugins, model):
    from qbench.spec import spec_from_arguments

    twin = qbench.prepare(model, spec_from_arguments("toy3"))
    assert twin is not model
