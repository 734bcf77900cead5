"""Through the real coordinator: a member that deals bad shares is named, left out, and the round
completes in the next attempt without it; no honest member is blamed and the federation goes on.
A wrong sharing caught only at unmask (after the inputs were released) is retried over exactly the
survivors minus the proven dealer, and a server that retries over any other cohort gets nothing.

The attack it defeats (found on main): one member dealing corrupt shares to its peers made every attempt
of the round fail (the server's subset search always included its shares), named an honest institution
in the error, and stopped the federation after ``max_attempts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from secfed.bench.attacks import toy_world
from secfed.bench.inprocess import LyingRun, drive
from secfed.secagg.messages import MaskedInputRequest
from server.coordinator import Coordinator
from tests.secagg.support import corrupt_dealing


@pytest.mark.parametrize("n", [5, 13])
@pytest.mark.parametrize("kind", ["both", "b", "s"])
def test_the_round_completes_without_the_dealer_that_was_named(
    monkeypatch: pytest.MonkeyPatch, n: int, kind: str
) -> None:
    server, clients, consortium = toy_world(n)
    dealer = sorted(clients)[-1]
    with corrupt_dealing(monkeypatch, None, dealer, kind=kind, victims=None, signed=False):
        run = drive(server, clients, consortium, rounds=2, max_attempts=2)
    assert run.finished_reason == "completed 2 rounds", (run.finished_reason, run.aborted)
    (aborted,) = run.aborted  # the first attempt of round 0, which named the dealer
    assert aborted[:2] == (0, 1) and f"client {dealer!r}" in aborted[2]
    others = set(clients) - {dealer}
    assert not any(f"client {c!r}" in aborted[2] for c in others)  # no honest member blamed
    for stages in run.stage_results:  # every completed round summed over the honest members only
        assert all(dealer not in st.result.contributors for st in stages)


def _dealer_and_others(clients: Mapping[str, object]) -> tuple[str, set[str]]:
    dealer = sorted(clients)[-1]
    return dealer, set(clients) - {dealer}


def _first_attempt_pins(run: LyingRun, dealer: str, others: set[str]) -> None:
    (aborted,) = run.aborted  # round 0, attempt 1: the unmasking the dealer broke
    assert aborted[:2] == (0, 1) and f"client {dealer!r}" in aborted[2]
    assert "do not form one sharing" in aborted[2] or "does not match its own commitment" in aborted[2]
    assert not any(f"client {c!r}" in aborted[2] for c in others)  # no honest member blamed


@pytest.mark.parametrize("n", [5, 13, 30])
@pytest.mark.parametrize("victims", [1, None])
def test_a_round_an_inconsistent_dealing_broke_completes_over_the_survivors_minus_the_proven_dealer(
    monkeypatch: pytest.MonkeyPatch, n: int, victims: int | None
) -> None:
    """Shares that match the dealer's signed commitments but are not one sharing of its seed (to one
    holder or to all): caught only at unmask, after the honest inputs were released. The dealer is
    named with a proof every member checks; the retry runs over exactly the first survivors minus the
    dealer, the members re-release their same inputs into it (the difference from the first sum is the
    dealer's own input), and the round completes. Before: the retry's other cohort was refused by the
    no-differencing rule and the run stopped."""
    server, clients, consortium = toy_world(n)
    dealer, others = _dealer_and_others(clients)
    with corrupt_dealing(monkeypatch, None, dealer, kind="b", victims=victims, signed=True):
        run = drive(server, clients, consortium, rounds=2, max_attempts=2)
    assert run.finished_reason == "completed 2 rounds", (run.finished_reason, run.aborted, run.violations)
    _first_attempt_pins(run, dealer, others)
    first_round = run.stage_results[0]
    assert {c for st in first_round for c in st.result.contributors} == others
    assert not run.violations and not run.refusals


@pytest.mark.parametrize("n", [5, 13])
def test_a_dropped_dealer_whose_mask_key_shares_are_inconsistent_is_proven_and_the_retry_keeps_u3(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """Only the s-shares wrong, and the dealer drops before its masked input: the server needs its
    mask key to remove its pair masks, and its signed shares do not yield it. The survivors (the dealer
    not among them) are the retry's cohort, unchanged."""
    server, clients, consortium = toy_world(n)
    dealer, others = _dealer_and_others(clients)

    def drop(cid: str, round_: int, stage: str, message: object) -> bool:
        return cid == dealer and isinstance(message, MaskedInputRequest)

    with corrupt_dealing(monkeypatch, None, dealer, kind="s", victims=None, signed=True):
        run = drive(server, clients, consortium, rounds=1, max_attempts=2, drop=drop)
    assert run.finished_reason == "completed 1 rounds", (run.finished_reason, run.aborted, run.violations)
    _first_attempt_pins(run, dealer, others)
    assert set(run.stage_results[0][-1].result.contributors) == others


def test_a_server_that_retries_over_another_cohort_gets_no_input_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack the bound defeats: after the proven fault, a server retries without one honest member
    too; if the others re-released their inputs, the two sums would give that member's input. They
    refuse (the ready set is not the first survivors minus the proven dealer)."""
    server, clients, consortium = toy_world(6)
    dealer, others = _dealer_and_others(clients)
    victim = sorted(others)[0]
    plan = Coordinator._plan_proven_retry

    def lying_plan(self: Coordinator, session: Any, error: Any, attempt: Any) -> None:
        plan(self, session, error, attempt)
        if self._retry is not None:
            cohort, proofs = self._retry
            self._retry = (tuple(c for c in cohort if c != victim), proofs)

    monkeypatch.setattr(Coordinator, "_plan_proven_retry", lying_plan)
    with corrupt_dealing(monkeypatch, None, dealer, kind="b", victims=None, signed=True):
        run = drive(server, clients, consortium, rounds=1, max_attempts=2)
    assert run.stage_results == [] and len(run.stages) == 0  # no sum of the retry, none of the first
    refused = {c for _, c, category in run.server_refusals if category == "released"}
    assert refused == others - {victim}


def test_a_retry_whose_survivors_are_not_the_bound_is_never_unmasked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same attack one step later: the retry's ready set is right, but the server leaves one honest
    member's masked input out of the survivor set (or that member drops). Summed, it would isolate that
    member; every member refuses to sign a survivor set other than the bound, so nothing is unmasked."""
    server, clients, consortium = toy_world(6)
    dealer, others = _dealer_and_others(clients)
    victim = sorted(others)[0]

    def drop(cid: str, round_: int, stage: str, message: object) -> bool:
        retry = isinstance(message, MaskedInputRequest) and dealer not in message.ready
        return cid == victim and retry

    with corrupt_dealing(monkeypatch, None, dealer, kind="b", victims=None, signed=True):
        run = drive(server, clients, consortium, rounds=1, max_attempts=2, drop=drop)
    assert run.stage_results == [] and len(run.stages) == 0
    complaints = run.violations
    assert set(complaints) == others - {victim}
    assert all(any("bound" in v for v in vs) for vs in complaints.values())


def test_a_dropout_in_the_proven_retry_is_retried_over_the_same_cohort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Liveness (found by an attacker review): one member missing the retry's masked-input request once
    made every later attempt refuse, since the coordinator forgot the only cohort the members accept.
    The planned cohort and proofs now hold for the rest of the round: the third attempt completes."""
    server, clients, consortium = toy_world(6)
    dealer, others = _dealer_and_others(clients)
    victim = sorted(others)[0]
    missed: list[str] = []

    def drop(cid: str, round_: int, stage: str, message: object) -> bool:
        if cid == victim and isinstance(message, MaskedInputRequest) and dealer not in message.ready:
            missed.append(cid)
            return len(missed) == 1
        return False

    with corrupt_dealing(monkeypatch, None, dealer, kind="b", victims=None, signed=True):
        run = drive(server, clients, consortium, rounds=1, max_attempts=3, drop=drop)
    assert run.finished_reason == "completed 1 rounds", (run.finished_reason, run.aborted)
    assert [a[:2] for a in run.aborted] == [(0, 1), (0, 2)]
    assert set(run.stage_results[0][-1].result.contributors) == others
