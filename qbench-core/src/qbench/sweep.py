"""Sweeps: many configs of one model and dataset, one FP32 reference.

``qbench run a.yaml b.yaml`` and a config with a ``sweep:`` section (its ``grid`` lists
expand to the product of configs, less ``exclude``) run as one sweep:

- Configs that agree on the model, the data, the device, the layout and the seed
  (:func:`qbench.runner.reference_key`) share one FP32 model: each batch's FP32 forward runs
  once, then every twin of the group runs on it (``sweep.parallel`` twins at a time). A sweep
  of N configs costs one FP32 pass per ``parallel`` twins, not N.
- Each config's reports are written as one set as it finishes (``qbench.output``) and carry
  a ``result_key``: a hash of the resolved config, the versions, the weights and the data.
  Running the same sweep again skips every config whose report holds its key (``--force``
  recomputes); a sweep killed mid-run loses only the configs in flight.
- The sweep report (``sweep.json``, ``sweep.txt``, ``sweep.html``... by the reporters that
  write sweeps) has one row per config: each metric's columns (``Metric.sweep_columns``), the
  audit verdict, the effective bits per weight element (``qbench.preparation.storage_bits``),
  and the Pareto front of quality against bits. It is rewritten after every group and says
  ``complete: false`` with the configs still pending until the last one is done.

``qbench compare REPORT...`` builds the same table from finished reports.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import ConfigError, QBenchError
from .output import safe_part
from .version import __version__

#: Top-level keys a grid key may start with (anything else is a ``quantization`` key).
_TOP_LEVEL = ("model", "dataset", "quantization", "evaluation", "device", "memory_format", "seed")
#: Keys a sweep cannot vary: they name or place the results.
_FIXED = ("name", "output", "sweep")
#: Most configs one grid may expand to (before exclusions): each is validated and run, and a
#: few lines of YAML can ask for 10^10.
MAX_CONFIGS = 1000


# ------------------------------------------------------------------------ expansion


def grid_path(key: str) -> tuple[str, ...]:
    """Where a grid key points in a config: ``format`` -> quantization.format,
    ``quantization.weight_mode`` and ``seed`` as written."""
    parts = tuple(key.split("."))
    if parts[0] in _FIXED:
        raise QBenchError(
            f"sweep.grid.{key}: {parts[0]!r} cannot be swept; allowed: quantization keys "
            f"(format, mode, ...) or paths under {', '.join(_TOP_LEVEL)}"
        )
    return parts if parts[0] in _TOP_LEVEL else ("quantization", *parts)


def label(value: Any) -> str:
    """A grid value as it appears in a config's name: a mapping by its values joined."""
    if isinstance(value, Mapping):
        return "-".join(label(v) for v in value.values())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def expand(cfg: Config) -> list[tuple[Config, dict[str, str]]]:
    """``cfg`` itself (no ``sweep:``), or every config of its grid less the exclusions, in
    grid order, each validated, with its variant (grid key -> label). The configs are named
    ``<name>-<label>-<label>``. An empty grid, an exclusion naming a key or value the grid
    does not have, or a combination the schema refuses is a one-line error naming it."""
    sweep = cfg.data.get("sweep")
    if not sweep:
        return [(cfg, {})]
    where = f"{cfg.path or cfg.name}: sweep"
    grid: dict[str, list[Any]] = dict(sweep["grid"])
    paths = {key: grid_path(key) for key in grid}
    for key, values in grid.items():
        labels = [label(v) for v in values]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise QBenchError(
                f"{where}.grid.{key}: {', '.join(repeated)} appears more than once; "
                "allowed: distinct values"
            )
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > MAX_CONFIGS:
        raise QBenchError(
            f"{where}.grid: {' x '.join(str(len(v)) for v in grid.values())} = {size} "
            f"combinations; allowed: at most {MAX_CONFIGS} configs in one sweep (split it)"
        )
    exclusions = [dict(e) for e in sweep.get("exclude") or ()]
    for index, exclusion in enumerate(exclusions):
        for key, value in exclusion.items():
            if key not in grid:
                raise QBenchError(
                    f"{where}.exclude[{index}]: {key!r} is not a grid key; allowed: "
                    f"{', '.join(grid)}"
                )
            if label(value) not in {label(v) for v in grid[key]}:
                raise QBenchError(
                    f"{where}.exclude[{index}].{key}: {label(value)!r} is not among the "
                    f"grid's values ({', '.join(label(v) for v in grid[key])}); the exclusion "
                    "can never match"
                )
    base = {k: v for k, v in cfg.data.items() if k != "sweep"}
    out: list[tuple[Config, dict[str, str]]] = []
    for combination in itertools.product(*grid.values()):
        chosen = dict(zip(grid, combination, strict=True))
        variant = {key: label(value) for key, value in chosen.items()}
        if any(
            all(variant[key] == label(value) for key, value in exclusion.items())
            for exclusion in exclusions
        ):
            continue
        data = copy.deepcopy(base)
        for key, value in chosen.items():
            _put(data, paths[key], copy.deepcopy(value))
        # a value may hold characters a name may not (a path, a space): made safe for the name
        data["name"] = "-".join([cfg.name, *(safe_part(v) for v in variant.values())])
        try:
            variant_cfg = load_config(data, base=cfg.directory)
        except ConfigError as exc:
            shown = ", ".join(f"{k}: {v}" for k, v in variant.items())
            first = exc.problems[0].split(": ", 1)[-1] if exc.problems else str(exc)
            raise QBenchError(
                f"{where}: the combination {{{shown}}} is not a valid config ({first}); "
                "allowed: combinations the schema accepts (leave this one out with "
                "sweep.exclude)"
            ) from None
        variant_cfg.path = None
        out.append((variant_cfg, variant))
    if not out:
        raise QBenchError(
            f"{where}: the grid has no combination left after sweep.exclude; allowed: a grid "
            "with at least one config"
        )
    return out


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    holder = data
    for part in path[:-1]:
        child = holder.get(part)
        if not isinstance(child, dict):
            child = holder[part] = {}
        holder = child
    last = path[-1]
    if isinstance(value, Mapping) and isinstance(holder.get(last), dict):
        holder[last] = {**holder[last], **value}
    else:
        holder[last] = value


# ------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    """What a sweep produced: its summary mapping, the per-config reports, the files."""

    summary: dict[str, Any]
    reports: list[dict[str, Any]]
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    reference_passes: int = 0

    @property
    def failed(self) -> list[str]:
        return [row["name"] for row in self.summary["rows"] if row.get("audit") == "FAIL"]


def run_sweep(
    configs: Sequence[Config],
    *,
    limit: int | None = None,
    device: str | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: Callable[[Iterable[Any], int | None, str], Iterable[Any]] | None = None,
    overwrite: bool = False,
    force: bool = False,
    name: str | None = None,
    on_result: Callable[[Any, str], None] | None = None,
) -> SweepResult:
    """Run ``configs`` (each expanded by :func:`expand`) as one sweep (see the module
    docstring). ``on_result`` is called with each config's :class:`~qbench.runner.RunResult`
    and ``"done"`` as it is written, or ``"skipped"`` when a finished one is reused."""
    from . import runner

    entries: list[tuple[Config, dict[str, str]]] = []
    parallel: dict[str, int] = {}  # a config's sweep.parallel, kept by the configs it made
    for cfg in configs:
        for variant_cfg, variant in expand(cfg):
            entries.append((variant_cfg, variant))
            parallel[variant_cfg.name] = int((cfg.data.get("sweep") or {}).get("parallel", 8))
    names = [cfg.name for cfg, _ in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise QBenchError(
            f"sweep: more than one config is named {', '.join(twice)}; allowed: distinct "
            "names (their reports would overwrite each other)"
        )
    sweep_name = name or (configs[0].name if len(configs) == 1 else "sweep")
    root = Path(output) if output is not None else Path(entries[0][0].data["output"]["dir"])
    groups: dict[str, list[tuple[Config, dict[str, str]]]] = {}
    for cfg, variant in entries:
        groups.setdefault(runner.reference_key(cfg, limit, device), []).append((cfg, variant))
    rows: dict[str, dict[str, Any]] = {
        cfg.name: {"name": cfg.name, "variant": variant, "status": "pending"}
        for cfg, variant in entries
    }
    reports: dict[str, dict[str, Any]] = {}
    summary_dir = root / safe_part(sweep_name)
    passes = 0
    written: tuple[dict[str, Any], list[Path]] | None = None  # the last sweep report set

    def record(result: Any, status: str) -> None:
        nonlocal written
        written = None
        reports[result.report["name"]] = result.report
        rows[result.report["name"]] = {
            **rows[result.report["name"]],
            **summary_row(result.report, result.out_dir / "report.json"),
            "status": status,
        }
        if on_result is not None:
            on_result(result, status)

    for members in groups.values():
        reference = runner.build_reference(members[0][0], limit=limit, device=device)
        twins = []
        for cfg, variant in members:
            extra = {"sweep": {"name": sweep_name, "variant": variant}} if variant else {}
            twin = runner.plan_twin(reference, cfg, output=output, overwrite=overwrite, extra=extra)
            finished = None if force else runner.load_finished(twin)
            if finished is not None:
                record(finished, "skipped")
            else:
                twins.append(twin)
        width = max(min(parallel[cfg.name] for cfg, _ in members), 1)
        for start in range(0, len(twins), width):
            chunk = twins[start : start + width]
            label_text = f"{sweep_name} ({start + 1}-{start + len(chunk)} of {len(twins)})"
            for result in runner.run_twins(reference, chunk, progress=progress, label=label_text):
                record(result, "done")
            passes += 1
            written = write_summary(summary_dir, sweep_name, list(rows.values()), passes, entries)
        del reference
    if written is None:  # configs skipped since the last write (or none ran)
        written = write_summary(summary_dir, sweep_name, list(rows.values()), passes, entries)
    summary, files = written
    ordered = [reports[cfg.name] for cfg, _ in entries if cfg.name in reports]
    return SweepResult(summary, ordered, summary_dir, files, passes)


# -------------------------------------------------------------------------- summary


def summary_row(report: Mapping[str, Any], path: Path | None = None) -> dict[str, Any]:
    """One row of a sweep table from a finished report: each metric's columns
    (``sweep_columns``) and per-layer values (``sweep_layers``), the audit verdict (any
    metric's ``status``), the effective bits per weight element and the coverage."""
    from .plugins import registry

    metrics = registry("metric")
    coverage = (report.get("preparation") or {}).get("coverage") or {}
    row: dict[str, Any] = {
        "name": report.get("name"),
        "model": report.get("model"),
        "images": (report.get("dataset") or {}).get("images"),
        "effective_bits": _number(coverage.get("weight_bits")),
        "weight_share": _number(coverage.get("weight_share")),
        "columns": [],
        "layers": {},
        "result_key": report.get("result_key"),
        "report": str(path) if path is not None else None,
    }
    variant = (report.get("sweep") or {}).get("variant")
    if variant:
        row["variant"] = dict(variant)
    verdicts = []
    for metric_name, result in (report.get("metrics") or {}).items():
        if not isinstance(result, Mapping):
            continue
        if "status" in result:
            verdicts.append(str(result["status"]))
        component = metrics.get(metric_name) if metric_name in metrics.names() else None
        columns = getattr(component, "sweep_columns", None)
        if callable(columns):
            for key, text, value in columns(result):
                row["columns"].append(
                    {"key": f"{metric_name}.{key}", "label": text, "value": _number(value)}
                )
        layers = getattr(component, "sweep_layers", None)
        if callable(layers):
            row["layers"].update({k: _number(v) for k, v in layers(result).items()})
        quality = getattr(component, "sweep_quality", None)
        if isinstance(quality, str) and "quality" not in row:
            row["quality"] = f"{metric_name}.{quality}"
    row["audit"] = "FAIL" if "FAIL" in verdicts else (verdicts[0] if verdicts else None)
    return row


def _number(value: Any) -> Any:
    """A float read back from JSON, where NaN and infinities are strings."""
    if isinstance(value, str) and value in ("NaN", "nan", "Infinity", "-Infinity", "inf", "-inf"):
        return float(value.replace("Infinity", "inf"))
    return value


def summarize(
    name: str,
    rows: list[dict[str, Any]],
    reference_passes: int | None = None,
    configs: int | None = None,
) -> dict[str, Any]:
    """The sweep mapping the sweep reporters write: the rows, the quality column (the first
    metric's ``sweep_quality``, higher is better) and which rows are on the Pareto front of
    quality against effective bits (no other row has at least the quality with at most the
    bits, one of them strictly)."""
    pending = [row["name"] for row in rows if row.get("status") == "pending"]
    quality = next((row["quality"] for row in rows if row.get("quality")), None)
    for row in rows:
        row["pareto"] = False
    points = []
    for row in rows:
        value = _column(row, quality)
        bits = row.get("effective_bits")
        if isinstance(value, (int, float)) and isinstance(bits, (int, float)) and value == value:
            points.append((row, float(bits), float(value)))
    for row, bits, value in points:
        row["pareto"] = not any(
            (b <= bits and v >= value) and (b < bits or v > value) for _, b, v in points
        )
    columns: list[dict[str, str]] = []
    for row in rows:
        for column in row.get("columns") or ():
            if column["key"] not in {c["key"] for c in columns}:
                columns.append({"key": column["key"], "label": column["label"]})
    return {
        "qbench_version": __version__,
        "name": name,
        "complete": not pending,
        "configs": configs if configs is not None else len(rows),
        "finished": len(rows) - len(pending),
        "pending": pending,
        "reference_passes": reference_passes,
        "quality": quality,
        "columns": columns,
        "rows": rows,
    }


def _column(row: Mapping[str, Any], key: str | None) -> Any:
    for column in row.get("columns") or ():
        if column["key"] == key:
            return column["value"]
    return None


def write_summary(
    out_dir: Path,
    name: str,
    rows: list[dict[str, Any]],
    passes: int | None,
    entries: Sequence[Any] | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Write the sweep mapping with every installed reporter that writes sweeps
    (``write_sweep``), as one set (``qbench.output.write_report_set``). Returns the mapping
    and the files."""
    from .output import Location, write_report_set
    from .plugins import registry

    summary = summarize(name, copy.deepcopy(rows), passes, len(entries) if entries else None)
    reporters = registry("reporter")
    writers = []
    for reporter_name, reporter in reporters.items():
        if callable(getattr(reporter, "write_sweep", None)):
            writers.append(
                (reporter_name, _SweepWriter(reporter), reporters.plugin_of(reporter_name).label)
            )
    if not writers:
        writers.append(("json", _SweepWriter(None), "qbench-core"))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return summary, write_report_set(Location(out_dir), summary, writers)


class _SweepWriter:
    """A reporter's ``write_sweep`` as the ``write`` a report set calls (plain JSON when no
    reporter writes sweeps)."""

    def __init__(self, reporter: Any) -> None:
        self.reporter = reporter

    def write(self, summary: Mapping[str, Any], folder: Path) -> list[Path]:
        if self.reporter is not None:
            return list(self.reporter.write_sweep(summary, folder))
        path = Path(folder) / "sweep.json"
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        return [path]


def compare(paths: Sequence[str | os.PathLike[str]], name: str = "compare") -> dict[str, Any]:
    """The sweep table of finished reports (``report.json`` files, or folders holding one,
    searched recursively): what ``qbench compare`` prints and writes."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found.extend(sorted(path.rglob("report.json")))
        elif path.is_file():
            found.append(path)
        else:
            raise QBenchError(
                f"compare: {path} does not exist; allowed: report.json files or folders"
            )
    if not found:
        raise QBenchError(
            f"compare: no report.json under {', '.join(str(p) for p in paths)}; allowed: "
            "reports written by qbench run"
        )
    rows = []
    for path in found:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(report, dict) or "metrics" not in report:
                raise ValueError("no metrics")
        except (OSError, ValueError) as exc:
            raise QBenchError(
                f"compare: {path} is not a QBench report ({type(exc).__name__}: {exc}); "
                "allowed: report.json written by qbench run"
            ) from None
        rows.append({**summary_row(report, path), "status": "done"})
    return summarize(name, rows)
