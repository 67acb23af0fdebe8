"""Formats that round themselves: a new kind of grid in one small class.

The built-in families (:class:`~qbench_formats.families.FloatFormat`, ``IntFormat``,
``LutFormat``) are rounded by qbench-formats' own twins from their dataclass fields. Any other
format object — or a family subclass that overrides ``round`` — is quantized by the
*generic path* of :func:`qbench_formats.quantizer.quantize`: the scaling (tensor / channel /
chunk, every scale format, second-level scales) is QBench's, and the elements are the
format's own ``round`` applied to the scaled tensor (eagerly; nothing is compiled). Its codes
come from the format's ``encode_grid`` or ``encode`` when it has one, else they are the index
into ``values()``.

:class:`GridFormat` is the base class for such a format. A subclass gives ``name``,
``bits``, ``values()`` and ``round()``; everything else the quantizer, ``qbench formats`` and
the compliance audit read (``max_value``, ``min_normal``, ``min_subnormal``, ``emax``,
``element``, ``encode``/``decode``, ``is_representable``, ``quantize``) follows from those::

    class Log3(GridFormat):
        name, bits = "log3", 3

        def values(self):
            return torch.tensor([-4.0, -1.0, -0.25, 0.0, 0.25, 1.0, 4.0])

        def round(self, x, rounding="nearest_even", overflow="saturate", generator=None):
            ...  # onto values(), no scaling
"""

from __future__ import annotations

from typing import Any

import torch

from .bits import NAN_CODE_NONE
from .quantizer import ElementFormat
from .reference import grid_values, index_codes, index_decode

__all__ = ["GridFormat", "grid_values", "index_codes", "index_decode"]


class GridFormat(ElementFormat):
    """Base class of a format that rounds itself (see the module docstring).

    Subclasses set ``name`` and ``bits`` (class attributes or properties) and implement
    ``values()`` (every finite value, sorted ascending, ±0 once) and ``round(x, rounding,
    overflow, generator)`` (onto those values, no scaling, same shape; NaN stays NaN). They
    may override ``encode``/``decode`` (they must then agree with each other: the audit
    checks ``decode(codes) * scales == dequantized``) and ``max_value``.
    """

    name: str
    bits: int
    description: str = ""
    kind: str = "custom"
    default_scaling = None
    has_inf = False
    has_nan = False
    nan_code = NAN_CODE_NONE
    nan_description = "none"

    def values(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement values()")

    def round(
        self,
        x: torch.Tensor,
        rounding: str = "nearest_even",
        overflow: str = "saturate",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement round()")

    # --- derived facts -------------------------------------------------------------------
    @property
    def max_value(self) -> float:
        return float(grid_values(self).abs().max())

    @property
    def min_normal(self) -> float:
        """The smallest positive magnitude (a grid has no subnormals of its own)."""
        magnitudes = grid_values(self).abs()
        return float(magnitudes[magnitudes > 0].min())

    @property
    def min_subnormal(self) -> float:
        return self.min_normal

    # --- codes ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """int32 codes of ``round(x)``: the index into ``values()`` (NaN: -1)."""
        return index_codes(self, self.round(x).to(torch.float32))

    def encode_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Codes of values already on the grid: the subclass's own ``encode`` if it has one
        (a value on the grid rounds to itself), else the index into ``values()``."""
        if type(self).encode is not GridFormat.encode:
            return self.encode(values)
        return index_codes(self, values)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return index_decode(self, codes)

    def is_representable(self, x: torch.Tensor) -> torch.Tensor:
        """True where ``x`` is exactly one of ``values()``."""
        table = grid_values(self, x.device)
        flat = x.reshape(-1).to(torch.float64)
        index = torch.searchsorted(table, flat.contiguous()).clamp(0, table.numel() - 1)
        return (table[index] == flat).reshape(x.shape)

    def summary(self) -> dict[str, Any]:
        """One row of ``qbench formats``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "bits": self.bits,
            "effective_bits": self.effective_bits,
            "max": float(self.max_value),
            "min_normal": float(self.min_normal),
            "min_subnormal": float(self.min_subnormal),
            "inf": bool(self.has_inf),
            "nan": self.nan_description,
            "description": self.description,
        }
