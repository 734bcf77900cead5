"""The top of the page: the title with its signature badge, then the summary a reader may stop after.

The readers are data-protection and compliance officers, not differential-privacy experts: the summary
says in plain sentences what the numbers mean (how much privacy was lost against what budget, what the
server could see) and repeats the key figures as cards; the sections below give the detail. An
institution's report speaks of its own loss; a federation's quotes each institution's signed report,
since only the institution accounts its own privacy loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from secfed.audit.fields import as_map, as_num, as_text
from secfed.audit.fmt import EQ, INFINITE_EPSILON, esc, fmt_eps, fmt_num, fmt_pct, fmt_sci, fmt_time, plural
from secfed.audit.sections.blocks import card
from secfed.audit.sections.facts import Facts, budget_used, over_budget, quoted_dp_used, quoted_institutions

__all__ = ["render_header", "render_summary"]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _secagg_sentence(facts: Facts) -> str:
    """What secure aggregation let the server see, and the collusion it holds against."""
    if facts.smallest_sum is None:
        return ""
    text = (
        f"The server only ever saw sums over at least {plural(facts.smallest_sum, 'institution')}, "
        "never a single institution's update"
    )
    if facts.colluding == 0:
        text += "; this holds as long as no institution colludes with the server"
    elif facts.colluding is not None:
        verb = "colludes" if facts.colluding == 1 else "collude"
        text += f"; this holds as long as no more than {plural(facts.colluding, 'institution')} {verb} with the server"
    return text + "."


def render_header(report: Mapping[str, Any], facts: Facts) -> str:
    """The title, when and for which run the report was made, and who signed it (unsigned is said too)."""
    ident = as_map(report.get("identification"))
    meta = [f"Generated {esc(fmt_time(report.get('generated_at')))}"] if report.get("generated_at") else []
    if as_text(ident.get("run_id")):
        meta.append(f"run {esc(ident.get('run_id'))}")
    if facts.kind == "institution" and as_text(ident.get("federation")):
        meta.append(f"federation {esc(ident.get('federation'))}")
    signature = as_map(report.get("signature"))
    signer = as_text(signature.get("signer"))
    if signer:
        role = as_text(signature.get("role"))
        badge = (
            f'<div class="badge signed" role="note"><span aria-hidden="true">✓</span> Signed by '
            f"<strong>{esc(signer)}</strong>{f' ({esc(role)})' if role else ''}"
            '<span class="badge-note">check with <code>secfed audit verify</code></span></div>'
        )
    else:
        badge = '<div class="badge unsigned" role="note">Unsigned — not an official copy</div>'
    return (
        f'<header class="report-header"><div class="eyebrow">secfed · privacy-budget audit</div>'
        f"<h1>{esc(facts.title)}</h1>"
        f'<p class="meta">{" · ".join(meta)}</p>{badge}</header>'
    )


def _institution_summary(report: Mapping[str, Any], facts: Facts) -> tuple[list[str], list[str]]:
    sentences: list[str] = []
    trained = len(facts.rounds_trained)
    of_total = f" of {facts.rounds_total:,}" if facts.rounds_total is not None else ""
    if facts.dp_used:
        sentences.append(
            f"This institution trained in {trained:,}{of_total} {'round' if (facts.rounds_total or trained) == 1 else 'rounds'} "
            "with differential privacy."
        )
        if _finite(facts.epsilon):
            text = f"Its total privacy loss is ε{EQ}{fmt_eps(facts.epsilon)} at δ{EQ}{fmt_sci(facts.delta)}"
            if facts.selection_releases:
                text += (
                    f" (training ε{EQ}{fmt_eps(facts.epsilon_training)} and coreset selection "
                    f"ε{EQ}{fmt_eps(facts.epsilon_selection)}, composed)"
                )
            elif _finite(facts.epsilon_rdp):
                text += f" (RDP cross-check {fmt_eps(facts.epsilon_rdp)})"
            used = budget_used(facts.epsilon, facts.budget)
            if used is not None and facts.budget is not None:
                where = "<strong>over</strong>" if over_budget(used) else "within"
                text += f", {where} its budget of {fmt_num(facts.budget)} ({esc(fmt_pct(used))} used)."
            else:
                text += ". No privacy budget was set."
            sentences.append(text)
        else:
            sentences.append(f"Its privacy loss is unbounded: ε{EQ}{INFINITE_EPSILON}.")
    else:
        sentences.append(
            "This institution's updates were <strong>not</strong> protected by differential privacy, so "
            f"there is no bound on its privacy loss: ε{EQ}{INFINITE_EPSILON}."
        )
    if facts.selection_releases:
        sentences.append(
            "Its coreset selection statistics were released with differential privacy (Skellam noise "
            f"through secure aggregation): ε{EQ}{fmt_eps(facts.epsilon_selection)} by themselves."
        )
    if facts.refusals:
        sentences.append(
            f"It refused to train in {plural(len(facts.refusals), 'round')} (see the refusals under Privacy loss)."
        )
    secagg = _secagg_sentence(facts)
    if secagg:
        sentences.append(secagg)

    cards = [
        card(
            "Privacy loss ε",
            esc(fmt_eps(facts.epsilon if facts.dp_used else None)),
            f"at δ{EQ}{esc(fmt_sci(facts.delta))}" if facts.dp_used and facts.delta is not None else "",
        )
    ]
    if facts.dp_used and facts.budget is not None:
        used = budget_used(facts.epsilon, facts.budget)
        cards.append(card("Budget used", esc(fmt_pct(used)), f"of ε{EQ}{esc(fmt_num(facts.budget))}"))
    if facts.dp_used or facts.rounds_total is not None:
        cards.append(card("Rounds trained with DP", esc(f"{trained:,}{of_total}")))
    if facts.smallest_sum is not None:
        cards.append(card("Smallest sum seen by server", esc(plural(facts.smallest_sum, "institution"))))
    return sentences, cards


def _federation_summary(report: Mapping[str, Any], facts: Facts) -> tuple[list[str], list[str]]:
    quoted = quoted_institutions(report)
    sentences: list[str] = []
    rounds = f"{plural(facts.rounds_total, 'round')}" if facts.rounds_total is not None else "its rounds"
    if quoted:
        sentences.append(f"This federation completed {rounds} with {plural(len(quoted), 'institution')}.")
    else:
        sentences.append(f"This federation completed {rounds}.")
    with_dp = [cid for cid, q in quoted.items() if quoted_dp_used(q)]
    without = [cid for cid in quoted if cid not in with_dp]
    if quoted:
        if len(with_dp) == len(quoted):
            sentences.append(f"All {len(quoted):,} institutions trained with differential privacy.")
        elif with_dp:
            names = ", ".join(esc(cid) for cid in sorted(without))
            sentences.append(
                f"{len(with_dp):,} of {len(quoted):,} institutions trained with differential privacy; "
                f"{names} did not, so {'its' if len(without) == 1 else 'their'} privacy loss is unbounded: "
                f"ε{EQ}{INFINITE_EPSILON}."
            )
        else:
            sentences.append(
                "No institution trained with differential privacy: there is no bound on privacy loss "
                f"(ε{EQ}{INFINITE_EPSILON})."
            )
    else:
        sentences.append("No institution reports were available, so no privacy loss is quoted here.")
    worst: tuple[float, str] | None = None
    fullest: tuple[float, str] | None = None
    for cid in with_dp:
        q = quoted[cid]
        eps = as_num(q.get("epsilon"))
        value = math.inf if eps is None else eps
        if worst is None or value > worst[0]:
            worst = (value, cid)
        used = budget_used(eps, as_num(q.get("budget")))
        if used is not None and (fullest is None or used > fullest[0]):
            fullest = (used, cid)
    if worst is not None:
        delta = as_num(quoted[worst[1]].get("delta"))
        among = "Among those that did, the" if without else "The"
        text = f"{among} largest privacy loss is ε{EQ}{esc(fmt_eps(worst[0]))} ({esc(worst[1])})"
        if delta is not None and math.isfinite(worst[0]):
            text += f" at δ{EQ}{fmt_sci(delta)}"
        if fullest is not None:
            text += f"; the largest share of a budget used is {esc(fmt_pct(fullest[0]))} ({esc(fullest[1])})"
        sentences.append(text + ".")
    if quoted and all(q.get("report_verified") is True for q in quoted.values()):
        sentences.append(
            "Each figure is quoted from that institution's own signed report, whose signature verified."
        )
    secagg = _secagg_sentence(facts)
    if secagg:
        sentences.append(secagg)
    cards = [card("Institutions", esc(f"{len(quoted):,}"))]
    if facts.rounds_total is not None:
        cards.append(card("Rounds completed", esc(f"{facts.rounds_total:,}")))
    if worst is not None:
        cards.append(
            card("Largest ε with DP" if without else "Largest ε", esc(fmt_eps(worst[0])), esc(worst[1]))
        )
    if facts.smallest_sum is not None:
        cards.append(card("Smallest sum seen by server", esc(plural(facts.smallest_sum, "institution"))))
    return sentences, cards


def render_summary(report: Mapping[str, Any], facts: Facts) -> str:
    """The plain-words paragraph and the key figures, for an institution or for the federation."""
    if facts.kind == "federation":
        sentences, cards = _federation_summary(report, facts)
    else:
        sentences, cards = _institution_summary(report, facts)
    # Sentences were built from escaped values and fixed markup.
    body = " ".join(sentences)
    return (
        f'<section class="summary" aria-label="Summary"><h2 class="visually-hidden">Summary</h2>'
        f'<p class="lead">{body}</p><div class="cards">{"".join(cards)}</div></section>'
    )
