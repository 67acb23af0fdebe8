"""From a config's ``quantization`` mapping to a :class:`QuantSpec` per tensor role and layer.

Precedence for a setting ``K`` (mode, chunk_size, axis, scale_format, scale_method) of role
``R`` (weight, input, act):

1. ``R_K`` (e.g. ``weight_mode``) when given;
2. the preset's own scaling when R's format is a block-scaled preset (``mxfp4_e2m1``) — unless
   R's format came from the global ``format`` key and ``K`` was also given globally;
3. the global ``K``;
4. the built-in default (``tensor``, absmax, fp32 scales).

Internal statistics (``stats``: BatchNorm running mean/var) follow the weight settings.
A per-layer override (``layers:``) is merged over the global mapping for the layers it
matches, first match wins.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from .errors import QBenchError
from .types import LayerSpecs, QuantSpec, Scaling

SCALING_KEYS = ("mode", "chunk_size", "axis", "scale_format", "scale_method", "percentile")
CONFIG_ROLES = ("weight", "input", "act")


def _format_object(name: str) -> Any:
    from .plugins import get

    return get("format", name)


def role_spec(q: Mapping[str, Any], role: str) -> QuantSpec | None:
    """The QuantSpec of one role (``weight``/``input``/``act``/``stats``) or None if disabled."""
    source_role = "weight" if role == "stats" else role
    if q.get("enabled", True) is False or q.get(f"{source_role}_enabled", True) is False:
        return None
    if role == "stats" and q.get("stats_enabled", True) is False:
        return None
    role_format = q.get(f"{source_role}_format")
    fmt_name = role_format if role_format is not None else q.get("format")
    if fmt_name is None:
        return None
    fmt = _format_object(fmt_name)
    preset = getattr(fmt, "default_scaling", None)
    scaling = Scaling() if preset is None else preset
    explicit: dict[str, Any] = {}
    for key in SCALING_KEYS:
        role_value = q.get(f"{source_role}_{key}")
        if role_value is not None:
            explicit[key] = role_value
        elif q.get(key) is not None and (preset is None or role_format is None):
            explicit[key] = q[key]
    scaling = scaling.replace(**explicit)
    if scaling.mode == "chunk" and scaling.chunk_size is None:
        raise QBenchError(
            f"quantization.{source_role}_chunk_size: mode 'chunk' needs a chunk_size "
            f"(for {source_role}s of format {fmt_name!r})"
        )
    return QuantSpec(
        format=fmt_name,
        scaling=scaling,
        rounding=q.get(f"{source_role}_rounding") or q.get("rounding") or "nearest_even",
        overflow=q.get("overflow") or "saturate",
    )


def layer_override(
    q: Mapping[str, Any], name: str, module: Any
) -> tuple[int, Mapping[str, Any]] | None:
    """The first ``layers:`` entry matching a module (by name glob and/or type), with its index."""
    for index, entry in enumerate(q.get("layers") or ()):
        if override_matches(entry, name, module):
            return index, entry
    return None


def override_matches(entry: Mapping[str, Any], name: str, module: Any) -> bool:
    pattern = entry.get("match")
    type_name = entry.get("type")
    if pattern is None and type_name is None:
        return False
    if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
        return False
    if type_name is not None:
        names = {cls.__name__ for cls in type(module).__mro__} | {
            f"{cls.__module__}.{cls.__name__}" for cls in type(module).__mro__
        }
        if type_name not in names:
            return False
    return True


def layer_specs(q: Mapping[str, Any], name: str = "", module: Any = None) -> LayerSpecs:
    """Resolve every role of one layer, applying the first matching per-layer override."""
    merged = dict(q)
    hit = layer_override(q, name, module) if module is not None or name else None
    if hit is not None:
        _, entry = hit
        merged.update({k: v for k, v in entry.items() if k not in ("match", "type")})
    if merged.get("enabled", True) is False:
        return LayerSpecs()
    return LayerSpecs(
        **{role: role_spec(merged, role) for role in ("weight", "input", "act", "stats")}
    )


def spec_from_arguments(fmt_name: str, **overrides: Any) -> QuantSpec:
    """The spec behind ``qbench.quantize(x, fmt_name, mode=..., ...)``: preset scaling, then
    explicit arguments; ``mode`` defaults to ``tensor`` for plain element formats."""
    fmt = _format_object(fmt_name)
    preset = getattr(fmt, "default_scaling", None)
    scaling = Scaling() if preset is None else preset
    scaling = scaling.replace(**{k: overrides.get(k) for k in (*SCALING_KEYS, "second_level")})
    if scaling.mode == "chunk" and scaling.chunk_size is None:
        raise QBenchError("mode 'chunk' needs a chunk_size")
    return QuantSpec(
        format=fmt_name,
        scaling=scaling,
        rounding=overrides.get("rounding") or "nearest_even",
        overflow=overrides.get("overflow") or "saturate",
    )
