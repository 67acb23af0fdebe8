"""End to end: `qbench run` through the real CLI on six formats, checked against numbers this
test computes itself from the zoo model, qbench.prepare and plain forward hooks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from integration_helpers import QBENCH
from qbench.testing import run_python

torch = pytest.importorskip("torch")

LIMIT = 64
BATCH = 32
LAYER = "layer1.0.conv1"  # the layer whose error is recomputed by hand

FORMATS = {
    "fp8_e4m3": {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 32},
    "fp8_e5m2": {"format": "fp8_e5m2", "mode": "tensor"},
    "fp4_e2m1": {"format": "fp4_e2m1", "mode": "chunk", "chunk_size": 32, "weight_chunk_size": 16},
    "fp4_e3m0": {"format": "fp4_e3m0", "mode": "chunk", "chunk_size": 16},
    "int8": {"format": "int8", "mode": "tensor"},
    "mxfp4_e2m1": {"format": "mxfp4_e2m1"},
}


VIT = "vit_mxfp4_e2m1"  # the zoo ViT: attention layers report several quantization points


#: A report's ``memory_format`` as torch's
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def _config(name: str) -> dict:
    if name == VIT:
        return {
            **_config("mxfp4_e2m1"),
            "name": f"e2e_{VIT}",
            "model": {"adapter": "zoo", "name": "tiny_vit"},
        }
    return {
        "name": f"e2e_{name}",
        "model": {"adapter": "zoo", "name": "tiny_resnet"},
        "dataset": {"name": "digits", "split": "test", "batch_size": BATCH},
        "quantization": FORMATS[name],
        "evaluation": {"metrics": ["accuracy", "layerwise", "compliance"]},
    }


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `qbench run` of all six configs (one process start for all), returning the output root."""
    root = tmp_path_factory.mktemp("e2e")
    paths = []
    for name in [*FORMATS, VIT]:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_config(name)))
        paths.append(str(path))
    out = root / "reports"
    result = run_python(
        QBENCH,
        "run",
        *paths,
        "--limit",
        str(LIMIT),
        "--device",
        "cpu",
        "--output",
        str(out),
        "--no-progress",
        cwd=root,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = "".join(result.stdout.split())  # the summary table may wrap long paths
    for name in FORMATS:  # the CLI says where each report went
        assert str(out / "zoo_tiny_resnet" / f"e2e_{name}") in printed
    return out


def _independent(name: str, memory_format: str) -> dict:
    """Logits, top-1 and one layer's outputs computed here, without QBench's metrics, in the
    layout the run used (its report says which)."""
    import qbench
    import qbench.plugins

    bundle = qbench.plugins.get("adapter", "zoo").build(
        {"adapter": "zoo", "name": "tiny_resnet"}, device="cpu"
    )
    reference = bundle.model.eval()
    reference = reference.to(memory_format=LAYOUTS[memory_format])
    quantized = qbench.prepare(reference, FORMATS[name]).eval()
    batches = qbench.plugins.get("dataset", "digits").build(
        {"name": "digits", "split": "test", "batch_size": BATCH, "limit": LIMIT}, bundle=bundle
    )
    captured: dict[str, list[np.ndarray]] = {
        "layer_reference": [],
        "layer_quantized": [],
        "layer_input": [],
    }
    hooks = [
        reference.get_submodule(LAYER).register_forward_hook(
            lambda m, i, o: captured["layer_reference"].append(o.detach().double().numpy().copy())
        ),
        quantized.get_submodule(LAYER).register_forward_hook(
            lambda m, i, o: captured["layer_quantized"].append(o.detach().double().numpy().copy())
        ),
        quantized.get_submodule(LAYER).register_forward_pre_hook(
            lambda m, i: captured["layer_input"].append(i[0].detach().double().numpy().copy())
        ),
    ]
    targets, ref_logits, q_logits = [], [], []
    with torch.no_grad():
        for images, labels in batches:
            images = images.contiguous(memory_format=LAYOUTS[memory_format])
            targets.append(labels.numpy())
            ref_logits.append(reference(images).double().numpy())
            q_logits.append(quantized(images).double().numpy())
    for hook in hooks:
        hook.remove()
    return {
        "targets": np.concatenate(targets),
        "reference": np.concatenate(ref_logits),
        "quantized": np.concatenate(q_logits),
        **{k: np.concatenate(v) for k, v in captured.items()},
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FORMATS))
def test_report_numbers_match_an_independent_computation(cli_run: Path, name: str) -> None:
    out_dir = cli_run / "zoo_tiny_resnet" / f"e2e_{name}"
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "accuracy.csv",
        "comparison_report.txt",
        "layers.csv",
        "report.html",
        "report.json",
        "report.md",
    ]
    report = json.loads((out_dir / "report.json").read_text())
    metrics = report["metrics"]
    # on this CPU runner: auto picks channels-last for the zoo's convolutional model
    assert report["memory_format"] == (
        "channels_last" if report["device"] == "cpu" else "contiguous"
    )
    mine = _independent(name, report["memory_format"])

    # Accuracy: top-1 and agreement recomputed from logits computed here.
    accuracy = metrics["accuracy"]
    assert accuracy["images"] == report["dataset"]["images"] == LIMIT
    t = mine["targets"]
    ref_top1 = np.mean(mine["reference"].argmax(1) == t)
    q_top1 = np.mean(mine["quantized"].argmax(1) == t)
    assert accuracy["reference"]["top1"] == pytest.approx(ref_top1, abs=1e-12)
    assert accuracy["quantized"]["top1"] == pytest.approx(q_top1, abs=1e-12)
    assert accuracy["agreement"] == pytest.approx(
        np.mean(mine["reference"].argmax(1) == mine["quantized"].argmax(1)), abs=1e-12
    )
    assert ref_top1 >= 0.9  # the shipped zoo weights really are trained

    # One layer's error by hand (float64 numpy over every image).
    [layer] = [entry for entry in metrics["layerwise"]["layers"] if entry["name"] == LAYER]
    r, q = mine["layer_reference"], mine["layer_quantized"]
    assert layer["elements"] == r.size
    assert layer["mse"] == pytest.approx(np.mean((r - q) ** 2), rel=1e-6)
    assert layer["mse"] > 0  # the format really changed the layer's output
    cosine = float(np.dot(r.ravel(), q.ravel()) / (np.linalg.norm(r) * np.linalg.norm(q)))
    assert layer["cosine"] == pytest.approx(cosine, rel=1e-9)
    assert layer["sqnr_db"] == pytest.approx(
        10 * math.log10(np.sum(r**2) / np.sum((r - q) ** 2)), rel=1e-6
    )
    magnitude = np.abs(mine["layer_input"])
    assert layer["input"]["max_abs"] == pytest.approx(magnitude.max(), rel=1e-7)
    assert layer["input"]["min_nonzero_abs"] == pytest.approx(
        magnitude[magnitude > 0].min(), rel=1e-7
    )

    # The audit passes on a correct implementation, and it looked at every role.
    compliance = metrics["compliance"]
    assert compliance["status"] == "PASS", compliance["failures"] or compliance["missing"]
    for role in ("weight", "stats", "input"):
        assert (
            compliance["roles"][role]["status"] == "PASS"
            and compliance["roles"][role]["tensors"] > 0
        )

    text = (out_dir / "comparison_report.txt").read_text()
    for heading in (
        "1. Accuracy metrics",
        "2. Compliance",
        "3. Layer-wise error",
        "4. Failure details",
    ):
        assert heading in text
    assert "Overall: PASS" in text and LAYER in text
    assert (out_dir / "report.html").read_text().count("<svg") == 4


@pytest.mark.slow
def test_vit_attention_is_audited_and_accuracy_matches(cli_run: Path) -> None:
    import qbench
    import qbench.plugins

    report = json.loads((cli_run / "zoo_tiny_vit" / f"e2e_{VIT}" / "report.json").read_text())
    compliance = report["metrics"]["compliance"]
    assert compliance["status"] == "PASS", compliance["failures"] or compliance["missing"]
    points = {t["layer"] for t in compliance["tensors"]}
    assert "encoder.layers.encoder_layer_0.self_attention.softmax" in points
    names = [layer["name"] for layer in report["metrics"]["layerwise"]["layers"]]
    assert "encoder.layers.encoder_layer_0.self_attention" in names

    bundle = qbench.plugins.get("adapter", "zoo").build(
        {"adapter": "zoo", "name": "tiny_vit"}, device="cpu"
    )
    layout = LAYOUTS[report["memory_format"]]  # the layout the run used
    reference = bundle.model.eval().to(memory_format=layout)
    quantized = qbench.prepare(reference, FORMATS["mxfp4_e2m1"]).eval()
    batches = qbench.plugins.get("dataset", "digits").build(
        {"name": "digits", "split": "test", "batch_size": BATCH, "limit": LIMIT}, bundle=bundle
    )
    hits = {"reference": 0, "quantized": 0}
    with torch.no_grad():
        for images, labels in batches:
            images = images.contiguous(memory_format=layout)
            hits["reference"] += int((reference(images).argmax(1) == labels).sum())
            hits["quantized"] += int((quantized(images).argmax(1) == labels).sum())
    accuracy = report["metrics"]["accuracy"]
    assert accuracy["reference"]["top1"] == pytest.approx(hits["reference"] / LIMIT, abs=1e-12)
    assert accuracy["quantized"]["top1"] == pytest.approx(hits["quantized"] / LIMIT, abs=1e-12)
