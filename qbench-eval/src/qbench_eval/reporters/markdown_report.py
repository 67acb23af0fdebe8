"""The ``markdown`` reporter: ``report.md``, the text report's sections as GitHub-flavoured
Markdown (GFM) tables, to paste into a pull request, an issue or a paper's draft.

Only GFM that every common renderer shares is used (headings, pipe tables with alignment,
lists, block quotes, fenced code), so it also renders outside GitHub. For a sweep,
``sweep.md``: the tables of ``sweep.txt``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, json_safe
from . import _sweep
from ._common import (
    KNOWN_METRICS,
    LAYER_COLUMNS,
    LAYER_GROUPS,
    LAYER_NOTE,
    accuracy_rows,
    agreement_text,
    compliance_rows,
    failure_entries,
    header_lines,
    layer_rows,
    nonfinite_logit_warnings,
    plural,
    report_title,
    skipped_rows,
    warnings,
)

FILE_NAME = "report.md"
SWEEP_FILE = "sweep.md"

# Characters that would end a table cell (|) or start emphasis, code, links or HTML. An
# underscore inside a word (fp8_e4m3) never starts emphasis in GFM, so only those at a word's
# edge are escaped and format names stay readable in the raw file.
_SPECIAL = re.compile(r"([\\`*|<\[\]]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")


def escape(text: Any) -> str:
    """``text`` as literal Markdown inline text on one line (``min |x|`` -> ``min \\|x\\|``)."""
    return _SPECIAL.sub(lambda match: "\\" + match.group(0), " ".join(str(text).split()))


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> list[str]:
    """A GFM pipe table; ``right`` marks right-aligned (numeric) columns."""
    right = right or [i > 0 for i in range(len(header))]
    lines = [
        "| " + " | ".join(escape(h) for h in header) + " |",
        "|" + "|".join("---:" if r else ":---" for r in right) + "|",
    ]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return lines


def _layer_header() -> list[str]:
    """The layer table's column names; GFM has no spanning header cells, so the group title
    (``Input dynamic range``) prefixes each column of its group instead."""
    header = list(LAYER_COLUMNS)
    for group_title, first, last in LAYER_GROUPS:
        for column in range(first, last + 1):
            header[column] = f"{group_title}: {header[column]}"
    return header


class MarkdownReporter:
    """Writes ``report.md``: the same sections as ``comparison_report.txt``, in Markdown."""

    name = "markdown"
    file_name = FILE_NAME

    def render(self, report: Mapping[str, Any]) -> str:
        metrics = report.get("metrics") or {}
        lines = [f"# {escape(report_title(report))}", ""]
        for warning in warnings(report):
            lines += [f"> **Warning:** {escape(warning)}", ">"]
        if lines[-1] == ">":
            lines[-1] = ""
        lines += [
            f"- **{escape(label)}:** {escape(value)}" for label, value in header_lines(report)
        ]

        skipped, more = skipped_rows(report)
        if skipped:
            lines += ["", "## Skipped images (unreadable)", ""]
            lines += table(("File", "Reason"), skipped, right=(False, False))
            if more:
                lines += ["", f"... and {more} more."]

        lines += ["", "## 1. Accuracy metrics", ""]
        accuracy = metrics.get("accuracy")
        if accuracy is None:
            lines.append("(accuracy metric not run)")
        else:
            lines += table(
                ("Metric", "FP32", "Quantized", "Delta (points)"), accuracy_rows(accuracy)
            )
            lines += ["", escape(agreement_text(accuracy))]
            for line in nonfinite_logit_warnings(accuracy):
                lines += ["", f"> **Warning:** {escape(line)}"]

        lines += ["", "## 2. Compliance", ""]
        compliance = metrics.get("compliance")
        if compliance is None:
            lines.append("(compliance audit not run)")
        else:
            lines += [f"Overall: **{escape(compliance.get('status', '-'))}**", ""]
            lines += table(
                ("Tensors", "Status", "Detail"),
                compliance_rows(compliance),
                right=(False, False, False),
            )

        lines += ["", "## 3. Layer-wise error (quantized vs FP32 output, same batch)", ""]
        layerwise = metrics.get("layerwise")
        if layerwise is None:
            lines.append("(layerwise metric not run)")
        else:
            rows = layer_rows(layerwise)
            if rows:
                right = [column not in ("Layer", "Type") for column in LAYER_COLUMNS]
                lines += table(
                    _layer_header(), [[row[c] for c in LAYER_COLUMNS] for row in rows], right
                )
                lines += ["", escape(LAYER_NOTE)]
            else:
                lines.append("(no quantized layers were measured)")
        not_quantized = (report.get("preparation") or {}).get("not_quantized") or []
        if not_quantized:
            lines += ["", f"Not quantized ({plural(len(not_quantized), 'module')}):", ""]
            lines += table(
                ("Module", "Type", "Reason"),
                [
                    (str(e.get("name")), str(e.get("type")), str(e.get("reason")))
                    for e in not_quantized
                ],
                right=(False, False, False),
            )

        lines += ["", "## 4. Failure details", ""]
        if compliance is None:
            lines.append("(compliance audit not run)")
        else:
            entries = failure_entries(compliance)
            if not entries:
                lines.append("None: every audited value is representable and every scale is legal.")
            for headline, examples in entries:
                lines.append(f"- {escape(headline)}")
                lines += [f"  - {escape(example)}" for example in examples]

        others = [name for name in metrics if name not in KNOWN_METRICS]
        for number_, name in enumerate(others, start=5):
            lines += ["", f"## {number_}. {escape(name)}", "", "```json"]
            lines += json.dumps(json_safe(metrics[name]), indent=2).splitlines()
            lines.append("```")
        return "\n".join(lines) + "\n"

    def write(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        return [atomic_write_text(Path(out_dir) / self.file_name, self.render(report))]

    def render_sweep(self, summary: Mapping[str, Any]) -> str:
        """``sweep.md``: what ``sweep.txt`` shows, as GFM tables, the INCOMPLETE warning in
        a block quote above everything else."""
        lines = []
        incomplete = _sweep.incomplete_text(summary)
        if incomplete:
            lines += [f"> **{escape(incomplete)}**", ""]
        lines += [f"# {escape(_sweep.title(summary))}", ""]
        header, rows, right = _sweep.table(summary)
        lines += table(header, rows, right) if rows else ["(no configs)"]
        lines += ["", escape(_sweep.pareto_note(summary))]
        layer_header, layer_rows_, more = _sweep.layer_table(summary, _sweep.TEXT_LAYERS)
        if layer_rows_:
            lines += ["", "## Layers × configs (output cosine)", ""]
            lines += table(layer_header, layer_rows_)
            lines += ["", escape(_sweep.layer_note(len(layer_rows_), more))]
        return "\n".join(lines) + "\n"

    def write_sweep(self, summary: Mapping[str, Any], folder: Path) -> list[Path]:
        return [atomic_write_text(Path(folder) / SWEEP_FILE, self.render_sweep(summary))]
