"""The zoo's shipped weights reach the accuracies recorded in the README.

The accuracy test goes through QBench's plugin registry (the installed entry point), the
``zoo`` adapter and the ``digits`` dataset, exactly as ``qbench run`` does. The wheel test
builds the distribution, imports qbench_adapters from the built wheel (not from the source
tree) and measures the same accuracies there, proving the weights ship as package data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import qbench.plugins
import torch

#: The floor for each model's FP32 digits test accuracy (README records the measured values).
THRESHOLDS = {"tiny_cnn": 0.97, "tiny_resnet": 0.97, "tiny_vit": 0.90}
#: qbench-adapters/README.md, "Zoo"; the script reproduces them bit for bit.
RECORDED = {"tiny_cnn": 533, "tiny_resnet": 534, "tiny_vit": 516}  # correct of 539
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
WEIGHT_BUDGET_BYTES = 2 * 1024 * 1024


def measure(adapter, dataset) -> dict[str, int]:
    correct = {}
    for name in THRESHOLDS:
        bundle = adapter.build({"adapter": "zoo", "name": name})
        batches = dataset.build(
            {"name": "digits", "split": "test", "batch_size": 128}, bundle=bundle
        )
        hits = total = 0
        with torch.no_grad():
            for images, targets in batches:
                hits += int((bundle.model(images).argmax(1) == targets).sum())
                total += len(targets)
        assert total == 539
        correct[name] = hits
    return correct


def test_zoo_accuracy_through_the_plugin_registry():
    adapter = qbench.plugins.get("adapter", "zoo")
    assert qbench.plugins.registry("adapter").plugin_of("zoo").distribution == "qbench-adapters"
    correct = measure(adapter, qbench.plugins.get("dataset", "digits"))
    for name, hits in correct.items():
        assert hits / 539 >= THRESHOLDS[name], (name, hits)
    assert correct == RECORDED


def test_shipped_weights_fit_the_budget():
    from qbench_adapters import zoo

    sizes = {name: zoo.weights_path(name).stat().st_size for name in zoo.MODELS}
    assert sum(sizes.values()) <= WEIGHT_BUDGET_BYTES, sizes


_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import qbench_adapters
from qbench_adapters.adapters import ZooAdapter
from qbench_adapters.digits import DigitsDataset
import torch
out = {"file": qbench_adapters.__file__, "correct": {}}
for name in ("tiny_cnn", "tiny_resnet", "tiny_vit"):
    bundle = ZooAdapter().build({"name": name})
    hits = 0
    with torch.no_grad():
        for x, y in DigitsDataset().build({"split": "test", "batch_size": 539}, bundle=bundle):
            hits += int((bundle.model(x).argmax(1) == y).sum())
    out["correct"][name] = hits
print(json.dumps(out))
"""


@pytest.mark.slow
def test_zoo_from_the_built_wheel_not_the_source_tree(tmp_path):
    builders = pytest.importorskip("hatchling.builders.wheel")
    wheel = Path(
        next(
            iter(
                builders.WheelBuilder(str(PACKAGE_ROOT)).build(
                    directory=str(tmp_path), versions=["standard"]
                )
            )
        )
    )
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert {f"qbench_adapters/zoo_weights/{n}.safetensors" for n in THRESHOLDS} <= set(names)
        archive.extractall(site)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(site)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).is_relative_to(site)  # imported from the wheel, not src/
    assert report["correct"] == RECORDED
