"""Through the real coordinator: a member that deals bad shares is named, left out, and the round
completes in the next attempt without it; no honest member is blamed and the federation goes on.

The attack it defeats (found on main): one member dealing corrupt shares to its peers made every attempt
of the round fail (the server's subset search always included its shares), named an honest institution
in the error, and stopped the federation after ``max_attempts``.
"""

from __future__ import annotations

import pytest

from secfed.bench.attacks import toy_world
from secfed.bench.inprocess import drive
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


@pytest.mark.parametrize("n", [5, 13])
def test_an_inconsistent_signed_dealing_is_pinned_on_the_dealer_alone(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """Shares that match the dealer's signed commitments but are not one sharing: caught only at
    unmask, after the honest inputs were released to that session. The dealer is named with the
    evidence and left out; no honest member is blamed. The retry then sums the same (non-DP) inputs
    over another cohort, which the no-differencing rule refuses, so this round stops the run (a known
    gap: a retry proven equal to the first cohort minus the proven dealer would be safe to allow)."""
    server, clients, consortium = toy_world(n)
    dealer = sorted(clients)[-1]
    with corrupt_dealing(monkeypatch, None, dealer, kind="b", victims=None, signed=True):
        run = drive(server, clients, consortium, rounds=1, max_attempts=2)
    first, second = run.aborted
    assert f"client {dealer!r}" in first[2]
    assert "do not form one sharing" in first[2] or "does not match its own commitment" in first[2]
    assert not any(f"client {c!r}" in first[2] for c in set(clients) - {dealer})
    assert "released" in second[2] and dealer not in second[2]
