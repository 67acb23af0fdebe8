"""The sweep table's Pareto front and completeness flags (qbench.sweep.summarize), on rows
made by hand: no model, no plugin beyond core."""

from __future__ import annotations

import math

from qbench.sweep import label, summarize


def row(name, bits, quality, status="done"):
    return {
        "name": name,
        "status": status,
        "effective_bits": bits,
        "quality": "accuracy.top1_delta",
        "columns": [{"key": "accuracy.top1_delta", "label": "top-1", "value": quality}],
    }


def test_the_pareto_front_is_the_configs_no_other_beats():
    rows = [
        row("fp8", 8.25, -0.1),
        row("int8", 8.25, -0.2),  # same bits, worse quality: dominated
        row("fp6", 6.25, -0.1),  # same quality as fp8 with fewer bits: dominates it
        row("fp4", 4.25, -5.0),
        row("int4", 4.25, -7.0),  # dominated by fp4
        row("nan", 4.0, math.nan),  # no quality: never on the front, never dominates
        row("none", None, 1.0),  # no bits: left out
    ]
    summary = summarize("s", rows, reference_passes=1)
    front = {r["name"] for r in summary["rows"] if r["pareto"]}
    assert front == {"fp6", "fp4"}
    assert summary["quality"] == "accuracy.top1_delta" and summary["complete"]
    assert summary["columns"] == [{"key": "accuracy.top1_delta", "label": "top-1"}]


def test_a_sweep_with_pending_configs_says_it_is_incomplete():
    summary = summarize("s", [row("a", 8, 0.0), row("b", 4, 0.0, status="pending")], 1, 2)
    assert summary["complete"] is False and summary["pending"] == ["b"]
    assert summary["finished"] == 1 and summary["configs"] == 2


def test_grid_labels():
    assert label({"mode": "chunk", "chunk_size": 32}) == "chunk-32"
    assert label(True) == "true" and label(0.5) == "0.5"
