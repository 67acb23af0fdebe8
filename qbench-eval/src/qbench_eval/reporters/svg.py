"""Tiny inline-SVG charts for the HTML report (no JavaScript, no network, no dependencies).

Every function returns one ``<svg>`` element as a string. Non-finite or missing values are
left out of the plot and counted in a note under it rather than distorting the axis.

SVG has no text layout: a label longer than the room left for it is clipped at the viewBox.
So every chart sizes its margins from the labels it draws, estimating a label's width as
``len(text) * CHAR_EM * font_size`` (:func:`text_width`), an upper bound for the sans-serif
fonts browsers pick (DejaVu Sans, whose digits are the widest at 0.636 em, Liberation Sans
and Helvetica are narrower on average).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

WIDTH = 760
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP = 64, 16, 28
_PLOT_HEIGHT = 182
#: Estimated advance width of one character, in em (see the module docstring).
CHAR_EM = 0.62
#: Longer layer names are shortened in the middle on axis labels (the tooltip and the table
#: keep the full name): a 200-character name would otherwise need a 1000-pixel-tall chart.
MAX_LABEL_CHARS = 44
_LABEL_FONT = 9.0
_BAND_COLOUR = "#f2a541"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def text_width(text: str, font_size: float) -> float:
    """Estimated rendered width of ``text`` in user units (an upper bound, see CHAR_EM)."""
    return len(text) * CHAR_EM * font_size


def short_label(name: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``name`` cut in the middle to at most ``limit`` characters (``layer4.…0.conv2``): the
    start (stage) and the end (the layer's own name) say the most about a module path."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return name[:head] + "\u2026" + name[-tail:]


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


def compact_number(value: float) -> str:
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.1e}"


def _svg(width: int, height: float, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height:.0f}" '
        f'width="100%" role="img" aria-label="{escape(title)}" font-family="sans-serif" '
        f'font-size="11"><title>{escape(title)}</title>'
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>' + "".join(body) + "</svg>"
    )


def grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    y_label: str,
    y_max: float | None = None,
    y_min: float = 0.0,
    value_text: Callable[[float], str] = compact_number,
    notes: Sequence[str] = (),
) -> str:
    """Vertical bars, one group per category, one colour per series (e.g. FP32 vs quantized).

    ``y_min`` above 0 zooms the axis (accuracies of 99.1 and 98.7 look the same on 0-100);
    the bars then start at ``y_min``, which a note under the chart says. Each bar is labelled
    with ``value_text`` of its value; ``notes`` are extra lines under the legend.
    """
    values = [v for vs in series.values() for v in vs if _finite(v)]
    top = y_max if y_max is not None else (max(values) if values else 1.0) or 1.0
    if top <= y_min:
        top = y_min + 1.0
    plot_w = WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_top = _MARGIN_TOP + 14  # room for the value label over a bar at the axis' top
    plot_h = _PLOT_HEIGHT + 26
    all_notes = list(notes)
    if y_min > 0:
        all_notes.insert(
            0, f"Axis zoomed to the data: bars start at {compact_number(y_min)}, not 0."
        )
    height = plot_top + plot_h + 48 + 14 * len(all_notes)

    def y_of(v: float) -> float:
        return plot_top + plot_h * (1 - (v - y_min) / (top - y_min))

    body = _axes(y_min, top, plot_top, plot_h, y_label, y_of)
    group_w = plot_w / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for ci, category in enumerate(categories):
        x0 = _MARGIN_LEFT + ci * group_w + group_w * 0.1
        for si, (name, vs) in enumerate(series.items()):
            v = vs[ci] if ci < len(vs) else None
            if not _finite(v):
                continue
            clipped = max(min(v, top), y_min)
            y_top = y_of(clipped)
            h = plot_top + plot_h - y_top
            x = x0 + si * bar_w
            label = value_text(v)
            font = min(9.0, bar_w * 0.95 / max(len(label) * CHAR_EM, 1))
            body.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_w * 0.95:.1f}" '
                f'height="{max(h, 0.5):.1f}" fill="{PALETTE[si % len(PALETTE)]}">'
                f"<title>{escape(name)} {escape(category)}: {escape(label)}</title></rect>"
                f'<text x="{x + bar_w * 0.475:.1f}" y="{y_top - 3:.1f}" '
                f'text-anchor="middle" font-size="{font:.1f}">{escape(label)}</text>'
            )
        body.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{plot_top + plot_h + 16:.1f}" '
            f'text-anchor="middle">{escape(category)}</text>'
        )
    legend_y = plot_top + plot_h + 36
    body += _legend(
        [(name, PALETTE[i % len(PALETTE)], 1.0) for i, name in enumerate(series)], legend_y
    )
    for i, note in enumerate(all_notes):
        body.append(
            f'<text x="{_MARGIN_LEFT}" y="{legend_y + 16 + 14 * i:.1f}" '
            f'font-size="10">{escape(note)}</text>'
        )
    return _svg(WIDTH, height, title, body)


def _layer_labels(
    layers: Sequence[str], slot: float, y_axis: float
) -> tuple[list[str], float, float]:
    """Vertical layer-name labels hanging under the x axis, one per slot.

    Returns the elements, the font size (shrunk so neighbouring labels do not overlap when
    there are many layers) and the height the labels need below ``y_axis``.
    """
    font = max(min(_LABEL_FONT, slot * 0.85), 4.0)
    labels = [short_label(name) for name in layers]
    needed = max((text_width(label, font) for label in labels), default=0.0) + 8
    body = []
    for i, label in enumerate(labels):
        # rotate(-90): the text runs bottom to top and its glyphs (ascent up in the text's own
        # frame) extend to the left of x, so x is shifted right to centre them on the slot.
        tx = _MARGIN_LEFT + (i + 0.5) * slot + 0.3 * font
        ty = y_axis + 6
        body.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="end" font-size="{font:.1f}" '
            f'transform="rotate(-90 {tx:.1f} {ty:.1f})">{escape(label)}'
            f"<title>{escape(layers[i])}</title></text>"
        )
    return body, font, needed


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
    plot_h = _PLOT_HEIGHT
    slot = plot_w / max(len(layers), 1)
    labels, _, label_h = _layer_labels(layers, slot, _MARGIN_TOP + plot_h)
    height = _MARGIN_TOP + plot_h + label_h + (18 if skipped else 4)

    def y_of(v: float) -> float:
        return _MARGIN_TOP + plot_h * (1 - (v - low) / (high - low))

    label = f"log10 {y_label}" if log else y_label
    body = _axes(low, high, _MARGIN_TOP, plot_h, label, y_of)
    for i, (name, p) in enumerate(zip(layers, points)):
        if p is None:
            continue
        x = _MARGIN_LEFT + i * slot
        y_top, y_base = y_of(max(p, low)), y_of(low)
        raw = float(values[i])  # type: ignore[arg-type]  # finite: p is not None
        body.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{y_top:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{max(y_base - y_top, 0.5):.1f}" fill="{PALETTE[0]}">'
            f"<title>{escape(name)}: {compact_number(raw)}</title></rect>"
        )
    body += labels
    if skipped:
        note = f"{skipped} {'layer' if skipped == 1 else 'layers'} without a finite value not drawn"
        body.append(f'<text x="{_MARGIN_LEFT}" y="{height - 5:.1f}" font-size="10">{note}</text>')
    return _svg(WIDTH, height, title, body)


def ranges(
    layers: Sequence[str],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    title: str,
    bands: Sequence[tuple[float, float, float] | None] | None = None,
    band_names: tuple[str, str] = ("format: normal range", "subnormal range"),
    notes: Sequence[str] = (),
) -> str:
    """Per layer, a bar from log2 of the smallest to log2 of the largest non-zero |input|.

    ``bands`` (per layer, or None) shades what the target format can represent there, as
    log2 (lowest subnormal, lowest normal, highest): the normal part darker, the subnormal
    part lighter, so input magnitudes below the band are visibly lost to underflow.
    """
    pairs = [
        (math.log2(lo), math.log2(hi))
        if _finite(lo) and _finite(hi) and lo > 0 and hi > 0  # type: ignore[operator]
        else None
        for lo, hi in zip(lows, highs)
    ]
    bands = list(bands or [None] * len(layers))
    drawn_bands = [b for b in bands if b is not None and all(math.isfinite(v) for v in b)]
    finite = [v for p in pairs if p is not None for v in p]
    finite += [v for b in drawn_bands for v in (b[0], b[2])]
    low = math.floor(min(finite)) if finite else -1.0
    high = math.ceil(max(finite)) if finite else 1.0
    if high == low:
        high = low + 1.0
    top = _MARGIN_TOP + (20 if drawn_bands else 0)
    plot_w = WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = _PLOT_HEIGHT
    slot = plot_w / max(len(layers), 1)
    labels, _, label_h = _layer_labels(layers, slot, top + plot_h)
    height = top + plot_h + label_h + 4 + 14 * len(notes)

    def y_of(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    body = _axes(low, high, top, plot_h, "log2 |x|", y_of)
    for i, band in enumerate(bands):
        if band is None or not all(math.isfinite(v) for v in band):
            continue
        sub_lo, normal_lo, band_hi = band
        x = _MARGIN_LEFT + i * slot + slot * 0.05
        for part_lo, part_hi, opacity in ((sub_lo, normal_lo, 0.25), (normal_lo, band_hi, 0.55)):
            if part_hi <= part_lo:
                continue
            body.append(
                f'<rect x="{x:.1f}" y="{y_of(part_hi):.1f}" width="{slot * 0.9:.1f}" '
                f'height="{y_of(part_lo) - y_of(part_hi):.1f}" fill="{_BAND_COLOUR}" '
                f'fill-opacity="{opacity}"/>'
            )
    for i, (name, pair) in enumerate(zip(layers, pairs)):
        if pair is None:
            continue
        x = _MARGIN_LEFT + i * slot
        lo, hi = pair
        body.append(
            f'<rect x="{x + slot * 0.3:.1f}" y="{y_of(hi):.1f}" width="{slot * 0.4:.1f}" '
            f'height="{max(y_of(lo) - y_of(hi), 0.5):.1f}" fill="{PALETTE[2]}">'
            f"<title>{escape(name)}: 2^{lo:.2f} .. 2^{hi:.2f} ({hi - lo:.2f} binades)</title>"
            "</rect>"
        )
    body += labels
    if drawn_bands:
        body += _legend(
            [
                ("input |x| range", PALETTE[2], 1.0),
                (band_names[0], _BAND_COLOUR, 0.55),
                (band_names[1], _BAND_COLOUR, 0.25),
            ],
            _MARGIN_TOP + 10,
        )
    for i, note in enumerate(notes):
        body.append(
            f'<text x="{_MARGIN_LEFT}" y="{height - 5 - 14 * (len(notes) - 1 - i):.1f}" '
            f'font-size="10">{escape(note)}</text>'
        )
    return _svg(WIDTH, height, title, body)


def _axes(
    low: float,
    high: float,
    top: float,
    plot_h: float,
    label: str,
    y_of: Callable[[float], float],
) -> list[str]:
    x_end = WIDTH - _MARGIN_RIGHT
    body = [
        f'<line x1="{_MARGIN_LEFT}" y1="{top}" x2="{_MARGIN_LEFT}" y2="{top + plot_h}" '
        'stroke="#333"/>',
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(label)}</text>',
    ]
    for tick in _ticks(low, high):
        y = y_of(tick)
        body.append(
            f'<line x1="{_MARGIN_LEFT}" y1="{y:.1f}" x2="{x_end}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{_MARGIN_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">'
            f"{compact_number(tick)}</text>"
        )
    return body


def _legend(entries: Sequence[tuple[str, str, float]], y: float) -> list[str]:
    """(name, colour, opacity) swatches in one row, spaced by the names' estimated widths."""
    body = []
    x = float(_MARGIN_LEFT)
    for name, fill, opacity in entries:
        body.append(
            f'<rect x="{x:.1f}" y="{y - 9}" width="10" height="10" fill="{fill}" '
            f'fill-opacity="{opacity}"/>'
            f'<text x="{x + 14:.1f}" y="{y}">{escape(name)}</text>'
        )
        x += 14 + text_width(name, 11) + 18
    return body


def fit_text(text: str, font_size: float, room: float) -> str:
    """``text`` cut at the end (``…``) so that its estimated width stays within ``room``."""
    limit = max(int(room / (CHAR_EM * font_size)), 1)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def scatter(
    points: Sequence[tuple[str, str, float, float, bool]],
    title: str,
    x_label: str,
    y_label: str,
    highlight_name: str = "Pareto front",
    other_name: str = "other configs",
    notes: Sequence[str] = (),
) -> str:
    """One dot per (name, fallback label, x, y, highlighted) point; the highlighted points
    (a Pareto front, maximising y while minimising x) are drawn larger and joined by a step
    line in x order.

    Each dot is labelled with its name (cut in the middle past 32 characters; its tooltip
    has the whole name and both values). Labels are placed greedily: right of the dot, left,
    above, below, then shifted up and down, keeping the first spot that stays inside the plot
    and clear of the labels and dots placed so far; where none is free the fallback label
    (a short number) is tried the same way, and as a last resort it is drawn right of the dot,
    clamped inside the chart. So a label may overlap another, but never leaves the chart."""
    label_font = 9.0
    xs = [p[2] for p in points]
    ys = [p[3] for p in points]

    def padded(values: Sequence[float]) -> tuple[float, float]:
        if not values:
            return 0.0, 1.0
        low, high = min(values), max(values)
        span = high - low if high > low else max(abs(high) * 0.05, 0.5)
        if high == low:
            low, high = low - span / 2, high + span / 2
        return low - span * 0.08, high + span * 0.08

    x_low, x_high = padded(xs)
    y_low, y_high = padded(ys)
    y_ticks = _ticks(y_low, y_high)
    x_ticks = _ticks(x_low, x_high, 8)
    tick_width = max((text_width(compact_number(t), 11) for t in y_ticks), default=0.0)
    left = max(float(_MARGIN_LEFT), 26 + tick_width + 6)
    right = WIDTH - 24.0
    top = float(_MARGIN_TOP + 8)
    plot_h = 280.0
    bottom = top + plot_h
    height = bottom + 64 + 14 * len(notes)

    def x_of(v: float) -> float:
        return left + (right - left) * (v - x_low) / (x_high - x_low)

    def y_of(v: float) -> float:
        return top + plot_h * (1 - (v - y_low) / (y_high - y_low))

    body = [
        f'<line x1="{left:.1f}" y1="{top}" x2="{left:.1f}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{left:.1f}" y1="{bottom}" x2="{right:.1f}" y2="{bottom}" stroke="#333"/>',
    ]
    y_text = fit_text(y_label, 11, plot_h)
    body.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(y_text)}</text>'
    )
    for tick in y_ticks:
        y = y_of(tick)
        body.append(
            f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 4:.1f}" y="{y + 3:.1f}" text-anchor="end">'
            f"{compact_number(tick)}</text>"
        )
    for tick in x_ticks:
        x = x_of(tick)
        body.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{bottom + 14:.1f}" text-anchor="middle">'
            f"{compact_number(tick)}</text>"
        )
    body.append(
        f'<text x="{(left + right) / 2:.1f}" y="{bottom + 30:.1f}" text-anchor="middle">'
        f"{escape(fit_text(x_label, 11, right - left))}</text>"
    )
    front = sorted((p for p in points if p[4]), key=lambda p: (p[2], p[3]))
    steps: list[tuple[float, float]] = []
    if len(front) > 1:
        steps = [(x_of(front[0][2]), y_of(front[0][3]))]
        for point in front[1:]:
            steps += [(x_of(point[2]), steps[-1][1]), (x_of(point[2]), y_of(point[3]))]
        body.append(
            '<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>'.format(
                PALETTE[1], " ".join(f"{x:.1f},{y:.1f}" for x, y in steps)
            )
        )
    taken = [(x_of(p[2]) - 5, y_of(p[3]) - 5, x_of(p[2]) + 5, y_of(p[3]) + 5) for p in points]
    taken += [  # the step line's segments, as thin boxes labels keep clear of
        (min(a[0], b[0]) - 1, min(a[1], b[1]) - 1, max(a[0], b[0]) + 1, max(a[1], b[1]) + 1)
        for a, b in zip(steps, steps[1:])
    ]
    labels = []
    # Front points first: their labels get the free spots.
    for name, fallback, x_value, y_value, on_front in sorted(points, key=lambda p: not p[4]):
        px, py = x_of(x_value), y_of(y_value)
        radius = 5.0 if on_front else 3.5
        colour = PALETTE[1] if on_front else PALETTE[0]
        tip = f"{name}: {compact_number(x_value)} {x_label}, {compact_number(y_value)} {y_label}"
        body.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{radius}" fill="{colour}" '
            f'stroke="#fff" stroke-width="1"><title>{escape(tip)}</title></circle>'
        )
        placed = None
        for text in (short_label(name, 32), fallback):
            width = text_width(text, label_font)
            for dx, dy, anchor in (
                (7, 3, "start"),
                (-7, 3, "end"),
                (0, -8, "middle"),
                (0, 14, "middle"),
                *((7, 3 + k * s, "start") for k in (10, 20, 30) for s in (-1, 1)),
                *((-7, 3 + k * s, "end") for k in (10, 20, 30) for s in (-1, 1)),
            ):
                x, y = px + dx, py + dy
                x0 = x - {"start": 0.0, "middle": width / 2, "end": width}[anchor]
                box = (x0, y - 0.8 * label_font, x0 + width, y + 0.25 * label_font)
                inside = (
                    left + 1 <= box[0] and box[2] <= right and top <= box[1] and box[3] <= bottom
                )
                if inside and not any(_overlaps(box, other) for other in taken):
                    placed = (text, x, y, anchor, box)
                    break
            if placed:
                break
        if placed is None:
            width = text_width(fallback, label_font)
            x = min(max(px + 7, 2.0), WIDTH - 2 - width)
            y = min(max(py + 3, top + label_font), bottom)
            box = (x, y - 0.8 * label_font, x + width, y + 0.25 * label_font)
            placed = (fallback, x, y, "start", box)
        text, x, y, anchor, box = placed
        taken.append(box)
        front_fill = ' fill="#a0522d"' if on_front else ""  # not bold: wider than CHAR_EM allows
        labels.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{label_font}"'
            f"{front_fill}>{escape(text)}<title>{escape(name)}</title></text>"
        )
    body += labels
    legend_y = bottom + 48
    body += _legend([(highlight_name, PALETTE[1], 1.0), (other_name, PALETTE[0], 1.0)], legend_y)
    for i, note in enumerate(notes):
        body.append(
            f'<text x="{_MARGIN_LEFT}" y="{legend_y + 16 + 14 * i:.1f}" font-size="10">'
            f"{escape(fit_text(note, 10, WIDTH - _MARGIN_LEFT - 4))}</text>"
        )
    return _svg(WIDTH, height, fit_text(title, 13, WIDTH - 8), body)
