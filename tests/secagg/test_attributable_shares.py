"""One malicious member cannot stall a round or frame a peer with bad Shamir shares.

The attack (found on main): a member that dealt corrupt or inconsistent shares to its peers was in every
subset the server tried (at most 256), so for n >= 13 every attempt failed, the error named an honest
institution, and after ``max_attempts`` the federation stopped. Now every share carries its dealer's
signed commitment: a holder checks what it received (and keeps nothing of a dealer whose shares do not
match, saying so at unmask), the server uses only shares that match, a dealing that is still wrong is
provably the dealer's, and a holder that reveals anything else is caught as the liar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from secfed.crypto import shamir
from secfed.crypto.agreement import private_to_bytes
from secfed.secagg import client as client_module
from secfed.secagg.errors import DealerFaultError, MalformedInputError, MemberFaultError, Phase, SecAggError
from secfed.secagg.local import LocalRouter
from secfed.secagg.messages import AggregateResult, ComputeReady, UnmaskResponse
from tests.secagg.support import Consortium, Session, corrupt_dealing, make_session

SIZES = [5, 13, 30]


def _exact(session: Session, result: AggregateResult) -> None:
    for name, values in session.expected_sum(result.contributors).items():
        np.testing.assert_array_equal(result.values[name], values)


def _run(
    session: Session, drop: dict[str, Phase] | None = None
) -> tuple[AggregateResult | None, SecAggError | None]:
    run = LocalRouter(session.server, session.clients).run(drop)
    return run.result, run.error


def _honest_not_blamed(session: Session, dealer: str, error: SecAggError | None) -> None:
    assert set(session.server.faults) <= {dealer}, session.server.faults
    if error is not None:
        assert isinstance(error, DealerFaultError) and error.client_id == dealer, error


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["both", "b", "s"])
def test_a_dealer_with_bad_shares_for_every_holder_is_named_before_any_input_leaves(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch, n: int, kind: str
) -> None:
    """Corrupt shares to all (both, only the b-shares, only the s-shares): every honest holder
    complains when it opens them; more complaints than could collude end the session at the compute
    phase, before any masked input is released, naming the dealer and no one else. (A retry without
    the dealer may then sum the same inputs: see tests/adversarial/test_bad_dealer.py.)"""
    session = make_session(consortium, n)
    dealer = session.config.roster[-1]
    with corrupt_dealing(monkeypatch, session.config, dealer, kind=kind, victims=None, signed=False):
        result, error = _run(session)
    assert result is None and isinstance(error, DealerFaultError) and error.client_id == dealer
    assert error.phase is Phase.COMPUTE
    assert error.detail.endswith("; ended before any input was released")  # what the operator reads
    assert set(error.evidence["complainers"]) == set(session.config.roster) - {dealer}
    assert all(c.phase is not Phase.DONE for c in session.clients.values())  # nothing unmasked
    _honest_not_blamed(session, dealer, error)


@pytest.mark.parametrize("n", SIZES)
def test_one_complaint_suffices_because_anyone_can_check_it(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """Corrupt shares to one peer: that holder complains with its cipher key of the session, the server
    opens the dealer's signed ciphertext itself and sees that the dealer lied. Before the change one
    bad holder view could not be told from a lying holder, so a dealer corrupting up to c holders went
    unblamed and could stall the unmask after the inputs were released."""
    session = make_session(consortium, n)
    dealer = session.config.roster[0]
    with corrupt_dealing(monkeypatch, session.config, dealer, kind="b", victims=1, signed=False):
        result, error = _run(session)
    assert result is None and isinstance(error, DealerFaultError) and error.client_id == dealer
    assert error.phase is Phase.COMPUTE and len(error.evidence["complainers"]) == 1
    _honest_not_blamed(session, dealer, error)


def _lying_complaints(
    monkeypatch: pytest.MonkeyPatch, liars: set[str], targets: list[str], *, wrong_key: bool = False
) -> None:
    """Members of ``liars`` complain about honest ``targets`` in their ready notice (with their real
    cipher key, or another one)."""
    original = client_module.ClientSession.ready

    def ready(self: client_module.ClientSession, inputs: Any = None) -> ComputeReady:
        msg = original(self, inputs)
        if self.client_id not in liars:
            return msg
        key = bytes(32) if wrong_key else private_to_bytes(self._cipher_keys.private)  # type: ignore[union-attr]
        return replace(msg, complaints=tuple(t for t in targets if t != self.client_id), cipher_key=key)

    monkeypatch.setattr(client_module.ClientSession, "ready", ready)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wrong_key", [False, True])
def test_lying_complainers_are_named_and_no_honest_dealer_is(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch, n: int, wrong_key: bool
) -> None:
    """The framing attack (attacker review): two members complain about every honest dealer. A count of
    complaints could not tell them from honest ones; the server opens each dealer's signed ciphertext
    with the complainer's revealed key (or finds the key is not the advertised one): the shares open and
    match, so the complainers are the liars, and only they are named. Nothing was released."""
    session = make_session(consortium, n)
    roster = list(session.config.roster)
    liars = set(roster[-2:])
    _lying_complaints(monkeypatch, liars, roster, wrong_key=wrong_key)
    result, error = _run(session)
    assert result is None and isinstance(error, MemberFaultError) and error.client_id in liars
    assert set(session.server.faults) == liars, session.server.faults
    assert all(c.phase is not Phase.DONE for c in session.clients.values())


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("victims", [1, None])
def test_an_inconsistent_signed_dealing_is_provably_the_dealers(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch, n: int, victims: int | None
) -> None:
    """Shares that match the dealer's own signed commitments but are not one sharing of its seed: the
    holders cannot tell, the server can, and every share it used carries the dealer's signature."""
    session = make_session(consortium, n)
    dealer = session.config.roster[-2]
    with corrupt_dealing(monkeypatch, session.config, dealer, kind="b", victims=victims, signed=True):
        result, error = _run(session)
    assert result is None and isinstance(error, DealerFaultError) and error.client_id == dealer
    assert "holders" in error.evidence and session.server.complaints == {}
    _honest_not_blamed(session, dealer, error)


class _ForgingRouter(LocalRouter):
    """A holder that reveals, at unmask, another value for one dealer's share than the one it got."""

    def __init__(
        self, session: Session, liar: str, forge: Callable[[UnmaskResponse], UnmaskResponse]
    ) -> None:
        super().__init__(session.server, session.clients)
        self.session, self.liar, self.forge = session, liar, forge
        self.refused: list[SecAggError] = []
        original = session.server.receive_unmask

        def receive(msg: UnmaskResponse) -> None:
            if msg.sender == liar:
                msg = forge(msg)
            try:
                original(msg)
            except MalformedInputError as exc:  # the transport answers the liar; the others go on
                self.refused.append(exc)

        session.server.receive_unmask = receive  # type: ignore[method-assign]


@pytest.mark.parametrize("n", SIZES)
def test_a_holder_forwarding_a_forged_share_is_caught_as_the_liar(consortium: Consortium, n: int) -> None:
    session = make_session(consortium, n)
    liar, victim = session.config.roster[1], session.config.roster[0]

    def forge(msg: UnmaskResponse) -> UnmaskResponse:
        raw = msg.b_shares[victim]
        share = shamir.Share.from_bytes(raw)
        forged = shamir.Share(share.x, (share.value + 7) % shamir.PRIME).to_bytes()
        return replace(msg, b_shares={**msg.b_shares, victim: forged})

    router = _ForgingRouter(session, liar, forge)
    run = router.run()
    assert run.error is None and run.result is not None  # the others' verified shares suffice
    _exact(session, run.result)
    assert set(session.server.faults) == {liar} and victim not in session.server.faults
    assert [exc.client_id for exc in router.refused] == [liar]
