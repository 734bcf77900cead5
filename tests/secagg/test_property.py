"""Property: for random cohorts, layouts, inputs and dropout patterns, the session either returns the
exact plaintext sum of the clients whose masked input it holds, or aborts cleanly below threshold at
the phase where survivors ran out, with no unmask shares released before that."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from secfed.secagg.errors import UPLOAD_PHASES, BelowThresholdError, Phase
from secfed.secagg.local import LocalRouter
from secfed.secagg.spec import RingBits, Segment, VectorSpec
from tests.secagg.support import Consortium, make_session

DROP_CHOICES = (None, *UPLOAD_PHASES)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, VectorSpec, dict[int, Phase], int]:
    n = draw(st.integers(3, 30))
    lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    bits: RingBits = draw(st.sampled_from([32, 64]))
    spec = VectorSpec(
        tuple(Segment(f"s{i}", length, clip=2.0, frac_bits=12) for i, length in enumerate(lengths)),
        ring_bits=bits,
    )
    # Mostly few dropouts (so many sessions complete), sometimes many (so aborts are exercised too).
    rate = draw(st.sampled_from([0.0, 0.1, 0.25, 0.6]))
    drops = {}
    for i in range(n):
        if draw(st.floats(0, 1)) < rate:
            phase = draw(st.sampled_from(UPLOAD_PHASES))
            drops[i] = phase
    return n, spec, drops, draw(st.integers(0, 2**32 - 1))


def survivors_after(roster: tuple[str, ...], drop: dict[str, Phase], phase: Phase) -> list[str]:
    return [c for c in roster if c not in drop or UPLOAD_PHASES.index(drop[c]) > UPLOAD_PHASES.index(phase)]


@given(scenarios())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_exact_sum_or_clean_abort(
    consortium: Consortium, scenario: tuple[int, VectorSpec, dict[int, Phase], int]
) -> None:
    n, spec, drops, seed = scenario
    s = make_session(consortium, n, spec, seed=seed)
    roster = s.config.roster
    drop = {roster[i]: p for i, p in drops.items()}
    run = LocalRouter(s.server, s.clients).run(drop=drop)

    t = s.config.threshold
    failing = None
    for phase in UPLOAD_PHASES:
        need = max(t, s.config.min_cohort) if phase is Phase.MASKED_INPUT else t
        if len(survivors_after(roster, drop, phase)) < need:
            failing = phase
            break

    event("completed" if failing is None else f"aborted at {failing.value}")
    if failing is None:
        assert run.error is None, run.error
        assert run.result is not None
        u3 = tuple(survivors_after(roster, drop, Phase.MASKED_INPUT))
        assert run.result.contributors == u3
        expected = s.expected_sum(u3)
        for name, values in expected.items():
            np.testing.assert_array_equal(run.result.values[name], values)
        # and in the ring: the sum of the encodings, wrapped
        assert run.result.ring_sum.dtype == np.dtype(spec.dtype)
    else:
        assert isinstance(run.error, BelowThresholdError)
        assert run.error.phase is failing
        assert run.result is None
        if failing is not Phase.UNMASK:
            assert run.unmask_responses == []
        else:
            assert len(run.unmask_responses) < t
