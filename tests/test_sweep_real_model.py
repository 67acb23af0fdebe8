"""A sweep with calibration on an architecture QBench did not write: timm's
mobilenetv3_small_100 (random weights, built offline from its config) through the timm
adapter, on random images in an image folder. One FP32 pass for both configs; fp8 per tensor
gets a static scale on every input/activation quantizer, MX keeps its block scales dynamic
and says why; every weight quantized, audits PASS."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from qbench.config import load_config
from qbench.sweep import run_sweep

pytest.importorskip("timm")


def test_a_calibrated_sweep_on_a_timm_model(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(12):
        folder = tmp_path / "images" / "ab"[index % 2]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    cfg = load_config(
        {
            "name": "mnv3",
            "model": {
                "adapter": "timm",
                "name": "mobilenetv3_small_100",
                "weights": "none",
                "num_classes": 2,
            },
            "dataset": {"name": "imagefolder", "root": str(tmp_path / "images"), "batch_size": 4},
            "calibration": {"batches": 1},
            "quantization": {"weight_mode": "channel"},
            "output": {"dir": str(tmp_path / "out"), "reporters": ["json"]},
            "sweep": {"grid": {"format": ["fp8_e4m3", "mxfp4_e2m1"]}},
        }
    )
    result = run_sweep([cfg])
    assert result.reference_passes == 1 and len(result.reports) == 2
    for report in result.reports:
        calibration = report["calibration"]
        assert calibration["images"] == 4 and report["dataset"]["images"] == 8
        assert report["preparation"]["coverage"]["weight_share"] == 1.0
        if report["name"] == "mnv3-fp8_e4m3":  # per-tensor activations: all static
            assert len(calibration["static"]) > 100 and not calibration["dynamic"]
        else:  # MX blocks of 32: block scales stay dynamic, and the report says so
            assert not calibration["static"] and len(calibration["dynamic"]) > 100
            assert all("chunk" in entry["reason"] for entry in calibration["dynamic"])
        assert report["metrics"]["compliance"]["status"] == "PASS"
    bits = {row["name"]: row["effective_bits"] for row in result.summary["rows"]}
    assert bits["mnv3-mxfp4_e2m1"] < 4.5 < 8.0 < bits["mnv3-fp8_e4m3"]
