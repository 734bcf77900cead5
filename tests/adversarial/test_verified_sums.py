"""Verified sums: a member recomputes a session's sum from the server's evidence and refuses a forgery.

Attack (issue [round-binding], class 3): FedHDS plans (allowed cells, the shared space, clusters,
ballots) follow from earlier stages' sums; a server that lies about a sum steers the plan, e.g. lists
a cell holding one institution's centroids as allowed. Members therefore verify each sum themselves
before they act on a plan derived from it: every masked input carries its sender's signature, every
revealed self-mask seed must match the commitment its owner signed, every revealed mask key its
advertised public key, and the survivors must be the U3 the member signed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from secfed.crypto.agreement import generate_keypair, private_to_bytes
from secfed.secagg.errors import (
    InconsistentViewError,
    MalformedInputError,
    Phase,
    PhaseOrderError,
    SignatureError,
)
from secfed.secagg.local import LocalRouter
from secfed.secagg.messages import SumEvidence
from secfed.secagg.server import ServerSession
from tests.secagg.support import Consortium, Session, make_consortium, make_session, masked_inputs


@pytest.fixture(scope="module")
def consortium() -> Consortium:
    return make_consortium(8)


def _finished(consortium: Consortium, *, drop: str | None = None) -> tuple[Session, SumEvidence, np.ndarray]:
    s = make_session(consortium, 6, seed=4)
    s.server = ServerSession(s.config, trust=consortium.trust, keep_inputs=True)
    run = LocalRouter(s.server, s.clients).run({drop: Phase.MASKED_INPUT} if drop else None)
    assert run.result is not None, run.error
    evidence = s.server.evidence()
    assert evidence is not None
    return s, evidence, run.result.ring_sum


@pytest.mark.parametrize("drop", [None, "c03"])
def test_every_member_recomputes_the_servers_sum_exactly(consortium: Consortium, drop: str | None) -> None:
    s, evidence, ring_sum = _finished(consortium, drop=drop)
    for cid in evidence.inputs:
        verified = s.clients[cid].verify_sum(evidence)
        np.testing.assert_array_equal(verified.ring_sum, ring_sum)
        expected = s.expected_sum(verified.contributors)
        for name, values in expected.items():
            np.testing.assert_allclose(verified.values[name], values, atol=1e-9)
    if drop:
        assert drop in evidence.mask_keys and drop not in evidence.inputs


def _forge_input(ev: SumEvidence) -> SumEvidence:
    who = sorted(ev.inputs)[0]
    upload = ev.inputs[who]
    name = sorted(upload.segments)[0]
    segments = {**upload.segments, name: upload.segments[name] ^ upload.segments[name].dtype.type(1)}
    return replace(ev, inputs={**ev.inputs, who: replace(upload, segments=segments)})


def _wrong_seed(ev: SumEvidence) -> SumEvidence:
    who = sorted(ev.b_seeds)[0]
    return replace(ev, b_seeds={**ev.b_seeds, who: bytes(32)})


def _wrong_commitment(ev: SumEvidence) -> SumEvidence:
    who = sorted(ev.b_commitments)[0]
    return replace(ev, b_commitments={**ev.b_commitments, who: bytes(32)})


def _drop_survivor(ev: SumEvidence) -> SumEvidence:
    who = sorted(ev.inputs)[0]
    return replace(
        ev,
        inputs={k: v for k, v in ev.inputs.items() if k != who},
        b_seeds={k: v for k, v in ev.b_seeds.items() if k != who},
        b_commitments={k: v for k, v in ev.b_commitments.items() if k != who},
    )


def _wrong_mask_key(ev: SumEvidence) -> SumEvidence:
    who = sorted(ev.mask_keys)[0]
    return replace(ev, mask_keys={**ev.mask_keys, who: private_to_bytes(generate_keypair().private)})


@pytest.mark.parametrize(
    ("forge", "error"),
    [
        (_forge_input, SignatureError),
        (_wrong_seed, SignatureError),
        (_wrong_commitment, SignatureError),
        (_drop_survivor, InconsistentViewError),
    ],
    ids=["forged masked input", "wrong self-mask seed", "wrong commitment", "survivor left out"],
)
def test_forged_evidence_is_refused(consortium: Consortium, forge, error) -> None:
    s, evidence, _ = _finished(consortium)
    member = s.clients[sorted(evidence.inputs)[-1]]
    with pytest.raises(error):
        member.verify_sum(forge(evidence))


def test_a_dropped_members_forged_mask_key_is_refused(consortium: Consortium) -> None:
    s, evidence, _ = _finished(consortium, drop="c03")
    with pytest.raises(SignatureError):
        s.clients["c00"].verify_sum(_wrong_mask_key(evidence))


def test_a_sum_is_verified_only_after_the_members_own_unmask(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    with pytest.raises(PhaseOrderError):
        s.clients[s.config.roster[0]].verify_sum(
            SumEvidence(session_id=b"", inputs={}, b_commitments={}, b_seeds={}, mask_keys={})
        )


def test_an_unsigned_masked_input_is_refused_where_inputs_become_evidence(consortium: Consortium) -> None:
    """Without a verifiable signature the server could not show a member's input to the others."""
    s = make_session(consortium, 4)
    s.server = srv = ServerSession(s.config, trust=consortium.trust, keep_inputs=True)
    for c in s.clients.values():
        srv.receive_advert(c.advertise())
    bc = srv.close_advertise()
    for c in s.clients.values():
        srv.receive_shares(c.on_advert_broadcast(bc))
    masked = masked_inputs(s, srv.close_share_keys())
    victim = sorted(masked)[0]
    with pytest.raises(MalformedInputError, match="signature"):
        srv.receive_masked_input(replace(masked[victim], signature=b"\x00" * 64))
