"""The ``json`` reporter: ``report.json``, the whole report in strict JSON; for a sweep,
``sweep.json``, the sweep mapping."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, json_safe

FILE_NAME = "report.json"
SWEEP_FILE = "sweep.json"


class JsonReporter:
    """Writes the report mapping as strict JSON (NaN/inf as strings; see ``json_safe``)."""

    name = "json"
    file_name = FILE_NAME

    def render(self, report: Mapping[str, Any]) -> str:
        return json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n"

    def write(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        return [atomic_write_text(Path(out_dir) / self.file_name, self.render(report))]

    def write_sweep(self, summary: Mapping[str, Any], folder: Path) -> list[Path]:
        """``sweep.json``: the sweep mapping (:func:`qbench.sweep.summarize`), strict JSON."""
        return [atomic_write_text(Path(folder) / SWEEP_FILE, self.render(summary))]
