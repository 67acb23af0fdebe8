"""report.html and sweep.html in a real headless browser: no chart label is clipped, and
tables sort.

SVG clips what leaves its viewBox, and only a browser knows the real font metrics, so a
script added to the rendered page measures every chart text with ``getBBox()`` (mapped into
the chart's viewBox coordinates through the text's own transform), clicks the layer
table's MSE header, and writes what it found onto ``<body>``; ``--dump-dom`` hands the page
back. Skipped where no Chromium is installed (the estimate-based check in
test_report_contents.py runs everywhere).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from eval_sample_reports import sample_report, with_long_names, with_news
from qbench_eval.reporters import HtmlReporter

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_PROBE = """
<script>
(function(){
var clipped=[],count=0;
Array.prototype.forEach.call(document.querySelectorAll("svg"),function(svg,index){
  var vb=svg.viewBox.baseVal,toChart=svg.getScreenCTM().inverse();
  Array.prototype.forEach.call(svg.querySelectorAll("text"),function(text){
    count++;
    var b=text.getBBox(),m=toChart.multiply(text.getScreenCTM()),xs=[],ys=[];
    [[b.x,b.y],[b.x+b.width,b.y],[b.x,b.y+b.height],[b.x+b.width,b.y+b.height]].forEach(function(p){
      var q=new DOMPoint(p[0],p[1]).matrixTransform(m);xs.push(q.x);ys.push(q.y);});
    var x0=Math.min.apply(null,xs),x1=Math.max.apply(null,xs);
    var y0=Math.min.apply(null,ys),y1=Math.max.apply(null,ys);
    if(x0<vb.x-0.5||y0<vb.y-0.5||x1>vb.x+vb.width+0.5||y1>vb.y+vb.height+0.5)
      clipped.push({chart:index,text:text.firstChild?text.firstChild.nodeValue:"",
                    box:[x0,y0,x1,y1],viewBox:[vb.x,vb.y,vb.width,vb.height]});
  });
});
var order=[],heads=document.querySelectorAll("table.sortable thead tr:last-child th");
var mse=Array.prototype.filter.call(heads,function(th){return th.textContent.trim()==="MSE";})[0];
if(mse){
  mse.click();
  var table=mse.closest("table"),col=Array.prototype.indexOf.call(mse.parentNode.cells,mse);
  Array.prototype.forEach.call(table.tBodies[0].rows,function(row){
    order.push([row.cells[0].textContent,row.cells[col].textContent]);});
}
document.body.setAttribute("data-probe",JSON.stringify({texts:count,clipped:clipped,order:order}));
})();
</script>
"""


def _browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _probe(html: str, tmp_path: Path) -> dict:
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium found (" + ", ".join(BROWSERS) + ")")
    page = tmp_path / "page.html"
    page.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",  # the test machines have no network
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,3000",
        "--dump-dom",
        page.as_uri(),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "LANG": "C.UTF-8"}
    )
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, f"the probe did not run (rc {result.returncode}): {result.stderr[-2000:]}"
    raw = found.group(1)
    for entity, char in (("&quot;", '"'), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")):
        raw = raw.replace(entity, char)
    return json.loads(raw)


@pytest.mark.parametrize("count", [3, 40])
def test_no_chart_label_is_clipped_in_a_browser(tmp_path: Path, count: int) -> None:
    report = with_news(with_long_names(sample_report("FAIL"), count))
    probe = _probe(HtmlReporter().render(report), tmp_path)
    assert probe["texts"] > 3 * count  # the layer labels of three charts, and more
    assert probe["clipped"] == []


def test_tables_sort_on_header_click_in_a_browser(tmp_path: Path) -> None:
    report = with_long_names(sample_report(), 12)
    probe = _probe(HtmlReporter().render(report), tmp_path)
    values = [float(mse) for _, mse in probe["order"]]
    assert len(values) == 12 and values == sorted(values)
    assert values[0] < values[-1]  # "1.000e-05" before "0.1000": numbers, not strings


def _sweep(count: int) -> dict[str, Any]:
    """A sweep mapping of ``count`` configs with long names over a few bit widths, one in
    five on the Pareto front (the plot does not check that it is one)."""
    rows = []
    for i in range(count):
        name = f"sweep-{'fp8_e4m3-per-channel-' * (1 + i % 3)}{i}"
        delta = -0.05 * i
        rows.append(
            {
                "name": name,
                "status": "done",
                "effective_bits": 4.0 + 2 * (i % 4) + 0.25,
                "columns": [{"key": "accuracy.top1_delta", "label": "top-1 Δ pp", "value": delta}],
                "layers": {"conv1": 0.999 - 0.001 * i},
                "audit": "PASS",
                "pareto": i % 5 == 0,
            }
        )
    return {
        "name": "browser-sweep",
        "complete": True,
        "configs": count,
        "finished": count,
        "pending": [],
        "reference_passes": 1,
        "quality": "accuracy.top1_delta",
        "columns": [{"key": "accuracy.top1_delta", "label": "top-1 Δ pp"}],
        "rows": rows,
    }


@pytest.mark.parametrize("count", [3, 30])
def test_no_sweep_plot_label_is_clipped_in_a_browser(tmp_path: Path, count: int) -> None:
    probe = _probe(HtmlReporter().render_sweep(_sweep(count)), tmp_path)
    assert probe["texts"] > count  # a label per config, and the axes
    assert probe["clipped"] == []
