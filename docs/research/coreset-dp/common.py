"""Shared helpers: data loading, reference space, coverage."""
from __future__ import annotations
import json
import numpy as np
from secfed.coreset.space import feature_blocks
from secfed.coreset.metrics import coverage

CACHE = "/root/.cache/secfed/coreset-features/54e674fbf4a7fc88468a55718cfba7b4fc9c0fb94c2084d62f5f1a455be397fd.npz"
N_BLOCKS = 7


def load():
    with np.load(CACHE, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        idx = [np.asarray(z[f"idx{c}"], np.int64) for c in range(meta["clients"])]
        feats = [np.asarray(z[f"f{c}"], np.float64) for c in range(meta["clients"])]
    return idx, feats


def reference(feats, dims):
    """Fixed non-DP reference space: plaintext PCA of all records' unit (feature_blocks) rows."""
    u = feature_blocks(np.concatenate(feats), N_BLOCKS)
    mu = u.mean(0)
    _, s, vt = np.linalg.svd(u - mu, full_matrices=False)
    return (u - mu) @ vt[:dims].T


def cov(points, rows, seed):
    return float(coverage(points, np.asarray(rows, np.int64), seed=seed))
