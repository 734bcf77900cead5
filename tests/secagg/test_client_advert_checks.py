"""Each check an institution makes on its peers' adverts, one at a time, with its exact verdict.

The server relays the adverts: a lying server can insert one from outside the roster, replay one from
another round, relay one made for another model or configuration (the peer was shown something else),
swap keys, or attach another member's certificate. The institution refuses the broadcast before it
deals a single share, and names the advert's client, the phase and the reason (what its log and its
refusal say). Every case changes one field of an honest advert, so only the check under test decides.
Found by ``scripts/mutation --scored-only`` on secfed/secagg/client.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from secfed.pki import create_ca, issue_client
from secfed.secagg.client import ClientSession
from secfed.secagg.errors import (
    ConfigError,
    ConfigMismatchError,
    InvalidAdvertError,
    ModelHashMismatchError,
    Phase,
    PhaseOrderError,
    ReplayError,
    SecAggError,
    SignatureError,
)
from secfed.secagg.messages import AdvertBroadcast, AdvertiseKeys, ShareKeysRelay
from tests.secagg.support import Consortium, Session, make_session

VICTIM = "c00"  # the institution whose checks are tested
PEER = "c02"  # the advert the server tampers with


def _broadcast(s: Session) -> AdvertBroadcast:
    for c in s.clients.values():
        s.server.receive_advert(c.advertise())
    return s.server.close_advertise()


def _with(bc: AdvertBroadcast, advert: AdvertiseKeys) -> AdvertBroadcast:
    return replace(bc, adverts=tuple(advert if a.client_id == PEER else a for a in bc.adverts))


def _refused(s: Session, bc: AdvertBroadcast, kind: type[SecAggError], who: str, detail: str) -> None:
    with pytest.raises(kind) as err:
        s.clients[VICTIM].on_advert_broadcast(bc)
    assert type(err.value) is kind
    assert (err.value.phase, err.value.client_id, err.value.detail) == (Phase.ADVERTISE, who, detail)


def _peer_advert(bc: AdvertBroadcast) -> AdvertiseKeys:
    return next(a for a in bc.adverts if a.client_id == PEER)


def test_an_advert_from_outside_the_roster_is_refused(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    bc = _broadcast(s)
    outsider = make_session(consortium, 6).clients["c05"].advertise()
    _refused(
        s,
        replace(bc, adverts=(*bc.adverts, outsider)),
        InvalidAdvertError,
        "c05",
        "advert from a client outside the round roster",
    )


@pytest.mark.parametrize(
    ("change", "kind", "detail"),
    [
        ({"round": 7}, ReplayError, "advert signed for round 7"),
        ({"model_hash": bytes(32)}, ModelHashMismatchError, "peer was handed a different global model"),
        (
            {"config_digest": bytes(32)},
            ConfigMismatchError,
            "peer was handed a different session configuration",
        ),
        ({"pk_cipher": bytes(31)}, InvalidAdvertError, "malformed or identical public keys"),
        ({"pk_mask": bytes(31)}, InvalidAdvertError, "malformed or identical public keys"),
        ({"signature": b"\x00" * 64}, SignatureError, "advert signature does not verify"),
    ],
    ids=[
        "replayed round",
        "other model",
        "other configuration",
        "short cipher key",
        "short mask key",
        "bad signature",
    ],
)
def test_a_tampered_advert_is_refused_naming_its_client(
    consortium: Consortium, change: dict[str, Any], kind: type[SecAggError], detail: str
) -> None:
    s = make_session(consortium, 4)
    bc = _broadcast(s)
    _refused(s, _with(bc, replace(_peer_advert(bc), **change)), kind, PEER, detail)


def test_an_advert_whose_two_keys_are_one_is_refused(consortium: Consortium) -> None:
    """With both keys equal, the key that encrypts a peer's shares would also derive its masks."""
    s = make_session(consortium, 4)
    bc = _broadcast(s)
    advert = _peer_advert(bc)
    same = replace(advert, pk_mask=advert.pk_cipher)
    same = replace(same, signature=consortium.identities[PEER].sign(same.signed_payload()))
    _refused(s, _with(bc, same), InvalidAdvertError, PEER, "malformed or identical public keys")


def test_an_advert_with_another_members_certificate_is_refused(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    bc = _broadcast(s)
    borrowed = replace(_peer_advert(bc), cert_chain=consortium.identities["c01"].chain_der())
    _refused(
        s,
        _with(bc, borrowed),
        InvalidAdvertError,
        PEER,
        "certificate belongs to 'c01', not the advertised id",
    )


def test_an_advert_certified_by_another_ca_is_refused_with_the_reason(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    bc = _broadcast(s)
    forged = issue_client(create_ca("a server's own CA"), PEER)
    foreign = replace(_peer_advert(bc), cert_chain=forged.chain_der())
    with pytest.raises(InvalidAdvertError) as err:
        s.clients[VICTIM].on_advert_broadcast(_with(bc, foreign))
    assert (err.value.phase, err.value.client_id) == (Phase.ADVERTISE, PEER)
    assert err.value.detail.startswith("certificate refused (foreign-ca): ")


def test_a_message_of_another_session_is_refused_as_a_replay(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    bc = _broadcast(s)
    for c in s.clients.values():
        s.server.receive_shares(c.on_advert_broadcast(bc))
    relays = s.server.close_share_keys()
    with pytest.raises(ReplayError) as err:
        s.clients[VICTIM].on_share_relay(replace(relays[VICTIM], session_id=bytes(32)))
    assert (err.value.phase, err.value.detail) == (Phase.SHARE_KEYS, "message belongs to another session")


def test_a_message_to_an_aborted_server_session_names_the_reason_phase_and_sender(
    consortium: Consortium,
) -> None:
    s = make_session(consortium, 4)
    s.server.abort("operator stopped the round")
    with pytest.raises(PhaseOrderError) as err:
        s.server.receive_advert(s.clients["c01"].advertise())
    assert (err.value.phase, err.value.client_id) == (Phase.ADVERTISE, "c01")
    assert err.value.detail == "session aborted: operator stopped the round"


def _client(consortium: Consortium, s: Session, cid: str, **kw: Any) -> ClientSession:
    return ClientSession(
        identity=consortium.identities[cid],
        trust=consortium.trust,
        config=s.config,
        model_hash=s.config.model_hash,
        **kw,
    )


def test_a_session_that_cannot_reach_the_institutions_floor_or_leaves_it_out_is_refused_at_once(
    consortium: Consortium,
) -> None:
    """Before any key exists: a roster smaller than the sums this institution accepts (its own floor),
    or one that does not name it (someone else's session), is refused with the exact reason."""
    s = make_session(consortium, 4)
    with pytest.raises(ConfigError) as err:
        _client(consortium, s, "c00", min_contributors=5)
    assert (err.value.phase, err.value.client_id) == (Phase.CONFIGURE, None)
    assert err.value.detail == "needs 5 contributors, the roster has 4"
    with pytest.raises(ConfigError) as err:
        _client(consortium, s, "c07")
    assert (err.value.phase, err.value.client_id) == (Phase.CONFIGURE, "c07")
    assert err.value.detail == "this client is not in the round roster"


def test_a_message_out_of_order_is_refused_naming_the_clients_phase(consortium: Consortium) -> None:
    """A relay before the adverts (a server skipping a phase) is refused: the error says where this
    client is, what it expected and who it is, and the session is over (its secrets erased)."""
    s = make_session(consortium, 4)
    member = s.clients[VICTIM]
    member.advertise()
    bc = _broadcast(make_session(consortium, 4))
    with pytest.raises(PhaseOrderError) as err:
        member.on_share_relay(replace(_fake_relay(), recipient=VICTIM))
    assert (err.value.phase, err.value.client_id) == (Phase.ADVERTISE, VICTIM)
    assert err.value.detail == "expected a message for phase 'share-keys'"
    assert member.phase is Phase.ABORTED
    with pytest.raises(PhaseOrderError):
        member.on_advert_broadcast(bc)  # nothing resumes an aborted session


def _fake_relay() -> ShareKeysRelay:
    return ShareKeysRelay(session_id=bytes(32), recipient="", u2=(), ciphertexts={}, commitments={})


def test_a_session_for_another_model_or_consortium_is_refused_at_construction(consortium: Consortium) -> None:
    """The configuration names the global model the institution downloaded and its own consortium's CA:
    a server handing it another (a model it did not check, or a federation it is not part of) is
    refused before any key exists, with the exact reason."""
    s = make_session(consortium, 4)
    with pytest.raises(ModelHashMismatchError) as err:
        ClientSession(
            identity=consortium.identities["c00"],
            trust=consortium.trust,
            config=s.config,
            model_hash=bytes(32),
        )
    assert (err.value.phase, err.value.detail) == (
        Phase.CONFIGURE,
        "the configuration names a different global model than the one downloaded",
    )
    elsewhere = replace(s.config, consortium=bytes(32))
    with pytest.raises(ConfigError) as other:
        ClientSession(
            identity=consortium.identities["c00"],
            trust=consortium.trust,
            config=elsewhere,
            model_hash=elsewhere.model_hash,
        )
    assert (other.value.phase, other.value.detail) == (
        Phase.CONFIGURE,
        "the session names another consortium than this client's CA: its signatures would count in a "
        "federation this institution is not part of",
    )
