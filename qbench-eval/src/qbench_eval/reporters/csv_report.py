"""The ``csv`` reporter: ``layers.csv`` and ``accuracy.csv`` for pandas, R or a spreadsheet.

``layers.csv`` has one row per measured layer with every number the layerwise metric
recorded, unrounded (nested values flattened: ``input_max_abs``); ``accuracy.csv`` has rows
``metric,FP32,quantized,delta`` in percent, the delta in percentage points. Both files are
always written (header only when their metric did not run) so a run's file set is fixed.
Non-finite values are written ``inf``, ``-inf``, ``nan`` (what ``float()``, pandas and R
read back); a missing value is an empty cell. For a sweep, ``sweep.csv``: one row per
config (see :meth:`CsvReporter.render_sweep`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from . import _sweep
from ._common import layer_csv_rows

LAYERS_FILE = "layers.csv"
ACCURACY_FILE = "accuracy.csv"
SWEEP_FILE = "sweep.csv"
#: The first columns of ``sweep.csv``, always present and in this order.
SWEEP_KEYS = ("name", "status", "audit", "effective_bits", "weight_share", "pareto")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-trip form, never rounded
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[value]  # json_safe'd
    return value


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(value) for value in row] for row in rows])
    return buffer.getvalue()


def _percent(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 100.0 * float(value)
    return value


class CsvReporter:
    """Writes ``layers.csv`` and ``accuracy.csv`` from the same mapping as ``report.json``."""

    name = "csv"
    file_names = (LAYERS_FILE, ACCURACY_FILE)

    def render_layers(self, report: Mapping[str, Any]) -> str:
        layerwise = (report.get("metrics") or {}).get("layerwise") or {}
        header, rows = layer_csv_rows(layerwise)
        return _csv(header, rows)

    def render_accuracy(self, report: Mapping[str, Any]) -> str:
        accuracy = (report.get("metrics") or {}).get("accuracy")
        rows: list[list[Any]] = []
        if accuracy is not None:
            k = accuracy.get("top_k", 5)
            reference = accuracy.get("reference") or {}
            quantized = accuracy.get("quantized") or {}
            delta = accuracy.get("delta") or {}
            for key, label in (
                ("top1", "top1_accuracy_pct"),
                ("topk", f"top{k}_accuracy_pct"),
                ("certainty", "average_certainty_pct"),
            ):
                rows.append(
                    [
                        label,
                        _percent(reference.get(key)),
                        _percent(quantized.get(key)),
                        _percent(delta.get(key)),
                    ]
                )
            # Agreement compares the two models: one value, in the quantized column.
            rows.append(["top1_agreement_pct", None, _percent(accuracy.get("agreement")), None])
        return _csv(("metric", "FP32", "quantized", "delta"), rows)

    def render_sweep(self, summary: Mapping[str, Any]) -> str:
        """``sweep.csv``: one row per config; the columns :data:`SWEEP_KEYS`, then each
        metric column's key (``accuracy.top1_delta``), then ``variant.<grid key>``."""
        keys = [key for key, _ in _sweep.columns(summary)]
        variants = _sweep.variant_keys(summary)
        rows = []
        for row in _sweep.rows(summary):
            values = _sweep.column_values(row)
            variant = row.get("variant") if isinstance(row.get("variant"), Mapping) else {}
            rows.append(
                [
                    row.get("name"),
                    _sweep.status(row),
                    row.get("audit"),
                    row.get("effective_bits"),
                    row.get("weight_share"),
                    row.get("pareto") is True,
                    *(values.get(key) for key in keys),
                    *(variant.get(key) for key in variants),
                ]
            )
        return _csv([*SWEEP_KEYS, *keys, *(f"variant.{key}" for key in variants)], rows)

    def write_sweep(self, summary: Mapping[str, Any], folder: Path) -> list[Path]:
        return [atomic_write_text(Path(folder) / SWEEP_FILE, self.render_sweep(summary))]

    def write(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        return [
            atomic_write_text(out_dir / LAYERS_FILE, self.render_layers(report)),
            atomic_write_text(out_dir / ACCURACY_FILE, self.render_accuracy(report)),
        ]
