"""What the text and HTML reporters both show, computed once from the report mapping."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .._io import json_safe

#: Metrics with a dedicated section; anything else is rendered generically.
KNOWN_METRICS = ("accuracy", "compliance", "layerwise")

#: How each audited role is named in the compliance section (the seed's "weights and
#: parameters": layer weights, then the other parameters a layer quantizes).
ROLE_TITLES = {
    "weight": "Weights",
    "stats": "Parameters (BatchNorm running statistics)",
    "input": "Inputs",
    "act": "Activations",
}


def number(value: Any, digits: int = 4) -> str:
    """A float for a table cell: fixed for ordinary magnitudes, scientific otherwise."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}f}"
    return f"{value:.{max(digits - 1, 1)}e}"


def percent(value: Any) -> str:
    if value is None or isinstance(value, str):
        return number(value)
    return f"{100.0 * float(value):.2f}"


def signed_percent(value: Any) -> str:
    if value is None or isinstance(value, str):
        return number(value)
    return f"{100.0 * float(value):+.2f}"


def header_lines(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing the run."""
    dataset = report.get("dataset") or {}
    data_text = str(dataset.get("name", "-"))
    if dataset.get("split"):
        data_text += f" ({dataset['split']})"
    if dataset.get("images") is not None:
        data_text += f", {dataset['images']} images"
    return [
        ("Config", f"{report.get('name', '-')} ({report.get('config_file') or 'in memory'})"),
        ("Model", str(report.get("model", "-"))),
        ("Dataset", data_text),
        ("Device", _device_text(report)),
        ("Elapsed", f"{number(report.get('elapsed_s'), 2)} s"),
        ("Quantization", quantization_summary(report.get("quantization") or {})),
        ("QBench", str(report.get("qbench_version", "-"))),
    ]


def _device_text(report: Mapping[str, Any]) -> str:
    """The device, with the memory layout where the run records one (``cpu, channels_last``)."""
    text = str(report.get("device", "-"))
    layout = report.get("memory_format")
    return f"{text}, {layout}" if layout else text


def quantization_summary(quantization: Mapping[str, Any]) -> str:
    """The quantization mapping on one line (``key=value``; per-layer overrides counted)."""
    parts = [f"{k}={v}" for k, v in quantization.items() if k != "layers" and v is not None]
    layers = quantization.get("layers") or []
    if layers:
        parts.append(f"{len(layers)} per-layer override(s)")
    return ", ".join(parts) if parts else "(none)"


def accuracy_rows(accuracy: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, FP32 %, quantized %, delta in points) rows of the accuracy table."""
    k = accuracy.get("top_k", 5)
    reference = accuracy.get("reference") or {}
    quantized = accuracy.get("quantized") or {}
    delta = accuracy.get("delta") or {}
    rows = []
    for key, label in (
        ("top1", "Top-1 accuracy (%)"),
        ("topk", f"Top-{k} accuracy (%)"),
        ("certainty", "Average certainty (%)"),
    ):
        rows.append(
            (
                label,
                percent(reference.get(key)),
                percent(quantized.get(key)),
                signed_percent(delta.get(key)),
            )
        )
    return rows


def layer_rows(layerwise: Mapping[str, Any]) -> list[dict[str, str]]:
    """One dict of formatted cells per measured layer."""
    rows = []
    for layer in layerwise.get("layers") or []:
        inputs = layer.get("input") or {}
        rows.append(
            {
                "Layer": str(layer.get("name")),
                "Type": str(layer.get("type", "-")),
                "MSE": number(layer.get("mse")),
                "Cosine": number(layer.get("cosine"), 6),
                "SQNR (dB)": number(layer.get("sqnr_db"), 2),
                "min |x|": number(inputs.get("min_nonzero_abs")),
                "max |x|": number(inputs.get("max_abs")),
                "log2 range": number(inputs.get("log2_range"), 2),
            }
        )
    return rows


LAYER_COLUMNS = ("Layer", "Type", "MSE", "Cosine", "SQNR (dB)", "min |x|", "max |x|", "log2 range")


def compliance_rows(compliance: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(what, PASS/FAIL/NOT RUN, detail) rows of the compliance summary."""
    rows = []
    roles = compliance.get("roles") or {}
    for role, title in ROLE_TITLES.items():
        info = roles.get(role)
        if info is None:
            continue
        if not info.get("audited", True):
            rows.append((title, "NOT AUDITED", "excluded by the audit config"))
            continue
        detail = f"{info.get('tensors', 0)} tensors, {info.get('elements', 0)} values"
        if info.get("failed_tensors"):
            detail += f"; {info['failed_tensors']} failing"
        if info.get("missing"):
            detail += f" ({info['missing']} never observed)"
        rows.append((title, str(info.get("status", "-")), detail))
    scales = compliance.get("scales")
    if scales is not None:
        detail = f"{scales.get('checked', 0)} scales"
        if scales.get("failed"):
            detail += f"; {scales['failed']} illegal"
        rows.append(("Scales", str(scales.get("status", "-")), detail))
    return rows


def failure_lines(compliance: Mapping[str, Any]) -> list[str]:
    """The detailed failures, one block of lines per failing tensor."""
    lines: list[str] = []
    for missing in compliance.get("missing") or []:
        lines.append(
            f"{missing['layer']} [{missing['role']}]: FAIL - "
            + missing.get("reason", "quantized per the preparation report but never observed")
        )
    for tensor in compliance.get("failures") or []:
        counts = ", ".join(f"{k}: {v}" for k, v in (tensor.get("failures") or {}).items())
        lines.append(
            f"{tensor['layer']} [{tensor['role']}] {tensor.get('format', '')}: FAIL - {tensor.get('failed', 0)} "
            f"failing of {tensor.get('elements', 0)} values ({counts})"
        )
        for example in tensor.get("examples") or []:
            lines.append("    " + example_text(example))
    return lines


def example_text(example: Mapping[str, Any]) -> str:
    check = example.get("check", "?")
    parts = [check]
    if "level" in example:
        parts.append(f"scale level {example['level']} ({example.get('scale_format')})")
    if "index" in example:
        parts.append(f"at {tuple(example['index'])}")
    if "code" in example:
        parts.append(f"code {example['code']}")
    if "value" in example:
        parts.append(f"value {number(example['value'], 6)}")
    if "expected" in example:
        parts.append(f"expected codes x scales = {number(example['expected'], 6)}")
    if "scale" in example:
        parts.append(f"scale {number(example['scale'], 6)}")
    if example.get("nearest"):
        parts.append(
            "nearest representable: " + ", ".join(number(v, 6) for v in example["nearest"])
        )
    if "codes_shape" in example:
        parts.append(
            f"codes shape {example['codes_shape']} vs dequantized {example['dequantized_shape']}"
        )
    return "; ".join(parts)


def generic_lines(value: Any, indent: int = 0) -> list[str]:
    """Any JSON-like value as indented ``key: value`` lines (for metrics from other plugins)."""
    pad = "  " * indent
    value = json_safe(value)
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(generic_lines(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {scalar_text(item)}")
        return lines
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return [pad + json.dumps(value)]
        lines = []
        for item in value:
            lines.append(f"{pad}-")
            lines.extend(generic_lines(item, indent + 1))
        return lines
    return [pad + scalar_text(value)]


def scalar_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
