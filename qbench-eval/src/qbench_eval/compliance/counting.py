"""The counting kernels of the audit: how many codes are illegal, how many values differ
from their reconstruction, how many values used are NaN or ±inf, over a whole tensor.

Each kernel is one elementwise pass that only counts, run through :func:`qbench.kernels.fused`
(compiled as one loop for large tensors, eager otherwise, with identical counts). Tensors are
viewed without copies: coalesced dimensions (:func:`_rows`), chunks split against their
scales (:func:`_grouped_parts`), and per-row counts packed two to an int32 (:func:`_tally`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from qbench.kernels import in_memory_order
from qbench.types import QuantResult

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


def widened(codes: torch.Tensor) -> torch.Tensor:
    """``codes`` as int32 where they come narrower (the ops hand observers uint8/int8/int16
    codes on the CPU), else as they are: compared as uint8, ``code >= 256`` wraps to
    ``code >= 0``; ``index_select`` and a format's ``decode`` expect int32 or int64. Wide
    codes stay wide, so an int64 code beyond int32 is still seen as illegal."""
    return codes if codes.element_size() >= 4 else codes.to(torch.int32)


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
    fields = decode_numbers(bits, exponent_bits, mantissa_bits, bias)
    return _decode(codes, fields, specials)


def decode_numbers(bits: int, exponent_bits: int, mantissa_bits: int, bias: int) -> tuple:
    """What :func:`_decode` reads of a format (each derived once here, so that a compiled
    kernel reading them at run time does no arithmetic on them per element): the code mask,
    the sign bit, the magnitude mask, the bias change (127 - bias) << m, the shift 23 - m
    into float32's fields, the smallest normal code 2^m and the subnormal step
    2^(1 - bias - m) (a float)."""
    del exponent_bits  # the sign bit's place says it: 1 + exponent bits + m == bits
    sign_bit = 1 << (bits - 1)
    return (
        (1 << bits) - 1,
        sign_bit,
        sign_bit - 1,
        (127 - bias) << mantissa_bits,
        23 - mantissa_bits,
        1 << mantissa_bits,
        2.0 ** (1 - bias - mantissa_bits),
    )


#: float32's sign bit as an int32
_SIGN = -(1 << 31)


def _decode(
    codes: torch.Tensor, fields: tuple[Any, ...], specials: tuple[tuple[Any, int], ...]
) -> torch.Tensor:
    """:func:`_decode_bits` from :func:`decode_numbers`: ints, or inside a compiled kernel
    0-dim tensors read at run time (one kernel for every such format,
    :func:`_audit_rows_bits`); the same bits either way."""
    code_mask, sign_bit, magnitude_mask, rebias, shift, min_normal_code, step = fields
    wide = codes.to(torch.int32)
    c = wide & code_mask
    negative = c >= sign_bit
    magnitude = c & magnitude_mask
    normal = (magnitude + rebias) << shift
    normal = torch.where(negative, normal | _SIGN, normal).view(torch.float32)
    subnormal = magnitude.to(torch.float32) * step
    subnormal = torch.where(negative, -subnormal, subnormal)
    value = torch.where(magnitude < min_normal_code, subnormal, normal)
    for code, kind in specials:
        value = torch.where(c == code, math.inf * kind if kind else math.nan, value)
    return torch.where(c == wide, value, math.nan)


def _audit_rows_bits(
    codes: torch.Tensor,
    dequantized: torch.Tensor,
    scales: torch.Tensor,
    kinds: tuple[int, ...],
    row_dims: int,
    *,
    numbers: tuple[Any, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_audit_rows` with the codes decoded from their bit fields (_BitFields):
    ``numbers`` are (the lowest and one past the highest legal code, :func:`decode_numbers`,
    one code per special value), ``kinds`` what each special code is (0 NaN, +1 +inf, -1
    -inf)."""
    low, high = numbers[0], numbers[1]
    wide = widened(codes)
    illegal = ((wide < low) | (wide >= high)) & (scales == scales)
    specials = tuple(zip(numbers[9:], kinds))
    reconstructed = _decode(codes, numbers[2:9], specials) * scales
    return _totals(
        _tally(illegal, _mismatch(reconstructed, dequantized), row_dims),
        _tally(*_nonfinite(dequantized, scales), row_dims),
        row_dims,
    )


def _mismatch(reconstructed: torch.Tensor, dequantized: torch.Tensor) -> torch.Tensor:
    """Elementwise ``reconstructed != dequantized``, NaN matching NaN (x == x is the NaN test
    that inductor vectorizes; isnan it does element by element)."""
    not_both_nan = (reconstructed == reconstructed) | (dequantized == dequantized)
    return (reconstructed != dequantized) & not_both_nan


def _nonfinite(
    dequantized: torch.Tensor, scales: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise (NaN, ±inf) masks of the values the layer used (x != x is the NaN test
    that inductor vectorizes).

    ``scales`` (broadcasting against ``dequantized``) changes no mask: each is and-ed with
    ``(s == s) | (s != s)``, true everywhere. It is there for the compiled kernels, so that
    these masks index the scales like the reconstruction checks beside them, and inductor
    counts both in one loop. Without it, it merges the dimensions of the contiguous values
    into a loop of their own and reads them twice. Alone on a quiet machine the second read
    comes from the cache and costs little (``benchmarks/metric_kernels.py``); inside a run it
    does not: resnet18's ``run_overhead.py`` read 2.93-3.05 with it, 2.48-2.57 without (A/B,
    2-core VM; benchmarks/README.md)."""
    nan, inf = dequantized != dequantized, dequantized.abs() == math.inf
    if scales is None:
        return nan, inf
    everywhere = (scales == scales) | (scales != scales)
    return nan & everywhere, inf & everywhere


def _tally(illegal: torch.Tensor, mismatch: torch.Tensor, row_dims: int) -> torch.Tensor:
    """Per row (the last ``row_dims`` dimensions, at most _MAX_ROW elements), illegal +
    mismatches * 2^16 as int32; with ``row_dims`` 0 the two int64 totals."""
    if row_dims:
        both = illegal.to(torch.int32) + (mismatch.to(torch.int32) << _PACK_SHIFT)
        return both.sum(dim=tuple(range(-row_dims, 0)), dtype=torch.int32)
    return torch.stack([illegal.sum(), mismatch.sum()])


def _totals(checks: torch.Tensor, nonfinite: torch.Tensor, row_dims: int) -> torch.Tensor:
    """[illegal, mismatches, NaN, ±inf] as int64 totals, from two :func:`_tally` results.

    Inside the audit's kernel, so that its compiled graph ends in the four totals: summed
    after it, the packed per-row counts took nine eager ops (masks, shifts, sums, a stack)
    an audited tensor, each a dispatch (a launch on a GPU). In the graph they are two small
    loops after the one that reads the tensors: the count took 5-11% less time at every
    size measured, 4x16x2x2 to 16x64x56x56 (A/B in one process, benchmarks/README.md)."""
    if not row_dims:
        return torch.cat([checks, nonfinite])
    return torch.stack(
        [
            (checks & _LOW_MASK).sum(),
            (checks >> _PACK_SHIFT).sum(),
            (nonfinite & _LOW_MASK).sum(),
            (nonfinite >> _PACK_SHIFT).sum(),
        ]
    )


def _grouped_parts(
    result: QuantResult,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """(codes, dequantized, scales) views whose shapes broadcast, in one part or two whose
    counts add up, without materializing ``expand_scales()`` (a full-size tensor, and a
    gather to multiply by); None where the layout is not plain.

    Scales of another rank (tensor and channel modes) go through ``expand_scales()``, a
    reshaped view there; scales of the codes' rank whose sizes are 1 or the codes' broadcast
    as they are (chunk mode with one block per row). Chunks of ``c`` along an axis of length
    ``L = blocks * c`` become a (blocks, c) split of that axis against scales of (blocks, 1);
    with a short last block (144 channels by 128), the full blocks are that split of the
    axis's first ``(blocks - 1) * c`` elements and the short block a second part against its
    one scale.
    """
    codes, dequantized = result.codes, result.dequantized
    scales = result.scales
    if scales.dim() != codes.dim():  # tensor and channel modes: expanded is a reshaped view
        return [in_memory_order(codes, dequantized, result.expand_scales())]
    # Counts do not depend on the order of elements: all three are read in the codes' memory
    # order, so a channels-last activation chunked along its channels is a last-axis layout.
    codes, dequantized, scales = in_memory_order(codes, dequantized, scales)
    differing = [a for a in range(codes.dim()) if scales.shape[a] not in (1, codes.shape[a])]
    if not differing:
        return [(codes, dequantized, scales)]
    scaling = result.spec.scaling
    if len(differing) != 1 or scaling.mode != "chunk" or scaling.chunk_size is None:
        return None
    axis = differing[0]
    length, blocks = codes.shape[axis], scales.shape[axis]
    chunk = min(int(scaling.chunk_size), length)
    full = length // chunk
    covered = full * chunk == length
    if (full, covered) not in ((blocks, True), (blocks - 1, False)):
        return None  # not blocks of ``chunk`` and at most one short one
    parts = [
        (
            codes.narrow(axis, 0, full * chunk).unflatten(axis, (full, chunk)),
            dequantized.narrow(axis, 0, full * chunk).unflatten(axis, (full, chunk)),
            scales.narrow(axis, 0, full).unsqueeze(axis + 1),
        )
    ]
    if full < blocks:  # the short last block, against its one scale
        rest = length - full * chunk
        parts.append(
            (
                codes.narrow(axis, full * chunk, rest),
                dequantized.narrow(axis, full * chunk, rest),
                scales.narrow(axis, full, 1),
            )
        )
    return parts


def _audit_rows(
    codes: torch.Tensor,
    dequantized: torch.Tensor,
    scales: torch.Tensor,
    values: torch.Tensor,
    legal: torch.Tensor,
    row_dims: int,
    *,
    numbers: tuple[Any, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many codes are illegal (a code under a NaN scale is NaN whatever it is: never
    illegal), and how many ``decode(code) * scale`` differ from the dequantized value the
    layer used (NaN matching NaN); then how many values the layer used are NaN and how many
    ±inf: four int64 totals, counted per row packed (:func:`_tally`) or, with ``row_dims``
    0, directly (:func:`_totals`). ``numbers``: the table's (offset, last slot)
    (:class:`~.tables._CodeTable`)."""
    offset, last = numbers
    index = (codes.to(torch.int64) + offset).clamp(min=0).clamp(max=last)
    reconstructed = values[index] * scales
    illegal = ~legal[index] & (scales == scales)
    return _totals(
        _tally(illegal, _mismatch(reconstructed, dequantized), row_dims),
        _tally(*_nonfinite(dequantized, scales), row_dims),
        row_dims,
    )
