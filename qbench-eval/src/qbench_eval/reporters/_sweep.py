"""What the sweep reports (``sweep.txt``, ``sweep.md``, ``sweep.html``...) all show, computed
once from the sweep mapping that :func:`qbench.sweep.summarize` builds.

The mapping: ``name``, ``complete``, ``configs``, ``finished``, ``pending`` (names),
``reference_passes``, ``quality`` (the column key the Pareto front maximises, or None),
``columns`` (``[{key, label}]``) and ``rows``, one per config (``name``, ``effective_bits``,
``columns`` (``[{key, label, value}]``), ``layers`` (layer -> output cosine), ``variant``,
``audit``, ``status``, ``pareto``). Every key is read defensively: a value may be missing,
None, NaN or infinite (or the strings ``json_safe`` turned those into).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ._common import number, plural

#: The text and Markdown layer tables show this many layers, the worst first.
TEXT_LAYERS = 30
#: The HTML heat map shows this many layers, the worst first.
HTML_LAYERS = 60
#: Pending configs named in the INCOMPLETE line; the count is always exact.
MAX_PENDING_LISTED = 20

_NONFINITE = {"NaN": math.nan, "nan": math.nan, "Infinity": math.inf, "inf": math.inf}
_NONFINITE.update({"-Infinity": -math.inf, "-inf": -math.inf})


def as_float(value: Any) -> float | None:
    """A number of the mapping as a float (NaN and infinities too, also when written as the
    strings strict JSON holds them as); None when it is missing or not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return None


def finite(value: Any) -> float | None:
    number_ = as_float(value)
    return number_ if number_ is not None and math.isfinite(number_) else None


def decimals(values: Iterable[Any]) -> int:
    """Decimals that show every value of a column alike: four, more where a value is just
    under 1 in magnitude (cosines: 0.99996 and 0.99999 differ, ``1.0000`` would hide it)
    so that two digits of 1 - |x| show, at most eight."""
    out = 4
    for value in values:
        number_ = finite(value)
        gap = 1.0 - abs(number_) if number_ is not None else 0.0
        if 0 < gap < 0.01:
            out = max(out, min(-math.floor(math.log10(gap) + 1e-9) + 1, 8))
    return out


def value_text(value: Any, digits: int = 4) -> str:
    """A sweep table cell: ``-`` when missing, ``NaN``/``inf``/``-inf``, integers as they
    are, floats with ``digits`` decimals (see :func:`decimals`), scientific outside
    1e-3..1e5."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    number_ = as_float(value)
    if number_ is None:
        return one_line(value)
    return number(number_, digits)


def bits_text(value: Any) -> str:
    """Effective bits per weight element, three decimals (``8.251``)."""
    bits = as_float(value)
    if bits is None:
        return "-"
    return f"{bits:.3f}" if math.isfinite(bits) else number(bits)


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def rows(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [row for row in summary.get("rows") or () if isinstance(row, Mapping)]


def columns(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of every metric column, in the mapping's order (any column only the rows
    name is appended, so no value is dropped)."""
    out: dict[str, str] = {}
    for column in summary.get("columns") or ():
        if isinstance(column, Mapping) and column.get("key") is not None:
            out.setdefault(str(column["key"]), str(column.get("label") or column["key"]))
    for row in rows(summary):
        for column in row.get("columns") or ():
            if isinstance(column, Mapping) and column.get("key") is not None:
                out.setdefault(str(column["key"]), str(column.get("label") or column["key"]))
    return list(out.items())


def column_values(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(c["key"]): c.get("value")
        for c in row.get("columns") or ()
        if isinstance(c, Mapping) and c.get("key") is not None
    }


def variant_keys(summary: Mapping[str, Any]) -> list[str]:
    """The grid keys of every row's variant, in first-seen order."""
    keys: dict[str, None] = {}
    for row in rows(summary):
        variant = row.get("variant")
        if isinstance(variant, Mapping):
            keys.update(dict.fromkeys(str(k) for k in variant))
    return list(keys)


def status(row: Mapping[str, Any]) -> str:
    return str(row.get("status") or "done")


def pending(summary: Mapping[str, Any]) -> list[str]:
    names = summary.get("pending")
    if names is None:
        names = [row.get("name") for row in rows(summary) if status(row) == "pending"]
    return [one_line(name) for name in names or ()]


def counts(summary: Mapping[str, Any]) -> tuple[int, int]:
    """(finished, configs)."""
    total = summary.get("configs")
    total = int(total) if isinstance(total, int) else len(rows(summary))
    done = summary.get("finished")
    done = int(done) if isinstance(done, int) else total - len(pending(summary))
    return done, total


def is_complete(summary: Mapping[str, Any]) -> bool:
    """Complete only when the mapping says so and nothing contradicts it (a pending name, a
    finished count under the configs'): a partial table must never read as the final one."""
    done, total = counts(summary)
    return summary.get("complete") is True and not pending(summary) and done >= total


def incomplete_text(summary: Mapping[str, Any]) -> str | None:
    """``INCOMPLETE: 2 of 6 configs finished; pending: a, b, ...``, or None when complete."""
    if is_complete(summary):
        return None
    done, total = counts(summary)
    names = pending(summary)
    text = f"INCOMPLETE: {done} of {total} configs finished"
    if names:
        listed = ", ".join(names[:MAX_PENDING_LISTED])
        more = len(names) - MAX_PENDING_LISTED
        text += f"; pending: {listed}" + (f" and {more} more" if more > 0 else "")
    return text


def title(summary: Mapping[str, Any]) -> str:
    """``QBench sweep report: sdemo, 6 of 6 configs finished, 2 FP32 passes``."""
    done, total = counts(summary)
    text = f"QBench sweep report: {one_line(summary.get('name', '-'))}, {done} of {total} configs finished"
    passes = summary.get("reference_passes")
    if isinstance(passes, int) and not isinstance(passes, bool):
        text += f", {plural(passes, 'FP32 pass', 'FP32 passes')}"
    return text


def quality(summary: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, label) of the column the Pareto front maximises, or None."""
    key = summary.get("quality")
    if not key:
        return None
    return str(key), dict(columns(summary)).get(str(key), str(key))


def pareto_note(summary: Mapping[str, Any]) -> str:
    found = quality(summary)
    if found is None:
        return "No quality column (no metric declares one): no Pareto front."
    return (
        f"*: on the Pareto front of {found[1]} (higher is better) against bits/weight: no other "
        "config has at least its quality with at most its bits."
    )


def audit_text(row: Mapping[str, Any]) -> str:
    if status(row) == "pending":
        return "pending"
    audit = row.get("audit")
    return "-" if audit is None else one_line(audit)


def table(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[bool]]:
    """The sweep table: (header, rows of cells, right-aligned flags). ``#`` numbers the
    configs (the layer tables name them by it)."""
    cols = columns(summary)
    header = ["#", "config", "bits/weight", *(label for _, label in cols), "audit", "Pareto"]
    right = [True, False, True, *(True for _ in cols), False, False]
    body = []
    all_values = [column_values(row) for row in rows(summary)]
    digits = {key: decimals(values.get(key) for values in all_values) for key, _ in cols}
    for index, (row, values) in enumerate(zip(rows(summary), all_values), start=1):
        body.append(
            [
                str(index),
                one_line(row.get("name", "-")),
                bits_text(row.get("effective_bits")),
                *(value_text(values.get(key), digits[key]) for key, _ in cols),
                audit_text(row),
                "*" if row.get("pareto") is True else "",
            ]
        )
    return header, body, right


def _badness(value: Any) -> float | None:
    """How bad an output cosine is, for ordering layers: NaN is the worst there is."""
    cosine = as_float(value)
    if cosine is None:
        return None
    return math.inf if math.isnan(cosine) else -cosine


def worst_layers(summary: Mapping[str, Any], limit: int) -> tuple[list[str], int]:
    """The ``limit`` layers with the lowest output cosine in any config (NaN first), worst
    first, and how many layers were left out."""
    worst: dict[str, float | None] = {}
    order: dict[str, int] = {}
    for row in rows(summary):
        layers = row.get("layers")
        if not isinstance(layers, Mapping):
            continue
        for name, value in layers.items():
            name = str(name)
            bad = _badness(value)
            if name not in worst:
                order[name] = len(order)
                worst[name] = bad
            elif bad is not None and (worst[name] is None or bad > worst[name]):  # type: ignore[operator]
                worst[name] = bad
    ranked = sorted(worst, key=lambda n: (worst[n] is None, -(worst[n] or 0.0), order[n]))
    return ranked[:limit], max(len(ranked) - limit, 0)


def layer_table(
    summary: Mapping[str, Any], limit: int = TEXT_LAYERS
) -> tuple[list[str], list[list[str]], int]:
    """Layers x configs of output cosine, the ``limit`` worst layers: (header ``layer``,
    ``#1``..., rows, layers left out). No rows when no config recorded layers."""
    names, more = worst_layers(summary, limit)
    all_rows = rows(summary)
    header = ["layer", *(f"#{i}" for i in range(1, len(all_rows) + 1))]
    grid = [[layer_value(row, name) for row in all_rows] for name in names]
    digits = layer_decimals(grid)
    body = [
        [one_line(name), *(value_text(value, d) for value, d in zip(values, digits))]
        for name, values in zip(names, grid)
    ]
    return header, body, more


def layer_decimals(grid: list[list[Any]]) -> list[int]:
    """Decimals of each config's column of a layers x configs grid (see :func:`decimals`)."""
    width = max((len(values) for values in grid), default=0)
    return [decimals(values[i] for values in grid if i < len(values)) for i in range(width)]


def layer_value(row: Mapping[str, Any], name: str) -> Any:
    """The output cosine ``row`` recorded for layer ``name`` (None when it has none)."""
    layers = row.get("layers")
    return layers.get(name) if isinstance(layers, Mapping) else None


def layer_note(shown: int, more: int) -> str:
    text = "Output cosine of each layer (rows) in each config (columns, numbered as above), "
    text += f"the {plural(shown, 'layer')} with the lowest cosine in any config first"
    return text + (f"; {more} more not shown." if more else ".")


def scatter_points(
    summary: Mapping[str, Any],
) -> tuple[list[tuple[str, str, float, float, bool]], list[str]]:
    """(name, ``#`` number, bits, quality, on the Pareto front) of each finished config with
    both numbers finite, and the names of the finished configs without them."""
    found = quality(summary)
    points, missing = [], []
    for index, row in enumerate(rows(summary), start=1):
        if status(row) == "pending":
            continue
        name = one_line(row.get("name", "-"))
        bits = finite(row.get("effective_bits"))
        value = finite(column_values(row).get(found[0])) if found else None
        if bits is None or value is None:
            missing.append(name)
        else:
            points.append((name, f"#{index}", bits, value, row.get("pareto") is True))
    return points, missing
