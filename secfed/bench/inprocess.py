"""A whole federation in one process, for benchmarks that compare training methods, not transports.

The real coordinator and the real SecAgg client state machines (fresh X25519 keys, masks, Shamir
shares, consistency signatures, unmasking) exchange their messages by function call instead of
gRPC, one client at a time. Training dominates these benchmarks by orders of magnitude, so this
measures what matters (quality, data used, training time) on a 2-core machine without ten processes
fighting over memory; the transport is measured by ``secfed bench round`` and ``secfed bench load``.

Secure and plaintext aggregation use the same driver, so their difference is only the protocol.
The coordinator lives in the server package: imported lazily, as benchmarks compose the system.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secfed.crypto.identity import TrustAnchor
from secfed.fl.participant import Participant, StageStart, Upload
from secfed.fl.plaintext import PlaintextInput
from secfed.fl.policy import InstitutionPolicy, Refusal
from secfed.fl.tasks import ClientTask, ServerTask, StageResult
from secfed.pki.issue import create_ca, issue_client
from secfed.secagg.messages import MaskedInputUpload


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


@dataclass
class _Member:
    cid: str
    participant: Participant
    last_instruction: int = -1
    finished: bool = False


def run_inprocess(
    task: ServerTask,
    clients: Mapping[str, ClientTask],
    *,
    rounds: int,
    secure: bool = True,
    seed: int = 0,
    min_cohort: int = 3,
    policy: InstitutionPolicy | None = None,
) -> InProcessRun:
    """Run ``rounds`` rounds of ``task`` over ``clients`` (id -> client half) and return the outcome.

    Each institution is a :class:`~secfed.fl.participant.Participant`, exactly as behind ``secfed
    client``: the same instruction checks, policy, compute phase and release log (in memory here).
    """
    from server.coordinator import Coordinator, Finished, RoundPlan, RoundStart, Wait

    ca = create_ca("secfed in-process benchmark CA")
    trust = TrustAnchor(ca.certificate)
    policy = policy or InstitutionPolicy(allow_insecure_baselines=not secure)
    members = {
        cid: _Member(cid, Participant(issue_client(ca, cid), trust, t, policy=policy))
        for cid, t in clients.items()
    }
    plan = RoundPlan(
        rounds=rounds,
        min_cohort=min_cohort,
        phase_timeout_s=1e9,
        compute_timeout_s=1e9,
        max_attempts=1,
        seed=seed,
        secure=secure,
    )
    coordinator = Coordinator(
        roster=tuple(members),
        plan=plan,
        task=task,
        initial_model=np.asarray(task.initial_model(), dtype=np.float32),
        trust=trust,
    )
    uploaded = 0
    started = time.perf_counter()
    while coordinator.finished_reason is None:
        progressed = False
        for m in members.values():
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
            if isinstance(ins, RoundStart):
                start = StageStart(
                    ins.config, ins.task, ins.task_config, coordinator.model, ins.secure, ins.evidence
                )
                answer: Upload | None = m.participant.start(start)
            else:
                answer = m.participant.relay(ins.message)
            if isinstance(answer, Refusal):
                coordinator.refuse(m.cid, answer.round, answer.reason)
            elif answer is not None:
                if isinstance(answer, MaskedInputUpload | PlaintextInput):
                    uploaded += sum(int(np.asarray(v).size) for v in answer.segments.values())
                coordinator.upload(m.cid, answer)
        if not progressed and coordinator.finished_reason is None:
            raise RuntimeError("in-process federation stalled: no client had anything to do")
    return InProcessRun(
        model=coordinator.model,
        stage_results=coordinator.stage_results,
        refusals=list(coordinator.refusals),
        aborted=list(coordinator.aborted_attempts),
        finished_reason=coordinator.finished_reason,
        seconds=time.perf_counter() - started,
        compute_s={cid: m.participant.compute_seconds for cid, m in members.items()},
        upload_values=uploaded,
    )


def result_values(run: InProcessRun) -> list[dict[str, Any]]:
    """Every stage's decoded sums, per round (what the server learned), for checks and reports."""
    return [{s.name: s.result.values for s in stages} for stages in run.stage_results]
