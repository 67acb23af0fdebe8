"""What the text, HTML and Markdown reporters all show, computed once from the report mapping.

Keys read beyond the metrics (all optional, so reports from older runs still render):
``report["warnings"]`` (one-line strings shown first), ``report["dataset"]["skipped"]``
(``[{"path", "reason"}...]``) and ``["skipped_count"]``, per-role ``nonfinite``
(``{"nan": n, "inf": m}``) in the compliance result, and format facts for the dynamic-range
plot in ``report["formats"]`` or ``report["quantization"]["formats"]`` (``{name: {"max",
"min_normal", "min_subnormal"}}``, the shape of ``qbench formats --json``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .._io import json_safe

#: Metrics with a dedicated section; anything else is rendered generically.
KNOWN_METRICS = ("accuracy", "compliance", "layerwise")

#: How each audited role is named in the compliance section ("weights and parameters":
#: layer weights, then the other parameters a layer quantizes).
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


#: At most this many skipped files are listed by name (the count is always exact).
MAX_SKIPPED_LISTED = 20


def plural(count: Any, noun: str, plural_form: str | None = None) -> str:
    """``"1 module"``, ``"2 modules"``, ``"0 modules"`` (English: only exactly one is singular)."""
    word = noun if count == 1 else (plural_form or noun + "s")
    return f"{count} {word}"


def image_count(report: Mapping[str, Any]) -> int | None:
    """How many images the run evaluated (the dataset's count, else the accuracy metric's)."""
    images = (report.get("dataset") or {}).get("images")
    if images is None:
        images = ((report.get("metrics") or {}).get("accuracy") or {}).get("images")
    return images


def report_title(report: Mapping[str, Any]) -> str:
    """``QBench comparison report: resnet18 / fp8_e4m3_chunk128, 539 images``."""
    text = f"QBench comparison report: {report.get('model', '-')} / {report.get('name', '-')}"
    images = image_count(report)
    return text if images is None else f"{text}, {plural(images, 'image')}"


def warnings(report: Mapping[str, Any]) -> list[str]:
    """The run's warnings, one line each, in the order the runner recorded them."""
    found = report.get("warnings") or []
    if isinstance(found, str):  # tolerate a single string
        found = [found]
    return [" ".join(str(w).split()) for w in found if str(w).strip()]


def skipped_count(report: Mapping[str, Any]) -> int:
    """How many dataset files were skipped as unreadable (0 for reports without the keys)."""
    dataset = report.get("dataset") or {}
    count = dataset.get("skipped_count")
    if count is None:
        count = len(dataset.get("skipped") or [])
    return int(count)


def skipped_rows(report: Mapping[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """(path, reason) for the first :data:`MAX_SKIPPED_LISTED` skipped files, and how many
    more were skipped than are listed."""
    listed = (report.get("dataset") or {}).get("skipped") or []
    rows = [
        (str(entry.get("path", "?")), " ".join(str(entry.get("reason", "-")).split()))
        if isinstance(entry, Mapping)
        else (str(entry), "-")
        for entry in listed[:MAX_SKIPPED_LISTED]
    ]
    return rows, max(skipped_count(report) - len(rows), 0)


def header_lines(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing the run."""
    dataset = report.get("dataset") or {}
    data_text = str(dataset.get("name", "-"))
    if dataset.get("split"):
        data_text += f" ({dataset['split']})"
    if dataset.get("images") is not None:
        data_text += f", {plural(dataset['images'], 'image')}"
    skipped = skipped_count(report)
    if skipped:
        data_text += f", {skipped} skipped as unreadable"
    return [
        ("Config", f"{report.get('name', '-')} ({report.get('config_file') or 'in memory'})"),
        ("Model", str(report.get("model", "-"))),
        ("Dataset", data_text),
        ("Device", _device_text(report)),
        ("Elapsed", f"{number(report.get('elapsed_s'), 2)} s"),
        ("Quantization", quantization_summary(report.get("quantization") or {})),
        *([("Coverage", coverage)] if (coverage := coverage_text(report)) else []),
        *([("Calibration", calibration)] if (calibration := calibration_text(report)) else []),
        ("QBench", str(report.get("qbench_version", "-"))),
    ]


def calibration_text(report: Mapping[str, Any]) -> str | None:
    """Which images calibrated the static scales and how many quantizers got one, or None
    (dynamic scaling: no ``calibration`` section)."""
    calibration = report.get("calibration")
    if not isinstance(calibration, Mapping):
        return None
    static, dynamic = calibration.get("static") or [], calibration.get("dynamic") or []
    batches = plural(calibration.get("batches", 0), "batch", "batches")
    images = plural(calibration.get("images", 0), "image")
    return (
        f"static input/activation scales from {batches} ({images}, the dataset's first, not "
        f"evaluated): {len(static)} static, {len(dynamic)} dynamic"
    )


def coverage_text(report: Mapping[str, Any]) -> str | None:
    """What share of the model ran quantized (``preparation.coverage``), or None for a report
    that does not say."""
    coverage = (report.get("preparation") or {}).get("coverage") or {}
    share = coverage.get("weight_share")
    if not isinstance(share, (int, float)):
        return None
    text = (
        f"{100.0 * share:.2f} % of weight elements quantized "
        f"({coverage.get('weight_elements_quantized')} of {coverage.get('weight_elements')})"
    )
    macs = coverage.get("mac_share")
    if isinstance(macs, (int, float)):
        text += f", {100.0 * macs:.2f} % of multiply-accumulates"
    return text


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
        parts.append(plural(len(layers), "per-layer override"))
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


def agreement_text(accuracy: Mapping[str, Any]) -> str:
    """``Top-1 agreement FP32 vs quantized: 99.63 % of 539 images``."""
    return (
        f"Top-1 agreement FP32 vs quantized: {percent(accuracy.get('agreement'))} % "
        f"of {plural(accuracy.get('images', 0), 'image')}"
    )


def nonfinite_logit_warnings(accuracy: Mapping[str, Any]) -> list[str]:
    """One line per side whose logits had NaN/inf on some images."""
    lines = []
    for side in ("reference", "quantized"):
        bad = (accuracy.get(side) or {}).get("nonfinite_images")
        if bad:
            lines.append(f"{plural(bad, 'image')} with NaN/inf logits ({side})")
    return lines


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

#: Column groups of the layer table, as (title, first column, last column): the last three
#: columns describe the layer's *input*, its dynamic range (as the FP8 literature calls it,
#: e.g. Micikevicius et al. 2022, "FP8 Formats for Deep Learning").
LAYER_GROUPS = (("Input dynamic range", 5, 7),)

LAYER_NOTE = (
    "Input dynamic range: min |x| / max |x| are the smallest non-zero and largest input "
    "magnitude; log2 range = log2(max/min)."
)


def layer_csv_rows(layerwise: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The layer table with every scalar the layerwise metric recorded, unformatted.

    Nested mappings are flattened with their key as prefix (``input`` -> ``input_max_abs``)
    so a column appears for every number, including ones a newer metric adds; columns come
    in first-seen order with ``name`` and ``type`` first.
    """
    flat_rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {"name": None, "type": None}
    for layer in layerwise.get("layers") or []:
        flat: dict[str, Any] = {}
        for key, value in layer.items():
            if isinstance(value, Mapping):
                for inner, item in value.items():
                    if not isinstance(item, (Mapping, list, tuple)):
                        flat[f"{key}_{inner}"] = item
            elif not isinstance(value, (list, tuple)):
                flat[str(key)] = value
        for key in flat:
            columns.setdefault(key, None)
        flat_rows.append(flat)
    header = list(columns)
    return header, [[row.get(column) for column in header] for row in flat_rows]


def _positive(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def format_range(report: Mapping[str, Any], name: str) -> tuple[float, float, float] | None:
    """(min subnormal, min normal, max) magnitudes of format ``name``, or None if unknown.

    Facts recorded in the report win (``report["formats"]`` or
    ``report["quantization"]["formats"]``); otherwise the format is looked up through
    ``qbench.get_format``, guarded so a report still renders where the plugin that defines the
    format (e.g. qbench-formats) is not installed.
    """
    facts: Any = None
    for holder in (report.get("formats"), (report.get("quantization") or {}).get("formats")):
        if isinstance(holder, Mapping) and isinstance(holder.get(name), Mapping):
            facts = holder[name]
            break
    if facts is not None:
        top = _positive(facts.get("max", facts.get("max_value")))
        normal = _positive(facts.get("min_normal"))
        subnormal = _positive(facts.get("min_subnormal")) or normal
    else:
        try:
            import qbench

            fmt = qbench.get_format(name)
            top = _positive(getattr(fmt, "max_value", None))
            normal = _positive(getattr(fmt, "min_normal", None))
            subnormal = _positive(getattr(fmt, "min_subnormal", None)) or normal
        except Exception:  # noqa: BLE001 - any failure only means "no band drawn"
            return None
    if top is None or normal is None or subnormal is None or not subnormal <= normal <= top:
        return None
    return subnormal, normal, top


def input_formats(report: Mapping[str, Any], layer_names: Sequence[str]) -> list[str | None]:
    """The format each layer's *input* was quantized to, or None where it was not.

    The preparation report names it per layer and role (``"fp8_e4m3 chunk128"``: per-layer
    overrides already applied); for layers it does not list, the config's ``input_format``
    or ``format``.
    """
    quantization = report.get("quantization") or {}
    default = quantization.get("input_format") or quantization.get("format")
    prepared = {
        str(entry.get("name")): entry
        for entry in (report.get("preparation") or {}).get("quantized") or []
        if isinstance(entry, Mapping)
    }
    names: list[str | None] = []
    for layer in layer_names:
        entry = prepared.get(layer)
        if entry is None:
            names.append(str(default) if default else None)
            continue
        described = (entry.get("roles") or {}).get("input")
        names.append(str(described).split()[0] if described else None)
    return names


def nonfinite_text(counts: Any) -> str:
    """``"3 NaN, 1 inf"`` from ``{"nan": 3, "inf": 1}``; empty when both are zero or absent."""
    if not isinstance(counts, Mapping):
        return ""
    parts = []
    for key, label in (("nan", "NaN"), ("inf", "inf")):
        count = counts.get(key) or 0
        if count:
            parts.append(f"{count} {label}")
    return ", ".join(parts)


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
        tensors = plural(info.get("tensors", 0), "tensor")
        detail = f"{tensors}, {plural(info.get('elements', 0), 'value')}"
        if info.get("failed_tensors"):
            detail += f"; {info['failed_tensors']} failing"
        if info.get("missing"):
            detail += f" ({info['missing']} never observed)"
        nonfinite = nonfinite_text(info.get("nonfinite"))
        if nonfinite:
            detail += f"; {nonfinite}"
        rows.append((title, str(info.get("status", "-")), detail))
    scales = compliance.get("scales")
    if scales is not None:
        detail = plural(scales.get("checked", 0), "scale")
        if scales.get("failed"):
            detail += f"; {scales['failed']} illegal"
        rows.append(("Scales", str(scales.get("status", "-")), detail))
    return rows


def failure_entries(compliance: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """The detailed failures: (headline, example lines) per missing or failing tensor."""
    entries: list[tuple[str, list[str]]] = []
    for missing in compliance.get("missing") or []:
        entries.append(
            (
                f"{missing['layer']} [{missing['role']}]: FAIL - "
                + missing.get("reason", "quantized per the preparation report but never observed"),
                [],
            )
        )
    for tensor in compliance.get("failures") or []:
        counts = ", ".join(f"{k}: {v}" for k, v in (tensor.get("failures") or {}).items())
        headline = (
            f"{tensor['layer']} [{tensor['role']}] {tensor.get('format', '')}: FAIL - "
            f"{tensor.get('failed', 0)} failing of {plural(tensor.get('elements', 0), 'value')}"
            f" ({counts})"
        )
        nonfinite = nonfinite_text(tensor.get("nonfinite"))
        if nonfinite:
            headline += f"; {nonfinite}"
        entries.append(
            (headline, [example_text(example) for example in tensor.get("examples") or []])
        )
    return entries


def failure_lines(compliance: Mapping[str, Any]) -> list[str]:
    """The detailed failures, one block of lines per failing tensor."""
    lines: list[str] = []
    for headline, examples in failure_entries(compliance):
        lines.append(headline)
        lines.extend("    " + example for example in examples)
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
