"""FedHDS with DP selection: the federation's side of :mod:`secfed.coreset.dp_release`.

Schedule. The three release stages run **once per federation**, in the first rounds that reach them
(base-model features are frozen, so their statistics never change); each stage is released over the
cohort of its own session and never again. From then on every round's train stage carries the public
:class:`~secfed.coreset.dp_release.DpRelease`, which is post-processing and costs nothing more: each
round only draws a fresh public offer of centres and fresh private acceptance coins. A failed attempt
keeps the stages it completed (the server keeps their sums, the institutions their verified copies)
and goes on with the next unreleased stage, so a retry never re-sums a released share over another
cohort (the release registry of :mod:`secfed.fl.releases` would refuse it anyway: the identity of a
stage's input is the features, the federation's release seed and the settings, not a round label).

Both sides keep what was released: the server in memory (:class:`ServerReleases`), the institution
in memory and in a file beside its privacy ledger (:class:`ReleaseStore`), written when it verifies
a sum, so an institution restarted between rounds still checks every later plan against the sums it
saw. An institution without the verified sums (it joined after the release, or lost its state)
refuses the train stage: it cannot tell a real release from one the server made up to steer its choice.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from secfed.coreset.dp_config import DP_STAGES, DpSelection, calibrated_lambda
from secfed.coreset.dp_release import DpRelease, DpStagePlan, NoiseShare, next_release_stage
from secfed.coreset.layout import CohortSum
from secfed.pki.files import write_secret

__all__ = ["ReleaseStore", "ReleasedSum", "ServerReleases", "derive_release", "release_key", "release_seed"]


def release_seed(federation_seed: int) -> int:
    """The federation's public seed of the release (its projection and the server's post-processing):
    one per federation, never per round or attempt, so a retry cannot draw a fresh projection and
    release the same records' statistics again under another name."""
    digest = hashlib.sha256(f"secfed/fedhds/dp-release-seed/{int(federation_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**62


def release_key(
    features_digest: bytes, seed: int, cfg: DpSelection, feature_settings: Mapping[str, Any]
) -> str:
    """Names one release: these features, this seed, the settings that shape it (hex SHA-256)."""
    blob = json.dumps(
        {"seed": seed, "cfg": cfg.release_fields(), "features": dict(feature_settings)}, sort_keys=True
    ).encode()
    return hashlib.sha256(features_digest + blob).hexdigest()


@dataclass(frozen=True)
class ReleasedSum:
    """One released stage's decoded sum and the ``t - c`` of its session (every contributor's share)."""

    total: CohortSum
    honest: int

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.total.stage,
            "values": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in self.total.values.items()},
            "n_contributors": self.total.n_contributors,
            "honest": self.honest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReleasedSum:
        values = {str(k): np.asarray(v, dtype=np.float64) for k, v in dict(data["values"]).items()}
        return cls(CohortSum(str(data["stage"]), values, int(data["n_contributors"])), int(data["honest"]))


def _same(a: ReleasedSum, b: ReleasedSum) -> bool:
    return a.to_json() == b.to_json()


def _ordered(sums: Mapping[str, ReleasedSum]) -> list[ReleasedSum]:
    """The released sums in stage order, stopping at the first stage not released."""
    out: list[ReleasedSum] = []
    for stage in DP_STAGES:
        if stage not in sums:
            break
        out.append(sums[stage])
    return out


def derive_release(
    cfg: DpSelection, sums: Mapping[str, ReleasedSum], *, max_fraction: float, seed: int
) -> DpStagePlan | DpRelease:
    """The next stage's plan, or the release, from the released sums (the server's and every
    institution's computation: deterministic, so both sides agree to the last bit)."""
    ordered = _ordered(sums)
    hist = sums.get(DP_STAGES[-1])
    return next_release_stage(
        cfg,
        [s.total for s in ordered],
        max_fraction=max_fraction,
        release_seed=seed,
        hist_share=None if hist is None else NoiseShare(calibrated_lambda(cfg), hist.honest),
    )


class ServerReleases:
    """The server's copy of the released sums of its federation (kept across rounds and attempts)."""

    def __init__(self) -> None:
        self.sums: dict[str, ReleasedSum] = {}

    def keep(self, stage: str, total: CohortSum, honest: int) -> None:
        """Keep a released stage's sum (the same sum again is no change; another one is an error: every
        stage is released once per federation)."""
        kept = ReleasedSum(total, honest)
        if stage in self.sums and not _same(self.sums[stage], kept):
            raise ValueError(f"stage {stage!r} was already released in this federation")
        self.sums[stage] = kept


class ReleaseStore:
    """An institution's verified release sums, by :func:`release_key`; ``path`` None keeps them in memory.

    The file holds public values only (what the server learned too), written atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, dict[str, Any]]] | None = None

    def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self._data is None:
            self._data = {}
            if self.path is not None and self.path.exists():
                try:
                    loaded = json.loads(self.path.read_text())
                except (OSError, ValueError) as exc:
                    raise ValueError(f"{self.path}: unreadable DP selection release record: {exc}") from None
                if not isinstance(loaded, dict):
                    raise ValueError(f"{self.path}: a DP selection release record must be a JSON object")
                self._data = loaded
        return self._data

    def sums(self, key: str) -> dict[str, ReleasedSum]:
        with self._lock:
            found = self._load().get(key, {})
            try:
                return {stage: ReleasedSum.from_json(v) for stage, v in found.items()}
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{self.path}: a malformed DP selection release record: {exc}") from None

    def add(self, key: str, released: ReleasedSum) -> None:
        with self._lock:
            data = self._load()
            stages = data.setdefault(key, {})
            stage = released.total.stage
            if stage in stages:
                if stages[stage] == released.to_json():
                    return
                raise ValueError(f"stage {stage!r} of this release was already verified with another sum")
            stages[stage] = released.to_json()
            if self.path is not None:
                write_secret(self.path, json.dumps(data, sort_keys=True).encode())
