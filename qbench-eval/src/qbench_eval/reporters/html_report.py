"""The ``html`` reporter: ``report.html``, one self-contained page with inline SVG plots.

No scripts, stylesheets, fonts or images are fetched: the file opens offline and can be
mailed or attached to a paper's supplementary material as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, json_safe
from . import svg
from ._common import (
    KNOWN_METRICS,
    LAYER_COLUMNS,
    accuracy_rows,
    compliance_rows,
    example_text,
    header_lines,
    layer_rows,
    percent,
)

FILE_NAME = "report.html"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:64em;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.PASS{color:#1a7f37;font-weight:bold}.FAIL{color:#c62828;font-weight:bold}.NOT{color:#777}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
figure{margin:1em 0}
"""


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[bool] | None = None
) -> str:
    left = left or [i == 0 for i in range(len(header))]
    head = "".join(
        f'<th class="{"l" if lf else ""}">{escape(h)}</th>' for h, lf in zip(header, left)
    )
    body = []
    for row in rows:
        cells = []
        for cell, lf in zip(row, left):
            status = cell.split()[0] if cell in ("PASS", "FAIL", "NOT RUN", "NOT AUDITED") else ""
            cls = " ".join(c for c in ("l" if lf else "", status) if c)
            cells.append(f'<td class="{cls}">{escape(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _status(text: str) -> str:
    return f'<span class="{escape(text.split()[0])}">{escape(text)}</span>'


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class HtmlReporter:
    """Writes ``report.html``: the text report's content plus accuracy, cosine, MSE and
    dynamic-range plots drawn as inline SVG."""

    name = "html"
    file_name = FILE_NAME

    def render(self, report: Mapping[str, Any]) -> str:
        metrics = report.get("metrics") or {}
        title = f"QBench report: {report.get('name', '')} on {report.get('model', '')}"
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            _table(("Run", ""), header_lines(report), left=(True, True)),
        ]
        parts += self._accuracy(metrics.get("accuracy"))
        parts += self._compliance(metrics.get("compliance"))
        parts += self._layerwise(metrics.get("layerwise"), report)
        parts += self._failures(metrics.get("compliance"))
        for name in metrics:
            if name not in KNOWN_METRICS:
                parts.append(f"<h2>{escape(str(name))}</h2>")
                parts.append(f"<pre>{escape(json.dumps(json_safe(metrics[name]), indent=2))}</pre>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def _accuracy(self, accuracy: Mapping[str, Any] | None) -> list[str]:
        out = ["<h2>1. Accuracy metrics</h2>"]
        if accuracy is None:
            return out + ["<p>(accuracy metric not run)</p>"]
        out.append(
            _table(("Metric", "FP32", "Quantized", "Delta (points)"), accuracy_rows(accuracy))
        )
        out.append(
            f"<p>Top-1 agreement FP32 vs quantized: <b>{escape(percent(accuracy.get('agreement')))} %</b> "
            f"of {escape(str(accuracy.get('images', 0)))} images.</p>"
        )
        k = accuracy.get("top_k", 5)
        categories = ["Top-1", f"Top-{k}", "Certainty", "Agreement"]
        agreement = _float_or_none(accuracy.get("agreement"))

        def side(name: str) -> list[float | None]:
            data = accuracy.get(name) or {}
            values = [_float_or_none(data.get(key)) for key in ("top1", "topk", "certainty")]
            return [None if v is None else 100 * v for v in values] + [None]

        series = {"FP32": side("reference"), "Quantized": side("quantized")}
        series["Quantized"][3] = None if agreement is None else 100 * agreement
        out.append(
            "<figure>"
            + svg.grouped_bars(categories, series, "Accuracy (%)", "%", y_max=100.0)
            + "</figure>"
        )
        return out

    def _compliance(self, compliance: Mapping[str, Any] | None) -> list[str]:
        out = ["<h2>2. Compliance</h2>"]
        if compliance is None:
            return out + ["<p>(compliance audit not run)</p>"]
        out.append(f"<p>Overall: {_status(str(compliance.get('status', '-')))}</p>")
        out.append(
            _table(
                ("Tensors", "Status", "Detail"),
                compliance_rows(compliance),
                left=(True, True, True),
            )
        )
        return out

    def _layerwise(
        self, layerwise: Mapping[str, Any] | None, report: Mapping[str, Any]
    ) -> list[str]:
        out = ["<h2>3. Layer-wise error (quantized vs FP32 output, same batch)</h2>"]
        if layerwise is None:
            return out + ["<p>(layerwise metric not run)</p>"]
        layers = layerwise.get("layers") or []
        if layers:
            names = [str(layer.get("name")) for layer in layers]
            cosines = [_float_or_none(layer.get("cosine")) for layer in layers]
            finite_cos = [c for c in cosines if c is not None]
            low = min(finite_cos) if finite_cos else 0.0
            y_min = max(low - max(1.0 - low, 1e-6) * 0.1, -1.0)
            out.append(
                "<figure>"
                + svg.per_layer(
                    names, cosines, "Cosine similarity per layer", "cosine", y_min=y_min, y_max=1.0
                )
                + "</figure>"
            )
            out.append(
                "<figure>"
                + svg.per_layer(
                    names, [layer.get("mse") for layer in layers], "MSE per layer", "MSE", log=True
                )
                + "</figure>"
            )
            inputs = [layer.get("input") or {} for layer in layers]
            out.append(
                "<figure>"
                + svg.ranges(
                    names,
                    [i.get("min_nonzero_abs") for i in inputs],
                    [i.get("max_abs") for i in inputs],
                    "Input dynamic range per layer (smallest to largest non-zero |x|)",
                )
                + "</figure>"
            )
            rows = layer_rows(layerwise)
            left = [column in ("Layer", "Type") for column in LAYER_COLUMNS]
            out.append(
                _table(LAYER_COLUMNS, [[row[c] for c in LAYER_COLUMNS] for row in rows], left)
            )
        else:
            out.append("<p>(no quantized layers were measured)</p>")
        not_quantized = (report.get("preparation") or {}).get("not_quantized") or []
        if not_quantized:
            out.append(f"<p>Not quantized ({len(not_quantized)} modules):</p>")
            out.append(
                _table(
                    ("Module", "Type", "Reason"),
                    [
                        (str(e.get("name")), str(e.get("type")), str(e.get("reason")))
                        for e in not_quantized
                    ],
                    left=(True, True, True),
                )
            )
        return out

    def _failures(self, compliance: Mapping[str, Any] | None) -> list[str]:
        out = ["<h2>4. Failure details</h2>"]
        if compliance is None:
            return out + ["<p>(compliance audit not run)</p>"]
        missing = compliance.get("missing") or []
        failures = compliance.get("failures") or []
        if not missing and not failures:
            return out + [
                "<p>None: every audited value is representable and every scale is legal.</p>"
            ]
        items = []
        for entry in missing:
            items.append(
                f"<li><b>{escape(entry['layer'])}</b> [{escape(entry['role'])}]: {_status('FAIL')} "
                f"{escape(entry.get('reason', 'quantized per the preparation report but never observed'))}</li>"
            )
        for tensor in failures:
            counts = ", ".join(f"{k}: {v}" for k, v in (tensor.get("failures") or {}).items())
            examples = "".join(
                f"<li>{escape(example_text(e))}</li>" for e in tensor.get("examples") or []
            )
            items.append(
                f"<li><b>{escape(tensor['layer'])}</b> [{escape(tensor['role'])}] {escape(str(tensor.get('format', '')))}: "
                f"{_status('FAIL')} {tensor.get('failed', 0)} of {tensor.get('elements', 0)} values ({escape(counts)})"
                f"<ul>{examples}</ul></li>"
            )
        return out + ["<ul>" + "".join(items) + "</ul>"]

    def write(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        return [atomic_write_text(Path(out_dir) / self.file_name, self.render(report))]
