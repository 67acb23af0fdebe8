"""Run the three metrics over N synthetic batches and print the process's peak RSS (KiB).

Used by test_eval_memory.py in a fresh subprocess per N, so each peak is the run's own.
"""

from __future__ import annotations

import copy
import resource
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import qbench.plugins  # noqa: E402
from eval_helpers import FormatsForTests, quantize, spec  # noqa: E402
from qbench.types import BatchOutputs  # noqa: E402
from qbench_eval.accuracy import AccuracyMetric  # noqa: E402
from qbench_eval.compliance import ComplianceMetric  # noqa: E402
from qbench_eval.layerwise import LayerwiseMetric  # noqa: E402


class QuantizedInput(nn.Module):
    """Wraps a layer: quantizes its input and reports the QuantResult, like a qbench op."""

    def __init__(self, name: str, inner: nn.Module, observers: list):
        super().__init__()
        self.name, self.inner, self.observers = name, inner, observers
        self.spec = spec("test_int8", "chunk", 32, "e8m0")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = quantize(x, self.spec)
        for observer in self.observers:
            observer.on_tensor(self.name, "input", result)
        return self.inner(result.dequantized)


def main(batches: int) -> None:
    torch.set_num_threads(1)
    qbench.plugins.register_plugin(FormatsForTests, "memory-probe-formats")
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(32, 8192), nn.ReLU(), nn.Linear(8192, 10)).eval()
    observers: list = []
    quantized = nn.Sequential(
        *[QuantizedInput(str(i), copy.deepcopy(m), observers) for i, m in enumerate(reference)]
    ).eval()
    preparation = {
        "quantized": [{"name": str(i), "type": "x", "roles": {"input": ""}} for i in range(3)]
    }
    metrics = [AccuracyMetric(None), LayerwiseMetric(None), ComplianceMetric(None)]
    for metric in metrics:
        metric.attach(reference, quantized, {"preparation": preparation})
    observers.append(metrics[2])
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for index in range(batches):
            x = torch.randn(128, 32, generator=generator)
            targets = torch.randint(0, 10, (128,), generator=generator)
            batch = BatchOutputs(targets, reference(x), quantized(x), index)
            for metric in metrics:
                metric.update(batch)
    for metric in metrics:
        getattr(metric, "close", lambda: None)()
    results = [metric.result() for metric in metrics]
    assert results[2]["status"] == "PASS", results[2]
    assert results[1]["layers"][0]["calls"] == batches
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == "__main__":
    main(int(sys.argv[1]))
