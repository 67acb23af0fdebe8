"""The slow, obviously-correct twin: rounding and codes in float64 with explicit neighbours.

Every float32 (and every value of a format of up to 23 mantissa bits) is exact in float64,
and so are ``x / 2^k`` and ``floor``; each value is rounded by naming its two grid
neighbours ``lo <= |x| < hi`` and applying the rounding rule to them literally. Nothing here
is fused or clever; :mod:`qbench_formats.fused` must match it bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from .bits import NAN_CODE_NONE, pow2_f64

# Each function takes the format object for its facts only (fields and derived properties;
# ``fmt`` is a FloatFormat, IntFormat or LutFormat of :mod:`.families` as named). Which
# function rounds a format is the format's own choice (its ``round_reference`` method):
# nothing here imports the families, so imports run one way (bits <- twins <- families).


def _choose_upper(
    frac: torch.Tensor,
    lower_code_even: torch.Tensor,
    rounding: str,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Whether to take the upper neighbour, given the position between them (0 <= frac < 1)."""
    if rounding == "nearest_even":
        # IEEE 754 roundTiesToEven, applied to the *code* (ml_dtypes does the same).
        return (frac > 0.5) | ((frac == 0.5) & ~lower_code_even)
    if rounding == "nearest_away":
        return frac >= 0.5
    if rounding == "toward_zero":
        return torch.zeros_like(frac, dtype=torch.bool)
    if rounding == "stochastic":
        assert noise is not None
        # P(upper) = frac, so E[result] = lo + frac * (hi - lo) = |x|: unbiased.
        return noise.to(torch.float64) < frac
    raise ValueError(rounding)


def round_float(
    fmt: Any, xd: torch.Tensor, rounding: str, overflow: str, noise: torch.Tensor | None
) -> torch.Tensor:
    """Binary float rounding of float64 ``xd`` between its explicit neighbours; float32."""
    m = fmt.mantissa_bits
    finite = torch.isfinite(xd)
    a = torch.where(finite, xd.abs(), torch.zeros_like(xd))
    _, exponent = torch.frexp(a)  # a = f * 2^exponent with f in [0.5, 1)
    e = torch.clamp(exponent.to(torch.int64) - 1, min=fmt.emin)  # binade of a (>= emin)
    quantum = pow2_f64(e - m)  # spacing of the grid in that binade
    scaled = a / quantum  # exact: a division by a power of two
    lower_k = torch.floor(scaled)
    frac = scaled - lower_k
    lower = lower_k * quantum
    upper = (lower_k + 1) * quantum  # may be the first value of the next binade
    if m > 0:
        lower_code_even = torch.remainder(lower_k, 2) == 0
    else:
        # No mantissa bits: consecutive values differ in the exponent field, so "even code"
        # means an even exponent field (fp4_e3m0: 0.75 -> 0.5, 1.5 -> 2, 3 -> 2).
        lower_code_even = (lower_k == 0) | (torch.remainder(e + fmt.bias, 2) == 0)
    result = torch.where(_choose_upper(frac, lower_code_even, rounding, noise), upper, lower)
    if not fmt.has_zero:
        result = torch.clamp(result, min=fmt.min_normal)  # no zero below the first binade

    max_value = fmt.max_value
    too_big = result > max_value
    if overflow == "saturate" or fmt.special == "none" or rounding == "toward_zero":
        # toward_zero never rounds past the largest finite value (IEEE 754 §7.4).
        result = torch.where(too_big, max_value, result)
        inf_result = max_value if overflow == "saturate" or not fmt.has_inf else float("inf")
        if overflow == "format" and fmt.special in ("fn", "fnuz"):
            inf_result = float("nan")
    else:
        beyond = float("inf") if fmt.has_inf else float("nan")
        result = torch.where(too_big, beyond, result)
        inf_result = beyond
    result = torch.where(torch.isinf(xd), inf_result, result)
    result = torch.where(torch.isnan(xd), float("nan"), result)

    if fmt.signed:
        result = torch.copysign(result, xd)
        if not fmt.has_negative_zero:
            result = result + 0.0  # -0 + 0 = +0 under round-to-nearest: fnuz has no -0
    else:
        result = torch.where(xd < 0, float("nan"), result)  # no sign bit
        if not fmt.has_zero:
            result = torch.where(xd == 0, float("nan"), result)  # E8M0 has no zero (as ml_dtypes)
    return result.to(torch.float32)


def round_int(
    fmt: Any, xd: torch.Tensor, rounding: str, noise: torch.Tensor | None
) -> torch.Tensor:
    """Symmetric integer rounding of float64 ``xd`` (always saturating); float32."""
    unit = 2.0**fmt.scale_exponent
    k = torch.clamp(xd / unit, -fmt.max_int, fmt.max_int)  # ints have no inf: always saturate
    a = k.abs()
    lower = torch.floor(a)
    frac = a - lower
    upper_taken = _choose_upper(frac, torch.remainder(lower, 2) == 0, rounding, noise)
    magnitude = torch.where(upper_taken, lower + 1, lower)
    result = torch.copysign(magnitude, k) * unit + 0.0  # no -0 code in two's complement
    return result.to(torch.float32)


def round_lut(
    fmt: Any, xd: torch.Tensor, rounding: str, noise: torch.Tensor | None
) -> torch.Tensor:
    """Lookup-table rounding between the neighbours found by binary search (float64)."""
    table = torch.tensor(fmt.table, dtype=torch.float64, device=xd.device)
    n = table.numel()
    xc = torch.clamp(xd, table[0].item(), table[-1].item())  # saturate; NaN stays NaN
    safe = torch.where(torch.isnan(xc), torch.zeros_like(xc), xc)
    upper_index = torch.searchsorted(table, safe.contiguous()).clamp(0, n - 1)
    exact = table[upper_index] == safe
    lower_index = torch.where(exact, upper_index, (upper_index - 1).clamp(min=0))
    lower, upper = table[lower_index], table[upper_index]
    below, above = safe - lower, upper - safe
    negative = safe < 0
    if rounding == "nearest_even":
        take_upper = (above < below) | ((above == below) & (lower_index % 2 == 1))
    elif rounding == "nearest_away":
        take_upper = (above < below) | ((above == below) & ~negative)
    elif rounding == "toward_zero":
        take_upper = negative
    else:
        assert noise is not None
        gap = torch.where(upper > lower, upper - lower, torch.ones_like(upper))
        take_upper = noise.to(torch.float64) < below / gap
    take_upper = take_upper & ~exact
    result = torch.where(take_upper, upper, lower)
    result = torch.where(torch.isnan(xd), float("nan"), result)
    return result.to(torch.float32)


# --- codes -------------------------------------------------------------------------------


def _code_dtype(bits: int) -> torch.dtype:
    return torch.int32 if bits < 31 else torch.int64


def encode_float(fmt: Any, values: torch.Tensor) -> torch.Tensor:
    """Codes of values already on the grid (NaN -> the format's NaN code, or -1)."""
    m = fmt.mantissa_bits
    vd = values.to(torch.float64)
    a = vd.abs()
    finite = torch.isfinite(vd)
    a_f = torch.where(finite, a, torch.ones_like(a))
    _, exponent = torch.frexp(a_f)
    e = exponent.to(torch.int64) - 1
    normal = a_f >= fmt.min_normal
    if not fmt.subnormals:
        normal = torch.ones_like(normal)
    field = torch.where(normal, e + fmt.bias, torch.zeros_like(e))
    mantissa_exponent = torch.where(normal, e - m, torch.full_like(e, fmt.emin - m))
    significand = (a_f / pow2_f64(mantissa_exponent)).to(torch.int64)
    mantissa = torch.where(normal, significand - 2**m, significand)
    code = (field << m) | mantissa
    code = torch.where(a == 0, torch.zeros_like(code), code)
    if fmt.has_inf:
        code = torch.where(torch.isinf(vd), torch.full_like(code, fmt.exponent_all_ones << m), code)
    if fmt.signed:
        negative = torch.signbit(vd) & ~torch.isnan(vd)
        if not fmt.has_negative_zero:
            negative = negative & (a != 0)
        code = code | (negative.to(torch.int64) << (fmt.exponent_bits + m))
    code = torch.where(torch.isnan(vd), torch.full_like(code, fmt.nan_code), code)
    return code.to(_code_dtype(fmt.bits))


def decode_float(fmt: Any, codes: torch.Tensor) -> torch.Tensor:
    """float32 values of codes; -1 and codes outside the format decode to NaN."""
    m = fmt.mantissa_bits
    c = codes.to(torch.int64)
    invalid = (c < 0) | (c >= 2**fmt.bits)
    c = torch.where(invalid, torch.zeros_like(c), c)
    magnitude_bits = fmt.exponent_bits + m
    sign = (c >> magnitude_bits) & 1 if fmt.signed else torch.zeros_like(c)
    field = (c >> m) & fmt.exponent_all_ones
    mantissa = c & (2**m - 1)
    if fmt.subnormals:
        subnormal = field == 0
    else:
        subnormal = torch.zeros_like(field, dtype=torch.bool)
    exponent = torch.where(subnormal, torch.full_like(field, fmt.emin - m), field - fmt.bias - m)
    significand = torch.where(subnormal, mantissa, mantissa + 2**m)
    value = significand.to(torch.float64) * pow2_f64(exponent)
    magnitude_code = c & (2**magnitude_bits - 1)
    if fmt.special == "ieee":
        top = field == fmt.exponent_all_ones
        value = torch.where(top & (mantissa == 0), float("inf"), value)
        value = torch.where(top & (mantissa != 0), float("nan"), value)
    elif fmt.special == "fn":
        value = torch.where(magnitude_code == fmt.nan_code, float("nan"), value)
    elif fmt.special == "fnuz":
        value = torch.where(c == fmt.nan_code, float("nan"), value)
    value = torch.where(sign == 1, -value, value)
    value = torch.where(invalid, float("nan"), value)
    return value.to(torch.float32)


def encode_int(fmt: Any, values: torch.Tensor) -> torch.Tensor:
    vd = values.to(torch.float64)
    nan = torch.isnan(vd)
    k = torch.where(nan, torch.zeros_like(vd), vd / 2.0**fmt.scale_exponent).to(torch.int64)
    code = k & (2**fmt.bits - 1)
    return torch.where(nan, torch.full_like(code, NAN_CODE_NONE), code).to(torch.int32)


def decode_int(fmt: Any, codes: torch.Tensor) -> torch.Tensor:
    """The unused most negative code (-2^(bits-1)) is not a value of a symmetric grid: NaN."""
    c = codes.to(torch.int64)
    half = 2 ** (fmt.bits - 1)
    invalid = (c < 0) | (c >= 2**fmt.bits) | (c == half)
    k = torch.where(c >= half, c - 2**fmt.bits, c)
    value = k.to(torch.float64) * 2.0**fmt.scale_exponent
    return torch.where(invalid, float("nan"), value).to(torch.float32)


def encode_lut(fmt: Any, values: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(fmt.table, dtype=torch.float64, device=values.device)
    vd = values.to(torch.float64)
    nan = torch.isnan(vd)
    safe = torch.where(nan, table[0], vd)
    index = torch.searchsorted(table, safe.contiguous()).clamp(0, table.numel() - 1)
    return torch.where(nan, torch.full_like(index, NAN_CODE_NONE), index).to(torch.int32)


def decode_lut(fmt: Any, codes: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(fmt.table, dtype=torch.float32, device=codes.device)
    c = codes.to(torch.int64)
    invalid = (c < 0) | (c >= table.numel())
    value = table[torch.where(invalid, torch.zeros_like(c), c)]
    return torch.where(invalid, float("nan"), value)


# --- codes of any grid: the index into its sorted values --------------------------------


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
