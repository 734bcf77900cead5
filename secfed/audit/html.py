"""Render a privacy-budget audit report as one self-contained HTML page for a compliance office.

Why it is built this way:

* **One file, nothing external.** Reports are archived, e-mailed and opened years later, possibly on
  machines without network access; they must look the same everywhere. So the page has inline CSS
  only, no fonts, no scripts, no images: plots are inline SVG drawn here, and a Content-Security-Policy
  ``<meta>`` forbids the browser from loading anything (or running any script) even if a string
  slipped through.
* **Plain words first, numbers second.** The readers are data-protection and compliance officers, not
  differential-privacy experts: every section opens with a sentence saying what the numbers mean.
* **Every string from the report is escaped.** Reports quote data written by other parties
  (institution ids, refusal reasons, library names); none of it may become markup.
* **Missing parts are normal.** A run without DP, without an empirical audit or without coreset
  selection simply has fewer sections; unknown keys are ignored and wrongly typed values are skipped
  rather than crashing the renderer (the JSON, not this page, is the signed artefact).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["Bars", "Rule", "Series", "bar_chart", "line_chart", "render_html", "standalone_svg"]

INFINITE_EPSILON = "∞ (no privacy)"
# Okabe–Ito colours: distinguishable with the common colour-vision deficiencies and in greyscale print.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_NBSP = "\u00a0"
_EQ = f"{_NBSP}={_NBSP}"  # "ε = 3.21" never breaks across lines


def esc(value: object) -> str:
    """HTML-escape any value (quotes too, so the result is safe inside attributes)."""
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- reading the report
# The report is untrusted-shaped JSON: these accessors return a usable default for a wrong type.


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _maps(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in _list(value) if isinstance(item, Mapping)]


def _num(value: Any) -> float | None:
    """A float, or None for anything that is not a number (bools are not numbers here; NaN is nothing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None and math.isfinite(number) and number == int(number) else None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, Mapping | list | tuple):
        return None
    return str(value)


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (plural or word + 's')}"


# --------------------------------------------------------------------------- number formatting


def fmt_num(value: Any, digits: int = 3) -> str:
    """``digits`` significant digits, thousands separated, no exponent for everyday magnitudes."""
    number = _num(value)
    if number is None:
        return "—"
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    if number == 0:
        return "0"
    magnitude = abs(number)
    if magnitude >= 10**digits:
        return f"{number:,.0f}"
    if magnitude < 1e-3:
        return fmt_sci(number)
    return f"{number:.{digits}g}"


def fmt_sci(value: Any) -> str:
    """Scientific notation as people write it: ``1 × 10⁻⁵`` (the mantissa is dropped when it is 1)."""
    number = _num(value)
    if number is None:
        return "—"
    if number == 0 or not math.isfinite(number):
        return fmt_num(number)
    mantissa_text, exponent_text = f"{number:.2e}".split("e")
    mantissa = mantissa_text.rstrip("0").rstrip(".")
    power = "10" + str(int(exponent_text)).translate(_SUPERSCRIPT)
    return power if mantissa == "1" else f"{mantissa}{_NBSP}×{_NBSP}{power}"


def fmt_eps(value: Any) -> str:
    """Epsilon with 3 significant digits; missing or infinite means no bound at all."""
    number = _num(value)
    if number is None or math.isinf(number):
        return INFINITE_EPSILON
    return fmt_num(number)


def fmt_int(value: Any) -> str:
    number = _int(value)
    return "—" if number is None else f"{number:,}"


def fmt_pct(fraction: float | None) -> str:
    if fraction is None or not math.isfinite(fraction):
        return "—"
    pct = fraction * 100
    if pct == 0:
        return f"0{_NBSP}%"
    if 0 < pct < 0.1:
        return f"<{_NBSP}0.1{_NBSP}%"
    return f"{pct:.1f}{_NBSP}%" if pct < 10 else f"{pct:.0f}{_NBSP}%"


def fmt_time(value: Any) -> str:
    text = _text(value)
    if text is None:
        return "—"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
        return moment.strftime("%-d %B %Y, %H:%M UTC")
    return moment.strftime("%-d %B %Y, %H:%M")


def _hash(value: Any, *, short: bool = False) -> str:
    """A hash in monospace; abbreviated ones keep the full value in a tooltip."""
    text = _text(value)
    if not text:
        return '<span class="muted">not recorded</span>'
    shown = f"{text[:12]}…{text[-6:]}" if short and len(text) > 22 else text
    return f'<code class="hash" title="{esc(text)}">{esc(shown)}</code>'


# --------------------------------------------------------------------------- SVG charts


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


def _rules(rules: Sequence[Rule], y_of: Any, left: float, right: float) -> str:
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
    value_format: Any = fmt_num,
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


def _figure(svg: str, caption: str) -> str:
    if not svg:
        return ""
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


# --------------------------------------------------------------------------- HTML building blocks


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    caption: str = "",
    numeric: Sequence[int] = (),
    cls: str = "",
) -> str:
    """A table with column headers; cells are already-escaped HTML. ``numeric`` columns align right."""
    if not rows:
        return ""
    head = "".join(
        f'<th scope="col"{" class=num" if i in numeric else ""}>{h}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in numeric else ''}>{cell}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    cap = f"<caption>{caption}</caption>" if caption else ""
    table_cls = f' class="{cls}"' if cls else ""
    return (
        f'<div class="table-wrap"><table{table_cls}>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _kv_table(rows: Sequence[tuple[str, str]], *, caption: str = "", compact: bool = False) -> str:
    """A two-column table of row headers and values (identification, parameters)."""
    if not rows:
        return ""
    cap = f"<caption>{caption}</caption>" if caption else ""
    body = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in rows)
    cls = "kv compact" if compact else "kv"
    return f'<div class="table-wrap"><table class="{cls}">{cap}<tbody>{body}</tbody></table></div>'


def _meter(fraction: float | None, label: str) -> str:
    """A horizontal budget bar (CSS, printed with exact colours); over 100 % turns red."""
    if fraction is None or not math.isfinite(fraction):
        return ""
    width = max(0.0, min(fraction, 1.0)) * 100
    state = "over" if fraction > 1 + 1e-12 else ("high" if fraction >= 0.8 else "ok")
    return (
        f'<div class="meter {state}" role="img" aria-label="{esc(label)}">'
        f'<div class="meter-fill" style="width:{width:.1f}%"></div></div>'
        f'<div class="meter-label">{esc(label)}</div>'
    )


def _card(label: str, value: str, note: str = "") -> str:
    note_html = f'<div class="card-note">{note}</div>' if note else ""
    return f'<div class="card"><div class="card-label">{label}</div><div class="card-value">{value}</div>{note_html}</div>'


@dataclass(frozen=True)
class _Section:
    anchor: str
    heading: str
    body: str


# --------------------------------------------------------------------------- facts derived from the report


@dataclass(frozen=True)
class _Facts:
    """The few figures the summary and several sections share, derived once."""

    kind: str
    subject: str
    dp_used: bool
    epsilon: float | None
    epsilon_rdp: float | None
    # Only with DP coreset selection: the parts ``epsilon`` composes (training by PLD, selection by RDP).
    selection_releases: tuple[Mapping[str, Any], ...]
    epsilon_training: float | None
    epsilon_selection: float | None
    delta: float | None
    budget: float | None
    rounds_trained: tuple[int, ...]
    rounds_total: int | None
    refusals: tuple[Mapping[str, Any], ...]
    smallest_sum: int | None
    colluding: int | None


def _rounds_trained(privacy: Mapping[str, Any], mechanism: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    listed = [r for r in (_int(x) for x in _list(privacy.get("rounds_trained"))) if r is not None]
    if not listed:
        listed = [r for r in (_int(m.get("round")) for m in mechanism) if r is not None]
    return tuple(sorted(set(listed)))


def _smallest_sum(report: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Fewest institutions behind any sum the server decoded, and the largest colluding bound assumed.

    Survivors (contributors) are exact; without them, the threshold is a lower bound, since the server
    cannot decode a sum with fewer than ``t`` shares.
    """
    sessions = _maps(report.get("secure_aggregation"))
    counted = [c for c in (_int(s.get("contributors")) for s in sessions) if c is not None and c > 0]
    if not counted:
        counted = [
            c
            for c in (_int(r.get("contributors")) for r in _maps(report.get("rounds")))
            if c is not None and c > 0
        ]
    if not counted:
        counted = [t for t in (_int(s.get("threshold")) for s in sessions) if t is not None]
    colluding = [c for c in (_int(s.get("colluding")) for s in sessions) if c is not None]
    return (min(counted) if counted else None, max(colluding) if colluding else None)


def _facts(report: Mapping[str, Any]) -> _Facts:
    kind = "federation" if report.get("kind") == "federation" else "institution"
    ident = _map(report.get("identification"))
    privacy = _map(report.get("privacy"))
    guarantee = _map(report.get("guarantee"))
    mechanism = _maps(report.get("mechanism"))
    if kind == "federation":
        subject = _text(ident.get("federation")) or _text(report.get("federation")) or "(unnamed)"
    else:
        subject = _text(report.get("institution")) or "(unnamed)"
    dp_used = bool(privacy.get("dp_used", guarantee.get("dp_used", False)))
    total = _int(ident.get("rounds_completed"))
    if total is None and _maps(report.get("rounds")):
        total = len(_maps(report.get("rounds")))
    smallest, colluding = _smallest_sum(report)
    return _Facts(
        kind=kind,
        subject=subject,
        dp_used=dp_used,
        epsilon=_num(privacy.get("epsilon")),
        epsilon_rdp=_num(privacy.get("epsilon_rdp")),
        selection_releases=tuple(_maps(privacy.get("selection_releases"))),
        epsilon_training=_num(privacy.get("epsilon_training")),
        epsilon_selection=_num(privacy.get("epsilon_selection")),
        delta=_num(privacy.get("delta")),
        budget=_num(privacy.get("budget")),
        rounds_trained=_rounds_trained(privacy, mechanism),
        rounds_total=total,
        refusals=tuple(_maps(privacy.get("refusals"))),
        smallest_sum=smallest,
        colluding=colluding,
    )


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _used(epsilon: float | None, budget: float | None) -> float | None:
    if epsilon is None or budget is None or not math.isfinite(epsilon) or budget <= 0:
        return None
    return epsilon / budget


def _secagg_sentence(facts: _Facts) -> str:
    if facts.smallest_sum is None:
        return ""
    text = (
        f"The server only ever saw sums over at least {_plural(facts.smallest_sum, 'institution')}, "
        "never a single institution's update"
    )
    if facts.colluding == 0:
        text += "; this holds as long as no institution colludes with the server"
    elif facts.colluding is not None:
        verb = "colludes" if facts.colluding == 1 else "collude"
        text += f"; this holds as long as no more than {_plural(facts.colluding, 'institution')} {verb} with the server"
    return text + "."


# --------------------------------------------------------------------------- sections


def _header(report: Mapping[str, Any], facts: _Facts) -> str:
    title = f"Privacy audit report — {facts.kind} {facts.subject}"
    ident = _map(report.get("identification"))
    meta = [f"Generated {esc(fmt_time(report.get('generated_at')))}"] if report.get("generated_at") else []
    if _text(ident.get("run_id")):
        meta.append(f"run {esc(ident.get('run_id'))}")
    if facts.kind == "institution" and _text(ident.get("federation")):
        meta.append(f"federation {esc(ident.get('federation'))}")
    signature = _map(report.get("signature"))
    signer = _text(signature.get("signer"))
    if signer:
        role = _text(signature.get("role"))
        badge = (
            f'<div class="badge signed" role="note"><span aria-hidden="true">✓</span> Signed by '
            f"<strong>{esc(signer)}</strong>{f' ({esc(role)})' if role else ''}"
            '<span class="badge-note">check with <code>secfed audit verify</code></span></div>'
        )
    else:
        badge = '<div class="badge unsigned" role="note">Unsigned — not an official copy</div>'
    return (
        f'<header class="report-header"><div class="eyebrow">secfed · privacy-budget audit</div>'
        f"<h1>{esc(title)}</h1>"
        f'<p class="meta">{" · ".join(meta)}</p>{badge}</header>'
    )


def _institution_summary(report: Mapping[str, Any], facts: _Facts) -> tuple[list[str], list[str]]:
    sentences: list[str] = []
    trained = len(facts.rounds_trained)
    of_total = f" of {facts.rounds_total:,}" if facts.rounds_total is not None else ""
    if facts.dp_used:
        sentences.append(
            f"This institution trained in {trained:,}{of_total} {'round' if (facts.rounds_total or trained) == 1 else 'rounds'} "
            "with differential privacy."
        )
        if _finite(facts.epsilon):
            text = f"Its total privacy loss is ε{_EQ}{fmt_eps(facts.epsilon)} at δ{_EQ}{fmt_sci(facts.delta)}"
            if facts.selection_releases:
                text += (
                    f" (training ε{_EQ}{fmt_eps(facts.epsilon_training)} and coreset selection "
                    f"ε{_EQ}{fmt_eps(facts.epsilon_selection)}, composed)"
                )
            elif _finite(facts.epsilon_rdp):
                text += f" (RDP cross-check {fmt_eps(facts.epsilon_rdp)})"
            used = _used(facts.epsilon, facts.budget)
            if used is not None and facts.budget is not None:
                where = "within" if used <= 1 + 1e-12 else "<strong>over</strong>"
                text += f", {where} its budget of {fmt_num(facts.budget)} ({fmt_pct(used)} used)."
            else:
                text += ". No privacy budget was set."
            sentences.append(text)
        else:
            sentences.append(f"Its privacy loss is unbounded: ε{_EQ}{INFINITE_EPSILON}.")
    else:
        sentences.append(
            "This institution's updates were <strong>not</strong> protected by differential privacy, so "
            f"there is no bound on its privacy loss: ε{_EQ}{INFINITE_EPSILON}."
        )
    if facts.selection_releases:
        sentences.append(
            "Its coreset selection statistics were released with differential privacy (Skellam noise "
            f"through secure aggregation): ε{_EQ}{fmt_eps(facts.epsilon_selection)} by themselves."
        )
    if facts.refusals:
        sentences.append(
            f"It refused to train in {_plural(len(facts.refusals), 'round')} (see the refusals under Privacy loss)."
        )
    secagg = _secagg_sentence(facts)
    if secagg:
        sentences.append(secagg)

    cards = [
        _card(
            "Privacy loss ε",
            esc(fmt_eps(facts.epsilon if facts.dp_used else None)),
            f"at δ{_EQ}{esc(fmt_sci(facts.delta))}" if facts.dp_used and facts.delta is not None else "",
        )
    ]
    if facts.dp_used and facts.budget is not None:
        used = _used(facts.epsilon, facts.budget)
        cards.append(_card("Budget used", esc(fmt_pct(used)), f"of ε{_EQ}{esc(fmt_num(facts.budget))}"))
    if facts.dp_used or facts.rounds_total is not None:
        cards.append(_card("Rounds trained with DP", esc(f"{trained:,}{of_total}")))
    if facts.smallest_sum is not None:
        cards.append(_card("Smallest sum seen by server", esc(_plural(facts.smallest_sum, "institution"))))
    return sentences, cards


def _federation_summary(report: Mapping[str, Any], facts: _Facts) -> tuple[list[str], list[str]]:
    institutions = _map(report.get("institutions"))
    quoted = {str(k): _map(v) for k, v in institutions.items()}
    sentences: list[str] = []
    rounds = f"{_plural(facts.rounds_total, 'round')}" if facts.rounds_total is not None else "its rounds"
    if quoted:
        sentences.append(f"This federation completed {rounds} with {_plural(len(quoted), 'institution')}.")
    else:
        sentences.append(f"This federation completed {rounds}.")
    with_dp = [cid for cid, q in quoted.items() if bool(q.get("dp_used", _num(q.get("epsilon")) is not None))]
    without = [cid for cid in quoted if cid not in with_dp]
    if quoted:
        if len(with_dp) == len(quoted):
            sentences.append(f"All {len(quoted):,} institutions trained with differential privacy.")
        elif with_dp:
            names = ", ".join(esc(cid) for cid in sorted(without))
            sentences.append(
                f"{len(with_dp):,} of {len(quoted):,} institutions trained with differential privacy; "
                f"{names} did not, so {'its' if len(without) == 1 else 'their'} privacy loss is unbounded: "
                f"ε{_EQ}{INFINITE_EPSILON}."
            )
        else:
            sentences.append(
                "No institution trained with differential privacy: there is no bound on privacy loss "
                f"(ε{_EQ}{INFINITE_EPSILON})."
            )
    else:
        sentences.append("No institution reports were available, so no privacy loss is quoted here.")
    worst: tuple[float, str] | None = None
    fullest: tuple[float, str] | None = None
    for cid in with_dp:
        q = quoted[cid]
        eps = _num(q.get("epsilon"))
        value = math.inf if eps is None else eps
        if worst is None or value > worst[0]:
            worst = (value, cid)
        used = _used(eps, _num(q.get("budget")))
        if used is not None and (fullest is None or used > fullest[0]):
            fullest = (used, cid)
    if worst is not None:
        delta = _num(quoted[worst[1]].get("delta"))
        among = "Among those that did, the" if without else "The"
        text = f"{among} largest privacy loss is ε{_EQ}{esc(fmt_eps(worst[0]))} ({esc(worst[1])})"
        if delta is not None and math.isfinite(worst[0]):
            text += f" at δ{_EQ}{fmt_sci(delta)}"
        if fullest is not None:
            text += f"; the largest share of a budget used is {fmt_pct(fullest[0])} ({esc(fullest[1])})"
        sentences.append(text + ".")
    if quoted and all(q.get("report_verified") is True for q in quoted.values()):
        sentences.append(
            "Each figure is quoted from that institution's own signed report, whose signature verified."
        )
    secagg = _secagg_sentence(facts)
    if secagg:
        sentences.append(secagg)
    cards = [_card("Institutions", esc(f"{len(quoted):,}"))]
    if facts.rounds_total is not None:
        cards.append(_card("Rounds completed", esc(f"{facts.rounds_total:,}")))
    if worst is not None:
        cards.append(
            _card("Largest ε with DP" if without else "Largest ε", esc(fmt_eps(worst[0])), esc(worst[1]))
        )
    if facts.smallest_sum is not None:
        cards.append(_card("Smallest sum seen by server", esc(_plural(facts.smallest_sum, "institution"))))
    return sentences, cards


def _summary(report: Mapping[str, Any], facts: _Facts) -> str:
    if facts.kind == "federation":
        sentences, cards = _federation_summary(report, facts)
    else:
        sentences, cards = _institution_summary(report, facts)
    # Sentences were built from escaped values and fixed markup; the subject is escaped here.
    body = " ".join(sentences)
    return (
        f'<section class="summary" aria-label="Summary"><h2 class="visually-hidden">Summary</h2>'
        f'<p class="lead">{body}</p><div class="cards">{"".join(cards)}</div></section>'
    )


def _identification(report: Mapping[str, Any]) -> str:
    ident = _map(report.get("identification"))
    rows: list[tuple[str, str]] = []
    if report.get("kind") == "institution" and _text(report.get("institution")):
        rows.append(("Institution", esc(report.get("institution"))))
    for key, label in (
        ("run_id", "Run id"),
        ("federation", "Federation"),
        ("task", "Task"),
        ("code_version", "Code version"),
    ):
        if _text(ident.get(key)):
            rows.append((label, esc(ident.get(key))))
    if "rounds_completed" in ident:
        rows.append(("Rounds completed", esc(fmt_int(ident.get("rounds_completed")))))
    if "base_model_hash" in ident:
        rows.append(("Base model hash", _hash(ident.get("base_model_hash"))))
    if "final_adapter_hash" in ident:
        rows.append(("Final adapter hash", _hash(ident.get("final_adapter_hash"))))
    if report.get("generated_at") is not None:
        rows.append(
            (
                "Generated at",
                f'{esc(fmt_time(report.get("generated_at")))} <span class="muted">({esc(report.get("generated_at"))})</span>',
            )
        )
    libraries = _map(ident.get("libraries"))
    lib_rows = [[esc(name), f"<code>{esc(version)}</code>"] for name, version in sorted(libraries.items())]
    libs = (
        _table(["Library", "Version"], lib_rows, caption="Software that produced the run", cls="compact")
        if lib_rows
        else ""
    )
    if not rows and not libs:
        return ""
    return _kv_table(rows) + libs


def _guarantee(report: Mapping[str, Any]) -> str:
    guarantee = _map(report.get("guarantee"))
    parts: list[str] = []
    if _text(guarantee.get("plain")):
        parts.append(f'<p class="plain">{esc(guarantee.get("plain"))}</p>')
    items: list[str] = []
    for key, label in (("privacy_unit", "Privacy unit"), ("adjacency", "Neighbouring datasets")):
        if _text(guarantee.get(key)):
            items.append(f"<dt>{label}</dt><dd>{esc(guarantee.get(key))}</dd>")
    covered = [esc(c) for c in _list(guarantee.get("covered")) if _text(c)]
    if covered:
        items.append(
            "<dt>What the guarantee covers</dt><dd><ul>"
            + "".join(f"<li>{c}</li>" for c in covered)
            + "</ul></dd>"
        )
    accountant = _text(guarantee.get("accountant")) or _text(_map(report.get("privacy")).get("accountant"))
    if accountant:
        items.append(f"<dt>Privacy accountant</dt><dd>{esc(accountant)}</dd>")
    if items:
        parts.append(f'<dl class="formal">{"".join(items)}</dl>')
    return "".join(parts)


def _mechanism(report: Mapping[str, Any]) -> str:
    rows = _maps(report.get("mechanism"))
    if not rows:
        return ""
    with_empty = any("empty_batches" in r for r in rows)
    headers = [
        "Round",
        "Noise multiplier σ",
        "Sampling rate q",
        "Steps",
        "Clipping norm C",
        "Expected batch size",
        "Records",
    ] + (["Empty batches"] if with_empty else [])
    body: list[list[str]] = []
    for r in rows:
        cells = [
            esc(fmt_int(r.get("round"))),
            esc(fmt_num(r.get("noise_multiplier"))),
            esc(fmt_num(r.get("sample_rate"))),
            esc(fmt_int(r.get("steps"))),
            esc(fmt_num(r.get("max_grad_norm"))),
            esc(fmt_num(r.get("expected_batch_size"))),
            esc(fmt_int(r.get("n_records"))),
        ]
        if with_empty:
            cells.append(esc(fmt_int(r.get("empty_batches"))))
        body.append(cells)
    intro = (
        "<p>In every round it trained, the institution ran differentially private SGD: each record's "
        "gradient was clipped to at most the clipping norm, records were sampled at random with the "
        "sampling rate, and Gaussian noise proportional to the noise multiplier was added. More noise and "
        "a smaller sampling rate mean more privacy.</p>"
    )
    return intro + _table(headers, body, numeric=range(len(headers)), caption="DP-SGD settings per round")


def _over_rounds(value: Any) -> tuple[tuple[float, float | None, float | None], ...]:
    points: list[tuple[float, float | None, float | None]] = []
    for entry in _maps(value):
        rnd = _num(entry.get("round"))
        if rnd is None:
            continue
        points.append((rnd, _num(entry.get("epsilon")), _num(entry.get("epsilon_rdp"))))
    return tuple(sorted(points, key=lambda p: p[0]))


def _selection_table(facts: _Facts) -> str:
    """The coreset selection releases made under DP: what noise each stage's sum carried."""
    rows = [
        [
            esc(fmt_int(r.get("round"))),
            esc(_text(st.get("what")) or "—"),
            esc(fmt_num(st.get("lam"))),
            esc(fmt_num(st.get("l1"))),
            esc(fmt_num(st.get("l2"))),
        ]
        for r in facts.selection_releases
        for st in _maps(r.get("stages"))
    ]
    intro = (
        "<p>The coreset selection statistics were released with distributed differential privacy: before "
        "each masked vector left, the institution added its share of Skellam noise (integer noise, added "
        "before masking), so every sum the server decoded through secure aggregation carried Skellam noise "
        "of at least the variance 2λ in each coordinate, as long as no more institutions than the "
        "colluding bound colluded with the server. By themselves these releases cost "
        f"ε{_EQ}{esc(fmt_eps(facts.epsilon_selection))} at δ{_EQ}{esc(fmt_sci(facts.delta))}; a larger λ "
        "and smaller sensitivities mean more privacy.</p>"
    )
    return intro + _table(
        ["Round", "Stage", "Skellam λ (sum)", "Sensitivity L1", "Sensitivity L2"],
        rows,
        numeric=[0, 2, 3, 4],
        caption="Coreset selection releases under DP (sensitivities in ring units)",
        cls="compact",
    )


def _refusals_table(refusals: Sequence[Mapping[str, Any]]) -> str:
    rows = [[esc(fmt_int(r.get("round"))), esc(_text(r.get("reason")) or "—")] for r in refusals]
    return _table(
        ["Round", "Reason"],
        rows,
        caption="Rounds the institution refused to train in, and why",
        numeric=[0],
        cls="compact",
    )


def _records_table(privacy: Mapping[str, Any]) -> str:
    """Which records the ledger's releases were about, and the retries that cost nothing."""
    rows = [
        [
            esc(_text(d.get("data")) or "—"),
            f"<code>{esc((_text(d.get('dataset')) or '')[:16])}…</code>",
            # Training rounds and DP selection releases (rows of older reports have no "dp_selection").
            esc(fmt_int((_int(d.get("dp_rounds")) or 0) + (_int(d.get("dp_selection")) or 0))),
            esc(fmt_int(d.get("non_dp"))),
        ]
        for d in _maps(privacy.get("datasets"))
    ]
    table = _table(
        ["Records", "Content hash", "DP releases", "Releases without DP"],
        rows,
        caption="The records each release was computed from (epsilon composes over all of them)",
        numeric=[2, 3],
        cls="compact",
    )
    retried = [r for r in (_int(x.get("round")) for x in _maps(privacy.get("retries"))) if r is not None]
    if retried:
        table += (
            f"<p>Retried {_plural(len(retried), 'round')} ({esc(', '.join(str(r) for r in retried))}): the "
            "retry re-submitted the DP update already released for the round, at no extra privacy cost.</p>"
        )
    return table


def _budget_rules(budgets: Sequence[tuple[float, str]]) -> list[Rule]:
    rules: list[Rule] = []
    for value, label in budgets:
        if math.isfinite(value):
            rules.append(Rule(value, label, "#B00020"))
    return rules


def _institution_privacy(report: Mapping[str, Any], facts: _Facts) -> str:
    privacy = _map(report.get("privacy"))
    parts: list[str] = []
    if not facts.dp_used:
        other = (
            "Only secure aggregation protected them (see below)."
            if _maps(report.get("secure_aggregation")) or _cohort_series(report)
            else "This report records no secure-aggregation sessions either."
        )
        parts.append(
            '<div class="callout warn" role="note"><strong>No differential privacy.</strong> '
            f"The updates this institution released carry no privacy bound: ε{_EQ}{esc(INFINITE_EPSILON)}. "
            f"{other}</div>"
        )
    else:
        if facts.selection_releases:
            cards = [
                _card("ε total", esc(fmt_eps(facts.epsilon)), "training and selection, composed"),
                _card("ε training (PLD)", esc(fmt_eps(facts.epsilon_training)), "DP-SGD rounds alone"),
                _card("ε coreset selection", esc(fmt_eps(facts.epsilon_selection)), "Skellam releases alone"),
            ]
        else:
            cards = [
                _card("ε (PLD accountant)", esc(fmt_eps(facts.epsilon)), "the reported figure"),
                _card("ε (RDP cross-check)", esc(fmt_eps(facts.epsilon_rdp)), "conservative upper bound"),
            ]
        cards.append(_card("δ", esc(fmt_sci(facts.delta)), "probability the bound may fail"))
        budget_left = _num(privacy.get("budget_left"))
        if facts.budget is not None:
            cards.append(
                _card(
                    "Budget",
                    esc(fmt_num(facts.budget)),
                    f"left: {esc(fmt_num(budget_left))}" if budget_left is not None else "",
                )
            )
        if facts.selection_releases:
            parts.append(
                "<p>The privacy loss ε says how much the released updates and coreset selection statistics "
                "together can reveal about any one training record: smaller is better, and values of a few "
                "units are common in practice. The training rounds alone are accounted with the "
                "privacy-loss-distribution (PLD) accountant; the total composes them with the selection "
                "releases by Rényi DP (the PLD accountant cannot take the Skellam mechanism): a valid upper "
                "bound, though looser than PLD for the training part.</p>"
            )
        else:
            parts.append(
                "<p>The privacy loss ε says how much the released updates can reveal about any one training "
                "record: smaller is better, and values of a few units are common in practice. It is computed "
                "with the privacy-loss-distribution (PLD) accountant; the Rényi-DP figure is an independent, "
                "looser cross-check.</p>"
            )
        parts.append(f'<div class="cards">{"".join(cards)}</div>')
        used = _used(facts.epsilon, facts.budget)
        if used is not None and facts.budget is not None:
            state = "used: over budget" if used > 1 + 1e-12 else "used"
            label = f"{fmt_pct(used)} of the budget ε{_EQ}{fmt_num(facts.budget)} {state}"
            parts.append(_meter(used, label))
        points = _over_rounds(privacy.get("over_rounds"))
        if points:
            name = facts.subject
            series = [
                Series(
                    f"{name}: ε (reported)" if facts.selection_releases else f"{name}: ε (PLD)",
                    tuple((x, e) for x, e, _ in points),
                    PALETTE[0],
                ),
                Series(
                    f"{name}: ε (RDP cross-check)",
                    tuple((x, r) for x, _, r in points),
                    PALETTE[1],
                    dashed=True,
                ),
            ]
            rules = _budget_rules(
                [(facts.budget, f"budget ε = {fmt_num(facts.budget)}")] if facts.budget else []
            )
            svg = line_chart(
                chart_id="chart-epsilon",
                title="ε over rounds",
                desc=(
                    f"Cumulative privacy loss of {name} after each round it trained; "
                    + "; ".join(f"round {fmt_num(x)}: ε = {fmt_eps(e)}" for x, e, _ in points)
                ),
                series=series,
                x_label="Round",
                y_label="Cumulative ε",
                rules=rules,
                point_label="ε",
            )
            caption = (
                "Privacy loss adds up over rounds. The solid line is the reported ε, the dashed line the "
                "RDP cross-check; the red dashed line is the budget, which the solid line must stay under."
            )
            if facts.selection_releases:
                caption += (
                    " From the first coreset selection release on, both lines carry the Rényi-DP composition "
                    "of training and selection released so far."
                )
            parts.append(_figure(svg, caption))
    if facts.selection_releases:
        parts.append(_selection_table(facts))
    if facts.refusals:
        parts.append(_refusals_table(facts.refusals))
    parts.append(_records_table(privacy))
    return "".join(parts)


def _federation_privacy(report: Mapping[str, Any]) -> str:
    institutions = {str(k): _map(v) for k, v in _map(report.get("institutions")).items()}
    if not institutions:
        return ""
    rows: list[list[str]] = []
    series: list[Series] = []
    budgets: dict[float, list[str]] = {}
    # A column for the coreset selection epsilon only when some institution released selection under DP.
    with_selection = any(_int(q.get("dp_selection_releases")) for q in institutions.values())
    for cid, q in sorted(institutions.items()):
        dp = bool(q.get("dp_used", _num(q.get("epsilon")) is not None))
        eps, budget = _num(q.get("epsilon")), _num(q.get("budget"))
        used = _used(eps, budget) if dp else None
        bar = ""
        if used is not None:
            state = "over" if used > 1 + 1e-12 else ("high" if used >= 0.8 else "ok")
            bar = (
                f'<span class="mini-meter {state}" aria-hidden="true"><span style="width:'
                f'{min(used, 1.0) * 100:.0f}%"></span></span> '
            )
        refusals = q.get("refusals")
        refusal_count = len(refusals) if isinstance(refusals, list) else _int(refusals)
        verified = q.get("report_verified")
        rows.append(
            [
                esc(cid),
                "yes" if dp else '<span class="bad">no</span>',
                esc(fmt_eps(eps if dp else None)),
                esc(fmt_eps(_num(q.get("epsilon_rdp")))) if dp else "—",
                *(
                    [
                        esc(fmt_eps(_num(q.get("epsilon_selection"))))
                        if _int(q.get("dp_selection_releases"))
                        else "—"
                    ]
                    if with_selection
                    else []
                ),
                esc(fmt_sci(q.get("delta"))) if dp else "—",
                esc(fmt_num(budget)) if budget is not None else "none set",
                bar + esc(fmt_pct(used)),
                esc(fmt_int(len(_list(q.get("rounds_trained"))))),
                esc(fmt_int(refusal_count)),
                esc(fmt_int(len(_list(q.get("retried_rounds"))))),
                esc(fmt_int(sum(v for v in (_int(x) for x in _map(q.get("non_dp_releases")).values()) if v))),
                "✓ verified"
                if verified is True
                else ('<span class="bad">not verified</span>' if verified is False else "—"),
            ]
        )
        points = _over_rounds(q.get("over_rounds"))
        if points and dp:
            series.append(
                Series(cid, tuple((x, e) for x, e, _ in points), PALETTE[len(series) % len(PALETTE)])
            )
        if dp and budget is not None:
            budgets.setdefault(budget, []).append(cid)
    parts = [
        "<p>Each institution accounts its own privacy loss from its own ledger; the server never computes "
        "it. The figures below are quoted from each institution's signed report.</p>",
        _table(
            [
                "Institution",
                "DP used",
                "ε (PLD)" if not with_selection else "ε (total)",
                "ε (RDP)",
                *(["ε coreset selection"] if with_selection else []),
                "δ",
                "Budget",
                "Budget used",
                "Rounds trained",
                "Refusals",
                "Retries",
                "Releases without DP",
                "Source report",
            ],
            rows,
            numeric=list(range(2, 12 if with_selection else 11)),
            caption="Privacy loss per institution",
        ),
    ]
    if series:
        if len(budgets) == 1:
            rule_specs = [(value, f"budget ε = {fmt_num(value)}") for value in budgets]
        else:
            rule_specs = [
                (value, f"budget {fmt_num(value)} ({', '.join(ids)})") for value, ids in budgets.items()
            ]
        svg = line_chart(
            chart_id="chart-epsilon",
            title="ε over rounds",
            desc="Cumulative privacy loss (PLD) of each institution after each round: "
            + "; ".join(
                f"{s.name}: " + ", ".join(f"round {fmt_num(x)} ε = {fmt_eps(y)}" for x, y in s.points)
                for s in series
            ),
            series=series,
            x_label="Round",
            y_label="Cumulative ε (PLD)",
            rules=_budget_rules(rule_specs),
            point_label="ε",
        )
        parts.append(
            _figure(
                svg,
                "One line per institution: its cumulative privacy loss after each round it trained. The red "
                "dashed line is the budget each line must stay under.",
            )
        )
    return "".join(parts)


def _segments(value: Any) -> str:
    segments = _map(value)
    if not segments:
        return "—"
    items = []
    for name, seg in segments.items():
        seg_map = _map(seg)
        length = _int(seg_map.get("length"))
        bits = _int(seg_map.get("frac_bits"))
        scale = str(bits) if bits is not None else "?"
        tip = f"{length:,} values, scaled by 2^{bits}" if length is not None and bits is not None else ""
        items.append(
            f'<span class="seg" title="{esc(tip)}"><code>{esc(name)}</code>:{_NBSP}{esc(scale)}</span>'
        )
    return "<br>".join(items)


def _cohort_series(report: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """(round, contributors, dropped) per round: from the round records, else from the SecAgg rows."""
    per_round: dict[int, tuple[int, int]] = {}
    for r in _maps(report.get("rounds")):
        rnd, contributors = _int(r.get("round")), _int(r.get("contributors"))
        if rnd is not None and contributors is not None:
            per_round[rnd] = (contributors, _int(r.get("dropped")) or 0)
    if not per_round:
        for s in _maps(report.get("secure_aggregation")):
            rnd, contributors = _int(s.get("round")), _int(s.get("contributors"))
            if rnd is not None and contributors is not None:
                # Several stages per round: the last stage (the update) decides who contributed.
                per_round[rnd] = (contributors, _int(s.get("dropped")) or 0)
    return [(rnd, c, d) for rnd, (c, d) in sorted(per_round.items())]


def _secure_aggregation(report: Mapping[str, Any]) -> str:
    sessions = _maps(report.get("secure_aggregation"))
    cohorts = _cohort_series(report)
    if not sessions and not cohorts:
        return ""
    parts = [
        "<p>In each round the institutions' updates were combined with secure aggregation: the server "
        "can decode only the <em>sum</em> of the updates, and only when at least the threshold <em>t</em> "
        "of the <em>n</em> institutions in the cohort took part. Up to the colluding bound of institutions "
        "may work with the server without exposing anyone's update. Values travel as fixed-point numbers "
        "with the stated number of fractional bits per segment, in a ring of the stated size.</p>"
    ]
    if sessions:
        with_clip = any(_num(s.get("clipped_fraction")) is not None for s in sessions)
        with_count = any(_int(s.get("contributors")) is not None for s in sessions)
        headers = [
            "Round",
            "Stage",
            "Cohort n",
            "Threshold t",
            "Colluding bound",
            "Min cohort",
            "Ring",
            "Fractional bits",
        ]
        if with_clip:
            headers.append("Clipped")
        if with_count:
            headers.append("Contributed / dropped")
        rows: list[list[str]] = []
        for s in sessions:
            stage = _text(s.get("stage")) or _text(s.get("label")) or "—"
            ring = _int(s.get("ring_bits"))
            row = [
                esc(fmt_int(s.get("round"))),
                esc(stage),
                esc(fmt_int(s.get("n"))),
                esc(fmt_int(s.get("threshold"))),
                esc(fmt_int(s.get("colluding"))),
                esc(fmt_int(s.get("min_cohort"))),
                esc(f"2{str(ring).translate(_SUPERSCRIPT)}") if ring is not None else "—",
                _segments(s.get("segments")),
            ]
            if with_clip:
                clipped = _num(s.get("clipped_fraction"))
                row.append(esc(f"{clipped * 100:.2f}{_NBSP}%") if clipped is not None else "—")
            if with_count:
                row.append(esc(f"{fmt_int(s.get('contributors'))} / {fmt_int(s.get('dropped'))}"))
            rows.append(row)
        numeric = [0, 2, 3, 4, 5, 6] + ([8] if with_clip else []) + ([len(headers) - 1] if with_count else [])
        parts.append(
            _table(headers, rows, numeric=numeric, caption="Secure-aggregation sessions", cls="dense")
        )
    if cohorts:
        thresholds = {t for t in (_int(s.get("threshold")) for s in sessions) if t is not None}
        rules = (
            [Rule(float(t), f"threshold t = {t}", "#444444") for t in sorted(thresholds)]
            if len(thresholds) == 1
            else []
        )
        svg = bar_chart(
            chart_id="chart-cohort",
            title="Cohort size and dropouts per round",
            desc="; ".join(f"round {r}: {c} contributed, {d} dropped" for r, c, d in cohorts),
            categories=[str(r) for r, _, _ in cohorts],
            layers=[
                Bars("Contributed", tuple(float(c) for _, c, _ in cohorts), PALETTE[0]),
                Bars("Dropped out", tuple(float(d) for _, _, d in cohorts), PALETTE[4]),
            ],
            x_label="Round",
            y_label="Institutions",
            rules=rules,
            value_format=lambda v: f"{v:,.0f}",
        )
        parts.append(
            _figure(
                svg,
                "Each bar is one round's cohort: institutions whose update is in the sum, and those that "
                "dropped out mid-round. The sum can only be decoded when the blue part reaches the threshold.",
            )
        )
    return "".join(parts)


def _coreset(report: Mapping[str, Any]) -> str:
    rows: list[tuple[int, Mapping[str, Any]]] = []
    for r in _maps(report.get("rounds")):
        selection = r.get("selection")
        rnd = _int(r.get("round"))
        if isinstance(selection, Mapping) and selection and rnd is not None:
            rows.append((rnd, selection))
    if not rows:
        return ""
    table_rows: list[list[str]] = []
    fractions: list[float] = []
    private = 0
    for rnd, sel in rows:
        selected, records = _num(sel.get("selected")), _num(sel.get("records"))
        fraction = _num(sel.get("fraction"))
        if fraction is None and selected is not None and records:
            fraction = selected / records
        if sel.get("mode") == "fedhds-dp" and selected is None:
            # DP selection: each institution chose its records privately; the server never knew how many.
            private += 1
            table_rows.append([esc(rnd), "chosen privately", esc(fmt_int(records)), "—"])
            continue
        fractions.append(fraction or 0.0)
        table_rows.append([esc(rnd), esc(fmt_int(selected)), esc(fmt_int(records)), esc(fmt_pct(fraction))])
    table = _table(
        ["Round", "Selected", "Records", "Fraction"],
        table_rows,
        numeric=[0, 1, 2, 3],
        caption="Coreset selection",
        cls="compact",
    )
    if private == len(rows):
        return (
            "<p>In these rounds each institution chose a small, representative subset of its records to "
            "train on, locally, from statistics released once under differential privacy; the server never "
            "learned which records or how many (the record counts below are the noisy released ones).</p>"
            + table
        )
    rows = [
        (rnd, sel)
        for rnd, sel in rows
        if not (sel.get("mode") == "fedhds-dp" and sel.get("selected") is None)
    ]
    svg = bar_chart(
        chart_id="chart-coreset",
        title="Share of records selected per round",
        desc="; ".join(
            f"round {rnd}: {fmt_pct(f)} selected" for (rnd, _), f in zip(rows, fractions, strict=True)
        ),
        categories=[str(rnd) for rnd, _ in rows],
        layers=[Bars("Selected records (% of all)", tuple(f * 100 for f in fractions), PALETTE[2])],
        x_label="Round",
        y_label="% of records",
        value_format=lambda v: f"{v:.1f} %" if v < 10 else f"{v:.0f} %",
    )
    return (
        "<p>In these rounds a coreset — a small, representative subset of the training records — was "
        "selected before training, from statistics that were themselves securely aggregated.</p>"
        + _figure(svg, "The share of all records that was selected for training in each round.")
        + table
    )


def _shape(value: Any) -> str:
    dims = [d for d in (_int(x) for x in _list(value)) if d is not None]
    if not dims:
        return "one number"
    if len(dims) == 1:
        return _plural(dims[0], "number")
    return " × ".join(f"{d:,}" for d in dims) + " array"


def _learned(report: Mapping[str, Any], facts: _Facts) -> str:
    rounds = _maps(report.get("rounds"))
    if not rounds:
        return ""
    institution = facts.kind == "institution" and any("participated" in r for r in rounds)
    headers = (
        ["Round"]
        + (["Took part"] if institution else [])
        + [
            "Contributors",
            "Dropped",
            "Refused",
            "Sums the server decoded (and their size)",
        ]
    )
    rows: list[list[str]] = []
    for r in rounds:
        stages = _map(r.get("learned"))
        lines = []
        for stage, sums in stages.items():
            pieces = ", ".join(
                f'<span class="nowrap"><code>{esc(name)}</code> ({esc(_shape(shape))})</span>'
                for name, shape in _map(sums).items()
            )
            lines.append(f"<strong>{esc(stage)}</strong>: {pieces or 'nothing'}")
        refused = [f'<span class="nowrap">{esc(x)}</span>' for x in _list(r.get("refused")) if _text(x)]
        row = [esc(fmt_int(r.get("round")))]
        if institution:
            took = r.get("participated")
            row.append("yes" if took is True else ("no" if took is False else "—"))
        row += [
            esc(fmt_int(r.get("contributors"))),
            esc(fmt_int(r.get("dropped"))),
            ", ".join(refused) or "—",
            "<br>".join(lines) or '<span class="muted">nothing recorded</span>',
        ]
        rows.append(row)
    numeric = [0, 2, 3] if institution else [0, 1, 2]
    return (
        "<p>Everything the coordinating server could read, round by round: only cohort sums, never an "
        "individual institution's values. The size says how many numbers each sum holds.</p>"
        + _table(headers, rows, numeric=numeric, caption="What the server learned per round")
    )


def _not_covered(report: Mapping[str, Any]) -> str:
    items = [esc(x) for x in _list(report.get("not_covered")) if _text(x)]
    if not items:
        return ""
    return (
        '<div class="callout warn not-covered" role="note"><p><strong><span aria-hidden="true">⚠</span> '
        "The guarantee above does not protect the following.</strong> Each needs its own assessment "
        "by the institution.</p><ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul></div>"
    )


_EMPIRICAL_LABELS = {
    "claimed_epsilon": "Claimed ε",
    "lower_bound": "Measured lower bound on ε",
    "delta": "δ",
    "canaries": "Canary records",
    "guesses": "Guesses made",
    "correct": "Correct guesses",
    "noise_multiplier": "Noise multiplier σ",
    "noise_scale": "Noise scale",
    "sample_rate": "Sampling rate q",
    "steps": "Steps",
    "confidence": "Confidence",
    "method": "Method",
    "seed": "Random seed",
    "seconds": "Run time (s)",
}


def _empirical(report: Mapping[str, Any]) -> str:
    audit = _map(report.get("empirical_audit"))
    if not audit:
        return ""
    claimed, bound = _num(audit.get("claimed_epsilon")), _num(audit.get("lower_bound"))
    passed = audit.get("passed")
    confidence = _num(audit.get("confidence"))
    conf_text = f" (with {fmt_pct(confidence)} confidence)" if confidence is not None else ""
    text = (
        "<p>As a test of the implementation, not a replacement for the proof, special “canary” records were "
        "inserted and an attacker tried to guess which of them were used in training. The better the "
        "guesses, the higher the privacy loss must be. "
    )
    if bound is not None and claimed is not None:
        text += (
            f"The guesses prove ε is at least {esc(fmt_num(bound))}{conf_text}, against a claimed "
            f"ε{_EQ}{esc(fmt_eps(claimed))}. "
        )
    text += "</p>"
    if passed is True:
        verdict = '<div class="badge pass" role="note">✓ Passed: the measurement is consistent with the claimed ε</div>'
    elif passed is False:
        verdict = (
            '<div class="badge fail" role="note">✗ Failed: the measured lower bound exceeds the claimed ε — '
            "the implementation or accounting must be investigated</div>"
        )
    else:
        verdict = ""
    rows: list[tuple[str, str]] = []
    for key, value in audit.items():
        if key == "passed" or isinstance(value, Mapping | list):
            continue
        label = _EMPIRICAL_LABELS.get(str(key), str(key).replace("_", " "))
        if key == "delta":
            shown = fmt_sci(value)
        elif key == "confidence":
            shown = fmt_pct(_num(value))
        elif key in ("claimed_epsilon", "lower_bound"):
            shown = fmt_eps(value) if key == "claimed_epsilon" else fmt_num(value)
        elif _int(value) is not None:
            shown = fmt_int(value)
        elif _num(value) is not None:
            shown = fmt_num(value)
        else:
            shown = _text(value) or "—"
        rows.append((esc(label), esc(shown)))
    return text + verdict + _kv_table(rows, caption="Audit parameters and outcome", compact=True)


def _ledgers(report: Mapping[str, Any]) -> str:
    ledgers = _maps(report.get("ledgers"))
    signature = _map(report.get("signature"))
    integrity = _map(report.get("integrity"))
    parts: list[str] = []
    if ledgers:
        parts.append(
            "<p>Every figure in this report is recomputed from these append-only, hash-chained ledgers. "
            "The head hash pins each ledger's exact content at the time of the report.</p>"
        )
        rows = [
            [
                esc(_text(x.get("name")) or "—"),
                f"<code>{esc(_text(x.get('path')) or '—')}</code>",
                esc(fmt_int(x.get("entries"))),
                _hash(x.get("head"), short=True),
            ]
            for x in ledgers
        ]
        parts.append(_table(["Ledger", "Path", "Entries", "Head hash"], rows, numeric=[2], caption="Ledgers"))
    if integrity:
        problems = [esc(p) for p in _list(integrity.get("problems")) if _text(p)]
        if integrity.get("state_database_ok") is True and not problems:
            parts.append(
                '<p><span class="badge pass inline">✓</span> The server\'s state database passed its integrity checks.</p>'
            )
        elif problems or integrity.get("state_database_ok") is False:
            parts.append(
                '<div class="callout bad-box" role="note"><strong>The server\'s state database failed integrity checks:</strong><ul>'
                + "".join(f"<li>{p}</li>" for p in problems)
                + "</ul></div>"
            )
    if signature:
        rows_kv: list[tuple[str, str]] = []
        for key, label in (("role", "Role"), ("signer", "Signer"), ("algorithm", "Algorithm")):
            if _text(signature.get(key)):
                rows_kv.append((label, esc(signature.get(key))))
        chain = _text(signature.get("certificate_chain"))
        if chain:
            count = chain.count("-----BEGIN CERTIFICATE-----")
            rows_kv.append(("Certificate chain", esc(_plural(count, "certificate"))))
        if _text(signature.get("value")):
            rows_kv.append(("Signature value", _hash(signature.get("value"), short=True)))
        parts.append(_kv_table(rows_kv, caption="Signature", compact=True))
        parts.append(
            '<p class="muted">This page does not check the signature. To verify it against the consortium '
            "CA, check every ledger's hash chain and recompute ε from the ledgers, run "
            "<code>secfed audit verify</code> on the report's JSON file.</p>"
        )
    return "".join(parts)


# --------------------------------------------------------------------------- page

_CSS = """
:root { --ink:#1b2430; --muted:#5b6776; --line:#d5dbe3; --accent:#1f3a5f; --soft:#eef3f9;
  --warn-bg:#fff4e5; --warn:#b45309; --ok:#1b7f3b; --bad:#b00020; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; background: #f4f6f9; color: var(--ink);
  font: 15px/1.55 system-ui, "Segoe UI", "Liberation Sans", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 28px 36px 40px; background: #fff; }
.report-header { border-bottom: 3px solid var(--accent); padding-bottom: 14px; margin-bottom: 18px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--muted); }
h1 { font-size: 27px; line-height: 1.25; margin: 4px 0 6px; color: var(--accent); }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line);
  color: var(--accent); break-after: avoid; page-break-after: avoid; }
h2 .num-prefix { color: var(--muted); font-weight: 600; margin-right: 6px; }
.meta { margin: 0 0 10px; color: var(--muted); font-size: 14px; }
.badge { display: inline-block; padding: 5px 12px; border-radius: 4px; font-size: 14px; font-weight: 600; }
.badge.signed, .badge.pass { background: #e7f5ec; color: var(--ok); border: 1px solid #9fd3b1; }
.badge.unsigned { background: #f1f1f1; color: #555; border: 1px solid #ccc; }
.badge.fail { background: #fdecee; color: var(--bad); border: 1px solid #f2a7b2; }
.badge.inline { padding: 0 6px; }
.badge-note { font-weight: 400; color: var(--muted); margin-left: 10px; font-size: 12.5px; }
.summary { background: var(--soft); border: 1px solid #c9d7e8; border-left: 6px solid var(--accent);
  padding: 16px 20px; border-radius: 4px; break-inside: avoid; }
.lead { font-size: 16.5px; margin: 0 0 12px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0; }
.card { flex: 1 1 170px; max-width: 280px; background: #fff; border: 1px solid var(--line); border-radius: 4px; padding: 8px 12px; }
.card-label { font-size: 12.5px; color: var(--muted); }
.card-value { font-size: 21px; font-weight: 700; font-variant-numeric: tabular-nums; }
.card-note { font-size: 12.5px; color: var(--muted); }
nav.toc { font-size: 13.5px; color: var(--muted); margin: 16px 0 0; }
nav.toc ol { display: flex; flex-wrap: wrap; gap: 4px 16px; padding: 0; margin: 4px 0 0; list-style: none; }
nav.toc a { color: var(--accent); text-decoration: none; }
p.plain { font-size: 16px; }
dl.formal { display: grid; grid-template-columns: 210px 1fr; gap: 6px 16px; margin: 10px 0; }
dl.formal dt { font-weight: 600; color: var(--muted); }
dl.formal dd { margin: 0; }
dl.formal ul { margin: 0; padding-left: 18px; }
.table-wrap { overflow-x: auto; margin: 10px 0 14px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
caption { text-align: left; font-weight: 600; color: var(--muted); padding: 0 0 6px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
thead th { background: #f1f4f8; border-bottom: 2px solid #b9c3cf; font-weight: 600; }
table.kv th { width: 210px; background: #f7f9fb; font-weight: 600; color: #3a4656; }
table.compact, table.kv.compact { width: auto; min-width: 55%; }
table.dense { font-size: 12.5px; }
table.dense th, table.dense td { padding: 5px 6px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr { break-inside: avoid; page-break-inside: avoid; }
code { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace; font-size: .9em; }
code.hash { word-break: break-all; }
.muted { color: var(--muted); }
.nowrap { white-space: nowrap; }
.bad { color: var(--bad); font-weight: 600; }
.callout { padding: 12px 16px; border-radius: 4px; margin: 12px 0; break-inside: avoid; }
.callout ul { margin: 6px 0 0; padding-left: 22px; }
.callout li { margin: 4px 0; }
.callout p { margin: 0; }
.warn { background: var(--warn-bg); border: 1px solid #f3c98b; border-left: 6px solid var(--warn); }
.not-covered { font-size: 15px; }
.bad-box { background: #fdecee; border: 1px solid #f2a7b2; border-left: 6px solid var(--bad); }
.meter { height: 16px; background: #e6ebf1; border-radius: 8px; overflow: hidden; margin: 12px 0 4px;
  border: 1px solid #cfd8e3; }
.meter-fill { height: 100%; background: var(--ok); }
.meter.high .meter-fill { background: #d97706; }
.meter.over .meter-fill { background: var(--bad); }
.meter-label { font-size: 13.5px; color: var(--muted); margin-bottom: 8px; }
.mini-meter { display: inline-block; width: 46px; height: 8px; background: #e6ebf1; border-radius: 4px;
  overflow: hidden; vertical-align: middle; }
.mini-meter span { display: block; height: 100%; background: var(--ok); }
.mini-meter.high span { background: #d97706; }
.mini-meter.over span { background: var(--bad); }
figure { margin: 14px 0 18px; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
svg.chart { width: 100%; height: auto; display: block; border: 1px solid var(--line);
  border-radius: 4px; background: #fff; }
svg.chart text { font-family: system-ui, "Liberation Sans", "DejaVu Sans", Arial, sans-serif; font-size: 12px;
  fill: #333; }
svg.chart .chart-title { font-size: 15px; font-weight: 700; fill: var(--accent); }
svg.chart .axis-label { font-size: 12.5px; fill: #444; }
svg.chart .rule-label { font-size: 12px; font-weight: 600; }
svg.chart .bar-value { font-size: 11.5px; fill: #222; }
svg.chart .grid { stroke: #e4e8ee; stroke-width: 1; }
svg.chart .axis { stroke: #6b7785; stroke-width: 1; }
footer { margin-top: 36px; padding-top: 10px; border-top: 1px solid var(--line); font-size: 12.5px;
  color: var(--muted); }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0);
  white-space: nowrap; }
@page { size: A4; margin: 14mm 13mm 16mm; }
@media print {
  body { background: #fff; font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  nav.toc { display: none; }
  h1 { font-size: 19pt; }
  h2 { font-size: 13.5pt; margin-top: 20pt; }
  .lead { font-size: 11.5pt; }
  table { font-size: 9pt; }
  table.dense { font-size: 8pt; }
  .card { flex-basis: 130px; padding: 5px 9px; }
  .card-value { font-size: 14pt; }
  .table-wrap { overflow: visible; }
  svg.chart { max-width: 100%; }
  section { break-inside: auto; }
}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML5 document (inline CSS and SVG, nothing loaded, no script)."""
    facts = _facts(report)
    privacy_body = (
        _federation_privacy(report) if facts.kind == "federation" else _institution_privacy(report, facts)
    )
    candidates = [
        _Section("identification", "Identification", _identification(report)),
        _Section("guarantee", "The guarantee", _guarantee(report)),
        _Section("mechanism", "Mechanism: differentially private training", _mechanism(report)),
        _Section("privacy-loss", "Privacy loss", privacy_body),
        _Section("secure-aggregation", "Secure aggregation per round", _secure_aggregation(report)),
        _Section("coreset", "Data selected per round", _coreset(report)),
        _Section("learned", "What the server learned, per round", _learned(report, facts)),
        _Section("not-covered", "What is NOT covered", _not_covered(report)),
        _Section("empirical-audit", "Empirical audit", _empirical(report)),
        _Section("ledgers", "Ledgers and signature", _ledgers(report)),
    ]
    sections = [s for s in candidates if s.body]
    toc = "".join(
        f'<li><a href="#{s.anchor}">{i}. {esc(s.heading)}</a></li>' for i, s in enumerate(sections, start=1)
    )
    body = "".join(
        f'<section id="{s.anchor}" aria-labelledby="{s.anchor}-h"><h2 id="{s.anchor}-h">'
        f'<span class="num-prefix">{i}.</span>{esc(s.heading)}</h2>{s.body}</section>'
        for i, s in enumerate(sections, start=1)
    )
    ident = _map(report.get("identification"))
    version = _text(report.get("version")) or "?"
    footer = (
        f"<footer>Report format {esc(_text(report.get('format')) or 'secfed-audit-report')} v{esc(version)}"
        + (
            f" · produced by secfed {esc(ident.get('code_version'))}"
            if _text(ident.get("code_version"))
            else ""
        )
        + " · The signed JSON file is the authoritative record; this page is a rendering of it.</footer>"
    )
    title = f"Privacy audit report — {facts.kind} {facts.subject}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{_header(report, facts)}{_summary(report, facts)}"
        f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{toc}</ol></nav>'
        f"{body}{footer}</main></body></html>\n"
    )
