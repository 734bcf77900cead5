"""The audit report's HTML and PDF rendering: self-contained, escaped, complete, and clean in a real browser.

The browser checks load the page in headless Chromium through the DevTools protocol on a pipe
(:func:`secfed.audit.pdf.inspect_page`): every console call with its level, uncaught exception and
browser log entry (failed resource loads, CSP violations, SVG/CSS parse errors) is collected, as is
every URL the page requested. A clean report has no warnings or errors and requests nothing but
itself. Screenshots go to the pytest temp dir and, if ``SECFED_SCREENSHOT_DIR`` is set, are copied
there for a human to look at.
"""

from __future__ import annotations

import copy
import html
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from secfed.audit.fmt import fmt_eps, fmt_sci
from secfed.audit.html import render_html
from secfed.audit.pdf import ReportRenderError, find_chromium, inspect_page, render_pdf, screenshot

pytestmark = pytest.mark.timeout(120)

XSS = "<script>alert(1)</script>"

NOT_COVERED = [
    "Evaluation metrics (loss, Rouge-L, accuracy) computed on held-out data are not protected by the DP guarantee.",
    "Hyper-parameter choices and any tuning done by looking at results are not accounted for.",
    "Coreset selection statistics are released as secure-aggregation sums without DP noise.",
    "The base model and anything it memorised before federated tuning.",
]

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" * 2


def _secagg(rounds: Sequence[int], *, n: int = 4, dropped_in: int = 2) -> list[dict[str, Any]]:
    rows = []
    for r in rounds:
        dropped = 1 if r == dropped_in else 0
        rows.append(
            {
                "round": r,
                "stage": "update",
                "n": n,
                "threshold": 3,
                "colluding": 1,
                "min_cohort": 3,
                "ring_bits": 64,
                "segments": {
                    "delta": {"length": 1000, "frac_bits": 32},
                    "weight": {"length": 1, "frac_bits": 0},
                },
                "clipped_fraction": 0.0 if r else 0.0012,
                "contributors": n - dropped,
                "dropped": dropped,
            }
        )
    return rows


def _rounds(rounds: int, *, institution: bool, selection: bool) -> list[dict[str, Any]]:
    """Round records; in the institution's run, hospital-a refused round 3 (its budget guard)."""
    rows: list[dict[str, Any]] = []
    for r in range(rounds):
        dropped = 1 if r == 2 else 0
        refused = ["hospital-a"] if r == 3 and institution else []
        row: dict[str, Any] = {
            "round": r,
            "contributors": 4 - dropped - len(refused),
            "dropped": dropped,
            "refused": refused,
            "learned": {"update": {"delta": [1000], "weight": [1]}},
            "selection": {"selected": 12 + r, "records": 320, "fraction": (12 + r) / 320}
            if selection
            else None,
        }
        if selection:
            row["learned"] = {"histogram": {"counts": [289]}, "pca": {"sums": [16, 64]}, **row["learned"]}
        if institution:
            row["participated"] = not refused
        rows.append(row)
    return rows


def institution_report() -> dict[str, Any]:
    """A realistic signed institution report: 4 of 5 rounds with DP, one refusal, coreset, empirical audit."""
    over = [
        {"round": 0, "epsilon": 1.21, "epsilon_rdp": 1.52},
        {"round": 1, "epsilon": 1.88, "epsilon_rdp": 2.31},
        {"round": 2, "epsilon": 2.59, "epsilon_rdp": 3.11},
        {"round": 4, "epsilon": 3.2149, "epsilon_rdp": 3.874},
    ]
    return {
        "format": "secfed-audit-report",
        "version": 1,
        "kind": "institution",
        "institution": "hospital-a",
        "generated_at": "2026-11-23T22:50:00Z",
        "identification": {
            "run_id": "run-7f3a9c",
            "federation": "north-consortium",
            "task": "fedit",
            "code_version": "0.1.0 (git 1a2b3c4d5e6f)",
            "libraries": {"torch": "2.13.0", "opacus": "1.6.0", "dp-accounting": "0.6.1", "peft": "0.21.0"},
            "base_model_hash": "9f" * 32,
            "final_adapter_hash": "c0ffee" * 10 + "abcd",
            "rounds_completed": 5,
        },
        "guarantee": {
            "dp_used": True,
            "plain": "The adapter updates that institution hospital-a sent were trained with differentially "
            "private SGD.",
            "privacy_unit": "one training sequence (one instruction record) held by one institution",
            "adjacency": "add-or-remove-one record (Poisson-subsampled Gaussian mechanism)",
            "covered": [
                "every adapter update the institution released",
                "the global adapter (post-processing)",
            ],
            "accountant": "privacy loss distribution (PLD), with Renyi DP as a cross-check",
        },
        "mechanism": [
            {
                "round": r,
                "noise_multiplier": 1.1,
                "sample_rate": 0.125,
                "steps": 8,
                "max_grad_norm": 1.0,
                "expected_batch_size": 8,
                "n_records": 64,
                "empty_batches": 0,
            }
            for r in (0, 1, 2, 4)
        ],
        "privacy": {
            "dp_used": True,
            "delta": 1e-5,
            "epsilon": 3.2149,
            "epsilon_rdp": 3.874,
            "budget": 8.0,
            "budget_left": 4.7851,
            "rounds_trained": [0, 1, 2, 4],
            "over_rounds": over,
            "refusals": [{"round": 3, "reason": f"budget guard: would exceed ε=8 {XSS}"}],
        },
        "secure_aggregation": _secagg([0, 1, 2, 4]),  # its own sessions: not round 3
        "rounds": _rounds(5, institution=True, selection=True),
        "not_covered": [*NOT_COVERED, f"Injected {XSS} item"],
        "empirical_audit": {
            "claimed_epsilon": 1.5,
            "lower_bound": 0.4,
            "passed": True,
            "canaries": 1000,
            "guesses": 200,
            "correct": 150,
            "delta": 1e-5,
            "noise_multiplier": 2.1,
            "noise_scale": 1.0,
            "confidence": 0.95,
        },
        "ledgers": [
            {
                "name": "privacy",
                "path": "clients/hospital-a.privacy.jsonl",
                "entries": 6,
                "head": "ab12" * 16,
            },
            {"name": "audit", "path": "clients/hospital-a.audit.jsonl", "entries": 14, "head": "cd34" * 16},
        ],
        "field_digests": {"privacy.epsilon": "ee" * 32},
        "signature": {
            "role": "client",
            "signer": "hospital-a",
            "algorithm": "ECDSA-P256-SHA256",
            "certificate_chain": PEM,
            "value": "MEUCIQD" + "A" * 80,
        },
    }


def federation_report() -> dict[str, Any]:
    """The coordinator's report quoting three institutions (one without DP)."""
    institutions = {}
    for i, cid in enumerate(("hospital-a", "hospital-b", "clinic-c")):
        dp = cid != "clinic-c"
        over = [
            {"round": r, "epsilon": 0.9 * (r + 1) + 0.3 * i, "epsilon_rdp": 1.1 * (r + 1)} for r in range(4)
        ]
        institutions[cid] = {
            "dp_used": dp,
            "epsilon": over[-1]["epsilon"] if dp else None,
            "epsilon_rdp": over[-1]["epsilon_rdp"] if dp else None,
            "delta": 1e-5,
            "budget": 8.0 if dp else None,
            "rounds_trained": [0, 1, 2, 3],
            "refusals": 0,
            "over_rounds": over if dp else [],
            "report_verified": True,
        }
    report = institution_report()
    return {
        "format": "secfed-audit-report",
        "version": 1,
        "kind": "federation",
        "generated_at": "2026-11-23T22:55:00Z",
        "identification": {**report["identification"], "rounds_completed": 4},
        "guarantee": {
            **report["guarantee"],
            "plain": "Each institution trained with differentially private SGD.",
        },
        "institutions": institutions,
        "secure_aggregation": _secagg(range(4), dropped_in=2),
        "rounds": _rounds(4, institution=False, selection=False),
        "integrity": {"state_database_ok": True, "problems": []},
        "not_covered": NOT_COVERED,
        "empirical_audit": None,
        "ledgers": [
            {"name": "server-state", "path": "state/state.sqlite", "entries": 42, "head": "ef56" * 16}
        ],
        "signature": {"role": "server", "signer": "coordinator", "algorithm": "ECDSA-P256-SHA256"},
    }


def minimal_report() -> dict[str, Any]:
    """No DP, no empirical audit, no coreset, no server facts, unsigned."""
    return {
        "format": "secfed-audit-report",
        "version": 1,
        "kind": "institution",
        "institution": "hospital-z",
        "privacy": {"dp_used": False},
        "guarantee": {"dp_used": False, "plain": "No differential privacy was applied."},
        "mechanism": [],
        "rounds": [],
        "not_covered": NOT_COVERED[:2],
        "empirical_audit": None,
    }


REPORTS = {"institution": institution_report, "federation": federation_report, "minimal": minimal_report}


def _plain(text: str) -> str:
    """Formulas are joined by no-break spaces so that "ε = 3.21" never wraps; compare with plain spaces."""
    return text.replace("\u00a0", " ")


def _headings(page: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h2 id=[^>]*>(.*?)</h2>", page)]


# --------------------------------------------------------------------------- pure HTML checks


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_one_self_contained_document(name: str) -> None:
    page = render_html(REPORTS[name]())
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<html") == 1 and page.rstrip().endswith("</html>")
    lowered = page.lower()
    for forbidden in (
        "http://",
        "https://",
        "src=",
        "<link",
        "<script",
        "@import",
        "url(",
        "<img",
        "<iframe",
    ):
        assert forbidden not in lowered, forbidden
    assert "Content-Security-Policy" in page  # nothing may be loaded even if a string slipped through


def test_institution_key_numbers_and_sections() -> None:
    page = _plain(render_html(institution_report()))
    assert "Privacy audit report — institution hospital-a" in page
    assert "This institution trained in 4 of 5 rounds with differential privacy." in page
    assert "ε = 3.21 at δ = 10⁻⁵ (RDP cross-check 3.87), within its budget of 8 (40 % used)" in page
    assert "at least 3 institutions" in page
    assert "Signed by <strong>hospital-a</strong>" in page
    for number in (
        "4.79",
        "1.52",
        "0.125",
        "2⁶⁴",
        "<code>delta</code>: 32",
        "0.12 %",
        "1,000 numbers",
        "16 × 64 array",
    ):
        assert number in page, number
    for item in NOT_COVERED:
        assert html.escape(item) in page
    assert _headings(page) == [
        "1.Identification",
        "2.The guarantee",
        "3.Mechanism: differentially private training",
        "4.Privacy loss",
        "5.Secure aggregation per round",
        "6.Data selected per round",
        "7.What the server learned, per round",
        "8.What is NOT covered",
        "9.Empirical audit",
        "10.Ledgers and signature",
    ]
    assert "field_digests" not in page and "ee" * 32 not in page
    assert "abab" not in page  # ledger heads are abbreviated ...
    assert 'title="' + "ab12" * 16 + '"' in page  # ... with the full hash kept as a tooltip


def test_plots_are_inline_svg_with_titles() -> None:
    page = render_html(institution_report())
    svgs = re.findall(r"<svg\b[^>]*>.*?</svg>", page, flags=re.S)
    titles = [re.search(r"<title id=[^>]*>(.*?)</title>", svg).group(1) for svg in svgs]  # type: ignore[union-attr]
    assert titles == [
        "ε over rounds",
        "Cohort size and dropouts per round",
        "Share of records selected per round",
    ]
    for svg in svgs:
        assert 'role="img"' in svg and "aria-labelledby" in svg and "<desc" in svg
        assert "xmlns" not in svg  # inline SVG in HTML5 needs no namespace URL
    epsilon_chart = svgs[0]
    assert "hospital-a: ε (PLD)" in epsilon_chart and "hospital-a: ε (RDP cross-check)" in epsilon_chart
    assert "budget ε = 8" in epsilon_chart and 'stroke-dasharray="7 5"' in epsilon_chart
    assert "Cumulative ε" in epsilon_chart and "Round" in epsilon_chart


def test_federation_has_one_line_per_dp_institution() -> None:
    page = _plain(render_html(federation_report()))
    assert "Privacy audit report — federation north-consortium" in page
    assert "2 of 3 institutions trained with differential privacy; clinic-c did not" in page
    assert "Among those that did, the largest privacy loss is ε = 3.9 (hospital-b)" in page
    chart = re.search(r'<svg\b[^>]*aria-labelledby="chart-epsilon-title.*?</svg>', page, flags=re.S)
    assert chart is not None
    paths = re.findall(r"<path d=", chart.group(0))
    assert len(paths) == 2  # clinic-c trained without DP: no line, but listed in the table
    assert "hospital-a" in chart.group(0) and "hospital-b" in chart.group(0)
    assert "clinic-c" in page and "∞ (no privacy)" in page
    assert "passed its integrity checks" in page
    assert "Empirical audit" not in page and "Mechanism" not in page


def test_minimal_report_without_dp() -> None:
    page = _plain(render_html(minimal_report()))
    assert "Privacy audit report — institution hospital-z" in page
    assert "ε = ∞ (no privacy)" in page
    assert "Unsigned" in page
    assert "<svg" not in page
    assert _headings(page) == [
        "1.Identification",
        "2.The guarantee",
        "3.Privacy loss",
        "4.What is NOT covered",
    ]


def test_every_report_string_is_escaped() -> None:
    report = institution_report()
    report["institution"] = XSS
    report["identification"]["libraries"][XSS] = XSS
    report["identification"]["task"] = '"><img onerror=x>'
    report["signature"]["signer"] = XSS
    report["rounds"][0]["learned"] = {XSS: {XSS: [3]}}
    report["ledgers"][0]["head"] = XSS
    report["secure_aggregation"][0]["segments"] = {XSS: {"length": 1, "frac_bits": 0}}
    report["empirical_audit"][XSS] = XSS
    page = render_html(report)
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert html.escape(XSS) in page
    assert "&quot;&gt;&lt;img onerror=x&gt;" in page


def test_the_page_template_escapes_report_strings_and_loads_nothing() -> None:
    """The title comes from the report through the template, the refusal reason through a section builder:
    both arrive escaped (the template's autoescaping is what escapes the title), and the page references
    nothing outside itself."""
    report = institution_report()
    report["institution"] = XSS
    report["privacy"]["refusals"] = [{"round": 3, "reason": XSS}]
    page = render_html(report)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert "<script" not in page.lower()
    assert f"<title>Privacy audit report — institution {escaped}</title>" in page
    assert f"<td>{escaped}</td>" in page  # the refusal reason, in the refusals table
    assert """<meta http-equiv="Content-Security-Policy" content="default-src 'none';""" in page
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))
    for external in ("src=", "srcset=", "action=", "<link", "url(", "@import", "://"):
        assert external not in page.lower(), external


def test_wrong_types_and_unknown_keys_do_not_crash() -> None:
    report = copy.deepcopy(institution_report())
    report.update(
        {
            "mechanism": "oops",
            "privacy": {"dp_used": True, "epsilon": None, "delta": "x", "over_rounds": [1, {"round": "a"}]},
            "secure_aggregation": [None, {"round": 0, "segments": [1, 2]}],
            "rounds": [{"round": 0, "learned": {"update": None}, "selection": "n/a"}],
            "ledgers": {"name": "x"},
            "signature": "unsigned",
            "something_new": {"nested": [1, 2]},
            "identification": {"libraries": ["torch"]},
        }
    )
    page = _plain(render_html(report))
    assert "Its privacy loss is unbounded: ε = ∞ (no privacy)." in page
    assert "something_new" not in page


def test_over_budget_and_unbounded_epsilon() -> None:
    over = institution_report()
    over["privacy"].update({"epsilon": 9.61, "budget_left": 0.0})
    page = _plain(render_html(over))
    assert "<strong>over</strong> its budget of 8 (120 % used)" in page
    assert 'class="meter over"' in page and "120 % of the budget ε = 8 used: over budget" in page

    unbounded = institution_report()
    unbounded["privacy"].update({"epsilon": None, "epsilon_rdp": None, "budget_left": None})
    unbounded["privacy"]["over_rounds"][-1].update({"epsilon": None, "epsilon_rdp": None})
    page = _plain(render_html(unbounded))
    assert "Its privacy loss is unbounded: ε = ∞ (no privacy)." in page
    assert 'class="meter' not in page
    assert page.count("<circle") == 6  # the unbounded last round leaves a gap in both lines, not a point


def test_number_formatting() -> None:
    assert fmt_eps(3.2149) == "3.21"
    assert fmt_eps(None) == fmt_eps(float("inf")) == "∞ (no privacy)"
    assert fmt_eps(12345.6) == "12,346"
    assert fmt_sci(1e-5) == "10⁻⁵"
    assert _plain(fmt_sci(2.5e-6)) == "2.5 × 10⁻⁶"


# --------------------------------------------------------------------------- headless Chromium

chromium_missing = pytest.mark.skipif(
    find_chromium() is None, reason="headless Chromium not installed (Debian package `chromium`)"
)


@chromium_missing
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_renders_in_chromium_without_console_errors(name: str, tmp_path: Path) -> None:
    page = tmp_path / f"audit-{name}.html"
    page.write_text(render_html(REPORTS[name]()), encoding="utf-8")
    seen = inspect_page(page)
    assert seen.problems == (), seen.problems
    assert not any("Uncaught" in e.text for e in seen.entries)
    assert seen.requests == (page.resolve().as_uri(),)  # the page itself and nothing else

    png = tmp_path / f"audit-{name}.png"
    screenshot(page, png, width=1200, height=2400)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    target = os.environ.get("SECFED_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(target) / png.name)


@chromium_missing
def test_inspect_page_catches_errors(tmp_path: Path) -> None:
    """The detector itself: a broken page must be reported (else a clean result would prove nothing)."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("bad"); nope();</script>'
        "</body></html>",
        encoding="utf-8",
    )
    problems = {(e.source, e.text.split(":")[0]) for e in inspect_page(page).problems}
    assert ("console-api", "bad") in problems
    assert any(source == "exception" for source, _ in problems)
    assert any(source == "network" for source, _ in problems)


@chromium_missing
def test_render_pdf(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report.pdf"
    render_pdf(render_html(institution_report()), out)
    assert out.read_bytes().startswith(b"%PDF")
    assert out.stat().st_size > 10_000


def test_render_pdf_without_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_chromium() is None
    with pytest.raises(ReportRenderError, match="install Debian's chromium package"):
        render_pdf("<p>x</p>", tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()


def test_render_pdf_reports_chromium_failure(tmp_path: Path) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'first line' >&2\necho 'fatal: cannot open display' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(ReportRenderError, match=r"exit code 3(.|\n)*cannot open display"):
        render_pdf("<p>x</p>", tmp_path / "r.pdf", chromium=str(fake))
    assert not (tmp_path / "r.pdf").exists()


def test_dp_selection_rounds_say_the_choice_was_private_not_zero() -> None:
    """Under DP selection the server never learns how many records were chosen: the report must not show
    a 0 % bar (what a missing count would become), but say the choice was private."""
    report = institution_report()
    for r in report["rounds"]:
        r["selection"] = {"selected": None, "records": 803, "fraction": None, "mode": "fedhds-dp"}
    page = _plain(render_html(report))
    assert page.count("chosen privately") == len(report["rounds"])
    assert "chart-coreset-title" not in page
    mixed = institution_report()
    mixed["rounds"][0]["selection"] = {
        "selected": None,
        "records": 803,
        "fraction": None,
        "mode": "fedhds-dp",
    }
    page = _plain(render_html(mixed))
    assert page.count("chosen privately") == 1 and "chart-coreset-title" in page
