"""Audit reports of institutions whose coreset selection was released under distributed DP.

What they must say: the selection epsilon next to the training epsilon and their composition, what
covered the selection (Skellam noise through secure aggregation, epsilon at delta, the stages), and no
longer that the selection statistics carry no DP, but only when every selection release was DP. And
``audit verify`` must recompute those figures from the ledger and catch a report that drops the
not-covered line without the ledger backing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from secfed.audit.commands import verify_reports
from secfed.audit.fmt import fmt_eps
from secfed.audit.html import render_html
from secfed.audit.report import (
    NOT_COVERED,
    SELECTION_NOT_COVERED,
    ServerFacts,
    federation_report,
    institution_report,
    privacy_section,
)
from secfed.audit.signing import sign_document
from secfed.crypto.identity import Identity, TrustAnchor
from secfed.dp.accounting import DpEvent, epsilon_pld
from secfed.dp.ledger import PrivacyLedger
from secfed.dp.skellam import SkellamEvent
from secfed.pki.issue import create_ca, issue_client, issue_server

DELTA = 1e-5
TAG = {"dataset": "ab" * 32, "data": "records.jsonl"}
TRAINING = [DpEvent(1.1, 0.125, 8, 0), DpEvent(1.1, 0.125, 8, 1)]


def _stages() -> list[SkellamEvent]:
    return [
        SkellamEvent(4e6, 2000.0, 1414.0, "coreset-dp-mean"),
        SkellamEvent(4e6, 3000.0, 2000.0, "coreset-dp-moments"),
        SkellamEvent(1e6, 1.0, 1.0, "coreset-dp-hist"),
    ]


def _write_ledger(path: Path, institution: str, *, non_dp_selection: bool = False) -> PrivacyLedger:
    """Selection before training in each round, as FedHDS runs it."""
    book = PrivacyLedger(path, institution=institution, delta=DELTA, budget_epsilon=None)
    for event in TRAINING:
        assert event.round is not None
        book.record_selection(event.round, _stages(), TAG)
        book.record_round(event.round, event, {"max_grad_norm": 1.0, **TAG})
    if non_dp_selection:
        book.record_non_dp(2, release="selection", what="coreset-pca", extra=TAG)
    return book


class Run:
    """A run directory with a CA, two institutions' privacy ledgers and the reports' directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ca = create_ca("test CA")
        self.consortium = TrustAnchor(ca.certificate).consortium_id
        (root / "pki" / "ca").mkdir(parents=True)
        (root / "pki" / "ca" / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
        self.ids = {c: issue_client(ca, c) for c in ("inst01", "inst02")}
        self.server = issue_server(ca)
        self.ledgers = {c: root / "clients" / f"{c}.privacy.jsonl" for c in self.ids}
        (root / "audit").mkdir()

    def report(self, cid: str) -> dict[str, Any]:
        return institution_report(
            cid, root=self.root, audit_ledger=None, privacy_ledger=self.ledgers[cid], server=None
        )

    def federation(self, institutions: dict[str, dict[str, Any]]) -> dict[str, Any]:
        doc = federation_report(ServerFacts("run", "fed", "fedhds", [], []), institutions=institutions)
        doc["ledgers"] = []  # no coordinator state database in this synthetic run
        return doc

    def write(self, name: str, doc: dict[str, Any], signer: Identity, role: str) -> None:
        signed = sign_document(doc, signer, role=role, consortium=self.consortium)
        (self.root / "audit" / name).write_text(json.dumps(signed))

    def problems(self) -> dict[str, list[str]]:
        return {path.name: problems for path, _signer, problems in verify_reports(self.root)}


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


def test_the_report_shows_the_selection_epsilon_the_training_epsilon_and_the_total(run: Run) -> None:
    book = _write_ledger(run.ledgers["inst01"], "inst01")
    parts = book.spent_parts()
    privacy, _ = privacy_section(run.ledgers["inst01"])
    assert privacy["epsilon"] == book.spent().pld == parts.total
    assert privacy["epsilon_rdp"] == parts.total
    assert privacy["epsilon_training"] == epsilon_pld(TRAINING, DELTA) == parts.training
    assert privacy["epsilon_selection"] == parts.selection
    assert parts.selection < privacy["epsilon"] and parts.training < privacy["epsilon"]
    assert privacy["over_rounds"][-1]["epsilon"] == parts.total  # selection released so far included
    assert [r["round"] for r in privacy["selection_releases"]] == [0, 1]
    assert [s["what"] for s in privacy["selection_releases"][0]["stages"]] == [
        "coreset-dp-mean",
        "coreset-dp-moments",
        "coreset-dp-hist",
    ]
    assert privacy["datasets"] == [
        {"dataset": TAG["dataset"], "data": TAG["data"], "dp_rounds": 2, "non_dp": 0, "dp_selection": 2}
    ]

    report = run.report("inst01")
    plain = report["guarantee"]["plain"]
    assert f"training alone: epsilon = {parts.training:.3g}" in plain
    assert f"coreset selection alone: epsilon = {parts.selection:.3g}" in plain
    assert "Skellam noise" in plain and "coreset-dp-mean, coreset-dp-moments, coreset-dp-hist" in plain
    assert f"By themselves they cost epsilon = {parts.selection:.3g} at delta = 1e-05." in plain
    assert any("Skellam noise through secure aggregation" in c for c in report["guarantee"]["covered"])
    page = render_html(report)
    assert "ε coreset selection" in page and fmt_eps(parts.selection) in page
    assert "Coreset selection releases under DP" in page


def test_dp_selection_is_not_listed_as_not_covered(run: Run) -> None:
    _write_ledger(run.ledgers["inst01"], "inst01")
    report = run.report("inst01")
    assert SELECTION_NOT_COVERED not in report["not_covered"]
    assert report["not_covered"] == [item for item in NOT_COVERED if item != SELECTION_NOT_COVERED]
    assert "without DP noise" not in render_html(report)


def test_a_selection_release_without_dp_keeps_the_not_covered_line(run: Run) -> None:
    _write_ledger(run.ledgers["inst01"], "inst01", non_dp_selection=True)
    report = run.report("inst01")
    assert report["not_covered"] == list(NOT_COVERED)
    assert "(1 releases) carry no DP guarantee" in report["guarantee"]["plain"]
    assert "were released with distributed differential privacy" in report["guarantee"]["plain"]


def test_a_ledger_without_dp_selection_reports_as_before(run: Run) -> None:
    """Nothing added, so reports signed before DP selection existed still verify unchanged."""
    book = PrivacyLedger(run.ledgers["inst01"], institution="inst01", delta=DELTA, budget_epsilon=None)
    book.record_round(0, TRAINING[0], TAG)
    book.record_non_dp(1, release="selection", what="coreset-pca", extra=TAG)
    report = run.report("inst01")
    assert not {"epsilon_training", "epsilon_selection", "selection_releases"} & set(report["privacy"])
    assert report["privacy"]["datasets"][0].keys() == {"dataset", "data", "dp_rounds", "non_dp"}
    assert report["not_covered"] == list(NOT_COVERED)
    assert (
        report["guarantee"]["adjacency"] == "add-or-remove-one record (Poisson-subsampled Gaussian mechanism)"
    )
    assert report["privacy"]["epsilon"] == epsilon_pld(TRAINING[:1], DELTA)


def test_honest_reports_with_dp_selection_verify_and_the_federation_quotes_them(run: Run) -> None:
    _write_ledger(run.ledgers["inst01"], "inst01")
    _write_ledger(run.ledgers["inst02"], "inst02")
    reports = {c: run.report(c) for c in run.ids}
    for cid, doc in reports.items():
        run.write(f"{cid}.json", doc, run.ids[cid], "client")
    federation = run.federation(reports)
    assert SELECTION_NOT_COVERED not in federation["not_covered"]
    quoted = federation["institutions"]["inst01"]
    assert quoted["epsilon_selection"] == reports["inst01"]["privacy"]["epsilon_selection"]
    assert quoted["dp_selection_releases"] == 2 and quoted["selection_dp_covered"] is True
    assert (
        "institution(s) inst01, inst02 were released with distributed differential privacy"
        in (federation["guarantee"]["plain"])
    )
    run.write("federation.json", federation, run.server, "server")
    assert run.problems() == {"inst01.json": [], "inst02.json": [], "federation.json": []}


def test_a_report_signed_before_the_first_selection_release_still_verifies(run: Run) -> None:
    book = PrivacyLedger(run.ledgers["inst01"], institution="inst01", delta=DELTA, budget_epsilon=None)
    book.record_round(0, TRAINING[0], TAG)
    run.write("inst01.json", run.report("inst01"), run.ids["inst01"], "client")
    book.record_selection(1, _stages(), TAG)
    assert run.problems() == {"inst01.json": []}


def test_an_institution_understating_its_selection_epsilon_is_caught(run: Run) -> None:
    _write_ledger(run.ledgers["inst01"], "inst01")
    lie = run.report("inst01")
    lie["privacy"]["epsilon_selection"] /= 2
    lie["privacy"]["selection_releases"][0]["stages"][0]["lam"] *= 10
    run.write("inst01.json", lie, run.ids["inst01"], "client")
    found = run.problems()["inst01.json"]
    assert any(p.startswith("privacy.epsilon_selection is") for p in found), found
    assert any(p.startswith("privacy.selection_releases is") for p in found), found


def test_a_report_dropping_the_not_covered_line_without_dp_selection_is_caught(run: Run) -> None:
    _write_ledger(run.ledgers["inst01"], "inst01", non_dp_selection=True)
    lie = run.report("inst01")
    lie["not_covered"].remove(SELECTION_NOT_COVERED)
    run.write("inst01.json", lie, run.ids["inst01"], "client")
    assert any("not_covered leaves out" in p for p in run.problems()["inst01.json"])


def test_a_federation_report_dropping_the_not_covered_line_is_caught(run: Run) -> None:
    """One institution's selection was all DP, the other's was not: the federation keeps the line."""
    _write_ledger(run.ledgers["inst01"], "inst01")
    _write_ledger(run.ledgers["inst02"], "inst02", non_dp_selection=True)
    reports = {c: run.report(c) for c in run.ids}
    for cid, doc in reports.items():
        run.write(f"{cid}.json", doc, run.ids[cid], "client")
    federation = run.federation(reports)
    assert federation["not_covered"] == list(NOT_COVERED)
    federation["not_covered"].remove(SELECTION_NOT_COVERED)
    run.write("federation.json", federation, run.server, "server")
    found = run.problems()
    assert found["inst01.json"] == [] and found["inst02.json"] == []
    assert any("not_covered leaves out" in p for p in found["federation.json"]), found
