"""What the report promises and how the promise was tested: the guarantee, its limits, the empirical audit.

The guarantee is stated first in one plain sentence and then formally (privacy unit, neighbouring
datasets, accountant); what it does not protect follows as a warning of its own, since a reader who only
sees an epsilon tends to assume it covers everything. The empirical audit is a measured lower bound on
epsilon from canary records: a test of the implementation, presented as such, never as the proof.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secfed.audit.fields import as_int, as_list, as_map, as_num, as_text
from secfed.audit.fmt import EQ, esc, fmt_eps, fmt_int, fmt_num, fmt_pct, fmt_sci
from secfed.audit.sections.blocks import kv_table

__all__ = ["render_empirical_audit", "render_guarantee", "render_not_covered"]


def render_guarantee(report: Mapping[str, Any]) -> str:
    """The guarantee in the report's own plain words, then its formal terms."""
    guarantee = as_map(report.get("guarantee"))
    parts: list[str] = []
    if as_text(guarantee.get("plain")):
        parts.append(f'<p class="plain">{esc(guarantee.get("plain"))}</p>')
    items: list[str] = []
    for key, label in (("privacy_unit", "Privacy unit"), ("adjacency", "Neighbouring datasets")):
        if as_text(guarantee.get(key)):
            items.append(f"<dt>{label}</dt><dd>{esc(guarantee.get(key))}</dd>")
    covered = [esc(c) for c in as_list(guarantee.get("covered")) if as_text(c)]
    if covered:
        items.append(
            "<dt>What the guarantee covers</dt><dd><ul>"
            + "".join(f"<li>{c}</li>" for c in covered)
            + "</ul></dd>"
        )
    accountant = as_text(guarantee.get("accountant")) or as_text(
        as_map(report.get("privacy")).get("accountant")
    )
    if accountant:
        items.append(f"<dt>Privacy accountant</dt><dd>{esc(accountant)}</dd>")
    if items:
        parts.append(f'<dl class="formal">{"".join(items)}</dl>')
    return "".join(parts)


def render_not_covered(report: Mapping[str, Any]) -> str:
    """What the guarantee does not protect, as a warning box."""
    items = [esc(x) for x in as_list(report.get("not_covered")) if as_text(x)]
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


def render_empirical_audit(report: Mapping[str, Any]) -> str:
    """The canary audit's verdict and parameters; unknown parameters are listed under their own key."""
    audit = as_map(report.get("empirical_audit"))
    if not audit:
        return ""
    claimed, bound = as_num(audit.get("claimed_epsilon")), as_num(audit.get("lower_bound"))
    passed = audit.get("passed")
    confidence = as_num(audit.get("confidence"))
    conf_text = f" (with {esc(fmt_pct(confidence))} confidence)" if confidence is not None else ""
    text = (
        "<p>As a test of the implementation, not a replacement for the proof, special “canary” records were "
        "inserted and an attacker tried to guess which of them were used in training. The better the "
        "guesses, the higher the privacy loss must be. "
    )
    if bound is not None and claimed is not None:
        text += (
            f"The guesses prove ε is at least {esc(fmt_num(bound))}{conf_text}, against a claimed "
            f"ε{EQ}{esc(fmt_eps(claimed))}. "
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
            shown = fmt_pct(as_num(value))
        elif key in ("claimed_epsilon", "lower_bound"):
            shown = fmt_eps(value) if key == "claimed_epsilon" else fmt_num(value)
        elif as_int(value) is not None:
            shown = fmt_int(value)
        elif as_num(value) is not None:
            shown = fmt_num(value)
        else:
            shown = as_text(value) or "—"
        rows.append((esc(label), esc(shown)))
    return text + verdict + kv_table(rows, caption="Audit parameters and outcome", compact=True)
