"""The deployment tests' layout: ``secfed bench deploy``'s, with built-in records and a tiny model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from secfed.bench.deploy import INSTITUTIONS, Deployment
from secfed.bench.deploy import lay_out as lay_out_parties
from secfed.data.builtin import builtin_splits

__all__ = ["INSTITUTIONS", "Deployment", "lay_out"]


def lay_out(root: Path, example: str, model_dir: Path, *, ids: Sequence[str] = INSTITUTIONS) -> Deployment:
    splits, _test = builtin_splits(len(ids), train_per_category=2, test_per_category=1, partition="iid")
    return lay_out_parties(root, example, model=str(model_dir), data=dict(zip(ids, splits, strict=True)))
