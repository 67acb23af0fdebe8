"""The ``text`` reporter: ``comparison_report.txt`` with its four numbered sections.

The run's warnings come first, right under the title. Then 1. accuracy metrics;
2. compliance PASS/FAIL for weights and the other quantized parameters, inputs, activations
and scales; 3. the layer-wise table (MSE, cosine, SQNR, input dynamic range); 4. detailed
failures. Metrics from other plugins follow generically.

For a sweep, ``sweep.txt``: one row per config and the layers x configs table of output
cosine (see :meth:`TextReporter.render_sweep`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from . import _sweep
from ._common import (
    KNOWN_METRICS,
    LAYER_COLUMNS,
    LAYER_GROUPS,
    LAYER_NOTE,
    accuracy_rows,
    agreement_text,
    compliance_rows,
    failure_lines,
    generic_lines,
    header_lines,
    layer_rows,
    nonfinite_logit_warnings,
    plural,
    report_title,
    skipped_rows,
    warnings,
)

FILE_NAME = "comparison_report.txt"
SWEEP_FILE = "sweep.txt"


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Sequence[bool] | None = None,
    groups: Sequence[tuple[str, int, int]] = (),
) -> list[str]:
    """A plain-text table with a rule under the header; numeric columns right-aligned.

    ``groups`` are (title, first column, last column): each title is centred in a dashed line
    spanning those columns, above the header (``---- Input dynamic range ----``).
    """
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    right = right or [i > 0 for i in range(len(header))]

    def span(first: int, last: int) -> int:
        return sum(widths[first : last + 1]) + 2 * (last - first)

    for group_title, first, last in groups:  # widen the group's last column to fit its title
        widths[last] += max(len(group_title) + 2 - span(first, last), 0)

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(out).rstrip()

    lines = []
    if groups:
        group_line = ""
        for group_title, first, last in sorted(groups, key=lambda g: g[1]):
            start = span(0, first - 1) + 2 if first else 0
            group_line = group_line.ljust(start) + f" {group_title} ".center(span(first, last), "-")
        lines.append(group_line)
    return lines + [
        line(header),
        "  ".join("-" * w for w in widths),
        *[line(row) for row in rows],
    ]


def section(heading: str) -> list[str]:
    return ["", heading, "=" * len(heading)]


class TextReporter:
    """Writes ``comparison_report.txt``: readable in a terminal, diffable between runs."""

    name = "text"
    file_name = FILE_NAME

    def render(self, report: Mapping[str, Any]) -> str:
        metrics = report.get("metrics") or {}
        heading = report_title(report)
        lines = [heading, "=" * len(heading)]
        run_warnings = warnings(report)
        lines += [f"WARNING: {warning}" for warning in run_warnings]
        if run_warnings:
            lines.append("")
        labels = header_lines(report)
        width = max(len(label) for label, _ in labels)
        lines += [f"{label.ljust(width)} : {value}" for label, value in labels]

        skipped, more = skipped_rows(report)
        if skipped:
            lines += section("Skipped images (unreadable)")
            lines += table(("File", "Reason"), skipped, right=(False, False))
            if more:
                lines.append(f"... and {more} more")

        lines += section("1. Accuracy metrics")
        accuracy = metrics.get("accuracy")
        if accuracy is None:
            lines.append("(accuracy metric not run)")
        else:
            lines += table(
                ("Metric", "FP32", "Quantized", "Delta (points)"), accuracy_rows(accuracy)
            )
            lines.append("")
            lines.append(agreement_text(accuracy))
            lines += [f"WARNING: {line}" for line in nonfinite_logit_warnings(accuracy)]

        lines += section("2. Compliance")
        compliance = metrics.get("compliance")
        if compliance is None:
            lines.append("(compliance audit not run)")
        else:
            lines.append(f"Overall: {compliance.get('status', '-')}")
            lines.append("")
            lines += table(
                ("Tensors", "Status", "Detail"),
                compliance_rows(compliance),
                right=(False, False, False),
            )

        lines += section("3. Layer-wise error (quantized vs FP32 output, same batch)")
        layerwise = metrics.get("layerwise")
        if layerwise is None:
            lines.append("(layerwise metric not run)")
        else:
            rows = layer_rows(layerwise)
            if rows:
                right = [column not in ("Layer", "Type") for column in LAYER_COLUMNS]
                lines += table(
                    LAYER_COLUMNS,
                    [[row[c] for c in LAYER_COLUMNS] for row in rows],
                    right,
                    groups=LAYER_GROUPS,
                )
                lines.append("")
                lines.append(LAYER_NOTE)
            else:
                lines.append("(no quantized layers were measured)")
        not_quantized = (report.get("preparation") or {}).get("not_quantized") or []
        if not_quantized:
            lines.append("")
            lines.append(f"Not quantized ({plural(len(not_quantized), 'module')}):")
            for entry in not_quantized:
                lines.append(f"  {entry.get('name')} ({entry.get('type')}): {entry.get('reason')}")

        lines += section("4. Failure details")
        if compliance is None:
            lines.append("(compliance audit not run)")
        else:
            details = failure_lines(compliance)
            lines += (
                details
                if details
                else ["None: every audited value is representable and every scale is legal."]
            )

        others = [name for name in metrics if name not in KNOWN_METRICS]
        for number_, name in enumerate(others, start=5):
            lines += section(f"{number_}. {name}")
            lines += generic_lines(metrics[name])
        return "\n".join(lines) + "\n"

    def write(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        return [atomic_write_text(Path(out_dir) / self.file_name, self.render(report))]

    def render_sweep(self, summary: Mapping[str, Any]) -> str:
        """``sweep.txt``: an INCOMPLETE line first while configs are pending, the title, one
        row per config, then the layers x configs table of output cosine (worst layers)."""
        lines = []
        incomplete = _sweep.incomplete_text(summary)
        if incomplete:
            lines.append(incomplete)
        heading = _sweep.title(summary)
        lines += [heading, "=" * len(heading)]
        header, rows, right = _sweep.table(summary)
        if rows:
            lines += table(header, rows, right)
        else:
            lines.append("(no configs)")
        lines += ["", _sweep.pareto_note(summary)]
        layer_header, layer_rows_, more = _sweep.layer_table(summary, _sweep.TEXT_LAYERS)
        if layer_rows_:
            lines += section("Layers × configs (output cosine)")
            lines += table(layer_header, layer_rows_)
            lines += ["", _sweep.layer_note(len(layer_rows_), more)]
        return "\n".join(lines) + "\n"

    def write_sweep(self, summary: Mapping[str, Any], folder: Path) -> list[Path]:
        return [atomic_write_text(Path(folder) / SWEEP_FILE, self.render_sweep(summary))]
