"""Choosing representatives from a DP release, locally: each institution decides alone and sends nothing.

The non-DP election ("the lowest slot with count exactly 1") cannot survive noise of several units per
slot, and any ballot that depends on data would itself be a release. So after the DP release there is
no further message about selection at all:

* **Offer.** Each centre is offered to exactly one institution of the round's cohort, by a balanced
  assignment drawn from the public round seed (every institution recomputes it; the server cannot pick
  it). Public on purpose: it says who *may* take a centre, computed before and without any data.
* **Accept.** The institution accepts an offered centre ``g`` with probability
  ``min(1, oversample * m * n_ig / N_g)`` drawn from its own CSPRNG, where ``n_ig`` is how many of its
  records lie nearest ``g`` and ``N_g`` the released noisy count of ``g``'s region: one holding its fair
  share ``1 / m`` of the region's records (divided by ``oversample``) always takes it, one holding none
  never does. It then trains on its record nearest ``g``, at most ``max_fraction`` of its records in all
  (the most probable centres first).

Why the server cannot tell who won: whether an institution accepted is a private coin on private
counts, and nothing about it is ever sent; the train stage's weight is public and equal for everyone,
and every member trains on at least one record (a non-acceptor on its record nearest any centre), so
the secure sum of updates has the same shape whoever accepted. What the server sees of the choice is
covered by the training update's own protection (secure aggregation, and DP-SGD when on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from secfed.coreset.dp_release import DpRelease
from secfed.coreset.layout import Float
from secfed.coreset.space import derive_seed
from secfed.dp.csprng import AesCtrGaussian

__all__ = ["fallback_record", "local_choice", "offers"]


def offers(n_centres: int, roster: Sequence[str], round_seed: int) -> list[str]:
    """The institution each centre is offered to in this round: balanced (each gets ``n_centres / m``
    up to one), shuffled by the public round seed, over the sorted roster."""
    members = sorted(roster)
    if not members:
        raise ValueError("an empty roster cannot be offered centres")
    if len(set(members)) != len(members):
        raise ValueError("the roster names an institution twice")
    slots = np.tile(np.arange(len(members)), -(-n_centres // len(members)))
    order = np.random.default_rng(derive_seed(round_seed, "dp-offers")).permutation(len(slots))
    return [members[int(i)] for i in slots[order][:n_centres]]


def _distances(rows: Float, release: DpRelease) -> Float:
    y = release.coords(rows)
    out: Float = ((y[:, None, :] - release.centres[None, :, :]) ** 2).sum(axis=2)
    return out


def local_choice(
    rows: Float,
    release: DpRelease,
    *,
    me: str,
    roster: Sequence[str],
    round_seed: int,
    oversample: float,
    max_fraction: float,
    stream: AesCtrGaussian,
) -> NDArray[np.int64]:
    """Row indices of the records this institution trains on this round (possibly none)."""
    if me not in roster:
        raise ValueError(f"{me!r} is not in the round's roster")
    if not len(rows) or not len(release.centres):
        return np.zeros(0, dtype=np.int64)
    d2 = _distances(rows, release)
    nearest = np.argmin(d2, axis=1)
    n_mine = np.bincount(nearest, minlength=len(release.centres)).astype(np.float64)
    region = np.maximum(np.maximum(release.region_counts, n_mine), 1.0)
    probability = np.minimum(1.0, oversample * len(roster) * n_mine / region)
    draws = stream.uniform(len(release.centres))
    mine = np.flatnonzero(np.asarray(offers(len(release.centres), roster, round_seed)) == me)
    won = mine[draws[mine] < probability[mine]]
    cap = math.floor(max_fraction * len(rows))
    if len(won) > cap:  # keep the centres it holds most of; ties by the private draw
        won = won[np.lexsort((draws[won], -probability[won]))][:cap]
    taken: list[int] = []
    for g in won:
        for row in np.argsort(d2[:, g], kind="stable"):
            if int(row) not in taken:
                taken.append(int(row))
                break
    return np.asarray(taken, dtype=np.int64)


def fallback_record(rows: Float, release: DpRelease) -> NDArray[np.int64]:
    """The record nearest any centre (or the first record without centres): what an institution that
    accepted nothing trains on, so every member's update holds real data."""
    if not len(rows):
        return np.zeros(0, dtype=np.int64)
    if not len(release.centres):
        return np.zeros(1, dtype=np.int64)
    return np.asarray([int(np.argmin(_distances(rows, release).min(axis=1)))], dtype=np.int64)
