"""One test per security check, each built so that *only* that check stands between the attack and success.

A mutation experiment (removing one check at a time) found checks whose removal no test noticed: every
existing attack also tripped an earlier check. Each test here drives an honest session through the real
server and clients and changes exactly one thing, so every other check is satisfied; where it helps, a
control shows the untampered message is accepted by the same kind of client.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pytest

from secfed.crypto import aead, shamir
from secfed.secagg import derive
from secfed.secagg.client import ClientSession
from secfed.secagg.errors import InconsistentViewError, ModelHashMismatchError, Phase, SecAggError
from secfed.secagg.messages import (
    AggregateResult,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInputRequest,
    MaskedInputUpload,
    UnmaskRequest,
    UnmaskResponse,
)
from tests.secagg.support import Consortium, Session, make_session


@dataclass
class Masked:
    """An honest session driven through the masked-input phase (the server has not closed it yet)."""

    s: Session
    request: MaskedInputRequest
    uploads: dict[str, MaskedInputUpload]


def drive_to_masked_input(
    s: Session, *, no_shares: tuple[str, ...] = (), before_dealing: Callable[[str], None] | None = None
) -> Masked:
    """Honest advertise, share-keys and compute phases; ``no_shares`` advertise but never share keys.

    ``before_dealing(client_id)`` runs just before each client makes (deals) its shares."""
    srv = s.server
    for c in s.clients.values():
        srv.receive_advert(c.advertise())
    broadcast = srv.close_advertise()
    for cid, c in s.clients.items():
        if before_dealing is not None:
            before_dealing(cid)
        upload = c.on_advert_broadcast(broadcast)
        if cid not in no_shares:
            srv.receive_shares(upload)
    relays = srv.close_share_keys()
    for cid, relay in relays.items():
        s.clients[cid].on_share_relay(relay)
        srv.receive_ready(s.clients[cid].ready())
    request = srv.close_compute()
    uploads = {cid: s.clients[cid].on_masked_input_request(request) for cid in request.ready}
    return Masked(s, request, uploads)


def drive_to_unmask(
    s: Session,
    *,
    no_shares: tuple[str, ...] = (),
    no_input: tuple[str, ...] = (),
    before_dealing: Callable[[str], None] | None = None,
) -> UnmaskRequest:
    """Honest run up to the server's unmask request; ``no_input`` drop before sending their masked input."""
    m = drive_to_masked_input(s, no_shares=no_shares, before_dealing=before_dealing)
    srv = s.server
    for cid, upload in m.uploads.items():
        if cid not in no_input:
            srv.receive_masked_input(upload)
    consistency = srv.close_masked_input()
    for cid in consistency.u3:
        srv.receive_consistency(s.clients[cid].on_consistency_request(consistency))
    return srv.close_consistency()


def assert_exact(s: Session, result: AggregateResult) -> None:
    expected = s.expected_sum(result.contributors)
    assert set(result.values) == set(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(result.values[name], values)


# -- 1. the client compares the server's dropped list with its own view (U2 minus U3) -------------------


@pytest.mark.parametrize("lie", ["hides-the-drop", "adds-a-client-outside-u2", "lists-the-drop-twice"])
def test_unmask_request_whose_dropped_list_differs_from_own_view_is_refused(
    consortium: Consortium, lie: str
) -> None:
    """Attack: at unmask the server sends the true U3 (the one every client signed) and valid signatures,
    but misstates who dropped: it hides a client that shared keys and then dropped (so its record of the
    session claims a full cohort), names a client that never shared keys (never in U2), or lists the drop
    twice. The client's s-shares would follow its own view either way, but a client that answers a
    request whose transcript it knows to be false endorses a record the server made up; it refuses.
    Nobody is listed as both alive and dropped and U3 is exact, so only the dropped-list comparison
    (``dropped != U2 - U3``, and its duplicate-free length check) can catch it."""
    s = make_session(consortium, 7)  # t = 5, release floor 5
    r = s.config.roster
    never_shared, dropped = r[6], r[5]
    honest = drive_to_unmask(s, no_shares=(never_shared,), no_input=(dropped,))
    assert honest.dropped == (dropped,) and honest.u3 == r[:5]
    lied = {
        "hides-the-drop": (),
        "adds-a-client-outside-u2": (dropped, never_shared),
        "lists-the-drop-twice": (dropped, dropped),
    }[lie]
    victim, control = s.clients[r[0]], s.clients[r[1]]
    with pytest.raises(InconsistentViewError, match="dropped set") as err:
        victim.on_unmask_request(replace(honest, dropped=lied))
    assert err.value.phase is Phase.UNMASK
    assert victim.phase is Phase.ABORTED and not victim.holds_secrets  # nothing revealed
    # The same request with the true dropped list is answered: the lie is the only difference.
    answer = control.on_unmask_request(honest)
    assert set(answer.s_shares) == {dropped}


# -- 2. U3 must be a subset of U2 (client, consistency phase) -------------------------------------------


def test_u3_padded_with_a_client_outside_u2_is_not_signed(consortium: Consortium) -> None:
    """Attack: only four institutions send a masked input, one short of the release floor of five. The
    server pads the survivor set U3 with a (colluding) roster member that advertised keys but never
    shared them, so it is not in U2: nobody holds shares of its masks, the server supplies its "input"
    itself, and the real sum would be released over four honest institutions. U3 is duplicate-free,
    holds the client and reaches the floor, so only the ``U3 <= U2`` check refuses to sign it."""
    s = make_session(consortium, 6)  # t = 5, release floor 5
    r = s.config.roster
    outsider, dropped = r[5], r[4]
    m = drive_to_masked_input(s, no_shares=(outsider,))
    assert set(m.request.ready) == set(r[:5])  # U2: everyone but the outsider
    senders = r[:4]  # `dropped` never sends its masked input
    padded = ConsistencyRequest(session_id=s.server.session_id, u3=(*senders, outsider))
    victim = s.clients[r[0]]
    with pytest.raises(InconsistentViewError, match="U3") as err:
        victim.on_consistency_request(padded)
    assert err.value.phase is Phase.CONSISTENCY
    assert victim.phase is Phase.ABORTED and not victim.holds_secrets
    # Control: a U3 made of U2 members only (the same size) is signed by another client.
    fair = ConsistencyRequest(session_id=s.server.session_id, u3=(*senders, dropped))
    assert isinstance(s.clients[r[1]].on_consistency_request(fair), ConsistencySignature)


# -- 3. the client's own model-hash check at configure time ---------------------------------------------


def test_configuration_naming_another_model_than_the_downloaded_one_is_refused(
    consortium: Consortium,
) -> None:
    """Attack: the server hands a client one global model to train on, but a session configuration naming
    another (the one the rest of the cohort signs). Every later message, the client's own advert included,
    carries the configuration's hash, so nothing downstream notices: the client would contribute an update
    computed on a model of the server's choosing under the name of the agreed one. Only the constructor's
    comparison of the downloaded model's hash with ``config.model_hash`` refuses it."""
    s = make_session(consortium, 6)
    cid = s.config.roster[0]
    downloaded = hashlib.sha256(b"the model this client was actually sent").digest()
    assert downloaded != s.config.model_hash

    def session(model_hash: bytes) -> ClientSession:
        return ClientSession(
            identity=consortium.identities[cid],
            trust=consortium.trust,
            config=s.config,
            model_hash=model_hash,
            inputs=s.inputs[cid],
        )

    with pytest.raises(ModelHashMismatchError) as err:
        session(downloaded)
    assert err.value.phase is Phase.CONFIGURE
    assert session(s.config.model_hash).phase is Phase.CONFIGURE  # control: the right model is accepted


# -- 4. the server checks every reconstructed secret --------------------------------------------------


def _shift_share(raw: bytes, xs: tuple[int, ...], delta: int) -> bytes:
    """Tweak one Shamir share so that interpolating it with the shares at ``xs`` yields ``secret + delta``.

    Shamir is linear: adding ``d`` to the share at ``x_j`` moves the secret by ``lambda_j * d``, with
    ``lambda_j = prod_{k != j} x_k / (x_k - x_j)``; choosing ``d = delta / lambda_j`` moves it by exactly
    ``delta``, so the result stays a plausible 32-byte secret and no range check can notice.
    """
    share = shamir.Share.from_bytes(raw)
    p = shamir.PRIME
    lam = 1
    for x in xs:
        if x != share.x:
            lam = lam * x * pow(x - share.x, -1, p) % p
    tweaked = shamir.Share(x=share.x, value=(share.value + delta * pow(lam, -1, p)) % p)
    return tweaked.to_bytes() + raw[len(tweaked.to_bytes()) :]


@pytest.mark.parametrize("secret", ["b-seed of a survivor", "mask key of a dropped client"])
def test_a_corrupt_share_revealed_at_unmask_never_yields_a_wrong_aggregate(
    consortium: Consortium, secret: str
) -> None:
    """Attack: a malicious holder reveals, at unmask, a share it has shifted so the secret rebuilt from it
    is off by one (a survivor's self-mask seed, or a dropped client's mask key) yet still looks like a
    valid secret. Without a check of every reconstructed secret (against the b-commitment, or the advertised
    mask public key) the server would subtract the wrong mask and return a silently wrong aggregate. The
    server may refuse the share, or raise, or recover from the other shares; it must never return a wrong
    sum. (The shift is aimed at the first ``t`` shares in roster order, the subset tried first.)"""
    s = make_session(consortium, 7)  # t = 5
    r = s.config.roster
    no_input = (r[6],) if secret.startswith("mask key") else ()
    request = drive_to_unmask(s, no_input=no_input)
    responses: list[UnmaskResponse] = [s.clients[c].on_unmask_request(request) for c in r if c in request.u3]
    liar = responses[0]
    xs = tuple(s.config.position(resp.sender) + 1 for resp in responses[: s.config.threshold])
    if no_input:
        target = r[6]
        assert set(liar.s_shares) == {target}
        s_shares = {target: _shift_share(liar.s_shares[target], xs, 1)}
        responses[0] = replace(liar, s_shares=s_shares)
    else:
        target = r[3]
        b_shares = dict(liar.b_shares)
        b_shares[target] = _shift_share(b_shares[target], xs, 1)
        responses[0] = replace(liar, b_shares=b_shares)
    for resp in responses:
        try:
            s.server.receive_unmask(resp)
        except SecAggError:
            assert resp is responses[0]  # refusing the corrupt response is fine, never an honest one
    try:
        result = s.server.finalize()
    except SecAggError:
        return  # refusing to produce a sum is safe
    assert_exact(s, result)


@pytest.mark.parametrize("secret", ["b-seed of a survivor", "mask key of a dropped client"])
def test_a_dealer_sharing_another_secret_than_it_committed_to_never_yields_a_wrong_aggregate(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    """Attack: a malicious member deals consistent Shamir shares (every holder's share lies on one
    polynomial, and matches whatever the dealer signs for it) of a secret one bit away from the one it
    really uses: it masks with its true self-mask seed and commits to it, or advertises its true mask
    key, but shares another. Every share is then "valid"; only the check of the reconstructed secret
    against the b-commitment or the advertised mask public key tells that the secret is not the one in
    use. Without it the server removes the wrong mask and returns a silently wrong aggregate; with it,
    it raises (and may name the dealer)."""
    s = make_session(consortium, 7)  # t = 5
    r = s.config.roster
    dealer = r[6] if secret.startswith("mask key") else r[3]
    real_split = shamir.split
    now_dealing = [""]  # the client making its shares right now
    dealt: list[int] = []

    def split_another_secret(
        secret_: bytes, threshold: int, positions: Sequence[int]
    ) -> dict[int, shamir.Share]:
        if now_dealing[0] == dealer:
            dealt.append(1)
            flipped = bytearray(secret_)
            flipped[16] ^= 0x01  # a bit no X25519 clamping touches
            secret_ = bytes(flipped)
        return real_split(secret_, threshold, positions)

    def before_dealing(cid: str) -> None:
        now_dealing[0] = cid

    monkeypatch.setattr(shamir, "split", split_another_secret)
    request = drive_to_unmask(s, no_input=(dealer,) if dealer == r[6] else (), before_dealing=before_dealing)
    monkeypatch.undo()
    assert dealt, "the client no longer deals through secfed.crypto.shamir.split: update this test"
    for cid in r:
        if cid in request.signatures:
            s.server.receive_unmask(s.clients[cid].on_unmask_request(request))
    try:
        result = s.server.finalize()
    except SecAggError:
        return  # refusing to produce a sum is safe
    assert_exact(s, result)


# -- 5. the recipient inside the share ciphertext's associated data ---------------------------------------


def test_share_ciphertext_readdressed_to_another_recipient_does_not_open() -> None:
    """Attack: the server relays the share ciphertext A sealed for C to B instead. In the protocol B's key
    would differ too (the share key is derived per ordered pair), so this pins the other, independent
    defence: even under the *same* key, the associated data ``share_ad(sid, sender, recipient)`` names the
    recipient, so a ciphertext sealed for C fails to open as one addressed to B (and so does one whose
    sender and recipient are swapped, or that claims another session or sender). Removing the recipient
    from the associated data makes it open."""
    sid = os.urandom(32)
    a, b, c = "c00", "c01", "c02"
    key = derive.share_key(os.urandom(32), sid, a, c)
    plaintext = derive.share_plaintext(a, c, b"s-share", b"b-share")
    sealed = aead.seal(key, plaintext, derive.share_ad(sid, a, c))
    assert aead.open_sealed(key, sealed, derive.share_ad(sid, a, c)) == plaintext  # control
    with pytest.raises(aead.DecryptionError):
        aead.open_sealed(key, sealed, derive.share_ad(sid, a, b))
    with pytest.raises(aead.DecryptionError):
        aead.open_sealed(key, sealed, derive.share_ad(sid, c, a))
    assert len({derive.share_ad(sid, a, x) for x in (b, c, "c03")}) == 3
    # The other fields are bound the same way: another session, another sender.
    for other in (derive.share_ad(os.urandom(32), a, c), derive.share_ad(sid, b, c)):
        with pytest.raises(aead.DecryptionError):
            aead.open_sealed(key, sealed, other)
