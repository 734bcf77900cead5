"""`audit verify` checks what a report claims, not only that it is signed (attacker review).

The holes it closes: an institution report that left out its privacy ledger could claim DP with any
epsilon while the ledger held an update released without DP; a coordinator's federation report was
checked against the institution reports only for epsilon and delta, so it could hide a release without
DP, a refusal or a retry, word the guarantee as "every institution trained with DP", leave an
institution out, or be signed by an institution instead of the coordinator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from secfed.audit.commands import verify_reports
from secfed.audit.report import ServerFacts, federation_report, institution_report
from secfed.audit.signing import sign_document
from secfed.crypto.identity import Identity, TrustAnchor
from secfed.dp.accounting import DpEvent
from secfed.dp.ledger import PrivacyLedger
from secfed.pki.issue import create_ca, issue_client, issue_server


class Run:
    def __init__(self, root: Path) -> None:
        self.root = root
        ca = create_ca("test CA")
        self.consortium = TrustAnchor(ca.certificate).consortium_id
        (root / "pki" / "ca").mkdir(parents=True)
        (root / "pki" / "ca" / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
        self.ids = {c: issue_client(ca, c) for c in ("inst01", "inst02")}
        self.server = issue_server(ca)
        self.ledger = root / "clients" / "inst02.privacy.jsonl"
        book = PrivacyLedger(self.ledger, institution="inst02", delta=1e-5, budget_epsilon=None)
        book.record_round(0, DpEvent(1.1, 0.125, 8, 0), {"max_grad_norm": 1.0})
        book.record_non_dp(1, release="update", what="fedit-lora")
        self.honest = institution_report(
            "inst02", root=root, audit_ledger=None, privacy_ledger=self.ledger, server=None
        )
        (root / "audit").mkdir()

    def write(self, name: str, doc: dict[str, Any], signer: Identity, role: str) -> None:
        signed = sign_document(doc, signer, role=role, consortium=self.consortium)
        (self.root / "audit" / name).write_text(json.dumps(signed))

    def federation(self, institutions: dict[str, dict[str, Any]]) -> dict[str, Any]:
        doc = federation_report(ServerFacts("run", "fed", "fedit-lora", [], []), institutions=institutions)
        doc["ledgers"] = []  # no coordinator state database in this synthetic run
        return doc

    def problems(self) -> dict[str, list[str]]:
        return {path.name: problems for path, _signer, problems in verify_reports(self.root)}


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


def test_honest_reports_verify(run: Run) -> None:
    run.write("inst02.json", run.honest, run.ids["inst02"], "client")
    run.write("federation.json", run.federation({"inst02": run.honest}), run.server, "server")
    assert run.problems() == {"inst02.json": [], "federation.json": []}


def test_a_dp_claim_without_the_privacy_ledger_is_caught(run: Run) -> None:
    lie = json.loads(json.dumps(run.honest))
    lie["ledgers"] = []
    lie["privacy"].update(non_dp_releases=[], no_dp_guarantee_since_round=None, epsilon=0.9, epsilon_rdp=1.0)
    run.write("inst02.json", lie, run.ids["inst02"], "client")
    assert any("covers no privacy ledger" in p for p in run.problems()["inst02.json"])


def test_a_reworded_guarantee_is_caught(run: Run) -> None:
    lie = json.loads(json.dumps(run.honest))
    lie["guarantee"]["plain"] = "The adapter updates were trained with differentially private SGD."
    run.write("inst02.json", lie, run.ids["inst02"], "client")
    assert "guarantee does not follow from the privacy section" in run.problems()["inst02.json"]


def test_a_federation_report_hiding_a_release_without_dp_is_caught(run: Run) -> None:
    run.write("inst02.json", run.honest, run.ids["inst02"], "client")
    fed = run.federation({"inst02": run.honest})
    fed["institutions"]["inst02"].update(
        no_dp_guarantee_since_round=None, non_dp_releases={"update": 0, "selection": 0}
    )
    fed["guarantee"] = run.federation({})["guarantee"] | {"dp_used": True}
    run.write("federation.json", fed, run.server, "server")
    found = run.problems()["federation.json"]
    assert any("institutions.inst02.no_dp_guarantee_since_round" in p for p in found), found
    assert any("institutions.inst02.non_dp_releases" in p for p in found), found
    assert "guarantee does not follow from the quoted institutions" in found


def test_a_federation_report_leaving_an_institution_out_is_caught(run: Run) -> None:
    run.write("inst02.json", run.honest, run.ids["inst02"], "client")
    run.write("federation.json", run.federation({}), run.server, "server")
    assert any("does not quote it" in p for p in run.problems()["federation.json"])


def test_a_federation_report_signed_by_an_institution_is_caught(run: Run) -> None:
    run.write("inst02.json", run.honest, run.ids["inst02"], "client")
    run.write("federation.json", run.federation({"inst02": run.honest}), run.ids["inst01"], "client")
    assert any("must be signed by the coordinator" in p for p in run.problems()["federation.json"])


def test_a_report_issued_in_another_consortium_is_refused(run: Run) -> None:
    """The attack: an institution that uses one key in two consortia has its report of one presented,
    with a certificate of this CA, as a report of this federation. The consortium is signed in the
    report, so the CA hash it names must be this one."""
    body = json.loads(json.dumps(run.honest))
    signed = sign_document(body, run.ids["inst02"], role="client", consortium=bytes(32))
    (run.root / "audit" / "inst02.json").write_text(json.dumps(signed))
    assert any("a report of another federation" in p for p in run.problems()["inst02.json"])
    signed["consortium"] = run.consortium.hex()  # and the field cannot be rewritten after signing
    (run.root / "audit" / "inst02.json").write_text(json.dumps(signed))
    assert any("field consortium was edited" in p for p in run.problems()["inst02.json"])
