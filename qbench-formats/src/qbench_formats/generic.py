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

import math
from typing import Any

import torch

from .quantizer import QuantizeMethod

#: Code of a NaN in a grid without a NaN code (as the families' ``NAN_CODE_NONE``).
NAN_CODE_NONE = -1


def _family_round() -> Any:
    from .families import _FormatBase

    return _FormatBase.round


def uses_own_round(fmt: Any) -> bool:
    """Whether ``fmt`` is rounded by its own ``round`` (the generic path) rather than by
    qbench-formats' twins: true for every object that is not a built-in family, and for a
    family subclass that overrides ``round``."""
    from .families import _FormatBase

    if not isinstance(fmt, _FormatBase):
        return True
    return getattr(type(fmt), "round", None) is not _family_round()


def grid_values(fmt: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """``fmt.values()`` as sorted unique float64 (±0 once) on ``device``."""
    values = torch.as_tensor(fmt.values()).detach().flatten().to(torch.float64)
    return torch.unique(values).to(device)


def index_codes(fmt: Any, values: torch.Tensor) -> torch.Tensor:
    """int32 codes of on-grid ``values``: their index into ``fmt.values()``; NaN and values
    not on the grid get ``NAN_CODE_NONE`` (-1), which decodes to NaN, so an off-grid element
    shows up in the audit rather than as a neighbour's code."""
    table = grid_values(fmt, values.device)
    flat = values.reshape(-1).to(torch.float64)
    safe = torch.where(torch.isnan(flat), table[0], flat)
    index = torch.searchsorted(table, safe.contiguous()).clamp(0, table.numel() - 1)
    on_grid = (table[index] == flat) & ~torch.isnan(flat)
    codes = torch.where(on_grid, index, torch.full_like(index, NAN_CODE_NONE))
    return codes.to(torch.int32).reshape(values.shape)


def index_decode(fmt: Any, codes: torch.Tensor) -> torch.Tensor:
    """float32 values of index codes; -1 and codes past the table decode to NaN."""
    table = grid_values(fmt, codes.device).to(torch.float32)
    c = codes.to(torch.int64)
    invalid = (c < 0) | (c >= table.numel())
    value = table[torch.where(invalid, torch.zeros_like(c), c)]
    return torch.where(invalid, float("nan"), value)


def encode_on_grid(fmt: Any, values: torch.Tensor) -> torch.Tensor:
    """Codes of on-grid values for any format: its ``encode_grid``, else its ``encode``,
    else the index into ``values()``."""
    for method in ("encode_grid", "encode"):
        encode = getattr(fmt, method, None)
        if callable(encode):
            return encode(values)
    return index_codes(fmt, values)


def emax_of(fmt: Any) -> int:
    """``fmt.emax`` if it has one, else floor(log2(max_value)) (OCP MX v1.0 §6.3's emax)."""
    emax = getattr(fmt, "emax", None)
    if emax is not None:
        return int(emax)
    return math.frexp(float(fmt.max_value))[1] - 1


class GridFormat(QuantizeMethod):
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
    def element(self) -> str:
        return self.name

    @property
    def effective_bits(self) -> float:
        return float(self.bits)

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

    @property
    def emax(self) -> int:
        return math.frexp(float(self.max_value))[1] - 1

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
