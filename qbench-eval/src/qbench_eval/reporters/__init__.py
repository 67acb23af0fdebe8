"""Reporters: ``text`` (comparison_report.txt), ``json`` (report.json), ``html`` (report.html).

Each renders the run's report mapping (see :mod:`qbench.runner`) and writes atomically.
The metrics this package defines (accuracy, layerwise, compliance) get dedicated sections;
any other metric a plugin adds is rendered generically, key by key.
"""

from .html_report import HtmlReporter
from .json_report import JsonReporter
from .text_report import TextReporter

__all__ = ["HtmlReporter", "JsonReporter", "TextReporter"]
