"""Exploration helpers (second pass). grid()/agrid(): median coverage over seeds for DPParams changes;
agrid also prints the median largest principal angle (deg) between the DP plane and the exact one.
Run from the repo root: PYTHONPATH=. .venv/bin/python -W ignore -c "import sys; sys.path.insert(0, 'docs/research/coreset-dp'); from tune import *; agrid(G2, [dict()], seeds=range(20))"
BASE = the original preset; G = Gauss model without histogram; G2 = the chosen 'gauss' preset of sweep.py minus oversample=4."""
import sys, json, itertools, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import numpy as np
from dataclasses import replace
import prototype as P
from secfed.coreset.metrics import coverage
CACHE = "/root/.cache/secfed/coreset-features/54e674fbf4a7fc88468a55718cfba7b4fc9c0fb94c2084d62f5f1a455be397fd.npz"
idx, feats = P.load_clients(CACHE)
def rs_of(s): return (int(s) * 1_000_003) % 2**62
_cache = {}
def space(s, k0=8):
    if (s, k0) not in _cache:
        pts = P.projected(feats, k0, rs_of(s)); _cache[(s, k0)] = (pts, P.reference_space(pts, 2))
    return _cache[(s, k0)]
def run(p, eps, seeds):
    out = []; nsel = []
    for s in seeds:
        pts, ref = space(s, p.k0)
        (rows,), rel = P.select(pts, p, eps, s)
        out.append(coverage(ref, rows, seed=rs_of(s))); nsel.append(len(rows))
    return np.median(out), out, np.median(nsel)
def grid(base, changes, epss=(1.0, 2.0, None), seeds=range(10)):
    for ch in changes:
        p = replace(base, **ch)
        res = [run(p, e, seeds) for e in epss]
        print(f"{str(ch):70s} " + "  ".join(f"e{e}: {m:.3f} (q25 {np.percentile(o,25):.3f} q75 {np.percentile(o,75):.3f}) n{n:.0f}" for e, (m, o, n) in zip(epss, res)), flush=True)
BASE = P.DPParams(n_clusters_factor=0.5)
def diag(p, eps, seeds=range(10), oracle=False):
    """coverage of (a) actual choice, (b) global nearest record to each centre (choice oracle)."""
    a, b, nb = [], [], []
    for s in seeds:
        pts, ref = space(s, p.k0)
        pp = replace(p, oracle_space=oracle)
        (rows,), rel = P.select(pts, pp, eps, s)
        a.append(coverage(ref, rows, seed=rs_of(s)))
        X = np.concatenate(pts); y = (X - rel["centre"]) @ rel["V"]
        d2 = ((y[:, None] - rel["centres"][None]) ** 2).sum(2)
        near = np.unique(np.argmin(d2, axis=0))
        b.append(coverage(ref, near, seed=rs_of(s))); nb.append(len(near))
    return np.median(a), np.median(b), np.median(nb)
def SH(**kw):
    d = {"mean.sum": 0.10, "mean.count": 0.02, "mom.sum": 0.05, "mom.outer": 0.48, "hist.counts": 0.30, "hist.offsets": 0.05}
    d.update({k.replace("_", "."): v for k, v in kw.items()})
    return tuple(d.items())
def angle_run(p, eps, seeds=range(10)):
    angs=[]; covs=[]; ns=[]
    for s in seeds:
        pts, ref = space(s, p.k0); X = np.concatenate(pts); Xc = X - X.mean(0)
        Vt = np.linalg.svd(Xc, full_matrices=False)[2][:2].T
        (rows,), rel = P.select(pts, p, eps, s)
        sv = np.linalg.svd(Vt.T @ rel['V'])[1]
        angs.append(np.degrees(np.arccos(np.clip(sv.min(),0,1))))
        covs.append(coverage(ref, rows, seed=rs_of(s))); ns.append(len(rows))
    return np.median(angs), np.median(covs), np.percentile(covs,25), np.percentile(covs,75), np.median(ns)
def agrid(base, changes, epss=(1.0, 2.0, None), seeds=range(10)):
    for ch in changes:
        p = replace(base, **ch)
        res = [angle_run(p, e, seeds) for e in epss]
        print(f"{str(ch):60s} " + "  ".join(f"e{e}: {c:.3f} [{a25:.3f},{a75:.3f}] ang{a:.0f} n{n:.0f}" for e, (a, c, a25, a75, n) in zip(epss, res)), flush=True)
G = replace(BASE, density='gauss', model_bins=40, shares=SH(hist_counts=0, hist_offsets=0))
G2 = replace(G, shares=SH(hist_counts=0, hist_offsets=0, hist_var=0.05), centred_clip=0.25, sym_outer=True)
