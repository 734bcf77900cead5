"""A lying server, played by hand: each attack is refused by the honest clients with a typed error.

The test double below drives real client state machines but builds the server's messages itself, so
it can substitute, split, reorder, misroute and replay them at will.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from secfed.crypto.agreement import generate_keypair
from secfed.crypto.identity import TrustAnchor
from secfed.pki.issue import create_ca, issue_client
from secfed.secagg.client import ClientSession
from secfed.secagg.errors import (
    BelowThresholdError,
    ConfigError,
    ConfigMismatchError,
    InconsistentViewError,
    InvalidAdvertError,
    ModelHashMismatchError,
    Phase,
    PhaseOrderError,
    ReplayError,
    SignatureError,
)
from secfed.secagg.messages import (
    AdvertBroadcast,
    ConsistencyRequest,
    MaskedInputRequest,
    ShareKeysRelay,
    ShareKeysUpload,
    UnmaskRequest,
)
from tests.secagg.support import Consortium, Session, make_config, make_session, small_spec


class LyingServer:
    """Plays the server by hand over honest clients; every step can be tampered with by the test."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.clients = session.clients
        self.roster = session.config.roster
        self.round = session.config.round
        self.digest = session.config.digest()

    def adverts(self) -> AdvertBroadcast:
        return AdvertBroadcast(
            self.round, self.digest, tuple(self.clients[c].advertise() for c in self.roster)
        )

    def share(self, broadcast: AdvertBroadcast) -> dict[str, ShareKeysUpload]:
        return {c: self.clients[c].on_advert_broadcast(broadcast) for c in self.roster}

    def relay(self, uploads: dict[str, ShareKeysUpload], to: str) -> ShareKeysRelay:
        sid = uploads[to].session_id
        cts = {u: up.ciphertexts[to] for u, up in uploads.items() if u != to}
        commitments = {u: up.commitments[to] for u, up in uploads.items() if u != to}
        return ShareKeysRelay(sid, to, tuple(uploads), cts, commitments)

    def through_masked_input(self) -> tuple[bytes, dict[str, ShareKeysUpload]]:
        uploads = self.share(self.adverts())
        sid = uploads[self.roster[0]].session_id
        for c in self.roster:
            self.clients[c].on_share_relay(self.relay(uploads, c))
            self.clients[c].ready()
            self.clients[c].on_masked_input_request(MaskedInputRequest(sid, self.roster))
        return sid, uploads

    def through_consistency(self) -> tuple[bytes, dict[str, bytes]]:
        sid, _ = self.through_masked_input()
        request = ConsistencyRequest(sid, self.roster)
        sigs = {c: self.clients[c].on_consistency_request(request).signature for c in self.roster}
        return sid, sigs


@pytest.fixture
def liar(consortium: Consortium) -> LyingServer:
    return LyingServer(make_session(consortium, 6))  # t = 5


def test_substituted_public_key_is_refused(liar: LyingServer) -> None:
    bc = liar.adverts()
    victim = liar.roster[3]
    forged = tuple(
        replace(a, pk_cipher=generate_keypair().public) if a.client_id == victim else a for a in bc.adverts
    )
    honest = liar.clients[liar.roster[0]]
    with pytest.raises(SignatureError) as err:
        honest.on_advert_broadcast(replace(bc, adverts=forged))
    assert err.value.client_id == victim and err.value.phase is Phase.ADVERTISE
    assert honest.phase is Phase.ABORTED and not honest.holds_secrets


def test_own_advert_replaced_or_dropped_is_refused(liar: LyingServer) -> None:
    bc = liar.adverts()
    me = liar.roster[0]
    without_me = tuple(a for a in bc.adverts if a.client_id != me)
    with pytest.raises(InvalidAdvertError):
        liar.clients[me].on_advert_broadcast(replace(bc, adverts=without_me))


def test_split_view_of_key_list_is_detected(liar: LyingServer) -> None:
    bc = liar.adverts()
    a, b, d = liar.roster[0], liar.roster[1], liar.roster[5]
    partial = replace(bc, adverts=tuple(x for x in bc.adverts if x.client_id != d))
    upload_a = liar.clients[a].on_advert_broadcast(partial)  # A sees 5 of 6 keys: still >= t
    uploads = {c: liar.clients[c].on_advert_broadcast(bc) for c in liar.roster if c != a}
    assert upload_a.session_id != uploads[b].session_id
    uploads[a] = upload_a
    relay = ShareKeysRelay(
        uploads[b].session_id,
        b,
        tuple(liar.roster),
        {u: up.ciphertexts[b] for u, up in uploads.items() if u != b},
        {u: up.commitments[b] for u, up in uploads.items() if u != b},
    )
    # A signed its shares under the session id of the view it was shown: in B's session that signature
    # does not verify, and the fault is the server's (A is honest and is not blamed).
    with pytest.raises(SignatureError) as err:
        liar.clients[b].on_share_relay(relay)
    assert err.value.client_id is None and repr(a) in str(err.value)


def test_share_forwarded_to_wrong_peer_is_refused(liar: LyingServer) -> None:
    uploads = liar.share(liar.adverts())
    a, b, c = liar.roster[:3]
    relay = liar.relay(uploads, b)
    misrouted = dict(relay.ciphertexts)
    misrouted[a] = uploads[a].ciphertexts[c]  # A's ciphertext for C handed to B
    # A's signature covers the ciphertext it made for B: another one under it is the server's doing.
    with pytest.raises(SignatureError) as err:
        liar.clients[b].on_share_relay(replace(relay, ciphertexts=misrouted))
    assert err.value.client_id is None and err.value.phase is Phase.SHARE_KEYS


def test_relay_missing_a_ciphertext_is_refused(liar: LyingServer) -> None:
    uploads = liar.share(liar.adverts())
    b = liar.roster[1]
    relay = liar.relay(uploads, b)
    fewer = {k: v for k, v in relay.ciphertexts.items() if k != liar.roster[4]}
    with pytest.raises(InconsistentViewError):
        liar.clients[b].on_share_relay(replace(relay, ciphertexts=fewer))


def test_client_listed_as_both_alive_and_dropped_is_refused(liar: LyingServer) -> None:
    sid, sigs = liar.through_consistency()
    victim = liar.roster[2]
    honest = liar.clients[liar.roster[0]]
    with pytest.raises(InconsistentViewError) as err:
        honest.on_unmask_request(UnmaskRequest(sid, liar.roster, (victim,), sigs))
    assert "both alive and dropped" in str(err.value)
    assert not honest.holds_secrets  # aborted, nothing revealed


def test_dropped_set_not_matching_own_view_is_refused(liar: LyingServer) -> None:
    sid, sigs = liar.through_consistency()
    victim = liar.roster[2]
    u3 = tuple(c for c in liar.roster if c != victim)  # claims victim dropped after it signed U3 with it
    with pytest.raises(InconsistentViewError):
        liar.clients[liar.roster[0]].on_unmask_request(UnmaskRequest(sid, u3, (victim,), sigs))


def test_unmask_request_answered_once(liar: LyingServer) -> None:
    sid, sigs = liar.through_consistency()
    honest = liar.clients[liar.roster[0]]
    first = honest.on_unmask_request(UnmaskRequest(sid, liar.roster, (), sigs))
    assert first.s_shares == {}
    with pytest.raises(PhaseOrderError):
        honest.on_unmask_request(UnmaskRequest(sid, liar.roster[:-1], (liar.roster[-1],), sigs))


def test_forged_consistency_signature_is_refused(liar: LyingServer) -> None:
    sid, sigs = liar.through_consistency()
    sigs = dict(sigs)
    sigs[liar.roster[4]] = sigs[liar.roster[3]]
    with pytest.raises(SignatureError) as err:
        liar.clients[liar.roster[0]].on_unmask_request(UnmaskRequest(sid, liar.roster, (), sigs))
    assert err.value.client_id == liar.roster[4]


def test_too_few_contributors_are_refused(liar: LyingServer) -> None:
    sid, _ = liar.through_masked_input()
    honest = liar.clients[liar.roster[0]]
    with pytest.raises(BelowThresholdError):
        honest.on_consistency_request(ConsistencyRequest(sid, liar.roster[:3]))


def test_too_few_adverts_are_refused(liar: LyingServer) -> None:
    bc = liar.adverts()
    with pytest.raises(BelowThresholdError):
        liar.clients[liar.roster[0]].on_advert_broadcast(replace(bc, adverts=bc.adverts[:3]))


def test_too_few_consistency_signatures_are_refused(liar: LyingServer) -> None:
    sid, sigs = liar.through_consistency()
    few = dict(list(sigs.items())[:3])
    with pytest.raises(BelowThresholdError):
        liar.clients[liar.roster[0]].on_unmask_request(UnmaskRequest(sid, liar.roster, (), few))


def test_replayed_advert_from_earlier_round_is_refused(consortium: Consortium) -> None:
    old = make_session(consortium, 6, round_=1)
    old_adverts = {c: old.clients[c].advertise() for c in old.config.roster}
    new = LyingServer(make_session(consortium, 6, round_=2))
    bc = new.adverts()
    victim = new.roster[2]
    replayed = tuple(old_adverts[victim] if a.client_id == victim else a for a in bc.adverts)
    with pytest.raises(ReplayError) as err:
        new.clients[new.roster[0]].on_advert_broadcast(replace(bc, adverts=replayed))
    assert err.value.client_id == victim


def test_replayed_messages_from_earlier_session_are_refused(consortium: Consortium) -> None:
    old = LyingServer(make_session(consortium, 6))
    old_sid, old_uploads = old.through_masked_input()
    new = LyingServer(make_session(consortium, 6))
    uploads = new.share(new.adverts())
    b = new.roster[1]
    with pytest.raises(ReplayError):
        new.clients[b].on_share_relay(old.relay(old_uploads, b))
    new2 = LyingServer(make_session(consortium, 6))
    new2.through_masked_input()
    with pytest.raises(ReplayError):
        new2.clients[b].on_consistency_request(ConsistencyRequest(old_sid, new2.roster))
    del uploads


def test_old_consistency_signatures_are_refused(consortium: Consortium) -> None:
    old = LyingServer(make_session(consortium, 6))
    _, old_sigs = old.through_consistency()
    new = LyingServer(make_session(consortium, 6))
    sid, _ = new.through_consistency()
    with pytest.raises(SignatureError):
        new.clients[new.roster[0]].on_unmask_request(UnmaskRequest(sid, new.roster, (), old_sigs))


def test_different_model_hash_sent_to_a_subset_is_detected(consortium: Consortium) -> None:
    roster = consortium.ids(6)
    spec = small_spec()
    other_model = hashlib.sha256(b"a different model").digest()
    ours = consortium.trust.consortium_id
    honest_config = make_config(roster, spec, consortium=ours)
    configs = {
        c: make_config(roster, spec, model_hash=other_model, consortium=ours)
        if c in roster[4:]
        else honest_config
        for c in roster
    }
    clients = {
        c: ClientSession(
            identity=consortium.identities[c],
            trust=consortium.trust,
            config=configs[c],
            model_hash=configs[c].model_hash,
            inputs={"delta": [0.0] * 16, "weight": [1.0]},
        )
        for c in roster
    }
    adverts = tuple(clients[c].advertise() for c in roster)
    honest = roster[0]
    bc = AdvertBroadcast(1, configs[honest].digest(), adverts)
    with pytest.raises(ModelHashMismatchError) as err:
        clients[honest].on_advert_broadcast(bc)
    assert err.value.client_id == roster[4]


def test_sybil_advert_from_foreign_ca_is_refused(liar: LyingServer) -> None:
    foreign = issue_client(create_ca("evil CA"), liar.roster[5])
    bc = liar.adverts()
    genuine = next(a for a in bc.adverts if a.client_id == liar.roster[5])
    fake = replace(genuine, cert_chain=foreign.chain_der())
    fake = replace(fake, signature=foreign.sign(fake.signed_payload()))
    adverts = tuple(fake if a.client_id == liar.roster[5] else a for a in bc.adverts)
    with pytest.raises(InvalidAdvertError) as err:
        liar.clients[liar.roster[0]].on_advert_broadcast(replace(bc, adverts=adverts))
    assert "foreign-ca" in str(err.value)


def test_threshold_below_client_floor_is_refused(consortium: Consortium) -> None:
    roster = consortium.ids(9)
    weak = replace(
        make_config(roster, small_spec(), consortium=consortium.trust.consortium_id),
        threshold=5,
        n_colluding=0,
    )  # n=9: 5 > 9/2 ok for server
    with pytest.raises(ConfigError) as err:
        ClientSession(
            identity=consortium.identities[roster[0]],
            trust=consortium.trust,
            config=weak,
            model_hash=weak.model_hash,
            inputs={"delta": [0.0] * 16, "weight": [1.0]},
        )
    assert "floor" in str(err.value)


def test_an_advert_signed_in_another_consortium_is_refused(consortium: Consortium) -> None:
    """A member of two consortia may hold one key certified by both CAs. Without the consortium in the
    signed configuration, a server (or a colluding coordinator of the other consortium) could take the
    advert that member signed in consortium A, attach its consortium-B certificate, and have B's
    members accept A's keys: the signature verifies, since the key and every other field are the same.
    The consortium id (hash of the CA certificate) inside the digest makes it another configuration."""
    roster = consortium.ids(6)
    member = roster[5]
    other_ca = create_ca("another consortium CA")
    other = Consortium(
        ca=other_ca,
        trust=TrustAnchor(other_ca.certificate),
        identities={
            c: issue_client(other_ca, c, key=consortium.identities[c].private_key if c == member else None)
            for c in roster
        },
    )

    def clients(of: Consortium) -> dict[str, ClientSession]:
        config = make_config(roster, small_spec(), consortium=of.trust.consortium_id)
        return {
            c: ClientSession(
                identity=of.identities[c],
                trust=of.trust,
                config=config,
                model_hash=config.model_hash,
                inputs={"delta": [0.0] * 16, "weight": [1.0]},
            )
            for c in roster
        }

    in_a, in_b = clients(consortium), clients(other)
    from_a = in_a[member].advertise()
    adverts_b = {c: in_b[c].advertise() for c in roster}
    replayed = replace(from_a, cert_chain=other.identities[member].chain_der())
    bc = AdvertBroadcast(
        1, adverts_b[roster[0]].config_digest, (*[adverts_b[c] for c in roster[:5]], replayed)
    )
    with pytest.raises(ConfigMismatchError) as err:
        in_b[roster[0]].on_advert_broadcast(bc)
    assert err.value.client_id == member
    # The same member's own advert in consortium B is accepted (the refusal is about the consortium).
    fresh = clients(other)
    own = tuple(fresh[c].advertise() for c in roster)
    fresh[roster[0]].on_advert_broadcast(AdvertBroadcast(1, own[0].config_digest, own))
