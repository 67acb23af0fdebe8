"""The ``html`` reporter: ``report.html``, one self-contained page with inline SVG plots; for
a sweep, ``sweep.html`` (the sweep table, quality against bits with the Pareto front, and a
layers x configs heat map of output cosine).

Nothing is fetched (no external scripts, stylesheets, fonts or images): the file opens
offline and can be mailed or attached to a paper's supplementary material as is. The only
script is a few inline lines that sort a table when its header is clicked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, json_safe
from . import _sweep, svg
from ._common import (
    KNOWN_METRICS,
    LAYER_COLUMNS,
    LAYER_GROUPS,
    LAYER_NOTE,
    accuracy_rows,
    agreement_text,
    compliance_rows,
    example_text,
    format_range,
    header_lines,
    input_formats,
    layer_rows,
    nonfinite_logit_warnings,
    nonfinite_text,
    plural,
    report_title,
    skipped_rows,
    warnings,
)

FILE_NAME = "report.html"
SWEEP_FILE = "sweep.html"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:64em;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}th.g{text-align:center;background:#eaeaea}
td.n{white-space:nowrap;font-variant-numeric:tabular-nums}
table.sortable thead tr:last-child th{cursor:pointer}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.PASS{color:#1a7f37;font-weight:bold}.FAIL{color:#c62828;font-weight:bold}.NOT{color:#777}
.warnings{background:#fff4e5;border:1px solid #f0b429;border-left:6px solid #e08e0b;
padding:.5em 1em;margin:1em 0}.warnings ul{margin:.3em 0;padding-left:1.2em}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
div.wide{overflow-x:auto}div.wide td.l{white-space:nowrap}tr.pareto td{background:#fff3e0}tr.pareto td.l{font-weight:bold}
table.heat td{font-size:.8em;padding:.15em .4em}table.heat th.v{writing-mode:vertical-rl;
transform:rotate(180deg);text-align:left;white-space:nowrap;font-weight:normal;font-size:.8em}
.heat-legend td{font-size:.8em;text-align:center}
"""

#: The heat map's colour scale: 1 - cosine from 1e-6 (green) to 1e-1 or worse (red), on a
#: log scale (a cosine of 0.999 is a much worse layer than one of 0.99999).
_HEAT_BEST, _HEAT_WORST = -6.0, -1.0

# Click (or Enter/Space on) a column header to sort by it; again to reverse. Numbers sort
# numerically ("5.121e-04" < "0.0026", "inf" last), empty cells ("-", "NaN") always last.
_SORT_SCRIPT = """
(function(){
function key(cell){var t=cell.textContent.trim();
if(t===""||t==="-"||t==="NaN")return null;if(t==="inf")return Infinity;if(t==="-inf")return -Infinity;
var v=Number(t.replace(/\\u2212/g,"-"));return isNaN(v)?t:v;}
function cmp(x,y){if(typeof x==="number"&&typeof y==="number")return x<y?-1:x>y?1:0;
if(typeof x==="number")return -1;if(typeof y==="number")return 1;
return x.localeCompare(y,undefined,{numeric:true});}
Array.prototype.forEach.call(document.querySelectorAll("table.sortable"),function(table){
var rows=table.tHead.rows,heads=rows[rows.length-1].cells;
Array.prototype.forEach.call(heads,function(th,col){
th.tabIndex=0;th.title="Sort by this column";
function sort(){var body=table.tBodies[0],list=Array.prototype.slice.call(body.rows);
var asc=th.getAttribute("aria-sort")!=="ascending";
Array.prototype.forEach.call(heads,function(h){h.removeAttribute("aria-sort");});
th.setAttribute("aria-sort",asc?"ascending":"descending");
list.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
if(x===null||y===null)return (x===null)-(y===null);var c=cmp(x,y);return asc?c:-c;});
list.forEach(function(r){body.appendChild(r);});}
th.addEventListener("click",sort);
th.addEventListener("keydown",function(e){if(e.key==="Enter"||e.key===" "){e.preventDefault();sort();}});
});});
})();
"""


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: Sequence[bool] | None = None,
    groups: Sequence[tuple[str, int, int]] = (),
    sortable: bool = True,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; left-aligned text columns, right-aligned numeric ones that never wrap
    (``5.121e-04`` split as ``5.121e-`` / ``04`` reads as a different number). ``groups`` are
    (title, first column, last column) spanned by a header cell above the column names;
    ``row_classes`` a class for each body row ("" for none)."""
    left = left or [i == 0 for i in range(len(header))]
    head = ""
    if groups:
        cells, column = [], 0
        for group_title, first, last in sorted(groups, key=lambda g: g[1]):
            if first > column:
                cells.append(f'<th colspan="{first - column}"></th>')
            cells.append(f'<th class="g" colspan="{last - first + 1}">{escape(group_title)}</th>')
            column = last + 1
        if column < len(header):
            cells.append(f'<th colspan="{len(header) - column}"></th>')
        head += "<tr>" + "".join(cells) + "</tr>"
    head += (
        "<tr>"
        + "".join(
            f'<th class="{"l" if lf else ""}" scope="col">{escape(h)}</th>'
            for h, lf in zip(header, left)
        )
        + "</tr>"
    )
    body = []
    for index, row in enumerate(rows):
        cells = []
        for cell, lf in zip(row, left):
            status = cell.split()[0] if cell in ("PASS", "FAIL", "NOT RUN", "NOT AUDITED") else ""
            cls = " ".join(c for c in ("l" if lf else "n", status) if c)
            cells.append(f'<td class="{cls}">{escape(cell)}</td>')
        row_class = row_classes[index] if row_classes and index < len(row_classes) else ""
        opening = f'<tr class="{escape(row_class)}">' if row_class else "<tr>"
        body.append(opening + "".join(cells) + "</tr>")
    kind = ' class="sortable"' if sortable else ""
    return f"<table{kind}><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _status(text: str) -> str:
    return f'<span class="{escape(text.split()[0])}">{escape(text)}</span>'


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _accuracy_axis(values: Sequence[float]) -> float:
    """Where the accuracy axis starts: a round value a little under the lowest bar, so that
    differences of tenths of a point are visible; 0 when the data spread over most of it."""
    if not values:
        return 0.0
    low, high = min(values), max(values)
    pad = max((high - low) * 0.3, 0.5)
    start = low - pad
    step = 10.0 if high - start > 20 else (1.0 if high - start > 2 else 0.1)
    start = math.floor(start / step) * step
    return 0.0 if start < 20 else round(start, 6)


def _band(
    max_abs: Any, facts: tuple[float, float, float] | None
) -> tuple[float, float, float] | None:
    """log2 (lowest subnormal, lowest normal, max) of the format once absmax scaling has
    mapped the layer's largest |x| onto the format's max."""
    top = _float_or_none(max_abs)
    if facts is None or top is None or top <= 0:
        return None
    subnormal, normal, fmt_max = facts
    shift = math.log2(top) - math.log2(fmt_max)
    return math.log2(subnormal) + shift, math.log2(normal) + shift, math.log2(top)


class HtmlReporter:
    """Writes ``report.html``: the text report's content plus accuracy, cosine, MSE and
    dynamic-range plots drawn as inline SVG, with sortable tables."""

    name = "html"
    file_name = FILE_NAME

    def render(self, report: Mapping[str, Any]) -> str:
        metrics = report.get("metrics") or {}
        heading = report_title(report)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(heading)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{escape(heading)}</h1>",
        ]
        run_warnings = warnings(report)
        if run_warnings:
            items = "".join(f"<li>{escape(w)}</li>" for w in run_warnings)
            parts.append(
                f'<div class="warnings" role="alert"><strong>'
                f"{'Warning' if len(run_warnings) == 1 else 'Warnings'}</strong>"
                f"<ul>{items}</ul></div>"
            )
        parts.append(_table(("Run", ""), header_lines(report), left=(True, True), sortable=False))
        parts += self._skipped(report)
        parts += self._accuracy(metrics.get("accuracy"))
        parts += self._compliance(metrics.get("compliance"))
        parts += self._layerwise(metrics.get("layerwise"), report)
        parts += self._failures(metrics.get("compliance"))
        for name in metrics:
            if name not in KNOWN_METRICS:
                parts.append(f"<h2>{escape(str(name))}</h2>")
                parts.append(f"<pre>{escape(json.dumps(json_safe(metrics[name]), indent=2))}</pre>")
        parts.append(f"<script>{_SORT_SCRIPT}</script>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def _skipped(self, report: Mapping[str, Any]) -> list[str]:
        rows, more = skipped_rows(report)
        if not rows:
            return []
        out = [
            "<h2>Skipped images (unreadable)</h2>",
            _table(("File", "Reason"), rows, left=(True, True)),
        ]
        if more:
            out.append(f"<p>... and {more} more.</p>")
        return out

    def _accuracy(self, accuracy: Mapping[str, Any] | None) -> list[str]:
        out = ["<h2>1. Accuracy metrics</h2>"]
        if accuracy is None:
            return out + ["<p>(accuracy metric not run)</p>"]
        out.append(
            _table(("Metric", "FP32", "Quantized", "Delta (points)"), accuracy_rows(accuracy))
        )
        out.append(f"<p>{escape(agreement_text(accuracy))}.</p>")
        for line in nonfinite_logit_warnings(accuracy):
            out.append(f'<p class="warnings">WARNING: {escape(line)}</p>')
        k = accuracy.get("top_k", 5)
        agreement = _float_or_none(accuracy.get("agreement"))
        deltas = accuracy.get("delta") or {}
        categories = []
        for key, label in (("top1", "Top-1"), ("topk", f"Top-{k}"), ("certainty", "Certainty")):
            delta = _float_or_none(deltas.get(key))
            categories.append(label if delta is None else f"{label} ({100 * delta:+.2f} pt)")
        categories.append("Agreement")

        def side(name: str) -> list[float | None]:
            data = accuracy.get(name) or {}
            values = [_float_or_none(data.get(key)) for key in ("top1", "topk", "certainty")]
            return [None if v is None else 100 * v for v in values] + [None]

        series = {"FP32": side("reference"), "Quantized": side("quantized")}
        series["Quantized"][3] = None if agreement is None else 100 * agreement
        drawn = [v for values in series.values() for v in values if v is not None]
        out.append(
            "<figure>"
            + svg.grouped_bars(
                categories,
                series,
                "Accuracy (%), delta in points under each group",
                "%",
                y_max=100.0,
                y_min=_accuracy_axis(drawn),
                value_text=lambda v: f"{v:.2f}",
            )
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
            out.append(self._dynamic_range(layers, names, report))
            rows = layer_rows(layerwise)
            left = [column in ("Layer", "Type") for column in LAYER_COLUMNS]
            out.append(
                _table(
                    LAYER_COLUMNS,
                    [[row[c] for c in LAYER_COLUMNS] for row in rows],
                    left,
                    groups=LAYER_GROUPS,
                )
            )
            out.append(f"<p>{escape(LAYER_NOTE)}</p>")
        else:
            out.append("<p>(no quantized layers were measured)</p>")
        not_quantized = (report.get("preparation") or {}).get("not_quantized") or []
        if not_quantized:
            out.append(f"<p>Not quantized ({plural(len(not_quantized), 'module')}):</p>")
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

    def _dynamic_range(
        self, layers: Sequence[Mapping[str, Any]], names: Sequence[str], report: Mapping[str, Any]
    ) -> str:
        """The input dynamic-range plot, with the band each layer's input format can hold."""
        inputs = [layer.get("input") or {} for layer in layers]
        formats = input_formats(report, names)
        facts = {name: format_range(report, name) for name in set(formats) if name is not None}
        bands = [
            _band(i.get("max_abs"), facts.get(f) if f is not None else None)
            for i, f in zip(inputs, formats)
        ]
        shown = sorted({f for f, b in zip(formats, bands) if f is not None and b is not None})
        label = shown[0] if len(shown) == 1 else "format"
        caption = ""
        if shown:
            described = "; ".join(
                "{}: {} (subnormal) / {} (normal) to {}".format(
                    name,
                    *(svg.compact_number(v) for v in facts[name]),  # type: ignore[union-attr]
                )
                for name in shown
            )
            caption = (
                "<figcaption>Shaded: the magnitudes the input format represents once absmax "
                "scaling maps the layer's largest |x| onto the format's max (darker: normal "
                "numbers, lighter: subnormals); input magnitudes below the band flush to zero. "
                "With per-chunk or per-channel scaling each chunk's band sits at that chunk's "
                f"own max, so this is the worst case. {escape(described)}.</figcaption>"
            )
        return (
            "<figure>"
            + svg.ranges(
                names,
                [i.get("min_nonzero_abs") for i in inputs],
                [i.get("max_abs") for i in inputs],
                "Input dynamic range per layer (smallest to largest non-zero |x|)",
                bands=bands,
                band_names=(f"{label}: normal range", "subnormal range"),
            )
            + caption
            + "</figure>"
        )

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
            nonfinite = nonfinite_text(tensor.get("nonfinite"))
            nonfinite = f"; {nonfinite}" if nonfinite else ""
            examples = "".join(
                f"<li>{escape(example_text(e))}</li>" for e in tensor.get("examples") or []
            )
            items.append(
                f"<li><b>{escape(tensor['layer'])}</b> [{escape(tensor['role'])}] {escape(str(tensor.get('format', '')))}: "
                f"{_status('FAIL')} {tensor.get('failed', 0)} of "
                f"{plural(tensor.get('elements', 0), 'value')} ({escape(counts)})"
                f"{escape(nonfinite)}<ul>{examples}</ul></li>"
            )
        return out + ["<ul>" + "".join(items) + "</ul>"]

    def write(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        return [atomic_write_text(Path(out_dir) / self.file_name, self.render(report))]

    # ------------------------------------------------------------------------- sweeps

    def render_sweep(self, summary: Mapping[str, Any]) -> str:
        """``sweep.html``: the INCOMPLETE banner while configs are pending, the sweep table
        (sortable, Pareto rows highlighted), the quality against bits scatter plot with its
        Pareto front, and the layers x configs heat map of output cosine."""
        heading = _sweep.title(summary)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(heading)}</title><style>{_STYLE}</style></head><body>",
        ]
        incomplete = _sweep.incomplete_text(summary)
        if incomplete:
            parts.append(
                f'<div class="warnings incomplete" role="alert"><strong>'
                f"{escape(incomplete)}</strong><br>This page is rewritten as configs finish; "
                "the table, the plot and the Pareto front cover the finished ones only.</div>"
            )
        parts.append(f"<h1>{escape(heading)}</h1>")
        found = _sweep.quality(summary)
        facts = [
            "Effective bits: mean bits per weight element, scales included (FP32 weights count 32)."
        ]
        if found:
            facts.append(f"Quality: {found[1]} ({found[0]}), higher is better.")
        parts.append(f"<p>{escape(' '.join(facts))}</p>")
        parts += self._sweep_table(summary)
        parts += self._sweep_plot(summary)
        parts += self._sweep_heat_map(summary)
        parts.append(f"<script>{_SORT_SCRIPT}</script>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def _sweep_table(self, summary: Mapping[str, Any]) -> list[str]:
        out = ["<h2>Configs</h2>"]
        header, rows, right = _sweep.table(summary)
        if not rows:
            return out + ["<p>(no configs)</p>"]
        # The grid's keys as columns after the name: sort by format, by mode...
        keys = _sweep.variant_keys(summary)
        all_rows = _sweep.rows(summary)
        for index, row in enumerate(rows):
            variant = all_rows[index].get("variant")
            variant = variant if isinstance(variant, Mapping) else {}
            row[2:2] = [_sweep.one_line(variant.get(key, "-")) for key in keys]
        header[2:2] = keys
        right[2:2] = [False] * len(keys)
        classes = ["pareto" if row.get("pareto") is True else "" for row in all_rows]
        table = _table(header, rows, left=[not r for r in right], row_classes=classes)
        out.append(f'<div class="wide">{table}</div>')
        out.append(f"<p>{escape(_sweep.pareto_note(summary))}</p>")
        return out

    def _sweep_plot(self, summary: Mapping[str, Any]) -> list[str]:
        out = ["<h2>Quality against bits</h2>"]
        found = _sweep.quality(summary)
        if found is None:
            return out + [
                "<p>(no quality column: no metric of these runs declares one, so there is no "
                "Pareto front to plot)</p>"
            ]
        points, missing = _sweep.scatter_points(summary)
        notes = []
        if missing:
            notes.append(
                f"Not drawn ({plural(len(missing), 'config')} without a finite {found[1]} or "
                f"effective bits): {', '.join(missing)}"
            )
        waiting = _sweep.pending(summary)
        if waiting:
            notes.append(f"{plural(len(waiting), 'config')} still pending: not drawn.")
        if not points:
            return (
                out
                + [
                    f"<p>(no finished config has both a finite {escape(found[1])} and effective "
                    "bits)</p>"
                ]
                + [f"<p>{escape(note)}</p>" for note in notes]
            )
        chart = svg.scatter(
            points,
            f"{found[1]} against effective bits per weight",
            "bits per weight",
            found[1],
            notes=notes,
        )
        caption = (
            "<figcaption>Each dot is a config (hover for its name and values). The Pareto "
            "front, joined by the step line, holds the configs no other config beats: none "
            "has at least their quality with at most their bits.</figcaption>"
        )
        return out + [f"<figure>{chart}{caption}</figure>"]

    def _sweep_heat_map(self, summary: Mapping[str, Any]) -> list[str]:
        names, more = _sweep.worst_layers(summary, _sweep.HTML_LAYERS)
        if not names:
            return []
        all_rows = _sweep.rows(summary)
        head = '<th class="l" scope="col">layer</th>' + "".join(
            f'<th class="v" scope="col" title="{escape(_sweep.one_line(row.get("name", "-")))}">'
            f"{i}. {escape(svg.short_label(_sweep.one_line(row.get('name', '-'))))}</th>"
            for i, row in enumerate(all_rows, start=1)
        )
        grid = [[_sweep.layer_value(row, name) for row in all_rows] for name in names]
        digits = _sweep.layer_decimals(grid)
        body = []
        for name, values in zip(names, grid):
            cells = [f'<th class="l" scope="row">{escape(_sweep.one_line(name))}</th>']
            for row, value, places in zip(all_rows, values, digits):
                text = _sweep.value_text(value, places)
                background, colour = _heat_colour(value)
                tip = f"{name} in {_sweep.one_line(row.get('name', '-'))}: {text}"
                cells.append(
                    f'<td class="n" style="background:{background};color:{colour}" '
                    f'title="{escape(tip)}">{escape(text)}</td>'
                )
            body.append("<tr>" + "".join(cells) + "</tr>")
        legend = "".join(
            f'<td style="background:{_heat_colour(1 - 10.0**e)[0]}">{text}</td>'
            for e, text in ((-6, "\u2264 1e-6"), (-5, "1e-5"), (-4, "1e-4"), (-3, "1e-3"))
            + ((-2, "1e-2"), (-1, "\u2265 0.1"))
        )
        legend += f'<td style="background:{_heat_colour(math.nan)[0]};color:#fff">NaN</td>'
        legend += f'<td style="background:{_heat_colour(None)[0]}">missing</td>'
        return [
            "<h2>Layers \u00d7 configs (output cosine)</h2>",
            f'<div class="wide"><table class="heat"><thead><tr>{head}</tr></thead><tbody>'
            f"{''.join(body)}</tbody></table></div>",
            f"<p>{escape(_sweep.layer_note(len(names), more))}</p>",
            '<table class="heat-legend"><tr><th class="l">1 \u2212 cosine</th>'
            f"{legend}</tr></table>",
        ]

    def write_sweep(self, summary: Mapping[str, Any], folder: Path) -> list[Path]:
        return [atomic_write_text(Path(folder) / SWEEP_FILE, self.render_sweep(summary))]


def _heat_colour(value: Any) -> tuple[str, str]:
    """(background, text colour) of a heat-map cell for an output cosine."""
    cosine = _sweep.as_float(value)
    if cosine is None:
        return "#f4f4f4", "#777"
    if not math.isfinite(cosine):
        return "#333", "#fff"
    gap = max(1.0 - cosine, 1e-12)
    t = min(max((math.log10(gap) - _HEAT_BEST) / (_HEAT_WORST - _HEAT_BEST), 0.0), 1.0)
    return f"hsl({120 * (1 - t):.0f},65%,{80 - 12 * t:.0f}%)", "#222"
