"""The HTML pieces every section is built from: tables, cards, budget meters, figures, hashes.

Table cells, headers and captions and the parts of a card are already-built HTML: the caller escaped
what came from the report, so a cell can hold markup such as a ``<code>`` hash or a mini budget meter.
Only the hash of :func:`hash_code` and the label of :func:`meter` are plain text, escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from secfed.audit.fields import as_text
from secfed.audit.fmt import esc
from secfed.audit.sections.facts import over_budget

__all__ = ["card", "figure", "hash_code", "html_table", "kv_table", "meter", "mini_meter"]


def hash_code(value: Any, *, short: bool = False) -> str:
    """A hash in monospace; abbreviated ones keep the full value in a tooltip."""
    text = as_text(value)
    if not text:
        return '<span class="muted">not recorded</span>'
    shown = f"{text[:12]}…{text[-6:]}" if short and len(text) > 22 else text
    return f'<code class="hash" title="{esc(text)}">{esc(shown)}</code>'


def html_table(
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


def kv_table(rows: Sequence[tuple[str, str]], *, caption: str = "", compact: bool = False) -> str:
    """A two-column table of row headers and values (identification, parameters)."""
    if not rows:
        return ""
    cap = f"<caption>{caption}</caption>" if caption else ""
    body = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in rows)
    cls = "kv compact" if compact else "kv"
    return f'<div class="table-wrap"><table class="{cls}">{cap}<tbody>{body}</tbody></table></div>'


def figure(svg: str, caption: str) -> str:
    """A chart with its caption, kept together on a printed page; nothing when there is no chart."""
    if not svg:
        return ""
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def card(label: str, value: str, note: str = "") -> str:
    """One key figure in large type, with what it is above and an optional note below."""
    note_html = f'<div class="card-note">{note}</div>' if note else ""
    return f'<div class="card"><div class="card-label">{label}</div><div class="card-value">{value}</div>{note_html}</div>'


def _meter_state(fraction: float) -> str:
    """The meter's colour class: red over the budget, amber from 80 % of it."""
    return "over" if over_budget(fraction) else ("high" if fraction >= 0.8 else "ok")


def meter(fraction: float | None, label: str) -> str:
    """A horizontal budget bar (CSS, printed with exact colours); over 100 % turns red."""
    if fraction is None or not math.isfinite(fraction):
        return ""
    width = max(0.0, min(fraction, 1.0)) * 100
    return (
        f'<div class="meter {_meter_state(fraction)}" role="img" aria-label="{esc(label)}">'
        f'<div class="meter-fill" style="width:{width:.1f}%"></div></div>'
        f'<div class="meter-label">{esc(label)}</div>'
    )


def mini_meter(fraction: float) -> str:
    """The budget bar in small, for a table cell beside the percentage it shows (hidden from screen readers)."""
    return (
        f'<span class="mini-meter {_meter_state(fraction)}" aria-hidden="true"><span style="width:'
        f'{min(fraction, 1.0) * 100:.0f}%"></span></span>'
    )
