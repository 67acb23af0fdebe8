"""The fast twin: element rounding in float32 bit arithmetic, traceable by torch.compile.

Only elementwise torch ops on float32/int32 with Python-constant format facts, so inductor
fuses a whole fake-quantization (scale, divide, round, multiply back) into one loop. Must
match :mod:`qbench_formats.reference` bit for bit; ``qbench-formats/tests/test_formats_golden.py``
checks it on every code point, every tie and its float32 neighbours, and
``test_formats_paths.py`` on awkward tensors in every scaling mode.

How a float is rounded: read the binade e of |x| from its exponent bits, clamp it to the
format's smallest normal exponent (below it the grid spacing is the subnormal spacing), and
with quantum = 2^(e - mantissa_bits), ``|x| / quantum`` is exact and lies in [0, 2^(m+1));
rounding that to an integer in float32 is exact, and so is multiplying back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .bits import F32_BIAS, F32_FRACTION_BITS, pow2_f32


class RunTimeNumbers:
    """A frozen dataclass whose fields named in ``NUMBERS`` are numbers a compiled kernel
    reads at run time (:func:`qbench.kernels.fused`'s ``numbers``) rather than having them
    baked in: the kernel is keyed on :meth:`without_numbers` (what decides its code), and
    rebuilds the object inside it from the numbers (:meth:`with_numbers`), where they are
    0-dim tensors. Code reading such an object must compute the same bits from Python
    numbers and from 0-dim tensors: no Python branch on a number (a field of the structure
    decides instead), and powers of two through :func:`pow2`."""

    NUMBERS: ClassVar[tuple[str, ...]] = ()

    def numbers(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.NUMBERS)

    def without_numbers(self) -> Any:
        return dataclasses.replace(self, **dict.fromkeys(self.NUMBERS))  # type: ignore[type-var]

    def with_numbers(self, values: tuple[Any, ...]) -> Any:
        return dataclasses.replace(self, **dict(zip(self.NUMBERS, values)))  # type: ignore[type-var]

    def structure(self, overflow: str) -> Any:
        """What a compiled kernel is keyed on for ``overflow``: :meth:`without_numbers`, with
        any other field that cannot change the kernel's results made the same."""
        return self.without_numbers()


@dataclass(frozen=True)
class Arith(RunTimeNumbers):
    """The format facts the kernels need, as plain numbers.

    Built outside any compiled region (format properties are Python computations dynamo
    would otherwise trace) by the format itself (``FloatFormat.arith()``,
    ``IntFormat.arith()``; None where float32 arithmetic would not be exact); hashable. A
    compiled kernel is keyed on its structure (the family, the special values, whether there
    is a mantissa) and reads the numbers at run time, so one kernel serves fp8_e4m3,
    fp8_e5m2 and fp6_e2m3 alike (:class:`RunTimeNumbers`).
    """

    NUMBERS = (
        "max_value",
        "min_normal",
        "emax",
        "mantissa_bits",
        "emin",
        "bias",
        "max_int",
        "scale_exponent",
    )

    family: str  # "float" | "int"
    max_value: float
    min_normal: float
    emax: int
    mantissa_bits: int = 0
    emin: int = 0
    bias: int = 0
    special: str = "none"
    max_int: int = 0
    scale_exponent: int = 0
    #: no mantissa bits (powers of two: fp4_e3m0): rounded by a path of its own. Structure,
    #: derived from ``mantissa_bits`` where that is a number.
    no_mantissa: bool | None = None

    def __post_init__(self) -> None:
        if self.no_mantissa is None and isinstance(self.mantissa_bits, int):
            object.__setattr__(self, "no_mantissa", self.mantissa_bits == 0)

    def structure(self, overflow: str) -> Arith:
        """Saturating, the special values play no part but fnuz's (no -0): fp8_e4m3 (fn),
        fp8_e5m2 (ieee) and fp6 (none) share a kernel."""
        stripped = self.without_numbers()
        if overflow == "saturate" and self.special != "fnuz":
            return dataclasses.replace(stripped, special="none")
        return stripped

    def numbers(self) -> tuple[Any, ...]:
        # max_int is a float32 clamp bound wherever it is used (exact: at most 2^24)
        return tuple(
            float(self.max_int) if name == "max_int" else getattr(self, name)
            for name in self.NUMBERS
        )


def pow2(exponent: Any) -> Any:
    """2.0**exponent, exactly, for an int or (inside a kernel with run-time numbers) a 0-dim
    int32 tensor (:func:`~qbench_formats.bits.pow2_f32`: [-149, 127])."""
    if isinstance(exponent, int):
        return 2.0**exponent
    return pow2_f32(exponent)


def _clamp_(t: torch.Tensor, low: Any, high: Any) -> torch.Tensor:
    """``t.clamp_(low, high)`` for bounds that are numbers or 0-dim tensors, mixed."""
    if isinstance(low, torch.Tensor) != isinstance(high, torch.Tensor):
        return t.clamp_(min=low).clamp_(max=high)
    return t.clamp_(low, high)


def divide(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """``a / b`` for float32 ``a``, correctly rounded on every device.

    On CPU float32 division is IEEE (eager and inductor's C++ alike). On CUDA it is not
    always: inductor's Triton kernels divide float32 approximately (measured: see
    benchmarks/README.md), and torch's eager kernel multiplies by the
    reciprocal of a Python-scalar divisor. A scale an ulp off moves values across rounding
    boundaries. There the quotient is formed in float64 and rounded once to float32: a
    float64 division is correctly rounded, and rounding it again gives the correctly rounded
    float32 quotient since 53 >= 2 * 24 + 2 bits. A Python-scalar divisor (a format's max,
    whose odd part is small) goes through the float64 reciprocal, an error of 2^-53 against
    quotients that are either exact or at least ~2^-32 away from a float32 rounding
    boundary; the ``gpu`` tests check both on every probe of every format.
    """
    if a.device.type != "cuda":
        return a / b
    return wide_quotient(a, b)


def wide_quotient(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """``a / b`` formed in float64 and rounded once to ``a``'s float32 (see :func:`divide`)."""
    wide = b.to(torch.float64) if isinstance(b, torch.Tensor) else b
    return (a.to(torch.float64) / wide).to(a.dtype)


def copysign(magnitude: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """``magnitude`` with the sign bit of ``sign`` (float32; in place where eager).

    Compiled, on the bits: inductor's C++ backend calls Sleef's copysign out of line once per
    vector (spilling every live vector register around the call) where two ANDs and an OR
    do (measured: see benchmarks/README.md). The same bits, NaN included."""
    if not torch.compiler.is_compiling():
        return magnitude.copysign_(sign)
    bits = magnitude.view(torch.int32) & 0x7FFFFFFF
    return (bits | (sign.view(torch.int32) & _SIGN_BIT)).view(torch.float32)


#: the float32 sign bit as an int32 (0x80000000)
_SIGN_BIT = -(1 << 31)


def pow2_reciprocal(scale: torch.Tensor) -> torch.Tensor:
    """``1 / scale`` for float32 powers of two 2^k, k in [-127, 127] (E8M0's range), or NaN,
    from the exponent field: 2^-k exactly (2^-127 a subnormal), NaN for NaN.

    ``x * pow2_reciprocal(s)`` gives the same bits as ``x / s``: both are the correctly
    rounded float32 of the one real number x * 2^-k (an overflow or a subnormal result
    included), and no division by a vector is left in the element loop."""
    field = (scale.view(torch.int32) >> F32_FRACTION_BITS) & 0xFF
    bits = (2 * F32_BIAS - field) << F32_FRACTION_BITS  # 2^(127 - (field - 127))
    bits = torch.where(field == 2 * F32_BIAS, 1 << (F32_FRACTION_BITS - 1), bits)  # 2^-127
    return torch.where(field == 0xFF, _QUIET_NAN, bits).view(torch.float32)


#: float32 quiet NaN bits (what ``float("nan")`` stores)
_QUIET_NAN = 0x7FC00000


def e8m0_scale(amax: torch.Tensor, emax: int) -> torch.Tensor:
    """OCP MX v1.0 §6.3's shared scale from the groups' amax, for an element ``emax`` >= 0:
    2^clamp(floor(log2(amax)) - emax, -127, 127), 2^-127 for amax 0, NaN for inf/NaN.

    The scale's exponent field is amax's field minus emax, clamped to [0, 254], with field 0
    standing for 2^-127 (a subnormal): a subnormal amax (field 0) has floor(log2) <= -127, so
    with emax >= 0 it clamps to -127 like amax 0. About ten integer ops where the general
    form (:func:`~qbench_formats.bits.floor_log2_f32`, :func:`~qbench_formats.bits.pow2_f32`)
    takes thirty, enough for inductor to keep the scale inside the block's loop instead of
    storing it and reading every block of x twice (measured: see benchmarks/README.md)."""
    assert not isinstance(emax, int) or emax >= 0, emax
    field = (amax.view(torch.int32) >> F32_FRACTION_BITS) & 0xFF
    scale_field = torch.clamp(field - emax, 0, 2 * F32_BIAS)
    bits = torch.where(
        scale_field == 0, 1 << (F32_FRACTION_BITS - 1), scale_field << F32_FRACTION_BITS
    )
    return torch.where(field == 0xFF, _QUIET_NAN, bits).view(torch.float32)


def _round_magnitude_(
    scaled: torch.Tensor, rounding: str, noise: torch.Tensor | None
) -> torch.Tensor:
    """Round non-negative float32 ``scaled`` to an integer in place (exact below 2^24)."""
    if rounding == "nearest_even":
        return scaled.round_()  # rint: ties to even, exact
    if rounding == "toward_zero":
        return scaled.trunc_()
    lower = torch.floor(scaled)
    frac = scaled - lower  # exact (Sterbenz)
    if rounding == "nearest_away":
        # Not floor(x + 0.5): that sum can round up in float32 just below a tie.
        return lower.add_((frac >= 0.5).to(scaled.dtype))
    assert noise is not None
    return lower.add_((noise < frac).to(scaled.dtype))


# The arithmetic below works in place on buffers it allocated itself: eager fake
# quantization of a large tensor is bound by memory traffic and page faults, and every
# avoided temporary is one pass fewer. Inductor functionalizes the same code when compiling.


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
    no_mantissa: bool | None = None,
    min_normal: Any = None,
) -> torch.Tensor:
    """Round float32 ``v`` onto a binary float grid (see module docstring); new tensor.
    ``no_mantissa``: whether ``mantissa_bits`` is 0 (derived from it where it is an int; a
    kernel with run-time numbers says). ``min_normal``: 2^emin, where the caller has it."""
    if no_mantissa is None:
        no_mantissa = mantissa_bits == 0
    a = v.abs()
    if overflow == "saturate":
        a.clamp_(max=max_value)  # max is on the grid, rounding is monotone
    if no_mantissa and rounding == "nearest_even" and overflow == "saturate":
        if min_normal is None:
            min_normal = pow2(emin)
        return _round_no_mantissa_even(a, v, min_normal=min_normal, bias=bias, special=special)
    # quantum = 2^(e - m), the grid spacing at |v|, built from the exponent field of |v|
    # with e clamped to the format's normal range below. The upper clamp (2^126) keeps both
    # quantum and 1/quantum normal floats: |v| that high (>= 2^(126 + m)) is beyond every
    # supported format's max, still rounds past max and so meets the overflow rule below.
    # inf stays inf, NaN stays NaN.
    quantum_bits = a.view(torch.int32).bitwise_and(0x7F800000)
    if not no_mantissa:
        quantum_bits.sub_(mantissa_bits << F32_FRACTION_BITS)
    low = (emin - mantissa_bits + F32_BIAS) << F32_FRACTION_BITS
    _clamp_(quantum_bits, low, (126 + F32_BIAS) << F32_FRACTION_BITS)
    if no_mantissa and rounding == "nearest_even":
        # Ties to the even *code*: with no mantissa the code is the exponent field, so a tie
        # 1.5 * 2^e goes to 2^e when e + bias is even (fp4_e3m0: 3 -> 2, 6 -> 8).
        field_lsb = 1 << F32_FRACTION_BITS  # (e + bias) even <=> (field + bias - 127) even
        odd_offset = ((bias - F32_BIAS) & 1) << F32_FRACTION_BITS
        even_field = ((quantum_bits + odd_offset) & field_lsb) == 0
    # 2^-k has exponent field 254 - field(2^k): multiplying by it is exact, and cheaper
    # than dividing by 2^k.
    inverse_quantum = ((2 * F32_BIAS) << F32_FRACTION_BITS) - quantum_bits
    quantum = quantum_bits.view(torch.float32)
    a.mul_(inverse_quantum.view(torch.float32))  # exact: scaling by a power of two
    if no_mantissa and rounding == "nearest_even":
        # rint(1.5) = 2; subtracting 1 at the ties that keep the lower code gives 1.
        keep_lower = ((a == 1.5) & even_field).to(torch.float32)
        a = torch.round(a) - keep_lower
    else:
        a = _round_magnitude_(a, rounding, noise)
    a.mul_(quantum)
    if overflow != "saturate":
        too_big = a > max_value
        if special == "none" or rounding == "toward_zero":
            finite_input = torch.isfinite(v)
            a.masked_fill_(too_big.logical_and_(finite_input), max_value)
            if special == "none":
                a.masked_fill_(torch.isinf(v), max_value)
            elif special != "ieee":
                a.masked_fill_(torch.isinf(v), float("nan"))
        else:
            a.masked_fill_(too_big, float("inf") if special == "ieee" else float("nan"))
    a = copysign(a, v)
    if special == "fnuz":
        a.add_(0.0)  # no negative zero in fnuz formats
    return a


def _round_no_mantissa_even(
    a: torch.Tensor, v: torch.Tensor, *, min_normal: Any, bias: int, special: str
) -> torch.Tensor:
    """Powers of two (no mantissa), ties to the even exponent *field*, on the bits.

    For |v| >= 2^emin: add half a binade minus one ulp, plus one more when the lower
    value's code field (e + bias) is odd, then clear the fraction bits -- the IEEE
    round-to-nearest-even bit trick with "even" meaning the format's field. Below 2^emin
    the only neighbours are 0 and 2^emin (tie to 0, code 0). Same bits as the general path
    (tested); written this way because the general path's tie mask made inductor spill a
    buffer inside the fused chunk loop (measured: see benchmarks/README.md).
    """
    bits = a.view(torch.int32)
    odd_lower = ((bits >> F32_FRACTION_BITS) + ((bias - F32_BIAS) & 1)) & 1
    rounded = ((bits + (0x3FFFFF + odd_lower)) & 0x7F800000).view(torch.float32)
    small = torch.round(a * (1.0 / min_normal)) * min_normal  # 1 / 2^emin: exact
    out = torch.where(a < min_normal, small, rounded)
    out = torch.where(torch.isnan(a), a, out)
    out = copysign(out, v)
    if special == "fnuz":
        out = out + 0.0
    return out


def round_int(
    v: torch.Tensor,
    *,
    max_int: int,
    scale_exponent: int,
    rounding: str,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round float32 ``v`` onto k * 2^scale_exponent, |k| <= max_int (always saturating).
    A run-time ``scale_exponent`` (a 0-dim tensor) is applied even where it is 0: scaling by
    2^0 is exact."""
    scaled = not isinstance(scale_exponent, int) or scale_exponent != 0
    k = v * pow2(-scale_exponent) if scaled else v.clone()
    k.clamp_(-max_int, max_int)
    if rounding in ("nearest_even", "toward_zero"):
        k = _round_magnitude_(k, rounding, None)  # both are symmetric about zero
    else:
        k = copysign(_round_magnitude_(k.abs(), rounding, noise), k)
    if scaled:
        k.mul_(pow2(scale_exponent))
    return k.add_(0.0)  # no -0 code in two's complement


def round_values(
    arith: Arith,
    v: torch.Tensor,
    rounding: str,
    overflow: str,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Round float32 ``v`` onto the grid described by ``arith`` (a new tensor)."""
    cast = None if noise is not None else cast_dtype(arith, rounding, overflow)
    if cast is not None:
        return widen_float8(round_by_cast(arith, v, cast), torch.empty_like(v))
    if arith.family == "float":
        return round_float(
            v,
            mantissa_bits=arith.mantissa_bits,
            emin=arith.emin,
            bias=arith.bias,
            max_value=arith.max_value,
            special=arith.special,
            rounding=rounding,
            overflow=overflow,
            noise=noise,
            no_mantissa=arith.no_mantissa,
            min_normal=arith.min_normal,
        )
    return round_int(
        v,
        max_int=arith.max_int,
        scale_exponent=arith.scale_exponent,
        rounding=rounding,
        noise=noise,
    )


#: torch's float8 dtypes whose float32 cast rounds to nearest even onto a float grid, by
#: (mantissa bits, emin, largest finite value); the fnuz dtypes are left out (no -0).
_CAST_GRIDS = {
    name: grid
    for name, grid in (("float8_e4m3fn", (3, -6, 448.0)), ("float8_e5m2", (2, -14, 57344.0)))
    if hasattr(torch, name)
}


def cast_dtype(arith: Arith | None, rounding: str, overflow: str) -> torch.dtype | None:
    """The float8 dtype whose cast rounds like :func:`round_float` on ``arith``'s grid, run
    eagerly: round to nearest even with saturation, onto a grid with the dtype's mantissa
    bits and smallest normal exponent and a largest value the dtype holds. None otherwise
    (and always inside a compiled region: the bit arithmetic fuses, a cast would not).

    The clamp to ±max first keeps every value the cast sees within the shared part of the
    two grids (max is on both, rounding is monotone), NaN stays NaN and -0 stays -0, so the
    bits are :func:`round_float`'s; eagerly it is three passes instead of a dozen
    (benchmarks/README.md). ``test_formats_golden.py`` checks it on every code point, tie and
    neighbour."""
    if arith is None or arith.family != "float" or arith.special == "fnuz":
        return None
    if rounding != "nearest_even" or overflow != "saturate" or torch.compiler.is_compiling():
        return None
    for name, (mantissa_bits, emin, largest) in _CAST_GRIDS.items():
        same_grid = arith.mantissa_bits == mantissa_bits and arith.emin == emin
        if same_grid and arith.max_value <= largest:
            return getattr(torch, name)
    return None


def round_by_cast(
    arith: Arith, v: torch.Tensor, dtype: torch.dtype, *, in_place: bool = False
) -> torch.Tensor:
    """``v`` rounded onto ``arith``'s grid as a ``dtype`` tensor (:func:`cast_dtype`);
    ``in_place``: ``v`` is a scratch buffer the clamp may overwrite."""
    if in_place:
        return v.clamp_(-arith.max_value, arith.max_value).to(dtype)
    return torch.clamp(v, -arith.max_value, arith.max_value).to(dtype)


def widen_float8(rounded: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The float32 values of a float8_e4m3fn or float8_e5m2 tensor, written into ``out``.

    torch's own float8 -> float32 conversion runs a scalar loop on the CPU (measured ~8x the
    time of the cast the other way); float16 -> float32 is vectorized. So the bits go through
    float16: e5m2 is float16's top byte; e4m3's magnitude bits shifted into float16's
    exponent and fraction fields give the value times 2^-8 (a subnormal e4m3 lands on a
    float16 subnormal, exactly), the sign is float16's bit 15 (the sign-extended int8 puts
    it there, along with a bit 14 that is cleared), and e4m3's NaN pattern (magnitude 0x7F)
    is set to NaN. Every code of both dtypes is checked against torch's conversion."""
    wide = rounded.view(torch.int8).to(torch.int16)
    if rounded.dtype == torch.float8_e5m2:
        wide <<= 8
        return out.copy_(wide.view(torch.float16))
    wide <<= 7
    wide &= ~0x4000
    out.copy_(wide.view(torch.float16)).mul_(256.0)
    nan = rounded.view(torch.uint8) & 0x7F
    if int(nan.amax()) == 0x7F:
        out.masked_fill_(nan == 0x7F, math.nan)
    return out


# --------------------------------------------------------------------------------------
# Codes from float32 bit fields (values already on the grid)
# --------------------------------------------------------------------------------------


def encode_grid_bits(fmt: Any, values: torch.Tensor) -> torch.Tensor:
    """int32 codes of float32 values on ``fmt``'s grid (a format whose ``encodes_from_bits()``
    is true: every value a float32 normal or zero): sign, exponent field and mantissa from
    the float32 bits; target subnormals as an exact multiple of the subnormal quantum.

    Run eagerly, an fp8 format whose codes are the bit patterns of one of torch's float8
    dtypes (:func:`float8_dtype`) is encoded by that cast instead: three passes rather than
    about twenty (measured: see benchmarks/README.md).
    Compiled, the bit fields stay: they fuse into the quantize loop, the cast would not
    vectorize there."""
    if not torch.compiler.is_compiling():
        dtype = float8_dtype(fmt)
        if dtype is not None:
            return _encode_by_cast(fmt, values, dtype)
    return encode_bit_fields(fmt, values)


#: torch's 8-bit float dtypes an fp8 format's codes may coincide with (absent ones skipped)
_FLOAT8_NAMES = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
_FLOAT8: dict[int, tuple[Any, torch.dtype | None]] = {}


def float8_dtype(fmt: Any) -> torch.dtype | None:
    """The torch float8 dtype whose cast gives ``fmt``'s codes (its bit patterns, with the
    format's one NaN code for every NaN), or None. Decided once per format by encoding all
    256 of its decoded values both ways: a third-party format with an fp8-like grid but
    other codes (another bias, its own NaN) keeps the bit-field encoder."""
    return _per_format(_FLOAT8, fmt, _matching_float8)


def _per_format(memo: dict[int, tuple[Any, Any]], fmt: Any, build: Any) -> Any:
    """``build(fmt)``, once per format object: kept by ``id`` with the object itself (a
    format need not be hashable; a new object at a reused id is built anew)."""
    entry = memo.get(id(fmt))
    if entry is None or entry[0] is not fmt:
        entry = memo[id(fmt)] = (fmt, build(fmt))
    return entry[1]


def _matching_float8(fmt: Any) -> torch.dtype | None:
    encodes_from_bits = getattr(fmt, "encodes_from_bits", None)
    if getattr(fmt, "bits", None) != 8 or not callable(encodes_from_bits):
        return None
    if not encodes_from_bits():
        return None
    values = fmt.decode(torch.arange(256, dtype=torch.int32)).to(torch.float32)
    values = torch.cat([values, torch.tensor([0.0, -0.0, math.nan, -math.nan])])
    if fmt.has_inf:
        values = torch.cat([values, torch.tensor([math.inf, -math.inf])])
    want = encode_bit_fields(fmt, values)
    for name in _FLOAT8_NAMES:
        dtype = getattr(torch, name, None)
        if dtype is not None and torch.equal(_encode_by_cast(fmt, values, dtype), want):
            return dtype
    return None


def _encode_by_cast(fmt: Any, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    codes = values.to(dtype).view(torch.uint8).to(torch.int32)
    if fmt.has_nan:  # a cast keeps NaN's sign bit; the format has one NaN code
        codes = torch.where(torch.isnan(values), fmt.nan_code, codes)
    return codes


@dataclass(frozen=True)
class Encoding(RunTimeNumbers):
    """How :func:`encode_bit_fields` turns a float32 value on a format's grid into its code:
    numbers derived from the format's fields once (a compiled kernel reads them at run time,
    :class:`RunTimeNumbers`), and which special values it has."""

    NUMBERS = (
        "shift",
        "rebias",
        "min_normal_bits",
        "subnormal_scale",
        "inf_code",
        "sign_code",
        "nan_code",
    )

    #: 23 - m: a float32 magnitude's bits shifted right by it are (its exponent field << m)
    #: | its top m fraction bits
    shift: int
    #: (bias - 127) << m: added to those, the float32 exponent field becomes the format's
    rebias: int
    #: the bits of 2^emin: a smaller magnitude is a subnormal of the format
    min_normal_bits: int
    #: 2^(m - emin): a subnormal value times it is its code (exact)
    subnormal_scale: float
    inf_code: int  # the exponent field all ones, mantissa 0
    sign_code: int  # the sign bit: 1 << (exponent bits + m)
    nan_code: int
    has_inf: bool
    has_negative_zero: bool

    def structure(self, overflow: str) -> Encoding:
        """Every format with a -0 (all but fnuz) takes the ±inf branch: values on a grid
        without infinities are never inf, so it changes no code, and fp8_e4m3 and fp8_e5m2
        share a kernel at the cost of one compare and select an element."""
        stripped = self.without_numbers()
        return dataclasses.replace(stripped, has_inf=True) if self.has_negative_zero else stripped

    @classmethod
    def of(cls, fmt: Any) -> Encoding:
        m = int(fmt.mantissa_bits)
        return cls(
            shift=F32_FRACTION_BITS - m,
            rebias=(int(fmt.bias) - F32_BIAS) << m,
            min_normal_bits=(int(fmt.emin) + F32_BIAS) << F32_FRACTION_BITS,
            subnormal_scale=2.0 ** (m - int(fmt.emin)),
            inf_code=int(fmt.exponent_all_ones) << m,
            sign_code=1 << (int(fmt.exponent_bits) + m),
            nan_code=int(fmt.nan_code),
            has_inf=bool(fmt.has_inf),
            has_negative_zero=bool(fmt.has_negative_zero),
        )


def encoding(fmt: Any) -> Encoding:
    """``fmt``'s :class:`Encoding` (``fmt`` itself if it is one), built once per format."""
    if isinstance(fmt, Encoding):
        return fmt
    return _per_format(_ENCODINGS, fmt, Encoding.of)


_ENCODINGS: dict[int, tuple[Any, Encoding]] = {}

#: float32 +inf's bits: a larger magnitude is a NaN
_F32_INF_BITS = 0x7F800000


def encode_bit_fields(fmt: Any, values: torch.Tensor) -> torch.Tensor:
    """:func:`encode_grid_bits` from the float32 bit fields, for every format it serves
    (``fmt``: the format, or its :class:`Encoding`): integer ops on the bits throughout, the
    subnormals as an exact multiple of the subnormal quantum."""
    enc = encoding(fmt)
    bits = values.view(torch.int32)  # same size: any strides, and the result keeps them
    magnitude = bits & 0x7FFFFFFF
    normal_code = (magnitude >> enc.shift) + enc.rebias
    # below min_normal the value is k * 2^(emin - m), k < 2^m, exact in float32
    subnormal_code = (values.abs() * enc.subnormal_scale).to(torch.int32)
    code = torch.where(magnitude >= enc.min_normal_bits, normal_code, subnormal_code)
    if enc.has_inf:
        code = torch.where(magnitude == _F32_INF_BITS, enc.inf_code, code)
    negative = bits < 0
    if not enc.has_negative_zero:
        negative = negative & (magnitude != 0)
    code = torch.where(negative, code | enc.sign_code, code)
    return torch.where(magnitude > _F32_INF_BITS, enc.nan_code, code)
