"""The two halves of a federated task: the interface every task implements (the registry that names
them is :mod:`secfed.fl.registry`).

A task decides what one round sums (the vector spec), what each client computes from the global
model (its private contribution), and how the server turns the decoded cohort sum into the next
global model. The server half never sees a single client's contribution, only
``AggregateResult.values``; the client half never sees anything but the global model and its data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from secfed.data.builtin import BUILTIN_DATA
from secfed.fl.policy import InstitutionPolicy
from secfed.secagg.config import SessionConfig
from secfed.secagg.messages import AggregateResult
from secfed.secagg.spec import VectorSpec

Vector = NDArray[np.float32]


class ServerTask(Protocol):
    name: str

    def initial_model(self) -> Vector:
        """The global model before round 0 (used once, when a run's state database is created)."""
        ...

    def spec(self, model: Vector) -> VectorSpec:
        """The layout the round's SecAgg session sums (must not depend on any client)."""
        ...

    def task_config(self, round_: int) -> dict[str, Any]:
        """Public per-round settings sent to every client with the round start (JSON-able)."""
        ...

    def apply(self, model: Vector, result: AggregateResult) -> Vector:
        """The next global model from the current one and the decoded cohort sum."""
        ...

    def export(self, model: Vector, directory: Path) -> None:
        """Write the final global model in the task's own format (e.g. a peft adapter directory)."""
        ...

    def next_stage(
        self, round_: int, model: Vector, done: Sequence[StageResult], *, colluders: int, attempt: int
    ) -> StagePlan | None:
        """The round's next secure-aggregation session given the sums of the stages done so far (empty:
        a new attempt starts, so forget any state of an earlier attempt), or None when the round is
        complete and :meth:`apply` receives the last stage's result. One-stage tasks inherit
        :class:`SingleStage`. ``colluders`` is the consortium's bound on colluding clients in this
        attempt's cohort (statistics per cell need ``c + 2``); ``attempt`` the attempt's number, unique
        across server restarts (a retry must draw fresh public randomness: its inputs may not repeat an
        earlier attempt's, see secfed.fl.releases)."""
        ...


@dataclass(frozen=True)
class StagePlan:
    """One secure-aggregation session of a round: its name, what it sums, and its public broadcast.

    A round is a sequence of stages, each a complete SecAgg session over the same cohort (less those
    who dropped). Single-stage tasks (FedIT) have one stage, ``"update"``; FedHDS sums statistics
    for coreset selection in earlier stages and the adapter update in the last one. ``config`` is
    public: every cohort member receives it, with ``"stage"`` set to ``name``.
    """

    name: str
    spec: VectorSpec
    config: dict[str, Any]
    # Public facts the server derived for its own record (e.g. the coreset selection summary); not
    # sent to clients, kept in the round record and the audit report.
    summary: Mapping[str, Any] | None = None
    # A verified stage's sum feeds the next stage's plan: the server keeps its (small) masked inputs
    # and shows the cohort the evidence, so every member recomputes the sum and checks the plan.
    verified: bool = False


@dataclass(frozen=True)
class StageResult:
    """A completed stage: its cohort sum and the session that produced it (for the audit trail)."""

    name: str
    result: AggregateResult
    config: SessionConfig | None = None
    broadcast: Mapping[str, Any] | None = None  # the stage's public config, as sent to the cohort
    summary: Mapping[str, Any] | None = None  # the server's public facts about the stage (StagePlan.summary)

    def audit_facts(self) -> dict[str, Any]:
        """What the server learned in this stage and under which SecAgg parameters (JSON-able)."""
        facts: dict[str, Any] = {
            "sums": {k: list(v.shape) for k, v in self.result.values.items()},
            "contributors": len(self.result.contributors),
            "dropped": len(self.result.dropped),
        }
        if self.config is not None:
            c = self.config
            facts.update(
                n=len(c.roster),
                threshold=c.threshold,
                colluding=c.n_colluding,
                min_cohort=c.min_cohort,
                ring_bits=c.spec.ring_bits,
                segments={
                    s.name: {"length": s.length, "clip": s.clip, "frac_bits": s.frac_bits}
                    for s in c.spec.segments
                },
            )
        if self.broadcast is not None:
            facts["broadcast"] = {k: _compact(v) for k, v in self.broadcast.items()}
        if self.summary is not None:
            facts["summary"] = {k: _compact(v) for k, v in self.summary.items()}
        return facts


def _compact(value: Any) -> Any:
    """Small public values as they are; large ones (bases, maps, selections) by their size, for the record."""
    if isinstance(value, list | tuple) and len(value) > 16:
        return {"length": len(value)}
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()} if len(value) <= 32 else {"keys": len(value)}
    return value


UPDATE_STAGE = "update"


class _Plannable(Protocol):
    def spec(self, model: Vector) -> VectorSpec: ...

    def task_config(self, round_: int) -> dict[str, Any]: ...


class SingleStage:
    """What a task whose round is one secure-aggregation session inherits: the stage ``"update"``,
    summing :meth:`ServerTask.spec` with :meth:`ServerTask.task_config` as its public config."""

    def next_stage(
        self: _Plannable,
        round_: int,
        model: Vector,
        done: Sequence[StageResult],
        *,
        colluders: int,
        attempt: int,
    ) -> StagePlan | None:
        if done:
            return None
        return StagePlan(UPDATE_STAGE, self.spec(model), self.task_config(round_))


class ClientTask(Protocol):
    name: str

    def admit(
        self,
        round_: int,
        model: Vector,
        task_config: Mapping[str, Any],
        session: SessionConfig,
        policy: InstitutionPolicy,
    ) -> int | None:
        """Check the server's instruction against this institution's own policy, before any work.

        Parses ``task_config`` with the task's instruction type (unknown, missing or mistyped fields
        are refused) and checks every server-chosen value, the session's vector spec included, against
        ``policy``. Raises :class:`~secfed.fl.policy.Refused` (or another ValueError) to decline.
        Returns the fewest contributors the stage's sum may have when the task needs more than the
        SecAgg floor (the whole roster, for statistics per grid cell), else None."""
        ...

    def compute(
        self, round_: int, model: Vector, task_config: Mapping[str, Any]
    ) -> dict[str, NDArray[np.float64]]:
        """This client's contribution, one array per spec segment (masked before it leaves).

        Called once per stage of the round; ``task_config["stage"]`` names it. Raising ValueError
        declines the stage (the client tells the server, which goes on without it)."""
        ...

    def observe_sum(self, round_: int, stage: str, result: AggregateResult) -> None:
        """The sum of a ``verified`` stage this institution took part in, recomputed and checked by it.

        A staged task derives the next stage's plan from these sums itself and compares it with the
        server's instruction (see :meth:`admit`); one-stage tasks ignore them."""
        ...

    def release_identity(self, round_: int, model: Vector, task_config: Mapping[str, Any]) -> bytes | None:
        """The release identity (:mod:`secfed.fl.releases`) of the input the last :meth:`compute`
        returned: a hash of what it is computed from, so the same input is never summed twice (None:
        an input no rule protects, such as a benchmark's)."""
        ...

    def save_model(self, model: Vector, rounds_completed: int, directory: Path) -> None:
        """Keep this institution's copy of the global model after ``rounds_completed`` rounds.

        Written to ``directory`` in the task's own format (a peft directory for adapters). The model
        comes from the server: a task checks it as it checks any global model it is handed (raising
        ValueError when it refuses it), so a crafted "final" model is not saved as the result."""
        ...


def save_vector(model: Vector, directory: Path) -> None:
    """A plain vector model as ``model.npy`` (the toy and benchmark tasks' result format)."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "model.npy", np.asarray(model, dtype=np.float32))


def resolve_task_paths(base: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """Task options with local paths made absolute against ``base`` (the configuration's directory).

    ``data`` is always a path (or the word ``"builtin"``); ``model`` is a path only when it looks like
    one (it holds a ``/`` or starts with ``.``): a registry name such as ``smollm2-135m-instruct``
    stays as it is.
    """
    out = dict(options)
    data = out.get("data")
    if isinstance(data, str) and data != BUILTIN_DATA and not Path(data).is_absolute():
        out["data"] = str((base / data).resolve())
    model = out.get("model")
    if isinstance(model, str) and ("/" in model or model.startswith(".")) and not Path(model).is_absolute():
        out["model"] = str((base / model).resolve())
    return out
