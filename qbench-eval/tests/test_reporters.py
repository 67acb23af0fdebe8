"""Reporters: the text, JSON and HTML files are written atomically, with sections and plots.

The newer content (warnings, skipped files, Markdown and CSV, HTML layout) is tested in
test_report_contents.py and, in a real browser, test_report_browser.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest
import qbench.plugins
from eval_sample_reports import sample_report
from qbench_eval.reporters import HtmlReporter, JsonReporter, TextReporter


@pytest.mark.parametrize("status", ["PASS", "FAIL"])
def test_all_three_files_written(tmp_path: Path, status: str) -> None:
    out = tmp_path / "reports" / "zoo_resnet" / "demo"
    written = []
    for reporter in (TextReporter(), JsonReporter(), HtmlReporter()):
        written += reporter.write(sample_report(status), out)
    assert sorted(p.name for p in written) == [
        "comparison_report.txt",
        "report.html",
        "report.json",
    ]
    assert sorted(os.listdir(out)) == [
        "comparison_report.txt",
        "report.html",
        "report.json",
    ]  # no temp files left

    text = (out / "comparison_report.txt").read_text()
    sections = [
        "1. Accuracy metrics",
        "2. Compliance",
        "3. Layer-wise error",
        "4. Failure details",
        "5. energy",
    ]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    assert re.search(r"Top-1 accuracy \(%\)\s+98\.44\s+95\.31\s+-3\.12", text)
    assert re.search(r"Weights\s+" + status, text)
    assert re.search(r"Parameters \(BatchNorm running statistics\)\s+PASS", text)
    assert re.search(r"Activations\s+NOT AUDITED", text)
    assert re.search(
        r"conv1\s+Conv2d\s+1\.500e-04\s+0\.999100\s+30\.20\s+0\.0078\s+2\.5000\s+8\.32", text
    )
    assert re.search(r"fc\s+Linear\s+0\s+1\.000000\s+inf", text)
    assert "flatten (Flatten): no op registered" in text
    assert "\njoules: 1.25\n" in text and "\n  conv1: 0.5\n" in text
    if status == "FAIL":
        assert (
            "layer1.0.conv1 [weight] fp4_e2m1 tensor: FAIL - 3 failing of 64 values (reconstruction: 3)"
            in text
        )
        assert (
            "at (0, 1); code 0; value 0.300000; expected codes x scales = 0; scale 1.000000; nearest representable: 0, 0.500000"
            in text
        )
    else:
        assert "None: every audited value is representable" in text

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")

    data = json.loads((out / "report.json").read_text(), parse_constant=no_constants)
    assert data["metrics"]["layerwise"]["layers"][1]["sqnr_db"] == "Infinity"
    assert data["metrics"]["accuracy"] == sample_report(status)["metrics"]["accuracy"]
    assert data["metrics"]["compliance"]["status"] == status

    html = (out / "report.html").read_text()
    assert html.count("<svg") == 4  # accuracy bars, cosine, MSE, dynamic range
    # Self-contained: nothing fetched; the one script (click-to-sort) is inline.
    assert not re.search(r"(src|href)=", html) and "@import" not in html and "url(" not in html
    assert re.search(r'class="[^"]*' + status, html)
    assert "conv1" in html and "&quot;joules&quot;: 1.25" in html
    for figure in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        svg = ElementTree.fromstring(figure)  # each plot is well-formed SVG
        assert (
            svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) > 0
        )


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    JsonReporter().write(sample_report(), out)
    before = (out / "report.json").read_text()
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((Path(src).parent, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for reporter in (TextReporter(), JsonReporter(), HtmlReporter()):
        reporter.write(sample_report("FAIL"), out)
    # Each file arrived by one rename from a temporary file in the same directory.
    assert replaced == [(out, "comparison_report.txt"), (out, "report.json"), (out, "report.html")]

    def failing(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        JsonReporter().write(sample_report(), out)
    assert (out / "report.json").read_text() != before  # the FAIL report from above, intact
    assert (
        json.loads((out / "report.json").read_text())["metrics"]["compliance"]["status"] == "FAIL"
    )
    assert sorted(os.listdir(out)) == ["comparison_report.txt", "report.html", "report.json"]


def test_atomic_write_honours_the_umask(tmp_path: Path) -> None:
    """mkstemp creates 0600 whatever the umask; a report must get what open() would give."""
    from qbench_eval._io import atomic_write_text, current_umask

    saved = os.umask(0o022)
    try:
        for umask, expected in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)):
            os.umask(umask)
            assert current_umask() == umask
            assert os.umask(umask) == umask  # reading it did not change it
            written = atomic_write_text(tmp_path / f"u{umask:o}" / "report.txt", "x\n")
            assert os.stat(written).st_mode & 0o777 == expected, oct(umask)
        os.umask(0o022)
        for reporter in (TextReporter(), JsonReporter(), HtmlReporter()):
            for path in reporter.write(sample_report(), tmp_path / "reports"):
                assert os.stat(path).st_mode & 0o777 == 0o644, path.name
    finally:
        os.umask(saved)


def test_umask_read_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc is missing (macOS, BSD) the umask is read by setting and restoring it."""
    import builtins

    from qbench_eval import _io

    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    saved = os.umask(0o037)
    try:
        assert _io.current_umask() == 0o037
        assert os.umask(0o037) == 0o037  # restored
    finally:
        os.umask(saved)


def test_registered_through_the_entry_point() -> None:
    assert {"text", "json", "html", "markdown", "csv"} <= set(
        qbench.plugins.registry("reporter").names()
    )
    assert {"accuracy", "layerwise", "compliance"} <= set(qbench.plugins.registry("metric").names())
    info = qbench.plugins.registry("metric").plugin_of("compliance")
    assert info.distribution == "qbench-eval"
    assert isinstance(qbench.plugins.get("metric", "compliance"), type)  # classes
    assert qbench.plugins.get("reporter", "html").name == "html"  # instances
