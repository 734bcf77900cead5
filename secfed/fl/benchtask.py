"""A task whose local work is free: every client contributes a fixed random vector.

Used by ``secfed bench round`` so that a round's wall time is the cost of aggregation and transport
alone, not of computing contributions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.fl import tasks
from secfed.fl.instruction import RoundInstruction
from secfed.fl.policy import InstitutionPolicy, RefusalCategory, Refused
from secfed.fl.releases import release_identity
from secfed.fl.vectors import model_hash
from secfed.secagg.config import SessionConfig
from secfed.secagg.messages import AggregateResult
from secfed.secagg.spec import Segment, VectorSpec

NAME = "bench-vector"


class BenchInstruction(RoundInstruction):
    dim: int


def bench_spec(dim: int) -> VectorSpec:
    return VectorSpec((Segment("x", dim, clip=1.0, frac_bits=16), Segment("n", 1, clip=1.0, frac_bits=0)))


def _dim(options: Mapping[str, Any]) -> int:
    unknown = set(options) - {"dim"}
    if unknown:
        raise ValueError(f"{NAME} task: unknown option(s) {sorted(unknown)}")
    dim = int(options.get("dim", 1000))
    if dim < 1:
        raise ValueError(f"{NAME} task: dim must be >= 1")
    return dim


class BenchServer(tasks.SingleStage):
    name = NAME

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.dim = _dim(options)

    def initial_model(self) -> NDArray[np.float32]:
        return np.zeros(self.dim, dtype=np.float32)

    def spec(self, model: NDArray[np.float32]) -> VectorSpec:
        return bench_spec(self.dim)

    def task_config(self, round_: int) -> dict[str, Any]:
        return BenchInstruction(stage=tasks.UPDATE_STAGE, dim=self.dim).wire()

    def apply(self, model: NDArray[np.float32], result: AggregateResult) -> NDArray[np.float32]:
        mean: NDArray[np.float32] = (result.values["x"] / max(result.values["n"][0], 1.0)).astype(np.float32)
        return mean

    def export(self, model: NDArray[np.float32], directory: Path) -> None:
        tasks.save_vector(model, directory)


class BenchClient:
    name = NAME

    def __init__(self, client_id: str, options: Mapping[str, Any]) -> None:
        seed = int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "big")
        self.vector = np.random.default_rng(seed).uniform(-1, 1, _dim(options))

    def admit(
        self,
        round_: int,
        model: NDArray[np.float32],
        task_config: Mapping[str, Any],
        session: SessionConfig,
        policy: InstitutionPolicy,
    ) -> int | None:
        ins = BenchInstruction.parse(task_config)
        if ins.dim != len(self.vector) or session.spec.spec_hash() != bench_spec(ins.dim).spec_hash():
            raise Refused(RefusalCategory.INCONSISTENCY, "the instruction or spec does not match this vector")
        return None

    def observe_sum(self, round_: int, stage: str, result: AggregateResult) -> None:
        """One stage a round: no plan derives from a sum."""

    def compute(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> dict[str, NDArray[np.float64]]:
        return {"x": self.vector, "n": np.ones(1)}

    def save_model(self, model: NDArray[np.float32], rounds_completed: int, directory: Path) -> None:
        tasks.save_vector(model, directory)

    def release_identity(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> bytes | None:
        return release_identity(NAME, self.vector.tobytes(), model_hash(model))
