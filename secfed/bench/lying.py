"""A lying server: the real coordinator and the real institutions, with a hook on every message sent.

The adversarial catalogue (:mod:`secfed.bench.attacks`, ``tests/adversarial``) plays a server that
controls everything it sends: each institution's round start (instruction, session configuration,
global model, the previous stage's evidence) and every relay. The honest
:class:`~server.coordinator.Coordinator` computes what an honest server would send; a :class:`Lie`
rewrites it per recipient before the institution's :class:`~secfed.fl.participant.Participant` sees it.
Institutions are exactly those behind ``secfed client``: their own policy, compute phase and release
log. What the run records is what a lying server would have: every stage sum it obtained, and which
instruction each contributor had been handed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.crypto.identity import Identity, TrustAnchor
from secfed.fl.instruction import instruction_hash
from secfed.fl.participant import Participant, Relay, StageStart, Upload
from secfed.fl.policy import InstitutionPolicy, Refusal
from secfed.fl.releases import ReleaseLog
from secfed.fl.tasks import ClientTask, ServerTask, StageResult
from secfed.pki.issue import CertificateAuthority, create_ca, issue_client
from secfed.secagg.errors import SecAggError
from secfed.secagg.messages import AdvertiseKeys
from secfed.secagg.server import ServerSession

__all__ = ["Clock", "Consortium", "Lie", "LyingRun", "Member", "drive", "make_consortium", "resign"]


class Lie:
    """What the server changes, per recipient; the default changes nothing (an honest server).

    ``accept_any_advert``: the lying server's own session takes every advert, whatever configuration
    it was signed for (an honest session refuses those), so members handed different instructions
    end up in one advert list, as they would behind a server that wants their sum.
    """

    accept_any_advert = False

    def start(self, cid: str, start: StageStart) -> StageStart:
        return start

    def relay(self, cid: str, msg: Relay) -> Relay:
        return msg

    def upload(self, cid: str, msg: Upload) -> None:
        """Sees every upload (including those the honest session then refuses)."""


def resign(start: StageStart, task_config: Mapping[str, Any]) -> StageStart:
    """``start`` with another instruction *and* the matching instruction hash in its configuration:
    the lie a recipient cannot catch alone (only the cross-check of adverts can)."""
    config = replace(start.config, instruction_hash=instruction_hash(start.task, task_config))
    return replace(start, task_config=dict(task_config), config=config)


@dataclass
class Clock:
    """The coordinator's clock; the driver moves it past a deadline when nobody has anything to do."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Consortium:
    ca: CertificateAuthority
    trust: TrustAnchor
    identities: dict[str, Identity]


def make_consortium(ids: list[str]) -> Consortium:
    ca = create_ca("secfed adversarial catalogue CA")
    return Consortium(ca, TrustAnchor(ca.certificate), {cid: issue_client(ca, cid) for cid in ids})


@dataclass
class Member:
    """One institution: its participant, and what the lying server saw of it."""

    cid: str
    participant: Participant
    violations: list[str] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    last_instruction: int = -1
    finished: bool = False


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
    """
    from server.coordinator import Coordinator, Finished, RoundPlan, RoundStart, Wait

    lie = lie or Lie()
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
        min_cohort=3,
        phase_timeout_s=10.0,
        compute_timeout_s=10.0,
        max_attempts=max_attempts,
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
    handed: dict[str, bytes] = {}
    seen: set[int] = set()
    for _ in range(max_steps):
        if coordinator.finished_reason is not None:
            break
        progressed = False
        for m in run.members.values():
            if m.finished:
                continue
            pending = coordinator.poll(m.cid)
            ins = pending.instruction
            if isinstance(ins, Finished):
                m.finished = True
                continue
            if isinstance(ins, Wait) or pending.instruction_id == m.last_instruction:
                continue
            m.last_instruction = pending.instruction_id
            progressed = True
            try:
                if isinstance(ins, RoundStart):
                    honest = StageStart(
                        ins.config, ins.task, ins.task_config, coordinator.model, ins.secure, ins.evidence
                    )
                    start = lie.start(m.cid, honest)
                    handed[m.cid] = start.config.instruction_hash
                    stage = str(ins.task_config.get("stage", ""))
                    if drop is not None and drop(m.cid, ins.config.round, stage, ins):
                        continue
                    answer: Upload | None = m.participant.start(start)
                else:
                    message = lie.relay(m.cid, ins.message)
                    stage = str(coordinator._attempt.stage) if coordinator._attempt is not None else ""
                    if drop is not None and drop(m.cid, coordinator.round, stage, message):
                        continue
                    answer = m.participant.relay(message)
            except SecAggError as exc:
                m.violations.append(str(exc))
                m.participant.abandon()
                continue
            if isinstance(answer, Refusal):
                with contextlib.suppress(SecAggError):  # a refusal after the attempt ended
                    coordinator.refuse(m.cid, answer.round, answer.reason)
            elif answer is not None:
                lie.upload(m.cid, answer)
                try:
                    coordinator.upload(m.cid, answer)
                except SecAggError as exc:
                    session = coordinator._attempt.session if coordinator._attempt is not None else None
                    if (
                        lie.accept_any_advert
                        and isinstance(answer, AdvertiseKeys)
                        and isinstance(session, ServerSession)
                    ):
                        session._adverts[m.cid] = answer
                        coordinator.upload_accepted(m.cid)
                    else:
                        m.violations.append(f"upload refused: {exc}")
        attempt = coordinator._attempt
        current = list(attempt.done) if attempt is not None else []
        for st in [*(st for stages in coordinator.stage_results for st in stages), *current]:
            if id(st) not in seen:  # a sum the server obtained (also in an attempt that later failed)
                seen.add(id(st))
                run.stages.append(st)
                run.handed.append({c: handed.get(c, b"") for c in st.result.contributors})
        if not progressed:
            clock.now += 1000.0
            coordinator.tick()
    run.finished_reason = coordinator.finished_reason or "did not finish"
    run.aborted = list(coordinator.aborted_attempts)
    run.model = coordinator.model
    return run
