"""What the audit records: per tensor (a :class:`TensorAudit` per layer and role, with its
examples of failing elements), and the per-role summary built from them (:func:`summarize`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import qbench
import torch
from qbench.types import ROLES, QuantResult

from .config import ComplianceConfig, self_and_parents
from .counting import _nonfinite, widened
from .tables import FormatTables, _legal_values, _ScaleCheck

CHECKS = ("grid", "reconstruction", "scale", "shape", "observed")


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

    def copy(self) -> TensorAudit:
        """An independent copy (its counts, formats and examples)."""
        return copy.deepcopy(self)

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
            "examples": copy.deepcopy(self.examples),
        }


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


def _first(mask: torch.Tensor, count: int) -> list[int]:
    """Flat indices of the first ``count`` set elements of ``mask``."""
    if count <= 0:
        return []
    return torch.nonzero(mask.reshape(-1))[:count, 0].tolist()


def _example(audit: TensorAudit, max_examples: int, **example: Any) -> None:
    """Keep one example of a failure, while ``audit`` holds fewer than ``max_examples``."""
    if len(audit.examples) < max_examples:
        audit.examples.append(example)


def detail_failures(
    audit: TensorAudit,
    result: QuantResult,
    element_name: str,
    max_examples: int,
    tables: FormatTables,
) -> tuple[int, int, int]:
    """Grid and reconstruction failures of ``result`` (elements of ``element_name``)
    counted from their masks, with examples; returns how many failed, and how many of
    the dequantized values are NaN and how many ±inf (not added to ``audit``)."""
    element = qbench.get_format(element_name)
    grid = tables.grid(element_name)
    codes, dequantized = result.codes, result.dequantized
    table = tables.table(element_name, element, codes)
    expanded = result.expand_scales()
    if table is not None:
        decoded, legal = table.lookup(codes)
    else:  # the format's own decode, on codes as wide as a format gives them
        decoded = element.decode(widened(codes))
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
        for i in _first(off_grid, max_examples - len(audit.examples)):
            value = float(decoded.reshape(-1)[i])
            _example(
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
        for i in _first(mismatch, max_examples - len(audit.examples)):
            used = float(dequantized.reshape(-1)[i])
            scale_value = scales_full.reshape(-1)[i]
            scale = float(scale_value)
            element_value = used / scale if scale else math.nan
            nearest: list[Any] = []
            if math.isfinite(element_value):
                # Products in the tensor's own arithmetic, as the quantizer computes them.
                neighbours = torch.tensor(grid.nearest(element_value), dtype=reconstructed.dtype)
                nearest = [_number(v) for v in (neighbours * scale_value.cpu()).tolist()]
            _example(
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


def scale_examples(
    audit: TensorAudit,
    scale_checks: list[_ScaleCheck],
    scale_counts: list[Any],
    max_examples: int,
    tables: FormatTables,
) -> None:
    """Examples of the illegal scales of each level that has some, nearest legal values
    beside them."""
    for check, count in zip(scale_checks, scale_counts, strict=True):
        if not count or len(audit.examples) >= max_examples:
            continue
        level, scale_format, values = check.level, check.scale_format, check.values
        bad = tables.scale_masks(check)[0]
        for i in _first(bad, max_examples - len(audit.examples)):
            value = float(values.reshape(-1)[i])
            nearest: list[Any] = []
            if tables.enumerable(scale_format) and math.isfinite(value):
                nearest = [_number(v) for v in tables.grid(scale_format).nearest(value)]
            elif scale_format == "e8m0" and math.isfinite(value) and value > 0:
                e = math.floor(math.log2(value))
                nearest = [2.0**e, 2.0 ** (e + 1)] if 2.0**e != value else [value]
            _example(
                audit,
                max_examples,
                check="scale",
                level=level,
                scale_format=scale_format,
                index=_unravel(i, tuple(values.shape)),
                value=_number(value),
                nearest=nearest,
            )


def summarize(
    audits: Iterable[TensorAudit],
    expected: Iterable[tuple[str, str]],
    unobservable: set[str],
    config: ComplianceConfig,
    batches: int,
) -> dict[str, Any]:
    """The audit's result: PASS/FAIL per role and overall, from the per-tensor records
    (read only), the (layer, role)s the preparation report expected, and the settings."""
    audits = list(audits)
    tensors = [audit.as_dict() for audit in audits]
    # A layer with several quantization points (attention: in_proj, q, k, v, softmax,
    # out_proj) reports them as "<layer>.<point>"; any of them observes the layer's role.
    observed = {
        (name, audit.role)
        for audit in audits
        if audit.observations or audit.skipped_observations
        for name in self_and_parents(audit.layer)
    }
    missing = []
    if config.require_observed:
        missing = [
            {
                "layer": layer,
                "role": role,
                "reason": "the layer's op cannot report its quantizations (not observable)"
                if layer in unobservable
                else "quantized per the preparation report but never observed",
            }
            for layer, role in expected
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
                t["failures"].get("grid", 0) + t["failures"].get("reconstruction", 0) for t in mine
            ),
            "nonfinite": {kind: sum(t["nonfinite"][kind] for t in mine) for kind in ("nan", "inf")},
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
        "batches": batches,
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
