"""The per-round sections: secure aggregation, coreset selection, and what the server learned.

They answer the question a reader asks of a federated run — what could the coordinating server read? —
round by round: the secure-aggregation parameters that limit it to cohort sums (threshold, colluding
bound, fixed-point encoding), the cohort that contributed or dropped out, the share of records a coreset
selected, and the name and size of every sum the server decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secfed.audit.charts import PALETTE, Bars, Rule, bar_chart
from secfed.audit.fields import as_int, as_list, as_map, as_maps, as_num, as_text
from secfed.audit.fmt import NBSP, esc, fmt_int, fmt_pct, fmt_power, plural
from secfed.audit.sections.blocks import figure, html_table
from secfed.audit.sections.facts import Facts, cohort_series

__all__ = ["render_coreset", "render_learned", "render_secure_aggregation"]


def _segments(value: Any) -> str:
    """Each segment's fractional bits, one per line, with its length and scale in a tooltip."""
    segments = as_map(value)
    if not segments:
        return "—"
    items = []
    for name, seg in segments.items():
        seg_map = as_map(seg)
        length = as_int(seg_map.get("length"))
        bits = as_int(seg_map.get("frac_bits"))
        scale = str(bits) if bits is not None else "?"
        tip = f"{length:,} values, scaled by 2^{bits}" if length is not None and bits is not None else ""
        items.append(
            f'<span class="seg" title="{esc(tip)}"><code>{esc(name)}</code>:{NBSP}{esc(scale)}</span>'
        )
    return "<br>".join(items)


def render_secure_aggregation(report: Mapping[str, Any]) -> str:
    """Every secure-aggregation session's parameters, and the cohort per round as a bar chart."""
    sessions = as_maps(report.get("secure_aggregation"))
    cohorts = cohort_series(report)
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
        with_clip = any(as_num(s.get("clipped_fraction")) is not None for s in sessions)
        with_count = any(as_int(s.get("contributors")) is not None for s in sessions)
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
            stage = as_text(s.get("stage")) or as_text(s.get("label")) or "—"
            ring = as_int(s.get("ring_bits"))
            row = [
                esc(fmt_int(s.get("round"))),
                esc(stage),
                esc(fmt_int(s.get("n"))),
                esc(fmt_int(s.get("threshold"))),
                esc(fmt_int(s.get("colluding"))),
                esc(fmt_int(s.get("min_cohort"))),
                esc(fmt_power(2, ring)) if ring is not None else "—",
                _segments(s.get("segments")),
            ]
            if with_clip:
                clipped = as_num(s.get("clipped_fraction"))
                row.append(esc(f"{clipped * 100:.2f}{NBSP}%") if clipped is not None else "—")
            if with_count:
                row.append(esc(f"{fmt_int(s.get('contributors'))} / {fmt_int(s.get('dropped'))}"))
            rows.append(row)
        numeric = [0, 2, 3, 4, 5, 6] + ([8] if with_clip else []) + ([len(headers) - 1] if with_count else [])
        parts.append(
            html_table(headers, rows, numeric=numeric, caption="Secure-aggregation sessions", cls="dense")
        )
    if cohorts:
        thresholds = {t for t in (as_int(s.get("threshold")) for s in sessions) if t is not None}
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
            figure(
                svg,
                "Each bar is one round's cohort: institutions whose update is in the sum, and those that "
                "dropped out mid-round. The sum can only be decoded when the blue part reaches the threshold.",
            )
        )
    return "".join(parts)


def render_coreset(report: Mapping[str, Any]) -> str:
    """How many records were selected per round; with DP selection, that the server never knew."""
    rows: list[tuple[int, Mapping[str, Any]]] = []
    for r in as_maps(report.get("rounds")):
        selection = r.get("selection")
        rnd = as_int(r.get("round"))
        if isinstance(selection, Mapping) and selection and rnd is not None:
            rows.append((rnd, selection))
    if not rows:
        return ""
    table_rows: list[list[str]] = []
    fractions: list[float] = []
    private = 0
    for rnd, sel in rows:
        selected, records = as_num(sel.get("selected")), as_num(sel.get("records"))
        fraction = as_num(sel.get("fraction"))
        if fraction is None and selected is not None and records:
            fraction = selected / records
        if sel.get("mode") == "fedhds-dp" and selected is None:
            # DP selection: each institution chose its records privately; the server never knew how many.
            private += 1
            table_rows.append([esc(rnd), "chosen privately", esc(fmt_int(records)), "—"])
            continue
        fractions.append(fraction or 0.0)
        table_rows.append([esc(rnd), esc(fmt_int(selected)), esc(fmt_int(records)), esc(fmt_pct(fraction))])
    table = html_table(
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
        + figure(svg, "The share of all records that was selected for training in each round.")
        + table
    )


def _shape(value: Any) -> str:
    """A sum's size in words: ``one number``, ``1,000 numbers``, ``16 × 64 array``."""
    dims = [d for d in (as_int(x) for x in as_list(value)) if d is not None]
    if not dims:
        return "one number"
    if len(dims) == 1:
        return plural(dims[0], "number")
    return " × ".join(f"{d:,}" for d in dims) + " array"


def render_learned(report: Mapping[str, Any], facts: Facts) -> str:
    """Per round: who contributed, dropped out or refused, and the sums the server decoded."""
    rounds = as_maps(report.get("rounds"))
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
        stages = as_map(r.get("learned"))
        lines = []
        for stage, sums in stages.items():
            pieces = ", ".join(
                f'<span class="nowrap"><code>{esc(name)}</code> ({esc(_shape(shape))})</span>'
                for name, shape in as_map(sums).items()
            )
            lines.append(f"<strong>{esc(stage)}</strong>: {pieces or 'nothing'}")
        refused = [f'<span class="nowrap">{esc(x)}</span>' for x in as_list(r.get("refused")) if as_text(x)]
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
        + html_table(headers, rows, numeric=numeric, caption="What the server learned per round")
    )
