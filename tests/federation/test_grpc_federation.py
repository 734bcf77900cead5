"""A whole federation over real mutual-TLS gRPC on 127.0.0.1: rounds, dropouts, hangs, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client.faults import Fault
from secfed.chain import HashChain
from server.state import StateStore
from tests.federation.support import Federation, check_plaintext_sums, rounds_log, start_federation

pytestmark = pytest.mark.timeout(120)


def test_three_clients_two_rounds_sum_equals_plaintext(tmp_path: Path) -> None:
    fed = start_federation(tmp_path, 3)
    for cid in ("inst00", "inst01", "inst02"):
        fed.start_client(cid)
    assert fed.finish() == "completed 2 rounds"
    rounds = rounds_log(fed)
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["contributors"] == ["inst00", "inst01", "inst02"] for r in rounds)
    check_plaintext_sums(rounds)
    for holder in fed.clients.values():
        assert holder.error is None and holder.report is not None
        assert holder.report.rounds_completed == [0, 1]
        assert holder.report.finished_reason == "completed 2 rounds"


def test_each_client_ledgers_the_sessions_it_took_part_in(tmp_path: Path) -> None:
    fed = start_federation(tmp_path, 4)
    for i in range(4):
        fed.start_client(f"inst{i:02d}")
    assert fed.finish() == "completed 2 rounds"
    server_sessions = {e["payload"]["session_id"] for e in _server_events(fed, "session_opened")}
    for cid in fed.clients:
        chain = HashChain(fed.audit_ledger(cid))
        chain.verify()
        sessions = [e.body for e in chain.entries() if e.kind == "session"]
        assert [s["round"] for s in sessions] == [0, 1]
        assert all(s["n"] == 4 and s["threshold"] == 3 and s["ring_bits"] == 32 for s in sessions)
        assert all(s["label"] == "toy-mean.update.a1" and s["clipped_fraction"] == 0.0 for s in sessions)
        assert {s["session_id"] for s in sessions} <= server_sessions


def _server_events(fed: Federation, kind: str) -> list[dict[str, Any]]:
    store = StateStore(fed.server.config.state_db)
    try:
        return [e for e in store.ledger() if e["kind"] == kind]
    finally:
        store.close()


def test_hung_client_hits_deadline_and_round_completes(tmp_path: Path) -> None:
    fed = start_federation(tmp_path, 5, phase_timeout_s=2.0)
    for i in range(5):
        fed.start_client(f"inst{i:02d}", fault=Fault.parse("hang@1:masked-input") if i == 4 else None)
    assert fed.finish(timeout_s=5) == "completed 2 rounds"
    rounds = rounds_log(fed)
    assert "inst04" in rounds[0]["contributors"]
    assert "inst04" not in rounds[1]["contributors"] and len(rounds[1]["contributors"]) == 4
    assert rounds[1]["dropped"] == ["inst04"]  # it had shared keys: its pair masks were removed
    check_plaintext_sums(rounds)


def test_insecure_plaintext_baseline_is_refused_unless_allowed(tmp_path: Path) -> None:
    fed = start_federation(tmp_path, 4, rounds=1, secure=False)
    for i in range(4):
        fed.start_client(f"inst{i:02d}", allow_plaintext=i != 3)
    assert fed.finish() == "completed 1 rounds"
    (record,) = rounds_log(fed)
    assert record["secure"] is False
    assert record["contributors"] == ["inst00", "inst01", "inst02"]  # inst03 refused: its data never left
    assert fed.server.coordinator.refusals == [(0, "inst03", "policy")]
    check_plaintext_sums([record], frac_bits=18)  # float32 transport: values ~10 carry ~1e-6 rounding each
    assert fed.clients["inst03"].report is not None and fed.clients["inst03"].report.rounds_completed == []
