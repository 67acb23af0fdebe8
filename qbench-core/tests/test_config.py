"""Malformed configs: each is refused with exit status 2 and one line naming the path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from qbench.cli import main
from qbench.config import load_config

GOOD = textwrap.dedent(
    """
    model: {adapter: toy}
    dataset: {name: toyset, batch_size: 8}
    quantization: {format: toy3, mode: tensor}
    evaluation: {metrics: [accuracy]}
    """
)


def _with(path: str, value) -> str:
    data = yaml.safe_load(GOOD)
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return yaml.safe_dump(data)


_DELETE = object()

# (case id, file text, text every error line must contain)
CASES = [
    ("empty file", "", "empty"),
    ("only a comment", "# nothing\n", "empty"),
    ("not yaml", "model: [unclosed\n", "not valid YAML"),
    ("tab indentation", "model:\n\t adapter: toy\n", "not valid YAML"),
    ("top-level list", "- model\n- dataset\n", "top level is a list"),
    ("top-level string", "just a string\n", "top level is a string"),
    ("unknown top key", GOOD + "modle: {}\n", "unknown key 'modle'"),
    ("missing model", _with("model", _DELETE), "missing required key 'model'"),
    ("missing dataset", _with("dataset", _DELETE), "missing required key 'dataset'"),
    ("model not mapping", _with("model", "toy"), "model"),
    ("unknown adapter", _with("model.adapter", "resnett"), "model.adapter"),
    ("adapter wrong type", _with("model.adapter", 3), "model.adapter"),
    ("adapter option wrong type", _with("model.width", "wide"), "model.width"),
    ("adapter option negative", _with("model.width", -2), "model.width"),
    ("adapter unknown option", _with("model.depth", 3), "unknown key 'depth'"),
    ("unknown dataset", _with("dataset.name", "imagenot"), "dataset.name"),
    ("zero batch size", _with("dataset.batch_size", 0), "dataset.batch_size"),
    ("string batch size", _with("dataset.batch_size", "big"), "dataset.batch_size"),
    ("negative limit", _with("dataset.limit", -5), "dataset.limit"),
    ("bad split", _with("dataset.split", "validation"), "dataset.split"),
    ("unknown format", _with("quantization.format", "fp9_e4m4"), "quantization.format"),
    ("format not string", _with("quantization.format", 8), "quantization.format"),
    ("unknown mode", _with("quantization.mode", "block"), "quantization.mode"),
    ("unknown weight_mode", _with("quantization.weight_mode", "row"), "quantization.weight_mode"),
    ("zero chunk size", _with("quantization.chunk_size", 0), "quantization.chunk_size"),
    (
        "negative chunk size",
        _with("quantization.input_chunk_size", -128),
        "quantization.input_chunk_size",
    ),
    ("float chunk size", _with("quantization.act_chunk_size", 12.5), "quantization.act_chunk_size"),
    (
        "chunk without size",
        _with("quantization.weight_mode", "chunk"),
        "quantization.weight_chunk_size",
    ),
    ("unknown act_format", _with("quantization.act_format", "int3"), "quantization.act_format"),
    ("unknown rounding", _with("quantization.rounding", "banker"), "quantization.rounding"),
    ("unknown overflow", _with("quantization.overflow", "wrap"), "quantization.overflow"),
    ("unknown quant key", _with("quantization.chunksize", 128), "unknown key 'chunksize'"),
    ("layers not list", _with("quantization.layers", {"match": "x"}), "quantization.layers"),
    (
        "layer without match",
        _with("quantization.layers", [{"format": "toy3"}]),
        "quantization.layers[0]",
    ),
    (
        "layer bad format",
        _with("quantization.layers", [{"match": "0", "format": "nope"}]),
        "quantization.layers[0].format",
    ),
    (
        "layer unknown key",
        _with("quantization.layers", [{"match": "0", "enable": False}]),
        "quantization.layers[0]",
    ),
    ("unknown metric", _with("evaluation.metrics", ["acuracy"]), "evaluation.metrics[0]"),
    ("metrics not list", _with("evaluation.metrics", "accuracy"), "evaluation.metrics"),
    (
        "missing referenced file",
        _with("evaluation.compliance", "no_such_rules.yaml"),
        "evaluation.compliance",
    ),
    ("unknown reporter", _with("output.reporters", ["pdf"]), "output.reporters[0]"),
    ("bad device", _with("device", "tpu"), "device"),
    ("bad memory format", _with("memory_format", "nhwc"), "memory_format"),
    ("bad name", _with("name", "has spaces/and slashes"), "name"),
]


@pytest.mark.parametrize("case_id, text, expected", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_config_exits_2_with_one_line(
    toy_plugins, tmp_path, capsys, case_id, text, expected, command
):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    problems = [line for line in err if line.startswith("qbench: error:")]
    assert len(problems) == 1, err
    assert str(path) in problems[0]
    assert expected in problems[0]
    assert "Traceback" not in "\n".join(err)


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_every_problem_is_reported_at_once(toy_plugins, tmp_path, capsys):
    data = yaml.safe_load(GOOD)
    data["quantization"].update({"mode": "blocks", "chunk_size": 0, "format": "nope"})
    data["dataset"]["batch_size"] = -1
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit):
        main(["validate", str(path)])
    err = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("qbench: error:")
    ]
    paths = {
        "quantization.mode",
        "quantization.chunk_size",
        "quantization.format",
        "dataset.batch_size",
    }
    assert len(err) == 4
    for p in paths:
        assert any(f": {p}:" in line for line in err), (p, err)


def test_enum_error_suggests_closest(toy_plugins, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(_with("quantization.format", "toy_3"))
    with pytest.raises(Exception) as info:
        load_config(path)
    assert "did you mean 'toy3'" in str(info.value)
    assert "allowed: toy3, toy3_block" in str(info.value)


def test_defaults_are_filled(toy_plugins, tmp_path):
    path = tmp_path / "fp_demo.yaml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.name == "fp_demo"
    assert cfg["dataset"]["split"] == "test"  # from the dataset plugin's schema
    assert cfg["dataset"]["limit"] is None  # core's dataset default
    assert cfg["model"]["width"] == 4  # from the adapter plugin's schema
    assert cfg["output"] == {"dir": "reports", "reporters": ["json"]}
    assert cfg["device"] == "auto"
    assert cfg["memory_format"] == "auto"


def test_valid_config_passes_validate(toy_plugins, tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD)
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path)])
    assert info.value.code == 0
    assert f"{path}: ok" in capsys.readouterr().out


def test_existing_referenced_file_is_accepted_relative_to_config(toy_plugins, tmp_path):
    (tmp_path / "rules.yaml").write_text("roles: [weight]\n")
    path = tmp_path / "ok.yaml"
    path.write_text(_with("evaluation.compliance", "rules.yaml"))
    assert load_config(path)["evaluation"]["compliance"] == "rules.yaml"


def test_schema_command_prints_merged_schema(toy_plugins, capsys):
    import json

    with pytest.raises(SystemExit):
        main(["schema"])
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")
    quant = schema["properties"]["quantization"]["properties"]
    assert quant["format"]["enum"] == ["toy3", "toy3_block"]
    for key in (
        "weight_mode",
        "weight_chunk_size",
        "input_mode",
        "input_chunk_size",
        "act_mode",
        "act_chunk_size",
    ):
        assert key in quant
    adapters = schema["properties"]["model"]["allOf"]
    assert adapters[0]["then"]["properties"]["width"]["minimum"] == 1


def test_config_examples_shipped_in_repo_are_valid_when_all_packages_installed():
    """Covered by tests/test_configs.py at the repository root (needs every package)."""
    assert Path(__file__).name == "test_config.py"
