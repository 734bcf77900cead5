"""Signed audit reports over a real run directory: built from ledgers, verified, and every edit caught.

One ``secfed simulate --preset smoke`` run (real server and client processes over mTLS) provides the
state database, the kits and each institution's audit ledger; DP rounds are written to the
institutions' privacy ledgers directly (the toy task does not train), so the report's epsilon can be
compared with the accountant on known settings.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import pytest

from secfed.chain import HashChain
from secfed.cli import main
from secfed.dp.accounting import DpEvent, epsilon_pld, epsilon_rdp
from secfed.dp.ledger import PrivacyLedger

pytestmark = pytest.mark.timeout(120)

EVENTS = {
    "inst00": [DpEvent(1.1, 0.125, 8, 0), DpEvent(1.1, 0.125, 8, 1)],
    "inst01": [DpEvent(0.9, 0.25, 4, 0)],
    "inst02": [],
}


TAG = {"dataset": "ab" * 32, "data": "records.jsonl"}


def _privacy_ledger(run: Path, cid: str) -> Path:
    doc = tomllib.loads((run / "clients" / f"{cid}.toml").read_text())
    return run / "clients" / str(doc["privacy"]["ledger"])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("audit") / "run"
    assert main(["simulate", "--preset", "smoke", "--out", str(run)]) == 0
    for cid, events in EVENTS.items():
        ledger = PrivacyLedger(_privacy_ledger(run, cid), institution=cid, delta=1e-5, budget_epsilon=8.0)
        for event in events:
            assert event.round is not None
            ledger.record_round(event.round, event, {"max_grad_norm": 1.0, "expected_batch_size": 8, **TAG})
        if cid == "inst00":
            ledger.record_resubmission(1, TAG)  # round 1 was retried with the kept update
        if cid == "inst01":
            ledger.record_refusal(1, "Institution 'inst01' refuses round 1: over budget.", 9.5)
        if cid == "inst02":
            ledger.record_non_dp(0, release="selection", what="coreset-pca", extra=TAG)
            ledger.record_non_dp(1, release="update", what="fedit-lora", extra=TAG)
    assert main(["audit", "report", str(run), "--format", "json"]) == 0
    return run


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    """A private copy, so each test may tamper with it."""
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def _verify(target: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["audit", "verify", str(target), "--json"])
    return code, json.loads(capsys.readouterr().out)


def _problems(findings: dict[str, Any]) -> str:
    return "\n".join(p for r in findings["reports"] for p in r["problems"])


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _save(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2))


def test_reports_are_written_signed_and_verify(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = {p.name for p in (run / "audit").iterdir()}
    assert {"inst00.json", "inst01.json", "inst02.json", "federation.json"} <= names
    code, findings = _verify(run, capsys)
    assert code == 0 and findings["ok"], _problems(findings)
    signers = {Path(r["report"]).stem: r["signer"] for r in findings["reports"]}
    assert signers["inst00"] == "inst00" and signers["inst01"] == "inst01"
    assert "server" in signers["federation"].lower() or signers["federation"]


def test_epsilon_in_the_report_equals_the_accountant_on_the_ledger(run: Path) -> None:
    for cid, events in EVENTS.items():
        privacy = _load(run / "audit" / f"{cid}.json")["privacy"]
        if not events:
            assert privacy["dp_used"] is False and privacy["epsilon"] is None
            continue
        assert privacy["epsilon"] == pytest.approx(epsilon_pld(events, 1e-5), rel=1e-12)
        assert privacy["epsilon_rdp"] == pytest.approx(epsilon_rdp(events, 1e-5), rel=1e-12)
        assert [r["epsilon"] for r in privacy["over_rounds"]] == pytest.approx(
            [epsilon_pld(events[: k + 1], 1e-5) for k in range(len(events))], rel=1e-12
        )
        assert privacy["budget_left"] == pytest.approx(8.0 - privacy["epsilon"])
    inst01 = _load(run / "audit" / "inst01.json")["privacy"]
    assert inst01["refusals"] == [
        {"round": 1, "reason": "Institution 'inst01' refuses round 1: over budget."}
    ]
    federation = _load(run / "audit" / "federation.json")
    assert (
        federation["institutions"]["inst00"]["epsilon"]
        == _load(run / "audit" / "inst00.json")["privacy"]["epsilon"]
    )


def test_reports_list_retries_releases_without_dp_and_the_records(run: Path) -> None:
    """What the institution's ledger says beyond epsilon reaches both reports: the retry that cost
    nothing, the releases without DP (and that the federation can no longer claim DP for everyone),
    and which records each release was about."""
    inst00 = _load(run / "audit" / "inst00.json")["privacy"]
    assert inst00["retries"] == [{"round": 1, "dataset": TAG["dataset"]}]
    assert inst00["datasets"] == [{**TAG, "dp_rounds": 2, "non_dp": 0}]
    inst02 = _load(run / "audit" / "inst02.json")
    assert inst02["privacy"]["datasets"] == [{**TAG, "dp_rounds": 0, "non_dp": 2}]
    assert "WITHOUT differential privacy from round 1" in inst02["guarantee"]["plain"]
    federation = _load(run / "audit" / "federation.json")
    quoted = federation["institutions"]
    assert quoted["inst00"]["retried_rounds"] == [1] and quoted["inst01"]["refused_rounds"] == [1]
    assert quoted["inst02"]["non_dp_releases"] == {"update": 1, "selection": 1, "loss": 0}
    assert quoted["inst02"]["no_dp_guarantee_since_round"] == 1
    assert not federation["guarantee"]["dp_used"]
    assert "inst02 released model updates trained WITHOUT" in federation["guarantee"]["plain"]


def test_reports_state_the_secure_aggregation_facts_and_what_is_not_covered(run: Path) -> None:
    report = _load(run / "audit" / "inst00.json")
    sessions = report["secure_aggregation"]
    assert [s["round"] for s in sessions] == [0, 1]
    assert all(s["n"] == 3 and s["threshold"] == 3 and s["clipped_fraction"] == 0.0 for s in sessions)
    assert [r["participated"] for r in report["rounds"]] == [True, True]
    assert any("Evaluation metrics" in item for item in report["not_covered"])
    assert any("Coreset selection" in item for item in report["not_covered"])
    federation = _load(run / "audit" / "federation.json")
    assert [(s["round"], s["stage"], s["n"]) for s in federation["secure_aggregation"]] == [
        (0, "update", 3),
        (1, "update", 3),
    ]
    assert federation["rounds"][0]["learned"] == {"update": {"x": [16], "w": [1]}}


@pytest.mark.parametrize(
    ("path", "edit", "named"),
    [
        (("privacy", "epsilon"), lambda v: v / 2, "field privacy.epsilon was edited"),
        (("privacy", "budget"), lambda v: 100.0, "field privacy.budget was edited"),
        (("identification", "run_id"), lambda v: "another-run", "field identification.run_id was edited"),
        (("guarantee", "plain"), lambda v: v + " Nothing to see.", "field guarantee.plain was edited"),
    ],
)
def test_editing_any_report_field_fails_verify_naming_it(
    run: Path, capsys: pytest.CaptureFixture[str], path: tuple[str, str], edit: Any, named: str
) -> None:
    report = run / "audit" / "inst00.json"
    doc = _load(report)
    doc[path[0]][path[1]] = edit(doc[path[0]][path[1]])
    _save(report, doc)
    code, findings = _verify(report, capsys)
    assert code == 1 and named in _problems(findings)
    assert "signature" in _problems(findings)


def test_deleting_or_reordering_report_entries_fails_verify(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run / "audit" / "inst00.json"
    doc = _load(report)
    last = len(doc["not_covered"]) - 1
    del doc["not_covered"][0]
    doc["mechanism"].reverse()
    _save(report, doc)
    code, findings = _verify(report, capsys)
    problems = _problems(findings)
    assert code == 1
    assert f"field not_covered[{last}] was deleted" in problems
    assert (
        "field mechanism[0].noise_multiplier" in problems or "field mechanism[0].round was edited" in problems
    )


def test_resigned_by_another_institution_fails(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine, theirs = _load(run / "audit" / "inst00.json"), _load(run / "audit" / "inst01.json")
    mine["signature"] = theirs["signature"]
    _save(run / "audit" / "inst00.json", mine)
    code, findings = _verify(run / "audit" / "inst00.json", capsys)
    assert code == 1 and "signature" in _problems(findings)


def _rewrite_line(path: Path, index: int, change: Any) -> None:
    lines = path.read_text().splitlines()
    entry = json.loads(lines[index])
    change(entry)
    lines[index] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")


def test_editing_a_privacy_ledger_entry_fails_verify_naming_the_line(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = _privacy_ledger(run, "inst00")

    def lower_noise(entry: dict[str, Any]) -> None:
        entry["body"]["noise_multiplier"] = 5.0

    _rewrite_line(ledger, 1, lower_noise)
    code, findings = _verify(run, capsys)
    assert code == 1
    assert "ledger privacy" in _problems(findings) and "line 2" in _problems(findings)


def test_deleting_reordering_or_truncating_ledger_entries_fails(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = _privacy_ledger(run, "inst00")
    lines = ledger.read_text().splitlines()
    for tampered in (lines[:-1], [lines[0], lines[2], lines[1]], [lines[0], lines[2]]):
        ledger.write_text("\n".join(tampered) + "\n")
        code, findings = _verify(run / "audit" / "inst00.json", capsys)
        assert code == 1, tampered
        assert "ledger privacy" in _problems(findings)
    ledger.write_text("\n".join(lines) + "\n")
    assert _verify(run / "audit" / "inst00.json", capsys)[0] == 0


def test_rewriting_the_whole_ledger_consistently_is_caught_by_the_signed_head(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A forger who rebuilds a valid chain with less privacy loss still contradicts the signed head."""
    ledger_path = _privacy_ledger(run, "inst00")
    ledger_path.unlink()
    forged = PrivacyLedger(ledger_path, institution="inst00", delta=1e-5, budget_epsilon=8.0)
    forged.record_round(0, DpEvent(3.0, 0.125, 8, 0), {"max_grad_norm": 1.0, "expected_batch_size": 8})
    HashChain(ledger_path).verify()
    code, findings = _verify(run / "audit" / "inst00.json", capsys)
    assert code == 1 and "ledger privacy" in _problems(findings)


def test_editing_the_server_state_fails_the_federation_report(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = run / "state" / "state.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE rounds SET contributors = ? WHERE round = 0", (json.dumps(["inst00"]),))
    code, findings = _verify(run / "audit" / "federation.json", capsys)
    assert code == 1 and "server state" in _problems(findings)


def test_federation_quote_must_match_the_institution_report(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run / "audit" / "inst00.json"
    doc = _load(report)
    doc["privacy"]["epsilon"] = 0.01
    _save(report, doc)
    code, findings = _verify(run, capsys)
    problems = _problems(findings)
    assert code == 1 and "institutions.inst00.epsilon" in problems


def test_report_for_one_institution_and_bad_arguments(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run / "mine.json"
    assert (
        main(["audit", "report", str(run), "--institution", "inst02", "--format", "json", "--out", str(out)])
        == 0
    )
    assert _load(out)["institution"] == "inst02"
    capsys.readouterr()
    assert main(["audit", "report", str(run), "--institution", "nobody", "--format", "json"]) == 2
    assert "no institution 'nobody'" in capsys.readouterr().err
    assert main(["audit", "report", str(run / "clients"), "--format", "json"]) == 2
    assert "server.toml: missing" in capsys.readouterr().err
    assert main(["audit", "report", str(run), "--out", str(out)]) == 2
    assert "--out needs --institution" in capsys.readouterr().err
