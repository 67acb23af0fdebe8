"""Reporters: ``text`` (comparison_report.txt), ``json`` (report.json), ``html``
(report.html), ``markdown`` (report.md) and ``csv`` (layers.csv, accuracy.csv).

Each renders the run's report mapping (see :mod:`qbench.runner`) and writes atomically.
Each also writes a sweep's summary (``write_sweep``, see :mod:`qbench.sweep`): ``sweep.txt``,
``sweep.json``, ``sweep.html``, ``sweep.md`` and ``sweep.csv``, one row per config.
The metrics this package defines (accuracy, layerwise, compliance) get dedicated sections;
any other metric a plugin adds is rendered generically, key by key.
"""

from .csv_report import CsvReporter
from .html_report import HtmlReporter
from .json_report import JsonReporter
from .markdown_report import MarkdownReporter
from .text_report import TextReporter

__all__ = ["CsvReporter", "HtmlReporter", "JsonReporter", "MarkdownReporter", "TextReporter"]
