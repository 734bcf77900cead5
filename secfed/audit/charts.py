"""Line and stacked-bar charts as inline SVG, for the audit page and the benchmark READMEs.

Why SVG written by hand: the audit page is one self-contained file that is archived, e-mailed and opened
years later, possibly offline, and that forbids every script and external load (see
:mod:`secfed.audit.html`). A plotting library would bring either images, scripts or a dependency for two
chart kinds; a few hundred lines of SVG text give charts that print sharply, scale with the page and carry
their own accessible title and description (``role="img"``, ``<title>``, ``<desc>``), with every marker's
value in a tooltip.

Colours come from the Okabe–Ito palette, distinguishable with the common colour-vision deficiencies and in
greyscale print. Fonts and colours of text are left to the page's CSS (the ``svg.chart`` rules);
:func:`standalone_svg` adds a minimal style of its own for a chart saved as an ``.svg`` file. Every label
is escaped: series names and categories may be report strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from secfed.audit.fmt import esc, fmt_num

__all__ = ["PALETTE", "Bars", "Rule", "Series", "bar_chart", "line_chart", "standalone_svg"]

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


@dataclass(frozen=True)
class Series:
    """One line of a line chart; a ``None`` y leaves a gap (e.g. an unbounded epsilon)."""

    name: str
    points: tuple[tuple[float, float | None], ...]
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class Bars:
    """One stacked layer of a bar chart: one value per category."""

    name: str
    values: tuple[float, ...]
    color: str


@dataclass(frozen=True)
class Rule:
    """A horizontal dashed reference line (a budget, a threshold) with its label."""

    value: float
    label: str
    color: str = "#555555"


_CHART_WIDTH = 900
_FONT = 12
_CHAR = 0.58 * _FONT  # average glyph width, good enough to lay out legends and labels


def _nice_ticks(high: float, target: int = 5) -> list[float]:
    """0 .. a round number at or above ``high`` in 1-2-2.5-5 steps: readable axis labels."""
    if not math.isfinite(high) or high <= 0:
        high = 1.0
    raw = high / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = magnitude * 10
    for m in (1, 2, 2.5, 5, 10):
        if m * magnitude >= raw:
            step = m * magnitude
            break
    count = math.ceil(high / step - 1e-9)
    return [i * step for i in range(count + 1)]


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    if step < 1 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    return f"{value:,.{decimals}f}"


def _legend(items: Sequence[tuple[str, str, str]], top: float) -> tuple[str, float]:
    """Legend entries (label, colour, 'line'|'dash'|'box') flowed in rows; returns markup and height."""
    parts: list[str] = []
    x, y = 68.0, top
    for label, color, kind in items:
        width = 34 + len(label) * _CHAR + 22
        if x + width > _CHART_WIDTH - 12 and x > 68:
            x, y = 68.0, y + 20
        if kind == "box":
            parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="14" height="12" fill="{color}"/>')
            text_x = x + 20
        else:
            dash = ' stroke-dasharray="6 4"' if kind == "dash" else ""
            parts.append(
                f'<line x1="{x:.1f}" y1="{y - 3:.1f}" x2="{x + 28:.1f}" y2="{y - 3:.1f}" '
                f'stroke="{color}" stroke-width="2.5"{dash}/>'
            )
            text_x = x + 34
        parts.append(f'<text x="{text_x:.1f}" y="{y + 1:.1f}" class="legend">{esc(label)}</text>')
        x += width
    return "".join(parts), (y - top) + 20 if items else 0.0


def _svg(chart_id: str, title: str, desc: str, height: float, body: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {_CHART_WIDTH} {height:.0f}" role="img" '
        f'aria-labelledby="{esc(chart_id)}-title {esc(chart_id)}-desc" '
        f'preserveAspectRatio="xMidYMid meet">'
        f'<title id="{esc(chart_id)}-title">{esc(title)}</title>'
        f'<desc id="{esc(chart_id)}-desc">{esc(desc)}</desc>'
        f'<text x="{_CHART_WIDTH / 2:.0f}" y="22" class="chart-title" text-anchor="middle">{esc(title)}</text>'
        f"{body}</svg>"
    )


def _y_axis(
    ticks: Sequence[float], left: float, right: float, top: float, bottom: float, label: str
) -> tuple[str, float]:
    """Grid lines, tick labels and the rotated axis label; returns markup and the axis maximum."""
    y_max = ticks[-1] if ticks[-1] > 0 else 1.0
    parts: list[str] = []
    for tick in ticks:
        y = bottom - (bottom - top) * tick / y_max
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{esc(_tick_label(tick, ticks))}</text>"
        )
    mid = (top + bottom) / 2
    parts.append(
        f'<text x="18" y="{mid:.1f}" transform="rotate(-90 18 {mid:.1f})" text-anchor="middle" '
        f'class="axis-label">{esc(label)}</text>'
    )
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" class="axis"/>')
    return "".join(parts), y_max


def _plot_right(rules: Sequence[Rule]) -> float:
    """Right edge of the plot area: reference lines are labelled in the margin beyond it, clear of the data."""
    widest = max((len(rule.label) * _CHAR for rule in rules), default=0.0)
    return _CHART_WIDTH - max(20.0, min(widest + 16, 260.0))


def _rules(rules: Sequence[Rule], y_of: Callable[[float], float], left: float, right: float) -> str:
    parts: list[str] = []
    for rule in rules:
        y = y_of(rule.value)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{rule.color}" '
            f'stroke-width="1.5" stroke-dasharray="7 5"/>'
            f'<text x="{right + 6}" y="{y + 4:.1f}" class="rule-label" '
            f'fill="{rule.color}">{esc(rule.label)}</text>'
        )
    return "".join(parts)


def line_chart(
    *,
    chart_id: str,
    title: str,
    desc: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    rules: Sequence[Rule] = (),
    point_label: str = "value",
) -> str:
    """An SVG line chart over integer x values (rounds); markers carry their value as a tooltip."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    if not xs:
        return ""
    legend_items = [(s.name, s.color, "dash" if s.dashed else "line") for s in series]
    left, right, top = 68.0, _plot_right(rules), 44.0
    plot_bottom = 250.0
    legend, legend_height = _legend(legend_items, plot_bottom + 58)
    height = plot_bottom + 58 + legend_height + 4
    ticks = _nice_ticks(max([*ys, *(r.value for r in rules if math.isfinite(r.value))], default=1.0) * 1.08)
    axis, y_max = _y_axis(ticks, left, right, top, plot_bottom, y_label)

    x_lo, x_hi = min(xs) - 0.5, max(xs) + 0.5

    def x_of(x: float) -> float:
        return left + (right - left) * (x - x_lo) / (x_hi - x_lo)

    def y_of(y: float) -> float:
        return plot_bottom - (plot_bottom - top) * min(y, y_max) / y_max

    parts = [axis]
    # Rounds are integers: tick every round in range (a refused round shows as a gap, not a closer point).
    if all(x == int(x) for x in xs) and max(xs) - min(xs) <= 200:
        distinct = [float(x) for x in range(int(min(xs)), int(max(xs)) + 1)]
    else:
        distinct = sorted(set(xs))
    every = max(1, math.ceil(len(distinct) / 14))
    for i, x in enumerate(distinct):
        if i % every and x != distinct[-1]:
            continue
        px = x_of(x)
        parts.append(
            f'<line x1="{px:.1f}" y1="{plot_bottom}" x2="{px:.1f}" y2="{plot_bottom + 5}" class="axis"/>'
        )
        parts.append(
            f'<text x="{px:.1f}" y="{plot_bottom + 19}" text-anchor="middle" class="tick">{esc(fmt_num(x))}</text>'
        )
    parts.append(
        f'<text x="{(left + right) / 2:.0f}" y="{plot_bottom + 40}" text-anchor="middle" '
        f'class="axis-label">{esc(x_label)}</text>'
    )
    parts.append(_rules(rules, y_of, left, right))
    for s in series:
        path: list[str] = []
        pen_up = True
        markers: list[str] = []
        for x, y in s.points:
            if y is None or not math.isfinite(y):
                pen_up = True
                continue
            px, py = x_of(x), y_of(y)
            path.append(f"{'M' if pen_up else 'L'}{px:.1f} {py:.1f}")
            pen_up = False
            markers.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{s.color}">'
                f"<title>{esc(s.name)}, round {esc(fmt_num(x))}: {esc(point_label)} = {esc(fmt_num(y))}</title>"
                f"</circle>"
            )
        dash = ' stroke-dasharray="7 5"' if s.dashed else ""
        if path:
            parts.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{s.color}" stroke-width="2.5" '
                f'stroke-linejoin="round"{dash}/>'
            )
        parts.extend(markers)
    parts.append(legend)
    return _svg(chart_id, title, desc, height, "".join(parts))


def standalone_svg(chart: str) -> str:
    """A chart of this module as a standalone SVG file (its own namespace and font style), for READMEs."""
    svg = chart[chart.index("<svg") :]
    svg = svg[: svg.rindex("</svg>") + len("</svg>")]
    style = "<style>text{font-family:sans-serif;font-size:12px;fill:#222}</style>"
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1).replace(">", ">" + style, 1)


def bar_chart(
    *,
    chart_id: str,
    title: str,
    desc: str,
    categories: Sequence[str],
    layers: Sequence[Bars],
    x_label: str,
    y_label: str,
    rules: Sequence[Rule] = (),
    value_format: Callable[[float], str] = fmt_num,
) -> str:
    """An SVG stacked bar chart (one bar per category, layers stacked bottom-up, total on top)."""
    if not categories or not layers:
        return ""
    left, right, top = 68.0, _plot_right(rules), 44.0
    plot_bottom = 250.0
    legend, legend_height = _legend([(b.name, b.color, "box") for b in layers], plot_bottom + 58)
    height = plot_bottom + 58 + legend_height + 4
    totals = [
        sum(layer.values[i] for layer in layers if i < len(layer.values)) for i in range(len(categories))
    ]
    ticks = _nice_ticks(max([*totals, *(r.value for r in rules)], default=1.0) * 1.1)
    axis, y_max = _y_axis(ticks, left, right, top, plot_bottom, y_label)

    def y_of(y: float) -> float:
        return plot_bottom - (plot_bottom - top) * min(y, y_max) / y_max

    band = (right - left) / len(categories)
    bar = min(56.0, band * 0.62)
    every = max(1, math.ceil(len(categories) / 16))
    parts = [axis]
    for i, category in enumerate(categories):
        cx = left + band * (i + 0.5)
        base = 0.0
        for layer in layers:
            value = layer.values[i] if i < len(layer.values) else 0.0
            if value > 0:
                y0, y1 = y_of(base), y_of(base + value)
                parts.append(
                    f'<rect x="{cx - bar / 2:.1f}" y="{y1:.1f}" width="{bar:.1f}" height="{y0 - y1:.1f}" '
                    f'fill="{layer.color}"><title>{esc(category)}: {esc(layer.name)} = '
                    f"{esc(value_format(value))}</title></rect>"
                )
            base += value
        if len(categories) <= 24:
            parts.append(
                f'<text x="{cx:.1f}" y="{y_of(base) - 5:.1f}" text-anchor="middle" class="bar-value">'
                f"{esc(value_format(base))}</text>"
            )
        if i % every == 0 or i == len(categories) - 1:
            parts.append(
                f'<text x="{cx:.1f}" y="{plot_bottom + 19}" text-anchor="middle" class="tick">{esc(category)}</text>'
            )
    parts.append(
        f'<text x="{(left + right) / 2:.0f}" y="{plot_bottom + 40}" text-anchor="middle" '
        f'class="axis-label">{esc(x_label)}</text>'
    )
    parts.append(_rules(rules, y_of, left, right))
    parts.append(legend)
    return _svg(chart_id, title, desc, height, "".join(parts))
