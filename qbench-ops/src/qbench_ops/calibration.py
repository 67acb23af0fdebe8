"""Static input and activation scales from calibration batches.

Every input and activation quantizer of a twin scales dynamically: each batch gets the scale
of its own amax (per tensor, channel or chunk). Deployed int8/fp8 inference often fixes these
scales offline instead, from the amax seen over a few calibration batches. Here:

* ``with calibrating(twin): twin(batch) ...`` makes every input/act quantizer whose spec can
  have a static scale (mode ``tensor`` or ``channel``, ``scale_method: absmax``, ``overflow:
  saturate``) record the running max of ``|x|`` per scale group (one value, or one per channel
  along the channel axis the quantizer resolves for ``x``), NaN and ±inf ignored, while it
  quantizes dynamically as usual. Blocks add up until :func:`freeze`; a block started after a
  freeze calibrates afresh.
* ``freeze(twin)`` gives every quantizer that recorded static scales: from then on a tensor
  is quantized as the format quantizes a tensor whose amax is the calibrated ``A`` (per group),
  and values beyond ``±A`` saturate. It returns what became static and what stays dynamic,
  and why (chunk modes, other scale methods or overflow modes, quantizers never called).
  :func:`release` returns a twin to dynamic scales.

Weights and statistics are untouched: they are quantized once, from the tensor itself.

Exactness without help from the format (formats are plugins; only
``fmt.quantize(x, spec, return_codes=...)`` is asked of them): the static quantizer clamps
``x`` to ``[-A, A]`` per group (keeping each value's sign, so a
zero's too: ``copysign(min(|x|, A), x)``) and appends one slice holding ``A`` (per group) along an axis
other than the channel axis, so each group's absmax is exactly ``A``; it quantizes that
augmented tensor with the unchanged spec and cuts the extra slice off the dequantized tensor
and the codes. Elementwise rounding does not depend on the neighbours, so every element is
what the format gives for a tensor whose amax is ``A``, and ``decode(codes) * scales``
equals the dequantized tensor for the audit, as for a dynamic quantization. (Under
``scale_format: e8m0`` a NaN in a group still makes its shared scale NaN, as the format does;
±inf saturates like any value beyond ``A``.)

The runner calls :func:`calibrating` around N calibration batches, then :func:`freeze`,
before it evaluates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
from qbench import QBenchError, QuantResult, QuantSpec
from torch import nn

from .calls import ATTRIBUTE as _INTERCEPTOR
from .quantizer import TensorQuantizer

#: Roles whose scales may become static (weights and statistics are quantized once anyway).
STATIC_ROLES = ("input", "act")
#: Scaling modes that may have a static scale (chunk scales follow their blocks).
STATIC_MODES = ("tensor", "channel")


def quantizers(twin: nn.Module) -> list[TensorQuantizer]:
    """Every quantizer of a prepared twin, once each: those of its quantized modules, in
    module order, then those its call interceptor created (call sites seen so far)."""
    found: dict[int, TensorQuantizer] = {}
    for module in twin.modules():
        for quantizer in module.__dict__.get("_qbench_quantizers", ()):
            found.setdefault(id(quantizer), quantizer)
    for module in twin.modules():
        interceptor = module.__dict__.get(_INTERCEPTOR)
        if interceptor is not None:
            for quantizer in interceptor._quantizers.values():
                if quantizer is not None:
                    found.setdefault(id(quantizer), quantizer)
    return list(found.values())


def _interceptors(twin: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for module in twin.modules():
        interceptor = module.__dict__.get(_INTERCEPTOR)
        if interceptor is not None:
            seen.setdefault(id(interceptor), interceptor)
    return list(seen.values())


def dynamic_reason(quantizer: TensorQuantizer) -> str | None:
    """Why ``quantizer`` (an input or act one) cannot have static scales, or None if it can."""
    spec = quantizer.spec
    scaling = spec.scaling
    if scaling.mode not in STATIC_MODES:
        return f"mode {scaling.mode}: block scales stay dynamic"
    if scaling.scale_method != "absmax":
        return (
            f"scale_method {scaling.scale_method}: only absmax scales are calibrated "
            "(a clipping method picks its clip per batch)"
        )
    if spec.overflow != "saturate":
        return (
            f"overflow is not saturate ({spec.overflow}): static scales saturate values "
            "beyond the calibrated amax"
        )
    if quantizer.flatten:
        return "a flattened weight view: not an input or activation"
    return None


class Recorder:
    """The running max of ``|x|`` per scale group of one quantizer (see the module docstring).

    ``amax`` is a 0-d float32 tensor (mode tensor) or one value per channel; ``problem`` says
    why the batches cannot share one static scale (their channel layouts differ)."""

    def __init__(self) -> None:
        self.active = True
        self.calls = 0
        self.amax: torch.Tensor | None = None
        self.layout: tuple[int, int, int] | None = None  # channel mode: (ndim, axis, channels)
        self.problem: str | None = None

    def record(self, quantizer: TensorQuantizer, x: torch.Tensor) -> None:
        if not self.active or self.problem is not None:
            return
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
            return
        spec = quantizer.spec_for(x)
        with torch.no_grad():
            magnitude = x.detach().to(torch.float32).abs().nan_to_num_(0.0, 0.0, 0.0)
            if spec.scaling.mode == "tensor":
                amax = magnitude.amax()
            else:
                layout = _channel_layout(x, spec)
                if isinstance(layout, str):
                    self.problem = layout
                    return
                if self.layout is not None and layout != self.layout:
                    self.problem = (
                        f"calibration tensors differ in layout: {_describe(layout)}, "
                        f"earlier {_describe(self.layout)}"
                    )
                    return
                self.layout = layout
                ndim, axis, _ = layout
                dims = tuple(d for d in range(ndim) if d != axis)
                amax = magnitude.amax(dim=dims) if dims else magnitude
            if self.amax is None:
                self.amax = amax
            else:
                self.amax = torch.maximum(self.amax, amax.to(self.amax.device))
        self.calls += 1


def _channel_layout(x: torch.Tensor, spec: QuantSpec) -> tuple[int, int, int] | str:
    """``(ndim, axis, channels)`` of ``x`` under channel ``spec`` (axis resolved), or why not."""
    ndim = x.dim()
    axis = spec.scaling.axis
    if ndim == 0 or axis is None or not -ndim <= axis < ndim:
        return f"channel axis {axis} does not exist in a {ndim}-d tensor"
    axis %= ndim
    return ndim, axis, x.shape[axis]


def _describe(layout: tuple[int, int, int]) -> str:
    ndim, axis, channels = layout
    return f"{channels} channels along axis {axis} of {ndim}-d tensors"


@contextlib.contextmanager
def calibrating(twin: nn.Module) -> Iterator[None]:
    """While active, every input/act quantizer of ``twin`` with mode ``tensor`` or
    ``channel``, ``scale_method: absmax`` and ``overflow: saturate`` records the running max
    of ``|x|`` per scale group (call sites the interceptor meets meanwhile too), quantizing
    dynamically as usual. Run calibration batches through ``twin`` inside, then call
    :func:`freeze`. Blocks before one freeze add up; a block after a freeze starts afresh."""
    started: list[Recorder] = []

    def start(quantizer: TensorQuantizer) -> None:
        if quantizer.role not in STATIC_ROLES or dynamic_reason(quantizer) is not None:
            return
        if quantizer.recorder is None:
            quantizer.static = None
            quantizer.recorder = Recorder()
        elif quantizer.recorder.active:
            return  # an enclosing block records it
        quantizer.recorder.active = True
        started.append(quantizer.recorder)

    hooks = []
    for interceptor in _interceptors(twin):
        hooks.append((interceptor, interceptor.__dict__.get("calibration")))
        interceptor.calibration = start
    try:
        for quantizer in quantizers(twin):
            start(quantizer)
        yield
    finally:
        for recorder in started:
            recorder.active = False
        for interceptor, previous in hooks:
            if previous is None:
                interceptor.__dict__.pop("calibration", None)
            else:
                interceptor.calibration = previous


def freeze(twin: nn.Module) -> dict[str, list[dict[str, Any]]]:
    """Give every quantizer that recorded in :func:`calibrating` static scales (see the module
    docstring), and report every input/act quantizer of ``twin``::

        {"static": [{"name", "role", "groups"}], "dynamic": [{"name", "role", "reason"}]}

    ``name`` is the layer (or call site) name, ``groups`` the number of static scales (1 for
    mode tensor, the channel count for mode channel). Quantizers already static from an earlier
    freeze stay so and are listed as static."""
    report: dict[str, list[dict[str, Any]]] = {"static": [], "dynamic": []}
    for quantizer in quantizers(twin):
        if quantizer.role not in STATIC_ROLES:
            continue
        entry = {"name": quantizer.layer, "role": quantizer.role}
        recorder = quantizer.recorder
        reason = dynamic_reason(quantizer)
        if reason is None and recorder is not None:
            quantizer.recorder = None
            if recorder.problem is not None:
                reason = recorder.problem
            elif recorder.calls == 0 or recorder.amax is None:
                reason = "never called during calibration"
            else:
                quantizer.static = StaticScales(quantizer.spec, recorder.amax, recorder.layout)
        elif reason is None and quantizer.static is None:
            reason = "never called during calibration"
        if reason is not None:
            quantizer.static = None
            report["dynamic"].append({**entry, "reason": reason})
        else:
            report["static"].append({**entry, "groups": quantizer.static.groups})
    return report


def release(twin: nn.Module) -> None:
    """Back to dynamic scales: drop every static scale and recording of ``twin``."""
    for quantizer in quantizers(twin):
        quantizer.static = None
        quantizer.recorder = None


class StaticScales:
    """The calibrated amax of one quantizer and the quantization it implies (see the module
    docstring for how it stays bit-exact to the format). Its identity is part of the sharing
    tags (:mod:`qbench_ops.quantizer`)."""

    def __init__(
        self, spec: QuantSpec, amax: torch.Tensor, layout: tuple[int, int, int] | None
    ) -> None:
        self.mode = spec.scaling.mode
        self.amax = amax.detach().to(torch.float32).clone()
        self.layout = layout if self.mode == "channel" else None
        # the spec the format sees: tensor mode on a flat view; channel mode on a
        # (outer, channels, inner) view, channels on axis 1
        scaling = spec.scaling
        if self.mode == "channel":
            scaling = dataclasses.replace(scaling, axis=1)
        self.kernel_spec = dataclasses.replace(spec, scaling=scaling)
        self._on: dict[torch.device, torch.Tensor] = {}

    @property
    def groups(self) -> int:
        return int(self.amax.numel())

    def __getstate__(self) -> dict[str, Any]:  # deepcopy/pickle: device copies rebuild
        return {**self.__dict__, "_on": {}}

    def _amax_on(self, device: torch.device) -> torch.Tensor:
        amax = self._on.get(device)
        if amax is None:
            amax = self._on[device] = self.amax.to(device)
        return amax

    def quantize(
        self,
        quantizer: TensorQuantizer,
        x: torch.Tensor,
        spec: QuantSpec,
        *,
        return_codes: bool = False,
    ) -> Any:
        """``x`` quantized with the static scales: a tensor, or with ``return_codes`` a
        :class:`QuantResult` shaped like ``x`` (``spec``: the quantizer's spec for ``x``)."""
        fmt = quantizer.format
        if x.numel() == 0:
            return fmt.quantize(x, spec, return_codes=return_codes)
        # view x in memory order, so that the flat / (outer, C, inner) views need no copy
        # and the result keeps x's layout (a channels-last activation stays so)
        perm = sorted(range(x.dim()), key=lambda d: -x.stride(d))
        inverse = [perm.index(d) for d in range(x.dim())]
        xp = x.detach().permute(perm)
        amax = self._amax_on(x.device)
        with torch.no_grad():
            if self.mode == "tensor":
                n = xp.numel()
                body_shape, cut = (n,), (0, n)
                augmented = torch.empty(n + 1, dtype=torch.float32, device=x.device)
                flat = xp.reshape(n)
                torch.copysign(torch.clamp(flat, -amax, amax), flat, out=augmented[:n])
                augmented[n:] = amax
            else:
                axis = self._check(quantizer, x, spec)
                p = perm.index(axis)
                channels = x.shape[axis]
                outer = math.prod(xp.shape[:p])
                inner = math.prod(xp.shape[p + 1 :])
                grouped = amax.view(1, channels, 1)
                along = 0 if inner <= outer else 2  # the smaller extra slice
                shape = [outer, channels, inner]
                body_shape, cut = tuple(shape), (along, shape[along])
                shape[along] += 1
                augmented = torch.empty(shape, dtype=torch.float32, device=x.device)
                body = augmented.narrow(along, 0, cut[1])
                x3 = xp.reshape(body_shape)
                torch.copysign(torch.clamp(x3, -grouped, grouped), x3, out=body)
                extra = augmented.narrow(along, cut[1], 1)
                extra.copy_(grouped.expand_as(extra))
            out = fmt.quantize(augmented, self.kernel_spec, return_codes=return_codes)

        def back(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
            t = t.narrow(cut[0], 0, cut[1]) if self.mode == "channel" else t[: cut[1]]
            t = t.reshape(xp.shape).permute(inverse)
            return t if dtype is None else t.to(dtype)

        if not return_codes:
            return back(out, x.dtype)
        if self.mode == "tensor":
            expand: Any = _identity
        else:
            view = [1] * x.dim()
            view[axis] = x.shape[axis]
            expand = _Reshape(tuple(view))
        return QuantResult(
            dequantized=back(out.dequantized, x.dtype),
            codes=back(out.codes),
            scales=out.scales,
            spec=spec,
            scale_parts=out.scale_parts,
            expand=expand,
        )

    def _check(self, quantizer: TensorQuantizer, x: torch.Tensor, spec: QuantSpec) -> int:
        """The channel axis of ``x``; a layout other than the calibrated one is refused."""
        layout = _channel_layout(x, spec)
        if isinstance(layout, str) or layout != self.layout:
            seen = layout if isinstance(layout, str) else _describe(layout)
            calibrated = _describe(self.layout) if self.layout is not None else "?"
            raise QBenchError(
                f"{quantizer.layer} ({quantizer.role}): static scales were calibrated for "
                f"{calibrated}; found {seen} (shape {tuple(x.shape)}); allowed: tensors laid "
                "out as the calibration batches"
            )
        return layout[1]


def _identity(scales: torch.Tensor) -> torch.Tensor:
    return scales


class _Reshape:
    """``expand`` of a static channel result: the (C,) scales viewed against x's shape."""

    def __init__(self, view: tuple[int, ...]) -> None:
        self.view = view

    def __call__(self, scales: torch.Tensor) -> torch.Tensor:
        return scales.reshape(self.view)


class Calibration:
    """The op behind ``calibration: {batches: N}``: the runner runs each twin on N batches
    inside :meth:`calibrating`, then calls :meth:`freeze` before evaluating. Never swapped
    for a module."""

    name = "calibration"
    module_types: tuple[type, ...] = ()
    roles: tuple[str, ...] = ()

    @classmethod
    def from_module(cls, module: Any, specs: Any, *, name: str) -> Any:
        raise QBenchError(f"{name}: calibration acts on a whole twin, not a module")

    @classmethod
    def calibrating(cls, twin: Any) -> Any:
        """:func:`calibrating` of ``twin``."""
        return calibrating(twin)

    @classmethod
    def freeze(cls, twin: Any) -> dict[str, Any]:
        """:func:`freeze` of ``twin``."""
        return freeze(twin)
