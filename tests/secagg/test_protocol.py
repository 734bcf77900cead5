"""End-to-end behaviour of the client and server state machines, routed in process."""

from __future__ import annotations

import numpy as np
import pytest

from secfed.crypto import shamir
from secfed.crypto.agreement import agree, private_from_bytes
from secfed.crypto.prg import MaskAccumulator
from secfed.secagg import derive
from secfed.secagg.errors import UPLOAD_PHASES, BelowThresholdError, LateMessageError, Phase
from secfed.secagg.fixedpoint import decode, encode
from secfed.secagg.local import LocalRouter
from secfed.secagg.messages import AggregateResult
from tests.secagg.support import Consortium, Session, make_session, masked_inputs, small_spec


def assert_exact(session: Session, result: AggregateResult) -> None:
    expected = session.expected_sum(result.contributors)
    for name, values in expected.items():
        np.testing.assert_array_equal(result.values[name], values)


def test_all_honest_sum_is_exact(consortium: Consortium) -> None:
    s = make_session(consortium, 5)
    run = LocalRouter(s.server, s.clients).run()
    assert run.error is None and run.result is not None
    assert run.result.contributors == s.config.roster
    assert run.result.dropped == ()
    assert_exact(s, run.result)
    assert all(c.phase is Phase.DONE and not c.holds_secrets for c in s.clients.values())


def test_64_bit_ring(consortium: Consortium) -> None:
    s = make_session(consortium, 4, small_spec(33, ring_bits=64))
    run = LocalRouter(s.server, s.clients).run()
    assert run.result is not None and run.result.ring_sum.dtype == np.uint64
    assert_exact(s, run.result)


@pytest.mark.parametrize("phase", UPLOAD_PHASES)
def test_one_dropout_at_each_phase(consortium: Consortium, phase: Phase) -> None:
    s = make_session(consortium, 7)  # n=7, colluding 2 -> t=5
    victim = s.config.roster[2]
    run = LocalRouter(s.server, s.clients).run(drop={victim: phase})
    assert run.error is None and run.result is not None
    sent_input = UPLOAD_PHASES.index(phase) > UPLOAD_PHASES.index(Phase.MASKED_INPUT)
    assert (victim in run.result.contributors) is sent_input
    assert_exact(s, run.result)


def test_cascading_dropouts(consortium: Consortium) -> None:
    s = make_session(consortium, 10)  # t = 7
    r = s.config.roster
    drop = {r[0]: Phase.SHARE_KEYS, r[4]: Phase.MASKED_INPUT, r[9]: Phase.UNMASK}
    run = LocalRouter(s.server, s.clients).run(drop=drop)
    assert run.result is not None, run.error
    assert run.result.dropped == (r[4],)  # r[0] never shared keys, so it is not in U2 at all
    assert r[9] in run.result.contributors
    assert_exact(s, run.result)


@pytest.mark.parametrize("phase", UPLOAD_PHASES)
def test_below_threshold_aborts_without_releasing_secrets(consortium: Consortium, phase: Phase) -> None:
    s = make_session(consortium, 6)  # t = 5
    r = s.config.roster
    run = LocalRouter(s.server, s.clients).run(drop={r[1]: phase, r[3]: phase})
    assert run.result is None
    assert isinstance(run.error, BelowThresholdError)
    assert run.error.phase is phase
    if phase is not Phase.UNMASK:
        assert run.unmask_responses == []
    else:
        # Fewer than t responses: below the Shamir threshold, no secret can be rebuilt from them.
        assert len(run.unmask_responses) < s.config.threshold
    assert s.server.phase is Phase.ABORTED


def test_masked_input_after_declared_dropped_is_refused_and_undecodable(consortium: Consortium) -> None:
    s = make_session(consortium, 6)
    late = s.config.roster[5]
    router = LocalRouter(s.server, s.clients)
    srv = s.server
    for c in s.clients.values():
        srv.receive_advert(c.advertise())
    bc = srv.close_advertise()
    for c in s.clients.values():
        srv.receive_shares(c.on_advert_broadcast(bc))
    relays = srv.close_share_keys()
    late_input = None
    for cid, masked in masked_inputs(s, relays).items():
        if cid == late:
            late_input = masked
        else:
            srv.receive_masked_input(masked)
    request = srv.close_masked_input()
    assert late not in request.u3
    with pytest.raises(LateMessageError) as err:
        srv.receive_masked_input(late_input)  # type: ignore[arg-type]
    assert err.value.client_id == late and err.value.phase is Phase.MASKED_INPUT

    for cid in request.u3:
        srv.receive_consistency(s.clients[cid].on_consistency_request(request))
    unmask = srv.close_consistency()
    assert unmask.dropped == (late,)
    responses = [s.clients[cid].on_unmask_request(unmask) for cid in unmask.signatures]
    for resp in responses:
        srv.receive_unmask(resp)
    result = srv.finalize()
    assert_exact(s, result)
    del router

    # A curious server holding the late vector and the dropped client's s-shares still cannot decode it:
    # nobody revealed a share of the late client's self-mask seed.
    assert all(late not in r.b_shares for r in responses)
    spec = s.config.spec
    s_shares = [shamir.Share.from_bytes(r.s_shares[late]) for r in responses]
    s_private = private_from_bytes(shamir.reconstruct(s_shares, s.config.threshold))
    y = np.concatenate([late_input.segments[seg.name] for seg in spec.segments])  # type: ignore[union-attr]
    acc = MaskAccumulator(y)
    adverts = {a.client_id: a for a in bc.adverts}
    me = s.config.position(late)
    for v in s.config.roster:
        if v == late:
            continue
        seed = agree(s_private, adverts[v].pk_mask)
        first = me < s.config.position(v)
        low, high = (late, v) if first else (v, late)
        label = derive.pair_label(low, high, spec.spec_hash(), spec.total_length, spec.ring_bits)
        acc.add(seed, salt=s.server.session_id, label=label, sign=-1 if first else 1)
    truth, _ = encode(s.inputs[late], spec)
    assert np.count_nonzero(y == truth) < 3  # still hidden under PRG(b): essentially no coordinate matches
    recovered = decode(y, spec)["delta"]
    assert not np.allclose(recovered, s.inputs[late]["delta"])


def test_masked_vector_of_constant_input_is_uniform(consortium: Consortium) -> None:
    """Chi-square over 64 buckets of the masked upload of an all-zero input (df=63)."""
    spec = small_spec(1 << 16)
    s = make_session(consortium, 3, spec)
    for values in s.inputs.values():
        values["delta"][:] = 0.0
        values["weight"][:] = 0.0
    srv = s.server
    for c in s.clients.values():
        srv.receive_advert(c.advertise())
    bc = srv.close_advertise()
    for c in s.clients.values():
        srv.receive_shares(c.on_advert_broadcast(bc))
    relays = srv.close_share_keys()
    cid = s.config.roster[0]
    y = masked_inputs(s, relays)[cid].segments["delta"]

    def chi2(words: np.ndarray) -> float:
        counts = np.bincount((words >> np.uint32(26)).astype(np.int64), minlength=64)
        expected = len(words) / 64
        return float(((counts - expected) ** 2 / expected).sum())

    # 63 degrees of freedom: the 1e-6 upper quantile is about 137.
    assert chi2(y) < 137.0
    assert chi2(np.zeros(1 << 16, dtype=np.uint32)) > 137.0  # the statistic does catch a constant vector


def test_every_session_uses_fresh_keys(consortium: Consortium) -> None:
    a = make_session(consortium, 4)
    b = make_session(consortium, 4)
    ra = LocalRouter(a.server, a.clients).run()
    rb = LocalRouter(b.server, b.clients).run()
    assert ra.result is not None and rb.result is not None
    assert a.server.session_id != b.server.session_id


def test_secrets_erased_after_abort(consortium: Consortium) -> None:
    s = make_session(consortium, 6)
    r = s.config.roster
    run = LocalRouter(s.server, s.clients).run(drop={r[0]: Phase.CONSISTENCY, r[1]: Phase.CONSISTENCY})
    assert isinstance(run.error, BelowThresholdError)
    # Survivors were never asked to unmask; their secrets stay until the coordinator abandons them.
    for c in s.clients.values():
        c.abandon()
        assert not c.holds_secrets and c.phase is Phase.ABORTED
