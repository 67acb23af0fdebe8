"""End to end: a format plugin whose rounding skips some values makes the audit FAIL, naming
the right layers, the exact count and examples; the report files say so too."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import qbench  # noqa: E402
import qbench.plugins  # noqa: E402
from qbench.types import QuantResult, QuantSpec  # noqa: E402

SKIPPING = "e2e_skipping_fp4"


def skipped(x: torch.Tensor) -> torch.Tensor:
    """The planted bug: elements with |x| in [20 %, 22 %) of the tensor's max stay unrounded.
    With a per-tensor scale they land on 1.2..1.32 in E2M1 units, between grid points 1 and
    1.5, so every one of them is a genuine violation."""
    magnitude = x.abs()
    amax = magnitude.amax()
    return (magnitude >= 0.2 * amax) & (magnitude < 0.22 * amax)


class SkippingFp4:
    """fp4_e2m1 with a rounding that skips some values (everything else delegates)."""

    name = SKIPPING
    element = "fp4_e2m1"
    default_scaling = None

    def __init__(self) -> None:
        self.real = qbench.get_format("fp4_e2m1")
        for attribute in ("bits", "max_value", "min_normal", "min_subnormal"):
            setattr(self, attribute, getattr(self.real, attribute))

    def values(self) -> torch.Tensor:
        return self.real.values()

    def round(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.where(skipped(x), x, self.real.round(x, *args, **kwargs))

    def is_representable(self, x: torch.Tensor) -> torch.Tensor:
        return self.real.is_representable(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.real.encode(x)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.real.decode(codes)

    def quantize(
        self, x: torch.Tensor, spec: QuantSpec, *, return_codes: bool = False, generator: Any = None
    ) -> Any:
        result = self.real.quantize(
            x, dataclasses.replace(spec, format="fp4_e2m1"), return_codes=True, generator=generator
        )
        dequantized = torch.where(skipped(x), x, result.dequantized)
        if not return_codes:
            return dequantized
        return QuantResult(
            dequantized, result.codes, result.scales, spec, result.scale_parts, result.expand
        )


class SkippingPlugin:
    @staticmethod
    @qbench.hookimpl
    def qbench_register_formats(register: Any) -> None:
        register(SkippingFp4())


@pytest.fixture
def skipping_format():
    qbench.plugins.register_plugin(SkippingPlugin, "e2e-skipping-format")
    yield
    qbench.plugins.unregister_plugin("e2e-skipping-format")


@pytest.mark.slow
def test_audit_fails_on_a_format_that_skips_rounding(tmp_path: Path, skipping_format: None) -> None:
    config = {
        "name": "planted",
        "model": {"adapter": "zoo", "name": "tiny_resnet"},
        "dataset": {"name": "digits", "split": "test", "batch_size": 16},
        "quantization": {"format": SKIPPING, "mode": "tensor"},
        "evaluation": {
            "metrics": ["accuracy", "layerwise", "compliance"],
            "compliance": {"max_examples": 3},
        },
    }
    result = qbench.run(config, limit=16, device="cpu", output=tmp_path)
    compliance = result.report["metrics"]["compliance"]
    assert compliance["status"] == "FAIL"
    assert compliance["roles"]["weight"]["status"] == "FAIL"

    # The exact count for one layer, from the FP32 weight itself.
    bundle = qbench.plugins.get("adapter", "zoo").build(
        {"adapter": "zoo", "name": "tiny_resnet"}, device="cpu"
    )
    weight = bundle.model.get_submodule("layer1.0.conv1").weight.detach()
    mask = skipped(weight)
    assert int(mask.sum()) > 0
    failures = {(f["layer"], f["role"]): f for f in compliance["failures"]}
    conv = failures[("layer1.0.conv1", "weight")]
    assert conv["failures"] == {"reconstruction": int(mask.sum())}
    assert len(conv["examples"]) == 3
    for example in conv["examples"]:
        index = tuple(example["index"])
        assert bool(mask[index])
        assert example["value"] == pytest.approx(float(weight[index]))
        low, high = example["nearest"]
        assert low < example["value"] < high  # bracketed by the two grid neighbours
    # A layer whose weights have no element in the band is not blamed.
    for name, module in bundle.model.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor) and (name, "weight") in failures:
            assert (
                int(skipped(w.detach()).sum())
                == failures[(name, "weight")]["failures"]["reconstruction"]
            )
        elif isinstance(w, torch.Tensor) and name and type(module).__name__ in ("Conv2d", "Linear"):
            assert int(skipped(w.detach()).sum()) == 0

    out_dir = result.out_dir
    text = (out_dir / "comparison_report.txt").read_text()
    assert "Overall: FAIL" in text
    assert "layer1.0.conv1 [weight]" in text and f"(reconstruction: {int(mask.sum())})" in text
    saved = json.loads((out_dir / "report.json").read_text())
    assert saved["metrics"]["compliance"]["status"] == "FAIL"
    assert 'class="FAIL"' in (out_dir / "report.html").read_text()
