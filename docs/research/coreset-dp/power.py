"""Third pass: can a second, power-iteration release or another clip fix the DP plane? (design.md, end)

Gaussian stand-in for the Skellam noise at the real implementation's per-coordinate std of the moments
sum (all 10 institutions contributing; ``secfed.bench.coreset_dp.noise_std_per_coordinate``). Largest
principal angle (degrees, median over seeds) between the exact PCA-2 plane of the projected rows and:
``oneshot`` the top-2 eigenvectors of the noisy clipped moment matrix (today's design); ``power`` the same
budget split f / 1 - f between that release (top-p start V0) and one noisy power step Y = Σ z zᵀ V0 + noise
(same L2 sensitivity C², a k0 x p release), plane = top-2 left singular vectors of Y.
Run from the repo root: PYTHONPATH=. .venv/bin/python docs/research/coreset-dp/power.py
"""

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load  # noqa: E402

from secfed.coreset.space import feature_blocks, project, projection_matrix  # noqa: E402

_, FEATS = load()
SIGMA = {1.0: 0.486, 2.0: 0.258}  # moments.outer std per coordinate at C = 0.25 (10 contributors)


def angle(u: np.ndarray, v: np.ndarray) -> float:
    return math.degrees(math.acos(min(1.0, float(np.linalg.svd(u.T @ v, compute_uv=False).min()))))


def top(m: np.ndarray, p: int) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return v[:, np.argsort(w)[::-1][:p]]


def sym_noise(k: int, sd: float, rng: np.random.Generator) -> np.ndarray:
    e = np.triu(rng.normal(0, sd, (k, k)))
    off = np.triu(e, 1) / math.sqrt(2)  # off-diagonals released x sqrt(2): half the variance
    return np.diag(np.diag(e)) + off + off.T


def run(sigma: float, clip: float, f: float, p: int, seeds: range, k0: int = 8) -> tuple[float, float]:
    one, power = [], []
    for seed in seeds:
        r = projection_matrix(FEATS[0].shape[1], k0, 1000 + seed)
        x = np.concatenate([project(feature_blocks(a, 7), r, 1e9) for a in FEATS])
        z = x - x.mean(0)
        exact = top(z.T @ z, 2)
        z = z * np.minimum(1, clip / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12))
        a = z.T @ z
        rng = np.random.default_rng(seed)
        one.append(angle(exact, top(a + sym_noise(k0, sigma, rng), 2)))
        v0 = top(a + sym_noise(k0, sigma / math.sqrt(f), rng), p)
        y = a @ v0 + rng.normal(0, sigma / math.sqrt(1 - f), (k0, p))
        power.append(angle(exact, np.linalg.svd(y, full_matrices=False)[0][:, :2]))
    return float(np.median(one)), float(np.median(power))


if __name__ == "__main__":
    print("clip bias without noise:", {c: run(1e-9, c, 0.5, 2, range(10))[0] for c in (0.25, 0.35, 0.5, 1.0)})
    for eps, s0 in SIGMA.items():
        for f in (0.3, 0.5, 0.7):
            for p in (2, 3, 4):
                print(f"eps {eps} split {f} p {p}: oneshot/power", run(s0, 0.25, f, p, range(20)))
        for c in (0.2, 0.25, 0.3, 0.35, 0.4):  # noise std scales with the sensitivity C^2
            print(f"eps {eps} clip {c}: oneshot/power(0.5, 3)", run(s0 * (c / 0.25) ** 2, c, 0.5, 3, range(30)))
