"""What every QBench quantized module shares: construction from the FP32 module, its
quantization points, weight caches and the observation protocol used by
``qbench.preparation.observe``.

An op class is ``class QuantX(QuantModule, nn.X)``: the twin *is* an ``nn.X`` (``isinstance``
holds, ``extra_repr`` and every attribute carry over) and it owns the very same parameter and
buffer objects under the same names, so state_dicts load both ways.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from qbench import LayerSpecs, QuantResult
from torch import nn

from .quantizer import CachedTensor, Observer, TensorQuantizer


class QuantModule:
    """Mixin for quantized replacements of torch modules (see module docstring).

    Subclasses set ``name``, ``module_types`` and ``roles`` (the Op protocol of
    ``qbench.types``), then create their quantization points in :meth:`_qbench_setup`.
    """

    name: ClassVar[str]
    module_types: ClassVar[tuple[type, ...]]
    roles: ClassVar[tuple[str, ...]]

    qbench_layer: str
    qbench_specs: LayerSpecs

    @classmethod
    def from_module(cls, module: nn.Module, specs: LayerSpecs, *, name: str) -> nn.Module:
        """The quantized twin of ``module``, sharing its parameters and buffers (the caller,
        ``qbench.prepare``, has already deep-copied the model)."""
        reason = cls.unsupported_reason(module)
        if reason is not None:
            from qbench import QBenchError

            raise QBenchError(f"{name or '(model)'}: {cls.name} cannot quantize it: {reason}")
        twin = cls.__new__(cls)
        state = dict(module.__dict__)
        for registry in ("_parameters", "_buffers", "_modules"):
            state[registry] = dict(state[registry])  # own dicts, shared tensors
        twin.__dict__.update(state)
        twin.qbench_layer = name
        twin.qbench_specs = specs
        twin._qbench_observers: list[Observer] = []
        twin._qbench_quantizers: list[TensorQuantizer] = []
        twin._qbench_cached: list[tuple[str, str, CachedTensor]] = []  # (layer, role, cache)
        twin._qbench_setup()
        return twin

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        """Why this op cannot reproduce ``module`` (it then stays FP32), or None."""
        return None

    def _qbench_setup(self) -> None:
        """Create the quantization points (called once by :meth:`from_module`)."""

    # -- building blocks ----------------------------------------------------------------

    def _point(
        self,
        role: str,
        *,
        layer: str | None = None,
        default_axis: int | None = None,
        flatten_weight: bool = False,
    ) -> TensorQuantizer | None:
        """A quantizer for ``role`` of this layer (or of a named point inside it)."""
        spec = self.qbench_specs.get(role)
        if spec is None:
            return None
        quantizer = TensorQuantizer(
            spec,
            layer if layer is not None else self.qbench_layer,
            role,
            self._qbench_observers,
            default_axis=default_axis,
            flatten_weight=flatten_weight,
        )
        self._qbench_quantizers.append(quantizer)
        return quantizer

    def _cached(
        self,
        role: str,
        path: str,
        *,
        layer: str | None = None,
        default_axis: int | None = None,
        flatten_weight: bool = False,
    ) -> CachedTensor | None:
        """A cache for the parameter/buffer at ``path``, quantized with ``role``'s spec."""
        quantizer = self._point(
            role, layer=layer, default_axis=default_axis, flatten_weight=flatten_weight
        )
        if quantizer is None:
            return None
        cache = CachedTensor(quantizer, path)
        self._qbench_cached.append((quantizer.layer, role, cache))
        return cache

    def _use(self, cache: CachedTensor | None, fallback: torch.Tensor | None) -> Any:
        return fallback if cache is None else cache.get(self)  # type: ignore[arg-type]

    # -- observation protocol (qbench.preparation.observe) ------------------------------

    def qbench_attach_observer(self, observer: Observer) -> None:
        """Start reporting to ``observer``: the cached weights and statistics now, once, then
        every tensor quantized in later forward passes."""
        for layer, role, cache in self._qbench_cached:
            result: QuantResult | None = cache.result(self)  # type: ignore[arg-type]
            if result is not None:
                observer.on_tensor(layer, role, result)
        self._qbench_observers.append(observer)

    def qbench_detach_observer(self, observer: Observer) -> None:
        """Stop reporting to ``observer`` (idempotent)."""
        while observer in self._qbench_observers:
            self._qbench_observers.remove(observer)

    def qbench_roles(self) -> dict[str, str]:
        """``{role: spec description}`` for the roles this layer actually quantizes."""
        return {
            role: spec.describe()
            for role in self.roles
            if (spec := self.qbench_specs.get(role)) is not None
        }

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        roles = ", ".join(f"{r}={d}" for r, d in self.qbench_roles().items())
        return f"{base}, quant=[{roles}]" if base else f"quant=[{roles}]"
