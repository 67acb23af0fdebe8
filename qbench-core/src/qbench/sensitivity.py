"""Which layers break first, and the cheapest per-layer formats that stay within a budget.

``qbench sensitivity CONFIG`` quantizes one layer at a time (every other layer FP32) and ranks
the layers by what that alone does to the model's output: the first metric that declares a
``sweep_rank`` orders them (the accuracy metric: top-1 change, then output KL divergence,
then logit cosine). The single-layer configs run as one sweep (:mod:`qbench.sweep`), so
they share one FP32 reference, their results are saved, and a rerun reuses them (keyed by
their result keys, like any sweep).

``qbench mixed-precision CONFIG --budget B`` measures every layer in every format the config
lists (``sweep.grid.format``, or ``--formats``), then builds candidate assignments: for a
threshold t, each layer gets the cheapest format (fewest effective bits) whose single-layer
damage is at most t, else the most expensive one. Candidates for a spread of thresholds run
beside one FP32 reference; the one with the fewest effective bits per weight whose top-1 drop
is within B percentage points is written as a runnable config (per-layer overrides under
``quantization.layers``), and that file is run again to verify it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import QBenchError

#: How many thresholds (besides "everything cheapest") mixed-precision tries, at most.
CANDIDATES = 12


def quantized_layers(cfg: Config, fmt: str | None = None) -> list[str]:
    """The names of the modules ``cfg``'s quantization swaps (in ``fmt`` when given: a
    sweep's own section may name no format), in model order."""
    from .plugins import get
    from .preparation import preparation_report, prepare

    options = dict(cfg.data["model"])
    bundle = get("adapter", options["adapter"]).build(options, device="cpu")
    quantization = dict(cfg.data.get("quantization") or {})
    if fmt is not None:
        quantization["format"] = fmt
    twin = prepare(bundle.model.eval(), quantization)
    return [entry["name"] for entry in preparation_report(twin)["quantized"]]


def _literal(name: str) -> str:
    """A glob matching exactly ``name`` (``*?[`` taken literally)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def only_layer(cfg: Config, layer: str, fmt: str | None, suffix: str) -> Config:
    """``cfg`` with only ``layer`` quantized (in ``fmt`` when given), named ``<name>-<suffix>``
    and measuring accuracy only."""
    data = {k: copy.deepcopy(v) for k, v in cfg.data.items() if k != "sweep"}
    quantization = dict(data.get("quantization") or {})
    entry: dict[str, Any] = {"match": _literal(layer), "enabled": True}
    if fmt is not None:
        entry["format"] = fmt
    quantization["layers"] = [entry, *(quantization.get("layers") or [])]
    quantization["enabled"] = False
    data["quantization"] = quantization
    data["name"] = f"{cfg.name}-{suffix}"
    data["evaluation"] = {**(data.get("evaluation") or {}), "metrics": ["accuracy"]}
    data["output"] = {**data["output"], "reporters": ["json"]}
    return load_config(data, base=cfg.directory)


def _rank_key(row: Mapping[str, Any], rank: Sequence[str]) -> tuple[float, ...]:
    values = {c["key"].split(".", 1)[-1]: c["value"] for c in row.get("columns") or ()}
    key = []
    for column in rank:
        value = values.get(column.lstrip("-"))
        number = float(value) if isinstance(value, (int, float)) else math.nan
        if math.isnan(number):
            number = math.inf  # unknown: ranked last
        elif column.startswith("-"):
            number = -number
        key.append(number)
    return tuple(key)


def _sweep_rank() -> tuple[str, ...]:
    from .plugins import registry

    for _, metric in registry("metric").items():
        rank = getattr(metric, "sweep_rank", None)
        if rank:
            return tuple(rank)
    raise QBenchError("sensitivity: no installed metric ranks layers (sweep_rank)")


def sensitivity(
    cfg: Config,
    *,
    formats: Iterable[str | None] = (None,),
    limit: int | None = None,
    device: str | None = None,
    output: str | Path | None = None,
    force: bool = False,
    progress: Any = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Measure every quantized layer of ``cfg`` alone, in each of ``formats`` (None: the
    config's own). Returns ``{"name", "rank", "layers": [{"layer", "format", "rank",
    "columns": {key: value}, "effective_bits", "report"}...]}``, most damaging first per
    format, and writes it as ``sensitivity.json`` in the sweep's folder."""
    import json

    from .sweep import run_sweep

    formats = list(formats)
    layers = quantized_layers(cfg, formats[0])
    if not layers:
        raise QBenchError(f"{cfg.path or cfg.name}: no layer is quantized; nothing to rank")
    configs, which = [], {}
    for fmt in formats:
        for index, layer in enumerate(layers):
            suffix = f"{fmt}-{index:03d}" if fmt is not None else f"{index:03d}"
            single = only_layer(cfg, layer, fmt, f"only-{suffix}")
            configs.append(single)
            which[single.name] = (layer, fmt)
    title = name or f"{cfg.name}-sensitivity"
    result = run_sweep(
        configs,
        limit=limit,
        device=device,
        output=output,
        force=force,
        progress=progress,
        name=title,
    )
    rank = _sweep_rank()
    rows = []
    for row in result.summary["rows"]:
        layer, fmt = which[row["name"]]
        rows.append(
            {
                "layer": layer,
                "format": fmt or (cfg.data.get("quantization") or {}).get("format"),
                "columns": {c["key"].split(".", 1)[-1]: c["value"] for c in row["columns"]},
                "effective_bits": row.get("effective_bits"),
                "report": row.get("report"),
                "_key": _rank_key(row, rank),
            }
        )
    ordered = []
    for fmt in {r["format"]: None for r in rows}:
        same = sorted((r for r in rows if r["format"] == fmt), key=lambda r: r["_key"])
        for position, r in enumerate(same, start=1):
            r["rank"] = position
            ordered.append(r)
    for r in ordered:
        r["damage"] = r.pop("_key")
    out = {"name": title, "config": cfg.name, "rank": list(rank), "layers": ordered}
    path = result.out_dir / "sensitivity.json"
    path.write_text(json.dumps(out, indent=2, default=_json_default) + "\n", encoding="utf-8")
    out["path"] = str(path)
    return out


def _json_default(value: Any) -> Any:
    return str(value)


def mixed_precision(
    cfg: Config,
    *,
    budget: float,
    formats: Sequence[str] | None = None,
    limit: int | None = None,
    device: str | None = None,
    output: str | Path | None = None,
    force: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """The per-layer assignment of ``formats`` with the fewest effective bits per weight
    whose top-1 drop is at most ``budget`` percentage points (see the module docstring).
    Returns ``{"config": path of the written config, "assignment": {layer: format},
    "effective_bits", "top1_delta", "meets_budget", "verified": {...}}``."""
    import yaml

    from . import runner
    from .sweep import run_sweep

    formats = list(formats or ((cfg.data.get("sweep") or {}).get("grid") or {}).get("format") or [])
    if len(formats) < 2:
        raise QBenchError(
            f"{cfg.path or cfg.name}: mixed-precision needs at least two formats to choose "
            "from; allowed: sweep.grid.format in the config, or --formats a,b"
        )
    running = {"limit": limit, "device": device, "output": output, "progress": progress}
    measured = sensitivity(
        cfg, formats=formats, force=force, name=f"{cfg.name}-mixed-sensitivity", **running
    )
    bits = {fmt: _format_bits(cfg, fmt) for fmt in formats}
    cheapest_first = sorted(formats, key=lambda f: (bits[f], formats.index(f)))
    damage: dict[tuple[str, str], float] = {}
    for row in measured["layers"]:
        value = row["columns"].get("output_kl")
        drop = row["columns"].get("top1_delta")
        score = float(value) if isinstance(value, (int, float)) else math.inf
        if isinstance(drop, (int, float)) and drop < 0:
            score += -float(drop)  # a layer that alone costs top-1 is worse than its KL says
        damage[(row["layer"], row["format"])] = score
    layers = list(dict.fromkeys(row["layer"] for row in measured["layers"]))
    thresholds = sorted({v for v in damage.values() if math.isfinite(v)})
    if len(thresholds) > CANDIDATES:
        step = (len(thresholds) - 1) / (CANDIDATES - 1)
        thresholds = [thresholds[round(i * step)] for i in range(CANDIDATES)]
    assignments: list[dict[str, str]] = []
    for threshold in [math.inf, *sorted(thresholds, reverse=True), -1.0]:
        assignment = {}
        for layer in layers:
            chosen = next(
                (f for f in cheapest_first if damage.get((layer, f), math.inf) <= threshold),
                cheapest_first[-1],
            )
            assignment[layer] = chosen
        if assignment not in assignments:
            assignments.append(assignment)
    base = {k: copy.deepcopy(v) for k, v in cfg.data.items() if k != "sweep"}
    candidates = []
    for index, assignment in enumerate(assignments):
        candidates.append(_assigned(cfg, base, assignment, f"{cfg.name}-mixed-{index:02d}"))
    result = run_sweep(candidates, force=force, name=f"{cfg.name}-mixed-candidates", **running)
    scored = []
    for row, assignment, candidate in zip(
        result.summary["rows"], assignments, candidates, strict=True
    ):
        values = {c["key"].split(".", 1)[-1]: c["value"] for c in row["columns"]}
        drop = values.get("top1_delta")
        scored.append((row, assignment, candidate, drop))
    within = [s for s in scored if isinstance(s[3], (int, float)) and s[3] >= -budget]
    if within:  # the fewest bits within the budget; of equal bits, the smaller drop
        best = min(within, key=lambda s: (_or(s[0].get("effective_bits"), math.inf), -s[3]))
    else:  # none is: the one closest to it (reported as not meeting it)
        best = max(scored, key=lambda s: _or(s[3], -math.inf))
    row, assignment, candidate, drop = best
    root = Path(output) if output is not None else Path(cfg.data["output"]["dir"])
    root.mkdir(parents=True, exist_ok=True)
    written = root / f"{cfg.name}-mixed.yaml"
    final = copy.deepcopy(candidate.data)
    final["name"] = f"{cfg.name}-mixed"
    final["evaluation"] = copy.deepcopy(base.get("evaluation") or {})
    final["output"] = copy.deepcopy(base.get("output") or {})
    header = (
        f"# Written by qbench mixed-precision from {cfg.path or cfg.name}: per-layer formats "
        f"from {', '.join(formats)} with the fewest\n# effective bits per weight whose top-1 "
        f"drop stayed within {budget} percentage points on the evaluation data.\n"
    )
    written.write_text(header + yaml.safe_dump(final, sort_keys=False), encoding="utf-8")
    verified = runner.run(load_config(written), limit=limit, device=device, output=output)
    accuracy = verified.report["metrics"].get("accuracy") or {}
    verified_drop = 100.0 * float((accuracy.get("delta") or {}).get("top1", math.nan))
    coverage = verified.report["preparation"]["coverage"]
    return {
        "config": str(written),
        "assignment": assignment,
        "formats": formats,
        "budget": budget,
        "candidates": len(assignments),
        "effective_bits": row.get("effective_bits"),
        "top1_delta": drop,
        "meets_budget": bool(within),
        "verified": {
            "top1_delta": verified_drop,
            "effective_bits": coverage.get("weight_bits"),
            "meets_budget": verified_drop >= -budget,
            "report": str(verified.out_dir),
        },
        "sensitivity": measured["path"],
    }


def _or(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) else default


def _assigned(
    cfg: Config, base: Mapping[str, Any], assignment: Mapping[str, str], name: str
) -> Config:
    """``base`` with each layer in its assigned format: the most common format global, the
    others as per-layer overrides (before the config's own)."""
    data = copy.deepcopy(dict(base))
    quantization = dict(data.get("quantization") or {})
    counts: dict[str, int] = {}
    for fmt in assignment.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    common = max(counts, key=lambda f: counts[f])
    quantization["format"] = common
    overrides = [
        {"match": _literal(layer), "format": fmt}
        for layer, fmt in assignment.items()
        if fmt != common
    ]
    quantization["layers"] = [*overrides, *(quantization.get("layers") or [])]
    if not quantization["layers"]:
        del quantization["layers"]
    data["quantization"] = quantization
    data["name"] = name
    data["evaluation"] = {**(data.get("evaluation") or {}), "metrics": ["accuracy"]}
    data["output"] = {**data["output"], "reporters": ["json"]}
    return load_config(data, base=cfg.directory)


def _format_bits(cfg: Config, fmt: str) -> float:
    """Effective bits per element of ``fmt`` under ``cfg``'s weight scaling (for ordering)."""
    from .preparation import storage_bits
    from .spec import role_spec

    quantization = {**(cfg.data.get("quantization") or {}), "format": fmt}
    spec = role_spec(quantization, "weight")
    bits = storage_bits(spec, (1024, 1024)) if spec is not None else None
    return bits if bits is not None else math.inf
