"""``calibration: {batches: N}`` on the demo's real zoo model and digits data: the first N
batches calibrate static input/activation scales and are never evaluated (checked by the
images each model saw and by the sample ids the report states), and static scales change
the numbers a dynamic run gives."""

from __future__ import annotations

import qbench.preparation
import qbench.runner
import torch
from qbench.config import load_config
from qbench.plugins import get
from qbench.runner import run

BATCH, CALIBRATION, EVALUATED = 64, 2, 128


def config(tmp_path, **extra):
    return load_config(
        {
            "name": "calibrated",
            "model": {"adapter": "zoo", "name": "tiny_resnet"},
            "dataset": {"name": "digits", "split": "test", "batch_size": BATCH},
            "quantization": {"format": "int8", "weight_mode": "channel"},
            "output": {"dir": str(tmp_path / "reports"), "reporters": ["json", "text"]},
            **extra,
        }
    )


def test_calibration_batches_are_never_evaluated(tmp_path, monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {"twin": [], "reference": []}
    prepare, build = qbench.preparation.prepare, qbench.runner.build_reference

    def watched_prepare(model, spec):
        twin = prepare(model, spec)
        twin.register_forward_pre_hook(lambda m, args: seen["twin"].append(args[0].clone()))
        return twin

    def watched_build(*args, **kwargs):
        reference = build(*args, **kwargs)
        model = reference.model

        def hook(module, args):  # twins are deep copies of the model, this hook included
            if module is model:
                seen["reference"].append(args[0].clone())

        model.register_forward_pre_hook(hook)
        return reference

    monkeypatch.setattr(qbench.preparation, "prepare", watched_prepare)
    monkeypatch.setattr(qbench.runner, "build_reference", watched_build)
    result = run(
        config(tmp_path, calibration={"batches": CALIBRATION}, memory_format="contiguous"),
        limit=EVALUATED,
    )
    report = result.report
    calibration = report["calibration"]
    assert calibration["batches"] == CALIBRATION and calibration["images"] == CALIBRATION * BATCH
    assert calibration["samples"] == list(range(CALIBRATION * BATCH))  # ids: the split's first
    assert len(calibration["static"]) > 20 and report["dataset"]["images"] == EVALUATED
    # the provenance keeps the evaluated limit: --reproduce reads the same images again
    assert report["provenance"]["config"]["dataset"]["limit"] == EVALUATED
    assert report["metrics"]["compliance"]["status"] == "PASS"
    assert (
        "static input/activation scales from 2 batches (128 images"
        in (result.out_dir / "comparison_report.txt").read_text()
    )

    # what each model saw, against the dataset's own batches in order
    bundle = get("adapter", "zoo").build({"name": "tiny_resnet"})
    options = {"name": "digits", "split": "test", "batch_size": BATCH, "limit": 256}
    batches = [x for x, _ in get("dataset", "digits").build(options, bundle=bundle)]
    calibrated = torch.cat(seen["twin"][:CALIBRATION])
    evaluated = torch.cat(seen["reference"])
    assert torch.equal(calibrated, torch.cat(batches[:CALIBRATION]))
    assert torch.equal(evaluated, torch.cat(batches[CALIBRATION:]))
    assert torch.equal(torch.cat(seen["twin"][CALIBRATION:]), evaluated)
    # no calibration image is an evaluation image (digits has no duplicate images here)
    evaluated_rows = {row.numpy().tobytes() for row in evaluated}
    assert not any(row.numpy().tobytes() in evaluated_rows for row in calibrated)

    dynamic = run(config(tmp_path, memory_format="contiguous", name="dynamic"), limit=EVALUATED)
    assert "calibration" not in dynamic.report
    # the same evaluation images (the dynamic run reads from the start: skip its first ones)
    layers = {layer["name"]: layer for layer in report["metrics"]["layerwise"]["layers"]}
    other = {layer["name"]: layer for layer in dynamic.report["metrics"]["layerwise"]["layers"]}
    assert layers.keys() == other.keys()
    assert any(layers[name]["mse"] != other[name]["mse"] for name in layers)
