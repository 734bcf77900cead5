"""The local choice after a DP release (secfed.coreset.dp_choice): public offers, private acceptance.

What these defend: the offer is what the server could steer if it were not balanced, not a function of
public values only, or depended on the roster's order (which the server sends); the acceptance coin is
what makes the choice private, so it must follow the documented probability
``min(1, oversample * m * n_ig / N_g)`` exactly, neither more nor less often.

Statistics: the acceptance frequencies come from many independent AES-CTR streams with fixed test seeds
(deterministic); each is checked by an exact two-sided binomial test at p > 1e-6, so a correct
implementation fails one with probability below about 1e-6 per centre (five centres) on fresh seeds.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from secfed.coreset.dp_choice import local_choice, offer_seed, offers, padded_choice
from secfed.coreset.dp_config import DpSelection
from secfed.coreset.dp_pipeline import run_dp_release
from secfed.coreset.dp_release import DpRelease
from secfed.dp.csprng import AesCtrGaussian

FloatArray = npt.NDArray[np.float64]


def _roster(members: int) -> list[str]:
    return [f"inst{i:02d}" for i in range(members)]


@settings(max_examples=200, deadline=None)
@given(
    n_centres=st.integers(min_value=0, max_value=60),
    members=st.integers(min_value=1, max_value=9),
    round_seed=st.integers(min_value=0, max_value=2**62),
)
def test_offers_are_balanced(n_centres: int, members: int, round_seed: int) -> None:
    """Every centre goes to exactly one member of the roster, and the members' numbers of centres differ
    by at most one (each gets ``n_centres / m`` up to one, as documented): an unbalanced offer would let
    the seed decide that some member may take nothing at all."""
    roster = _roster(members)
    assigned = offers(n_centres, roster, round_seed)
    assert len(assigned) == n_centres and set(assigned) <= set(roster)
    counts = Counter(assigned)
    per_member = [counts[name] for name in roster]
    assert max(per_member) - min(per_member) <= 1, (n_centres, members, per_member)


def test_offers_are_balanced_when_the_centres_do_not_divide_evenly() -> None:
    """The smallest uneven case, over fixed seeds: 4 centres for 3 members must be split 2/1/1, never
    0/2/2 (each member owns ceil(4/3) = 2 slots of a shuffled list of 6 that is cut to 4; when both
    slots cut belong to one member it gets none)."""
    unbalanced = []
    for round_seed in range(50):
        counts = Counter(offers(4, ["a", "b", "c"], round_seed))
        if sorted(counts[name] for name in "abc") != [1, 1, 2]:
            unbalanced.append((round_seed, dict(counts)))
    assert not unbalanced, f"{len(unbalanced)} of 50 seeds unbalanced, e.g. {unbalanced[:3]}"


@settings(max_examples=100, deadline=None)
@given(
    n_centres=st.integers(min_value=0, max_value=40),
    members=st.integers(min_value=1, max_value=8),
    round_seed=st.integers(min_value=0, max_value=2**62),
    shuffle_seed=st.integers(min_value=0, max_value=2**32),
)
def test_offers_depend_only_on_the_roster_set_and_the_seed(
    n_centres: int, members: int, round_seed: int, shuffle_seed: int
) -> None:
    """The server sends the roster; its order (or numpy's global random state) must not change who is
    offered what, so every institution computes the same assignment from the same set and seed."""
    roster = _roster(members)
    reordered = list(np.random.default_rng(shuffle_seed).permutation(roster))
    first = offers(n_centres, roster, round_seed)
    np.random.seed(shuffle_seed % 2**32)
    assert offers(n_centres, reordered, round_seed) == first
    assert offers(n_centres, tuple(reversed(roster)), round_seed) == first


def test_offers_change_with_the_seed_and_refuse_bad_rosters() -> None:
    """Different round seeds give different assignments (the offer is a fresh draw each round, from
    ``offer_seed``: the federation's release seed and the round, values the server does not choose);
    an empty roster or one naming a member twice is refused."""
    roster = _roster(4)
    seen = {tuple(offers(12, roster, offer_seed(77, r))) for r in range(20)}
    assert len(seen) >= 15
    assert offer_seed(77, 3) == offer_seed(77, 3) != offer_seed(77, 4) != offer_seed(78, 4)
    with pytest.raises(ValueError, match="empty"):
        offers(3, [], 1)
    with pytest.raises(ValueError, match="twice"):
        offers(3, ["a", "b", "a"], 1)
    with pytest.raises(ValueError, match="roster"):
        local_choice(
            np.zeros((2, 8)),
            _release(np.zeros((1, 2)), np.ones(1)),
            me="z",
            roster=roster,
            round_seed=1,
            oversample=1.0,
            max_fraction=1.0,
            stream=AesCtrGaussian.from_test_seed(1),
        )


def _release(centres: FloatArray, region_counts: FloatArray) -> DpRelease:
    """A release whose plane is the first two axes (a row's plane coordinates are its first two)."""
    plane = {
        "centre": [0.0] * 8,
        "basis": np.eye(8)[:, :2].tolist(),
        "std": [1.0, 1.0],
        "grid": {"lo": [-1.0, -1.0], "hi": [1.0, 1.0], "bins": 4},
    }
    return DpRelease(plane, centres, region_counts, float(region_counts.sum()), len(centres))


def test_acceptance_frequency_matches_the_documented_probability() -> None:
    """Over 3,000 independent private streams, the member accepts each centre offered to it with
    frequency ``min(1, oversample * m * n_ig / N_g)`` (exact binomial test, p > 1e-6), never accepts a
    centre it holds no record of or one offered to another member, and always accepts when the
    probability reaches 1."""
    m, oversample, n_centres = 4, 2.0, 20
    roster = _roster(m)
    me = roster[1]
    round_seed = 5
    assignment = offers(n_centres, roster, round_seed)
    mine = [g for g, name in enumerate(assignment) if name == me]
    assert len(mine) >= 5
    # (records of mine nearest the centre, released region count): probabilities 0, 0.1, 0.4, 0.8, 1
    plan = [(0, 30.0), (1, 80.0), (2, 40.0), (4, 40.0), (3, 15.0)]
    held = np.full(n_centres, 2)
    region = np.full(n_centres, 50.0)
    for g, (n, count) in zip(mine, plan, strict=False):
        held[g], region[g] = n, count
    centres = np.stack([np.arange(n_centres) * 10.0, np.zeros(n_centres)], axis=1)
    gen = np.random.default_rng(0)
    rows = np.vstack(
        [
            np.hstack([c + gen.normal(size=(n, 2)) * 0.01, gen.normal(size=(n, 6))])
            for c, n in zip(centres, held, strict=True)
        ]
    )
    release = _release(centres, region)
    expected = np.minimum(1.0, oversample * m * held / region)
    trials = 3000
    accepted = np.zeros(n_centres, dtype=np.int64)
    for t in range(trials):
        chosen = local_choice(
            rows,
            release,
            me=me,
            roster=roster,
            round_seed=round_seed,
            oversample=oversample,
            max_fraction=1.0,
            stream=AesCtrGaussian.from_test_seed(40_000 + t),
        )
        took = np.argmin(np.abs(rows[chosen, 0][:, None] - centres[None, :, 0]), axis=1)
        assert len(set(took.tolist())) == len(took)  # one record per accepted centre
        accepted[took] += 1
    others = [g for g in range(n_centres) if g not in mine]
    assert not accepted[others].any(), "a centre offered to another member was taken"
    for g in mine:
        p = float(expected[g])
        if p in (0.0, 1.0):
            assert accepted[g] == p * trials, (g, p, accepted[g])
        else:
            assert stats.binomtest(int(accepted[g]), trials, p).pvalue > 1e-6, (g, p, accepted[g] / trials)
    assert sorted(expected[mine[:5]].tolist()) == [0.0, 0.1, 0.4, 0.8, 1.0]


def test_a_release_without_centres_survives_the_wire_and_every_member_still_trains() -> None:
    """A histogram release may keep no cell (every noisy count below the threshold: tiny data, or a high
    ``threshold_sigmas``); it must still reach the institutions (the in-memory run passes it through
    JSON, as on the wire) and then every member trains on its padding record.

    Fails today: ``DpRelease.to_json`` writes the empty ``(0, dims)`` centres as ``[]``, which
    ``DpRelease.from_json`` reads back as shape ``(0,)`` and refuses ("a DP release needs one region count
    per centre"), so ``run_dp_release`` raises instead of returning the empty release."""
    cfg = DpSelection(epsilon=1.0, density="histogram", threshold_sigmas=6.0)
    empty = _release(np.zeros((0, cfg.dims)), np.zeros(0))
    back = DpRelease.from_json(empty.to_json())
    assert back.centres.shape == (0, cfg.dims) and back.region_counts.shape == (0,)
    rows = [np.random.default_rng(i).normal(size=(3, cfg.k0)) * 0.4 for i in range(3)]
    run = run_dp_release(
        rows,
        cfg,
        honest=2,
        max_fraction=0.2,
        release_seed=1,
        streams=[AesCtrGaussian.from_test_seed(i) for i in range(3)],
    )
    assert len(run.release.centres) == 0
    roster = _roster(3)
    for i, r in enumerate(rows):
        chosen = local_choice(
            r,
            run.release,
            me=roster[i],
            roster=roster,
            round_seed=3,
            oversample=cfg.oversample,
            max_fraction=0.2,
            stream=AesCtrGaussian.from_test_seed(i),
        )
        assert len(chosen) == 0
        assert padded_choice(r, run.release, chosen, max_fraction=0.2).tolist() == [0]
    assert math.isfinite(run.release.records)
