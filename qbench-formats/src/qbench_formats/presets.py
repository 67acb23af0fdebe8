"""Block-scaled presets: an element format plus the scaling that comes with it.

A preset name is accepted wherever a format name is (the API, a config's ``format:``): ``qbench.quantize(x,
"mxfp4_e2m1")`` resolves the preset's :class:`~qbench.types.Scaling` (explicit arguments
override it) and quantizes with the element format's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from qbench.types import Scaling

from .quantizer import QuantizeMethod


@dataclass(frozen=True)
class BlockPreset(QuantizeMethod):
    """``element_format`` quantized in chunks with scales in ``scaling.scale_format``.

    ``scale_bits`` is the storage of one block scale, so ``effective_bits`` counts it per
    element (MXFP4: 4 + 8/32 = 4.25; NVFP4: 4 + 8/16 = 4.5; the one fp32 per-tensor scale of
    NVFP4 is negligible and not counted, as NVIDIA quotes it).
    """

    name: str
    element_format: Any
    scaling: Scaling
    scale_bits: int
    description: str = ""
    kind: str = "preset"

    @property
    def default_scaling(self) -> Scaling:
        return self.scaling

    @property
    def element(self) -> str:
        return self.element_format.name

    @property
    def bits(self) -> int:
        return self.element_format.bits

    @property
    def effective_bits(self) -> float:
        return self.bits + self.scale_bits / float(self.scaling.chunk_size or 1)

    @property
    def max_value(self) -> float:
        return self.element_format.max_value

    @property
    def min_normal(self) -> float:
        return self.element_format.min_normal

    @property
    def min_subnormal(self) -> float:
        return self.element_format.min_subnormal

    @property
    def has_inf(self) -> bool:
        return self.element_format.has_inf

    @property
    def has_nan(self) -> bool:
        return self.element_format.has_nan

    @property
    def emax(self) -> int:
        return self.element_format.emax

    def values(self) -> torch.Tensor:
        return self.element_format.values()

    def round(
        self,
        x: torch.Tensor,
        rounding: str = "nearest_even",
        overflow: str = "saturate",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The element format's rounding (no scaling)."""
        return self.element_format.round(x, rounding, overflow, generator)

    def is_representable(self, x: torch.Tensor) -> torch.Tensor:
        return self.element_format.is_representable(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.element_format.encode(x)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.element_format.decode(codes)

    def summary(self) -> dict[str, Any]:
        row = self.element_format.summary()
        row.update(
            name=self.name,
            kind=self.kind,
            effective_bits=self.effective_bits,
            description=self.description,
        )
        return row
