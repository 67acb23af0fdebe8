"""Config files that must be refused while they are read (size, alias expansion, nesting,
duplicate keys) and values that must be YAML/JSON integers: each is one line, exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import qbench.config as config
from qbench.cli import main
from qbench.config import ConfigError, load_config, load_yaml

GOOD = textwrap.dedent(
    """\
    model: {adapter: toy}
    dataset: {name: toyset, batch_size: 8}
    quantization: {format: toy3, mode: tensor}
    evaluation: {metrics: [accuracy]}
    """
)


def _refused(path: Path, capsys, command: str = "validate") -> str:
    """Run the CLI on ``path``; it must exit 2 with exactly one error line, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    problems = [line for line in err if line.startswith("qbench: error:")]
    assert len(problems) == 1, err
    assert str(path) in problems[0]
    assert "Traceback" not in "\n".join(err)
    return problems[0]


def _laughs(levels: int) -> str:
    """A "billion laughs" YAML: each level is ten aliases of the one before (10**levels)."""
    lines = ["l0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


# -- size and alias expansion -------------------------------------------------------------


def test_alias_bomb_in_a_validated_value_is_one_line(toy_plugins, tmp_path, capsys):
    # six levels under evaluation.accuracy.topk, which the schema checks: a million leaves
    laughs = [line.split(": ", 1)[1] for line in _laughs(6).splitlines()]
    text = GOOD.replace("evaluation: {metrics: [accuracy]}\n", "") + textwrap.dedent(
        """\
        evaluation:
          metrics: [accuracy]
          accuracy:
            topk:
        """
    )
    first = len(text.splitlines()) + 1
    text += "".join(f"      - {laugh}\n" for laugh in laughs)
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    line = _refused(path, capsys)
    assert any(f": line {n}, column " in line for n in range(first, first + len(laughs)))
    assert "alias *l" in line and str(config.MAX_CONFIG_NODES) in line


def test_billion_laughs_is_refused_while_reading(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(10))  # 10**10 leaves: only the refusal can be quick
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}: line ")
    assert "alias *l" in line and "expands to" in line


def test_many_values_without_aliases_are_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "MAX_CONFIG_NODES", 1000)
    path = tmp_path / "long.yaml"
    path.write_text("quantization: {layers: [" + ", ".join(["1"] * 2000) + "]}\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    (line,) = info.value.problems
    assert f"{path}: line 1," in line and "more than 1000 YAML nodes" in line


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("a: &loop [1, *loop]\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    (line,) = info.value.problems
    assert f"{path}: line 1, column 14:" in line and "*loop" in line


def test_file_over_the_size_limit_is_refused_before_parsing(toy_plugins, tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    filler = "# " + "x" * 98 + "\n"
    path.write_text(GOOD + filler * (config.MAX_CONFIG_BYTES // len(filler) + 1))
    line = _refused(path, capsys)
    assert "1 MiB" in line and str(path.stat().st_size) in line


def test_file_at_the_size_limit_is_read(toy_plugins, tmp_path):
    path = tmp_path / "padded.yaml"
    padding = config.MAX_CONFIG_BYTES - len(GOOD.encode())
    path.write_text(GOOD + "#" * (padding - 1) + "\n")
    assert path.stat().st_size == config.MAX_CONFIG_BYTES
    assert load_config(path)["quantization"]["format"] == "toy3"


def test_deep_nesting_is_one_line_not_a_recursion_error(toy_plugins, tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text(GOOD + "name: " + "[" * 5000 + "]" * 5000 + "\n")
    line = _refused(path, capsys)
    assert "line 5," in line and f"more than {config.MAX_CONFIG_DEPTH} levels" in line


def test_legitimate_anchors_aliases_and_merge_keys_still_work(toy_plugins, tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            model: {adapter: toy}
            dataset: &data {name: toyset, batch_size: 8}
            quantization:
              format: toy3
              layers:
                - &fp32 {match: "0", enabled: false}
                - {<<: *fp32, match: "2"}
                - *fp32
            evaluation: {metrics: [accuracy]}
            """
        )
    )
    cfg = load_config(path)
    layers = cfg["quantization"]["layers"]
    assert layers == [
        {"match": "0", "enabled": False},
        {"match": "2", "enabled": False},
        {"match": "0", "enabled": False},
    ]
    assert cfg["dataset"]["batch_size"] == 8


# -- duplicate keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, lines",
    [
        (GOOD + "quantization: {format: toy3_block}\n", "'quantization'", (3, 5)),
        (
            "model: {adapter: toy}\ndataset: {name: toyset, batch_size: 8}\nquantization:\n"
            "  format: toy3\n  mode: tensor\n  format: toy3_block\n",
            "'format'",
            (4, 6),
        ),
    ],
    ids=["top level", "nested"],
)
def test_duplicate_key_names_key_and_both_lines(toy_plugins, tmp_path, capsys, text, key, lines):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    line = _refused(path, capsys)
    assert f"duplicate key {key}" in line
    assert f"first at line {lines[0]}" in line and f"again at line {lines[1]}" in line


# -- integers are integers ----------------------------------------------------------------


def _with(section: str, key: str, value: str) -> str:
    lines = GOOD.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{section}: {{"):
            lines[i] = line[:-1] + f", {key}: {value}}}"
            break
    else:
        lines.append(f"{section}: {value}" if key == "" else f"{section}: {{{key}: {value}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            _with("quantization", "axis", "1.0"),
            "quantization.axis: found number 1.0; expected integer",
        ),
        (
            _with("quantization", "weight_axis", "0.0"),
            "quantization.weight_axis: found number 0.0; expected integer",
        ),
        (
            _with("quantization", "layers", '[{match: "0", axis: 1.0}]'),
            "quantization.layers[0].axis: found number 1.0; expected integer",
        ),
        (
            _with("quantization", "act_chunk_size", "16.0"),
            "quantization.act_chunk_size: found number 16.0; expected integer",
        ),
        (
            _with("dataset", "limit", "10.0"),
            "dataset.limit: found number 10.0; expected integer or null",
        ),
        (
            _with("dataset", "batch_size", "true").replace("batch_size: 8, ", ""),
            "dataset.batch_size: found boolean true; expected integer",
        ),
        # a component's own options schema gets the same integers
        (_with("model", "width", "4.0"), "model.width: found number 4.0; expected integer"),
        (_with("seed", "", str(2**70)), f"seed: found {2**70}; must be < {2**63}"),
        (_with("seed", "", "-1"), "seed: found -1; must be >= 0"),
        (_with("seed", "", "3.0"), "seed: found number 3.0; expected integer"),
    ],
    ids=[
        "axis",
        "weight_axis",
        "layer axis",
        "act_chunk_size",
        "limit",
        "batch_size bool",
        "adapter option",
        "seed 2**70",
        "seed negative",
        "seed float",
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_integer_keys_hold_integers(toy_plugins, tmp_path, capsys, text, expected, command):
    path = tmp_path / "numbers.yaml"
    path.write_text(text)
    line = _refused(path, capsys, command)
    assert line.endswith(f"{path}: {expected}"), line


def test_largest_seed_is_accepted(toy_plugins, tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text(_with("seed", "", str(2**63 - 1)))
    assert load_config(path)["seed"] == 2**63 - 1


def test_component_schema_with_its_own_dialect_gets_strict_integers(toy_plugins):
    from core_toys import ToyAdapter, toy_config
    from qbench import hookimpl

    class DialectAdapter(ToyAdapter):
        name = "dialect"
        options_schema = {
            "$schema": config.SCHEMA_DIALECT,
            "type": "object",
            "properties": {"width": {"type": "integer", "minimum": 1}},
        }

    class Plugin:
        @hookimpl
        def qbench_register_adapters(self, register):
            register(DialectAdapter())

    toy_plugins.add_plugin(Plugin(), "dialect")
    with pytest.raises(ConfigError) as info:
        load_config(toy_config(model={"adapter": "dialect", "width": 4.0}))
    assert info.value.problems == ["<config>: model.width: found number 4.0; expected integer"]
