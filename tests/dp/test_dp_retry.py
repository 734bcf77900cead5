"""A retried DP round finishes without spending the budget twice.

The failure this guards against (seen by a user with the example values, target epsilon 8 = budget 8):
after the coordinator lost a round mid-way, every institution refused the retry because a second DP-SGD
run "would raise its epsilon from 7.994 to 9.338, above its privacy budget", and the run stopped.
A DP update is covered by its own guarantee, so the retry re-submits the update already released
(freshly masked, in the new session) and the ledger shows one release for the round.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from secfed.bench.attacks import World, _data, _ids
from secfed.bench.inprocess import drive, make_consortium
from secfed.dp.ledger import PrivacyLedger
from secfed.dp.policy import PrivacyPolicy
from secfed.fl.fedit import FeditClient, FeditServer
from secfed.secagg.messages import MaskedInputRequest

pytestmark = pytest.mark.timeout(300)
BUDGET = 8.0


def test_a_retried_dp_round_completes_with_one_release_in_every_ledger(tmp_path: Path) -> None:
    world = World(tmp_path)
    ids = _ids(4)
    server = FeditServer(
        {
            "model": str(world.model),
            "train": {"local_steps": 2, "batch_size": 2, "max_length": 48, "lr": 1e-3},
            "max_weight": 8,
            # The whole budget for this one round: a second DP-SGD run could not fit.
            "dp": {"target_epsilon": BUDGET, "rounds": 1, "max_grad_norm": 1.0, "expected_batch_size": 2},
        }
    )
    ledgers = {c: tmp_path / f"{c}-privacy.jsonl" for c in ids}
    clients = {
        c: FeditClient(
            c,
            {
                "model": str(world.model),
                **_data(i, 4),
                "privacy": PrivacyPolicy(ledger=ledgers[c], budget_epsilon=BUDGET).to_mapping(),
            },
            model_pool=world.pool,
        )
        for i, c in enumerate(ids)
    }
    lost = {"done": False}

    def lose_first_attempt(cid: str, round_: int, stage: str, msg: object) -> bool:
        # Two of four members never hear the first attempt's masked-input request: below threshold,
        # the attempt is aborted after every member trained, and the coordinator retries.
        if isinstance(msg, MaskedInputRequest) and cid in ("inst00", "inst01") and not lost["done"]:
            if cid == "inst01":
                lost["done"] = True
            return True
        return False

    run = drive(server, clients, make_consortium(ids), rounds=1, drop=lose_first_attempt, max_attempts=2)
    assert run.aborted, "the first attempt was meant to be lost"
    assert run.finished_reason == "completed 1 rounds", (run.finished_reason, run.refusals)
    for c in ids:
        book = PrivacyLedger(ledgers[c], institution=c, delta=1e-5, budget_epsilon=BUDGET)
        assert book.rounds_trained() == [0]
        assert len(book.events()) == 1 and book.refusals() == []
        assert book.spent().pld <= BUDGET + 1e-9
