"""The privacy sections: how each round's training was noised (DP-SGD settings), and the privacy loss.

An institution's report accounts its own loss from its own ledger: epsilon by the PLD accountant with an
RDP cross-check (or, with DP coreset selection, the RDP composition of training and selection), the budget
and how much of it is used, epsilon over rounds, the rounds it refused and the records every release was
computed from. A federation's report only quotes each institution's signed figures, side by side: the
server never computes anyone's privacy loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from secfed.audit.charts import PALETTE, Rule, Series, line_chart
from secfed.audit.fields import as_int, as_list, as_map, as_maps, as_num, as_text
from secfed.audit.fmt import EQ, INFINITE_EPSILON, esc, fmt_eps, fmt_int, fmt_num, fmt_pct, fmt_sci, plural
from secfed.audit.sections.blocks import card, figure, html_table, meter, mini_meter
from secfed.audit.sections.facts import (
    Facts,
    budget_used,
    cohort_series,
    over_budget,
    quoted_dp_used,
    quoted_institutions,
)

__all__ = ["render_federation_privacy", "render_institution_privacy", "render_mechanism"]


def render_mechanism(report: Mapping[str, Any]) -> str:
    """The DP-SGD settings of every round the institution trained in, after a sentence on what they do."""
    rows = as_maps(report.get("mechanism"))
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
    return intro + html_table(headers, body, numeric=range(len(headers)), caption="DP-SGD settings per round")


def _over_rounds(value: Any) -> tuple[tuple[float, float | None, float | None], ...]:
    """(round, epsilon, RDP epsilon) after each round, in round order; entries without a round are skipped."""
    points: list[tuple[float, float | None, float | None]] = []
    for entry in as_maps(value):
        rnd = as_num(entry.get("round"))
        if rnd is None:
            continue
        points.append((rnd, as_num(entry.get("epsilon")), as_num(entry.get("epsilon_rdp"))))
    return tuple(sorted(points, key=lambda p: p[0]))


def _selection_table(facts: Facts) -> str:
    """The coreset selection releases made under DP: what noise each stage's sum carried."""
    rows = [
        [
            esc(fmt_int(r.get("round"))),
            esc(as_text(st.get("what")) or "—"),
            esc(fmt_num(st.get("lam"))),
            esc(fmt_num(st.get("l1"))),
            esc(fmt_num(st.get("l2"))),
        ]
        for r in facts.selection_releases
        for st in as_maps(r.get("stages"))
    ]
    intro = (
        "<p>The coreset selection statistics were released with distributed differential privacy: before "
        "each masked vector left, the institution added its share of Skellam noise (integer noise, added "
        "before masking), so every sum the server decoded through secure aggregation carried Skellam noise "
        "of at least the variance 2λ in each coordinate, as long as no more institutions than the "
        "colluding bound colluded with the server. By themselves these releases cost "
        f"ε{EQ}{esc(fmt_eps(facts.epsilon_selection))} at δ{EQ}{esc(fmt_sci(facts.delta))}; a larger λ "
        "and smaller sensitivities mean more privacy.</p>"
    )
    return intro + html_table(
        ["Round", "Stage", "Skellam λ (sum)", "Sensitivity L1", "Sensitivity L2"],
        rows,
        numeric=[0, 2, 3, 4],
        caption="Coreset selection releases under DP (sensitivities in ring units)",
        cls="compact",
    )


def _refusals_table(refusals: Sequence[Mapping[str, Any]]) -> str:
    rows = [[esc(fmt_int(r.get("round"))), esc(as_text(r.get("reason")) or "—")] for r in refusals]
    return html_table(
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
            esc(as_text(d.get("data")) or "—"),
            f"<code>{esc((as_text(d.get('dataset')) or '')[:16])}…</code>",
            # Training rounds and DP selection releases (rows of older reports have no "dp_selection").
            esc(fmt_int((as_int(d.get("dp_rounds")) or 0) + (as_int(d.get("dp_selection")) or 0))),
            esc(fmt_int(d.get("non_dp"))),
        ]
        for d in as_maps(privacy.get("datasets"))
    ]
    table = html_table(
        ["Records", "Content hash", "DP releases", "Releases without DP"],
        rows,
        caption="The records each release was computed from (epsilon composes over all of them)",
        numeric=[2, 3],
        cls="compact",
    )
    retried = [r for r in (as_int(x.get("round")) for x in as_maps(privacy.get("retries"))) if r is not None]
    if retried:
        table += (
            f"<p>Retried {plural(len(retried), 'round')} ({esc(', '.join(str(r) for r in retried))}): the "
            "retry re-submitted the DP update already released for the round, at no extra privacy cost.</p>"
        )
    return table


def _budget_rules(budgets: Sequence[tuple[float, str]]) -> list[Rule]:
    """The budgets as red reference lines of the epsilon chart (an infinite budget draws none)."""
    rules: list[Rule] = []
    for value, label in budgets:
        if math.isfinite(value):
            rules.append(Rule(value, label, "#B00020"))
    return rules


def render_institution_privacy(report: Mapping[str, Any], facts: Facts) -> str:
    """An institution's own privacy loss; without DP, a warning that its updates carry no bound."""
    privacy = as_map(report.get("privacy"))
    parts: list[str] = []
    if not facts.dp_used:
        other = (
            "Only secure aggregation protected them (see below)."
            if as_maps(report.get("secure_aggregation")) or cohort_series(report)
            else "This report records no secure-aggregation sessions either."
        )
        parts.append(
            '<div class="callout warn" role="note"><strong>No differential privacy.</strong> '
            f"The updates this institution released carry no privacy bound: ε{EQ}{esc(INFINITE_EPSILON)}. "
            f"{other}</div>"
        )
    else:
        if facts.selection_releases:
            cards = [
                card("ε total", esc(fmt_eps(facts.epsilon)), "training and selection, composed"),
                card("ε training (PLD)", esc(fmt_eps(facts.epsilon_training)), "DP-SGD rounds alone"),
                card("ε coreset selection", esc(fmt_eps(facts.epsilon_selection)), "Skellam releases alone"),
            ]
        else:
            cards = [
                card("ε (PLD accountant)", esc(fmt_eps(facts.epsilon)), "the reported figure"),
                card("ε (RDP cross-check)", esc(fmt_eps(facts.epsilon_rdp)), "conservative upper bound"),
            ]
        cards.append(card("δ", esc(fmt_sci(facts.delta)), "probability the bound may fail"))
        budget_left = as_num(privacy.get("budget_left"))
        if facts.budget is not None:
            cards.append(
                card(
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
        used = budget_used(facts.epsilon, facts.budget)
        if used is not None and facts.budget is not None:
            state = "used: over budget" if over_budget(used) else "used"
            label = f"{fmt_pct(used)} of the budget ε{EQ}{fmt_num(facts.budget)} {state}"
            parts.append(meter(used, label))
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
            parts.append(figure(svg, caption))
    if facts.selection_releases:
        parts.append(_selection_table(facts))
    if facts.refusals:
        parts.append(_refusals_table(facts.refusals))
    parts.append(_records_table(privacy))
    return "".join(parts)


def render_federation_privacy(report: Mapping[str, Any]) -> str:
    """Each institution's privacy loss as quoted from its signed report, as a table and one line each."""
    institutions = quoted_institutions(report)
    if not institutions:
        return ""
    rows: list[list[str]] = []
    series: list[Series] = []
    budgets: dict[float, list[str]] = {}
    # A column for the coreset selection epsilon only when some institution released selection under DP.
    with_selection = any(as_int(q.get("dp_selection_releases")) for q in institutions.values())
    for cid, q in sorted(institutions.items()):
        dp = quoted_dp_used(q)
        eps, budget = as_num(q.get("epsilon")), as_num(q.get("budget"))
        used = budget_used(eps, budget) if dp else None
        used_cell = esc(fmt_pct(used)) if used is None else f"{mini_meter(used)} {esc(fmt_pct(used))}"
        refusals = q.get("refusals")
        refusal_count = len(refusals) if isinstance(refusals, list) else as_int(refusals)
        verified = q.get("report_verified")
        rows.append(
            [
                esc(cid),
                "yes" if dp else '<span class="bad">no</span>',
                esc(fmt_eps(eps if dp else None)),
                esc(fmt_eps(as_num(q.get("epsilon_rdp")))) if dp else "—",
                *(
                    [
                        esc(fmt_eps(as_num(q.get("epsilon_selection"))))
                        if as_int(q.get("dp_selection_releases"))
                        else "—"
                    ]
                    if with_selection
                    else []
                ),
                esc(fmt_sci(q.get("delta"))) if dp else "—",
                esc(fmt_num(budget)) if budget is not None else "none set",
                used_cell,
                esc(fmt_int(len(as_list(q.get("rounds_trained"))))),
                esc(fmt_int(refusal_count)),
                esc(fmt_int(len(as_list(q.get("retried_rounds"))))),
                esc(
                    fmt_int(
                        sum(v for v in (as_int(x) for x in as_map(q.get("non_dp_releases")).values()) if v)
                    )
                ),
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
        html_table(
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
            figure(
                svg,
                "One line per institution: its cumulative privacy loss after each round it trained. The red "
                "dashed line is the budget each line must stay under.",
            )
        )
    return "".join(parts)
