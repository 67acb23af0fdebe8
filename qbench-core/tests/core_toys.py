"""A toy plugin with the smallest components that satisfy the protocols (a 3-bit format,
an MLP adapter, a random dataset, metrics, a reporter and a Linear op), so core is tested with
only qbench-core installed (no sibling packages). conftest.py's ``toy_plugins`` fixture
registers it; tests import the components from here to change or inspect them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qbench import hookimpl
from qbench.types import ModelBundle, QuantResult, Scaling


class ToyFormat:
    """A symmetric 3-bit integer grid (-3..3) with per-tensor absmax scaling."""

    def __init__(self, name: str, default_scaling: Scaling | None = None):
        self.name = name
        self.bits = 3
        self.max_value = 3.0
        self.min_normal = 1.0
        self.min_subnormal = 1.0
        self.default_scaling = default_scaling
        self.element = name
        self.effective_bits = 3

    def values(self):
        import torch

        return torch.arange(-3.0, 4.0)

    def round(self, x, rounding="nearest_even", overflow="saturate", generator=None):
        return x.round().clamp(-3, 3)

    def is_representable(self, x):
        return (x == x.round()) & (x.abs() <= 3)

    def encode(self, x):
        return x.round().clamp(-3, 3).to(dtype=__import__("torch").int8)

    def decode(self, codes):
        return codes.float()

    def quantize(self, x, spec, *, return_codes=False, generator=None):
        import torch

        scale = (x.abs().amax() / self.max_value).clamp_min(torch.finfo(torch.float32).tiny)
        codes = self.encode(x / scale)
        deq = self.decode(codes) * scale
        if not return_codes:
            return deq
        return QuantResult(
            deq, codes, scale.reshape(1), spec, {"tensor": (scale.reshape(1), "fp32")}
        )


class ToyAdapter:
    name = "toy"
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"width": {"type": "integer", "minimum": 1, "default": 4}},
    }

    def build(self, options, *, device="cpu"):
        import torch
        from torch import nn

        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(4, options.get("width", 4)), nn.ReLU(), nn.Linear(options.get("width", 4), 3)
        )
        return ModelBundle(model=model.eval(), name="toy_mlp", num_classes=3)


class ToyDataset:
    name = "toyset"
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"split": {"enum": ["train", "test"], "default": "test"}},
    }

    def build(self, options, *, bundle):
        import torch

        generator = torch.Generator().manual_seed(1)
        total = options.get("limit") or 20
        x = torch.randn(total, 4, generator=generator)
        y = torch.randint(0, 3, (total,), generator=generator)
        size = options["batch_size"]
        return [(x[i : i + size], y[i : i + size]) for i in range(0, total, size)]


class ToyMetric:
    """Counts images and top-1 agreement, and records every observed tensor role."""

    name = "accuracy"
    options_schema = {
        "type": ["object", "null"],
        "properties": {"topk": {"type": "integer", "minimum": 1}},
    }

    def __init__(self, options):
        self.options = options
        self.images = 0
        self.agree = 0
        self.roles: set[str] = set()
        self.closed = False

    def attach(self, reference, quantized, context):
        self.context = context

    def on_tensor(self, layer, role, result):
        self.roles.add(f"{layer}:{role}")

    def update(self, batch):
        self.images += int(batch.targets.numel())
        self.agree += int((batch.reference.argmax(1) == batch.quantized.argmax(1)).sum())

    def result(self):
        return {
            "images": self.images,
            "agreement": self.agree / max(self.images, 1),
            "roles": sorted(self.roles),
        }

    def close(self):
        self.closed = True


class ReportFileMetric(ToyMetric):
    name = "compliance"
    options_schema = {"type": ["string", "null"], "format": "existing-file"}


class JsonReporter:
    name = "json"

    def write(self, report, out_dir):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "report.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, default=str))
        os.replace(tmp, path)
        return [path]


class ToyQuantLinear:
    """A minimal op: quantizes a Linear's weight once and its input every call."""

    name = "toy_linear"
    roles = ("weight", "input")

    @classmethod
    def module_types_(cls):
        from torch import nn

        return (nn.Linear,)

    @classmethod
    def from_module(cls, module, specs, *, name):
        import copy

        import qbench
        import torch
        from torch import nn

        class Quantized(nn.Linear):
            def forward(self, x):
                fmt = qbench.get_format(specs.input.format)
                observe = self.observers
                result = fmt.quantize(x, specs.input, return_codes=bool(observe))
                x_q = result.dequantized if observe else result
                for observer in observe:
                    observer.on_tensor(name, "input", result)
                return torch.nn.functional.linear(x_q, self.weight_q, self.bias)

            def qbench_attach_observer(self, observer):
                self.observers.append(observer)
                observer.on_tensor(name, "weight", self.weight_result)

            def qbench_detach_observer(self, observer):
                self.observers.remove(observer)

        new = copy.deepcopy(module)
        new.__class__ = Quantized
        new.observers = []
        new.weight_result = qbench.get_format(specs.weight.format).quantize(
            module.weight.detach(), specs.weight, return_codes=True
        )
        new.weight_q = new.weight_result.dequantized
        return new


class ToyPlugin:
    @hookimpl
    def qbench_register_ops(self, register):
        op = type(
            "ToyLinearOp", (ToyQuantLinear,), {"module_types": ToyQuantLinear.module_types_()}
        )
        register(op)

    @hookimpl
    def qbench_register_formats(self, register):
        register(ToyFormat("toy3"))
        register(
            ToyFormat(
                "toy3_block", Scaling(mode="chunk", chunk_size=4, axis=-1, scale_format="toy3")
            )
        )

    @hookimpl
    def qbench_register_adapters(self, register):
        register(ToyAdapter())

    @hookimpl
    def qbench_register_datasets(self, register):
        register(ToyDataset())

    @hookimpl
    def qbench_register_metrics(self, register):
        register(ToyMetric)
        register(ReportFileMetric)

    @hookimpl
    def qbench_register_reporters(self, register):
        register(JsonReporter())


def toy_config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"adapter": "toy"},
        "dataset": {"name": "toyset", "batch_size": 8},
        "quantization": {"format": "toy3"},
        "evaluation": {"metrics": ["accuracy"]},
    }
    config.update(changes)
    return config
