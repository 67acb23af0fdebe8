"""The nouns of QBench (DESIGN.md §3) as plain data and typing protocols.

Core knows no concrete format, op, model or metric: plugins provide objects that satisfy
these protocols and register them through the hooks in :mod:`qbench.hookspecs`.
This module must stay importable without torch (the CLI starts fast), so tensors are
only named in annotations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

#: Tensor roles a quantized op may quantize. ``stats`` are internal statistics such as
#: BatchNorm running mean/var; they follow the weight settings.
ROLES = ("weight", "input", "act", "stats")
MODES = ("tensor", "channel", "chunk")
ROUNDINGS = ("nearest_even", "nearest_away", "toward_zero", "stochastic")
OVERFLOWS = ("saturate", "format")
SCALE_METHODS = ("absmax", "percentile", "mse")


@dataclass(frozen=True)
class Scaling:
    """How a tensor is mapped into a format's range.

    ``axis`` is the channel axis (mode ``channel``) or the axis chunks run along (mode
    ``chunk``); ``None`` lets the caller pick its role default (weights: output channels;
    activations: last axis). ``scale_format`` names a registered format the scales are
    rounded to (``fp32``, ``e8m0``, ``fp8_e4m3``...). ``second_level`` names the format of a
    per-tensor scale applied on top of per-block scales (NVFP4: ``fp32``).
    """

    mode: str = "tensor"
    axis: int | None = None
    chunk_size: int | None = None
    scale_format: str = "fp32"
    scale_method: str = "absmax"
    second_level: str | None = None

    def replace(self, **changes: Any) -> Scaling:
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class QuantSpec:
    """Format + Scaling + rounding + overflow: everything needed to quantize one tensor."""

    format: str
    scaling: Scaling = field(default_factory=Scaling)
    rounding: str = "nearest_even"
    overflow: str = "saturate"

    def describe(self) -> str:
        s = self.scaling
        text = f"{self.format} {s.mode}"
        if s.mode == "chunk":
            text += f"{s.chunk_size}"
        if s.scale_format != "fp32":
            text += f" scale={s.scale_format}"
        return text


@dataclass
class QuantResult:
    """What a quantizer produced, for the compliance audit.

    ``dequantized`` is the fake-quantized tensor (same shape and dtype as the input).
    ``codes`` are the element format's integer codes (same shape as the input).
    ``scales`` are the effective per-group scales, shaped so that
    ``format.decode(codes) * expand_scales()`` equals ``dequantized`` bit for bit.
    ``scale_parts`` names each scale level with its values and format, e.g.
    ``{"block": (tensor, "fp8_e4m3"), "tensor": (tensor, "fp32")}`` for NVFP4.
    """

    dequantized: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    spec: QuantSpec
    scale_parts: dict[str, tuple[Any, str]] = field(default_factory=dict)
    expand: Any = None  # callable(scales) -> tensor broadcastable to codes' shape

    def expand_scales(self) -> torch.Tensor:
        return self.expand(self.scales) if self.expand is not None else self.scales


@runtime_checkable
class Format(Protocol):
    """An element number format (or a block-scaled preset built on one).

    ``default_scaling`` is None for a plain element format and the preset's scaling for
    presets such as ``mxfp4_e2m1``; ``element`` is the element format's name (itself for
    plain formats).
    """

    name: str
    bits: int
    max_value: float
    min_normal: float
    min_subnormal: float
    default_scaling: Scaling | None
    element: str

    def values(self) -> torch.Tensor: ...
    def round(
        self, x: torch.Tensor, rounding: str = ..., overflow: str = ..., generator: Any = ...
    ) -> torch.Tensor: ...
    def is_representable(self, x: torch.Tensor) -> torch.Tensor: ...
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...
    def quantize(
        self, x: torch.Tensor, spec: QuantSpec, *, return_codes: bool = False, generator: Any = None
    ) -> Any: ...


@dataclass(frozen=True)
class LayerSpecs:
    """The resolved QuantSpec per tensor role of one layer (None: that role stays FP32)."""

    weight: QuantSpec | None = None
    input: QuantSpec | None = None
    act: QuantSpec | None = None
    stats: QuantSpec | None = None

    def get(self, role: str) -> QuantSpec | None:
        return getattr(self, role)

    @property
    def enabled(self) -> bool:
        return any(self.get(r) is not None for r in ROLES)


class Op(Protocol):
    """A quantized replacement for one or more torch module types (registered as a class)."""

    name: ClassVar[str]
    module_types: ClassVar[tuple[type, ...]]
    roles: ClassVar[tuple[str, ...]]

    @classmethod
    def from_module(cls, module: nn.Module, specs: LayerSpecs, *, name: str) -> nn.Module: ...


@dataclass
class ModelBundle:
    """What an adapter builds: the FP32 model and what is needed to feed it."""

    model: nn.Module
    name: str
    transform: Any = None  # callable applied by datasets to each PIL image
    num_classes: int | None = None
    class_index: Mapping[str, int] | None = None  # e.g. ImageNet wnid -> class index
    info: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    name: str
    options_schema: dict[str, Any]

    def build(self, options: Mapping[str, Any], *, device: str = "cpu") -> ModelBundle: ...


class Dataset(Protocol):
    name: str
    options_schema: dict[str, Any]

    def build(
        self, options: Mapping[str, Any], *, bundle: ModelBundle
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class BatchOutputs:
    """One evaluation step: targets and both models' logits for the same inputs."""

    targets: torch.Tensor
    reference: torch.Tensor
    quantized: torch.Tensor
    index: int = 0


class Metric(Protocol):
    """A streaming accumulator. ``attach`` may hook the two models (layer outputs,
    quantized tensors); ``update`` is called once per batch; ``result`` returns a
    JSON-serializable section of the report."""

    name: str
    options_schema: dict[str, Any]

    def attach(
        self, reference: nn.Module, quantized: nn.Module, context: Mapping[str, Any]
    ) -> None: ...
    def update(self, batch: BatchOutputs) -> None: ...
    def result(self) -> dict[str, Any]: ...


class Reporter(Protocol):
    name: str

    def write(self, report: Mapping[str, Any], out_dir: Any) -> list[Any]: ...


def iter_roles() -> Iterator[str]:
    return iter(ROLES)
