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

from secfed.crypto.identity import Identity, TrustAnchor
from secfed.fl.plaintext import PlaintextInput
from secfed.fl.tasks import ClientTask, ServerTask, StageResult
from secfed.fl.vectors import model_hash
from secfed.pki.issue import create_ca, issue_client
from secfed.secagg.client import ClientSession
from secfed.secagg.messages import AdvertBroadcast, ConsistencyRequest, ShareKeysRelay, UnmaskRequest


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
    identity: Identity
    task: ClientTask
    session: ClientSession | None = None
    last_start: int = -1
    finished: bool = False


def run_inprocess(
    task: ServerTask,
    clients: Mapping[str, ClientTask],
    *,
    rounds: int,
    secure: bool = True,
    seed: int = 0,
    min_cohort: int = 3,
) -> InProcessRun:
    """Run ``rounds`` rounds of ``task`` over ``clients`` (id -> client half) and return the outcome."""
    from server.coordinator import Coordinator, Finished, Relay, RoundPlan, RoundStart, Wait

    ca = create_ca("secfed in-process benchmark CA")
    members = {cid: _Member(cid, issue_client(ca, cid), t) for cid, t in clients.items()}
    plan = RoundPlan(
        rounds=rounds, min_cohort=min_cohort, phase_timeout_s=1e9, max_attempts=1, seed=seed, secure=secure
    )
    coordinator = Coordinator(
        roster=tuple(members),
        plan=plan,
        task=task,
        initial_model=np.asarray(task.initial_model(), dtype=np.float32),
        trust=TrustAnchor(ca.certificate),
    )
    trust = TrustAnchor(ca.certificate)
    compute_s = dict.fromkeys(members, 0.0)
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
            if isinstance(ins, Wait):
                continue
            progressed = True
            if isinstance(ins, RoundStart):
                if pending.instruction_id == m.last_start:
                    continue
                m.last_start = pending.instruction_id
                if m.session is not None:
                    m.session.abandon()
                    m.session = None
                t0 = time.perf_counter()
                try:
                    inputs = m.task.compute(ins.config.round, coordinator.model, ins.task_config)
                except ValueError as exc:
                    coordinator.refuse(m.cid, ins.config.round, str(exc))
                    continue
                finally:
                    compute_s[m.cid] += time.perf_counter() - t0
                uploaded += sum(int(np.asarray(v).size) for v in inputs.values())
                if not ins.secure:
                    segments = {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()}
                    coordinator.upload(
                        m.cid, PlaintextInput(round=ins.config.round, sender=m.cid, segments=segments)
                    )
                    continue
                m.session = ClientSession(
                    identity=m.identity,
                    trust=trust,
                    config=ins.config,
                    model_hash=model_hash(coordinator.model),
                    inputs=inputs,
                )
                coordinator.upload(m.cid, m.session.advertise())
            elif isinstance(ins, Relay) and m.session is not None:
                msg = ins.message
                if isinstance(msg, AdvertBroadcast):
                    coordinator.upload(m.cid, m.session.on_advert_broadcast(msg))
                elif isinstance(msg, ShareKeysRelay):
                    coordinator.upload(m.cid, m.session.on_share_relay(msg))
                elif isinstance(msg, ConsistencyRequest):
                    coordinator.upload(m.cid, m.session.on_consistency_request(msg))
                elif isinstance(msg, UnmaskRequest):
                    coordinator.upload(m.cid, m.session.on_unmask_request(msg))
        if not progressed and coordinator.finished_reason is None:
            raise RuntimeError("in-process federation stalled: no client had anything to do")
    return InProcessRun(
        model=coordinator.model,
        stage_results=coordinator.stage_results,
        refusals=list(coordinator.refusals),
        aborted=list(coordinator.aborted_attempts),
        finished_reason=coordinator.finished_reason,
        seconds=time.perf_counter() - started,
        compute_s=compute_s,
        upload_values=uploaded,
    )


def result_values(run: InProcessRun) -> list[dict[str, Any]]:
    """Every stage's decoded sums, per round (what the server learned), for checks and reports."""
    return [{s.name: s.result.values for s in stages} for stages in run.stage_results]
