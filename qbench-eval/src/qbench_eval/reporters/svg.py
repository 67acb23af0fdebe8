"""Tiny inline-SVG charts for the HTML report (no JavaScript, no network, no dependencies).

Every function returns one ``<svg>`` element as a string. Non-finite or missing values are
left out of the plot and counted in a note under it rather than distorting the axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

WIDTH = 760
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP = 64, 16, 28


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 x 10^k) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / (count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.1e}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">'
        f"<title>{escape(title)}</title>"
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    y_label: str,
    y_max: float | None = None,
) -> str:
    """Vertical bars, one group per category, one colour per series (e.g. FP32 vs quantized)."""
    height, bottom = 300, 48
    values = [v for vs in series.values() for v in vs if _finite(v)]
    top = y_max if y_max is not None else (max(values) if values else 1.0) or 1.0
    plot_w = WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = height - _MARGIN_TOP - bottom
    body = _axes(0.0, top, plot_h, y_label, lambda v: _MARGIN_TOP + plot_h * (1 - v / top))
    group_w = plot_w / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for ci, category in enumerate(categories):
        x0 = _MARGIN_LEFT + ci * group_w + group_w * 0.1
        for si, (name, vs) in enumerate(series.items()):
            v = vs[ci] if ci < len(vs) else None
            if not _finite(v):
                continue
            h = plot_h * max(min(v / top, 1.0), 0.0)
            x = x0 + si * bar_w
            body.append(
                f'<rect x="{x:.1f}" y="{_MARGIN_TOP + plot_h - h:.1f}" width="{bar_w * 0.95:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[si % len(PALETTE)]}"><title>{escape(name)} {escape(category)}: {_fmt(v)}</title></rect>'
                f'<text x="{x + bar_w / 2:.1f}" y="{_MARGIN_TOP + plot_h - h - 3:.1f}" text-anchor="middle" font-size="9">{_fmt(v)}</text>'
            )
        body.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - bottom + 16}" text-anchor="middle">{escape(category)}</text>'
        )
    body += _legend(list(series), height - 14)
    return _svg(WIDTH, height, title, body)


def per_layer(
    layers: Sequence[str],
    values: Sequence[float | None],
    title: str,
    y_label: str,
    log: bool = False,
    y_min: float | None = None,
    y_max: float | None = None,
) -> str:
    """One bar per layer in model order; ``log`` plots log10 of positive values (e.g. MSE).
    ``y_min``/``y_max`` fix the axis (cosine close to 1 needs a zoomed axis to be readable)."""
    height, bottom = 320, 110
    points = []
    skipped = 0
    for v in values:
        if _finite(v) and (not log or v > 0):
            points.append(math.log10(v) if log else float(v))
        else:
            points.append(None)
            skipped += 1
    finite = [p for p in points if p is not None]
    low = min(finite + [0.0]) if not log else (math.floor(min(finite)) if finite else 0.0)
    high = max(finite + [0.0]) if not log else (math.ceil(max(finite)) if finite else 1.0)
    low = low if y_min is None else y_min
    high = high if y_max is None else y_max
    if high <= low:
        high = low + 1.0
    plot_w = WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = height - _MARGIN_TOP - bottom

    def y_of(v: float) -> float:
        return _MARGIN_TOP + plot_h * (1 - (v - low) / (high - low))

    label = f"log10 {y_label}" if log else y_label
    body = _axes(low, high, plot_h, label, y_of)
    slot = plot_w / max(len(layers), 1)
    for i, (name, p) in enumerate(zip(layers, points)):
        x = _MARGIN_LEFT + i * slot
        if p is not None:
            y_top, y_base = y_of(max(p, low)), y_of(low)
            raw = values[i]
            body.append(
                f'<rect x="{x + slot * 0.1:.1f}" y="{y_top:.1f}" width="{slot * 0.8:.1f}" '
                f'height="{max(y_base - y_top, 0.5):.1f}" fill="{PALETTE[0]}"><title>{escape(name)}: {_fmt(raw)}</title></rect>'
            )
        tx, ty = x + slot / 2, height - bottom + 8
        body.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="end" transform="rotate(-60 {tx:.1f} {ty:.1f})" font-size="9">{escape(name)}</text>'
        )
    if skipped:
        body.append(
            f'<text x="{_MARGIN_LEFT}" y="{height - 4}" font-size="10">{skipped} layer(s) without a finite value not drawn</text>'
        )
    return _svg(WIDTH, height, title, body)


def ranges(
    layers: Sequence[str], lows: Sequence[float | None], highs: Sequence[float | None], title: str
) -> str:
    """Per layer, a bar from log2 of the smallest to log2 of the largest non-zero |input|."""
    height, bottom = 320, 110
    pairs = [
        (math.log2(lo), math.log2(hi))
        if _finite(lo) and _finite(hi) and lo > 0 and hi > 0
        else None
        for lo, hi in zip(lows, highs)
    ]
    finite = [v for p in pairs if p is not None for v in p]
    low = math.floor(min(finite)) if finite else -1.0
    high = math.ceil(max(finite)) if finite else 1.0
    if high == low:
        high = low + 1.0
    plot_w = WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = height - _MARGIN_TOP - bottom

    def y_of(v: float) -> float:
        return _MARGIN_TOP + plot_h * (1 - (v - low) / (high - low))

    body = _axes(low, high, plot_h, "log2 |x|", y_of)
    slot = plot_w / max(len(layers), 1)
    for i, (name, pair) in enumerate(zip(layers, pairs)):
        x = _MARGIN_LEFT + i * slot
        if pair is not None:
            lo, hi = pair
            body.append(
                f'<rect x="{x + slot * 0.2:.1f}" y="{y_of(hi):.1f}" width="{slot * 0.6:.1f}" '
                f'height="{max(y_of(lo) - y_of(hi), 0.5):.1f}" fill="{PALETTE[2]}">'
                f"<title>{escape(name)}: 2^{lo:.2f} .. 2^{hi:.2f} ({hi - lo:.2f} binades)</title></rect>"
            )
        tx, ty = x + slot / 2, height - bottom + 8
        body.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="end" transform="rotate(-60 {tx:.1f} {ty:.1f})" font-size="9">{escape(name)}</text>'
        )
    return _svg(WIDTH, height, title, body)


def _axes(low: float, high: float, plot_h: float, label: str, y_of) -> list[str]:
    x_end = WIDTH - _MARGIN_RIGHT
    body = [
        f'<line x1="{_MARGIN_LEFT}" y1="{_MARGIN_TOP}" x2="{_MARGIN_LEFT}" y2="{_MARGIN_TOP + plot_h}" stroke="#333"/>',
        f'<text x="14" y="{_MARGIN_TOP + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_MARGIN_TOP + plot_h / 2:.1f})">{escape(label)}</text>',
    ]
    for tick in _ticks(low, high):
        y = y_of(tick)
        body.append(
            f'<line x1="{_MARGIN_LEFT}" y1="{y:.1f}" x2="{x_end}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{_MARGIN_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    return body


def _legend(names: Sequence[str], y: float) -> list[str]:
    body = []
    for i, name in enumerate(names):
        x = _MARGIN_LEFT + i * 140
        body.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{x + 14}" y="{y}">{escape(name)}</text>'
        )
    return body
