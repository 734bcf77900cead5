"""Malformed uploads are rejected before anything is summed, with the phase and client named."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from secfed.secagg.errors import MalformedInputError, Phase
from secfed.secagg.messages import MaskedInputUpload
from tests.secagg.support import Consortium, Session, make_session, masked_inputs


def drive_to_masked_input(s: Session) -> dict[str, MaskedInputUpload]:
    srv = s.server
    for c in s.clients.values():
        srv.receive_advert(c.advertise())
    bc = srv.close_advertise()
    for c in s.clients.values():
        srv.receive_shares(c.on_advert_broadcast(bc))
    relays = srv.close_share_keys()
    return masked_inputs(s, relays)


def finish(s: Session, masked: dict[str, MaskedInputUpload]) -> None:
    srv = s.server
    for m in masked.values():
        srv.receive_masked_input(m)
    req = srv.close_masked_input()
    for cid in req.u3:
        srv.receive_consistency(s.clients[cid].on_consistency_request(req))
    un = srv.close_consistency()
    for cid in un.signatures:
        srv.receive_unmask(s.clients[cid].on_unmask_request(un))
    result = srv.finalize()
    expected = s.expected_sum(result.contributors)
    for name in expected:
        np.testing.assert_array_equal(result.values[name], expected[name])


def _with_segment(m: MaskedInputUpload, name: str, arr: np.ndarray) -> MaskedInputUpload:
    segs = dict(m.segments)
    segs[name] = arr
    return replace(m, segments=segs)


BAD_UPLOADS: dict[str, Callable[[MaskedInputUpload], MaskedInputUpload]] = {
    "wrong length": lambda m: _with_segment(m, "delta", m.segments["delta"][:-1]),
    "wrong dtype": lambda m: _with_segment(m, "delta", m.segments["delta"].astype(np.uint64)),
    "float dtype": lambda m: _with_segment(m, "delta", m.segments["delta"].astype(np.float32)),
    "2-d array": lambda m: _with_segment(m, "delta", m.segments["delta"].reshape(4, -1)),
    "unknown segment": lambda m: _with_segment(m, "extra", m.segments["weight"]),
    "missing segment": lambda m: replace(m, segments={"delta": m.segments["delta"]}),
    "spec hash mismatch": lambda m: replace(m, spec_hash=bytes(32)),
    "foreign session": lambda m: replace(m, session_id=bytes(32)),
    "not in U2": lambda m: replace(m, sender="c29"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_malformed_masked_input_rejected_before_summing(consortium: Consortium, case: str) -> None:
    s = make_session(consortium, 4)
    masked = drive_to_masked_input(s)
    victim = s.config.roster[1]
    bad = BAD_UPLOADS[case](masked[victim])
    with pytest.raises(MalformedInputError) as err:
        s.server.receive_masked_input(bad)
    assert err.value.phase is Phase.MASKED_INPUT
    assert err.value.client_id == bad.sender
    finish(s, masked)  # the good upload still goes through and the sum is exact: nothing leaked into it


def test_duplicate_submission_rejected(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    masked = drive_to_masked_input(s)
    victim = s.config.roster[0]
    s.server.receive_masked_input(masked[victim])
    with pytest.raises(MalformedInputError, match="duplicate") as err:
        s.server.receive_masked_input(masked[victim])
    assert err.value.client_id == victim
    finish(s, {k: v for k, v in masked.items() if k != victim})


def test_advert_certificate_must_be_tls_peer(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    a, b = s.config.roster[:2]
    advert = s.clients[a].advertise()
    other_peer = consortium.identities[b].chain_der()
    with pytest.raises(MalformedInputError) as err:
        s.server.receive_advert(advert, peer_chain=other_peer)
    assert err.value.client_id == a and err.value.phase is Phase.ADVERTISE
    assert err.value.detail == "the advert's certificate is not the TLS peer's certificate"
    s.server.receive_advert(advert, peer_chain=consortium.identities[a].chain_der())


def test_advert_with_bad_signature_rejected(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    advert = s.clients[s.config.roster[0]].advertise()
    with pytest.raises(MalformedInputError, match="bad-signature"):
        s.server.receive_advert(replace(advert, signature=advert.signature[:-2] + b"\0\0"))


def test_share_upload_to_wrong_peers_rejected(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    srv = s.server
    for c in s.clients.values():
        srv.receive_advert(c.advertise())
    bc = srv.close_advertise()
    first = s.config.roster[0]
    up = s.clients[first].on_advert_broadcast(bc)
    with pytest.raises(MalformedInputError, match="neighbours") as err:
        srv.receive_shares(replace(up, ciphertexts={k: v for k, v in list(up.ciphertexts.items())[:-1]}))
    assert err.value.phase is Phase.SHARE_KEYS
