"""One DP step count: the budget guard approves, the noise is calibrated for, and DP-SGD runs the same steps.

Attack (found on main before this): the guard counted steps with ``train.batch_size`` while DP-SGD
counted them with ``dp.expected_batch_size``. A server choosing ``train.epochs``, a large
``train.batch_size`` and ``dp.expected_batch_size = 1`` had the guard approve a few steps while many
more ran: the institution spent far more epsilon than its budget allowed, with no refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfed.data.builtin import builtin_splits
from secfed.dp.institution import InstitutionPrivacy, PrivacyRefusal
from secfed.dp.ledger import PrivacyLedger
from secfed.dp.policy import DpOptions, PrivacyPolicy
from secfed.fl.fedit import plan_training, train_round
from secfed.model.lora import LoraSettings, apply_lora
from secfed.model.tiny import tiny_llama
from secfed.model.train import TrainSettings

BUDGET = 8.0
RECORDS = builtin_splits(1, train_per_category=2, test_per_category=1, partition="iid")[0][0][:10]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    epochs=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 3.0])),
    local_steps=st.integers(1, 4),
    batch_size=st.sampled_from([1, 4, 64]),
    expected_batch=st.sampled_from([1, 2, 8]),
    noise=st.sampled_from([0.6, 1.0, 4.0]),
)
def test_the_ledger_holds_exactly_the_steps_that_ran_and_never_exceeds_the_budget(
    tmp_path_factory: pytest.TempPathFactory,
    epochs: float | None,
    local_steps: int,
    batch_size: int,
    expected_batch: int,
    noise: float,
) -> None:
    ledger = tmp_path_factory.mktemp("ledger") / "privacy.jsonl"
    privacy = InstitutionPrivacy("inst00", PrivacyPolicy(ledger=ledger, budget_epsilon=BUDGET))
    train = TrainSettings(
        local_steps=local_steps, epochs=epochs, batch_size=batch_size, max_length=48, lr=1e-3
    )
    dp = DpOptions(
        noise_multiplier=noise, max_grad_norm=1.0, expected_batch_size=expected_batch, max_physical_batch=4
    )
    tiny = tiny_llama(seed=0)
    peft = apply_lora(tiny.model, LoraSettings())
    try:
        plan = plan_training(privacy, RECORDS, train, dp, 0)
        _stats, used_dp = train_round(privacy, peft, tiny.tokenizer, plan, "inst00")
    except PrivacyRefusal:
        assert privacy.ledger is not None and privacy.ledger.events() == []  # refused: nothing spent
        return
    assert used_dp
    book = PrivacyLedger(
        ledger, institution="inst00", delta=PrivacyPolicy(ledger=ledger).delta, budget_epsilon=BUDGET
    )
    (event,) = book.events()
    assert event.steps == train.dp_steps_for(len(RECORDS), expected_batch)
    assert book.spent().pld <= BUDGET + 1e-9


def test_a_large_train_batch_does_not_hide_the_dp_steps(tmp_path: Path) -> None:
    """The issue's numbers: epochs 3 over 24 records, train.batch_size 64, DP batch 1 = 72 steps."""
    train = TrainSettings(epochs=3.0, batch_size=64, max_length=48)
    assert train.steps_for(24) == 3  # what the old guard approved
    assert train.dp_steps_for(24, 1) == 72  # what DP-SGD runs, and now what the guard approves
