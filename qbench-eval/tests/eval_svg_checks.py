"""Checks on the SVG charts of the HTML reports, shared by the report and sweep-report
tests: the charts parsed, and every text label's estimated extent inside its chart."""

from __future__ import annotations

import math
import re
from xml.etree import ElementTree

SVG = "{http://www.w3.org/2000/svg}"


def svgs(html: str) -> list[ElementTree.Element]:
    return [ElementTree.fromstring(s) for s in re.findall(r"<svg.*?</svg>", html, flags=re.S)]


def text_box(text: ElementTree.Element, root_size: float) -> tuple[float, float, float, float]:
    """Estimated extent of an SVG <text>, transform applied: 0.6 em a character (what sans
    fonts average, DejaVu's digits reach 0.64), ascent 0.8 em, descent 0.25 em."""
    size = float(text.get("font-size", root_size))
    label = text.text or ""
    width = len(label) * 0.6 * size
    x, y = float(text.get("x", 0)), float(text.get("y", 0))
    anchor = text.get("text-anchor", "start")
    left = x - {"start": 0.0, "middle": width / 2, "end": width}[anchor]
    corners = [(left, y - 0.8 * size), (left + width, y + 0.25 * size)]
    corners += [(left, corners[1][1]), (left + width, corners[0][1])]
    transform = text.get("transform")
    if transform:
        angle, cx, cy = map(
            float, re.fullmatch(r"rotate\(([-\d.]+) ([-\d.]+) ([-\d.]+)\)", transform).groups()
        )
        a = math.radians(angle)
        corners = [
            (
                cx + (px - cx) * math.cos(a) - (py - cy) * math.sin(a),
                cy + (px - cx) * math.sin(a) + (py - cy) * math.cos(a),
            )
            for px, py in corners
        ]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def clipped_texts(html: str) -> list[str]:
    """Every SVG text whose estimated extent leaves its chart's viewBox."""
    clipped = []
    for chart in svgs(html):
        vx, vy, vw, vh = map(float, chart.get("viewBox").split())
        root_size = float(chart.get("font-size", 16))
        for text in chart.iter(f"{SVG}text"):
            x0, y0, x1, y1 = text_box(text, root_size)
            if x0 < vx - 0.5 or y0 < vy - 0.5 or x1 > vx + vw + 0.5 or y1 > vy + vh + 0.5:
                clipped.append(f"{text.text!r} at ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f})")
    return clipped
