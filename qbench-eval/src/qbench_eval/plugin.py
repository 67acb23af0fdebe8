"""Registers qbench-eval's metrics and reporters (entry point ``qbench`` in pyproject.toml).

Built-ins go through the same hooks as any third-party plugin (see qbench-core/README.md). Metrics are
registered as classes (QBench makes a fresh instance per run with the config's options);
reporters as instances.
"""

from __future__ import annotations

from qbench import Register, hookimpl


@hookimpl
def qbench_register_metrics(register: Register) -> None:
    from .accuracy import AccuracyMetric
    from .compliance import ComplianceMetric
    from .layerwise import LayerwiseMetric

    for metric_class in (AccuracyMetric, LayerwiseMetric, ComplianceMetric):
        register(metric_class)


@hookimpl
def qbench_register_reporters(register: Register) -> None:
    from .reporters import CsvReporter, HtmlReporter, JsonReporter, MarkdownReporter, TextReporter

    for reporter in (
        TextReporter(),
        JsonReporter(),
        HtmlReporter(),
        MarkdownReporter(),
        CsvReporter(),
    ):
        register(reporter)
