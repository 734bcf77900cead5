"""A dealer-fault proof convicts a dealer that signed a wrong sharing, and can never convict an honest one.

What it defends: after a dealer's wrong sharing breaks an unmasking, members re-release their inputs into
the retry only over the first survivors minus the *proven* dealers (secfed.fl.releases). A server that
could "prove" an honest member faulty would get the others' inputs summed again without that member and
difference it out. So every way a server could fake a proof about an honest dealer is tried here:
assembling one from its true shares, altering a share, substituting the public check, claiming another
threshold, moving a share to another holder, presenting another consortium's certificate or another session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from secfed.crypto import shamir
from secfed.pki.issue import create_ca, issue_client
from secfed.secagg.errors import DealerFaultError
from secfed.secagg.faultproof import InvalidFaultProofError, check_fault_proof, proven_dealers
from secfed.secagg.local import LocalRouter
from secfed.secagg.messages import AggregateResult, DealingFaultProof
from secfed.secagg.server import ServerSession
from tests.secagg.support import Consortium, corrupt_dealing, make_session


def _wrong_dealing_proof(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch, n: int = 6
) -> tuple[DealingFaultProof, int]:
    session = make_session(consortium, n)
    dealer = session.config.roster[-1]
    with corrupt_dealing(monkeypatch, session.config, dealer, kind="b", victims=1, signed=True):
        run = LocalRouter(session.server, session.clients).run()
    assert isinstance(run.error, DealerFaultError) and run.error.proof is not None
    return run.error.proof, session.config.threshold


@pytest.fixture
def honest_proof(consortium: Consortium) -> Iterator[tuple[DealingFaultProof, int]]:
    """What a lying server would assemble about an honest dealer: its true shares as revealed at unmask,
    with every commitment it signed (taken just before the server finalizes the sum)."""
    session = make_session(consortium, 6)
    dealer = session.config.roster[0]
    captured: list[DealingFaultProof] = []
    finalize = session.server.finalize

    def capture() -> AggregateResult:
        server: ServerSession = session.server
        revealed = {h: r.b_shares[dealer] for h, r in server._unmask.items() if dealer in r.b_shares}
        captured.append(server._fault_proof(dealer, b"b", revealed))
        return finalize()

    session.server.finalize = capture  # type: ignore[method-assign]
    run = LocalRouter(session.server, session.clients).run()
    assert run.error is None and captured
    yield captured[0], session.config.threshold


def test_a_wrong_sharing_is_proven_to_anyone_with_the_consortium_ca(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    proof, t = _wrong_dealing_proof(consortium, monkeypatch)
    assert "do not form one sharing" in check_fault_proof(proof, consortium.trust, t)
    assert dict(proven_dealers([proof], consortium.trust, proof.session_id, t)).keys() == {proof.dealer}


def test_a_proof_about_an_honest_dealer_is_refused(
    consortium: Consortium, honest_proof: tuple[DealingFaultProof, int]
) -> None:
    proof, t = honest_proof
    with pytest.raises(InvalidFaultProofError, match="the dealing is sound"):
        check_fault_proof(proof, consortium.trust, t)


def _altered(proof: DealingFaultProof, change: Callable[[shamir.Share], shamir.Share]) -> DealingFaultProof:
    holder = sorted(proof.shares)[0]
    revealed = proof.shares[holder]
    share = change(shamir.Share.from_bytes(revealed.share))
    return replace(proof, shares={**proof.shares, holder: replace(revealed, share=share.to_bytes())})


def test_an_altered_share_of_an_honest_dealer_is_not_one_it_signed(
    consortium: Consortium, honest_proof: tuple[DealingFaultProof, int]
) -> None:
    proof, t = honest_proof
    forged = _altered(proof, lambda s: shamir.Share(s.x, (s.value + 1) % shamir.PRIME))
    with pytest.raises(InvalidFaultProofError, match="not the one the dealer signed"):
        check_fault_proof(forged, consortium.trust, t)


@pytest.mark.parametrize(
    ("field", "refusal"),
    [("pk_mask", "not signed by the dealer"), ("seed_commitment", "names another seed commitment")],
)
def test_a_substituted_public_check_is_not_the_one_the_dealer_signed(
    consortium: Consortium, honest_proof: tuple[DealingFaultProof, int], field: str, refusal: str
) -> None:
    """With another commitment the honest secret would fail its check: but the dealer signed its own."""
    proof, t = honest_proof
    with pytest.raises(InvalidFaultProofError, match=refusal):
        substituted = (
            replace(proof, pk_mask=bytes(32))
            if field == "pk_mask"
            else replace(proof, seed_commitment=bytes(32))
        )
        check_fault_proof(substituted, consortium.trust, t)


def test_a_seed_commitment_other_than_the_signed_one_is_refused(
    consortium: Consortium, honest_proof: tuple[DealingFaultProof, int]
) -> None:
    """Each commitment names the seed commitment it was signed with; the proof must use that one."""
    proof, t = honest_proof
    holder = sorted(proof.shares)[0]
    revealed = proof.shares[holder]
    wrong = replace(revealed, commitment=replace(revealed.commitment, seed_commitment=bytes(32)))
    with pytest.raises(InvalidFaultProofError, match="not signed by the dealer"):
        check_fault_proof(replace(proof, shares={**proof.shares, holder: wrong}), consortium.trust, t)


def test_the_threshold_is_the_verifiers_and_too_few_shares_prove_nothing(
    consortium: Consortium, honest_proof: tuple[DealingFaultProof, int]
) -> None:
    """Fewer than t honest shares interpolate to another secret: the count is checked against the
    session's own threshold, which the proof does not carry."""
    proof, t = honest_proof
    few = replace(proof, shares=dict(sorted(proof.shares.items())[: t - 1]))
    with pytest.raises(InvalidFaultProofError, match=f"only {t - 1} signed shares"):
        check_fault_proof(few, consortium.trust, t)
    # The same shares checked as if the threshold were t - 1 would "reconstruct" a wrong secret.
    assert check_fault_proof(few, consortium.trust, t - 1)


def test_a_certificate_of_another_consortium_or_another_member_is_refused(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    proof, t = _wrong_dealing_proof(consortium, monkeypatch)
    stranger = issue_client(create_ca("another consortium"), proof.dealer)
    with pytest.raises(InvalidFaultProofError, match="certificate is refused"):
        check_fault_proof(replace(proof, cert_chain=stranger.chain_der()), consortium.trust, t)
    other = sorted(consortium.identities)[0]
    with pytest.raises(InvalidFaultProofError, match="belongs to"):
        check_fault_proof(replace(proof, dealer=other), consortium.trust, t)


def test_a_proof_of_another_session_or_a_false_one_proves_no_one(
    consortium: Consortium,
    monkeypatch: pytest.MonkeyPatch,
    honest_proof: tuple[DealingFaultProof, int],
) -> None:
    proof, t = _wrong_dealing_proof(consortium, monkeypatch)
    assert proven_dealers([proof], consortium.trust, bytes(32), t) == {}
    honest, _ = honest_proof
    assert proven_dealers([honest], consortium.trust, honest.session_id, t) == {}
    with pytest.raises(InvalidFaultProofError, match="unknown share kind"):
        check_fault_proof(replace(proof, kind=b"x"), consortium.trust, t)


def test_a_proof_that_breaks_a_parser_proves_nothing_and_spoils_no_other(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lying server put a certificate with an out-of-range version in a proof (found by an attacker
    review: the library's exception escaped and killed the client). It proves nothing; a genuine proof
    beside it still counts."""
    proof, t = _wrong_dealing_proof(consortium, monkeypatch)
    leaf = proof.cert_chain[0]
    broken = replace(
        proof, cert_chain=(leaf.replace(bytes.fromhex("a003020102"), bytes.fromhex("a003020177")),)
    )
    assert proven_dealers([broken], consortium.trust, proof.session_id, t) == {}
    assert dict(proven_dealers([broken, proof], consortium.trust, proof.session_id, t)).keys() == {
        proof.dealer
    }


def test_no_threshold_below_two_and_no_holder_outside_the_session_proves_anything(
    consortium: Consortium, honest_proof: tuple[DealingFaultProof, int]
) -> None:
    """A release record that lost its threshold loads it as 0: with it, the honest dealer's shares (or
    none at all) would reconstruct "a wrong secret". And a share's holder must be of the session."""
    proof, t = honest_proof
    for threshold in (1, 0, -1):
        with pytest.raises(InvalidFaultProofError, match="proves nothing"):
            check_fault_proof(replace(proof, shares={}), consortium.trust, threshold)
    holders = set(proof.shares)
    some = sorted(holders)[0]
    with pytest.raises(InvalidFaultProofError, match="outside the session"):
        check_fault_proof(proof, consortium.trust, t, members=holders - {some})
