"""A whole federation in one process: the in-process runs of benchmarks and adversarial tests.

The driver itself is :mod:`secfed.harness.inprocess` (the real coordinator and the real institutions,
each a :class:`~secfed.fl.participant.Participant` exactly as behind ``secfed client``, exchanging
their messages by function call); ``secfed simulate --backend ray`` runs the same loop over Ray
workers. Here the institutions answer one at a time in this process. Training dominates the method
benchmarks by orders of magnitude, so this measures what matters (quality, data used, training
time) on a 2-core machine without ten processes fighting over memory; the transport is measured by
``secfed bench round`` and ``secfed bench load``.

:func:`drive` takes a :class:`~secfed.bench.lying.Lie`, a hook on every message the server sends,
which the adversarial catalogue uses to play a lying server; :func:`run_inprocess` is the honest run.
The coordinator lives in the server package: imported lazily, as benchmarks compose the system.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from secfed.fl.participant import Participant
from secfed.fl.policy import InstitutionPolicy
from secfed.fl.releases import ReleaseLog
from secfed.fl.tasks import ClientTask, ServerTask, StageResult
from secfed.harness.inprocess import Clock, Consortium, Driver, LocalInstitutions, make_consortium

if TYPE_CHECKING:
    from secfed.bench.lying import Lie

__all__ = [
    "Consortium",
    "InProcessRun",
    "LyingRun",
    "Member",
    "drive",
    "make_consortium",
    "result_values",
    "run_inprocess",
]


@dataclass
class Member:
    """One institution: its participant, and what the lying server saw of it."""

    cid: str
    participant: Participant
    violations: list[str] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class LyingRun:
    """Everything a lying server obtained, and how the institutions reacted."""

    stages: list[StageResult] = field(default_factory=list)  # every stage sum it obtained, in order
    # Per stage sum: the instruction hash each contributor had been handed.
    handed: list[dict[str, bytes]] = field(default_factory=list)
    finished_reason: str = ""
    aborted: list[tuple[int, int, str]] = field(default_factory=list)
    members: dict[str, Member] = field(default_factory=dict)
    model: NDArray[np.float32] | None = None
    stage_results: list[list[StageResult]] = field(default_factory=list)  # per completed round
    server_refusals: list[tuple[int, str, str]] = field(default_factory=list)  # (round, client, category)
    seconds: float = 0.0
    upload_values: int = 0  # values the institutions masked (or sent in the clear) and uploaded

    @property
    def violations(self) -> dict[str, list[str]]:
        return {cid: m.violations for cid, m in self.members.items() if m.violations}

    @property
    def refusals(self) -> dict[str, list[tuple[int, str]]]:
        return {cid: m.refusals for cid, m in self.members.items() if m.refusals}

    def split_sums(self) -> list[int]:
        """Indices of stage sums whose contributors had been handed different instructions."""
        return [i for i, handed in enumerate(self.handed) if len(set(handed.values())) > 1]


def drive(
    task: ServerTask,
    members: Mapping[str, ClientTask],
    consortium: Consortium,
    *,
    rounds: int,
    lie: Lie | None = None,
    policy: InstitutionPolicy | None = None,
    secure: bool = True,
    seed: int = 0,
    min_cohort: int = 3,
    participation: float = 1.0,
    releases: Mapping[str, ReleaseLog] | None = None,
    participants: Mapping[str, Participant] | None = None,
    max_attempts: int = 2,
    initial_model: NDArray[np.float32] | None = None,
    first_round: int = 0,
    first_attempt: int = 1,
    drop: Callable[[str, int, str, Any], bool] | None = None,
    max_steps: int = 20_000,
) -> LyingRun:
    """Run ``rounds`` rounds under ``lie``; ``drop(cid, round, stage, message)`` silences a client.

    ``participants`` reuses institutions across runs (their release logs and verified sums persist,
    as across a server restart); otherwise fresh ones are made with ``policy`` and ``releases``.
    ``participation`` is the share of the roster each round samples (the coordinator's plan).
    """
    from server.coordinator import Coordinator, RoundPlan

    started = time.perf_counter()
    policy = policy or InstitutionPolicy()
    run = LyingRun()
    for cid, client in members.items():
        participant = (participants or {}).get(cid) or Participant(
            consortium.identities[cid],
            consortium.trust,
            client,
            policy=policy,
            releases=(releases or {}).get(cid),
        )
        member = Member(cid, participant)
        participant_refusal = member.refusals

        def note(
            round_: int, category: str, exc: ValueError, sink: list[tuple[int, str]] = participant_refusal
        ) -> None:
            sink.append((round_, f"{category}: {exc}"))

        participant._on_refusal = note
        run.members[cid] = member
    clock = Clock()
    plan = RoundPlan(
        rounds=first_round + rounds,
        participation=participation,
        min_cohort=min_cohort,
        phase_timeout_s=10.0,
        compute_timeout_s=10.0,
        max_attempts=max_attempts,
        seed=seed,
        secure=secure,
    )
    coordinator = Coordinator(
        roster=tuple(members),
        plan=plan,
        task=task,
        initial_model=np.asarray(
            initial_model if initial_model is not None else task.initial_model(), np.float32
        ),
        trust=consortium.trust,
        clock=clock,
        first_round=first_round,
        first_attempt=first_attempt,
    )
    institutions = LocalInstitutions({cid: m.participant for cid, m in run.members.items()})
    driver = Driver(coordinator, institutions, clock, lie=lie, drop=drop)
    run.finished_reason = driver.run(max_steps)
    for cid, caught in driver.violations.items():
        run.members[cid].violations.extend(caught)
    run.stages, run.handed = driver.stages, driver.handed
    run.aborted = list(coordinator.aborted_attempts)
    run.model = coordinator.model
    run.stage_results = coordinator.stage_results
    run.server_refusals = list(coordinator.refusals)
    run.seconds = time.perf_counter() - started
    run.upload_values = driver.upload_values
    return run


@dataclass
class InProcessRun:
    model: np.ndarray
    stage_results: list[list[StageResult]]
    refusals: list[tuple[int, str, str]]
    aborted: list[tuple[int, int, str]]
    finished_reason: str
    seconds: float
    compute_s: dict[str, float] = field(default_factory=dict)
    upload_values: int = 0  # values each client masked and sent, summed over clients and stages


def run_inprocess(
    task: ServerTask,
    clients: Mapping[str, ClientTask],
    *,
    rounds: int,
    secure: bool = True,
    seed: int = 0,
    min_cohort: int = 3,
    participation: float = 1.0,
    policy: InstitutionPolicy | None = None,
) -> InProcessRun:
    """Run ``rounds`` rounds of ``task`` over ``clients`` (id -> client half) with an honest server."""
    run = drive(
        task,
        clients,
        make_consortium(tuple(clients)),
        rounds=rounds,
        policy=policy or InstitutionPolicy(allow_insecure_baselines=not secure),
        secure=secure,
        seed=seed,
        min_cohort=min_cohort,
        participation=participation,
        max_attempts=1,
    )
    assert run.model is not None
    return InProcessRun(
        model=run.model,
        stage_results=run.stage_results,
        refusals=run.server_refusals,
        aborted=run.aborted,
        finished_reason=run.finished_reason,
        seconds=run.seconds,
        compute_s={cid: m.participant.compute_seconds for cid, m in run.members.items()},
        upload_values=run.upload_values,
    )


def result_values(run: InProcessRun) -> list[dict[str, Any]]:
    """Every stage's decoded sums, per round (what the server learned), for checks and reports."""
    return [{s.name: s.result.values for s in stages} for stages in run.stage_results]
