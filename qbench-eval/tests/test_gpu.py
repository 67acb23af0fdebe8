"""The metrics give the same numbers on CUDA as on CPU (device-agnostic code)."""

from __future__ import annotations

import copy

import pytest
import torch
from eval_helpers import quantize, spec
from qbench.types import BatchOutputs
from qbench_eval.accuracy import AccuracyMetric
from qbench_eval.compliance import ComplianceMetric
from qbench_eval.layerwise import LayerwiseMetric
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _run(device: str) -> tuple[dict, dict, dict]:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    quantized = copy.deepcopy(reference)
    with torch.no_grad():
        for p in quantized.parameters():
            p.copy_(torch.round(p * 16) / 16)
    reference, quantized = reference.to(device), quantized.to(device)
    preparation = {"quantized": [{"name": n, "roles": {"input": ""}} for n in ("0", "1", "2")]}
    accuracy, layerwise, compliance = (
        AccuracyMetric(None),
        LayerwiseMetric(None),
        ComplianceMetric(None),
    )
    for metric in (accuracy, layerwise, compliance):
        metric.attach(reference, quantized, {"preparation": preparation})
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for index in range(3):
            x = torch.randn(8, 16, generator=generator)
            targets = torch.randint(0, 4, (8,), generator=generator)
            for layer in ("0", "1", "2"):
                compliance.on_tensor(
                    layer, "input", quantize(x.to(device), spec("test_int8", "chunk", 4, "e8m0"))
                )
            batch = BatchOutputs(
                targets.to(device), reference(x.to(device)), quantized(x.to(device)), index
            )
            for metric in (accuracy, layerwise, compliance):
                metric.update(batch)
    layerwise.close()
    return accuracy.result(), layerwise.result(), compliance.result()


def test_cuda_matches_cpu() -> None:
    cpu, cuda = _run("cpu"), _run("cuda")
    for side in ("reference", "quantized"):
        for key in ("top1", "topk", "certainty"):
            assert cuda[0][side][key] == pytest.approx(cpu[0][side][key])
    assert cuda[0]["agreement"] == cpu[0]["agreement"]
    for a, b in zip(cpu[1]["layers"], cuda[1]["layers"]):
        assert b["mse"] == pytest.approx(a["mse"], rel=1e-4)
        assert b["cosine"] == pytest.approx(a["cosine"], rel=1e-6)
        assert b["input"]["max_abs"] == pytest.approx(a["input"]["max_abs"])
    assert cuda[2]["status"] == cpu[2]["status"] == "PASS"
    assert cuda[2]["roles"]["input"]["elements"] == cpu[2]["roles"]["input"]["elements"]
