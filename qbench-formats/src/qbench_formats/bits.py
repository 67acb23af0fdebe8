"""Bit-level facts: the constants of codes and encodings, and exact powers of two and binary
exponents built from IEEE-754 bit fields.

This module imports nothing of qbench-formats: the twins (:mod:`.reference`, :mod:`.fused`),
the quantizer and the families all build on it (imports run one way, see
``tests/test_import_graph.py``).

Why bit fields: ``torch.log2`` rounds (a float32 a few ulps below 2^k gives exactly k), and
``torch.exp2``/``pow`` are libm calls whose exactness is not promised everywhere. Building
the bits of 2^e directly, and reading the exponent field of a float, is exact by
construction and traceable by ``torch.compile``.
"""

from __future__ import annotations

import torch

#: Code returned by ``encode`` for NaN in a format that has no NaN encoding (fp4, int, lookup
#: tables, formats that round themselves): ``decode(-1)`` is NaN, so ``decode(codes) * scales``
#: still reproduces a dequantized NaN and an audit sees it.
NAN_CODE_NONE = -1

#: Inf/NaN encodings of the float family (the names follow ml_dtypes' float8 types).
#: ieee: all-ones exponent field is inf (mantissa 0) or NaN; "fn" (finite): no inf, NaN only
#: where every exponent and mantissa bit is one (S.1111.111); "fnuz": no inf, no negative
#: zero, NaN is the code of -0 (0x80); "none": every code is a finite number.
SPECIALS = ("ieee", "fn", "fnuz", "none")

#: Formats with more codes than this cannot list ``values()`` (fp32 has 2^32).
MAX_ENUMERABLE_BITS = 16

# IEEE 754-2019 binary32: 8 exponent bits, bias 127, 23 fraction bits.
F32_BIAS = 127
F32_FRACTION_BITS = 23
F32_MIN_NORMAL_EXP = -126
# binary64: 11 exponent bits, bias 1023, 52 fraction bits.
F64_BIAS = 1023
F64_FRACTION_BITS = 52

#: Scaling a float32 subnormal by 2^64 makes it normal without rounding (the smallest,
#: 2^-149, becomes 2^-85), so its exponent can be read from the bit field.
_SUBNORMAL_LIFT = 64


def pow2_f32(exponent: torch.Tensor) -> torch.Tensor:
    """2.0**exponent as float32, for integer exponents in [-149, 127], exactly.

    Exponents down to -126 are normal numbers built from the exponent field; -127...-149 are
    subnormals built from a single fraction bit (OCP MX scales reach 2^-127).
    """
    exponent = exponent.to(torch.int32)
    normal = ((exponent.clamp(min=F32_MIN_NORMAL_EXP) + F32_BIAS) << F32_FRACTION_BITS).view(
        torch.float32
    )
    shift = (exponent - (F32_MIN_NORMAL_EXP - F32_FRACTION_BITS)).clamp(0, F32_FRACTION_BITS - 1)
    subnormal = (torch.ones_like(exponent) << shift).view(torch.float32)
    return torch.where(exponent >= F32_MIN_NORMAL_EXP, normal, subnormal)


def pow2_f64(exponent: torch.Tensor) -> torch.Tensor:
    """2.0**exponent as float64 for integer exponents in [-1022, 1023], exactly."""
    exponent = exponent.to(torch.int64)
    return ((exponent + F64_BIAS) << F64_FRACTION_BITS).view(torch.float64)


def floor_log2_f32(magnitude: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) as int32 for finite float32 a > 0, read from the bits (subnormals too).

    For a == 0 the result is -127 - 64 (callers clamp); for inf/NaN it is 128.
    """
    lifted = magnitude < 2.0**F32_MIN_NORMAL_EXP
    a = torch.where(lifted, magnitude * 2.0**_SUBNORMAL_LIFT, magnitude)
    field = (a.view(torch.int32) >> F32_FRACTION_BITS) & 0xFF
    return field - F32_BIAS - torch.where(lifted, _SUBNORMAL_LIFT, 0).to(torch.int32)
