"""The server's checks of a masked input, each alone (mutation survivors of secagg/server.py), and the
client's refusal to mask against a peer whose mask key cannot be agreed with (secagg/client.py).

What they defend: a masked input that goes into the sum unchecked (a duplicate, another spec, a forged
signature on evidence the cohort will verify) corrupts the sum or the evidence; a client that masks
against an unusable peer key must say which peer, in which phase, and abort, not send a broken input.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from secfed.secagg.errors import ConfigError, InvalidAdvertError, MalformedInputError, Phase
from secfed.secagg.messages import ComputeReady, MaskedInputUpload
from secfed.secagg.server import ServerSession
from tests.secagg.support import Consortium, Session, make_session, masked_inputs


def _at_masked_input(
    consortium: Consortium, *, keep_inputs: bool
) -> tuple[Session, dict[str, MaskedInputUpload]]:
    s = make_session(consortium, 4, seed=11)
    s.server = ServerSession(s.config, trust=consortium.trust, keep_inputs=keep_inputs)
    for client in s.clients.values():
        s.server.receive_advert(client.advertise())
    broadcast = s.server.close_advertise()
    for client in s.clients.values():
        s.server.receive_shares(client.on_advert_broadcast(broadcast))
    relays = s.server.close_share_keys()
    return s, masked_inputs(s, relays)


def _refused(s: Session, msg: MaskedInputUpload, detail: str) -> None:
    with pytest.raises(MalformedInputError) as err:
        s.server.receive_masked_input(msg)
    assert err.value.phase is Phase.MASKED_INPUT and err.value.detail == detail


def test_a_forged_signature_is_refused_when_the_sum_becomes_evidence(consortium: Consortium) -> None:
    """With the inputs kept as evidence the cohort will verify, a masked input whose signature does not
    verify never enters the sum."""
    s, uploads = _at_masked_input(consortium, keep_inputs=True)
    _, msg = sorted(uploads.items())[0]
    forged = replace(msg, signature=bytes(len(msg.signature)))
    _refused(s, forged, "masked input signature does not verify")
    s.server.receive_masked_input(msg)  # the genuine one is accepted


def test_signatures_are_not_checked_when_no_evidence_is_kept(consortium: Consortium) -> None:
    """Without evidence the server gains nothing from hashing every input again (the check costs a pass
    over an adapter-sized vector): an input is summed on the strength of the session's other checks."""
    s, uploads = _at_masked_input(consortium, keep_inputs=False)
    _, msg = sorted(uploads.items())[0]
    s.server.receive_masked_input(replace(msg, signature=b""))


def test_each_malformed_masked_input_is_refused_with_its_reason(consortium: Consortium) -> None:
    s, uploads = _at_masked_input(consortium, keep_inputs=False)
    (_, a), (_, b) = sorted(uploads.items())[:2]
    _refused(s, replace(a, spec_hash=bytes(32)), "spec hash does not match the session's vector spec")
    name = next(iter(a.segments))
    _refused(
        s,
        replace(a, segments={k: v for k, v in a.segments.items() if k != name}),
        f"unknown segments [], missing segments [{name!r}]",
    )
    wrong: dict[str, Any] = {k: np.asarray(v, dtype=np.float64) for k, v in a.segments.items()}
    _refused(
        s,
        replace(a, segments=wrong),
        f"segment {name!r} must be a {np.dtype(s.config.spec.dtype).name} array",
    )
    short = {k: v[:-1] for k, v in a.segments.items()}
    length = s.config.spec.segments[0].length
    _refused(
        s, replace(a, segments=short), f"segment {name!r} has shape ({length - 1},), expected ({length},)"
    )
    s.server.receive_masked_input(a)
    _refused(s, a, "duplicate masked input")
    s.server.receive_masked_input(b)


def test_a_peer_mask_key_no_agreement_can_use_aborts_naming_the_peer(consortium: Consortium) -> None:
    """A peer advertised (and signed) a low-order X25519 mask key: no pairwise mask can be derived with
    it. The client refuses to mask, names that peer and the phase the key came from, and erases its
    secrets (a masked input missing a pair mask would reveal the client's input in the sum)."""
    s = make_session(consortium, 4, seed=12)
    bad = s.config.roster[1]
    adverts = {cid: client.advertise() for cid, client in s.clients.items()}
    unsigned = replace(adverts[bad], pk_mask=bytes(32), signature=b"")
    adverts[bad] = replace(unsigned, signature=consortium.identities[bad].sign(unsigned.signed_payload()))
    liar = s.clients[bad]  # the malicious member's own session goes along with its altered advert
    assert liar._mask_keys is not None
    liar._mask_keys = replace(liar._mask_keys, public=bytes(32))
    for advert in adverts.values():
        s.server.receive_advert(advert)
    broadcast = s.server.close_advertise()
    for client in s.clients.values():
        s.server.receive_shares(client.on_advert_broadcast(broadcast))
    relays = s.server.close_share_keys()
    for cid, relay in relays.items():
        s.clients[cid].on_share_relay(relay)
        s.server.receive_ready(s.clients[cid].ready())
    go = s.server.close_compute()
    honest = s.clients[s.config.roster[0]]
    with pytest.raises(InvalidAdvertError) as err:
        honest.on_masked_input_request(go)
    assert err.value.phase is Phase.SHARE_KEYS and err.value.client_id == bad
    assert err.value.detail.startswith("mask key agreement failed: ")
    assert honest.phase is Phase.ABORTED and not honest.holds_secrets


def _at_compute(consortium: Consortium) -> tuple[Session, dict[str, ComputeReady]]:
    s = make_session(consortium, 4, seed=13)
    for client in s.clients.values():
        s.server.receive_advert(client.advertise())
    broadcast = s.server.close_advertise()
    for client in s.clients.values():
        s.server.receive_shares(client.on_advert_broadcast(broadcast))
    relays = s.server.close_share_keys()
    ready = {}
    for cid, relay in relays.items():
        s.clients[cid].on_share_relay(relay)
        ready[cid] = s.clients[cid].ready()
    return s, ready


def _ready_refused(s: Session, msg: ComputeReady, detail: str) -> None:
    with pytest.raises(MalformedInputError) as err:
        s.server.receive_ready(msg)
    assert (
        err.value.phase is Phase.COMPUTE and err.value.client_id == msg.sender and err.value.detail == detail
    )


def test_each_malformed_ready_notice_is_refused_with_its_reason(consortium: Consortium) -> None:
    """A ready notice is where a holder complains about a dealer (with its revealed cipher key): one that
    names a stranger or the same dealer twice, a complaint without the key or a key without a complaint,
    or a key of the wrong length, would make the server judge on evidence that does not exist."""
    s, ready = _at_compute(consortium)
    (_, msg), (other, _) = sorted(ready.items())[:2]
    key = bytes(32)
    _ready_refused(
        s,
        replace(msg, complaints=("stranger",), cipher_key=key),
        "complaints must name distinct neighbours in U2",
    )
    _ready_refused(
        s,
        replace(msg, complaints=(other, other), cipher_key=key),
        "complaints must name distinct neighbours in U2",
    )
    only_key = "a complaint comes with the 32-byte cipher key, and only then"
    _ready_refused(s, replace(msg, complaints=(other,)), only_key)
    _ready_refused(s, replace(msg, cipher_key=key), only_key)
    _ready_refused(s, replace(msg, complaints=(other,), cipher_key=bytes(31)), only_key)
    s.server.receive_ready(msg)
    _ready_refused(s, msg, "duplicate ready notice")


def test_a_server_session_of_another_consortium_is_refused(consortium: Consortium) -> None:
    """The signed configuration names the consortium (its CA's hash): a server whose CA is another's
    would count signatures of a federation this session is not part of."""
    from secfed.crypto.identity import TrustAnchor
    from secfed.pki.issue import create_ca

    s = make_session(consortium, 4, seed=14)
    with pytest.raises(ConfigError) as err:
        ServerSession(s.config, trust=TrustAnchor(create_ca("another consortium").certificate))
    assert err.value.phase is Phase.CONFIGURE
    assert err.value.detail == "the session names another consortium than the server's CA"
