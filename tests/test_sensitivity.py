"""``qbench sensitivity`` and ``qbench mixed-precision`` on the demo's real zoo model and
digits data: a deliberately fragile layer ranks first, saved results are reused, and the
mixed-precision config meets its budget when it is run again on its own."""

from __future__ import annotations

import json

import pytest
import qbench.sweep
import torch
import yaml
from qbench.cli import main
from qbench.config import load_config
from qbench.runner import run
from qbench.sensitivity import sensitivity
from qbench_adapters import checkpoints, zoo
from safetensors.torch import save_file

LIMIT = 256
FRAGILE = "layer2.0.conv1"


def fragile_weights(path):
    """The shipped tiny_resnet with one output channel of FRAGILE scaled by 10^4 and its
    BatchNorm's statistics scaled to match: the FP32 function is unchanged, but a per-tensor
    scale of that convolution's weights is set by the one channel, and rounds every other
    channel to zero."""
    model = zoo.build("tiny_resnet")
    checkpoints.load_into(
        model, checkpoints.load_state_dict(zoo.weights_path("tiny_resnet")), "zoo"
    )
    conv, bn = model.get_submodule(FRAGILE), model.get_submodule(FRAGILE.replace("conv", "bn"))
    k = 1e4
    with torch.no_grad():
        conv.weight[0] *= k
        bn.running_mean[0] *= k
        bn.running_var[0] = (bn.running_var[0] + bn.eps) * k * k - bn.eps
    save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(path))


def test_sensitivity_ranks_the_fragile_layer_first_and_reuses_its_results(tmp_path, monkeypatch):
    fragile_weights(tmp_path / "fragile.safetensors")
    config = {
        "name": "fragile",
        "model": {
            "adapter": "zoo",
            "name": "tiny_resnet",
            "weights": str(tmp_path / "fragile.safetensors"),
        },
        "dataset": {"name": "digits", "split": "test", "batch_size": 128},
        # weights only, per tensor: the fragility is in FRAGILE's weights alone
        "quantization": {
            "format": "int8",
            "input_enabled": False,
            "act_enabled": False,
            "stats_enabled": False,
        },
        "output": {"dir": str(tmp_path / "reports")},
    }
    path = tmp_path / "fragile.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    result = sensitivity(cfg, limit=LIMIT)
    ranked = result["layers"]
    assert ranked[0]["layer"] == FRAGILE and ranked[0]["rank"] == 1
    assert ranked[0]["columns"]["top1_delta"] < -10  # tens of points: the layer is broken
    assert all(row["columns"]["top1_delta"] > -2 for row in ranked[1:])
    assert ranked[0]["columns"]["output_kl"] > max(r["columns"]["output_kl"] for r in ranked[1:])
    saved = json.loads(
        (tmp_path / "reports" / "fragile-sensitivity" / "sensitivity.json").read_text()
    )
    assert saved["layers"][0]["layer"] == FRAGILE
    # the FP32 model is the same: its accuracy is the shipped model's
    whole = run(
        load_config({**config, "quantization": {"enabled": False}}, base=tmp_path),
        limit=LIMIT,
        output=tmp_path / "fp32",
    )
    assert whole.report["metrics"]["accuracy"]["reference"]["top1"] > 0.95
    # a rerun reuses every saved single-layer result
    statuses: list[str] = []
    original = qbench.sweep.run_sweep

    def watching(*args, **kwargs):
        kwargs["on_result"] = lambda r, s: statuses.append(s)
        return original(*args, **kwargs)

    monkeypatch.setattr(qbench.sweep, "run_sweep", watching)
    again = sensitivity(cfg, limit=LIMIT)
    assert statuses and set(statuses) == {"skipped"}
    assert [r["layer"] for r in again["layers"]] == [r["layer"] for r in ranked]


def test_mixed_precision_meets_its_budget_when_rerun(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {
        "name": "demo",
        "model": {"adapter": "zoo", "name": "tiny_resnet"},
        "dataset": {"name": "digits", "split": "test", "batch_size": 128},
        "quantization": {"mode": "chunk", "chunk_size": 32, "weight_mode": "channel"},
        "evaluation": {"metrics": ["accuracy", "compliance"]},
        "output": {"dir": "reports", "reporters": ["json"]},
        "sweep": {"grid": {"format": ["fp8_e4m3", "fp4_e2m1"]}},
    }
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(
            [
                "mixed-precision",
                "demo.yaml",
                "--budget",
                "0.5",
                "--limit",
                str(LIMIT),
                "--no-progress",
            ]
        )
    out = capsys.readouterr().out
    assert info.value.code == 0, out
    written = tmp_path / "reports" / "demo-mixed.yaml"
    assert f"config: {written.relative_to(tmp_path)}" in out or str(written) in out
    # run it again, alone, as a user would
    mixed = run(load_config(written), limit=LIMIT, output=tmp_path / "again")
    accuracy = mixed.report["metrics"]["accuracy"]
    assert accuracy["delta"]["top1"] * 100 >= -0.5
    assert mixed.report["metrics"]["compliance"]["status"] == "PASS"
    layers = yaml.safe_load(written.read_text())["quantization"]
    formats = {layers["format"], *(entry["format"] for entry in layers.get("layers") or ())}
    assert formats == {"fp8_e4m3", "fp4_e2m1"}  # really mixed
    bits = mixed.report["preparation"]["coverage"]["weight_bits"]
    fp8 = run(
        load_config(
            {
                **{k: v for k, v in config.items() if k != "sweep"},
                "quantization": {**config["quantization"], "format": "fp8_e4m3"},
            }
        ),
        limit=LIMIT,
        output=tmp_path / "fp8",
    )
    assert 4.25 < bits < fp8.report["preparation"]["coverage"]["weight_bits"]
