"""The numeric toy task: federated weighted-mean estimation, cheap enough for tests and load runs.

Each client holds private samples drawn around a centre derived from its id (so clients differ, as
institutions do). Per round it uploads ``[w * (local_mean - model), w]`` with ``w`` its sample count
capped at ``max_weight`` (a bounded, integer weight, never a raw count), and the server moves the
model by ``sum(w * delta) / sum(w)``: after one round the model is the weighted mean of the
participating clients' means, which makes the secure result easy to check against plaintext.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.fl import tasks
from secfed.fl.instruction import RoundInstruction
from secfed.fl.policy import InstitutionPolicy, RefusalCategory, Refused, within
from secfed.fl.releases import release_identity
from secfed.fl.strategy import WeightedDeltaMean
from secfed.fl.vectors import model_hash
from secfed.secagg.config import SessionConfig
from secfed.secagg.messages import AggregateResult
from secfed.secagg.spec import Segment, VectorSpec

NAME = "toy-mean"
_FEDAVG = WeightedDeltaMean(NAME, delta="x", weight="w")


@dataclass(frozen=True)
class ToyOptions:
    dim: int = 16
    max_weight: int = 8
    clip: float = 4.0
    frac_bits: int = 16

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> ToyOptions:
        unknown = set(options) - {"dim", "max_weight", "clip", "frac_bits"}
        if unknown:
            raise ValueError(f"toy task: unknown option(s) {sorted(unknown)}")
        opts = cls(**options)
        if opts.dim < 1 or opts.max_weight < 1 or opts.clip <= 0:
            raise ValueError("toy task: dim and max_weight must be >= 1 and clip > 0")
        return opts


class ToyInstruction(RoundInstruction):
    """What a toy client acts on: the model's size and the weight cap (its spec follows from them)."""

    dim: int
    max_weight: int
    clip: float
    frac_bits: int


def toy_spec(ins: ToyInstruction) -> VectorSpec:
    """The one spec a toy round may sum; the server builds it and every client checks it is this one."""
    return VectorSpec(
        (
            Segment("x", ins.dim, clip=ins.max_weight * ins.clip, frac_bits=ins.frac_bits),
            Segment("w", 1, clip=float(ins.max_weight), frac_bits=0),
        )
    )


def initial_model(dim: int) -> NDArray[np.float32]:
    return np.zeros(dim, dtype=np.float32)


def client_samples(client_id: str, dim: int) -> NDArray[np.float64]:
    """The private data of a toy client: deterministic in its id, so runs are reproducible."""
    seed = int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1.0, 1.0, dim)
    count = int(rng.integers(3, 12))
    return centre + 0.1 * rng.standard_normal((count, dim))


def contribution(
    client_id: str, model: NDArray[np.float32], opts: ToyOptions
) -> dict[str, NDArray[np.float64]]:
    """The plaintext ``{x: w * delta, w: [w]}`` a client uploads (masked) for a given model."""
    samples = client_samples(client_id, opts.dim)
    weight = float(min(len(samples), opts.max_weight))
    delta = samples.mean(axis=0) - model.astype(np.float64)
    return {"x": weight * delta, "w": np.array([weight])}


class ToyServer(tasks.SingleStage):
    name = NAME

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.opts = ToyOptions.from_mapping(options)

    def initial_model(self) -> NDArray[np.float32]:
        return initial_model(self.opts.dim)

    def _instruction(self) -> ToyInstruction:
        o = self.opts
        return ToyInstruction(
            stage=tasks.UPDATE_STAGE, dim=o.dim, max_weight=o.max_weight, clip=o.clip, frac_bits=o.frac_bits
        )

    def spec(self, model: NDArray[np.float32]) -> VectorSpec:
        return toy_spec(self._instruction())

    def task_config(self, round_: int) -> dict[str, Any]:
        return self._instruction().wire()

    def apply(self, model: NDArray[np.float32], result: AggregateResult) -> NDArray[np.float32]:
        return _FEDAVG(model, result)

    def export(self, model: NDArray[np.float32], directory: Path) -> None:
        tasks.save_vector(model, directory)


class ToyClient:
    name = NAME

    def __init__(self, client_id: str, options: Mapping[str, Any]) -> None:
        self.client_id = client_id
        self.opts = ToyOptions.from_mapping(options)

    def admit(
        self,
        round_: int,
        model: NDArray[np.float32],
        task_config: Mapping[str, Any],
        session: SessionConfig,
        policy: InstitutionPolicy,
    ) -> int | None:
        ins = ToyInstruction.parse(task_config)
        if ins.stage != tasks.UPDATE_STAGE:
            raise Refused(RefusalCategory.INCONSISTENCY, f"unknown stage {ins.stage!r}", field="stage")
        if (ins.dim, ins.max_weight, ins.frac_bits) != (
            self.opts.dim,
            self.opts.max_weight,
            self.opts.frac_bits,
        ):
            raise Refused(RefusalCategory.POLICY, "settings differ from this institution's toy options")
        within(ins.max_weight, 1, policy.max_weight, "max_weight")
        within(ins.clip, 0.0, policy.max_clip, "clip")
        if session.spec.spec_hash() != toy_spec(ins).spec_hash():
            raise Refused(
                RefusalCategory.INCONSISTENCY,
                "the session's vector spec does not follow from the instruction",
            )
        return None

    def observe_sum(self, round_: int, stage: str, result: AggregateResult) -> None:
        """One stage a round: no plan derives from a sum."""

    def save_model(self, model: NDArray[np.float32], rounds_completed: int, directory: Path) -> None:
        tasks.save_vector(model, directory)

    def release_identity(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> bytes | None:
        # The contribution is a function of the client id, the model and this institution's own options
        # (which the instruction must match): no server-chosen field may rename it.
        return release_identity(NAME, self.client_id, model_hash(model))

    def compute(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> dict[str, NDArray[np.float64]]:
        if model.shape != (self.opts.dim,):
            raise ValueError(f"toy task: global model has shape {model.shape}, expected ({self.opts.dim},)")
        return contribution(self.client_id, model, self.opts)
