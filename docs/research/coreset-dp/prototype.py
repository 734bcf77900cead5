"""Prototype: differentially private secure FedHDS-style coreset selection (distributed Skellam noise).

Released once per federation (three SecAgg stages, every vector Skellam-noised by each institution):

  S1 ``dp-mean``    : Σ clip(x, B) (k0) and the record count (1).
  S2 ``dp-moments`` : Σ z and upper(Σ z zᵀ) with z = clip(x - m̂, C) (m̂ from S1).
  S3 ``dp-hist``    : per grid cell of the DP plane: record count and Σ (y - cell centre) clipped to
                      ± half a bin per axis (y = (x - ĉ) V̂, the record's coordinates in the DP plane).

x is a record's public-random-projected unit feature row (k0 dims; the projection R is public and
fixed for the federation). Every segment ``s`` is released as ``gamma * w_s * value + noise`` with
one Skellam parameter ``lam`` for everything; ``w_s = sqrt(share_s) / Δ2_s`` so that segment ``s`` has
weighted per-record L2 sensitivity ``sqrt(share_s)`` (shares sum to 1, i.e. ``share_s`` is the
segment's share of the Gaussian RDP term). The three stages compose adaptively (RDP sum).

Server: DP plane (top-``dims`` eigenvectors of the noisy centred second moment), grid, then weighted
k-means on the thresholded noisy histogram -> K public centres and a noisy record count per centre.
Institutions: for each centre g, with probability n_ig / N̂_g (own CSPRNG), take the local record
nearest g; at most floor(max_fraction * n_i) per institution. Nothing about the choice is sent.

PROTOTYPE SHORTCUT: values are not rounded to integers; each institution's integer Skellam share
Sk(lam / h) (drawn with the real sampler) is summed over all participating institutions and divided
by gamma * w_s, i.e. the equivalent continuous-valued noise is added to the real sums. A deployment
rounds gamma * w_s * value with randomized rounding (adds <= sqrt(dim)/2 per unit of L2 sensitivity
... bounded; see design.md) before adding the share.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.cluster import KMeans

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))

from secfed.coreset.grid import Grid  # noqa: E402
from secfed.coreset.space import derive_seed, feature_blocks, projection_matrix, project  # noqa: E402
from secfed.dp.csprng import AesCtrGaussian  # noqa: E402
from secfed.dp.skellam import skellam, skellam_rdp  # noqa: E402
from secfed.dp.accounting import RDP_ORDERS  # noqa: E402

N_BLOCKS = 7


@dataclass(frozen=True)
class DPParams:
    k0: int = 8                 # public projection dims (fixed per federation)
    dims: int = 2               # DP plane dims (grid dims)
    bound: float = 1.5          # clip of projected rows in S1 (JL norms ~1)
    centred_clip: float = 0.3   # C: clip of x - m̂ in S2 (median centred norm ~0.25)
    bins: int = 10              # interior bins per axis (+2 overflow)
    range_std: float = 2.5
    # shares of the (Gaussian) privacy budget per segment; normalised to sum 1
    shares: tuple[tuple[str, float], ...] = (
        ("mean.sum", 0.10), ("mean.count", 0.02),
        ("mom.sum", 0.05), ("mom.outer", 0.48),
        ("hist.counts", 0.30), ("hist.offsets", 0.05),
    )
    n_clusters_factor: float = 1.0   # K = round(factor * budget)
    threshold_sigmas: float = 1.0    # server keeps cells whose noisy count > tau * sigma_count
    oversample: float = 2.0          # acceptance prob = min(1, oversample * m * n_ig / N̂_g)
    region_count: str = "kept"       # N̂_g from thresholded ("kept") or raw noisy counts
    max_fraction: float = 0.05
    delta: float = 1e-5
    n_institutions: int = 10
    threshold_t: int = 7
    colluders: int = 3
    gamma: float = 1000.0
    oracle_space: bool = False       # DIAGNOSTIC ONLY: exact (non-DP) plane, whole budget to the histogram
    # --- options added after the first write-up (defaults = the original design) ---------------------
    refine: int = 0                  # S4: number of DP Lloyd steps on the centres (0 = none, original)
    refine_clip: float = 1.0         # S4 offset clip radius, in units of the grid's mean bin width
    choice: str = "nearest"          # local pick for a won centre: "nearest" record to the centre, or
                                     # "medoid": own record minimising the summed distance to the own
                                     # records of the centre's region (own data only)
    over_cap: str = "prob"           # which won centres to keep when over the cap: "prob" (largest
                                     # acceptance prob., original) or "draw" (uniform, by the own draw)
    smooth: float = 0.0              # post-processing: Gaussian smoothing (in cells) of the noisy counts
    sym_outer: bool = False          # S2: release off-diagonals of zzᵀ scaled by sqrt(2) (same Δ2)
    var_clip: float = 3.0            # S3 "hist.var" segment: clip of y_a² at (var_clip · std_a)²
    model_bins: int = 0              # "gauss": k-means on a model_bins^2 lattice instead of the grid cells
    min_weight: float = 0.05         # "gauss"/"shrink": cells with a smaller weight are dropped
    density: str = "hist"            # cell weights for k-means: "hist" (thresholded noisy counts, original),
                                     # "gauss" (n̂ × cell mass of N(0, diag(noisy top eigenvalues)): S1/S2 only),
                                     # "shrink" (per cell posterior mean of the count: Gaussian prior
                                     # with variance = prior count, noisy count with the known noise var.)

    @property
    def honest(self) -> int:
        return self.threshold_t - self.colluders

    def norm_shares(self) -> dict[str, float]:
        sh = dict(self.shares)
        tot = sum(sh.values())
        return {k: v / tot for k, v in sh.items()}


# ------------------------------------------------------------------------------------------------
# Accounting


def stage_sensitivities(p: DPParams, half_width: np.ndarray) -> list[tuple[str, float, float]]:
    """(stage, L1, L2) of each stage's *weighted* vector per record, in real units (before gamma).

    Segment s released as w_s * value with w_s = sqrt(share_s) / Δ2_s, so its weighted L2 is sqrt(share_s)
    and its weighted L1 is w_s * Δ1_s."""
    sh = p.norm_shares()
    k0, B, C = p.k0, p.bound, p.centred_clip
    raw = {  # segment: (Δ1, Δ2) unweighted, per record
        "mean.sum": (B * math.sqrt(k0), B),
        "mean.count": (1.0, 1.0),
        "mom.sum": (C * math.sqrt(k0), C),
        # sym_outer: off-diagonals ×sqrt(2): Δ2 = ||zzᵀ||_F = |z|² <= C², Δ1 = Σ_i z_i² + sqrt(2)Σ_{i<j}|z_i z_j|
        # = |z|² + (|z|_1² - |z|²)/sqrt(2) <= C²(1 + (k0 - 1)/sqrt(2))
        "mom.outer": ((C * C * (1 + (k0 - 1) / math.sqrt(2))) if p.sym_outer else C * C * (k0 + 1) / 2.0, C * C),
        "hist.counts": (1.0, 1.0),
        "hist.offsets": (float(np.sum(half_width)), float(np.linalg.norm(half_width))),
    }
    # S3 per-axis second moment in the plane, Σ min(y_a², v_a): Δ2 = |v|, Δ1 = Σ v_a <= sqrt(dims)·|v|
    # (worst case used, so r = 1 is an upper bound whatever v is)
    raw["hist.var"] = (math.sqrt(p.dims), 1.0)
    if p.refine:  # S4, once per Lloyd step; each step carries share_s / refine of the segment's share
        raw["ref.counts"] = (1.0, 1.0)
        # offsets clipped to an L2 ball of radius r: Δ2 = r, Δ1 = r·sqrt(dims); the weighted L1
        # w·Δ1 = sqrt(share)·sqrt(dims) does not depend on r, so r = 1 here is exact
        raw["ref.offsets"] = (math.sqrt(p.dims), 1.0)
    out = []
    stages = ["mean", "mom", "hist"] + ["ref"] * p.refine
    for stage in stages:
        l1 = l2sq = 0.0
        for seg, (d1, d2) in raw.items():
            if seg.startswith(stage + ".") and sh.get(seg, 0) > 0:
                s = sh[seg] / (p.refine if stage == "ref" else 1)
                w = math.sqrt(s) / d2
                l1 += w * d1
                l2sq += s
        out.append((stage, l1, math.sqrt(l2sq)))
    return out


def weights(p: DPParams, half_width: np.ndarray, ref_radius: float = 1.0,
            var_clip: np.ndarray = np.ones(2)) -> dict[str, float]:
    sh = dict(p.norm_shares())
    for s in ("ref.counts", "ref.offsets"):  # per Lloyd step
        if s in sh:
            sh[s] = sh[s] / p.refine if p.refine else 0.0
    d2 = {"ref.counts": 1.0, "ref.offsets": ref_radius, "hist.var": float(np.linalg.norm(var_clip)),
          "mean.sum": p.bound, "mean.count": 1.0, "mom.sum": p.centred_clip,
          "mom.outer": p.centred_clip**2, "hist.counts": 1.0,
          "hist.offsets": float(np.linalg.norm(half_width))}
    return {s: math.sqrt(sh[s]) / d2[s] for s in sh if sh[s] > 0}


def composed_epsilon(lam: float, stages: list[tuple[str, float, float]], gamma: float, delta: float) -> float:
    """Epsilon of the adaptive composition of the stages, each with Sk(lam) per coordinate in ring units."""
    from dp_accounting.rdp import rdp_privacy_accountant

    rdp = [sum(skellam_rdp(a, lam, gamma * l1, gamma * l2) for _, l1, l2 in stages) for a in RDP_ORDERS]
    eps, _ = rdp_privacy_accountant.compute_epsilon(list(RDP_ORDERS), rdp, delta)
    return float(eps)


@__import__("functools").lru_cache(maxsize=None)
def calibrate(eps: float, p: DPParams) -> float:
    """Smallest lam_total (sum noise Sk(lam_total) with only h honest contributors) giving eps at delta.

    The offsets' weighted L1 depends on the grid (public after S2) but is tiny; we calibrate with the
    worst case of 1 L1 unit per axis (sqrt(share)*sqrt(dims)), which upper-bounds it."""
    hw_worst = np.ones(p.dims)  # L1/L2 ratio sqrt(dims): the worst case for w*Δ1 of the offsets
    stages = stage_sensitivities(p, hw_worst)
    hi = 1.0
    while composed_epsilon(hi, stages, p.gamma, p.delta) > eps:
        hi *= 4
    lo = hi / 4
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        if composed_epsilon(mid, stages, p.gamma, p.delta) <= eps:
            hi = mid
        else:
            lo = mid
    return hi


# ------------------------------------------------------------------------------------------------
# Data


def load_clients(path: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import json

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        idx = [np.asarray(z[f"idx{c}"], np.int64) for c in range(meta["clients"])]
        feats = [np.asarray(z[f"f{c}"], np.float64) for c in range(meta["clients"])]
    return idx, feats


def projected(feats: list[np.ndarray], k0: int, fed_seed: int) -> list[np.ndarray]:
    """Each institution's public-projected unit rows (same R for every institution, fixed per federation)."""
    R = projection_matrix(feats[0].shape[1], k0, fed_seed)
    return [project(feature_blocks(f, N_BLOCKS), R, 1e9) for f in feats]  # clipping is done per stage


# ------------------------------------------------------------------------------------------------
# Noisy secure sum


class NoisySum:
    """Sum over institutions of (w*gamma*value + Sk(lam/h)) / (w*gamma): what the server decodes."""

    def __init__(self, lam_total: float | None, p: DPParams, seed: int) -> None:
        self.lam_share = None if lam_total is None else lam_total / p.honest
        self.p = p
        self.streams = [AesCtrGaussian.from_test_seed(seed * 1000 + i) for i in range(p.n_institutions)]

    def __call__(self, parts: list[np.ndarray], w: float) -> np.ndarray:
        total = np.sum(parts, axis=0).astype(np.float64)
        if self.lam_share is None:
            return total
        noise = np.zeros(total.size, dtype=np.float64)
        for st in self.streams[: len(parts)]:  # every institution adds its own share
            noise += skellam(self.lam_share, total.size, st)
        return total + noise.reshape(total.shape) / (self.p.gamma * w)

    def std(self, w: float, contributors: int) -> float:
        if self.lam_share is None:
            return 0.0
        return math.sqrt(2 * self.lam_share * contributors) / (self.p.gamma * w)


def _clip_rows(x: np.ndarray, r: float) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, r / np.maximum(n, 1e-300))


def _offdiag_scale(k: int, sym: bool) -> np.ndarray:
    """Per-entry scale of upper(zzᵀ): sqrt(2) on the off-diagonal when ``sym`` (then the released vector's
    L2 norm is exactly ||zzᵀ||_F = |z|², i.e. Δ2 = C² unchanged, and the off-diagonal noise is 1/sqrt(2))."""
    iu = np.triu_indices(k)
    return np.where(iu[0] == iu[1], 1.0, math.sqrt(2.0) if sym else 1.0)


def _upper(z: np.ndarray, sym: bool = False) -> np.ndarray:
    k = z.shape[1]
    return (z.T @ z)[np.triu_indices(k)] * _offdiag_scale(k, sym)


def _unupper(v: np.ndarray, k: int, sym: bool = False) -> np.ndarray:
    m = np.zeros((k, k))
    m[np.triu_indices(k)] = v / _offdiag_scale(k, sym)
    return m + np.triu(m, 1).T


# ------------------------------------------------------------------------------------------------
# The protocol


def dp_release(points: list[np.ndarray], p: DPParams, eps: float | None, seed: int) -> dict[str, Any]:
    """The once-per-federation release and the server's post-processing. ``points[i]``: institution i's
    projected rows. Returns the public broadcast (plane, grid, centres, region counts) and noise info."""
    lam = None if eps is None else calibrate(eps, p)
    ns = NoisySum(lam, p, seed)
    m = len(points)
    # S1: mean
    hw0 = np.ones(p.dims)
    w = weights(p, hw0)
    s_sum = ns([_clip_rows(x, p.bound).sum(0) * 1.0 for x in points], w["mean.sum"])
    s_cnt = ns([np.array([float(len(x))]) for x in points], w["mean.count"])
    n_hat = max(float(s_cnt[0]), 1.0)
    m_hat = s_sum / n_hat
    # S2: centred moments
    C = p.centred_clip
    zs = [_clip_rows(x - m_hat, C) for x in points]
    z_sum = ns([z.sum(0) for z in zs], w["mom.sum"])
    z_out = ns([_upper(z, p.sym_outer) for z in zs], w["mom.outer"])
    mu = z_sum / n_hat
    cov = _unupper(z_out, p.k0, p.sym_outer) / n_hat - np.outer(mu, mu)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][: p.dims]
    V = evecs[:, order]
    centre = m_hat + mu
    std = np.sqrt(np.maximum(evals[order], 1e-6))
    if p.oracle_space:
        X = np.concatenate(points); centre = X.mean(0); Xc = X - centre
        ev, evec = np.linalg.eigh(Xc.T @ Xc / len(X)); o = np.argsort(ev)[::-1][: p.dims]
        V = evec[:, o]; std = np.sqrt(ev[o])
    grid = Grid(lo=-p.range_std * std, hi=p.range_std * std, bins=p.bins)
    hw = grid.width / 2.0
    vclip = (p.var_clip * std) ** 2  # public (post-processing of S2)
    w = weights(p, hw, var_clip=vclip)
    # S3: histogram of records over the grid of the DP plane
    cnts, offs = [], []
    for x in points:
        y = (x - centre) @ V
        cells = grid.cell_of(y)
        cc = grid.cell_centres(cells)
        off = np.clip(y - cc, -hw, hw)
        c = np.zeros(grid.n_cells)
        o = np.zeros((grid.n_cells, p.dims))
        np.add.at(c, cells, 1.0)
        np.add.at(o, cells, off)
        cnts.append(c)
        offs.append(o)
    if "hist.var" in w:  # noisy per-axis second moment of the plane coordinates -> model scale
        v_sum = ns([np.minimum(((x - centre) @ V) ** 2, vclip).sum(0) for x in points], w["hist.var"])
        std = np.sqrt(np.maximum(v_sum / n_hat, 0.05 * std**2))
    if "hist.counts" in w:
        h_cnt = ns(cnts, w["hist.counts"])
        h_off = ns(offs, w["hist.offsets"]) if "hist.offsets" in w else np.zeros((grid.n_cells, p.dims))
        sig_cnt = ns.std(w["hist.counts"], m)
    else:  # no S3 at all (only with density="gauss"): nothing about the cells is released
        assert p.density == "gauss", "without hist.counts only density='gauss' is defined"
        h_cnt, h_off, sig_cnt = np.zeros(grid.n_cells), np.zeros((grid.n_cells, p.dims)), 1.0
    # server post-processing (no privacy cost)
    all_cells = np.arange(grid.n_cells)
    pos = grid.cell_centres(all_cells)
    kappa = max(1.0, 2.0 * sig_cnt)
    pos = pos + np.clip(h_off / np.maximum(h_cnt, kappa)[:, None], -hw, hw)
    cnt_used = h_cnt
    if p.smooth > 0:  # post-processing: Gaussian blur of the noisy counts over the (bins+2)^dims grid
        from scipy.ndimage import gaussian_filter
        cnt_used = gaussian_filter(h_cnt.reshape((grid.side,) * p.dims), p.smooth, mode="constant").ravel()
        # noise std of a smoothed cell: sigma * ||kernel||_2
        imp = np.zeros((grid.side,) * p.dims); imp[(grid.side // 2,) * p.dims] = 1.0
        sig_cnt = sig_cnt * float(np.linalg.norm(gaussian_filter(imp, p.smooth, mode="constant")))
    keep = cnt_used > p.threshold_sigmas * sig_cnt
    if eps is None:
        keep = h_cnt > 0
    wts = np.where(keep, cnt_used, 0.0)
    if p.density != "hist":
        from scipy.stats import norm
        edges = [np.concatenate(([-np.inf], np.linspace(grid.lo[a], grid.hi[a], p.bins + 1), [np.inf]))
                 for a in range(p.dims)]
        mass = [np.diff(norm.cdf(e / std[a])) for a, e in enumerate(edges)]
        prior = n_hat * np.einsum("i,j->ij", *mass).ravel() if p.dims == 2 else None
        if p.density == "gauss":
            wts = prior
        else:  # "shrink": posterior mean with prior N(prior, prior) and noise N(0, sig^2)
            s2 = sig_cnt**2
            wts = (prior * s2 + h_cnt * prior) / np.maximum(s2 + prior, 1e-12) if eps is not None else h_cnt
            wts = np.maximum(wts, 0.0)
        keep = wts > p.min_weight
        wts = np.where(keep, wts, 0.0)
        if p.density == "gauss":  # no histogram used: positions at the cells' centres, no offsets
            pos = grid.cell_centres(all_cells)
            if p.model_bins:  # a fine lattice over ±4 std, weights = model mass (pure post-processing)
                ax = [np.linspace(-4 * std[a], 4 * std[a], p.model_bins) for a in range(p.dims)]
                pos = np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, p.dims)
                wts = np.exp(-0.5 * ((pos / std) ** 2).sum(1))
                wts = n_hat * wts / wts.sum()
                keep = wts > 1e-6 * wts.max()
    budget = max(1, int(math.floor(p.max_fraction * n_hat)))
    K = max(1, min(int(round(p.n_clusters_factor * budget)), int(keep.sum())))
    km = KMeans(K, n_init=4, random_state=derive_seed(seed, "dp-merge") % 2**32).fit(
        pos[keep], sample_weight=wts[keep]
    )
    centres = km.cluster_centers_
    # noisy record count per centre's region (cells assigned to their nearest centre)
    cell_lab = np.argmin(((pos[:, None] - centres[None]) ** 2).sum(2), axis=1)
    src = wts if p.region_count == "kept" else h_cnt
    region = np.bincount(cell_lab, weights=src, minlength=K)
    # S4 (optional): DP Lloyd steps. Per centre's Voronoi region: record count (Δ2 = Δ1 = 1) and the sum
    # of (y - centre) clipped to an L2 ball of radius r (Δ2 = r, Δ1 = r·sqrt(dims)). One record is in one
    # region, so per step the per-record sensitivity is that of one count and one offset.
    r = p.refine_clip * float(np.mean(grid.width))
    ref_info = []
    for _step in range(p.refine):
        w = weights(p, hw, r, vclip)
        rc, ro = [], []
        for x in points:
            y = (x - centre) @ V
            lab = np.argmin(((y[:, None] - centres[None]) ** 2).sum(2), axis=1)
            c = np.bincount(lab, minlength=K).astype(float)
            o = np.zeros((K, p.dims))
            np.add.at(o, lab, _clip_rows(y - centres[lab], r))
            rc.append(c)
            ro.append(o)
        r_cnt = ns(rc, w["ref.counts"])
        r_off = ns(ro, w["ref.offsets"]) if "ref.offsets" in w else np.zeros((K, p.dims))
        sig_r = ns.std(w["ref.counts"], m)
        kap = max(1.0, 2.0 * sig_r)
        shift = r_off / np.maximum(r_cnt, kap)[:, None]
        centres = centres + _clip_rows(shift, r)
        region = np.maximum(r_cnt, 0.0)
        ref_info.append({"sigma_count": sig_r})
    info = {
        "refine": ref_info,
        "lam_total": lam,
        "n_hat": n_hat,
        "budget": budget,
        "K": K,
        "kept_cells": int(keep.sum()),
        "n_cells": grid.n_cells,
        "noise_std": {  # per coordinate, real units, actual (all m contribute) and target (h honest)
            seg: {"actual": ns.std(wv, m), "target_h": ns.std(wv, p.honest)} for seg, wv in w.items()
        },
    }
    if eps is not None:
        info["epsilon_check"] = composed_epsilon(lam, stage_sensitivities(p, hw), p.gamma, p.delta)
        info["sensitivities"] = stage_sensitivities(p, hw)
    return {"centre": centre, "V": V, "grid": grid, "centres": centres, "region": region, "info": info}


def assignment(n_clusters: int, n_inst: int, group_seed: int, round_: int) -> np.ndarray:
    """Balanced secret assignment of centres to institutions for one round (every institution computes
    the same one from a key shared by the institutions and unknown to the server; a fresh one per round).
    Prototype: the key is a test seed. It does not depend on any data."""
    st = AesCtrGaussian.from_test_seed(7_000_000_000 + group_seed * 1009 + round_)
    reps = -(-n_clusters // n_inst)
    base = np.tile(np.arange(n_inst), reps)
    keys = st.uniform(len(base))
    order = base[np.argsort(keys, kind="stable")]
    return order[:n_clusters]


def local_choice(x: np.ndarray, release: dict[str, Any], p: DPParams, me: int, assign: np.ndarray,
                 stream: AesCtrGaussian) -> np.ndarray:
    """Institution ``me``'s representatives for one round (rows of its own records); it sends nothing.

    Centre g is offered to institution ``assign[g]`` only (disjoint segments of one lottery: at most
    one representative per centre). It accepts with probability min(1, accept * m * n_ig / N̂_g) (own
    CSPRNG): an institution holding at least its fair share 1/m of the centre's records (times
    1/accept) always takes it, one holding none never does. At most floor(max_fraction * n_i)."""
    y = (x - release["centre"]) @ release["V"]
    centres = release["centres"]
    d2 = ((y[:, None] - centres[None]) ** 2).sum(2)
    lab = np.argmin(d2, axis=1)
    n_ig = np.bincount(lab, minlength=len(centres)).astype(float)
    denom = np.maximum(np.maximum(release["region"], n_ig), 1.0)
    m = len(np.unique(assign)) if p.n_institutions is None else p.n_institutions
    prob = np.minimum(1.0, p.oversample * m * n_ig / denom)
    u = stream.uniform(len(centres))
    mine = np.flatnonzero(assign == me)
    won = mine[u[mine] < prob[mine]]
    cap = int(math.floor(p.max_fraction * len(x)))
    if len(won) > cap:
        if p.over_cap == "prob":  # keep the centres this institution holds most of; ties by the draw
            order = np.lexsort((u[won], -prob[won]))
        else:  # "draw": uniformly among the won ones (the own draw decides)
            order = np.argsort(u[won] / np.maximum(prob[won], 1e-12), kind="stable")
        won = won[order[:cap]]
    taken: set[int] = set()
    rows = []
    for g in won:
        if p.choice == "medoid" and n_ig[g] > 0:
            # own records of the region; the one with the least summed distance to the others (ties: nearer g)
            own = np.flatnonzero(lab == g)
            dd = np.sqrt(((y[own][:, None] - y[own][None]) ** 2).sum(2)).sum(1)
            cand = own[np.lexsort((d2[own, g], dd))]
        elif p.choice == "lifted":  # nearest in the whole projected space to the centre lifted off the plane
            lift = release["centre"] + release["V"] @ centres[g]
            cand = np.argsort(((x - lift) ** 2).sum(1), kind="stable")
        else:
            cand = np.argsort(d2[:, g], kind="stable")
        for r in cand:
            if int(r) not in taken:
                taken.add(int(r))
                rows.append(int(r))
                break
    return np.asarray(rows, dtype=np.int64)


def select(points: list[np.ndarray], p: DPParams, eps: float | None, seed: int, rounds: int = 1):
    """Release once, then ``rounds`` local choices (fresh CSPRNG draws per round). Pooled rows per round."""
    rel = dp_release(points, p, eps, seed)
    offs = np.cumsum([0] + [len(x) for x in points])
    per_round = []
    for r in range(rounds):
        assign = assignment(len(rel["centres"]), len(points), seed, r)
        rows = []
        for i, x in enumerate(points):
            st = AesCtrGaussian.from_test_seed(10**9 + seed * 10007 + r * 101 + i)
            rows.append(offs[i] + local_choice(x, rel, p, i, assign, st))
        per_round.append(np.concatenate(rows))
    return per_round, rel


def reference_space(points: list[np.ndarray], dims: int) -> np.ndarray:
    """Fixed non-DP reference: exact PCA of all records' projected rows to ``dims`` dims."""
    X = np.concatenate(points)
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return Xc @ vt[:dims].T


if __name__ == "__main__":
    import argparse
    import json

    from secfed.coreset.metrics import coverage

    ap = argparse.ArgumentParser()
    ap.add_argument("--eps", type=float, default=1.0, help="selection epsilon; <= 0 means off (no noise)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k0", type=int, default=DPParams.k0)
    ap.add_argument("--cache", default="/root/.cache/secfed/coreset-features/"
                    "54e674fbf4a7fc88468a55718cfba7b4fc9c0fb94c2084d62f5f1a455be397fd.npz")
    a = ap.parse_args()
    p = DPParams(k0=a.k0)
    _, feats = load_clients(a.cache)
    fed_seed = (a.seed * 1_000_003) % 2**62
    pts = projected(feats, p.k0, fed_seed)
    ref = reference_space(pts, 2)
    (rows,), rel = select(pts, p, None if a.eps <= 0 else a.eps, a.seed)
    print(json.dumps({"selected": len(rows), "coverage_ref2": coverage(ref, rows, seed=fed_seed),
                      **{k: v for k, v in rel["info"].items() if k != "sensitivities"}}, indent=1, default=float))
