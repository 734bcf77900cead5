"""Coreset selection released under distributed DP is ledgered, composed with training and budgeted.

What these tests close: selection statistics with Skellam noise (``dp-selection`` entries) must cost
the institution epsilon, composed with its DP-SGD rounds, before they leave (a ledger that listed them
without composing would let an institution spend past its budget through selection), and a ledger
without them must read exactly as before.

The reference figures here are computed independently of ``secfed.dp.ledger`` and
``secfed.dp.skellam``: the Skellam RDP from the published bound (Agarwal, Kairouz & Liu 2021), the
DP-SGD RDP from ``dp_accounting``'s RDP accountant used directly, and the RDP-to-(epsilon, delta)
conversion (Balle et al. 2020, Prop. 12; Canonne, Kamath & Steinke 2020) written out below.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from secfed.chain import ChainError, canonical_json
from secfed.dp.accounting import RDP_ORDERS, DpEvent, epsilon_pld, epsilon_rdp, epsilon_report
from secfed.dp.guard import BudgetGuard
from secfed.dp.institution import DatasetTag, InstitutionPrivacy, PrivacyRefusal
from secfed.dp.ledger import BudgetExceeded, LedgerError, PrivacyLedger
from secfed.dp.policy import PrivacyPolicy
from secfed.dp.skellam import SkellamEvent

DELTA = 1e-5
TAG = DatasetTag("cd" * 32, "records.jsonl")
GAMMA = 1000.0  # ring units per unit of a statistic, as in the coreset-dp design


def _ledger(path: Path, budget: float | None = None) -> PrivacyLedger:
    return PrivacyLedger(path, institution="hospital-a", delta=DELTA, budget_epsilon=budget)


def _stages(lam: float = 4e6, round_: int | None = None) -> list[SkellamEvent]:
    """A selection release: a mean (a record moves two coordinates by one unit each), second moments
    and a histogram (one record moves one count)."""
    return [
        SkellamEvent(lam, 2 * GAMMA, math.sqrt(2) * GAMMA, "coreset-dp-mean", round_),
        SkellamEvent(lam, 3 * GAMMA, 2 * GAMMA, "coreset-dp-moments", round_),
        SkellamEvent(lam / 4, 1.0, 1.0, "coreset-dp-hist", round_),
    ]


# -- independent reference --------------------------------------------------------------------------


def _skellam_rdp(alpha: float, lam: float, l1: float, l2: float) -> float:
    """Agarwal, Kairouz & Liu (2021), the bound as published."""
    return alpha * l2**2 / (4 * lam) + min(
        ((2 * alpha - 1) * l2**2 + 6 * l1) / (16 * lam**2), 3 * l1 / (4 * lam)
    )


def _sgd_curve(events: Sequence[DpEvent]) -> list[float]:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant(orders=list(RDP_ORDERS))
    for e in events:
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
                ),
                e.steps,
            )
        )
    return [float(r) for r in accountant.rdp]


def _conversion_term(alpha: float, delta: float) -> float:
    return math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)


def _to_epsilon(curve: Sequence[float], delta: float) -> float:
    """min over orders of rdp + log(1 - 1/a) - log(delta a) / (a - 1); 0 where the KL bound already
    gives delta (rdp < -log(1 - delta^2))."""
    best = math.inf
    for alpha, rdp in zip(RDP_ORDERS, curve, strict=True):
        value = 0.0 if delta**2 + math.expm1(-rdp) > 0 else rdp + _conversion_term(alpha, delta)
        best = min(best, value)
    return max(0.0, best)


def _reference(training: Sequence[DpEvent], selection: Sequence[SkellamEvent], delta: float) -> float:
    sgd = _sgd_curve(training)
    skellam = [sum(_skellam_rdp(a, e.lam, e.l1, e.l2) for e in selection) for a in RDP_ORDERS]
    return _to_epsilon([s + k for s, k in zip(sgd, skellam, strict=True)], delta)


CASES = {
    "selection-only": ([], _stages()),
    "one-round-and-a-selection": ([DpEvent(1.1, 0.05, 40)], _stages()),
    "rounds-and-repeated-stages": (
        [DpEvent(1.1, 0.05, 40), DpEvent(0.9, 0.1, 10)],
        [*_stages(), *_stages(), SkellamEvent(1e6, 5.0, 3.0, "coreset-dp-extra")],
    ),
}


# -- the entry ------------------------------------------------------------------------------------


def test_a_selection_release_round_trips_through_the_ledger(tmp_path: Path) -> None:
    """Written with its dataset tag and the round on every event; read back the same after reopening."""
    path = tmp_path / "p.jsonl"
    ledger = _ledger(path)
    entry = ledger.record_selection(3, _stages(), TAG.to_mapping())
    assert entry.kind == "dp-selection"
    assert entry.body["round"] == 3 and entry.body["dataset"] == TAG.sha256 and entry.body["data"] == TAG.name
    assert [e["what"] for e in entry.body["events"]] == [
        "coreset-dp-mean",
        "coreset-dp-moments",
        "coreset-dp-hist",
    ]
    reopened = PrivacyLedger.open_existing(path)
    reopened.verify()
    assert reopened.selection_events() == _stages(round_=3)
    assert reopened.events() == []  # not a training round
    assert reopened.spent().pld == pytest.approx(_reference([], _stages(), DELTA), rel=1e-9)


def test_tampering_with_a_selection_entry_is_detected(tmp_path: Path) -> None:
    """Raising lam in the file (a cheaper-looking release) breaks the hash chain."""
    path = tmp_path / "p.jsonl"
    ledger = _ledger(path)
    ledger.record_selection(0, _stages(), TAG.to_mapping())
    ledger.record_round(1, DpEvent(1.1, 0.05, 40), TAG.to_mapping())
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["body"]["events"][0]["lam"] *= 100
    path.write_text("\n".join([lines[0], canonical_json(record), *lines[2:]]) + "\n")
    with pytest.raises(ChainError, match="line 2"):
        ledger.spent()
    with pytest.raises(ChainError):
        ledger.selection_events()


@pytest.mark.parametrize(
    "body",
    [
        {"round": 0, "events": []},
        {"round": 0},
        {"round": 0, "events": [{"mechanism": "gaussian", "lam": 1.0, "l1": 1.0, "l2": 1.0}]},
        {"round": 0, "events": [{"mechanism": "skellam", "lam": 1.0, "l1": 1.0}]},
        {"round": 0, "events": ["not a mapping"]},
        {"round": 0, "events": [{"mechanism": "skellam", "lam": 1.0, "l1": 1.0, "l2": 1.0, "round": 1}]},
        {"round": -1, "events": [{"mechanism": "skellam", "lam": 1.0, "l1": 1.0, "l2": 1.0}]},
    ],
)
def test_a_malformed_selection_entry_is_a_ledger_error(tmp_path: Path, body: dict[str, object]) -> None:
    """A well-chained but malformed entry (written by another tool, or a bug) is refused, never read as
    a release that costs nothing."""
    ledger = _ledger(tmp_path / "p.jsonl")
    ledger.chain.append("dp-selection", body)
    for read in (ledger.selection_events, ledger.spent, ledger.verify, ledger.spent_parts):
        with pytest.raises(LedgerError, match="entry 1 is not a valid selection release"):
            read()


def test_record_selection_validates_its_input(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="non-empty"):
        ledger.record_selection(0, [])
    with pytest.raises(ValueError, match="SkellamEvents, got DpEvent"):
        ledger.record_selection(0, [DpEvent(1.0, 0.1, 1)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="is for round 2, not round 0"):
        ledger.record_selection(0, _stages(round_=2))
    with pytest.raises(ValueError, match="contradicts"):
        ledger.record_selection(0, _stages(), {"round": 1})
    with pytest.raises(ValueError, match="round must be an integer"):
        ledger.record_selection(-1, _stages())
    assert len(ledger.entries()) == 1  # nothing was written


# -- composition ----------------------------------------------------------------------------------


def test_without_selection_releases_everything_reads_as_before(tmp_path: Path) -> None:
    """No dp-selection entry: PLD with the RDP cross-check, exactly the DP-SGD accountant's figures."""
    ledger = _ledger(tmp_path / "p.jsonl")
    events = [DpEvent(1.1, 0.05, 40, 0), DpEvent(1.1, 0.05, 40, 1)]
    for e in events:
        assert e.round is not None
        ledger.record_round(e.round, e)
    assert ledger.spent() == epsilon_report(events, DELTA)
    assert ledger.epsilon_with() == epsilon_pld(events, DELTA)
    parts = ledger.spent_parts()
    assert parts.training == parts.total == epsilon_pld(events, DELTA) and parts.selection == 0.0


@pytest.mark.parametrize("case", sorted(CASES))
def test_composition_equals_an_independent_computation(tmp_path: Path, case: str) -> None:
    training, selection = CASES[case]
    ledger = _ledger(tmp_path / "p.jsonl")
    expected = _reference(training, selection, DELTA)
    # Planned, then recorded: the guard's figure and the ledger's agree with the reference.
    assert ledger.epsilon_with(training, planned_selection=selection) == pytest.approx(expected, rel=1e-9)
    for round_, event in enumerate(training):
        ledger.record_round(round_, event)
    ledger.record_selection(len(training), selection)
    spent = ledger.spent()
    assert spent.pld == spent.rdp == pytest.approx(expected, rel=1e-9)
    parts = ledger.spent_parts()
    assert parts.total == pytest.approx(expected, rel=1e-9)
    assert parts.selection == pytest.approx(_reference([], selection, DELTA), rel=1e-9)
    assert parts.training == epsilon_pld(training, DELTA)
    assert parts.to_mapping() == {
        "epsilon_training": parts.training,
        "epsilon_selection": parts.selection,
        "epsilon": parts.total,
        "delta": DELTA,
    }


@pytest.mark.parametrize("case", ["one-round-and-a-selection", "rounds-and-repeated-stages"])
def test_the_total_is_at_least_each_part_and_at_most_their_sum_at_half_delta(
    tmp_path: Path, case: str
) -> None:
    """What is guaranteed, and only that.

    At least each part: RDP adds, and the conversion grows with the curve at every order, so the total
    is at least the selection figure and the training rounds' *RDP* figure (not necessarily their PLD
    figure, which is a different, tighter accountant).

    At most the parts' sum at delta/2 each: with a1 <= a2 the parts' optimal orders (swap otherwise),
    total <= R1(a1) + R2(a1) + g(a1, delta) <= R1(a1) + g(a1, delta/2) + R2(a2) + g(a2, delta/2) =
    eps1 + eps2, since RDP curves grow with the order (R2(a1) <= R2(a2)), g(a, delta/2) = g(a, delta) +
    log 2 / (a - 1), and g(a2, delta/2) >= 0 on these orders at this delta (checked here, as are the
    other premises)."""
    training, selection = CASES[case]
    ledger = _ledger(tmp_path / "p.jsonl")
    for round_, event in enumerate(training):
        ledger.record_round(round_, event)
    ledger.record_selection(len(training), selection)
    total = ledger.spent_parts().total
    alone = _ledger(tmp_path / "alone.jsonl")
    alone.record_selection(0, selection)
    selection_eps = alone.spent_parts().selection
    assert total >= selection_eps > 0
    assert total >= epsilon_rdp(training, DELTA) > 0

    assert all(_conversion_term(a, DELTA / 2) >= 0 for a in RDP_ORDERS)
    for curve in (_sgd_curve(training), [sum(e.rdp(a) for e in selection) for a in RDP_ORDERS]):
        assert all(x <= y for x, y in itertools.pairwise(curve))
    half = DELTA / 2
    training_half, selection_half = epsilon_rdp(training, half), _reference([], selection, half)
    assert (
        training_half > 0 and selection_half > 0
    )  # the parts' minima come from the formula, not the KL bound
    assert total <= training_half + selection_half


def test_a_non_dp_update_still_makes_training_and_total_unbounded(tmp_path: Path) -> None:
    """Selection releases do not make an update that left without DP bounded again; the selection
    releases alone keep their own figure."""
    ledger = _ledger(tmp_path / "p.jsonl", budget=50.0)
    ledger.record_selection(0, _stages())
    ledger.record_round(0, DpEvent(1.1, 0.05, 40))
    ledger.record_non_dp(1, release="update", what="fedit-lora")
    assert math.isinf(ledger.spent().pld) and math.isinf(ledger.spent().rdp)
    assert math.isinf(ledger.epsilon_with(planned_selection=_stages()))
    parts = ledger.spent_parts()
    assert math.isinf(parts.training) and math.isinf(parts.total)
    assert parts.selection == pytest.approx(_reference([], _stages(), DELTA), rel=1e-9)
    assert parts.to_mapping()["epsilon"] is None and parts.to_mapping()["epsilon_training"] is None
    with pytest.raises(BudgetExceeded):
        ledger.record_selection(2, _stages(), within_budget=True)


def test_selection_statistics_without_dp_stay_listed_without_a_bound(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "p.jsonl")
    ledger.record_selection(0, _stages())
    before = ledger.spent()
    ledger.record_non_dp(1, release="selection", what="coreset-pca")
    assert ledger.spent() == before
    assert len(ledger.non_dp_releases("selection")) == 1


# -- the budget -----------------------------------------------------------------------------------


def test_a_selection_over_the_budget_is_not_written(tmp_path: Path) -> None:
    """The selection alone fits the budget; composed with the round already recorded it does not."""
    training = [DpEvent(1.1, 0.05, 40)]
    alone, composed = _reference([], _stages(), DELTA), _reference(training, _stages(), DELTA)
    budget = (alone + composed) / 2
    assert alone < budget < composed and epsilon_pld(training, DELTA) < budget
    path = tmp_path / "p.jsonl"
    ledger = _ledger(path, budget)
    ledger.record_round(0, training[0])
    written = path.read_bytes()
    with pytest.raises(BudgetExceeded, match="selection statistics of round 1") as exc:
        ledger.record_selection(1, _stages(), TAG.to_mapping(), within_budget=True)
    assert exc.value.epsilon_after == pytest.approx(composed, rel=1e-9)
    assert path.read_bytes() == written and ledger.selection_events() == []
    # Without the check the same release is written (the check, not the input, refused it).
    ledger.record_selection(1, _stages(), TAG.to_mapping())
    assert len(ledger.selection_events()) == 3


def test_the_guard_counts_recorded_selection_releases(tmp_path: Path) -> None:
    """A round that fits the budget by itself is refused once selection releases have used part of it."""
    planned = DpEvent(1.1, 0.05, 40, round=1)
    budget = (epsilon_pld([planned], DELTA) + _reference([planned], _stages(), DELTA)) / 2
    ledger = _ledger(tmp_path / "p.jsonl", budget)
    assert BudgetGuard(ledger).check(planned, record_refusal=False).allowed
    ledger.record_selection(0, _stages())
    decision = BudgetGuard(ledger).check(planned)
    assert decision.epsilon_now == pytest.approx(_reference([], _stages(), DELTA), rel=1e-9)
    assert decision.epsilon_after == pytest.approx(_reference([planned], _stages(), DELTA), rel=1e-9)
    assert not decision.allowed and "refuses round 1: training it would raise" in decision.reason
    (refusal,) = ledger.refusals()
    assert refusal.body["epsilon_now"] == pytest.approx(decision.epsilon_now, rel=1e-12)


# -- the institution ------------------------------------------------------------------------------


def _institution(path: Path, budget: float | None) -> InstitutionPrivacy:
    return InstitutionPrivacy("inst00", PrivacyPolicy(ledger=path, budget_epsilon=budget), TAG)


def test_plan_selection_refuses_and_records_the_refusal(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    cost = _reference([], _stages(), DELTA)
    privacy = _institution(path, budget=cost * 0.9)
    with pytest.raises(PrivacyRefusal, match=r"refuses the coreset selection of round 2 \(coreset-dp-mean, "):
        privacy.plan_selection(2, _stages())
    book = PrivacyLedger.open_existing(path)
    (refusal,) = book.refusals()
    assert refusal.body["round"] == 2 and refusal.body["dataset"] == TAG.sha256
    assert refusal.body["would_be_epsilon"] == pytest.approx(cost, rel=1e-9)
    assert "releasing its statistics would raise its epsilon" in refusal.body["reason"]
    assert book.selection_events() == []


def test_plan_selection_that_fits_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    privacy = _institution(path, budget=_reference([], _stages(), DELTA) * 1.1)
    privacy.plan_selection(0, _stages())
    assert len(PrivacyLedger.open_existing(path).entries()) == 1


def test_record_selection_writes_and_logs_the_selection_epsilon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.jsonl"
    privacy = _institution(path, budget=50.0)
    with caplog.at_level(logging.INFO, logger="secfed.dp"):
        privacy.record_selection(0, _stages())
    book = PrivacyLedger.open_existing(path)
    (entry,) = [e for e in book.entries() if e.kind == "dp-selection"]
    assert entry.body["dataset"] == TAG.sha256 and entry.body["round"] == 0
    (spent,) = [r for r in caplog.records if r.getMessage() == "privacy-spent"]
    fields = spent.fields  # type: ignore[attr-defined]
    assert fields["release"] == "selection"
    assert fields["epsilon_selection"] == f"{_reference([], _stages(), DELTA):.3f}"
    # The institution's opening line counts the selection release among what the ledger holds.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="secfed.dp"):
        _institution(path, budget=50.0)
    (opened,) = [r for r in caplog.records if r.getMessage() == "privacy-ledger"]
    assert opened.fields["releases"] == 1 and opened.fields["releases_on_these_records"] == 1  # type: ignore[attr-defined]


def test_record_selection_over_the_budget_refuses_and_writes_only_the_refusal(tmp_path: Path) -> None:
    """Another federation over the same records spent the budget between the plan and the release."""
    path = tmp_path / "p.jsonl"
    cost, twice = _reference([], _stages(), DELTA), _reference([], _stages() * 2, DELTA)
    budget = (cost + twice) / 2
    privacy = _institution(path, budget=budget)
    privacy.plan_selection(0, _stages())
    other = PrivacyLedger(path, institution="inst00", delta=DELTA, budget_epsilon=budget)
    other.record_selection(0, _stages(), TAG.to_mapping())  # the other federation
    with pytest.raises(PrivacyRefusal, match="selection statistics of round 0"):
        privacy.record_selection(0, _stages())
    book = PrivacyLedger.open_existing(path)
    assert len(book.selection_events()) == 3  # the other federation's only
    (refusal,) = book.refusals()
    assert refusal.body["dataset"] == TAG.sha256
    assert refusal.body["would_be_epsilon"] == pytest.approx(twice, rel=1e-9)


def test_without_a_ledger_a_selection_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    privacy = InstitutionPrivacy("inst00", None, TAG)
    with caplog.at_level(logging.INFO, logger="secfed.dp"):
        privacy.plan_selection(0, _stages())
        privacy.record_selection(0, _stages())
    (logged,) = [r for r in caplog.records if r.getMessage() == "dp-selection-unledgered"]
    assert logged.levelno == logging.WARNING
    assert logged.fields["stages"] == "coreset-dp-mean, coreset-dp-moments, coreset-dp-hist"  # type: ignore[attr-defined]
