"""Choosing representatives from a DP release, locally: each institution decides alone and sends nothing.

The non-DP election ("the lowest slot with count exactly 1") cannot survive noise of several units per
slot, and any ballot that depends on data would itself be a release. So after the DP release there is
no further message about selection at all:

* **Offer.** Each centre is offered to exactly one institution of the round's cohort, by a balanced
  assignment drawn from a seed the institution derives itself (the federation's release seed and the
  round number, never a seed the server sends, so the server cannot grind seeds for an assignment it
  likes; it still picks the cohort, as it does in every round). Public on purpose: it says who *may*
  take a centre, computed before and without any data.
* **Accept.** The institution accepts an offered centre ``g`` with probability
  ``min(1, oversample * m * n_ig / N_g)`` drawn from its own CSPRNG, where ``n_ig`` is how many of its
  records lie nearest ``g`` and ``N_g`` the released noisy count of ``g``'s region: one holding its fair
  share ``1 / m`` of the region's records (divided by ``oversample``) always takes it, one holding none
  never does. It then trains on its record nearest ``g``, at most ``max_fraction`` of its records in all
  (the most probable centres first).

* **Fixed work.** The records it trains on are then padded, with its records nearest any centre, to a
  fixed number (``max_fraction`` of its records, at least one), so neither the train stage's weight
  (public, equal for everyone) nor the time its training takes depends on how many centres it took.

Why the server cannot tell who won: whether an institution accepted is a private coin on private
counts, and nothing about it is ever sent; the secure sum of updates has the same shape and every
member does the same work whoever accepted. What the server sees of the choice is covered by the
training update's own protection (secure aggregation, and DP-SGD when on).
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

__all__ = ["local_choice", "offer_seed", "offers", "padded_choice"]


def offer_seed(release_seed: int, round_: int) -> int:
    """The seed of a round's offers, from values every institution knows without the server's word."""
    return derive_seed(release_seed, f"dp-offers/round/{int(round_)}")


def offers(n_centres: int, roster: Sequence[str], round_seed: int) -> list[str]:
    """The institution each centre is offered to in this round: balanced (each gets ``n_centres / m``
    up to one), shuffled by ``round_seed`` (:func:`offer_seed`), over the sorted roster."""
    members = sorted(roster)
    if not members:
        raise ValueError("an empty roster cannot be offered centres")
    if len(set(members)) != len(members):
        raise ValueError("the roster names an institution twice")
    gen = np.random.default_rng(derive_seed(round_seed, "dp-offers"))
    # Every member gets floor(n / m) centres and a random n mod m of them one more; then the centres
    # are shuffled among those slots (cutting a shuffled longer list would leave some with fewer).
    full, extra = divmod(n_centres, len(members))
    lucky = gen.permutation(len(members))[:extra]
    slots = np.concatenate([np.repeat(np.arange(len(members)), full), lucky]).astype(np.int64)
    return [members[int(i)] for i in slots[gen.permutation(len(slots))]]


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


def padded_choice(
    rows: Float, release: DpRelease, chosen: NDArray[np.int64], *, max_fraction: float
) -> NDArray[np.int64]:
    """``chosen`` padded with the institution's other records nearest any centre (in order of that
    distance) to exactly ``max(1, floor(max_fraction * n))`` records: every member trains on real data,
    the same amount whoever accepted what."""
    size = min(len(rows), max(1, math.floor(max_fraction * len(rows))))
    if not len(rows):
        return np.zeros(0, dtype=np.int64)
    taken = [int(r) for r in chosen][:size]
    if len(release.centres):
        order = np.argsort(_distances(rows, release).min(axis=1), kind="stable")
    else:
        order = np.arange(len(rows))
    for row in order:
        if len(taken) >= size:
            break
        if int(row) not in taken:
            taken.append(int(row))
    return np.asarray(taken, dtype=np.int64)
