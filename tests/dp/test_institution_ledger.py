"""The privacy ledger is the institution's, about its records, and no writer can take it past the budget.

The attacks and failures these tests close:
- An institution that ran federations without DP on its records and then a DP one started the DP run
  at epsilon 0: each deployment directory had its own ledger (a path relative to its configuration).
  Now the default ledger is the institution's own (``$SECFED_HOME/<institution>/``), every entry names
  the records by content hash, and the second federation starts from everything the first released.
- Two federations over the same records (two client processes on one ledger) each passed the budget
  guard before training and then both recorded their release: together past the budget. The release is
  now recorded only if it still fits when it is written, under the ledger's lock.
"""

from __future__ import annotations

import math
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed.bench.attacks import World, _data, _ids
from secfed.bench.inprocess import drive, make_consortium
from secfed.chain import HashChain
from secfed.dp.accounting import DpEvent, epsilon_pld
from secfed.dp.guard import BudgetGuard
from secfed.dp.institution import DatasetTag, InstitutionPrivacy, PrivacyRefusal
from secfed.dp.ledger import BudgetExceeded, PrivacyLedger
from secfed.dp.policy import DpOptions, PrivacyPolicy
from secfed.dp.sgd import DpRoundEvent
from secfed.fl.fedit import FeditClient, FeditServer
from secfed.home import HOME_ENV, default_privacy_ledger

pytestmark = pytest.mark.timeout(300)
BUDGET = 8.0


def _federation(
    world: World, ids: list[str], privacy: PrivacyPolicy, dp: dict[str, Any] | None, lr: float = 1e-3
) -> Any:
    """One federation, as a separate deployment would run it: its own server and client objects, the
    same records, no ledger path named (the institution's default)."""
    options: dict[str, Any] = {
        "model": str(world.model),
        "train": {"local_steps": 2, "batch_size": 2, "max_length": 48, "lr": lr},
        "max_weight": 8,
    }
    if dp is not None:
        options["dp"] = dp
    clients = {
        c: FeditClient(
            c,
            {"model": str(world.model), **_data(i, len(ids))},
            privacy=privacy,
            model_pool=world.pool,
        )
        for i, c in enumerate(ids)
    }
    run = drive(FeditServer(options), clients, make_consortium(ids), rounds=1, max_attempts=1)
    return run, clients


def test_federations_over_the_same_records_compose_in_the_institutions_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    world = World(tmp_path)
    ids = _ids(4)
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 2}
    first, clients = _federation(world, ids, PrivacyPolicy(budget_epsilon=BUDGET), dp)
    assert first.finished_reason == "completed 1 rounds", first.refusals
    after_first = {c: PrivacyLedger.open_existing(default_privacy_ledger(c)).spent().pld for c in ids}
    # Another learning rate: a different computation (the very same one would re-submit the DP update
    # already released, which costs nothing and is what a retry does).
    second, _ = _federation(world, ids, PrivacyPolicy(budget_epsilon=BUDGET), dp, lr=2e-3)
    assert second.finished_reason == "completed 1 rounds", second.refusals
    for c in ids:
        book = PrivacyLedger.open_existing(tmp_path / "home" / c / "privacy-ledger.jsonl")
        events = book.events()
        assert len(events) == 2  # the second federation started from the first's release
        assert (
            book.spent().pld == pytest.approx(epsilon_pld(events, 1e-5)) and book.spent().pld > after_first[c]
        )
        tags = {(e.body["dataset"], e.body["data"]) for e in book.entries() if e.kind == "dp-round"}
        assert tags == {(clients[c].dataset_hash().hex(), f"builtin share {ids.index(c) + 1}/4")}


def test_a_dp_federation_after_one_without_dp_on_the_same_records_starts_unbounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: a federation without DP, then a DP one in another deployment directory. The
    DP run no longer starts at epsilon 0: the records already left without DP, and a budgeted
    institution refuses (with a clear local reason) rather than promise a bound it cannot keep."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    world = World(tmp_path)
    ids = _ids(4)
    plain, _ = _federation(world, ids, PrivacyPolicy(), None)
    assert plain.finished_reason == "completed 1 rounds", plain.refusals
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 2}
    budgeted, _ = _federation(world, ids, PrivacyPolicy(budget_epsilon=BUDGET), dp)
    assert budgeted.finished_reason != "completed 1 rounds"
    for c in ids:
        book = PrivacyLedger.open_existing(default_privacy_ledger(c))
        assert math.isinf(book.spent().pld) and book.events() == []
        (refusal,) = book.refusals()
        assert "infinity" in refusal.body["reason"]


def test_a_release_is_written_only_if_it_still_fits_the_budget_when_written(tmp_path: Path) -> None:
    ledger = tmp_path / "p.jsonl"
    tag = DatasetTag("cd" * 32, "records.jsonl")
    budget = 6.5  # one such round fits (epsilon 5.68), two do not (7.36)
    privacy = InstitutionPrivacy("inst00", PrivacyPolicy(ledger=ledger, budget_epsilon=budget), tag)
    dp = DpOptions(noise_multiplier=0.8, expected_batch_size=10)
    settings = privacy.plan_round(0, dp, n_records=100, steps=20)
    assert settings is not None
    event = DpEvent(settings.noise_multiplier, settings.sample_rate(100), 20, 0)
    # Meanwhile a second federation over the same records (another process) records its own round.
    other = PrivacyLedger(ledger, institution="inst00", delta=1e-5, budget_epsilon=budget)
    other.record_round(0, event, tag.to_mapping())
    assert epsilon_pld([event], 1e-5) <= budget < epsilon_pld([event, event], 1e-5)
    with pytest.raises(PrivacyRefusal, match="changed while it trained"):
        privacy.record(0, DpRoundEvent(event.noise_multiplier, event.sample_rate, 20, 1.0, 10, 100, 0))
    book = PrivacyLedger.open_existing(ledger)
    assert len(book.events()) == 1 and book.spent().pld <= budget
    (refusal,) = book.refusals()
    assert refusal.body["dataset"] == tag.sha256


def test_a_second_federation_cannot_lift_the_budget_of_one_already_running(tmp_path: Path) -> None:
    """Attacker review: reopening the shared ledger with another budget (or none) recorded a
    budget-change that every process then enforced, so a second federation opened without a budget
    let the first one spend past its own. Each process now enforces the smaller of its own budget and
    the ledger's."""
    path = tmp_path / "p.jsonl"
    running = PrivacyLedger(path, institution="inst00", delta=1e-5, budget_epsilon=1.0)
    PrivacyLedger(path, institution="inst00", delta=1e-5, budget_epsilon=None)  # another federation
    assert PrivacyLedger.budget_in(running.entries()) is None and running.budget_epsilon == 1.0
    event = DpEvent(1.0, 0.1, 20, 0)
    assert epsilon_pld([event], 1e-5) > 1.0
    assert not BudgetGuard(running).check(event, record_refusal=False).allowed
    with pytest.raises(BudgetExceeded):
        running.record_round(0, event, within_budget=True)


def test_two_processes_creating_the_ledger_at_once_leave_one_header(tmp_path: Path) -> None:
    """Attacker review: two federations opening a new default ledger at once both wrote a header,
    after which every read failed. The header is written only onto an empty file, under the lock."""
    path = tmp_path / "p.jsonl"
    chain = HashChain(path)
    real = chain.entries
    first = {"call": True}

    def racing_entries() -> list[Any]:
        if first["call"]:
            first["call"] = False
            PrivacyLedger(path, institution="inst00", delta=1e-5, budget_epsilon=None)  # wins the race
            return []
        return real()

    chain.entries = racing_entries  # type: ignore[method-assign]
    PrivacyLedger(path, institution="inst00", delta=1e-5, budget_epsilon=None, chain=chain)
    kinds = [e.kind for e in PrivacyLedger.open_existing(path).entries()]
    assert kinds.count("ledger-open") == 1


def test_the_institutions_ledgers_are_its_own_to_read(tmp_path: Path) -> None:
    """Attacker review: ledgers were created 0644; a privacy ledger holds record counts, the release log
    what left and when, the kept update the update itself. All are created 0600."""
    from secfed.fl.releases import ReleaseLog
    from secfed.fl.resubmit import UpdateStore

    ledger = PrivacyLedger(tmp_path / "p.jsonl", institution="inst00", delta=1e-5, budget_epsilon=None)
    ReleaseLog(tmp_path / "r.jsonl").joined(b"\x01" * 32, 0)
    UpdateStore(tmp_path / "u.npz").put((0, b"m", b"i"), {"delta": np.zeros(2)})
    for path in (ledger.path, tmp_path / "r.jsonl", tmp_path / "u.npz"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_institution_home_is_one_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A relative SECFED_HOME would put the ledger wherever each process starts (attacker review: two
    federations started from two directories would not compose); ids that climb out are refused."""
    from secfed.home import institution_home

    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    assert institution_home("inst00") == tmp_path / "inst00"
    monkeypatch.setenv(HOME_ENV, "relative/home")
    with pytest.raises(ValueError, match="absolute path"):
        institution_home("inst00")
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(ValueError, match="not an institution id"):
            institution_home(bad)
