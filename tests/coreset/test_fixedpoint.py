"""The stage layouts through the real SecAgg fixed-point encoding: bounds hold and selection is unchanged."""

from __future__ import annotations

import numpy as np

from secfed.coreset.client import CoresetClient
from secfed.coreset.layout import CohortSum, Contribution, Layout
from secfed.coreset.pipeline import run_secure, wire
from secfed.coreset.server import Selection, next_stage
from secfed.secagg.fixedpoint import decode, encode
from tests.coreset.support import SMALL, blob_clients, seeded


def _secure_sum(layout: Layout, contributions: list[Contribution]) -> CohortSum:
    """What the federation's SecAgg session decodes: fixed-point encodings summed in the ring."""
    spec = layout.vector_spec()
    spec.check_overflow(len(contributions))
    ring = np.zeros(spec.total_length, dtype=spec.dtype)
    for c in contributions:
        encoded, report = encode(c, spec)
        assert report.clipped_fraction == 0.0, f"{layout.stage}: a public bound did not hold"
        ring += encoded  # uint64 wraps modulo 2**64, as the ring does
    return CohortSum(layout.stage, decode(ring, spec), len(contributions))


def test_selection_through_fixed_point_sums_equals_the_exact_one():
    clients = blob_clients(5, 40, seed=8)
    exact = run_secure(clients, SMALL, 6, rngs=seeded(5, seed=3))
    actors = [
        CoresetClient(c.indices, c.features, rng=r) for c, r in zip(clients, seeded(5, seed=3), strict=True)
    ]
    done: list[CohortSum] = []
    plan = next_stage(SMALL, 6, done)
    while not isinstance(plan, Selection):
        integer = {s.name for s in plan.layout.segments if s.integer}
        total = _secure_sum(plan.layout, [a.contribute(wire(plan.broadcast)) for a in actors])
        for name in integer:  # counts, flags and slots are exact
            np.testing.assert_array_equal(total.get(name), np.rint(total.get(name)))
        done.append(total)
        plan = next_stage(SMALL, 6, done)
    selected = [a.selection(wire(plan.broadcast)).records for a in actors]
    assert plan.summary == exact.final.summary
    for got, want in zip(selected, exact.selected, strict=True):
        np.testing.assert_array_equal(got, want)
