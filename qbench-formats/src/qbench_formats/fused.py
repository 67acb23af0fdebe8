"""The fast twin: element rounding in float32 bit arithmetic, traceable by torch.compile.

Only elementwise torch ops on float32/int32 with Python-constant format facts, so inductor
fuses a whole fake-quantization (scale, divide, round, multiply back) into one loop. Must
match :mod:`qbench_formats.reference` bit for bit; ``tests/test_fused.py`` checks it on every
code point, every tie and its float32 neighbours.

How a float is rounded: read the binade e of |x| from its exponent bits, clamp it to the
format's smallest normal exponent (below it the grid spacing is the subnormal spacing), and
with quantum = 2^(e - mantissa_bits), ``|x| / quantum`` is exact and lies in [0, 2^(m+1));
rounding that to an integer in float32 is exact, and so is multiplying back.
"""

from __future__ import annotations

import torch

from .bits import F32_BIAS, F32_FRACTION_BITS, F32_MIN_NORMAL_EXP


def supports(fmt: object) -> bool:
    """Whether the float32 arithmetic is exact for ``fmt`` (else use the reference)."""
    from .families import FloatFormat, IntFormat

    if isinstance(fmt, FloatFormat):
        return (
            fmt.signed
            and fmt.subnormals
            and fmt.mantissa_bits <= 22
            and fmt.emin - fmt.mantissa_bits >= F32_MIN_NORMAL_EXP
            and fmt.max_field - fmt.bias <= 126
        )
    if isinstance(fmt, IntFormat):
        return fmt.int_bits <= 24 and abs(fmt.scale_exponent) <= 100
    return False


def _round_magnitude(
    scaled: torch.Tensor, rounding: str, noise: torch.Tensor | None
) -> torch.Tensor:
    """Round non-negative float32 ``scaled`` to an integer (exact in float32 for < 2^24)."""
    if rounding == "nearest_even":
        return torch.round(scaled)  # rint: ties to even, exact
    if rounding == "toward_zero":
        return torch.trunc(scaled)
    lower = torch.floor(scaled)
    frac = scaled - lower  # exact (Sterbenz)
    if rounding == "nearest_away":
        # Not floor(x + 0.5): that sum can round up in float32 just below a tie.
        return lower + (frac >= 0.5).to(scaled.dtype)
    assert noise is not None
    return lower + (noise < frac).to(scaled.dtype)


def round_float(
    v: torch.Tensor,
    *,
    mantissa_bits: int,
    emin: int,
    bias: int,
    max_value: float,
    special: str,
    rounding: str,
    overflow: str,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round float32 ``v`` onto a binary float grid (see module docstring)."""
    a = v.abs()
    if overflow == "saturate":
        a = torch.clamp(a, max=max_value)  # max is on the grid, rounding is monotone
    e = ((a.view(torch.int32) >> F32_FRACTION_BITS) & 0xFF) - F32_BIAS
    # Clamp above at 127 so inf/NaN (field 255) still give a finite quantum: inf stays inf.
    e = torch.clamp(e, min=emin, max=127)
    quantum = ((e - mantissa_bits + F32_BIAS) << F32_FRACTION_BITS).view(torch.float32)
    scaled = a / quantum
    r = _round_magnitude(scaled, rounding, noise)
    if mantissa_bits == 0 and rounding == "nearest_even":
        # Ties to the even *code*: with no mantissa the code is the exponent field, so a tie
        # 1.5 * 2^e goes to 2^e when e + bias is even (fp4_e3m0: 3 -> 2, 6 -> 8).
        even_field = ((e + bias) & 1) == 0
        r = torch.where((scaled == 1.5) & even_field, torch.ones_like(r), r)
    out = r * quantum
    if overflow != "saturate":
        too_big = out > max_value
        if special == "none" or rounding == "toward_zero":
            out = torch.where(too_big & torch.isfinite(a), max_value, out)
            if special == "none":
                out = torch.where(torch.isinf(a), max_value, out)
            elif special != "ieee":
                out = torch.where(torch.isinf(a), float("nan"), out)
        else:
            out = torch.where(too_big, float("inf") if special == "ieee" else float("nan"), out)
    out = torch.copysign(out, v)
    if special == "fnuz":
        out = out + 0.0  # no negative zero in fnuz formats
    return out


def round_int(
    v: torch.Tensor,
    *,
    max_int: int,
    scale_exponent: int,
    rounding: str,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round float32 ``v`` onto k * 2^scale_exponent, |k| <= max_int (always saturating)."""
    k = torch.clamp(v * 2.0**-scale_exponent, -max_int, max_int)
    r = _round_magnitude(k.abs(), rounding, noise)
    return torch.copysign(r, k) * 2.0**scale_exponent + 0.0


def round_values(
    fmt: object,
    v: torch.Tensor,
    rounding: str,
    overflow: str,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Dispatch on the family (``supports(fmt)`` must be true)."""
    from .families import FloatFormat

    if isinstance(fmt, FloatFormat):
        return round_float(
            v,
            mantissa_bits=fmt.mantissa_bits,
            emin=fmt.emin,
            bias=fmt.bias,
            max_value=fmt.max_value,
            special=fmt.special,
            rounding=rounding,
            overflow=overflow,
            noise=noise,
        )
    return round_int(
        v,
        max_int=fmt.max_int,  # type: ignore[attr-defined]
        scale_exponent=fmt.scale_exponent,  # type: ignore[attr-defined]
        rounding=rounding,
        noise=noise,
    )
