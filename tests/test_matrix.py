"""Every built-in format x {tensor, channel, chunk} x {contiguous, channels_last}, with all
three metrics, on a small conv net with BatchNorm, a depthwise and a grouped convolution: no
internal error anywhere, and the audit passes (an int8 tensor-mode run held channels-last
once crashed in the audit's grouping of a 0-dim scale).

Each combination runs twice in the audit: as it would on small tensors (eager counts), and
through the grouped route that compiled counts take on large ones (forced here, with the
kernels run eagerly so that no combination pays a compile)."""

from __future__ import annotations

import pytest
import qbench
import torch
from torch import nn

MODES = ("tensor", "channel", "chunk")
LAYOUTS = ("contiguous", "channels_last")


def small_net(num_classes: int = 10) -> nn.Module:
    """The factory the matrix's configs name (``test_matrix:small_net``)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 12, 1, groups=2),  # grouped
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, num_classes),
    )


def _formats() -> list[str]:
    from qbench.plugins import registry

    return [name for name in registry("format").names() if name not in ("fp32",)]


@pytest.fixture(params=["eager counts", "grouped counts"])
def audit_route(request, monkeypatch):
    if request.param == "grouped counts":
        import qbench.kernels as kernels
        import qbench_eval.compliance.metric as compliance

        monkeypatch.setattr(compliance, "use_compiled", lambda numel, path="auto": True)
        monkeypatch.setattr(kernels, "COMPILE_ENABLED", False)
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_format_mode_and_layout_runs_and_passes_the_audit(audit_route, layout, tmp_path):
    failures = []
    for fmt in _formats():
        for mode in MODES:
            config = {
                "name": f"{fmt}_{mode}",
                "memory_format": layout,
                "model": {
                    "adapter": "generic",
                    "factory": "test_matrix:small_net",
                    "num_classes": 10,
                    "transform": {"resize": 8, "crop_size": 8, "image_mode": "L"},
                },
                "dataset": {"name": "digits", "split": "test", "batch_size": 16, "limit": 16},
                "quantization": {"format": fmt, "mode": mode, "chunk_size": 8},
                "evaluation": {"metrics": ["accuracy", "layerwise", "compliance"]},
                "output": {"reporters": ["json"]},
            }
            try:
                result = qbench.run(config, output=tmp_path, device="cpu")
            except qbench.QBenchError as exc:  # a refusal must say why in one line
                failures.append(f"{fmt}/{mode}: refused: {exc}")
                continue
            assert result.report["memory_format"] == layout
            compliance = result.metrics["compliance"]
            if compliance["status"] != "PASS":
                failures.append(f"{fmt}/{mode}: audit {compliance['status']}")
    assert not failures, failures
