"""Format families as data: binary floating point, symmetric integer, lookup table.

A named format (``fp8_e4m3``, ``int4``, ``nf4``...) is an *instance* of one of these frozen
dataclasses; every number the format can hold follows from its fields. The arithmetic lives
in two twins that the tests hold to each other and to ml_dtypes, and each family names its
own part of them as methods (``arith()``, ``round_reference()``; see
:class:`~qbench_formats.quantizer.FamilyFormat`):

* :mod:`qbench_formats.reference` — slow and obviously correct (float64, explicit
  neighbours, explicit tie rule);
* :mod:`qbench_formats.fused` — float32 bit arithmetic that ``torch.compile`` fuses.

Imports run one way: :mod:`.bits` (constants) <- the twins <- :mod:`.quantizer` <- this
module; none of them imports a family back.

Encoding conventions (the codes the compliance audit reads):

* float: ``sign << (e + m) | exponent_field << m | mantissa`` (ml_dtypes' bit layout);
* int: two's complement in ``bits`` bits (int4: -7 is 0b1001);
* lookup table: the index into the sorted table.

QBench's tensors are floats, so NaN in gives NaN out even for formats that cannot encode NaN
(fp4_e2m1, fp4_e3m0, int, lookup tables). Such a NaN has no code: ``encode`` returns
``NAN_CODE_NONE`` (-1) for it and ``decode(-1)`` is NaN, so ``decode(codes) * scales`` still
reproduces the dequantized tensor and an audit sees the illegal value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from qbench.errors import QBenchError
from qbench.types import Scaling

from . import fused, reference
from .bits import F32_MIN_NORMAL_EXP, MAX_ENUMERABLE_BITS, NAN_CODE_NONE, SPECIALS
from .quantizer import FamilyFormat, uses_own_round

__all__ = ["NAN_CODE_NONE", "SPECIALS", "FloatFormat", "IntFormat", "LutFormat"]


def _fmt_number(value: float) -> float:
    return float(value)


class _FormatBase(FamilyFormat):
    """Behaviour shared by every element format: scaling, codes, summary."""

    name: str
    bits: int
    description: str
    kind: str
    default_scaling: Scaling | None = None

    def values(self) -> torch.Tensor:
        """Every finite representable value, sorted ascending, as float32 (±0 listed once)."""
        if self.bits > MAX_ENUMERABLE_BITS:
            raise QBenchError(
                f"format {self.name!r} has 2^{self.bits} codes; values() lists formats of at most "
                f"{MAX_ENUMERABLE_BITS} bits"
            )
        codes = torch.arange(2**self.bits, dtype=torch.int64)
        decoded = self.decode(codes)
        finite = decoded[torch.isfinite(decoded)]
        return torch.unique(finite.double()).to(torch.float32)

    def is_representable(self, x: torch.Tensor) -> torch.Tensor:
        """True where ``x`` is exactly a value of this format (NaN/inf only if encodable).

        A subclass that overrides ``round`` is held to its own rounding."""
        if uses_own_round(self):
            rounded = self.round(x, "nearest_even", "format").to(torch.float32)
        else:
            rounded = self.round_reference(x.to(torch.float64), "nearest_even", "format", None)
        same = rounded == x.to(rounded.dtype)
        if self.has_nan:  # type: ignore[attr-defined]
            same = same | torch.isnan(x)
        return same

    def summary(self) -> dict[str, Any]:
        """One row of ``qbench formats``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "bits": self.bits,
            "effective_bits": self.effective_bits,
            "max": _fmt_number(self.max_value),  # type: ignore[attr-defined]
            "min_normal": _fmt_number(self.min_normal),  # type: ignore[attr-defined]
            "min_subnormal": _fmt_number(self.min_subnormal),  # type: ignore[attr-defined]
            "inf": bool(self.has_inf),  # type: ignore[attr-defined]
            "nan": self.nan_description,  # type: ignore[attr-defined]
            "description": self.description,
        }


@dataclass(frozen=True)
class FloatFormat(_FormatBase):
    """Binary floating point: ``exponent_bits``, ``mantissa_bits``, ``bias``, inf/NaN rule.

    ``subnormals=False`` makes exponent field 0 an ordinary binade and removes zero (OCP
    E8M0). ``signed=False`` drops the sign bit (E8M0).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    special: str = "ieee"
    signed: bool = True
    subnormals: bool = True
    description: str = ""
    kind: str = "float"

    def __post_init__(self) -> None:
        if self.special not in SPECIALS:
            raise QBenchError(
                f"format {self.name!r}: special {self.special!r} not one of {', '.join(SPECIALS)}"
            )
        if self.exponent_bits < 1 or self.mantissa_bits < 0:
            raise QBenchError(f"format {self.name!r}: needs >=1 exponent and >=0 mantissa bits")

    # --- derived facts ---------------------------------------------------------------
    @property
    def bits(self) -> int:  # type: ignore[override]
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def has_inf(self) -> bool:
        return self.special == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.special != "none"

    @property
    def has_negative_zero(self) -> bool:
        return self.signed and self.special != "fnuz" and self.has_zero

    @property
    def has_zero(self) -> bool:
        return self.subnormals

    @property
    def exponent_all_ones(self) -> int:
        return 2**self.exponent_bits - 1

    @property
    def max_field(self) -> int:
        """Largest exponent field holding finite numbers."""
        reserved = self.special == "ieee" or (self.special == "fn" and self.mantissa_bits == 0)
        return self.exponent_all_ones - 1 if reserved else self.exponent_all_ones

    @property
    def max_mantissa(self) -> int:
        """Largest mantissa at ``max_field`` (fn loses the all-ones mantissa to NaN)."""
        top = 2**self.mantissa_bits - 1
        if (
            self.special == "fn"
            and self.mantissa_bits > 0
            and self.max_field == self.exponent_all_ones
        ):
            return top - 1
        return top

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return (1 if self.subnormals else 0) - self.bias

    @property
    def max_value(self) -> float:
        return math.ldexp(1 + self.max_mantissa / 2**self.mantissa_bits, self.max_field - self.bias)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        if self.subnormals and self.mantissa_bits > 0:
            return math.ldexp(1.0, self.emin - self.mantissa_bits)
        return self.min_normal

    @property
    def nan_code(self) -> int:
        if self.special == "ieee":
            quiet = 1 << (self.mantissa_bits - 1) if self.mantissa_bits else 0
            return (self.exponent_all_ones << self.mantissa_bits) | quiet
        if self.special == "fn":
            return 2 ** (self.exponent_bits + self.mantissa_bits) - 1
        if self.special == "fnuz":
            return 1 << (self.bits - 1)
        return NAN_CODE_NONE

    @property
    def nan_description(self) -> str:
        if self.special == "ieee":
            return "IEEE"
        if self.special == "none":
            return "none"
        if self.special == "fnuz":
            return f"0x{self.nan_code:02x}"
        sign = "S." if self.signed else ""
        return (
            sign
            + "1" * self.exponent_bits
            + ("." + "1" * self.mantissa_bits if self.mantissa_bits else "")
        )

    # --- arithmetic --------------------------------------------------------------------
    def arith(self) -> fused.Arith | None:
        """The fast twin's constants; None where float32 arithmetic would not be exact (no
        sign bit, no subnormals, a wider mantissa or range than float32 holds exactly)."""
        exact = (
            self.signed
            and self.subnormals
            and self.mantissa_bits <= 22
            and self.emin - self.mantissa_bits >= F32_MIN_NORMAL_EXP
            and self.max_field - self.bias <= 126
        )
        if not exact:
            return None
        return fused.Arith(
            "float",
            self.max_value,
            self.min_normal,
            self.emax,
            mantissa_bits=self.mantissa_bits,
            emin=self.emin,
            bias=self.bias,
            special=self.special,
        )

    def round_reference(
        self, x: torch.Tensor, rounding: str, overflow: str, noise: torch.Tensor | None
    ) -> torch.Tensor:
        return reference.round_float(self, x.to(torch.float64), rounding, overflow, noise)

    def encodes_from_bits(self) -> bool:
        """True when every value is a float32 normal or zero, so its exponent and mantissa
        fields can be read off the float32 bits (signed, with subnormals, at most 16 bits:
        every fp8/fp6/fp4 format)."""
        return (
            self.signed
            and self.subnormals
            and self.bits <= 16
            and self.min_subnormal >= 2.0**F32_MIN_NORMAL_EXP
        )

    # --- codes ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32) of ``round(x)`` (nearest_even, saturate; NaN -> NaN code)."""
        return reference.encode_float(self, self.round(x).to(torch.float32))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """float32 values of integer codes (a code of -1 decodes to NaN)."""
        return reference.decode_float(self, codes)

    def encode_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Codes of values already on the grid (skips the rounding ``encode`` does).

        This runs for every observed tensor of an audited run, so float32 inputs of formats
        whose every value is a float32 normal (fp8/fp6/fp4) take :func:`fused.encode_grid_bits`
        (the fields read straight off the float32 bits, or for fp8, eagerly, torch's float8
        cast); anything else takes the float64 reference. All give the same codes (tested on
        every code point).
        """
        if values.dtype == torch.float32 and self.encodes_from_bits():
            return fused.encode_grid_bits(self, values)
        return reference.encode_float(self, values)


class _NoSpecialValues:
    """Integer and lookup-table grids: no inf, no NaN code, no negative zero, no subnormals
    (their smallest non-zero magnitude is both min_normal and min_subnormal)."""

    has_inf = False
    has_nan = False
    has_negative_zero = False
    nan_code = NAN_CODE_NONE
    nan_description = "none"

    @property
    def min_subnormal(self) -> float:
        return self.min_normal  # type: ignore[attr-defined]


@dataclass(frozen=True)
class IntFormat(_NoSpecialValues, _FormatBase):
    """Symmetric two's-complement integer: k * 2**scale_exponent for |k| <= 2**(bits-1) - 1.

    The most negative code (-2**(bits-1)) is unused so the grid is symmetric, as int8/int4
    weight quantization in PyTorch/Brevitas does; ``scale_exponent=-6`` gives MXINT8's element
    (OCP MX v1.0 §5.4: an 8-bit two's-complement value with an implicit 2^-6).
    """

    name: str
    int_bits: int
    scale_exponent: int = 0
    description: str = ""
    kind: str = "int"

    @property
    def bits(self) -> int:  # type: ignore[override]
        return self.int_bits

    @property
    def max_int(self) -> int:
        return 2 ** (self.int_bits - 1) - 1

    @property
    def max_value(self) -> float:
        return math.ldexp(self.max_int, self.scale_exponent)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.scale_exponent)

    def arith(self) -> fused.Arith | None:
        """The fast twin's constants (None beyond 24 bits or a scale exponent beyond 2^±100,
        where float32 arithmetic would not be exact)."""
        if self.int_bits > 24 or abs(self.scale_exponent) > 100:
            return None
        return fused.Arith(
            "int",
            self.max_value,
            self.min_normal,
            self.emax,
            max_int=self.max_int,
            scale_exponent=self.scale_exponent,
        )

    def round_reference(
        self, x: torch.Tensor, rounding: str, overflow: str, noise: torch.Tensor | None
    ) -> torch.Tensor:
        return reference.round_int(self, x.to(torch.float64), rounding, noise)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return reference.encode_int(self, self.round(x).to(torch.float32))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return reference.decode_int(self, codes)

    def encode_grid(self, values: torch.Tensor) -> torch.Tensor:
        return reference.encode_int(self, values)


@dataclass(frozen=True)
class LutFormat(_NoSpecialValues, _FormatBase):
    """A lookup table of values (e.g. NF4); the code is the index into the sorted table."""

    name: str
    table: tuple[float, ...]
    description: str = ""
    kind: str = "lut"

    def __post_init__(self) -> None:
        if list(self.table) != sorted(self.table) or len(set(self.table)) != len(self.table):
            raise QBenchError(f"format {self.name!r}: table must be strictly increasing")
        if len(self.table) & (len(self.table) - 1):
            raise QBenchError(f"format {self.name!r}: table length must be a power of two")

    @property
    def bits(self) -> int:  # type: ignore[override]
        return len(self.table).bit_length() - 1

    @property
    def max_value(self) -> float:
        return max(abs(self.table[0]), abs(self.table[-1]))

    @property
    def min_normal(self) -> float:
        return min(abs(v) for v in self.table if v != 0)

    def table_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor(self.table, dtype=torch.float32, device=device)

    def round_reference(
        self, x: torch.Tensor, rounding: str, overflow: str, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Between the neighbours found by binary search (float64); no fast twin."""
        return reference.round_lut(self, x.to(torch.float64), rounding, noise)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return reference.encode_lut(self, self.round(x).to(torch.float32))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return reference.decode_lut(self, codes)

    def encode_grid(self, values: torch.Tensor) -> torch.Tensor:
        return reference.encode_lut(self, values)
