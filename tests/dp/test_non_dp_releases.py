"""Nothing computed from an institution's records leaves without a ledger entry, DP or not.

The attack this closes: a server that switched DP off (a round broadcast without ``dp``) had the
institution train without noise, write nothing to its privacy ledger, and still sign a report saying
"trained with differentially private SGD ... epsilon = 4.39". Now a non-DP update is ledgered before
it leaves, makes the institution's epsilon unbounded from then on (the guard refuses further DP rounds
against a budget it can no longer keep), and the report says so in plain words.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from secfed.audit.report import guarantee_section, privacy_section
from secfed.bench.attacks import World, _data, _ids
from secfed.bench.inprocess import drive, make_consortium
from secfed.dp.accounting import DpEvent
from secfed.dp.guard import BudgetGuard
from secfed.dp.ledger import PrivacyLedger
from secfed.dp.policy import PrivacyPolicy
from secfed.fl.fedit import FeditClient, FeditServer

pytestmark = pytest.mark.timeout(300)


def _ledger(path: Path, budget: float | None = 8.0) -> PrivacyLedger:
    return PrivacyLedger(path, institution="inst00", delta=1e-5, budget_epsilon=budget)


def test_a_non_dp_update_makes_epsilon_unbounded_and_the_guard_refuses_dp_after_it(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "p.jsonl")
    ledger.record_round(0, DpEvent(1.0, 0.1, 5, 0))
    assert math.isfinite(ledger.spent().pld)
    ledger.record_non_dp(
        1, release="selection", what="coreset-pca", extra={"dataset": "ab", "data": "d.jsonl"}
    )
    assert math.isfinite(ledger.spent().pld)  # selection statistics are listed, not composed
    ledger.record_non_dp(2, release="update", what="fedit-lora", extra={"dataset": "ab", "data": "d.jsonl"})
    assert math.isinf(ledger.spent().pld)
    decision = BudgetGuard(ledger).check(DpEvent(1.0, 0.1, 5, 3))
    assert not decision.allowed and "infinity" in decision.reason


def test_the_report_no_longer_claims_dp_for_records_that_left_without_it(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    ledger = _ledger(path)
    ledger.record_round(0, DpEvent(1.0, 0.1, 5, 0))
    section, _ = privacy_section(path)
    assert section["epsilon"] is not None and guarantee_section(section, institution="inst00")["dp_used"]
    ledger.record_non_dp(1, release="update", what="fedit-lora", extra={"dataset": "ab", "data": "d.jsonl"})
    section, _ = privacy_section(path)
    guarantee = guarantee_section(section, institution="inst00")
    assert section["epsilon"] is None and section["no_dp_guarantee_since_round"] == 1
    assert not guarantee["dp_used"] and "WITHOUT differential privacy from round 1" in guarantee["plain"]


def test_a_round_the_server_runs_without_dp_is_ledgered_before_it_leaves(tmp_path: Path) -> None:
    """No budget, DP not required: the institution takes part, and its ledger says what left."""
    world = World(tmp_path)
    ids = _ids(4)
    server = FeditServer(
        {
            "model": str(world.model),
            "train": {"local_steps": 1, "batch_size": 2, "max_length": 48},
            "max_weight": 8,
        }
    )
    ledgers = {c: tmp_path / f"{c}.jsonl" for c in ids}
    clients = {
        c: FeditClient(
            c,
            {"model": str(world.model), **_data(i, 4)},
            privacy=PrivacyPolicy(ledger=ledgers[c]),
            model_pool=world.pool,
        )
        for i, c in enumerate(ids)
    }
    run = drive(server, clients, make_consortium(ids), rounds=1, max_attempts=1)
    assert run.finished_reason == "completed 1 rounds"
    for c in ids:
        book = PrivacyLedger.open_existing(ledgers[c])
        (entry,) = book.non_dp_releases()
        assert entry.body["round"] == 0 and entry.body["release"] == "update"
        assert entry.body["dataset"] == clients[c].dataset_hash().hex()
        assert math.isinf(book.spent().pld)
