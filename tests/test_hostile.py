"""A corpus of hostile or broken inputs, each generated at test time, run through the real
CLI's ``validate`` and ``run``: every one exits 2 with one line naming what and where, no
traceback, and nothing is written outside the output folder (no report inside it either).

Each case writes its files into ``case/`` and returns the config (a mapping, or YAML text
for cases that live in the text itself) and a fragment the error line must contain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from qbench.cli import main

BASE: dict[str, Any] = {
    "model": {"adapter": "zoo", "name": "tiny_resnet"},
    "dataset": {"name": "digits", "split": "test", "batch_size": 64, "limit": 64},
    "quantization": {"format": "fp8_e4m3"},
    "evaluation": {"metrics": ["accuracy"]},
}


def _with(**changes: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        holder = config
        for part in parents:
            holder = holder.setdefault(part, {})
        holder[last] = value
    return config


def _alias_bomb(case: Path) -> tuple[Any, str]:
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        levels.append(f"a{i}: &a{i} [{refs}]")
    text = yaml.safe_dump(BASE) + "\n".join(levels) + "\nname: *a8\n"
    assert len(text) < 2048  # a 1 KB-class file whose expansion is 10^9 leaves
    return text, "alias"


def _huge(case: Path) -> tuple[Any, str]:
    items = "\n".join(f"  - {{match: 'layer{i}', format: fp8_e4m3}}" for i in range(60_000))
    return yaml.safe_dump(BASE) + "quantization:\n layers:\n" + items + "\n", "bytes"


def _duplicate_key(case: Path) -> tuple[Any, str]:
    text = yaml.safe_dump(BASE, sort_keys=False)
    return text + "seed: 1\nseed: 2\n", "seed"


def _deep(case: Path) -> tuple[Any, str]:
    return yaml.safe_dump(BASE) + "extra: " + "[" * 5000 + "]" * 5000 + "\n", "nest"


def _symlink_loop(case: Path) -> tuple[Any, str]:
    from PIL import Image

    root = case / "images"
    (root / "0").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "0" / "a.png")
    os.symlink(root / "1", root / "1b")  # class folder 1 is a link loop: ELOOP when listed
    os.symlink(root / "1b", root / "1")
    config = _with(dataset={"name": "imagefolder", "root": str(root), "batch_size": 8})
    return config, str(root)


def _empty_class(case: Path) -> tuple[Any, str]:
    from PIL import Image

    root = case / "images"
    for label in ("0", "1", "2", "3"):
        (root / label).mkdir(parents=True)
        if label != "2":
            Image.new("L", (8, 8), color=40 * int(label)).save(root / label / "a.png")
    config = _with(dataset={"name": "imagefolder", "root": str(root), "batch_size": 8})
    return config, str(root / "2")


def _factory_in_metadata(case: Path) -> tuple[Any, str]:
    import torch
    from safetensors.torch import save_file

    marker = case / "pwned"
    save_file(
        {"w": torch.zeros(1)},
        str(case / "evil.safetensors"),
        metadata={
            "qbench.factory": "subprocess:run",
            "qbench.kwargs": json.dumps({"args": ["touch", str(marker)]}),
        },
    )
    config = _with(model={"adapter": "generic", "weights": str(case / "evil.safetensors")})
    return config, "subprocess:run"


def _bad_kwargs_metadata(case: Path) -> tuple[Any, str]:
    import torch
    from safetensors.torch import save_file

    save_file(
        {"w": torch.zeros(1)},
        str(case / "bad.safetensors"),
        metadata={"qbench.factory": "torch.nn:Identity", "qbench.kwargs": "{not json"},
    )
    config = _with(
        model={
            "adapter": "generic",
            "weights": str(case / "bad.safetensors"),
            "trust_checkpoint_factory": True,
        }
    )
    return config, "qbench.kwargs"


def _not_a_checkpoint(case: Path) -> tuple[Any, str]:
    (case / "model.pt").write_bytes(os.urandom(512))
    config = _with(
        model={"adapter": "generic", "factory": "torch.nn:Identity", "weights": "model.pt"}
    )
    return config, "model.pt"


def _output_is_a_file(case: Path) -> tuple[Any, str]:
    (case / "taken").write_text("a file")
    return _with(output={"dir": str(case / "taken")}), "is a file"


def _output_name_too_long(case: Path) -> tuple[Any, str]:
    return _with(output={"dir": str(case / ("n" * 300))}), "bytes"


def _missing_root(case: Path) -> tuple[Any, str]:
    config = _with(dataset={"name": "imagefolder", "root": str(case / "nowhere")})
    return config, "nowhere"


CASES: dict[str, Callable[[Path], tuple[Any, str]]] = {
    "alias bomb": _alias_bomb,
    "2 MB config": _huge,
    "duplicate key": _duplicate_key,
    "5000-deep nesting": _deep,
    "float axis": lambda case: (_with(quantization__axis=1.0), "quantization.axis"),
    "seed 2**70": lambda case: (_with(seed=2**70), "seed"),
    "negative seed": lambda case: (_with(seed=-1), "seed"),
    "boolean chunk size": lambda case: (
        _with(quantization__mode="chunk", quantization__chunk_size=True),
        "quantization.chunk_size",
    ),
    "zero std": lambda case: (
        _with(
            model={"adapter": "generic", "factory": "torch.nn:Flatten", "transform": {"std": [0]}}
        ),
        "std",
    ),
    "symlink loop root": _symlink_loop,
    "empty class folder": _empty_class,
    "missing dataset root": _missing_root,
    "factory in checkpoint metadata": _factory_in_metadata,
    "malformed metadata kwargs": _bad_kwargs_metadata,
    "random bytes checkpoint": _not_a_checkpoint,
    "output dir is a file": _output_is_a_file,
    "output name too long": _output_name_too_long,
    "layer pattern matching nothing": lambda case: (
        _with(quantization__layers=[{"match": "no_such_layer*", "enabled": False}]),
        "no_such_layer*",
    ),
    "setting without effect": lambda case: (
        _with(quantization={"act_rounding": "stochastic"}),
        "act_rounding",
    ),
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_line_and_exit_2(name, command, tmp_path, monkeypatch, capsys):
    case, work, out = tmp_path / "case", tmp_path / "work", tmp_path / "out"
    case.mkdir()
    work.mkdir()
    config, expected = CASES[name](case)
    path = case / "config.yaml"
    if isinstance(config, str):
        path.write_text(config)
    else:
        config.setdefault("output", {}).setdefault("dir", str(out))
        path.write_text(yaml.safe_dump(config))
    before = _tree(tmp_path)
    monkeypatch.chdir(work)
    args = [command, str(path)] + (["--no-progress"] if command == "run" else [])
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert info.value.code == 2, captured.out + captured.err
    assert len(lines) == 1, lines
    assert lines[0].startswith("qbench: error: ") and "internal error" not in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 600
    new = _tree(tmp_path) - before
    outside = {p for p in new if not p.startswith("out")}
    assert not outside, outside  # nothing written outside the output folder
    assert not list(out.rglob("report.*"))  # and no report inside it
    assert not (case / "pwned").exists()  # checkpoint metadata never ran code
