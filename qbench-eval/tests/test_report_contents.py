"""What the reports say: warnings first, skipped files, non-finite counts, the title, the
layer table's column group and plurals, the Markdown and CSV reporters, and the HTML page's
layout (numbers that never wrap, sortable tables, a zoomed accuracy axis, the format's
range on the dynamic-range plot, axis labels that fit their chart)."""

from __future__ import annotations

import copy
import csv
import math
import os
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import qbench
from eval_sample_reports import LONG_NAMES, WARNINGS, sample_report, with_long_names, with_news
from eval_svg_checks import SVG, clipped_texts, svgs
from qbench_eval.reporters import (
    CsvReporter,
    HtmlReporter,
    JsonReporter,
    MarkdownReporter,
    TextReporter,
)

# --------------------------------------------------------------------------------------
# 1. Warnings, skipped files, non-finite counts
# --------------------------------------------------------------------------------------


def test_warnings_come_right_after_the_title() -> None:
    report = with_news(sample_report())
    text = TextReporter().render(report).splitlines()
    assert text[2:4] == [f"WARNING: {w}" for w in WARNINGS]  # title, its rule, warnings

    markdown = MarkdownReporter().render(report).splitlines()
    assert markdown[0].startswith("# QBench comparison report")
    first_other = next(i for i, line in enumerate(markdown[1:], 1) if line.startswith("- **"))
    quoted = [line for line in markdown[1:first_other] if line.startswith("> **Warning:**")]
    assert [q.removeprefix("> **Warning:** ") for q in quoted] == [
        "quantized model: 12 of 64 images had NaN/inf logits; they count as wrong",
        "dataset: 3 unreadable images skipped (skip_corrupt)",  # intraword _: no emphasis
    ]

    html = HtmlReporter().render(report)
    box = re.search(r'<div class="warnings" role="alert">(.*?)</div>', html, flags=re.S)
    assert box is not None
    assert re.findall(r"<li>(.*?)</li>", box.group(1)) == WARNINGS
    assert html.index("</h1>") < box.start() < html.index("<table")  # before the run table
    assert re.search(r"\.warnings\{[^}]*background", html)  # a visible box, not plain text


def test_skipped_files_are_counted_and_listed() -> None:
    report = with_news(sample_report(), skipped=25)
    text = TextReporter().render(report)
    assert "Dataset      : digits (test), 64 images, 25 skipped as unreadable" in text
    listed = re.findall(r"^val/n0144/img_\d{3}\.JPEG\s+cannot identify image file$", text, re.M)
    assert len(listed) == 20 and "... and 5 more" in text
    assert text.index("Skipped images") < text.index("1. Accuracy metrics")

    html = HtmlReporter().render(report)
    assert "64 images, 25 skipped as unreadable" in html
    assert html.count("cannot identify image file") == 20 and "and 5 more" in html

    markdown = MarkdownReporter().render(report)
    assert "64 images, 25 skipped as unreadable" in markdown
    assert (
        len(re.findall(r"^\| val/n0144/img_\d{3}\.JPEG \| cannot identify", markdown, re.M)) == 20
    )

    few = with_news(sample_report(), skipped=3)
    assert "3 skipped as unreadable" in TextReporter().render(few)
    assert "more" not in TextReporter().render(few).split("1. Accuracy")[0]


def test_nonfinite_counts_in_the_compliance_table() -> None:
    report = with_news(sample_report())
    for rendered in (
        TextReporter().render(report),
        MarkdownReporter().render(report),
        HtmlReporter().render(report),
    ):
        assert "2 tensors, 128 values; 3 NaN, 1 inf" in rendered
        assert "2 tensors, 999 values" in rendered
        assert "999 values;" not in rendered  # zero counts are not shown


def test_reports_without_the_new_keys_still_render(tmp_path: Path) -> None:
    report = sample_report()
    assert "warnings" not in report and "skipped" not in report["dataset"]
    for reporter in (TextReporter(), HtmlReporter(), MarkdownReporter(), CsvReporter()):
        for path in reporter.write(report, tmp_path):
            content = path.read_text()
            assert "WARNING" not in content and "Skipped images" not in content
            assert "skipped as unreadable" not in content
    assert (
        "Dataset      : digits (test), 64 images\n"
        in (tmp_path / "comparison_report.txt").read_text()
    )


# --------------------------------------------------------------------------------------
# 3. Title; 4. the layer table's column group, plurals
# --------------------------------------------------------------------------------------


def test_title_states_model_config_and_image_count() -> None:
    report = sample_report()
    expected = "QBench comparison report: zoo_resnet / demo, 64 images"
    text = TextReporter().render(report).splitlines()
    assert text[0] == expected and text[1] == "=" * len(expected)
    html = HtmlReporter().render(report)
    assert f"<title>{expected}</title>" in html and f"<h1>{expected}</h1>" in html
    assert MarkdownReporter().render(report).startswith(f"# {expected}\n")

    report["dataset"]["images"] = 1
    assert (
        TextReporter()
        .render(report)
        .startswith("QBench comparison report: zoo_resnet / demo, 1 image\n")
    )


def test_text_layer_table_groups_the_input_dynamic_range_columns() -> None:
    lines = TextReporter().render(sample_report()).splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("Layer "))
    header, group = lines[header_at], lines[header_at - 1]
    assert "Input dynamic range" in group
    # The dashed group line spans exactly the three input columns.
    start = header.index("SQNR (dB)") + len("SQNR (dB)") + 2
    assert group[:start].strip() == ""
    assert group[start] == "-" and group.rstrip().endswith("-")
    assert len(group.rstrip()) == len(header.rstrip())
    assert header.index("min |x|") >= start
    assert "Input dynamic range: min |x| / max |x|" in "\n".join(lines)

    html = HtmlReporter().render(sample_report())
    assert re.search(
        r'<th colspan="5"></th><th class="g" colspan="3">Input dynamic range</th>', html
    )
    markdown = MarkdownReporter().render(sample_report())
    assert "| Input dynamic range: min \\|x\\| | Input dynamic range: max \\|x\\| |" in markdown


def test_counts_are_pluralised() -> None:
    report = sample_report()
    report["dataset"]["images"] = 1
    report["metrics"]["accuracy"]["images"] = 1
    report["quantization"]["layers"] = [{"match": "fc", "enabled": False}]
    report["metrics"]["compliance"]["roles"]["stats"].update(tensors=1, elements=1)
    report["metrics"]["compliance"]["scales"]["checked"] = 1
    rendered = {
        "text": TextReporter().render(report),
        "html": HtmlReporter().render(report),
        "markdown": MarkdownReporter().render(report),
    }
    for name, content in rendered.items():
        assert "(s)" not in content, name
        assert "1 per-layer override" in content and "1 per-layer overrides" not in content
        assert "1 tensor, 1 value" in content and "1 scale" in content, name
        assert "Not quantized (1 module)" in content, name
        assert "of 1 image" in content and "of 1 images" not in content, name
        assert "1 images" not in content, name
    report["preparation"]["not_quantized"] *= 2
    assert "Not quantized (2 modules)" in TextReporter().render(report)


# --------------------------------------------------------------------------------------
# 5. Markdown and CSV reporters
# --------------------------------------------------------------------------------------


def _cells(row: str) -> list[str]:
    """A GFM table row split on its unescaped pipes."""
    assert row.startswith("| ") and row.endswith(" |"), row
    return [c.strip() for c in re.split(r"(?<!\\)\|", row[1:-1])]


@pytest.mark.parametrize("status", ["PASS", "FAIL"])
def test_markdown_report_has_the_text_reports_sections(tmp_path: Path, status: str) -> None:
    [path] = MarkdownReporter().write(sample_report(status), tmp_path)
    assert path == tmp_path / "report.md" and sorted(os.listdir(tmp_path)) == ["report.md"]
    markdown = path.read_text()
    headings = [
        "## 1. Accuracy metrics",
        "## 2. Compliance",
        "## 3. Layer-wise error",
        "## 4. Failure details",
        "## 5. energy",
    ]
    positions = [markdown.index(h) for h in headings]
    assert positions == sorted(positions)
    lines = markdown.splitlines()
    # Every table: header, alignment row, rows, all with the header's number of cells.
    for i, line in enumerate(lines):
        if line.startswith("|") and not lines[i - 1].startswith("|"):
            width = len(_cells(line))
            assert re.fullmatch(r"\|(:---|---:)(\|(:---|---:))*\|", lines[i + 1])
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                assert len(_cells(lines[j])) == width, lines[j]
                j += 1
    assert "| Top-1 accuracy (%) | 98.44 | 95.31 | -3.12 |" in lines
    assert f"| Weights | {status} | 2 tensors, 128 values" in markdown
    row = next(line for line in lines if line.startswith("| conv1 |"))
    assert _cells(row) == [
        "conv1",
        "Conv2d",
        "1.500e-04",
        "0.999100",
        "30.20",
        "0.0078",
        "2.5000",
        "8.32",
    ]
    assert "| flatten | Flatten | no op registered |" in markdown
    assert '"joules": 1.25' in markdown and "```json" in markdown
    if status == "FAIL":
        assert (
            "- layer1.0.conv1 \\[weight\\] fp4_e2m1 tensor: FAIL - 3 failing of 64 values "
            "(reconstruction: 3)" in lines
        )
        assert any(line.startswith("  - reconstruction; at (0, 1); code 0") for line in lines)
    else:
        assert "None: every audited value is representable" in markdown


def test_csv_reports_every_layer_number_and_the_accuracy_table(tmp_path: Path) -> None:
    report = sample_report()
    paths = CsvReporter().write(report, tmp_path)
    assert [p.name for p in paths] == ["layers.csv", "accuracy.csv"]
    assert sorted(os.listdir(tmp_path)) == ["accuracy.csv", "layers.csv"]  # no temp files

    with open(tmp_path / "layers.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    layers = report["metrics"]["layerwise"]["layers"]
    assert [r["name"] for r in rows] == [layer["name"] for layer in layers]
    for row, layer in zip(rows, layers):
        for key in ("mse", "cosine", "sqnr_db", "calls", "elements"):
            assert float(row[key]) == layer[key], key  # unrounded, non-finite as "inf"
        for key, value in layer["input"].items():
            assert row[f"input_{key}"] == ("" if value is None else row[f"input_{key}"])
            if value is not None:
                assert float(row[f"input_{key}"]) == value, key
    assert rows[1]["sqnr_db"] == "inf" and rows[1]["input_min_nonzero_abs"] == ""

    with open(tmp_path / "accuracy.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["metric", "FP32", "quantized", "delta"]
    by_metric = {row[0]: row[1:] for row in table[1:]}
    assert [float(v) for v in by_metric["top1_accuracy_pct"]] == [98.4375, 95.3125, -3.125]
    assert [float(v) for v in by_metric["top5_accuracy_pct"]] == [100.0, 100.0, 0.0]
    assert by_metric["top1_agreement_pct"] == ["", "96.875", ""]

    without = copy.deepcopy(report)
    del without["metrics"]["layerwise"], without["metrics"]["accuracy"]
    CsvReporter().write(without, tmp_path / "empty")
    assert (tmp_path / "empty" / "layers.csv").read_text() == "name,type\n"
    assert (tmp_path / "empty" / "accuracy.csv").read_text() == "metric,FP32,quantized,delta\n"


def test_new_reporters_are_in_the_default_list() -> None:
    import qbench.config
    import qbench.plugins

    assert qbench.plugins.registry("reporter").plugin_of("markdown").distribution == "qbench-eval"
    assert qbench.plugins.registry("reporter").plugin_of("csv").distribution == "qbench-eval"
    output = qbench.config.config_schema()["properties"]["output"]["properties"]
    assert {"text", "json", "html", "markdown", "csv"} <= set(output["reporters"]["default"])


def test_all_reporters_write_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replaced = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        replaced.append((Path(src).parent, Path(src).name.startswith("."), Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for reporter in (MarkdownReporter(), CsvReporter()):
        reporter.write(sample_report(), tmp_path)
    assert replaced == [
        (tmp_path, True, "report.md"),
        (tmp_path, True, "layers.csv"),
        (tmp_path, True, "accuracy.csv"),
    ]


# --------------------------------------------------------------------------------------
# 6. HTML: numbers that never wrap, sortable tables, accuracy axis, format range, labels
# --------------------------------------------------------------------------------------


def test_numeric_cells_never_wrap_and_tables_sort_offline() -> None:
    html = HtmlReporter().render(sample_report())
    assert re.search(r"td\.n\{[^}]*white-space:nowrap", html)
    cells = re.findall(r'<td class="([^"]*)">([^<]*)</td>', html)
    numeric = [
        (cls, text) for cls, text in cells if re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]\d+)?", text)
    ]
    assert any("e-" in text for _, text in numeric)  # 1.500e-04 is among them
    assert numeric and all("n" in cls.split() for cls, _ in numeric)
    # Click-to-sort: inline, on every data table, nothing fetched.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert len(scripts) == 1 and scripts[0][0] == "" and "addEventListener" in scripts[0][1]
    assert "table.sortable" in scripts[0][1]
    assert html.count('<table class="sortable">') == html.count("<table") - 1  # all but "Run"
    assert not re.search(r"(src|href)=|url\(|@import", html)


def _bar_heights(chart: ElementTree.Element) -> dict[str, float]:
    heights = {}
    for rect in chart.iter(f"{SVG}rect"):
        tip = rect.find(f"{SVG}title")
        if tip is not None:
            heights[tip.text.rsplit(":", 1)[0]] = float(rect.get("height"))
    return heights


def test_accuracy_plot_shows_small_differences_and_labels_values() -> None:
    chart = svgs(HtmlReporter().render(sample_report()))[0]
    heights = _bar_heights(chart)
    fp32, quantized = heights["FP32 Top-1 (-3.12 pt)"], heights["Quantized Top-1 (-3.12 pt)"]
    # 98.44 vs 95.31 on a 0-100 axis differ by 3 %; the zoomed axis makes it plain.
    assert (fp32 - quantized) / fp32 > 0.2
    texts = [t.text for t in chart.iter(f"{SVG}text")]
    assert {"98.44", "95.31", "96.88"} <= set(texts)
    assert any(t and t.startswith("Axis zoomed to the data: bars start at") for t in texts)
    ticks = [float(t) for t in texts if t and re.fullmatch(r"\d+(\.\d+)?", t) and "." not in t]
    assert min(ticks) > 0

    spread = sample_report()
    spread["metrics"]["accuracy"]["quantized"]["top1"] = 0.1  # a broken model: the full axis
    texts = [t.text for t in svgs(HtmlReporter().render(spread))[0].iter(f"{SVG}text")]
    assert "0" in texts and not any(t and t.startswith("Axis zoomed") for t in texts)


def test_dynamic_range_plot_shades_the_formats_range(monkeypatch: pytest.MonkeyPatch) -> None:
    report = sample_report()  # fp4_e2m1: subnormal 0.5, normal 1, max 6
    html = HtmlReporter().render(report)
    chart = svgs(html)[3]
    rects = [r for r in chart.iter(f"{SVG}rect") if r.get("fill") == "#f2a541"]
    legend = [r for r in rects if r.get("width") == "10"]
    bands = [r for r in rects if r.get("width") != "10"]
    assert len(legend) == 2
    # Only conv1 has a non-zero input (fc's is all zeros): its subnormal and normal parts.
    assert len(bands) == 2
    sub, normal = sorted(bands, key=lambda r: float(r.get("fill-opacity")))
    # log2(6/1) binades of normals above log2(1/0.5) binade of subnormals.
    ratio = float(normal.get("height")) / float(sub.get("height"))
    assert ratio == pytest.approx(math.log2(6), rel=0.02)
    # The band's top is the layer's max |x| (absmax scaling maps it onto the format's max).
    green = next(
        r for r in chart.iter(f"{SVG}rect") if r.get("fill") == "#55a868" and r.get("width") != "10"
    )
    assert float(normal.get("y")) == pytest.approx(float(green.get("y")), abs=0.11)
    assert "fp4_e2m1: 0.5 (subnormal) / 1 (normal) to 6" in html
    assert "fp4_e2m1: normal range" in html

    def no_formats(name: str) -> Any:
        raise qbench.QBenchError(f"format {name!r} not found (qbench-formats not installed)")

    monkeypatch.setattr(qbench, "get_format", no_formats)
    chart = svgs(HtmlReporter().render(report))[3]
    assert not [r for r in chart.iter(f"{SVG}rect") if r.get("fill") == "#f2a541"]
    # Facts the report itself carries are used without any lookup.
    report["formats"] = {"fp4_e2m1": {"max": 6.0, "min_normal": 1.0, "min_subnormal": 0.5}}
    chart = svgs(HtmlReporter().render(report))[3]
    assert len([r for r in chart.iter(f"{SVG}rect") if r.get("fill") == "#f2a541"]) == 4


@pytest.mark.parametrize("count", [2, 30, 120])
def test_long_layer_names_fit_their_charts(count: int) -> None:
    html = HtmlReporter().render(with_long_names(sample_report(), count))
    assert clipped_texts(html) == []
    labels = [
        t
        for chart in svgs(html)[1:]
        for t in chart.iter(f"{SVG}text")
        if t.get("transform")
        and "rotate(-90" in t.get("transform")
        and t.find(f"{SVG}title") is not None
    ]
    assert len(labels) == 3 * count
    # A name of up to 44 characters is shown whole; longer ones keep both ends, and the
    # tooltip the full name.
    by_full = {t.find(f"{SVG}title").text: t.text for t in labels}
    assert by_full[LONG_NAMES[0]] == LONG_NAMES[0]
    if count > 2:
        short = by_full[LONG_NAMES[2]]
        assert len(short) == 44 and "\u2026" in short
        assert LONG_NAMES[2].startswith(short.split("\u2026")[0])
        assert LONG_NAMES[2].endswith(short.split("\u2026")[1])


def test_every_report_file_together(tmp_path: Path) -> None:
    written = []
    for reporter in (
        TextReporter(),
        JsonReporter(),
        HtmlReporter(),
        MarkdownReporter(),
        CsvReporter(),
    ):
        written += reporter.write(with_news(sample_report("FAIL")), tmp_path)
    assert (
        sorted(p.name for p in written)
        == sorted(os.listdir(tmp_path))
        == [
            "accuracy.csv",
            "comparison_report.txt",
            "layers.csv",
            "report.html",
            "report.json",
            "report.md",
        ]
    )
