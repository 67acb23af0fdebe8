"""Each metric's rows of ``qbench run``'s summary table (``Metric.summary``), and its options
checked against its own schema by ``qbench.config.check_options``."""

from __future__ import annotations

import pytest
from qbench.errors import ConfigError
from qbench_eval.accuracy import AccuracyMetric
from qbench_eval.compliance import ComplianceMetric
from qbench_eval.layerwise import LayerwiseMetric


def test_accuracy_rows() -> None:
    result = {
        "top_k": 3,
        "reference": {"top1": 0.5, "topk": 0.75, "certainty": 0.625},
        "quantized": {"top1": 0.25, "topk": 0.5, "certainty": 0.5},
        "agreement": 0.875,
    }
    assert AccuracyMetric.summary(result) == [
        ("top-1 %", "50.00", "25.00"),
        ("top-3 %", "75.00", "50.00"),
        ("certainty %", "62.50", "50.00"),
        ("top-1 agreement %", "", "87.50"),
    ]


def test_layerwise_row_names_the_layer_of_the_lowest_cosine() -> None:
    layers = [
        {"name": "conv1", "cosine": 0.99},
        {"name": "layer3.0.conv1", "cosine": 0.91234},
        {"name": "fc", "cosine": None},
        {"name": "layer4.0.conv1", "cosine": 0.91234},
    ]
    assert LayerwiseMetric.summary({"layers": layers}) == [
        ("min layer cosine (layer3.0.conv1)", "", "0.9123")
    ]
    assert LayerwiseMetric.summary({"layers": []}) == []


def test_compliance_row_is_its_status() -> None:
    assert ComplianceMetric.summary({"status": "FAIL"}) == [("compliance", "", "FAIL")]
    assert ComplianceMetric.summary({}) == []


@pytest.mark.parametrize(
    ("metric", "options", "line"),
    [
        (AccuracyMetric, {"top_k": 0}, "evaluation.accuracy.top_k: found 0; must be >= 1"),
        (
            LayerwiseMetric,
            {"include": "layer*"},
            "evaluation.layerwise.include: found string 'layer*'; expected array",
        ),
        (
            ComplianceMetric,
            {"max_examples": -1},
            "evaluation.compliance.max_examples: found -1; must be >= 0",
        ),
    ],
)
def test_options_are_checked_against_the_metrics_own_schema(metric, options, line) -> None:
    with pytest.raises(ConfigError) as info:
        metric(options)
    assert info.value.problems == [line]
