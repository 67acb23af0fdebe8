"""The nouns of QBench (DESIGN.md §3) as plain data and typing protocols.

Core knows no concrete format, op, model or metric: plugins provide objects that satisfy
these protocols and register them through the hooks in :mod:`qbench.hookspecs`.
This module must stay importable without torch (the CLI starts fast), so tensors are
only named in annotations.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    per-tensor scale applied on top of per-block scales (NVFP4: ``fp32``). ``scale_method``
    picks the value each scale maps onto the format's max (``absmax``; ``percentile``: the
    ``percentile``-th percentile of |x|, None for the method's default; ``mse``: the clip
    with the least squared error); qbench-formats documents each.
    """

    mode: str = "tensor"
    axis: int | None = None
    chunk_size: int | None = None
    scale_format: str = "fp32"
    scale_method: str = "absmax"
    second_level: str | None = None
    #: the p of ``scale_method: percentile`` in (0, 100]; None: the default (99.99 for
    #: tensors and channels, one saturated value per chunk). Other methods ignore it.
    percentile: float | None = None

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
        if s.scale_method != "absmax":
            text += f" {s.scale_method}"
            if s.scale_method == "percentile" and s.percentile is not None:
                text += f"={s.percentile:g}"
        return text


@dataclass
class QuantResult:
    """What a quantizer produced, for the compliance audit.

    ``dequantized`` is the fake-quantized tensor (same shape and dtype as the input).
    ``codes`` are the element format's integer codes (same shape as the input), in any
    integer dtype: a format gives int32, and on the CPU the ops hand observers the same codes
    narrowed to the smallest dtype that holds them (uint8 for 8-bit codes), so compare them
    after widening (a uint8 tensor's ``>= 256`` wraps to ``>= 0``).
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
    """An element number format (or a block-scaled preset built on one): what
    ``qbench_register_formats`` registers. ``qbench-core/README.md`` lists who reads each
    member and what a format that lacks an optional one gets.

    Required: ``name``, ``bits``, ``max_value``, ``values()``, ``round()``,
    ``is_representable()``, ``decode()`` and ``quantize()`` (core calls it;
    ``qbench_formats.GridFormat`` supplies it, and every member but ``name``, ``bits``,
    ``values()`` and ``round()``). The others are read with a default when absent.
    """

    name: str
    #: storage bits of one element; the audit decodes every code in [-2^bits, 2^bits)
    bits: int
    #: largest finite magnitude: fp32 scales are amax / max_value
    max_value: float
    #: smallest positive normal magnitude: block scales are clamped to it (NVFP4's fp8 scales)
    min_normal: float
    #: smallest positive magnitude (``qbench formats``)
    min_subnormal: float
    #: floor(log2(max_value)), the element exponent an e8m0 scale subtracts (OCP MX v1.0 §6.3)
    emax: int
    #: registered name of the element format whose codes ``decode`` reads (itself if plain)
    element: str
    #: a preset's scaling (mode, chunk_size, scale_format...), None for a plain format
    default_scaling: Scaling | None

    def values(self) -> torch.Tensor:
        """Every finite representable value, sorted ascending, ±0 once."""
        ...

    def round(
        self, x: torch.Tensor, rounding: str = ..., overflow: str = ..., generator: Any = ...
    ) -> torch.Tensor:
        """``x`` rounded onto the grid (no scaling), same shape; NaN stays NaN."""
        ...

    def is_representable(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise: is ``x`` exactly a value of the format (inf/NaN only if it has them)."""
        ...

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``round(x)`` (-1 for a NaN the format cannot encode)."""
        ...

    def encode_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Codes of values already on the grid (the quantizer's codes for the audit)."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """float32 values of codes; a code that is no value decodes to NaN."""
        ...

    def quantize(
        self, x: torch.Tensor, spec: QuantSpec, *, return_codes: bool = False, generator: Any = None
    ) -> Any:
        """Fake-quantize ``x`` with ``spec`` (a tensor, or a :class:`QuantResult`)."""
        ...

    def summary(self) -> dict[str, Any]:
        """One row of ``qbench formats`` (kind, bits, effective_bits, max, inf, nan...)."""
        ...


class BlockScaledFormat(Format, Protocol):
    """A preset (``mxfp4_e2m1``, ``nvfp4``): its element format object plus its scaling."""

    #: the element format object the quantizer rounds with
    element_format: Format


class FloatFields(Protocol):
    """Optional bit layout of a binary float format (sign | exponent field | mantissa):
    with it, the audit decodes codes by arithmetic instead of a table gather (it checks the
    result against ``decode`` on every code first)."""

    exponent_bits: int
    mantissa_bits: int
    bias: int
    signed: bool


class Configurable(Protocol):
    """Any component may declare ``options_schema``, a JSON-schema (Draft 2020-12) fragment
    for its options: checked at registration, merged into the config schema for adapters,
    datasets and metrics (``qbench schema``). Optional; formats have no options today."""

    options_schema: dict[str, Any] | None


#: The Protocols that together describe a format object.
FORMAT_PROTOCOLS: tuple[type, ...] = (Format, BlockScaledFormat, FloatFields, Configurable)


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
    """A quantized replacement for one or more torch module types (registered as a class).

    ``qbench.prepare`` swaps each module whose type (or a base type, when the subclass keeps
    its ``forward``) is in ``module_types`` for ``from_module(module, specs, name=...)``, and a
    subclass with a ``forward`` of its own for ``from_subclass(module, specs, name=...)``.
    """

    name: ClassVar[str]
    #: the module types this op replaces
    module_types: ClassVar[tuple[type, ...]]
    #: the tensor roles (:data:`ROLES`) it can quantize; a layer with none enabled stays FP32
    roles: ClassVar[tuple[str, ...]]

    @classmethod
    def from_module(cls, module: nn.Module, specs: LayerSpecs, *, name: str) -> nn.Module:
        """The quantized twin of ``module`` (which ``prepare`` has already deep-copied)."""
        ...

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        """Optional: why this op cannot reproduce ``module`` (it then stays FP32), or None."""
        ...

    @classmethod
    def from_subclass(cls, module: nn.Module, specs: LayerSpecs, *, name: str) -> nn.Module | None:
        """Optional: the twin of ``module``, whose class derives from one of
        :attr:`module_types` with a ``forward`` of its own: it keeps that ``forward`` and
        quantizes what it computes (None: the module stays FP32, with the reason)."""
        ...

    @classmethod
    def rewrite(
        cls, model: nn.Module, quantization: Mapping[str, Any]
    ) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Optional: rewrite the whole model before its modules are swapped (the built-in
        ``fold_batchnorm`` op folds BatchNorms when the config asks): the model to prepare
        (a copy when changed; the original stays the FP32 reference) and records of what was
        done, listed under the preparation report's ``rewrites``."""
        ...

    @classmethod
    def calibrating(cls, twin: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Optional: a context in which the runner runs ``twin`` on the calibration batches
        (``calibration: {batches: N}``); the built-in ``calibration`` op records each
        input/activation quantizer's amax there."""
        ...

    @classmethod
    def freeze(cls, twin: nn.Module) -> dict[str, Any]:
        """Optional: after :meth:`calibrating`, turn what was recorded into static scales;
        returns ``{"static": [...], "dynamic": [{"name", "role", "reason"}...]}`` for the
        report's ``calibration`` section."""
        ...

    @classmethod
    def install(
        cls,
        twin: nn.Module,
        quantization: Mapping[str, Any] | None,
        specs_for: Callable[[str, str, nn.Module], LayerSpecs],
        *,
        owned: list[str],
    ) -> Installed | None:
        """Optional: act on the whole prepared ``twin`` after its modules are swapped (the
        built-in ``calls`` op quantizes functional calls inside forwards this way).
        ``specs_for(site, module_name, module)`` resolves a call site's specs (``layers:``
        entries naming the site, else its module's); ``owned`` names the swapped modules.
        What it returns is observed like a quantized module."""
        ...


class Installed(Protocol):
    """What an op's ``install`` returns: observed like a quantized module, and asked after
    the run what it saw."""

    def qbench_attach_observer(self, observer: Observer) -> None:
        """As :meth:`ObservableModule.qbench_attach_observer`."""
        ...

    def qbench_detach_observer(self, observer: Observer) -> None:
        """As :meth:`ObservableModule.qbench_detach_observer`."""
        ...

    def qbench_report(self) -> dict[str, Any]:
        """Optional: ``{"coverage": {...}, "calls": [...]}`` merged into the run report's
        preparation section (multiply-accumulate coverage, the call sites seen)."""
        ...


class Observer(Protocol):
    """What ``qbench.preparation.observe`` attaches to every observable quantized module (the
    compliance audit, the layer-wise metric)."""

    def on_tensor(self, layer: str, role: str, result: QuantResult) -> None:
        """One quantization: ``result.dequantized`` is the very tensor the layer used."""
        ...


class ObservableModule(Protocol):
    """What the module ``Op.from_module`` returns must provide to be observed and audited.

    A module without ``qbench_attach_observer`` is listed ``"observable": False`` in the
    preparation report, and the audit's ``require_observed`` fails its roles.
    """

    def qbench_attach_observer(self, observer: Observer) -> None:
        """Report the cached weight/statistics QuantResults to ``observer.on_tensor(layer,
        role, result)`` now, then every quantization of later forward passes (computing codes
        and scales, ``return_codes=True``, only while an observer is attached)."""
        ...

    def qbench_detach_observer(self, observer: Observer) -> None:
        """Stop reporting to ``observer`` (idempotent)."""
        ...

    def qbench_roles(self) -> dict[str, str]:
        """``{role: QuantSpec.describe()}`` for the roles this layer really quantizes: the
        preparation report and the audit's expected observations (default: ``Op.roles``
        with a spec)."""
        ...


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
    """Builds (or loads) a model: ``model.adapter`` names it, ``model.*`` are its options."""

    name: str
    options_schema: dict[str, Any]

    def build(self, options: Mapping[str, Any], *, device: str = "cpu") -> ModelBundle: ...


class Dataset(Protocol):
    """Yields evaluation batches ``(images, targets)``: ``dataset.name`` names it."""

    name: str
    options_schema: dict[str, Any]

    def build(
        self, options: Mapping[str, Any], *, bundle: ModelBundle
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def download(self, root: Any, *, url: str | None = None, progress: bool = True) -> Any:
        """Optional: fetch the data into ``root`` (``qbench data download``)."""
        ...


@dataclass
class BatchOutputs:
    """One evaluation step: targets and both models' logits for the same inputs."""

    targets: torch.Tensor
    reference: torch.Tensor
    quantized: torch.Tensor
    index: int = 0


class Metric(Protocol):
    """A streaming accumulator, registered as a class: a run makes one instance with the
    config's ``evaluation.<name>`` options. ``attach`` may hook the two models (layer
    outputs, quantized tensors); ``update`` is called once per batch; ``result`` returns a
    JSON-serializable section of the report."""

    name: str
    options_schema: dict[str, Any]

    def attach(
        self, reference: nn.Module, quantized: nn.Module, context: Mapping[str, Any]
    ) -> None: ...
    def update(self, batch: BatchOutputs) -> None: ...
    def result(self) -> dict[str, Any]: ...

    def on_tensor(self, layer: str, role: str, result: QuantResult) -> None:
        """Optional: makes the metric an :class:`Observer` of every quantization. The runner
        looks it up with ``hasattr``; while the run's batches go through the quantized model,
        it is called for every quantization an observable layer performs (and, when the
        observation starts, for each cached weight and statistic)."""
        ...

    def close(self) -> None:
        """Optional: called once after the last batch, also when the run fails (release
        hooks, files), and before ``result``."""
        ...

    @staticmethod
    def summary(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """Optional: rows for ``qbench run``'s summary table from this metric's ``result``:
        (label, FP32 value, quantized value), values as display strings ("" where a row has
        no FP32 side). Called on the registered class, so a staticmethod or classmethod."""
        ...

    @staticmethod
    def sweep_columns(result: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
        """Optional: this metric's columns of a sweep table, ``(key, label, value)`` with a
        number (or None) as value (``qbench.sweep``). Called on the registered class."""
        ...

    @staticmethod
    def sweep_layers(result: Mapping[str, Any]) -> dict[str, Any]:
        """Optional: one number per layer (the layer-wise metric: output cosine), for a
        sweep's layers x configs heat map."""
        ...

    #: Optional: the key of one of :meth:`sweep_columns` that a sweep's Pareto front
    #: maximises against effective bits (the accuracy metric: ``top1_delta``).
    sweep_quality: str
    #: Optional: how ``qbench sensitivity`` ranks layers, most damaging first: keys of
    #: :meth:`sweep_columns`, ascending, or descending with a leading ``-``.
    sweep_rank: tuple[str, ...]


class Reporter(Protocol):
    """Writes report artifacts into ``out_dir``; returns the paths written."""

    name: str

    def write(self, report: Mapping[str, Any], out_dir: Any) -> list[Any]: ...

    def write_sweep(self, summary: Mapping[str, Any], out_dir: Any) -> list[Any]:
        """Optional: write a sweep's table (``qbench.sweep.summarize``: ``rows``, ``columns``,
        ``quality``, ``complete``...) into ``out_dir``; every reporter that has it writes
        its file of the sweep report set."""
        ...


def iter_roles() -> Iterator[str]:
    return iter(ROLES)
