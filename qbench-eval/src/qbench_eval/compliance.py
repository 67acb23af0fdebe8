"""The ``compliance`` metric: an audit that every quantized tensor is legal in its format.

For every tensor a layer really quantized (reported through ``qbench.prepare.observe`` as a
:class:`qbench.types.QuantResult`) the audit checks, independently of the quantizer's own
claims:

* **grid** — the element codes decode to values the element format can encode: its grid
  (``format.values()``), and NaN or ±inf only where the format itself encodes them
  (``format.is_representable``): NaN in int8 or fp4_e2m1 fails, in fp8_e4m3 it passes. An
  element under a NaN scale is exempt: the scale makes it NaN whatever its code (OCP MX v1.0,
  special value handling: a NaN shared scale X makes every element of its block NaN);
* **reconstruction** — ``decode(codes) * expand_scales()`` equals the dequantized tensor the
  layer used, bit for bit (NaN matches NaN);
* **scale** — every scale level is legal for its scale format: positive and finite, or NaN
  where the scale format encodes NaN (``e8m0``'s 0xFF, OCP MX v1.0 §5.4.1; fp32; fp8_e4m3's
  S.1111.111); ``e8m0`` a power of two 2^e with -127 <= e <= 127 (OCP MX v1.0 §5.4.1, E8M0);
  any other format of at most 16 bits on that format's grid (e.g. fp8_e4m3 for NVFP4 block
  scales); ``fp32`` (and wider) finite and positive;
* **observed** — every role the preparation report lists as quantized was reported at least
  once (a layer that bypasses its quantizer is caught here).

Counts are exact; only the first ``max_examples`` failing elements per tensor are kept.
Beside the checks, the NaN and ±inf values among the dequantized values each layer used are
counted (a :class:`QuantResult` does not carry the quantizer's input), and so are the NaN
scales; any NaN/inf value gives the result a ``warnings`` line.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import qbench
import torch
import yaml
from qbench.errors import QBenchError
from qbench.kernels import ONE_LOOP, fused, in_memory_order, use_compiled
from qbench.types import ROLES, BatchOutputs, QuantResult

from ._identity import Seen

DEFAULT_CONFIG_NAME = "compliance_default.yaml"
CHECKS = ("grid", "reconstruction", "scale", "shape", "observed")

#: OCP MX v1.0 §5.4.1: E8M0 encodes 2^(e) for e in -127..127 (0xFF is NaN).
E8M0_MIN_EXPONENT = -127
E8M0_MAX_EXPONENT = 127
#: Grids of scale formats wider than this are not enumerated (fp32: finite positive suffices).
MAX_ENUMERATED_BITS = 16
#: Per device type, how many bytes of audited tensors (codes, dequantized, scales) may wait
#: for their counts to be read in one host sync. A sync waits for all queued GPU work, so one
#: per tensor would keep the host's Python from running ahead of the GPU's kernels; the
#: tensors stay alive until then (at most this much more memory), and are read again only
#: for the examples of a failure. The end of a batch reads them too. On the CPU there is
#: nothing to overlap, and each tensor is settled at once.
DEFER_BYTES: Mapping[str, int] = {"cuda": 1 << 30}


@dataclass(frozen=True)
class ComplianceConfig:
    """What the audit checks; loaded from YAML (see ``compliance_default.yaml``)."""

    roles: tuple[str, ...] = ROLES
    skip_layers: tuple[str, ...] = ()
    max_examples: int = 5
    require_observed: bool = True
    activation_batches: int | None = None
    source: str = "default"

    def audits(self, layer: str, role: str) -> bool:
        """Is this (layer, role) audited? A quantization point inside a layer (e.g. the
        ``q`` input of an attention layer, reported as ``<layer>.q``) is skipped with it."""
        if role not in self.roles:
            return False
        names = _self_and_parents(layer)
        return not any(fnmatch.fnmatchcase(n, p) for n in names for p in self.skip_layers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "roles": list(self.roles),
            "skip_layers": list(self.skip_layers),
            "max_examples": self.max_examples,
            "require_observed": self.require_observed,
            "activation_batches": self.activation_batches,
            "source": self.source,
        }


def _self_and_parents(layer: str) -> list[str]:
    """``"a.b.c"`` -> ``["a.b.c", "a.b", "a"]``."""
    parts = layer.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def default_config_text() -> str:
    """The YAML text of the default compliance configuration shipped with qbench-eval."""
    return resources.files("qbench_eval").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def load_config(options: Any, config_dir: Path | None = None) -> ComplianceConfig:
    """The audit configuration for ``evaluation.compliance``: None (the shipped default), a
    path to a YAML file (relative to the run's config directory) or an inline mapping.
    Keys left out keep their default values."""
    values = _parse_mapping(yaml.safe_load(default_config_text()), DEFAULT_CONFIG_NAME)
    source = "default"
    if isinstance(options, (str, Path)):
        path = Path(options)
        if not path.is_absolute() and config_dir is not None:
            path = Path(config_dir) / path
        source = str(path)
        if not path.is_file():
            raise QBenchError(
                f"evaluation.compliance: file {str(path)!r} not found (give a YAML path relative to the config file)"
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QBenchError(f"{path}: not valid YAML: {first}") from None
        values.update(_parse_mapping({} if loaded is None else loaded, str(path)))
    elif isinstance(options, Mapping):
        source = "inline"
        values.update(_parse_mapping(options, "evaluation.compliance"))
    elif options is not None:
        raise QBenchError(
            f"evaluation.compliance: found {type(options).__name__} {options!r}; allowed: a YAML file path or a mapping"
        )
    return _validated(values, source)


def _parse_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise QBenchError(
            f"{where}: found {type(value).__name__}; allowed: a mapping of audit settings"
        )
    allowed = ("roles", "skip_layers", "max_examples", "require_observed", "activation_batches")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise QBenchError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    return {key: (value[key], where) for key in value}


def _validated(values: Mapping[str, Any], source: str) -> ComplianceConfig:
    def bad(key: str, found: Any, allowed: str) -> QBenchError:
        where = values[key][1]
        return QBenchError(f"{where}: {key}: found {found!r}; allowed: {allowed}")

    roles, _ = values["roles"]
    if not isinstance(roles, list) or not all(r in ROLES for r in roles):
        raise bad("roles", roles, f"a list of {', '.join(ROLES)}")
    skip, _ = values["skip_layers"]
    if not isinstance(skip, list) or not all(isinstance(p, str) for p in skip):
        raise bad("skip_layers", skip, "a list of glob strings")
    max_examples, _ = values["max_examples"]
    if not isinstance(max_examples, int) or isinstance(max_examples, bool) or max_examples < 0:
        raise bad("max_examples", max_examples, "an integer >= 0")
    require, _ = values["require_observed"]
    if not isinstance(require, bool):
        raise bad("require_observed", require, "true or false")
    batches, _ = values["activation_batches"]
    if batches is not None and (
        not isinstance(batches, int) or isinstance(batches, bool) or batches < 1
    ):
        raise bad("activation_batches", batches, "null or an integer >= 1")
    return ComplianceConfig(tuple(roles), tuple(skip), max_examples, require, batches, source)


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


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


class _CodeTable:
    """Every code of a small format decoded once, with its legality (see ``_table``).

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

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.values.to(device), self.legal.to(device))
        return self._on_device[device]

    def lookup(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, legal = self._on(codes.device)
        if codes.dtype not in (torch.int32, torch.int64):  # int8/uint8/int16 would overflow
            codes = codes.to(torch.int32)
        # index_select with the codes' own integer type: one fused pass per table.
        index = (codes.reshape(-1) + self.offset).clamp_(0, values.numel() - 1)
        return (
            values.index_select(0, index).reshape(codes.shape),
            legal.index_select(0, index).reshape(codes.shape),
        )

    def counts(
        self, codes: torch.Tensor, dequantized: torch.Tensor, scales: torch.Tensor
    ) -> torch.Tensor:
        """[illegal codes, reconstruction mismatches, NaN values, ±inf values] (int64; the
        last two of the dequantized tensor) in one fused pass: per-row counts over the
        trailing dimensions of the coalesced views (:func:`_rows`, :func:`_row_dims`),
        packed two to an int32, then summed."""
        if self.bit_fields is not None:  # decoded by arithmetic: vectorizes, a gather does not
            fn: Any = _audit_rows_bits
            constants: tuple[Any, ...] = (*self.bit_fields.key, self.bit_fields.negative_legal)
            extra: tuple[torch.Tensor, ...] = ()
        else:
            values, legal = self._on(codes.device)
            fn, constants, extra = _audit_rows, (self.offset, values.numel() - 1), (values, legal)
        views = _rows(codes, dequantized, scales)
        if views is None:  # a row too long to pack two counts in an int32: int64 totals
            tensors = (codes, dequantized, scales, *extra)
            return torch.cat(fused(fn, tensors, (*constants, 0), options=ONE_LOOP))
        checks, nonfinite = fused(
            fn, (*views, *extra), (*constants, _row_dims(views[0])), options=ONE_LOOP
        )
        return torch.stack(
            [
                (checks & _LOW_MASK).sum(),
                (checks >> _PACK_SHIFT).sum(),
                (nonfinite & _LOW_MASK).sum(),
                (nonfinite >> _PACK_SHIFT).sum(),
            ]
        )


#: Per-row counts are packed as illegal + mismatches * 2^16 in an int32: rows of at most
#: _MAX_ROW elements cannot overflow either half.
_PACK_SHIFT = 16
_LOW_MASK = (1 << _PACK_SHIFT) - 1
_MAX_ROW = (1 << (_PACK_SHIFT - 1)) - 1


def _coalesced(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
    """Views of ``tensors`` (same rank; the first full-size, the others of the same size or
    1 in each dimension) with size-1 dimensions dropped and neighbouring dimensions merged
    wherever every tensor allows it without a copy: a 5-D chunked activation becomes a
    3-D (outer, chunk, spatial) problem, the loop nest inductor vectorizes best."""
    full = tensors[0].shape
    if any(t.dim() != len(full) for t in tensors):
        return None
    keep = [d for d in range(len(full)) if full[d] != 1]
    groups: list[list[int]] = []
    for d in keep:
        if groups and all(_mergeable(t, groups[-1][-1], d) for t in tensors):
            groups[-1].append(d)
        else:
            groups.append([d])
    views = []
    for t in tensors:
        shape = [math.prod(t.shape[d] for d in group) for group in groups] or [1]
        views.append(t.reshape(shape))
    return tuple(views)


def _mergeable(t: torch.Tensor, a: int, b: int) -> bool:
    """Whether dims a < b (with only size-1 dims between them) of ``t`` merge into one."""
    if t.shape[a] == 1 and t.shape[b] == 1:  # broadcast in both
        return True
    if t.shape[a] == 1 or t.shape[b] == 1:  # broadcast in one only
        return False
    return t.stride(a) == t.stride(b) * t.shape[b]


def _rows(
    codes: torch.Tensor, dequantized: torch.Tensor, scales: torch.Tensor
) -> tuple[torch.Tensor, ...] | None:
    """Coalesced views whose last dimension has at most _MAX_ROW elements (a long one split
    in two by a divisor), or None if there is no such split.

    Short rows are grouped: where the dimension before the last holds more rows than fit in
    _MAX_ROW elements, it is split by a divisor too, so that one packed count covers many
    rows (:func:`_row_dims`). Chunks along the last axis (a ViT token's 768 features in
    blocks of 128, each with its own scale) would otherwise end every block in a horizontal
    reduction and a store: 14-18% of the audit's time on (16, 197, 768) and (16, 197, 3072)
    activations, and a quarter of it on 56-element rows."""
    views = _coalesced((codes, dequantized, scales))
    if views is None:
        return None
    length = views[0].shape[-1]
    if length > _MAX_ROW:
        parts = _split(length)
        if parts is None:
            return None
        return _unflattened(views, -1, parts)
    rows = views[0].shape[-2] if views[0].dim() >= 2 else 1
    if rows * length > _MAX_ROW:
        group = _largest_divisor(rows, _MAX_ROW // length)
        if group > 1:
            return _unflattened(views, -2, (rows // group, group))
    return views


def _unflattened(
    views: tuple[torch.Tensor, ...], dim: int, parts: tuple[int, int]
) -> tuple[torch.Tensor, ...]:
    """``views`` with dimension ``dim`` split into ``parts`` (a broadcast one stays 1, 1)."""
    return tuple(v.unflatten(dim, parts) if v.shape[dim] != 1 else v.unsqueeze(dim) for v in views)


def _row_dims(codes: torch.Tensor) -> int:
    """How many trailing dimensions make one row: as many as fit in _MAX_ROW elements (a
    short last dimension alone would leave most of each row to the scalar tail loop)."""
    dims, size = 1, codes.shape[-1]
    while dims < codes.dim() and size * codes.shape[-1 - dims] <= _MAX_ROW:
        size *= codes.shape[-1 - dims]
        dims += 1
    return dims


def _split(length: int) -> tuple[int, int] | None:
    """(outer, row) with outer * row == length and row <= _MAX_ROW, the longest such row among
    the first few divisors; None if none."""
    fewest = -(-length // _MAX_ROW)  # ceil: fewer parts leave a row too long
    for outer in range(fewest, fewest + 64):
        if length % outer == 0:
            return outer, length // outer
    return None


@functools.lru_cache(maxsize=1024)
def _largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (1 if only 1 is). Cached: the
    same activation shapes come back batch after batch."""
    for k in range(min(n, limit), 1, -1):
        if n % k == 0:
            return k
    return 1


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


def _decode_bits(
    codes: torch.Tensor,
    bits: int,
    exponent_bits: int,
    mantissa_bits: int,
    bias: int,
    specials: tuple[tuple[int, int], ...],
) -> torch.Tensor:
    """float32 values of codes from their bit fields, NaN outside [0, 2^bits) (_BitFields).

    A normal code's exponent and mantissa fields, shifted into float32's fields with the
    bias changed by integer addition, are its float32 bit pattern; a subnormal one (exponent
    field 0) is its mantissa times 2^(1 - bias - mantissa_bits), exact. No float32 subnormal
    is ever formed, so flush-to-zero settings cannot change a value.
    """
    wide = codes.to(torch.int32)
    c = wide & ((1 << bits) - 1)
    sign = c >> (bits - 1)
    magnitude = c & ((1 << (bits - 1)) - 1)
    rebias = (127 - bias) << mantissa_bits
    normal = ((sign << 31) | ((magnitude + rebias) << (23 - mantissa_bits))).view(torch.float32)
    subnormal = magnitude.to(torch.float32) * (2.0 ** (1 - bias - mantissa_bits))
    subnormal = torch.where(sign == 1, -subnormal, subnormal)
    value = torch.where((magnitude >> mantissa_bits) == 0, subnormal, normal)
    for code, kind in specials:
        value = torch.where(c == code, math.inf * kind if kind else math.nan, value)
    return torch.where(c == wide, value, math.nan)


def _audit_rows_bits(
    codes: torch.Tensor,
    dequantized: torch.Tensor,
    scales: torch.Tensor,
    *fields: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_audit_rows` with the codes decoded from their bit fields (_BitFields)."""
    bits, negative_legal, row_dims = fields[0], fields[-2], fields[-1]
    span = 1 << bits
    illegal = ((codes < (-span if negative_legal else 0)) | (codes >= span)) & (scales == scales)
    reconstructed = _decode_bits(codes, *fields[:-2]) * scales
    return (
        _tally(illegal, _mismatch(reconstructed, dequantized), row_dims),
        _tally(*_nonfinite(dequantized), row_dims),
    )


def _mismatch(reconstructed: torch.Tensor, dequantized: torch.Tensor) -> torch.Tensor:
    """Elementwise ``reconstructed != dequantized``, NaN matching NaN (x == x is the NaN test
    that inductor vectorizes; isnan it does element by element)."""
    not_both_nan = (reconstructed == reconstructed) | (dequantized == dequantized)
    return (reconstructed != dequantized) & not_both_nan


def _nonfinite(dequantized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise (NaN, ±inf) masks of the values the layer used (x != x is the NaN test
    that inductor vectorizes)."""
    return dequantized != dequantized, dequantized.abs() == math.inf


def _tally(illegal: torch.Tensor, mismatch: torch.Tensor, row_dims: int) -> torch.Tensor:
    """Per row (the last ``row_dims`` dimensions, at most _MAX_ROW elements), illegal +
    mismatches * 2^16 as int32; with ``row_dims`` 0 the two int64 totals."""
    if row_dims:
        both = illegal.to(torch.int32) + (mismatch.to(torch.int32) << _PACK_SHIFT)
        return both.sum(dim=tuple(range(-row_dims, 0)), dtype=torch.int32)
    return torch.stack([illegal.sum(), mismatch.sum()])


def _grouped(result: QuantResult) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(codes, dequantized, scales) as views whose shapes broadcast, without materializing
    ``expand_scales()`` (a full-size tensor), or None where the layout is not plain.

    Scales of another rank (tensor and channel modes) go through ``expand_scales()``, a
    reshaped view there; scales of the codes' rank whose sizes are 1 or the codes' broadcast
    as they are (chunk mode with one block per row). Chunks of ``c`` along an axis of length
    ``L = blocks * c`` become a (blocks, c) split of that axis against scales of (blocks, 1).
    """
    codes, dequantized = result.codes, result.dequantized
    scales = result.scales
    if scales.dim() != codes.dim():  # tensor and channel modes: expanded is a reshaped view
        return in_memory_order(codes, dequantized, result.expand_scales())
    # Counts do not depend on the order of elements: all three are read in the codes' memory
    # order, so a channels-last activation chunked along its channels is a last-axis layout.
    codes, dequantized, scales = in_memory_order(codes, dequantized, scales)
    differing = [a for a in range(codes.dim()) if scales.shape[a] not in (1, codes.shape[a])]
    if not differing:
        return codes, dequantized, scales
    scaling = result.spec.scaling
    if len(differing) != 1 or scaling.mode != "chunk" or scaling.chunk_size is None:
        return None
    axis = differing[0]
    length, blocks = codes.shape[axis], scales.shape[axis]
    chunk = min(int(scaling.chunk_size), length)
    if blocks * chunk != length:  # a shorter last block: use the expanded scales
        return None
    return (
        codes.unflatten(axis, (blocks, chunk)),
        dequantized.unflatten(axis, (blocks, chunk)),
        scales.unsqueeze(axis + 1),
    )


def _audit_rows(
    codes: torch.Tensor,
    dequantized: torch.Tensor,
    scales: torch.Tensor,
    values: torch.Tensor,
    legal: torch.Tensor,
    offset: int,
    last: int,
    row_dims: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many codes are illegal (a code under a NaN scale is NaN whatever it is: never
    illegal), and how many ``decode(code) * scale`` differ from the dequantized value the
    layer used (NaN matching NaN); then how many values the layer used are NaN and how many
    ±inf: each pair per row packed, or as two int64 totals (:func:`_tally`)."""
    index = (codes.to(torch.int64) + offset).clamp(0, last)
    reconstructed = values[index] * scales
    illegal = ~legal[index] & (scales == scales)
    return (
        _tally(illegal, _mismatch(reconstructed, dequantized), row_dims),
        _tally(*_nonfinite(dequantized), row_dims),
    )


# --------------------------------------------------------------------------------------
# The audit of one tensor
# --------------------------------------------------------------------------------------


@dataclass
class TensorAudit:
    """Everything the audit found for one (layer, role): counts and a few examples."""

    layer: str
    role: str
    format: str = ""
    element_format: str = ""
    scale_formats: dict[str, str] = field(default_factory=dict)
    observations: int = 0
    # observations of the very tensors an earlier clean observation checked (a quantization
    # shared with the layer before): counted, not read again
    reused_observations: int = 0
    skipped_observations: int = 0
    elements: int = 0
    scales: int = 0
    # NaN and ±inf values among the dequantized values the layer used, and NaN scales
    nan: int = 0
    inf: int = 0
    nan_scales: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "role": self.role,
            "status": "FAIL" if self.failed else "PASS",
            "format": self.format,
            "element_format": self.element_format,
            "scale_formats": dict(self.scale_formats),
            "observations": self.observations,
            "reused_observations": self.reused_observations,
            "skipped_observations": self.skipped_observations,
            "elements": self.elements,
            "scales": self.scales,
            "nonfinite": {"nan": self.nan, "inf": self.inf},
            "nan_scales": self.nan_scales,
            "failures": {k: v for k, v in self.failures.items() if v},
            "failed": self.failed,
            "examples": list(self.examples),
        }


@dataclass(frozen=True)
class _ScaleCheck:
    """One scale level of an observation: its values, which are illegal, which are NaN."""

    level: str
    scale_format: str
    values: torch.Tensor
    illegal: torch.Tensor
    nan: torch.Tensor


@dataclass(frozen=True)
class _Clean:
    """What a clean observation added to its TensorAudit (replayed for the same tensors)."""

    format: str
    element_format: str
    scale_formats: dict[str, str]
    elements: int
    scales: int
    nan: int = 0
    inf: int = 0
    nan_scales: int = 0

    def add_to(self, audit: TensorAudit) -> None:
        audit.elements += self.elements
        audit.scales += self.scales
        audit.nan += self.nan
        audit.inf += self.inf
        audit.nan_scales += self.nan_scales


@dataclass
class _Observation:
    """One observation checked by the fused counting pass, its counts not read yet: they
    are read for many observations in one host sync (:meth:`ComplianceMetric.settle`)."""

    audit: TensorAudit
    result: QuantResult
    tensors: tuple[torch.Tensor, ...] | None
    tag: Any
    versions: tuple[int, ...] | None  # of ``tensors`` when observed
    scale_checks: list[_ScaleCheck]
    clean: _Clean  # what it adds to its TensorAudit, replayed if it is clean
    # [illegal scales per level..., NaN scales per level..., illegal codes, mismatches,
    # NaN values, ±inf values]
    counts: torch.Tensor


def _versions(tensors: tuple[torch.Tensor, ...] | None) -> tuple[int, ...] | None:
    """In-place version counters, or None if some tensor has none (inference tensors)."""
    if not tensors or any(t.is_inference() for t in tensors):
        return None
    return tuple(t._version for t in tensors)


def _same(a: tuple[torch.Tensor, ...] | None, b: tuple[torch.Tensor, ...]) -> bool:
    return a is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _result_tensors(result: QuantResult) -> tuple[torch.Tensor, ...] | None:
    """Every tensor an audit of ``result`` reads (codes first), or None if one is not a
    tensor (then the observation is always checked in full)."""
    parts = [values for values, _ in (result.scale_parts or {}).values()]
    tensors = (result.codes, result.dequantized, result.scales, *parts)
    return tensors if all(isinstance(t, torch.Tensor) for t in tensors) else None


def _unravel(flat_index: int, shape: tuple[int, ...]) -> list[int]:
    index = []
    for size in reversed(shape):
        index.append(flat_index % size if size else 0)
        flat_index = flat_index // size if size else 0
    return list(reversed(index))


def _number(value: float) -> float | str:
    """Example values stay numbers when finite; NaN/inf become strings (strict JSON)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


class ComplianceMetric:
    """The compliance audit (see the module docstring). Observes quantizations through
    ``on_tensor``; ``update`` only counts batches; ``result`` gives PASS/FAIL per role."""

    name = "compliance"
    options_schema: dict[str, Any] = {
        "description": (
            "The compliance audit's settings: null (the default shipped in qbench-eval), a path "
            "to a YAML file relative to the config file, or the settings inline."
        ),
        "anyOf": [
            {"type": "null"},
            {"type": "string", "minLength": 1},
            {
                "type": "object",
                "properties": {
                    "roles": {"type": "array", "items": {"enum": list(ROLES)}},
                    "skip_layers": {"type": "array", "items": {"type": "string"}},
                    "max_examples": {"type": "integer", "minimum": 0},
                    "require_observed": {"type": "boolean"},
                    "activation_batches": {"type": ["integer", "null"], "minimum": 1},
                },
                "additionalProperties": False,
            },
        ],
    }

    def __init__(self, options: Any = None):
        self.options = options
        self.config: ComplianceConfig | None = None
        if not isinstance(options, (str, Path)):  # a file path waits for the config dir
            self.config = load_config(options)
        self.audits: dict[tuple[str, str], TensorAudit] = {}
        self.expected: list[tuple[str, str]] = []
        self.unobservable: set[str] = set()
        self.batches = 0
        self._grids: dict[str, _Grid] = {}
        self._tables: dict[str, _CodeTable] = {}
        self._clean: Seen[_Clean] = Seen()
        self.defer_bytes = dict(DEFER_BYTES)
        self._pending: list[_Observation] = []
        self._pending_bytes = 0
        # (layer, role)s whose quantized tensors were changed in place before a deferred
        # settle: settled at once from then on, so that failures keep their examples
        self._changed_in_place: set[tuple[str, str]] = set()

    def attach(self, reference: Any, quantized: Any, context: Mapping[str, Any]) -> None:
        if self.config is None:
            self.config = load_config(self.options, context.get("config_dir"))
        preparation = context.get("preparation") or {}
        for entry in preparation.get("quantized", []):
            for role in entry.get("roles") or {}:
                if self.config.audits(entry["name"], role):
                    self.expected.append((entry["name"], role))
            if entry.get("observable", True) is False:
                self.unobservable.add(entry["name"])

    def _config(self) -> ComplianceConfig:
        if self.config is None:
            self.config = load_config(self.options)
        return self.config

    def _grid(self, name: str) -> _Grid:
        if name not in self._grids:
            self._grids[name] = _Grid(qbench.get_format(name))
        return self._grids[name]

    # -- observation ------------------------------------------------------------------

    @torch.no_grad()
    def on_tensor(self, layer: str, role: str, result: QuantResult) -> None:
        """Audit one quantization a layer actually used."""
        config = self._config()
        if not config.audits(layer, role):
            return
        audit = self.audits.get((layer, role))
        if audit is None:
            audit = self.audits[(layer, role)] = TensorAudit(layer, role)
        limited = config.activation_batches is not None and role in ("input", "act")
        if limited and self.batches >= config.activation_batches:
            audit.skipped_observations += 1
            return
        self._audit(audit, result, config.max_examples)

    def _audit(self, audit: TensorAudit, result: QuantResult, max_examples: int) -> None:
        """Check one observation; the very tensors of an earlier clean observation (a
        quantization shared by consecutive layers, see ``_identity``) are not read again."""
        tensors = _result_tensors(result)
        tag = (result.spec, tuple((k, f) for k, (_, f) in (result.scale_parts or {}).items()))
        if tensors and any(_same(p.tensors, tensors) for p in self._pending):
            self.settle()  # whether these tensors are read again depends on that outcome
        clean = self._clean.get(tensors, tag) if tensors else None
        if clean is not None:
            audit.format, audit.element_format = clean.format, clean.element_format
            audit.scale_formats.update(clean.scale_formats)
            audit.observations += 1
            audit.reused_observations += 1
            clean.add_to(audit)
            return
        self._check(audit, result, max_examples, tensors, tag)

    def _check(
        self,
        audit: TensorAudit,
        result: QuantResult,
        max_examples: int,
        tensors: tuple[torch.Tensor, ...] | None,
        tag: Any,
    ) -> None:
        spec = result.spec
        fmt = qbench.get_format(spec.format)
        element_name = getattr(fmt, "element", None) or spec.format
        element = qbench.get_format(element_name)
        audit.format = spec.describe()
        audit.element_format = element_name
        audit.observations += 1

        codes, dequantized = result.codes, result.dequantized
        audit.elements += dequantized.numel()
        if tuple(codes.shape) != tuple(dequantized.shape):
            audit.failures["shape"] += 1
            self._example(
                audit,
                max_examples,
                check="shape",
                codes_shape=list(codes.shape),
                dequantized_shape=list(dequantized.shape),
            )
            return

        scale_checks = self._scale_checks(result)
        scales = sum(check.values.numel() for check in scale_checks)
        audit.scales += scales
        for check in scale_checks:
            audit.scale_formats[check.level] = check.scale_format
        clean = _Clean(
            audit.format,
            element_name,
            {check.level: check.scale_format for check in scale_checks},
            dequantized.numel(),
            scales,
        )
        table = self._table(element_name, element, codes)
        counts = [check.illegal.sum().reshape(1) for check in scale_checks]
        counts += [check.nan.sum().reshape(1) for check in scale_checks]
        if table is not None and use_compiled(codes.numel()):
            # Large tensors: the grid and reconstruction checks in one fused pass that only
            # counts; the masks and examples are computed only if something failed.
            grouped = _grouped(result) or in_memory_order(
                codes, dequantized, result.expand_scales()
            )
            observation = _Observation(
                audit,
                result,
                tensors,
                tag,
                _versions(tensors),
                scale_checks,
                clean,
                torch.cat([*counts, table.counts(*grouped)]),
            )
            self._pending.append(observation)
            self._pending_bytes += sum(t.numel() * t.element_size() for t in tensors or ())
            deferred = observation.versions is not None and (audit.layer, audit.role) not in (
                self._changed_in_place
            )
            if not deferred or self._pending_bytes > self.defer_bytes.get(codes.device.type, 0):
                self.settle()
            return
        # Small tensors (eager) and formats without a code table: counted from the masks
        # that give the examples, after every pending observation (examples stay in
        # observation order).
        self.settle()
        levels = len(scale_checks)
        scale_counts = torch.cat(counts).tolist() if counts else []
        failed = self._add_scale_counts(audit, scale_counts[:levels])
        detail_failed, nan, inf = self._details(audit, result, element_name, max_examples)
        failed += detail_failed
        clean = self._add_nonfinite(audit, clean, sum(scale_counts[levels:]), nan, inf)
        self._scale_examples(audit, scale_checks, scale_counts[:levels], max_examples)
        if not failed:
            self._clean.put(tensors or (), clean, tag)

    @staticmethod
    def _add_nonfinite(
        audit: TensorAudit, clean: _Clean, nan_scales: Any, nan: Any, inf: Any
    ) -> _Clean:
        """Add an observation's NaN/inf counts to its audit; its _Clean with them."""
        nan_scales, nan, inf = int(nan_scales), int(nan), int(inf)
        audit.nan_scales += nan_scales
        audit.nan += nan
        audit.inf += inf
        return replace(clean, nan=nan, inf=inf, nan_scales=nan_scales)

    def settle(self) -> None:
        """Read the counts of every pending observation (one host sync) and record them:
        failures, examples (from the tensors, kept alive until now), clean results."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        counts = [p.counts for p in pending]
        if len({c.device for c in counts}) == 1:
            flat = torch.cat(counts).tolist()
        else:  # a model spread over several devices: one sync per device's tensor
            flat = [v for c in counts for v in c.tolist()]
        max_examples = self._config().max_examples
        offset = 0
        for observation in pending:
            size = 2 * len(observation.scale_checks) + 4
            self._settle_one(observation, flat[offset : offset + size], max_examples)
            offset += size

    def _settle_one(self, observation: _Observation, counts: list[int], max_examples: int) -> None:
        audit, levels = observation.audit, len(observation.scale_checks)
        scale_counts = counts[:levels]
        failed = self._add_scale_counts(audit, scale_counts)
        unchanged = _versions(observation.tensors) == observation.versions
        if not unchanged:  # changed in place after the layer used it: settle it at once
            self._changed_in_place.add((audit.layer, audit.role))
        illegal, mismatched, nan, inf = counts[2 * levels :]
        clean = self._add_nonfinite(
            audit, observation.clean, sum(counts[levels : 2 * levels]), nan, inf
        )
        if illegal or mismatched:
            if unchanged:  # its NaN/inf were counted by the fused pass
                failed += self._details(
                    audit, observation.result, observation.clean.element_format, max_examples
                )[0]
            else:  # the counts are exact; the elements that failed can no longer be read
                audit.failures["grid"] += illegal
                audit.failures["reconstruction"] += mismatched
                failed += illegal + mismatched
        self._scale_examples(audit, observation.scale_checks, scale_counts, max_examples)
        if not failed and unchanged and observation.tensors:
            self._clean.put(observation.tensors, clean, observation.tag)

    @staticmethod
    def _add_scale_counts(audit: TensorAudit, scale_counts: list[Any]) -> int:
        failed = sum(int(count) for count in scale_counts)
        audit.failures["scale"] += failed
        return failed

    def _details(
        self, audit: TensorAudit, result: QuantResult, element_name: str, max_examples: int
    ) -> tuple[int, int, int]:
        """Grid and reconstruction failures of ``result`` (elements of ``element_name``)
        counted from their masks, with examples; returns how many failed, and how many of
        the dequantized values are NaN and how many ±inf (not added to ``audit``)."""
        element = qbench.get_format(element_name)
        grid = self._grid(element_name)
        codes, dequantized = result.codes, result.dequantized
        table = self._table(element_name, element, codes)
        expanded = result.expand_scales()
        if table is not None:
            decoded, legal = table.lookup(codes)
        else:
            decoded = element.decode(codes)
            legal = _legal_values(element, grid, decoded)
        # An element under a NaN scale is NaN whatever its code (OCP MX v1.0, special values).
        off_grid = ~legal & (expanded == expanded)
        reconstructed = decoded * expanded
        # NaN != NaN, so NaN-for-NaN pairs are counted here and taken out below (rare).
        mismatch = reconstructed != dequantized
        nan, inf = _nonfinite(dequantized)
        counts = torch.stack([off_grid.sum(), mismatch.sum(), nan.sum(), inf.sum()]).tolist()
        off_count, mismatch_count = int(counts[0]), int(counts[1])  # one host sync above
        if mismatch_count:
            mismatch &= ~(torch.isnan(reconstructed) & torch.isnan(dequantized))
            mismatch_count = int(mismatch.sum())
        audit.failures["grid"] += off_count
        audit.failures["reconstruction"] += mismatch_count

        shape = tuple(dequantized.shape)
        if off_count and len(audit.examples) < max_examples:
            for i in self._first(off_grid, max_examples - len(audit.examples)):
                value = float(decoded.reshape(-1)[i])
                self._example(
                    audit,
                    max_examples,
                    check="grid",
                    index=_unravel(i, shape),
                    code=int(codes.reshape(-1)[i]),
                    value=_number(value),
                    nearest=[_number(v) for v in grid.nearest(value)],
                )
        if mismatch_count and len(audit.examples) < max_examples:
            scales_full = torch.broadcast_to(expanded, shape)
            for i in self._first(mismatch, max_examples - len(audit.examples)):
                used = float(dequantized.reshape(-1)[i])
                scale_value = scales_full.reshape(-1)[i]
                scale = float(scale_value)
                element_value = used / scale if scale else math.nan
                nearest: list[Any] = []
                if math.isfinite(element_value):
                    # Products in the tensor's own arithmetic, as the quantizer computes them.
                    neighbours = torch.tensor(
                        grid.nearest(element_value), dtype=reconstructed.dtype
                    )
                    nearest = [_number(v) for v in (neighbours * scale_value.cpu()).tolist()]
                self._example(
                    audit,
                    max_examples,
                    check="reconstruction",
                    index=_unravel(i, shape),
                    code=int(codes.reshape(-1)[i]),
                    value=_number(used),
                    expected=_number(float(reconstructed.reshape(-1)[i])),
                    scale=_number(scale),
                    nearest=nearest,
                )
        return off_count + mismatch_count, int(counts[2]), int(counts[3])

    def _scale_examples(
        self,
        audit: TensorAudit,
        scale_checks: list[_ScaleCheck],
        scale_counts: list[Any],
        max_examples: int,
    ) -> None:
        for check, count in zip(scale_checks, scale_counts, strict=True):
            if not count or len(audit.examples) >= max_examples:
                continue
            level, scale_format, values = check.level, check.scale_format, check.values
            bad = check.illegal
            for i in self._first(bad, max_examples - len(audit.examples)):
                value = float(values.reshape(-1)[i])
                nearest: list[Any] = []
                if self._enumerable(scale_format) and math.isfinite(value):
                    nearest = [_number(v) for v in self._grid(scale_format).nearest(value)]
                elif scale_format == "e8m0" and math.isfinite(value) and value > 0:
                    e = math.floor(math.log2(value))
                    nearest = [2.0**e, 2.0 ** (e + 1)] if 2.0**e != value else [value]
                self._example(
                    audit,
                    max_examples,
                    check="scale",
                    level=level,
                    scale_format=scale_format,
                    index=_unravel(i, tuple(values.shape)),
                    value=_number(value),
                    nearest=nearest,
                )

    def _table(self, name: str, element: Any, codes: torch.Tensor) -> _CodeTable | None:
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
            table = self._tables[name] = _CodeTable(element, self._grid(name))
        return table

    def _scale_checks(self, result: QuantResult) -> list[_ScaleCheck]:
        """Every scale level's values with their illegal and NaN masks. A NaN scale is legal
        where the scale format encodes NaN (e8m0's 0xFF, OCP MX v1.0 §5.4.1: every element
        of its block is NaN; fp32; fp8_e4m3's S.1111.111), illegal elsewhere."""
        parts = dict(result.scale_parts or {})
        if not parts:
            parts = {"scale": (result.scales, result.spec.scaling.scale_format)}
        checks = []
        for level, (values, scale_format) in parts.items():
            values = torch.as_tensor(values)
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
            elif self._enumerable(scale_format):
                legal &= self._grid(scale_format).contains(v)
            nan = v != v
            if _encodes_nan(scale_format):
                legal |= nan
            checks.append(_ScaleCheck(level, scale_format, values, ~legal, nan))
        return checks

    def _enumerable(self, format_name: str) -> bool:
        """Is the scale format's grid small enough to test membership (fp8 yes, fp32 no)?"""
        if format_name in ("e8m0", "fp32", "fp64"):
            return False
        return int(getattr(qbench.get_format(format_name), "bits", 32)) <= MAX_ENUMERATED_BITS

    @staticmethod
    def _first(mask: torch.Tensor, count: int) -> list[int]:
        if count <= 0:
            return []
        return torch.nonzero(mask.reshape(-1))[:count, 0].tolist()

    @staticmethod
    def _example(audit: TensorAudit, max_examples: int, **example: Any) -> None:
        if len(audit.examples) < max_examples:
            audit.examples.append(example)

    # -- streaming ----------------------------------------------------------------------

    def update(self, batch: BatchOutputs) -> None:
        self.settle()
        self.batches += 1

    def result(self) -> dict[str, Any]:
        self.settle()
        config = self._config()
        tensors = [audit.as_dict() for audit in self.audits.values()]
        # A layer with several quantization points (attention: in_proj, q, k, v, softmax,
        # out_proj) reports them as "<layer>.<point>"; any of them observes the layer's role.
        observed = {
            (name, role)
            for (layer, role), audit in self.audits.items()
            if audit.observations or audit.skipped_observations
            for name in _self_and_parents(layer)
        }
        missing = []
        if config.require_observed:
            missing = [
                {
                    "layer": layer,
                    "role": role,
                    "reason": "the layer's op cannot report its quantizations (not observable)"
                    if layer in self.unobservable
                    else "quantized per the preparation report but never observed",
                }
                for layer, role in self.expected
                if (layer, role) not in observed
            ]
        roles: dict[str, Any] = {}
        warnings = []
        for role in ROLES:
            mine = [t for t in tensors if t["role"] == role]
            missing_here = sum(1 for m in missing if m["role"] == role)
            failed = sum(1 for t in mine if t["status"] == "FAIL") + missing_here
            roles[role] = {
                "audited": role in config.roles,
                "status": ("FAIL" if failed else "PASS") if mine or missing_here else "NOT RUN",
                "tensors": len(mine),
                "failed_tensors": failed,
                "missing": missing_here,
                "elements": sum(t["elements"] for t in mine),
                "failed_elements": sum(
                    t["failures"].get("grid", 0) + t["failures"].get("reconstruction", 0)
                    for t in mine
                ),
                "nonfinite": {
                    kind: sum(t["nonfinite"][kind] for t in mine) for kind in ("nan", "inf")
                },
            }
            warning = _nonfinite_warning(role, roles[role], mine)
            if warning:
                warnings.append(warning)
        scale_failures = sum(t["failures"].get("scale", 0) for t in tensors)
        scales = {
            "status": ("FAIL" if scale_failures else "PASS") if tensors else "NOT RUN",
            "checked": sum(t["scales"] for t in tensors),
            "failed": scale_failures,
            "nan": sum(t["nan_scales"] for t in tensors),
        }
        failing = [t for t in tensors if t["status"] == "FAIL"]
        status = "FAIL" if failing or missing else ("PASS" if tensors else "NOT RUN")
        out = {
            "status": status,
            "config": config.as_dict(),
            "batches": self.batches,
            "roles": roles,
            "scales": scales,
            "missing": missing,
            "failures": failing,
            "tensors": tensors,
        }
        if warnings:
            out["warnings"] = warnings
        return out


def _nonfinite_warning(role: str, row: Mapping[str, Any], tensors: list[dict[str, Any]]) -> str:
    """One line for a role whose quantized values held NaN/inf ("" if none did)."""
    nan, inf = row["nonfinite"]["nan"], row["nonfinite"]["inf"]
    if not nan and not inf:
        return ""
    first = next(t["layer"] for t in tensors if t["nonfinite"]["nan"] or t["nonfinite"]["inf"])
    return (
        f"compliance: the quantized {role} values held {nan} NaN and {inf} inf of "
        f"{row['elements']} audited (first in layer {first!r}); they pass only in formats "
        f"that encode them, or as NaN blocks under a NaN scale"
    )
