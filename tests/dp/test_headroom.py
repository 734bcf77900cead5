"""Each institution checks the rest of the planned run against its budget before it trains at all.

The failure this replaces: a run whose planned rounds could never fit an institution's budget trained
rounds until the budget ran out and then refused mid-run, leaving the federation short of a member.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from secfed.dp.accounting import DpEvent
from secfed.dp.institution import InstitutionPrivacy, PrivacyRefusal
from secfed.dp.ledger import PrivacyLedger
from secfed.dp.policy import DpOptions, PrivacyPolicy

N_RECORDS, STEPS = 40, 4


def _privacy(path: Path, budget: float) -> InstitutionPrivacy:
    return InstitutionPrivacy("inst00", PrivacyPolicy(ledger=path, budget_epsilon=budget))


def test_a_run_that_cannot_fit_is_refused_at_its_first_round(tmp_path: Path) -> None:
    """Explicit noise over 10 planned rounds: each round fits a budget of 2, the whole run does not."""
    dp = DpOptions(noise_multiplier=1.5, expected_batch_size=4, rounds=10)
    privacy = _privacy(tmp_path / "p.jsonl", budget=2.0)
    with pytest.raises(PrivacyRefusal, match=r"rest of the planned run \(10 round\(s\)"):
        privacy.plan_round(0, dp, N_RECORDS, STEPS)
    book = PrivacyLedger.open_existing(tmp_path / "p.jsonl")
    assert book.events() == [] and len(book.refusals()) == 1


def test_a_run_calibrated_to_the_budget_fits_every_round(tmp_path: Path) -> None:
    dp = DpOptions(target_epsilon=8.0, expected_batch_size=4, rounds=3)
    privacy = _privacy(tmp_path / "p.jsonl", budget=8.0)
    ledger = privacy.ledger
    assert ledger is not None
    for round_ in range(3):
        settings = privacy.plan_round(round_, dp, N_RECORDS, STEPS)
        assert settings is not None
        ledger.record_round(
            round_, DpEvent(settings.noise_multiplier, settings.sample_rate(N_RECORDS), STEPS, round_)
        )
    assert ledger.spent().pld <= 8.0 + 1e-9 and ledger.refusals() == []
