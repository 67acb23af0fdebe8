"""The sweep reports: ``sweep.json``, ``.txt``, ``.md``, ``.csv`` and ``.html`` written by each
reporter's ``write_sweep`` from a sweep mapping (the shape ``qbench.sweep.summarize`` builds),
built here by hand: a finished sweep, an unfinished one, one without a quality column, values
that are NaN or infinite, and config and layer names that are HTML."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from eval_svg_checks import SVG, clipped_texts, svgs
from qbench_eval.reporters import (
    CsvReporter,
    HtmlReporter,
    JsonReporter,
    MarkdownReporter,
    TextReporter,
    _sweep,
)

HOSTILE = '<script>alert("x")</script>'
COLUMNS = [
    {"key": "accuracy.top1", "label": "top-1 %"},
    {"key": "accuracy.top1_delta", "label": "top-1 Δ pp"},
    {"key": "layerwise.worst_cosine", "label": "worst cosine"},
]


def row(
    name: str,
    bits: Any,
    delta: Any,
    *,
    pareto: bool = False,
    audit: str | None = "PASS",
    layers: dict[str, Any] | None = None,
    variant: dict[str, str] | None = None,
    status: str = "done",
) -> dict[str, Any]:
    """One config's row; ``delta`` is its quality (top-1 change in points)."""
    out: dict[str, Any] = {"name": name, "status": status}
    if variant is not None:
        out["variant"] = variant
    if status == "pending":  # what the runner has before a config finishes
        return {**out, "pareto": False}
    cosines = list((layers or {}).values())
    finite = [c for c in cosines if isinstance(c, float) and math.isfinite(c)]
    return {
        **out,
        "model": "toy",
        "images": 64,
        "effective_bits": bits,
        "weight_share": 1.0,
        "columns": [
            {**COLUMNS[0], "value": None if delta is None else 98.0 + delta},
            {**COLUMNS[1], "value": delta},
            {**COLUMNS[2], "value": min(finite) if finite else None},
        ],
        "layers": layers or {},
        "result_key": "k-" + name,
        "report": f"reports/toy/{name}/report.json",
        "quality": "accuracy.top1_delta",
        "audit": audit,
        "pareto": pareto,
    }


def summary(rows: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    pending = [r["name"] for r in rows if r["status"] == "pending"]
    out = {
        "qbench_version": "0.1.0",
        "name": "toy-sweep",
        "complete": not pending,
        "configs": len(rows),
        "finished": len(rows) - len(pending),
        "pending": pending,
        "reference_passes": 2,
        "quality": "accuracy.top1_delta",
        "columns": COLUMNS,
        "rows": rows,
    }
    out.update(overrides)
    return out


def finished() -> dict[str, Any]:
    """Four configs: fp8 (8.25 bits, -0.2) and int4 (4.5 bits, -1.5) on the front; fp8-tensor
    (8.25, -0.6) and int8 (8.5, -0.2) dominated. Layer ``fc`` is by far the worst."""
    grid = {"format": "fp8", "mode": "chunk"}
    return summary(
        [
            row(
                "toy-fp8-chunk",
                8.25,
                -0.2,
                pareto=True,
                variant=grid,
                layers={"conv1": 0.99999, "fc": 0.97, "relu": 0.9995},
            ),
            row(
                "toy-fp8-tensor",
                8.25,
                -0.6,
                variant={"format": "fp8", "mode": "tensor"},
                layers={"conv1": 0.9999, "fc": 0.95, "relu": 0.9990},
            ),
            row(
                "toy-int4-chunk",
                4.5,
                -1.5,
                pareto=True,
                audit="FAIL",
                variant={"format": "int4", "mode": "chunk"},
                layers={"conv1": 0.999, "fc": 0.90, "relu": 0.998},
            ),
            row(
                "toy-int8-chunk",
                8.5,
                -0.2,
                variant={"format": "int8", "mode": "chunk"},
                layers={"conv1": 0.99995, "fc": 0.99, "relu": 0.9999},
            ),
        ]
    )


def unfinished() -> dict[str, Any]:
    """Two of four configs finished, two pending."""
    done = finished()["rows"][:2]
    return summary(
        [
            *done,
            row("toy-int4-chunk", None, None, status="pending", variant={"format": "int4"}),
            row("toy-int8-chunk", None, None, status="pending", variant={"format": "int8"}),
        ]
    )


def hostile() -> dict[str, Any]:
    """HTML in config, layer and sweep names, NaN and infinite values, no variants."""
    nan, inf = math.nan, math.inf
    return summary(
        [
            row(
                f"a{HOSTILE}",
                4.25,
                -0.1,
                pareto=True,
                layers={f"l{HOSTILE}": 0.99, "ok": 0.999},
            ),
            row("b&c", nan, -0.5, audit=None, layers={f"l{HOSTILE}": nan, "ok": 0.5}),
            {
                **row("d", inf, nan, audit="FAIL", layers={"ok": -inf}),
                "columns": [
                    {**COLUMNS[0], "value": nan},
                    {**COLUMNS[1], "value": nan},
                    {**COLUMNS[2], "value": -inf},
                ],
            },
        ],
        name=f"s{HOSTILE}",
    )


def write(reporter: Any, mapping: dict[str, Any], folder: Path) -> Path:
    (path,) = reporter.write_sweep(mapping, folder)
    assert path.parent == folder
    return path


def _fail(constant: str) -> Any:
    raise AssertionError(f"not strict JSON: {constant}")


# ------------------------------------------------------------------------------- json


def test_json_is_the_mapping_in_strict_json(tmp_path: Path) -> None:
    path = write(JsonReporter(), hostile(), tmp_path)
    assert path.name == "sweep.json"
    data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_fail)
    assert data["name"] == f"s{HOSTILE}"
    assert data["rows"][1]["effective_bits"] == "NaN"
    assert data["rows"][2]["effective_bits"] == "Infinity"
    assert data["rows"][2]["layers"]["ok"] == "-Infinity"
    assert data["rows"][0]["pareto"] is True
    again = finished()
    data = json.loads(write(JsonReporter(), again, tmp_path).read_text(encoding="utf-8"))
    assert data == again  # finite values round-trip exactly


# ------------------------------------------------------------------------------- text


def _table_rows(text: str) -> dict[str, list[str]]:
    """Each config's row of sweep.txt, split into cells, by name."""
    found = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) > 2 and cells[0].isdigit() and cells[1].startswith(("toy", "a<", "b&", "d")):
            found[cells[1]] = cells
    return found


def test_text_table_marks_the_pareto_front(tmp_path: Path) -> None:
    path = write(TextReporter(), finished(), tmp_path)
    assert path.name == "sweep.txt"
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "QBench sweep report: toy-sweep, 4 of 4 configs finished, 2 FP32 passes"
    assert "INCOMPLETE" not in text
    header = next(line for line in lines if line.startswith("#  config"))
    assert header.split()[:3] == ["#", "config", "bits/weight"]
    assert "top-1 Δ pp" in header and "worst cosine" in header and "Pareto" in header
    rows = _table_rows(text)
    assert set(rows) == {"toy-fp8-chunk", "toy-fp8-tensor", "toy-int4-chunk", "toy-int8-chunk"}
    stars = {name for name, cells in rows.items() if cells[-1] == "*"}
    assert stars == {"toy-fp8-chunk", "toy-int4-chunk"}
    assert rows["toy-fp8-chunk"][2] == "8.250" and rows["toy-int4-chunk"][2] == "4.500"
    assert rows["toy-int4-chunk"][-2] == "FAIL"
    assert "-0.2000" in rows["toy-fp8-chunk"] and "96.5000" in rows["toy-int4-chunk"]
    # worst cosine 0.97 and 0.99 need no extra digits; the layers table's conv1 does.
    assert "Pareto front of top-1 Δ pp" in text


def test_text_layer_table_puts_the_worst_layer_first(tmp_path: Path) -> None:
    text = write(TextReporter(), finished(), tmp_path).read_text(encoding="utf-8")
    part = text.split("Layers × configs (output cosine)", 1)[1].splitlines()
    body = [
        line.split() for line in part if line.split() and line.split()[0] in ("conv1", "fc", "relu")
    ]
    assert [cells[0] for cells in body] == ["fc", "relu", "conv1"]
    header = next(line.split() for line in part if line.startswith("layer"))
    assert header == ["layer", "#1", "#2", "#3", "#4"]
    conv1 = body[2]
    # 0.99999 and 0.99995 stay distinct (four decimals would show 1.0000 for both).
    assert conv1[1] == "0.999990" and conv1[4] == "0.999950"
    # One number of decimals per config's column: what its closest-to-1 value needs.
    assert body[0][1:] == ["0.970000", "0.95000", "0.9000", "0.990000"]


def test_text_layer_table_is_capped_at_the_30_worst(tmp_path: Path) -> None:
    layers = {f"layer{i}": 1.0 - (i + 1) * 1e-4 for i in range(45)}  # layer44 is the worst
    mapping = summary([row("toy-a", 8.0, -0.1, pareto=True, layers=layers)])
    text = write(TextReporter(), mapping, tmp_path).read_text(encoding="utf-8")
    shown = re.findall(r"^(layer\d+)\s", text, flags=re.M)
    assert len(shown) == 30
    assert shown[0] == "layer44" and shown[-1] == "layer15"
    assert "15 more not shown" in text


def test_text_says_incomplete_first(tmp_path: Path) -> None:
    text = write(TextReporter(), unfinished(), tmp_path).read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first == ("INCOMPLETE: 2 of 4 configs finished; pending: toy-int4-chunk, toy-int8-chunk")
    assert "2 of 4 configs finished" in text.splitlines()[1]
    rows = _table_rows(text)
    assert rows["toy-int4-chunk"][2:] == ["-", "-", "-", "-", "pending"]
    # A mapping claiming complete while a config is pending still reads as incomplete.
    claims = {**unfinished(), "complete": True}
    text = write(TextReporter(), claims, tmp_path).read_text(encoding="utf-8")
    assert text.startswith("INCOMPLETE: 2 of 4")


def test_text_nonfinite_and_missing_values(tmp_path: Path) -> None:
    text = write(TextReporter(), hostile(), tmp_path).read_text(encoding="utf-8")
    rows = _table_rows(text)
    assert rows["b&c"][2] == "NaN" and rows["d"][2] == "inf"
    assert rows["d"][3:6] == ["NaN", "NaN", "-inf"]  # top-1, delta, worst cosine
    assert rows["b&c"][-1] == "-"  # no audit, not on the front
    part = text.split("Layers × configs", 1)[1]
    # NaN is the worst there is, then -inf, then 0.5.
    order = re.findall(r"^(\S+)\s", part, flags=re.M)
    assert order.index(f"l{HOSTILE}") < order.index("ok")


def test_text_without_quality(tmp_path: Path) -> None:
    mapping = finished()
    mapping["quality"] = None
    for r in mapping["rows"]:
        r["pareto"] = False
    text = write(TextReporter(), mapping, tmp_path).read_text(encoding="utf-8")
    assert "no Pareto front" in text
    assert not any(cells[-1] == "*" for cells in _table_rows(text).values())


# --------------------------------------------------------------------------- markdown


def test_markdown_table_marks_pareto_and_escapes(tmp_path: Path) -> None:
    path = write(MarkdownReporter(), finished(), tmp_path)
    assert path.name == "sweep.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# QBench sweep report: toy-sweep, 4 of 4 configs finished")
    table = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(table) == 4
    starred = [line.split(" | ")[1] for line in table if line.rstrip(" |").endswith("\\*")]
    assert starred == ["toy-fp8-chunk", "toy-int4-chunk"]
    assert "## Layers × configs (output cosine)" in text
    assert re.search(r"^\| fc \| 0\.970000 \| 0\.95000 \| 0\.9000 \| 0\.990000 \|$", text, re.M)

    text = write(MarkdownReporter(), unfinished(), tmp_path).read_text(encoding="utf-8")
    assert text.startswith("> **INCOMPLETE: 2 of 4 configs finished; pending: toy-int4-chunk")

    text = write(MarkdownReporter(), hostile(), tmp_path).read_text(encoding="utf-8")
    assert "\\<script>" in text and not re.search(r"(?<!\\)<", text)  # every < escaped


# -------------------------------------------------------------------------------- csv


def test_csv_one_row_per_config_with_stable_columns(tmp_path: Path) -> None:
    path = write(CsvReporter(), finished(), tmp_path)
    assert path.name == "sweep.csv"
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert rows[0] == [
        "name",
        "status",
        "audit",
        "effective_bits",
        "weight_share",
        "pareto",
        "accuracy.top1",
        "accuracy.top1_delta",
        "layerwise.worst_cosine",
        "variant.format",
        "variant.mode",
    ]
    records = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert [r["name"] for r in records] == [r["name"] for r in finished()["rows"]]
    assert [r["pareto"] for r in records] == ["true", "false", "true", "false"]
    assert float(records[2]["effective_bits"]) == 4.5  # unrounded
    assert float(records[0]["accuracy.top1_delta"]) == -0.2
    assert records[2]["audit"] == "FAIL" and records[2]["variant.format"] == "int4"


def test_csv_nonfinite_pending_and_missing(tmp_path: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(write(CsvReporter(), hostile(), tmp_path).read_text())))
    assert rows[0]["name"] == f"a{HOSTILE}"
    assert rows[1]["effective_bits"] == "nan" and rows[2]["effective_bits"] == "inf"
    assert rows[2]["accuracy.top1_delta"] == "nan" and rows[1]["audit"] == ""
    assert not any(key.startswith("variant.") for key in rows[0])
    rows = list(
        csv.DictReader(io.StringIO(write(CsvReporter(), unfinished(), tmp_path).read_text()))
    )
    assert [r["status"] for r in rows] == ["done", "done", "pending", "pending"]
    assert rows[3]["effective_bits"] == "" and rows[3]["variant.format"] == "int8"
    assert rows[0]["variant.mode"] == "chunk" and rows[3]["variant.mode"] == ""


# ------------------------------------------------------------------------------- html


def _scatter(html: str) -> ElementTree.Element:
    (chart,) = svgs(html)
    return chart


def _dots(chart: ElementTree.Element) -> dict[str, ElementTree.Element]:
    return {c.find(f"{SVG}title").text.split(":")[0]: c for c in chart.iter(f"{SVG}circle")}


def test_html_scatter_highlights_and_joins_the_pareto_front(tmp_path: Path) -> None:
    path = write(HtmlReporter(), finished(), tmp_path)
    assert path.name == "sweep.html"
    html = path.read_text(encoding="utf-8")
    chart = _scatter(html)
    dots = _dots(chart)
    assert set(dots) == {"toy-fp8-chunk", "toy-fp8-tensor", "toy-int4-chunk", "toy-int8-chunk"}
    front = {name for name, dot in dots.items() if float(dot.get("r")) > 4}
    assert front == {"toy-fp8-chunk", "toy-int4-chunk"}
    assert len({dots[name].get("fill") for name in front}) == 1
    assert dots["toy-fp8-tensor"].get("fill") != dots["toy-fp8-chunk"].get("fill")
    # Fewer bits further left, better quality higher up.
    x = {name: float(dot.get("cx")) for name, dot in dots.items()}
    y = {name: float(dot.get("cy")) for name, dot in dots.items()}
    assert x["toy-int4-chunk"] < x["toy-fp8-chunk"] < x["toy-int8-chunk"]
    assert y["toy-fp8-chunk"] < y["toy-fp8-tensor"] and y["toy-fp8-chunk"] < y["toy-int4-chunk"]
    # The step line: from int4 across to fp8's bits, then up to fp8.
    (line,) = chart.iter(f"{SVG}polyline")
    points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
    assert points == [
        pytest.approx((x["toy-int4-chunk"], y["toy-int4-chunk"])),
        pytest.approx((x["toy-fp8-chunk"], y["toy-int4-chunk"])),
        pytest.approx((x["toy-fp8-chunk"], y["toy-fp8-chunk"])),
    ]
    # Every dot labelled with its config's name; the axis with the quality column's label.
    labels = [t.text for t in chart.iter(f"{SVG}text") if t.find(f"{SVG}title") is not None]
    assert sorted(labels) == sorted(dots)
    assert "top-1 Δ pp" in [t.text for t in chart.iter(f"{SVG}text")]
    assert not clipped_texts(html)


def test_html_table_is_sortable_and_highlights_pareto_rows(tmp_path: Path) -> None:
    html = write(HtmlReporter(), finished(), tmp_path).read_text(encoding="utf-8")
    table = re.search(r'<table class="sortable">.*?</table>', html, flags=re.S).group(0)
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert heads[:5] == ["#", "config", "format", "mode", "bits/weight"]
    assert heads[-2:] == ["audit", "Pareto"] and "top-1 Δ pp" in heads
    rows = re.findall(r"<tr( class=\"pareto\")?><td[^>]*>\d+</td><td[^>]*>([^<]*)</td>", table)
    assert [(bool(cls), name) for cls, name in rows] == [
        (True, "toy-fp8-chunk"),
        (False, "toy-fp8-tensor"),
        (True, "toy-int4-chunk"),
        (False, "toy-int8-chunk"),
    ]
    assert '<td class="l FAIL">FAIL</td>' in table
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert len(scripts) == 1 and "table.sortable" in scripts[0][1]
    assert not re.search(r"(src|href)=|url\(|@import", html)  # self-contained
    assert "INCOMPLETE" not in html


def test_html_heat_map_worst_layers_first_and_coloured(tmp_path: Path) -> None:
    html = write(HtmlReporter(), finished(), tmp_path).read_text(encoding="utf-8")
    heat = re.search(r'<table class="heat">.*?</table>', html, flags=re.S).group(0)
    layers = re.findall(r'<th class="l" scope="row">([^<]*)</th>', heat)
    assert layers == ["fc", "relu", "conv1"]
    configs = re.findall(r'<th class="v" scope="col" title="([^"]*)"', heat)
    assert configs == [r["name"] for r in finished()["rows"]]
    fc = re.search(r"<tr><th[^>]*>fc</th>(.*?)</tr>", heat).group(1)
    cells = re.findall(r'style="background:hsl\((\d+),[^"]*"[^>]*>([^<]*)</td>', fc)
    assert [text for _, text in cells] == ["0.970000", "0.95000", "0.9000", "0.990000"]
    conv1 = re.search(r"<tr><th[^>]*>conv1</th>(.*?)</tr>", heat).group(1)
    hues = [int(h) for h, _ in re.findall(r"background:hsl\((\d+),[^>]*>([^<]*)<", conv1)]
    # Greener (higher hue) for better layers: conv1 at 0.99999 beats fc at 0.90 in config 3.
    assert hues[0] > int(cells[2][0])


def test_html_heat_map_is_capped(tmp_path: Path) -> None:
    layers = {f"layer{i}": 1.0 - (i + 1) * 1e-4 for i in range(80)}
    mapping = summary([row("toy-a", 8.0, -0.1, pareto=True, layers=layers)])
    html = write(HtmlReporter(), mapping, tmp_path).read_text(encoding="utf-8")
    shown = re.findall(r'<th class="l" scope="row">([^<]*)</th>', html)
    assert len(shown) == 60 and shown[0] == "layer79"
    assert "20 more not shown" in html


def test_html_incomplete_banner(tmp_path: Path) -> None:
    html = write(HtmlReporter(), unfinished(), tmp_path).read_text(encoding="utf-8")
    banner = re.search(r'<div class="warnings incomplete" role="alert">(.*?)</div>', html, re.S)
    assert banner and "INCOMPLETE: 2 of 4 configs finished" in banner.group(1)
    assert "toy-int4-chunk, toy-int8-chunk" in banner.group(1)
    assert html.index("INCOMPLETE") < html.index("<h1>")
    assert set(_dots(_scatter(html))) == {"toy-fp8-chunk", "toy-fp8-tensor"}
    assert "2 configs still pending: not drawn." in html


def test_html_without_quality_has_no_plot(tmp_path: Path) -> None:
    mapping = finished()
    mapping["quality"] = None
    html = write(HtmlReporter(), mapping, tmp_path).read_text(encoding="utf-8")
    assert svgs(html) == []
    assert "no quality column" in html
    assert '<table class="heat">' in html  # the rest is still there


def test_html_escapes_every_name_and_survives_nonfinite_values(tmp_path: Path) -> None:
    html = write(HtmlReporter(), hostile(), tmp_path).read_text(encoding="utf-8")
    assert "<script>alert" not in html
    assert html.count("<script>") == 1  # the sort script only
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "b&amp;c" in html and "b&c" not in html
    chart = _scatter(html)  # parses as XML: every name escaped inside the SVG too
    assert set(_dots(chart)) == {f"a{HOSTILE}"}  # b (NaN bits) and d (NaN quality) left out
    notes = [t.text for t in chart.iter(f"{SVG}text") if t.text and t.text.startswith("Not drawn")]
    assert notes and "b&c" in notes[0] and "d" in notes[0]
    heat = re.search(r'<table class="heat">.*?</table>', html, flags=re.S).group(0)
    assert re.search(r'background:#333;color:#fff"[^>]*>NaN</td>', heat)
    assert ">-inf</td>" in heat
    assert not clipped_texts(html)


def test_many_long_names_fit_the_plot(tmp_path: Path) -> None:
    rows = [
        row(
            f"sweep-{'very-long-format-name' * (1 + i % 3)}-{i}",
            4.0 + (i % 5),
            -0.1 * i,
            pareto=i % 5 == 0,
        )
        for i in range(24)
    ]
    html = write(HtmlReporter(), summary(rows), tmp_path).read_text(encoding="utf-8")
    chart = _scatter(html)
    assert len(_dots(chart)) == 24
    labels = [t for t in chart.iter(f"{SVG}text") if t.find(f"{SVG}title") is not None]
    assert len(labels) == 24
    assert all(len(t.text) <= 32 for t in labels)
    assert not clipped_texts(html)


def test_every_reporter_writes_its_sweep_file(tmp_path: Path) -> None:
    written = []
    for reporter in (
        TextReporter(),
        JsonReporter(),
        HtmlReporter(),
        MarkdownReporter(),
        CsvReporter(),
    ):
        written += reporter.write_sweep(unfinished(), tmp_path)
    assert sorted(p.name for p in written) == sorted(
        ["sweep.txt", "sweep.json", "sweep.html", "sweep.md", "sweep.csv"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_value_text_digits() -> None:
    assert _sweep.decimals([0.5, 0.99]) == 4
    assert _sweep.decimals([0.9999, 0.5]) == 5
    assert _sweep.decimals([math.nan, None, "NaN", 1.0]) == 4
    assert _sweep.value_text(0.99999, 6) == "0.999990"
    assert _sweep.value_text("Infinity") == "inf" and _sweep.value_text(None) == "-"
    assert _sweep.value_text(12) == "12" and _sweep.value_text(1.5e-6) == "1.500e-06"


# --------------------------------------------------------- labels inside their charts
