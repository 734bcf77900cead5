"""Sweep: coverage of the DP selection vs epsilon, random and today's secure non-DP pipeline.

Reference space (primary, ``ref_k0_pca2``): exact PCA to 2 dims of ALL 800 records' rows under the
federation's public projection R (k0 = 8, seed = round_seed_of(seed, 0)), i.e. the non-DP shared space.
Today's pipeline is run with the same k0 and round seed, so its round-0 space IS this reference.
Secondary: ``ref_full_pca2``, exact PCA-2 of the unprojected unit features (method independent), and
today's default k0=64 pipeline in its own k0=64 reference (the 0.777 setting).
Usage: cd /work/main && PYTHONPATH=. .venv/bin/python -W ignore docs/research/coreset-dp/sweep.py [--seeds 5]
       [--preset gauss|original] [--k0 K] [--no-today] [--first-seed S]
"""
import argparse, json, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import numpy as np
from dataclasses import replace
from prototype import DPParams, load_clients, projected, reference_space, select, calibrate, dp_release, N_BLOCKS
from secfed.coreset.metrics import coverage, pooled_rows
from secfed.coreset.space import feature_blocks
from secfed.coreset.config import CoresetConfig
from secfed.coreset.pipeline import ClientData, run_secure
from secfed.coreset.election import SeededSlots
from secfed.coreset.baselines import random_selection
from secfed.coreset.space import derive_seed

CACHE = "/root/.cache/secfed/coreset-features/54e674fbf4a7fc88468a55718cfba7b4fc9c0fb94c2084d62f5f1a455be397fd.npz"
ORIGINAL = DPParams(n_clusters_factor=0.5)  # first write-up (2026-12-07): k0=8, bins=10, K = budget/2
# Second pass: no per-cell histogram at all. The data are one blob in the plane, so the server places the
# K centres by weighted k-means on a Gaussian model N(0, diag(s²)) of the plane (pure post-processing);
# the whole budget goes to the plane (S2, off-diagonals sent ×sqrt(2)) except a 2-number S3 segment
# "hist.var" (Σ min(y_a², (3 s_a)²)) that fixes the model's scale, which clipped S2 moments underestimate.
GAUSS = replace(ORIGINAL, density="gauss", model_bins=40, centred_clip=0.25, sym_outer=True, oversample=4.0,
                shares=(("mean.sum", 0.10), ("mean.count", 0.02), ("mom.sum", 0.05), ("mom.outer", 0.48),
                        ("hist.var", 0.05)))
PRESETS = {"original": ORIGINAL, "gauss": GAUSS}
PARAMS = GAUSS


def round_seed_of(seed, r):
    return (int(seed) * 1_000_003 + r) % 2**62


def today(idx, feats, k0, rs):
    cfg = CoresetConfig(feature_blocks=N_BLOCKS, k0=k0, bins=12, min_cohort=2)
    clients = [ClientData(i, f) for i, f in zip(idx, feats)]
    run = run_secure(clients, cfg, rs, rngs=[SeededSlots(rs * 1000 + c) for c in range(len(clients))])
    return pooled_rows(idx, run.selected)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="/tmp/coreset-dp-results.json")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gauss",
                    help="'original' reproduces the first write-up's figures")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--k0", type=int, default=None, help="override k0 (changes the reference space too!)")
    ap.add_argument("--no-today", action="store_true", help="skip today's pipeline (faster)")
    a = ap.parse_args()
    global PARAMS
    PARAMS = PRESETS[a.preset] if a.k0 is None else replace(PRESETS[a.preset], k0=a.k0)
    idx, feats = load_clients(CACHE)
    U = feature_blocks(np.concatenate(feats), N_BLOCKS)
    Uc = U - U.mean(0)
    full2 = Uc @ np.linalg.svd(Uc, full_matrices=False)[2][:2].T
    epsilons = [0.25, 0.5, 1.0, 2.0, 4.0, None]
    res = {"params": {k: v for k, v in PARAMS.__dict__.items()}, "delta": PARAMS.delta,
           "reference": "primary: exact PCA-2 of all 800 rows under the public k0=8 projection of the federation "
                        "(seed round_seed_of(seed,0)); secondary: exact PCA-2 of unprojected unit features",
           "preset": a.preset, "seeds": list(range(a.first_seed, a.first_seed + a.seeds)), "methods": {}}
    M = res["methods"]
    def add(name, seed, rows, ref, extra=None):
        rs = round_seed_of(seed, 0)
        e = M.setdefault(name, {"coverage_ref": [], "coverage_full_pca2": [], "selected": []})
        e["coverage_ref"].append(coverage(ref, rows, seed=rs))
        e["coverage_full_pca2"].append(coverage(full2, rows, seed=rs))
        e["selected"].append(int(len(np.unique(rows))))
        if extra:
            for k, v in extra.items():
                e.setdefault(k, []).append(v)
    for s in range(a.first_seed, a.first_seed + a.seeds):
        t0 = time.time()
        rs = round_seed_of(s, 0)
        pts = projected(feats, PARAMS.k0, rs)
        ref = reference_space(pts, 2)
        for eps in epsilons:
            (rows,), rel = select(pts, PARAMS, eps, s)
            info = rel["info"]
            add(f"dp eps={eps if eps is not None else 'off'}", s, rows, ref,
                {"K": info["K"], "kept_cells": info["kept_cells"]})
            if eps is not None and s == a.first_seed:
                M[f"dp eps={eps}"]["lam_total"] = info["lam_total"]
                M[f"dp eps={eps}"]["epsilon_check"] = info["epsilon_check"]
                M[f"dp eps={eps}"]["noise_std_per_coordinate"] = info["noise_std"]
                M[f"dp eps={eps}"]["stage_sensitivities_weighted_real_units(stage,L1,L2)"] = info["sensitivities"]
        rnd = pooled_rows(idx, random_selection(idx, 40, seed=derive_seed(rs, "bench-coreset-random")))
        add("random (40)", s, rnd, ref)
        if a.no_today:
            print(f"seed {s} done in {time.time() - t0:.1f}s", flush=True)
            continue
        add(f"today secure non-DP (k0={PARAMS.k0}, bins=12, min_cohort=2)", s, today(idx, feats, PARAMS.k0, rs), ref)
        pts64 = projected(feats, 64, rs)
        ref64 = reference_space(pts64, 2)
        add("today secure non-DP (k0=64 default, bins=12, min_cohort=2) [own k0=64 reference]", s,
            today(idx, feats, 64, rs), ref64)
        print(f"seed {s} done in {time.time() - t0:.1f}s", flush=True)
    for name, e in M.items():
        e["median_coverage_ref"] = float(np.median(e["coverage_ref"]))
        e["median_coverage_full_pca2"] = float(np.median(e["coverage_full_pca2"]))
        e["median_selected"] = float(np.median(e["selected"]))
    json.dump(res, open(a.out, "w"), indent=1, default=float)
    print(f"preset {a.preset}: {PARAMS}")
    print(f"{'method':75s} {'cov(ref) median':>15s} {'IQR':>13s} {'all seeds':>40s} {'full-PCA2':>9s} {'n':>4s}")
    for name, e in M.items():
        q = np.percentile(e["coverage_ref"], [25, 75])
        print(f"{name:75s} {e['median_coverage_ref']:15.3f} {q[0]:6.3f}-{q[1]:.3f} {str([round(c, 3) for c in e['coverage_ref']]):>40s}"
              f" {e['median_coverage_full_pca2']:9.3f} {e['median_selected']:4.0f}")


if __name__ == "__main__":
    main()
