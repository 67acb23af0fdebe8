"""A sample run report, as the runner hands it to reporters, and variants of it with the
keys newer runners add (warnings, skipped files, NaN/inf counts) or with many long layer
names: shared by test_reporters.py, test_report_contents.py and test_report_browser.py."""

from __future__ import annotations

import copy
import math
from typing import Any


def sample_report(status: str = "PASS") -> dict[str, Any]:
    """A finished run's report; ``status`` is the compliance audit's verdict (PASS or FAIL)."""
    failures = []
    if status == "FAIL":
        failures = [
            {
                "layer": "layer1.0.conv1",
                "role": "weight",
                "status": "FAIL",
                "format": "fp4_e2m1 tensor",
                "failed": 3,
                "elements": 64,
                "failures": {"reconstruction": 3},
                "examples": [
                    {
                        "check": "reconstruction",
                        "index": [0, 1],
                        "code": 0,
                        "value": 0.3,
                        "expected": 0.0,
                        "scale": 1.0,
                        "nearest": [0.0, 0.5],
                    }
                ],
            }
        ]
    return {
        "qbench_version": "0.1.0",
        "name": "demo",
        "model": "zoo_resnet",
        "config_file": "configs/demo.yaml",
        "dataset": {"name": "digits", "split": "test", "images": 64},
        "device": "cpu",
        "elapsed_s": 1.5,
        "quantization": {"format": "fp4_e2m1", "mode": "tensor"},
        "preparation": {
            "quantized": [],
            "not_quantized": [{"name": "flatten", "type": "Flatten", "reason": "no op registered"}],
        },
        "metrics": {
            "accuracy": {
                "images": 64,
                "top_k": 5,
                "agreement": 0.96875,
                "reference": {
                    "top1": 0.984375,
                    "topk": 1.0,
                    "certainty": 0.95,
                    "nonfinite_images": 0,
                },
                "quantized": {
                    "top1": 0.953125,
                    "topk": 1.0,
                    "certainty": 0.9,
                    "nonfinite_images": 0,
                },
                "delta": {"top1": -0.03125, "topk": 0.0, "certainty": -0.05},
            },
            "layerwise": {
                "batches": 1,
                "unpaired_calls": 0,
                "missing_in_reference": [],
                "layers": [
                    {
                        "name": "conv1",
                        "type": "Conv2d",
                        "mse": 1.5e-4,
                        "cosine": 0.9991,
                        "sqnr_db": 30.2,
                        "calls": 1,
                        "elements": 10,
                        "input": {
                            "min_abs": 0.0,
                            "min_nonzero_abs": 0.0078125,
                            "max_abs": 2.5,
                            "log2_range": 8.32,
                            "zero_fraction": 0.1,
                        },
                    },
                    {
                        "name": "fc",
                        "type": "Linear",
                        "mse": 0.0,
                        "cosine": 1.0,
                        "sqnr_db": math.inf,
                        "calls": 1,
                        "elements": 10,
                        "input": {
                            "min_abs": 0.0,
                            "min_nonzero_abs": None,
                            "max_abs": 0.0,
                            "log2_range": None,
                            "zero_fraction": 1.0,
                        },
                    },
                ],
            },
            "compliance": {
                "status": status,
                "roles": {
                    "weight": {
                        "audited": True,
                        "status": status,
                        "tensors": 2,
                        "failed_tensors": len(failures),
                        "missing": 0,
                        "elements": 128,
                    },
                    "stats": {
                        "audited": True,
                        "status": "PASS",
                        "tensors": 1,
                        "failed_tensors": 0,
                        "missing": 0,
                        "elements": 16,
                    },
                    "input": {
                        "audited": True,
                        "status": "PASS",
                        "tensors": 2,
                        "failed_tensors": 0,
                        "missing": 0,
                        "elements": 999,
                    },
                    "act": {
                        "audited": False,
                        "status": "NOT RUN",
                        "tensors": 0,
                        "failed_tensors": 0,
                        "missing": 0,
                        "elements": 0,
                    },
                },
                "scales": {"status": "PASS", "checked": 5, "failed": 0},
                "missing": [],
                "failures": failures,
                "tensors": failures,
            },
            "energy": {"joules": 1.25, "per_layer": {"conv1": 0.5}},
        },
    }


WARNINGS = [
    "quantized model: 12 of 64 images had NaN/inf logits; they count as wrong",
    "dataset: 3 unreadable images skipped (skip_corrupt)",
]
LONG_NAMES = [
    "features.denseblock4.denselayer16.conv2",  # 39 characters, shown whole
    "transformer.encoder.layers.11.self_attention.out_proj",
    "model.backbone.stage4.block3.attention.query_key_value.linear",
]


def with_news(report: dict[str, Any], skipped: int = 25) -> dict[str, Any]:
    """``report`` with the keys newer runners add: warnings, skipped files, NaN/inf counts."""
    report = copy.deepcopy(report)
    report["warnings"] = list(WARNINGS)
    report["dataset"]["skipped"] = [
        {"path": f"val/n0144/img_{i:03d}.JPEG", "reason": "cannot identify image file"}
        for i in range(skipped)
    ]
    report["dataset"]["skipped_count"] = skipped
    report["metrics"]["compliance"]["roles"]["weight"]["nonfinite"] = {"nan": 3, "inf": 1}
    report["metrics"]["compliance"]["roles"]["input"]["nonfinite"] = {"nan": 0, "inf": 0}
    return report


def with_long_names(report: dict[str, Any], count: int = 30) -> dict[str, Any]:
    """``report`` with many layers, the first ones named like DenseNet and ViT modules."""
    report = copy.deepcopy(report)
    template = report["metrics"]["layerwise"]["layers"][0]
    layers = []
    for i in range(count):
        layer = copy.deepcopy(template)
        layer["name"] = LONG_NAMES[i] if i < len(LONG_NAMES) else f"layer{i // 4}.{i % 4}.conv"
        layer["mse"] = 10.0 ** (-1 - (i % 5))
        layer["cosine"] = 0.99 - 0.001 * i
        layers.append(layer)
    report["metrics"]["layerwise"]["layers"] = layers
    return report
