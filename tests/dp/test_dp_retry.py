"""A retried DP round finishes without spending the budget twice.

The failure this guards against (seen by a user with the example values, target epsilon 8 = budget 8):
after the coordinator lost a round mid-way, every institution refused the retry because a second DP-SGD
run "would raise its epsilon from 7.994 to 9.338, above its privacy budget", and the run stopped.
A DP update is covered by its own guarantee, so the retry re-submits the update already released
(freshly masked, in the new session) and the ledger shows one release for the round.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from secfed.bench.attacks import World, _data, _ids
from secfed.bench.inprocess import drive, make_consortium
from secfed.dp.ledger import PrivacyLedger
from secfed.dp.policy import PrivacyPolicy
from secfed.fl.fedhds import FedhdsClient, FedhdsServer
from secfed.fl.fedit import FeditClient, FeditServer
from secfed.fl.releases import ReleaseLog
from secfed.secagg.messages import MaskedInputRequest

pytestmark = pytest.mark.timeout(300)
BUDGET = 8.0


def _server(world: World) -> FeditServer:
    return FeditServer(
        {
            "model": str(world.model),
            "train": {"local_steps": 2, "batch_size": 2, "max_length": 48, "lr": 1e-3},
            "max_weight": 8,
            # The whole budget for this one round: a second DP-SGD run could not fit.
            "dp": {"target_epsilon": BUDGET, "rounds": 1, "max_grad_norm": 1.0, "expected_batch_size": 2},
        }
    )


def _clients(world: World, ledgers: dict[str, Path]) -> dict[str, FeditClient]:
    """The institutions (built afresh: a restart keeps only what is on disk)."""
    return {
        c: FeditClient(
            c,
            {"model": str(world.model), **_data(i, len(ledgers))},
            privacy=PrivacyPolicy(ledger=ledgers[c], budget_epsilon=BUDGET),
            model_pool=world.pool,
        )
        for i, c in enumerate(ledgers)
    }


def _lose_first_attempt(stage_name: str | None = None) -> Callable[[str, int, str, object], bool]:
    """Two of four members never hear the first masked-input request (of ``stage_name``, if given):
    below threshold, the attempt is aborted after every member trained (and released its DP update
    to the session)."""
    lost = {"done": False}

    def drop(cid: str, round_: int, stage: str, msg: object) -> bool:
        if stage_name is not None and stage != stage_name:
            return False
        if isinstance(msg, MaskedInputRequest) and cid in ("inst00", "inst01") and not lost["done"]:
            if cid == "inst01":
                lost["done"] = True
            return True
        return False

    return drop


def _one_release_each(ledgers: dict[str, Path]) -> None:
    """One DP release for round 0 in every ledger, and the retry listed as one (it cost nothing)."""
    for c, path in ledgers.items():
        book = PrivacyLedger(path, institution=c, delta=1e-5, budget_epsilon=BUDGET)
        assert book.rounds_trained() == [0]
        assert len(book.events()) == 1 and book.refusals() == []
        assert [e.body["round"] for e in book.resubmissions()] == [0]
        assert book.spent().pld <= BUDGET + 1e-9


def test_a_retried_dp_round_completes_with_one_release_in_every_ledger(tmp_path: Path) -> None:
    world = World(tmp_path)
    ledgers = {c: tmp_path / f"{c}-privacy.jsonl" for c in _ids(4)}
    run = drive(
        _server(world),
        _clients(world, ledgers),
        make_consortium(list(ledgers)),
        rounds=1,
        drop=_lose_first_attempt(),
        max_attempts=2,
    )
    assert run.aborted, "the first attempt was meant to be lost"
    assert run.finished_reason == "completed 1 rounds", (run.finished_reason, run.refusals)
    _one_release_each(ledgers)


def test_the_retry_re_submits_the_kept_update_after_the_institutions_restart(tmp_path: Path) -> None:
    world = World(tmp_path)
    ledgers = {c: tmp_path / f"{c}-privacy.jsonl" for c in _ids(4)}
    consortium = make_consortium(list(ledgers))
    server = _server(world)
    first = drive(
        server, _clients(world, ledgers), consortium, rounds=1, drop=_lose_first_attempt(), max_attempts=1
    )
    assert first.aborted and not first.stages
    # Every institution restarts; the coordinator retries the round with a fresh session.
    again = drive(server, _clients(world, ledgers), consortium, rounds=1, first_attempt=2, max_attempts=1)
    assert again.finished_reason == "completed 1 rounds", (again.finished_reason, again.refusals)
    _one_release_each(ledgers)


def test_a_retried_fedhds_round_re_submits_its_dp_update_despite_a_fresh_selection(tmp_path: Path) -> None:
    """FedHDS draws a new projection and selection for each attempt, so the train stage's instruction
    differs from the lost attempt's. The DP update trained from the same global model under the same
    settings is still the institution's release for the round: it is re-submitted, not retrained
    (retraining would spend the whole budget a second time and every institution would refuse)."""
    world = World(tmp_path)
    ledgers = {c: tmp_path / f"{c}-privacy.jsonl" for c in _ids(4)}
    dp = {"target_epsilon": BUDGET, "rounds": 1, "max_grad_norm": 1.0, "expected_batch_size": 2}
    server = FedhdsServer(
        {
            "model": str(world.model),
            "train": {"local_steps": 2, "batch_size": 2, "max_length": 48, "lr": 1e-3},
            "max_weight": 8,
            "dp": dp,
            "coreset": {"k0": 8, "bins": 4, "max_fraction": 0.3, "min_cohort": 2},
            "feature_layers": [-1],
            "feature_max_length": 32,
        }
    )
    clients = {
        c: FedhdsClient(
            c,
            {"model": str(world.model), **_data(i, len(ledgers))},
            privacy=PrivacyPolicy(ledger=ledgers[c], budget_epsilon=BUDGET),
            model_pool=world.pool,
        )
        for i, c in enumerate(ledgers)
    }
    run = drive(
        server,
        clients,
        make_consortium(list(ledgers)),
        rounds=1,
        drop=_lose_first_attempt("train"),
        max_attempts=2,
    )
    assert run.aborted, "the first attempt was meant to be lost"
    assert run.finished_reason == "completed 1 rounds", (run.finished_reason, run.refusals)
    _one_release_each(ledgers)


def test_a_completed_dp_round_cannot_be_re_run_without_one_member(tmp_path: Path) -> None:
    """The complement attack: a server completes round 0 with {victim, A, B, C}, then runs round 0
    again without the victim. Had A, B and C re-submitted their kept DP updates (each covered by its own
    guarantee), S1 - S2 would be the victim's update exactly. A kept DP update is re-submitted only
    where any input may be re-released (the earlier session proven never unmasked), so the re-run gets
    nothing."""
    world = World(tmp_path)
    ids = _ids(4)
    ledgers = {c: tmp_path / f"{c}-privacy.jsonl" for c in ids}
    releases = {c: ReleaseLog(tmp_path / f"{c}-releases.jsonl") for c in ids}
    clients = _clients(world, ledgers)
    consortium = make_consortium(ids)
    server = _server(world)
    first = drive(server, clients, consortium, rounds=1, max_attempts=1, releases=releases)
    assert first.finished_reason == "completed 1 rounds", first.refusals
    complement = {c: clients[c] for c in ids[1:]}
    again = drive(
        server,
        complement,
        consortium,
        rounds=1,
        first_attempt=2,
        max_attempts=1,
        releases={c: releases[c] for c in complement},
    )
    assert again.finished_reason != "completed 1 rounds" and not again.stages
    reasons = [reason for refusals in again.refusals.values() for _, reason in refusals]
    assert reasons and all(reason.startswith("released") for reason in reasons), again.refusals
