"""Fourth pass: route each centre to an institution by its DP-noised local counts (instead of a blind offer).

After the release (prototype.dp_release, its epsilon scaled by 1 - f), every institution releases, with
Laplace noise of scale 1/(f·eps), how many of its records lie in each centre's region (one record is in one
region: L1 sensitivity 1 for the whole vector, so the release is (f·eps)-DP; basic composition with the rest
is conservative). Each centre goes to the institution with the largest noisy count that still has room
(cap floor(max_fraction·n_i)); it takes its record nearest the centre. Research only: numpy noise.
Run: PYTHONPATH=. .venv/bin/python -W ignore docs/research/coreset-dp/route.py
"""

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prototype as P  # noqa: E402
from tune import G2, rs_of, space  # noqa: E402

from secfed.coreset.metrics import coverage  # noqa: E402


def routed(points, rel, p, eps_route, rng, score="region"):
    centres = rel["centres"]
    k = len(centres)
    counts, ys = [], []
    for x in points:
        y = (x - rel["centre"]) @ rel["V"]
        d2 = ((y[:, None] - centres[None]) ** 2).sum(2)
        lab = np.argmin(d2, axis=1)
        if score == "region":
            n = np.bincount(lab, minlength=k).astype(float)
        else:  # records of the region in the inner half of the distance to the nearest other centre
            cd = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(2)) + np.eye(k) * 1e9
            r = 0.5 * cd.min(1)
            n = np.bincount(lab[np.sqrt(d2[np.arange(len(y)), lab]) < 0.5 * r[lab]], minlength=k).astype(float)
        if eps_route is not None:
            n = n + rng.laplace(0, 1 / eps_route, k)
        counts.append(n)
        ys.append((y, d2))
    c = np.stack(counts)  # institutions x centres
    cap = [int(math.floor(p.max_fraction * len(x))) for x in points]
    order = np.argsort(-c.max(0), kind="stable")
    offs = np.cumsum([0] + [len(x) for x in points])
    taken = [set() for _ in points]
    rows = []
    for g in order:
        for i in np.argsort(-c[:, g], kind="stable"):
            if len(taken[i]) < cap[i]:
                d2 = ys[i][1][:, g]
                for r in np.argsort(d2, kind="stable"):
                    if int(r) not in taken[i]:
                        taken[i].add(int(r))
                        rows.append(offs[i] + int(r))
                        break
                break
    return np.asarray(rows, dtype=np.int64)


def run(base, eps, f, seeds, score="region"):
    out, blind = [], []
    for s in seeds:
        pts, ref = space(s)
        e_rel = None if eps is None else eps * (1 - f)
        e_route = None if eps is None else eps * f
        (rows_blind,), rel = P.select(pts, base, e_rel, s)
        rng = np.random.default_rng(10_000 + s)
        rows = routed(pts, rel, base, e_route, rng, score)
        out.append(coverage(ref, rows, seed=rs_of(s)))
        blind.append(coverage(ref, rows_blind, seed=rs_of(s)))
    return float(np.median(out)), float(np.median(blind))


if __name__ == "__main__":
    base = replace(G2, oversample=4.0)
    seeds = range(20)
    for score in ("region", "inner"):
        for eps in (1.0, 2.0, None):
            for f in ((0.1, 0.2, 0.3) if eps is not None else (0.0,)):
                r, b = run(base, eps, f, seeds, score)
                print(f"{score:6s} eps {eps} route share {f}: routed {r:.3f}  blind (same release) {b:.3f}", flush=True)
