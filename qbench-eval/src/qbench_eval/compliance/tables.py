"""Code tables and legality: which codes, values and scales a format can hold.

A format's grid (:class:`_Grid`) answers membership and nearest-value questions; a small
format's every code is decoded once into a :class:`_CodeTable` with its legality, so auditing
a tensor is a gather (or, for a plain binary float, arithmetic on its bit fields,
:class:`_BitFields`) instead of a full decode and a grid search. Scale legality follows the
scale format (:meth:`FormatTables.scale_checks`).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass
from typing import Any

import qbench
import torch
from qbench.errors import QBenchError
from qbench.kernels import ONE_LOOP, fused, int_range
from qbench.types import QuantResult

from .counting import (
    _audit_rows,
    _audit_rows_bits,
    _decode_bits,
    _mismatch,
    _nonfinite,
    _row_dims,
    _rows,
    decode_numbers,
    widened,
)

#: OCP MX v1.0 §5.4.1: E8M0 encodes 2^(e) for e in -127..127 (0xFF is NaN).
E8M0_MIN_EXPONENT = -127
E8M0_MAX_EXPONENT = 127
#: Grids of scale formats wider than this are not enumerated (fp32: finite positive suffices).
MAX_ENUMERATED_BITS = 16


class _Grid:
    """A format's finite values, sorted, for membership tests and nearest-value lookups."""

    def __init__(self, fmt: Any):
        self.format = fmt
        values = torch.as_tensor(fmt.values()).detach().flatten().cpu().to(torch.float64)
        self.values = torch.unique(values)  # sorted; -0.0 and 0.0 collapse into one entry
        self.sorted_list = self.values.tolist()
        self._on_device: dict[tuple[Any, Any], torch.Tensor] = {}

    def on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._on_device:
            self._on_device[key] = self.values.to(device=device, dtype=dtype)
        return self._on_device[key]

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise: is ``x`` exactly one of the grid's finite values?"""
        # float16/bfloat16 values are exact in float32; the grids enumerated here (<= 16 bits)
        # are exact in float32 too, so the comparison below is exact.
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        values = self.on(x.device, dtype)
        flat = x.reshape(-1).to(dtype).contiguous()
        index = torch.searchsorted(values, flat).clamp_(max=values.numel() - 1)
        return (values[index] == flat).reshape(x.shape)

    def nearest(self, value: float) -> list[float]:
        """The grid values either side of ``value`` (one value when it is on the grid)."""
        if not math.isfinite(value):
            return (
                [self.sorted_list[0], self.sorted_list[-1]]
                if value != value
                else ([self.sorted_list[-1]] if value > 0 else [self.sorted_list[0]])
            )
        i = bisect.bisect_left(self.sorted_list, value)
        if i < len(self.sorted_list) and self.sorted_list[i] == value:
            return [value]
        below = self.sorted_list[i - 1] if i > 0 else None
        above = self.sorted_list[i] if i < len(self.sorted_list) else None
        return [v for v in (below, above) if v is not None]


def _legal_values(element: Any, grid: _Grid, decoded: torch.Tensor) -> torch.Tensor:
    """Elementwise: a finite grid value, or a NaN or infinity the format itself encodes (a
    NaN in int8 or fp4_e2m1, which have no NaN code, is illegal: the format cannot hold it)."""
    legal = grid.contains(decoded)
    special = ~torch.isfinite(decoded)
    if bool(special.any()):
        encodable = element.is_representable(decoded[special]).to(torch.bool)
        legal[special] = encodable.to(legal.device)
    return legal


@functools.lru_cache(maxsize=256)
def _encodes_nan(format_name: str) -> bool:
    """Does the (scale) format have a NaN encoding? e8m0: 0xFF (OCP MX v1.0 §5.4.1); fp32 and
    fp64: IEEE 754; any other registered format: its own ``is_representable(NaN)``."""
    if format_name in ("e8m0", "fp32", "fp64"):
        return True
    try:
        fmt = qbench.get_format(format_name)
    except QBenchError:
        return False
    return bool(fmt.is_representable(torch.tensor([math.nan])).reshape(-1)[0])


@dataclass(frozen=True)
class _BitFields:
    """A float format whose codes are sign | exponent field | mantissa bit patterns in
    [0, 2^bits), every one of them legal: decoded from the fields by arithmetic, its NaN and
    infinity codes taken from the table. Used only if it reproduces the format's own
    ``decode`` on every code (checked once, in :meth:`matching`)."""

    bits: int
    exponent_bits: int
    mantissa_bits: int
    bias: int
    # (code, 0 for NaN / +1 for +inf / -1 for -inf): no NaN among the constants a compiled
    # kernel is specialized on (NaN != NaN would fail its guards on every call).
    specials: tuple[tuple[int, int], ...]
    # Codes in [-2^bits, 0) decode to NaN, legal or not as the table says (codes beyond the
    # table are NaN and illegal, as there).
    negative_legal: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.bits, self.exponent_bits, self.mantissa_bits, self.bias, self.specials)

    @functools.cached_property
    def numbers(self) -> tuple[int | float, ...]:
        """What the audit's compiled kernel reads at run time (:func:`_audit_rows_bits`): the
        legal codes' bounds, the decoding's numbers, the special codes. Its only constant is
        :attr:`kinds`, so one kernel serves every format of the same special kinds. Built
        once: the same tuple on every call lets ``qbench.kernels.fused`` reuse its words."""
        span = 1 << self.bits
        fields = decode_numbers(self.bits, self.exponent_bits, self.mantissa_bits, self.bias)
        low = -span if self.negative_legal else 0
        return (low, span, *fields, *(code for code, _ in self.specials))

    @functools.cached_property
    def kinds(self) -> tuple[int, ...]:
        return tuple(kind for _, kind in self.specials)

    @classmethod
    def matching(
        cls, element: Any, codes: torch.Tensor, values: torch.Tensor, legal: torch.Tensor
    ) -> _BitFields | None:
        fields = [getattr(element, k, None) for k in ("exponent_bits", "mantissa_bits", "bias")]
        if not getattr(element, "signed", False) or any(type(f) is not int for f in fields):
            return None
        exponent_bits, mantissa_bits, bias = fields
        bits = 1 + exponent_bits + mantissa_bits
        if bits != int(element.bits) or not -126 <= 1 - bias - mantissa_bits:
            return None  # the subnormal step 2^(1 - bias - mantissa_bits) is a normal float32
        if mantissa_bits > 23 or bias > 127 or (2**exponent_bits - 1) - bias > 127:
            return None  # the normal exponents are float32 normal exponents
        in_range = (codes >= 0) & (codes < 2**bits)
        outside = ~in_range  # the table's other codes, [-2^bits, 0): all NaN, legal alike
        outside_legal = bool(legal[outside].all())
        if not bool(legal[in_range].all()) or not bool(torch.isnan(values[outside]).all()):
            return None
        if not outside_legal and bool(legal[outside].any()):
            return None
        special = in_range & ~torch.isfinite(values)
        specials = tuple(
            (int(c), 0 if math.isnan(v) else (1 if v > 0 else -1))
            for c, v in zip(codes[special].tolist(), values[special].tolist())
        )
        candidate = cls(bits, exponent_bits, mantissa_bits, bias, specials, outside_legal)
        mine = _decode_bits(codes[in_range], *candidate.key)  # NaN outside: no need to check
        theirs = values[in_range].to(torch.float32)
        same = (mine.view(torch.int32) == theirs.view(torch.int32)) | (
            torch.isnan(mine) & torch.isnan(theirs)
        )
        return candidate if bool(same.all()) else None


class _CodeTable:
    """Every code of a small format decoded once, with its legality
    (:meth:`FormatTables.table`).

    Layout: ``[out-of-range-low, code -2^bits, ..., code 2^bits - 1, out-of-range-high]``, so
    a code's slot is ``clamp(code + 2^bits + 1, 0, last)`` and codes the table does not cover
    land on a NaN, illegal sentinel.
    """

    def __init__(self, element: Any, grid: _Grid):
        span = 2 ** int(element.bits)
        self.offset = span + 1
        codes = torch.arange(-span, span, dtype=torch.int64)
        values = element.decode(codes)
        legal = _legal_values(element, grid, values)
        nan = values.new_full((1,), math.nan)
        self.values = torch.cat([nan, values, nan])
        self.legal = torch.cat([legal.new_zeros(1), legal, legal.new_zeros(1)])
        self._on_device: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bit_fields = _BitFields.matching(element, codes, values, legal)
        #: What :func:`_audit_rows` reads at run time: the offset and the last slot.
        self.gather_numbers = (self.offset, self.values.numel() - 1)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.values.to(device), self.legal.to(device))
        return self._on_device[device]

    def lookup(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, legal = self._on(codes.device)
        codes = widened(codes)  # int8/uint8/int16 would overflow
        # index_select with the codes' own integer type: one fused pass per table.
        index = (codes.reshape(-1) + self.offset).clamp_(0, values.numel() - 1)
        return (
            values.index_select(0, index).reshape(codes.shape),
            legal.index_select(0, index).reshape(codes.shape),
        )

    def counts(
        self,
        codes: torch.Tensor,
        dequantized: torch.Tensor,
        scales: torch.Tensor,
        *,
        sliced: bool = False,
    ) -> torch.Tensor:
        """[illegal codes, reconstruction mismatches, NaN values, ±inf values] (int64; the
        last two of the dequantized tensor) in one fused pass: per-row counts over the
        trailing dimensions of the coalesced views (:func:`_rows`, :func:`_row_dims`),
        packed two to an int32, then summed. ``sliced`` (the eager path): counted from the
        masks of slices of :data:`SLICE_ELEMENTS` elements (:meth:`_mask_counts`), so that
        no intermediate is the tensor's size; the counts are the same."""
        if sliced:
            parts = [self._mask_counts(*t) for t in _slices((codes, dequantized, scales))]
            return parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)
        # The format's numbers are read at run time: one compiled kernel per kind of format.
        if self.bit_fields is not None:  # decoded by arithmetic: vectorizes, a gather does not
            fn: Any = _audit_rows_bits
            fields = self.bit_fields
            constants: tuple[Any, ...] = (fields.kinds,)
            numbers = fields.numbers
            extra: tuple[torch.Tensor, ...] = ()
        else:
            values, legal = self._on(codes.device)
            fn, constants, extra = _audit_rows, (), (values, legal)
            numbers = self.gather_numbers
        views = _rows(codes, dequantized, scales)
        if views is None:  # a row too long to pack two counts in an int32: int64 totals
            tensors = (codes, dequantized, scales, *extra)
            return fused(fn, tensors, (*constants, 0), numbers=numbers, options=ONE_LOOP)
        return fused(
            fn,
            (*views, *extra),
            (*constants, _row_dims(views[0])),
            numbers=numbers,
            options=ONE_LOOP,
        )

    def _mask_counts(
        self, codes: torch.Tensor, dequantized: torch.Tensor, scales: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`counts` from the masks ``records.detail_failures`` counts (eagerly, they
        take fewer passes than the fused kernel's arithmetic): scales broadcast."""
        if codes.device.type == "cpu" and not codes.is_floating_point():
            found = self._cpu_counts(codes, dequantized, scales)
            if found is not None:
                return found
        decoded, legal = self.lookup(codes)
        illegal = (~legal & (scales == scales)).sum()  # a NaN scale makes any code NaN
        mismatch = _mismatch(decoded * scales, dequantized).sum()
        nan, inf = _nonfinite(dequantized)
        return torch.stack([illegal, mismatch, nan.sum(), inf.sum()])

    def _cpu_counts(
        self, codes: torch.Tensor, dequantized: torch.Tensor, scales: torch.Tensor
    ) -> torch.Tensor | None:
        """:meth:`_mask_counts` in fewer passes where the host can look at a slice first (on
        the CPU a look costs no device sync). The codes' range (``kernels.int_range``) shows
        every code in the table and all of them legal: no illegal count, no clamp, no legality
        lookup, and codes from 0 up index the values as they are. The values' range
        (``aminmax``, NaN propagates through it) shows them finite: no NaN or ±inf to count,
        and with no NaN a NaN reconstruction is a mismatch like any other. The decoded values
        are scaled in place and compared by ``torch.equal`` (elementwise ``==``: -0.0 matches
        0.0, as for ``!=``); only where it finds a difference are the mismatches counted. None where a
        look finds a code outside the table, an illegal code within the codes' range or a NaN
        value: the general masks count that slice. One full-size temporary a slice instead of
        five; a channels-last 32x96x112x112 fp8 activation on a 2-core VM, best of several:
        156 ms instead of 280 (chunks along the channels), 249 instead of 356 (along the
        width, its scales expanded)."""
        low, high = int_range(codes)
        span = self.offset - 1
        if low < -span or high >= span:
            return None
        values, legal = self._on(codes.device)
        if not bool(legal[self.offset + low : self.offset + high + 1].all()):
            return None
        nan = inf = 0
        if not all(math.isfinite(v) for v in torch.aminmax(dequantized)):
            nan = int(torch.isnan(dequantized).sum())
            if nan:
                return None
            inf = int(torch.isinf(dequantized).sum())
        index = widened(codes.reshape(-1))
        if low < 0:  # index 0 is the lowest code
            index, start = index - low, self.offset + low
        else:  # index 0 is code 0
            start = self.offset
        decoded = values[start:].index_select(0, index).reshape(codes.shape)
        if torch.result_type(decoded, scales) == decoded.dtype and _broadcasts_into(
            scales.shape, decoded.shape
        ):
            decoded.mul_(scales)  # the product ``decoded * scales`` would be, in place
        else:
            decoded = decoded * scales
        # ``!=`` compares in the promoted dtype; widening the values the layer used to the
        # product's dtype (a float16 / bfloat16 activation: exactly) is that promotion.
        comparable = decoded.shape == dequantized.shape and (
            torch.promote_types(decoded.dtype, dequantized.dtype) == decoded.dtype
        )
        if comparable and torch.equal(decoded, dequantized.to(decoded.dtype)):
            mismatch = 0
        else:
            mismatch = int((decoded != dequantized).sum())
        return torch.tensor([0, mismatch, nan, inf], dtype=torch.int64)


def _broadcasts_into(shape: torch.Size, target: torch.Size) -> bool:
    """Does ``shape`` broadcast to ``target`` as it is (``torch.broadcast_shapes(target,
    shape) == target``, which took 0.15 ms a call, a tenth of a small tensor's count)?"""
    return len(shape) <= len(target) and all(
        n in (1, m) for n, m in zip(reversed(shape), reversed(target), strict=False)
    )


#: Elements per slice of a sliced eager count (:meth:`_CodeTable.counts`): its masks and
#: decoded values take ~23 bytes per element, ~23 MiB a slice (whole, a gigabyte for one of
#: tf_efficientnet_b0's activations at batch 32). On a 2-core x86 VM, one 32x96x112x112
#: fp8 activation: 529 ms in slices of 2^20, 749 ms in slices of 2^22.
SLICE_ELEMENTS = 1 << 20


def _slices(tensors: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
    """``tensors`` (the first full-size, the others broadcasting against it) cut along the
    first dimension into slices of about :data:`SLICE_ELEMENTS` elements (at least one row of
    it each); a tensor that broadcasts along that dimension is passed whole to each."""
    full = tensors[0]
    if full.dim() == 0 or full.shape[0] <= 1 or full.numel() <= SLICE_ELEMENTS:
        return [tensors]
    rows = full.shape[0]
    step = max(1, SLICE_ELEMENTS // max(1, full.numel() // rows))
    cut = [t.dim() == full.dim() and t.shape[0] == rows for t in tensors]
    return [
        tuple(t[start : start + step] if c else t for t, c in zip(tensors, cut, strict=True))
        for start in range(0, rows, step)
    ]


@dataclass
class _ScaleCheck:
    """One scale level of an observation: its values, and (:meth:`FormatTables.scale_masks`,
    computed when needed) which are illegal, which are NaN."""

    level: str
    scale_format: str
    values: torch.Tensor
    masks: tuple[torch.Tensor, torch.Tensor] | None = None


class FormatTables:
    """The grids and code tables of the formats met so far, each built once per format."""

    def __init__(self) -> None:
        self._grids: dict[str, _Grid] = {}
        self._tables: dict[str, _CodeTable] = {}

    def grid(self, name: str) -> _Grid:
        if name not in self._grids:
            self._grids[name] = _Grid(qbench.get_format(name))
        return self._grids[name]

    def table(self, name: str, element: Any, codes: torch.Tensor) -> _CodeTable | None:
        """The code table of a format of up to 16 bits with integer codes, else None.

        It is built once by decoding every code in [-2^bits, 2^bits) with the format's own
        ``decode`` (which covers signed and unsigned code conventions), so a tensor costs a
        gather instead of a full decode and a grid search; other formats decode and search
        directly.
        """
        small = int(element.bits) <= MAX_ENUMERATED_BITS
        if not small or codes.is_floating_point() or codes.is_complex():
            return None
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = _CodeTable(element, self.grid(name))
        return table

    def scale_checks(self, result: QuantResult) -> list[_ScaleCheck]:
        """Every scale level of ``result``: its values and scale format."""
        parts = dict(result.scale_parts or {})
        if not parts:
            parts = {"scale": (result.scales, result.spec.scaling.scale_format)}
        return [
            _ScaleCheck(level, scale_format, torch.as_tensor(values))
            for level, (values, scale_format) in parts.items()
        ]

    def scale_masks(self, check: _ScaleCheck) -> tuple[torch.Tensor, torch.Tensor]:
        """(illegal, NaN) masks of a level's values, computed once. A NaN scale is legal
        where the scale format encodes NaN (e8m0's 0xFF, OCP MX v1.0 §5.4.1: every element
        of its block is NaN; fp32; fp8_e4m3's S.1111.111), illegal elsewhere."""
        if check.masks is not None:
            return check.masks
        values, scale_format = check.values, check.scale_format
        v = values if values.is_floating_point() else values.to(torch.float64)
        legal = (v > 0) & (v < math.inf)  # finite and positive (NaN fails both)
        if scale_format == "e8m0":
            mantissa, exponent = torch.frexp(v.to(torch.float64))
            # 2^e has frexp mantissa 0.5 and exponent e + 1.
            legal &= (
                (mantissa == 0.5)
                & (exponent - 1 >= E8M0_MIN_EXPONENT)
                & (exponent - 1 <= E8M0_MAX_EXPONENT)
            )
        elif self.enumerable(scale_format):
            legal &= self.grid(scale_format).contains(v)
        nan = v != v
        if _encodes_nan(scale_format):
            legal |= nan
        check.masks = (~legal, nan)
        return check.masks

    def scale_counts(self, checks: list[_ScaleCheck]) -> torch.Tensor:
        """[illegal scales of each level..., NaN scales of each level...] (int64). On the
        CPU, where a look costs no device sync, a level of a format that only asks for
        finite positive scales (fp32, fp64) is first looked at by its range: all finite and
        positive (NaN propagates through ``aminmax``), it has neither, and no mask is made
        (its masks took nine ops and two sums an observation)."""
        counts: list[Any] = [None] * (2 * len(checks))
        for i, check in enumerate(checks):
            if self._positive_only(check):
                counts[i] = counts[len(checks) + i] = 0
                continue
            illegal, nan = self.scale_masks(check)
            counts[i], counts[len(checks) + i] = illegal.sum(), nan.sum()
        if all(isinstance(c, int) for c in counts):
            return torch.tensor(counts, dtype=torch.int64)
        device = next(c.device for c in counts if isinstance(c, torch.Tensor))
        return torch.stack([torch.as_tensor(c, device=device) for c in counts])

    def _positive_only(self, check: _ScaleCheck) -> bool:
        """Whether a CPU level of a format asking only for finite positive scales is seen, by
        its range, to hold only such scales (:meth:`scale_counts`)."""
        v, scale_format = check.values, check.scale_format
        if v.device.type != "cpu" or not v.is_floating_point() or not v.numel():
            return False
        if scale_format == "e8m0" or self.enumerable(scale_format):
            return False
        low, high = (float(t) for t in torch.aminmax(v))
        return low > 0 and high < math.inf  # NaN fails both

    def enumerable(self, format_name: str) -> bool:
        """Is the scale format's grid small enough to test membership (fp8 yes, fp32 no)?"""
        if format_name in ("e8m0", "fp32", "fp64"):
            return False
        return int(getattr(qbench.get_format(format_name), "bits", 32)) <= MAX_ENUMERATED_BITS
