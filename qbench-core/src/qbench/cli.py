"""The ``qbench`` command line (DESIGN.md §7).

User errors exit with status 2 and one line per problem, no traceback (``--debug`` shows it).
torch and the plugins are imported only inside the commands that need them, so
``qbench --help`` answers at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .errors import ConfigError, QBenchError

EXIT_USER_ERROR = 2
#: ``qbench run`` finished and wrote its reports, and a check (the audit) said FAIL.
EXIT_CHECK_FAILED = 3


class _State:
    debug = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="qbench-core", prog_name="qbench")
def cli(debug: bool) -> None:
    """QBench: what a low-precision number format does to a PyTorch model."""
    _State.debug = debug


# ----------------------------------------------------------------------------- run


@cli.command()
@click.argument("configs", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Evaluate at most N images."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="Override the config's device.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report root (default: the config's output.dir).",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a report of another run (other model or data) in the report folder.",
)
@click.option(
    "--fail-on-audit/--no-fail-on-audit",
    default=True,
    help=f"Exit {EXIT_CHECK_FAILED} when a run's audit (any metric's verdict) is FAIL "
    "(default); --no-fail-on-audit exits 0 for exploratory runs.",
)
@click.option(
    "--reproduce",
    "reproduce_report",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Rerun the run a report.json records (its provenance) and say whether the numbers "
    "match (exit 3 if not); the new reports go to --output or a new temporary folder.",
)
@click.option(
    "--force",
    is_flag=True,
    help="In a sweep (several configs, or a config with sweep:), recompute configs whose "
    "finished report holds the same result (same resolved config, versions, weights and "
    "data), which are skipped by default.",
)
def run(
    configs: tuple[Path, ...],
    limit: int | None,
    device: str | None,
    output: Path | None,
    progress: bool,
    overwrite: bool,
    fail_on_audit: bool,
    reproduce_report: Path | None,
    force: bool,
) -> None:
    """Run CONFIG(s): FP32 and quantized model side by side, then write the reports.

    Exit status: 0 when every run passed its checks, 2 for bad input (nothing or only the
    runs before it were done), 3 when the runs finished and an audit said FAIL (or, with
    --reproduce, the numbers differ)."""
    from .config import load_config
    from .memory import keep_freed_memory
    from .runner import run as run_config

    if reproduce_report is not None:
        if configs:
            raise QBenchError("--reproduce takes a report.json, not configs; give one or the other")
        _reproduce(reproduce_report, output, progress)
        return
    if not configs:
        raise QBenchError("qbench run needs at least one CONFIG (or --reproduce report.json)")
    loaded = [load_config(path) for path in configs]  # refuse any invalid config before running one
    keep_freed_memory()  # this process is ours: freed activations are reused, not re-faulted
    if len(loaded) > 1 or any(cfg.data.get("sweep") for cfg in loaded):
        _sweep(loaded, limit, device, output, progress, overwrite, force, fail_on_audit)
        return
    (cfg,) = loaded
    result = run_config(
        cfg,
        limit=limit,
        device=device,
        output=output,
        progress=_progress_bar if progress else None,
        overwrite=overwrite,
    )
    _print_summary(result)
    if result.failed and fail_on_audit:
        _exit_failed([f"{cfg.name} ({', '.join(result.failed)})"])


def _exit_failed(failed: list[str]) -> None:
    """Exit 3 naming what said FAIL (the reports were written)."""
    click.echo(
        f"qbench: FAIL: {'; '.join(failed)} said FAIL; reports were written "
        f"(exit {EXIT_CHECK_FAILED}; --no-fail-on-audit exits 0)",
        err=True,
    )
    raise click.exceptions.Exit(EXIT_CHECK_FAILED)


def _sweep(
    loaded: list[Any],
    limit: int | None,
    device: str | None,
    output: Path | None,
    progress: bool,
    overwrite: bool,
    force: bool,
    fail_on_audit: bool,
) -> None:
    from .sweep import run_sweep

    def finished(result: Any, status: str) -> None:
        how = "skipped (finished before: same result key; --force recomputes)"
        click.echo(
            f"{result.report['name']}: {how if status == 'skipped' else 'done'}: {result.out_dir}"
        )

    result = run_sweep(
        loaded,
        limit=limit,
        device=device,
        output=output,
        progress=_progress_bar if progress else None,
        overwrite=overwrite,
        force=force,
        on_result=finished,
    )
    _print_sweep(result.summary)
    click.echo(f"sweep report: {result.out_dir}")
    for path in result.files:
        click.echo(f"  {path}")
    if result.failed and fail_on_audit:
        _exit_failed(result.failed)


def _print_sweep(summary: dict[str, Any]) -> None:
    """One row per config: effective bits, each metric's sweep columns, the audit, and a
    star on the Pareto front of quality against bits."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    passes = summary.get("reference_passes")
    table = Table(
        title=f"{summary['name']}: {summary['finished']} of {summary['configs']} configs"
        + (f", {passes} FP32 pass(es)" if passes is not None else "")
    )
    table.add_column("config", no_wrap=True)
    table.add_column("bits/weight", justify="right")
    for column in summary["columns"]:
        table.add_column(escape(column["label"]), justify="right")
    table.add_column("audit")
    table.add_column("Pareto")
    for row in summary["rows"]:
        values = {c["key"]: c["value"] for c in row.get("columns") or ()}
        bits = row.get("effective_bits")
        table.add_row(
            escape(str(row["name"])),
            f"{bits:.3f}" if isinstance(bits, (int, float)) else "",
            *(_cell(values.get(column["key"])) for column in summary["columns"]),
            str(row.get("audit") or ""),
            "*" if row.get("pareto") else "",
        )
    console = Console()
    if not console.is_terminal:  # a log or a pipe: the whole row, not columns squeezed to 80
        console = Console(width=max(console.width, 200))
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _reproduce(report: Path, output: Path | None, progress: bool) -> None:
    from .memory import keep_freed_memory
    from .runner import reproduce

    keep_freed_memory()
    result, differences = reproduce(
        report, output=output, progress=_progress_bar if progress else None
    )
    _print_summary(result)
    if differences:
        shown = "; ".join(differences[:10]) + ("; ..." if len(differences) > 10 else "")
        click.echo(
            f"qbench: NOT reproduced: {len(differences)} value(s) differ from {report}: {shown} "
            f"(exit {EXIT_CHECK_FAILED})",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_CHECK_FAILED)
    click.echo(f"reproduced: every number of {report} matches (new reports: {result.out_dir})")


def _progress_bar(batches: Any, total: int | None, label: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, transient=True, console=_stderr_console()) as bar:
        task = bar.add_task("batches", total=total)
        for item in batches:
            yield item
            bar.advance(task)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _print_summary(result: Any) -> None:
    """The run's warnings, then one table: core's weight coverage and each metric's own rows
    (``Metric.summary``, called on the registered component with the metric's result)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    report = result.report
    console = Console()
    for warning in report.get("warnings") or ():
        console.print(f"[bold yellow]WARNING[/]: {escape(warning)}", highlight=False)
    table = Table(
        title=f"{report['model']} / {report['name']} ({report['dataset']['images']} images)"
    )
    table.add_column("metric")
    table.add_column("FP32", justify="right")
    table.add_column("quantized", justify="right")
    share = ((report.get("preparation") or {}).get("coverage") or {}).get("weight_share")
    if isinstance(share, (int, float)):
        table.add_row("weight elements quantized %", "", f"{100 * share:.2f}")
    for name, section in (report.get("metrics") or {}).items():
        for row in _metric_rows(name, section):
            table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    console.print(f"report: {result.out_dir}")
    for path in result.files:
        console.print(f"  {path}")


def _metric_rows(name: str, section: Any) -> list[tuple[str, str, str]]:
    """A metric's summary rows (label, FP32, quantized); none if it declares no ``summary``,
    and one row saying so if its ``summary`` fails (the reports are written already)."""
    from .plugins import get

    try:
        metric = get("metric", name)
        summary = getattr(metric, "summary", None)
        if summary is None or not isinstance(section, dict):
            return []
        return [
            (str(label), str(fp32), str(quantized)) for label, fp32, quantized in summary(section)
        ]
    except Exception as exc:  # a broken plugin's summary: named, the table still printed
        return [(name, "", f"summary failed: {_broken(exc)}")]


# ------------------------------------------------------------------------- compare


@cli.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the table as a sweep report set (sweep.json, .txt, .html...) here.",
)
@click.option("--name", default="compare", show_default=True, help="Title of the table.")
def compare(reports: tuple[Path, ...], output: Path | None, name: str) -> None:
    """Compare finished runs: one row per REPORT (a report.json, or a folder searched for
    them) with each metric's sweep columns, the effective bits per weight and the Pareto
    front of accuracy against bits, as a sweep report shows them."""
    from .sweep import compare as build
    from .sweep import write_summary

    summary = build(reports, name=name)
    _print_sweep(summary)
    if output is not None:
        from .output import safe_part

        _, files = write_summary(output / safe_part(name), name, summary["rows"], None)
        click.echo(f"comparison report: {output / safe_part(name)}")
        for path in files:
            click.echo(f"  {path}")


# ---------------------------------------------------------- sensitivity, mixed precision


def _sweep_options(output_help: str) -> Any:
    """--limit, --device, --output, --force and --progress of the commands that run sweeps."""

    def decorate(command: Any) -> Any:
        for option in reversed(
            [
                click.option(
                    "--limit",
                    type=click.IntRange(min=1),
                    default=None,
                    help="Evaluate at most N images.",
                ),
                click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None),
                click.option(
                    "--output",
                    type=click.Path(file_okay=False, path_type=Path),
                    default=None,
                    help=output_help,
                ),
                click.option("--force", is_flag=True, help="Recompute saved results."),
                click.option("--progress/--no-progress", default=True),
            ]
        ):
            command = option(command)
        return command

    return decorate


def _formats_option(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


@cli.command("sensitivity")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--formats",
    default=None,
    help="Comma-separated formats to measure each layer "
    "in (default: the config's own quantization).",
)
@_sweep_options("Report root (default: the config's output.dir).")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Layers shown per format.",
)
def sensitivity_command(
    config: Path,
    formats: str | None,
    limit: int | None,
    device: str | None,
    output: Path | None,
    force: bool,
    top: int,
    progress: bool,
) -> None:
    """Quantize one layer of CONFIG at a time (the rest FP32) and rank the layers by what
    that alone does: top-1 change, output KL divergence, logit cosine. Results are saved
    (sensitivity.json beside the sweep report) and reused by a rerun."""
    from .config import load_config
    from .memory import keep_freed_memory
    from .sensitivity import sensitivity

    cfg = load_config(config)
    keep_freed_memory()
    grid = (cfg.data.get("sweep") or {}).get("grid") or {}
    chosen = _formats_option(formats) or grid.get("format")  # a sweep: its formats
    result = sensitivity(
        cfg,
        formats=chosen or [None],
        limit=limit,
        device=device,
        output=output,
        force=force,
        progress=_progress_bar if progress else None,
    )
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"{result['name']}: most damaging first (ranked by {', '.join(result['rank'])})"
    )
    for column in ("format", "rank", "layer", "top-1 Δ pp", "output KL", "logit cosine"):
        table.add_column(column, justify="left" if column in ("format", "layer") else "right")
    for row in result["layers"]:
        if row["rank"] > top:
            continue
        values = row["columns"]
        table.add_row(
            escape(str(row["format"])),
            str(row["rank"]),
            escape(row["layer"]),
            _cell(values.get("top1_delta")),
            _cell(values.get("output_kl")),
            _cell(values.get("logit_cosine")),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    console.print(table)
    click.echo(f"sensitivity: {result['path']}")


@cli.command("mixed-precision")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    required=True,
    help="Largest top-1 drop allowed, in percentage points (0.5: half a point).",
)
@click.option(
    "--formats",
    default=None,
    help="Comma-separated formats to choose from (default: the config's sweep.grid.format).",
)
@_sweep_options("Report root (default: the config's output.dir); the config is written there.")
def mixed_precision_command(
    config: Path,
    budget: float,
    formats: str | None,
    limit: int | None,
    device: str | None,
    output: Path | None,
    force: bool,
    progress: bool,
) -> None:
    """Pick a format per layer of CONFIG from the formats it lists, cheapest first, with the
    fewest effective bits per weight whose top-1 drop stays within --budget; write it as a
    runnable config and verify it by running it (exit 3 if it misses the budget)."""
    from .config import load_config
    from .memory import keep_freed_memory
    from .sensitivity import mixed_precision

    cfg = load_config(config)
    keep_freed_memory()
    result = mixed_precision(
        cfg,
        budget=budget,
        formats=_formats_option(formats),
        limit=limit,
        device=device,
        output=output,
        force=force,
        progress=_progress_bar if progress else None,
    )
    counts: dict[str, int] = {}
    for fmt in result["assignment"].values():
        counts[fmt] = counts.get(fmt, 0) + 1
    verified = result["verified"]
    click.echo(
        f"mixed precision: {len(result['assignment'])} layers "
        f"({', '.join(f'{n} x {f}' for f, n in counts.items())}) chosen from "
        f"{result['candidates']} candidates"
    )
    click.echo(
        f"verified: top-1 {verified['top1_delta']:+.3f} pp (budget -{budget}), "
        f"{verified['effective_bits']:.3f} bits per weight; config: {result['config']}"
    )
    if not verified["meets_budget"]:
        click.echo(
            f"qbench: FAIL: no assignment of {', '.join(result['formats'])} keeps top-1 within "
            f"{budget} pp; the closest was written (exit {EXIT_CHECK_FAILED})",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_CHECK_FAILED)


# ------------------------------------------------------------------------ validate


@cli.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--schema-only",
    is_flag=True,
    help="Check against the schema only (fast: builds nothing, reads no files).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report root to check (default: the config's output.dir).",
)
def validate(configs: tuple[Path, ...], schema_only: bool, output: Path | None) -> None:
    """Check CONFIG(s) without running them: the schema, then (unless --schema-only) what a
    run would refuse before its first batch: the model builds and its twin prepares (layer
    patterns, scale methods), the dataset finds its files, the metrics accept their options,
    the report folder is writable. Images are not read."""
    from .config import config_schema, load_config
    from .runner import check
    from .sweep import expand

    schema = config_schema()
    problems: list[str] = []
    loaded = []
    for path in configs:
        try:
            loaded.append(load_config(path, schema=schema))
        except ConfigError as exc:
            problems.extend(exc.problems)
    for cfg in loaded:
        try:
            # a sweep: every config of its grid against the schema, the first one fully (the
            # others share its model and data)
            variants = expand(cfg)
            if schema_only:
                click.echo(f"{cfg.path}: ok (schema only{_grid_note(variants)})")
                continue
            checked, not_checked = check(variants[0][0], output=output)
        except QBenchError as exc:
            problems.append(f"{cfg.path}: {str(exc).replace(chr(10), ' ')}")
            continue
        click.echo(
            f"{cfg.path}: ok{_grid_note(variants)}: {'; '.join(checked)}; "
            f"not checked: {'; '.join(not_checked)}"
        )
    if problems:
        raise ConfigError(problems)


def _grid_note(variants: list[Any]) -> str:
    return f", a sweep of {len(variants)} configs" if len(variants) > 1 or variants[0][1] else ""


# ------------------------------------------------------------------------- inspect


@cli.command("inspect")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_command(config: Path, as_json: bool) -> None:
    """What CONFIG would quantize, without evaluating: every layer with the spec each role
    gets, every functional call site seen on one sample image, and what stays FP32 and why."""
    from .config import load_config
    from .runner import inspect

    report = inspect(load_config(config))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    rows = [
        (entry["name"] or "(model)", entry["type"], _roles_text(entry["roles"]))
        for entry in report["quantized"]
    ]
    rows += [
        (site["name"], f"call {site['function']}", _roles_text(site["roles"]))
        for site in report.get("calls", [])
    ]
    rows += [
        (entry["name"] or "(model)", entry["type"], f"FP32: {entry['reason']}")
        for entry in report["not_quantized"]
    ]
    width = max((len(name) for name, _, _ in rows), default=4)
    kind = max((len(type_name) for _, type_name, _ in rows), default=4)
    for name, type_name, what in rows:
        click.echo(f"{name:<{width}}  {type_name:<{kind}}  {what}")
    coverage = report["coverage"]
    macs = coverage.get("mac_share")
    click.echo(
        f"coverage: {100 * coverage['weight_share']:.2f} % of "
        f"{coverage['weight_elements']} weight elements quantized"
        + (f", {100 * macs:.2f} % of multiply-accumulates" if isinstance(macs, float) else "")
        + f" (call sites and MACs from {report['sample_images']} sample image)"
    )


def _roles_text(roles: dict[str, str]) -> str:
    return ", ".join(f"{role}={spec}" for role, spec in roles.items()) or "FP32: no role quantized"


# ------------------------------------------------------------------------- plugins


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins, what each registered, and any that are broken or disabled."""
    from .plugins import host

    infos = [info.as_dict() for info in host().plugins]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        line = f"{info['name']:<24} {info['distribution']} {info['version']:<10} {info['status']}"
        click.echo(line)
        if info["error"]:
            click.echo(f"    error: {info['error']}")
        for kind, names in info["components"].items():
            click.echo(f"    {kind}s: {', '.join(names)}")


# ------------------------------------------------------------------------- formats


@cli.command()
@click.argument("name", required=False)
def formats(name: str | None) -> None:
    """List installed formats, or print the value table of format NAME."""
    from .plugins import registry

    reg = registry("format")
    if name is not None:
        fmt = reg.get(name)
        try:
            info = _summary(fmt)
        except Exception as exc:
            raise QBenchError(
                f"format {name!r} ({reg.plugin_of(name).label}) is broken: {_broken(exc)}"
            ) from None
        click.echo(f"{name}: {info.get('description', '')} (plugin: {reg.plugin_of(name).label})")
        for key in ("bits", "effective_bits", "max", "min_normal", "min_subnormal", "inf", "nan"):
            if key in info:
                click.echo(f"  {key:<15} {info[key]}")
        values = fmt.values()
        count = int(values.numel())
        shown = values if count <= 512 else values[values >= 0]
        click.echo(f"  {count} finite values{' (non-negative half shown)' if count > 512 else ''}:")
        for start in range(0, int(shown.numel()), 8):
            chunk = shown[start : start + 8].tolist()
            click.echo("   " + " ".join(f"{v:>12.6g}" for v in chunk))
        return
    header = f"{'name':<16} {'kind':<7} {'bits':>5} {'eff.':>5} {'max':>12} {'min subnormal':>14} {'inf':<4} {'nan':<11} plugin"
    click.echo(header)
    conflicts = reg.conflicts()
    for fmt_name, fmt in reg.items():
        if fmt_name in conflicts:
            labels = " and ".join(p.label for p in conflicts[fmt_name])
            click.echo(f"{fmt_name:<16} CONFLICT: registered by {labels}")
            continue
        try:
            info = _summary(fmt)
        except Exception as exc:  # a broken format plugin: name it, list the others
            click.echo(f"{fmt_name:<16} BROKEN: {_broken(exc)} ({reg.plugin_of(fmt_name).label})")
            continue
        click.echo(
            f"{fmt_name:<16} {info.get('kind', ''):<7} {info.get('bits', ''):>5} "
            f"{_g(info.get('effective_bits')):>5} {_g(info.get('max')):>12} "
            f"{_g(info.get('min_subnormal')):>14} {str(info.get('inf', '')):<4} "
            f"{str(info.get('nan', '')):<11} {reg.plugin_of(fmt_name).distribution}"
        )


def _summary(fmt: Any) -> dict[str, Any]:
    summary = getattr(fmt, "summary", None)
    if callable(summary):
        return dict(summary())
    return {
        "bits": getattr(fmt, "bits", ""),
        "max": getattr(fmt, "max_value", ""),
        "min_subnormal": getattr(fmt, "min_subnormal", ""),
    }


def _broken(exc: Exception) -> str:
    """One line for a plugin component that raised."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _g(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else str(value))


# -------------------------------------------------------------------------- schema


@cli.command()
def schema() -> None:
    """Print the merged JSON Schema of config files (core + installed plugins)."""
    from .config import config_schema

    click.echo(json.dumps(config_schema(), indent=2))


# ---------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Get evaluation datasets."""


@data.command("download")
@click.argument("dataset")
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put it.",
)
@click.option(
    "--url", default=None, help="Download from this URL instead of the dataset's default source."
)
@click.option("--progress/--no-progress", default=True)
def download(dataset: str, root: Path, url: str | None, progress: bool) -> None:
    """Download and extract DATASET (e.g. imagenette, tiny-imagenet) under --root."""
    from .plugins import get, registry

    component = get("dataset", dataset)
    fetch = getattr(component, "download", None)
    if fetch is None:
        able = [n for n, d in registry("dataset").items() if callable(getattr(d, "download", None))]
        raise QBenchError(
            f"dataset {dataset!r} cannot be downloaded; downloadable datasets: {', '.join(able) or '(none)'}"
        )
    path = fetch(root, url=url, progress=progress)
    click.echo(f"{dataset}: ready at {path}")


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the click group, turning QBench errors into exit status 2."""
    try:
        # Not standalone: click returns the code of a click.exceptions.Exit raised inside
        # a command (run's exit 3) instead of exiting itself.
        code = cli.main(args=argv, prog_name="qbench", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("qbench: aborted", err=True)
        sys.exit(130)
    except QBenchError as exc:
        if _State.debug:
            raise
        lines = exc.problems if isinstance(exc, ConfigError) else [str(exc).replace("\n", " ")]
        for line in lines:
            click.echo(f"qbench: error: {line}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        click.echo("qbench: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # an internal error: one line, the traceback behind --debug
        if _State.debug:
            raise
        click.echo(
            f"qbench: internal error: {_broken(exc)} (rerun with --debug for the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
