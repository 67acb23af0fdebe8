"""``qbench run``'s summary table: core prints its own rows (weight coverage) and each
metric's ``summary`` rows, reading no metric's result keys itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from qbench import cli, hookimpl, plugins
from qbench.runner import RunResult


class _Metric:
    options_schema = {"type": "null"}

    def __init__(self, options):
        pass

    def attach(self, reference, quantized, context):
        pass

    def update(self, batch):
        pass

    def result(self):
        return {}


class SummarizedMetric(_Metric):
    name = "summarized"

    @staticmethod
    def summary(result):
        return [("things [counted]", f"{result['fp32']}", f"{result['quantized']}")]


class BrokenSummaryMetric(_Metric):
    name = "broken"

    @staticmethod
    def summary(result):
        raise RuntimeError("no rows today")


class SummaryPlugin:
    @hookimpl
    def qbench_register_metrics(self, register):
        register(SummarizedMetric)
        register(BrokenSummaryMetric)


def _result(metrics: dict) -> RunResult:
    report = {
        "model": "toy",
        "name": "cfg",
        "dataset": {"images": 8},
        "warnings": ["low coverage"],
        "preparation": {"coverage": {"weight_share": 0.5}},
        "metrics": metrics,
    }
    return RunResult(report, Path("reports/toy/cfg"))


def test_rows_come_from_each_metrics_summary(
    toy_plugins, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich would wrap cells at a terminal's 80
    plugins.register_plugin(SummaryPlugin(), "summaries")
    cli._print_summary(
        _result(
            {
                # the toy "accuracy" metric declares no summary: core prints none of its keys
                "accuracy": {"agreement": 0.75, "reference": {"top1": 0.5}},
                "summarized": {"fp32": 3, "quantized": 4},
                "broken": {},
            }
        )
    )
    out = capsys.readouterr().out
    assert out.index("WARNING") < out.index("low coverage") < out.index("toy / cfg (8 images)")
    assert "weight elements quantized %" in out and "50.00" in out
    assert "things [counted]" in out and "3" in out and "4" in out
    assert "summary failed: RuntimeError: no rows today" in out
    assert "agreement" not in out and "top-1" not in out
