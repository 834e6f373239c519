"""Inline SVG charts for the report pages: grouped bars (canary vs baseline) and poll lines.

Colours and fonts come from classes in report.css, not `style` attributes: the pages' CSP
allows only our own stylesheet. Every text that reaches the SVG goes through Markup.format,
which escapes it (bucket bounds come from Prometheus, labels from requests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from markupsafe import Markup

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 14, 44
SIDES = ("canary", "baseline")


def _finite(value: object) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _known(values: Mapping[str, Sequence[float | None]]) -> list[float]:
    found = (_finite(v) for side in SIDES for v in values.get(side, []))
    return [v for v in found if v is not None]


def bucket_shares(cumulative: dict[str, float]) -> dict[str, float]:
    """Cumulative counts per upper bound → the share of requests in each bucket."""
    ordered = sorted(cumulative.items(), key=lambda item: bound(item[0]))
    total = max((count for _, count in ordered), default=0.0)
    shares: dict[str, float] = {}
    below = 0.0
    for le, count in ordered:
        # Rates of separate bucket series can dip below the previous bucket's by a rounding
        # error; a bucket never holds a negative share.
        shares[le] = max(count - below, 0.0) / total if total > 0 else 0.0
        below = max(below, count)
    return shares


def bound(le: str) -> float:
    try:
        return float(le)
    except ValueError:
        return math.inf


def grouped_bars(
    title: str,
    groups: Sequence[str],
    values: Mapping[str, Sequence[float | None]],
    *,
    unit: str = "",
    percent: bool = False,
) -> Markup:
    """One pair of bars (canary, baseline) per group label."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    known = _known(values)
    top = max(known, default=0.0) or 1.0
    parts = [_open(title)]
    parts += _y_axis(top, plot_h, percent, unit)
    slot = plot_w / max(len(groups), 1)
    bar = max(min(slot * 0.38, 28.0), 1.5)
    for i, group in enumerate(groups):
        x0 = LEFT + i * slot + (slot - 2 * bar) / 2
        for j, side in enumerate(SIDES):
            series = values.get(side, [])
            value = _finite(series[i]) if i < len(series) else None
            if value is None:
                continue
            height = plot_h * max(value, 0.0) / top
            shown = f"{value * 100:.2f}%" if percent else f"{value:.4g}{unit}"
            parts.append(
                Markup(
                    '<rect class="bar {}" x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}">'
                    "<title>{} {}: {}</title></rect>"
                ).format(side, x0 + j * bar, TOP + plot_h - height, bar, height, side, group, shown)
            )
        if len(groups) <= 16 or i % math.ceil(len(groups) / 16) == 0:
            tick = Markup('<text class="tick" x="{:.1f}" y="{}" text-anchor="middle">{}</text>')
            parts.append(tick.format(LEFT + (i + 0.5) * slot, HEIGHT - BOTTOM + 14, group))
    parts += _legend()
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def poll_lines(
    title: str,
    times: Sequence[str],
    values: Mapping[str, Sequence[float | None]],
    *,
    percent: bool = False,
    unit: str = "",
) -> Markup:
    """Canary and baseline over the polls so far (x: poll order, labelled with its time)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    known = _known(values)
    low = min(known, default=0.0)
    high = max(known, default=1.0)
    if percent:
        low = min(low, 0.99) if high <= 1 else low
    if high - low < 1e-9:
        low, high = low - 0.5 * (abs(low) or 1), high + 0.5 * (abs(high) or 1)
    count = len(times)
    step = plot_w / max(count - 1, 1)

    def x(i: int) -> float:
        return LEFT + (i * step if count > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (v - low) / (high - low))

    parts = [_open(title)]
    for k in range(3):
        level = low + (high - low) * k / 2
        label = f"{level * 100:.2f}%" if percent else f"{level:.3g}{unit}"
        parts.append(
            Markup(
                '<line class="grid" x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}"></line>'
                '<text class="tick" x="{}" y="{:.1f}" text-anchor="end">{}</text>'
            ).format(LEFT, WIDTH - RIGHT, y(level), y(level), LEFT - 4, y(level) + 4, label)
        )
    for side in SIDES:
        known_points = [(i, _finite(v)) for i, v in enumerate(values.get(side, []))]
        points = [(x(i), y(v)) for i, v in known_points if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            line = Markup('<polyline class="line {}" points="{}"></polyline>')
            parts.append(line.format(side, path))
        for px, py in points:
            parts.append(
                Markup('<circle class="dot {}" cx="{:.1f}" cy="{:.1f}" r="3"></circle>').format(
                    side, px, py
                )
            )
    for i in sorted({0, count - 1}) if count else []:
        # The first and last poll's times, kept inside the chart at its edges.
        anchor = "middle" if count == 1 else ("start" if i == 0 else "end")
        tick = Markup('<text class="tick" x="{:.1f}" y="{}" text-anchor="{}">{}</text>')
        parts.append(tick.format(x(i), HEIGHT - BOTTOM + 14, anchor, times[i][11:19]))
    parts += _legend()
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _open(title: str) -> Markup:
    return Markup(
        '<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" '
        'role="img" aria-label="{}"><title>{}</title>'
    ).format(WIDTH, HEIGHT, title, title)


def _y_axis(top: float, plot_h: float, percent: bool, unit: str) -> list[Markup]:
    parts = []
    for k in range(3):
        level = top * k / 2
        y = TOP + plot_h * (1 - k / 2)
        label = f"{level * 100:.1f}%" if percent else f"{level:.3g}{unit}"
        parts.append(
            Markup(
                '<line class="grid" x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}"></line>'
                '<text class="tick" x="{}" y="{:.1f}" text-anchor="end">{}</text>'
            ).format(LEFT, WIDTH - RIGHT, y, y, LEFT - 4, y + 4, label)
        )
    return parts


def _legend() -> list[Markup]:
    y = HEIGHT - 12
    return [
        Markup(
            '<rect class="bar canary" x="{}" y="{}" width="10" height="10"></rect>'
            '<text class="legend" x="{}" y="{}">canary</text>'
            '<rect class="bar baseline" x="{}" y="{}" width="10" height="10"></rect>'
            '<text class="legend" x="{}" y="{}">baseline</text>'
        ).format(LEFT, y - 9, LEFT + 14, y, LEFT + 80, y - 9, LEFT + 94, y)
    ]
