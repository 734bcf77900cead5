"""The round coordinator: which clients take part, which SecAgg phase is open, and when it closes.

Transport-agnostic and clock-injected: the gRPC servicer calls :meth:`Coordinator.poll` when a client
asks what to do, :meth:`Coordinator.upload` when it sends a protocol message, and :meth:`Coordinator.tick`
periodically. Clients *pull* instructions (institutions behind firewalls only dial out), and an
instruction is re-sent unchanged until the client answers it, so a retried poll is harmless.

A phase closes as soon as every expected client has answered, or when its deadline passes with at
least the threshold answered; below threshold the attempt is aborted and the round restarted with a
fresh session (fresh keys, new session id), up to ``max_attempts`` times.

A round may have several *stages* (``secfed.fl.tasks.StagePlan``), each a complete SecAgg session
over the same sampled cohort: FedHDS sums coreset statistics before it sums the adapter update. A
later stage runs over the clients that contributed to the previous one; if any stage fails, the
whole attempt is aborted and the round restarts from its first stage with a fresh cohort sample.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from secfed import logs
from secfed.crypto.identity import TrustAnchor
from secfed.fl.curves import cohort_eval, cohort_loss
from secfed.fl.instruction import instruction_hash
from secfed.fl.plaintext import PlaintextInput, PlaintextSession
from secfed.fl.policy import RefusalCategory
from secfed.fl.tasks import ServerTask, StagePlan, StageResult
from secfed.fl.vectors import model_hash
from secfed.secagg.config import SessionConfig, required_threshold
from secfed.secagg.errors import DealerFaultError, Phase, SecAggError
from secfed.secagg.messages import (
    AdvertBroadcast,
    AdvertiseKeys,
    AggregateResult,
    ComputeReady,
    ConsistencyRequest,
    ConsistencySignature,
    DealingFaultProof,
    MaskedInputRequest,
    MaskedInputUpload,
    ShareKeysRelay,
    ShareKeysUpload,
    SumEvidence,
    UnmaskRequest,
    UnmaskResponse,
)
from secfed.secagg.server import ServerSession
from secfed.secagg.spec import VectorSpec

_CATEGORIES = frozenset(c.value for c in RefusalCategory)
log = logging.getLogger("secfed.server.coordinator")

UploadMessage = (
    AdvertiseKeys
    | ComputeReady
    | ShareKeysUpload
    | MaskedInputUpload
    | ConsistencySignature
    | UnmaskResponse
    | PlaintextInput
)
RelayMessage = AdvertBroadcast | ShareKeysRelay | MaskedInputRequest | ConsistencyRequest | UnmaskRequest


@dataclass(frozen=True)
class RoundPlan:
    """How rounds are run. Every field has a default that works for a small federation."""

    rounds: int = 3
    participation: float = 1.0
    min_cohort: int = 3
    colluding_fraction: Fraction = Fraction(1, 3)
    phase_timeout_s: float = 60.0
    # The compute phase (local training, feature extraction) has its own deadline, sized for LLM work
    # on CPU: the SecAgg phases around it are short, but a round's training can take many minutes.
    compute_timeout_s: float = 1800.0
    # The first phase of the run waits this long for the whole cohort to come up (institutions start
    # their clients by hand, load models, ...) before its own phase deadline starts running.
    join_timeout_s: float = 600.0
    max_attempts: int = 3
    seed: int = 0
    # False = INSECURE plaintext aggregation (the server sees every contribution): benchmarks only.
    secure: bool = True

    def cohort_size(self, roster_size: int) -> int:
        """How many of the roster each round samples (public, never fewer than ``min_cohort``)."""
        return min(roster_size, max(self.min_cohort, round(self.participation * roster_size)))

    def colluders(self, n: int) -> int:
        """The consortium's bound on clients colluding with the server in a roster of ``n``."""
        return int(n * self.colluding_fraction)

    def dropout_tolerance(self, roster_size: int) -> tuple[int, int, int]:
        """``(cohort, threshold, dropouts a round survives)`` for a roster of ``roster_size``.

        A sum is released only with at least the SecAgg threshold ``t`` (never below ``min_cohort``) and
        ``c + 2`` contributors, so a cohort of ``n`` survives ``n - max(t, c + 2)`` dropouts.
        """
        n = self.cohort_size(roster_size)
        c = self.colluders(n)
        t = self.threshold(n)
        return n, t, max(0, n - max(t, c + 2))

    def threshold(self, n: int) -> int:
        """The SecAgg threshold of a roster of ``n``: ``t > (n + c) / 2``, and never below ``min_cohort``."""
        return max(required_threshold(n, self.colluders(n)), self.min_cohort)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if not 0 < self.participation <= 1:
            raise ValueError("participation must be in (0, 1]")
        if self.min_cohort < 3:
            raise ValueError("min_cohort must be >= 3")
        if (
            min(self.phase_timeout_s, self.compute_timeout_s, self.join_timeout_s) <= 0
            or self.max_attempts < 1
        ):
            raise ValueError(
                "phase_timeout_s, compute_timeout_s and join_timeout_s must be > 0 and max_attempts >= 1"
            )


@dataclass(frozen=True)
class Wait:
    retry_after_s: float


@dataclass(frozen=True)
class RoundStart:
    config: SessionConfig
    task: str
    task_config: dict[str, Any]
    secure: bool = True
    evidence: SumEvidence | None = None  # the previous stage's sum, verifiable by its members
    # The retry of an attempt a proven dealer broke at unmask: the proofs that justify its cohort.
    fault_proofs: tuple[DealingFaultProof, ...] = ()


@dataclass(frozen=True)
class Relay:
    message: RelayMessage


@dataclass(frozen=True)
class Finished:
    reason: str


Instruction = Wait | RoundStart | Relay | Finished


@dataclass(frozen=True)
class Pending:
    """An instruction as handed to one client: numbered, so retries and replays are recognisable."""

    instruction_id: int
    instruction: Instruction
    session_id: bytes
    deadline: float


class CoordinatorObserver:
    """Hooks for persistence and logging; the default does nothing. Called with the coordinator's lock held."""

    def attempt_started(self, round_: int, attempt: int) -> None:
        """Before any client of the attempt is told to start: persist it so a crash is noticed."""

    def session_opened(self, round_: int, attempt: int, session_id: bytes) -> None:
        """The attempt's session id is fixed (after Advertise closed)."""

    def attempt_aborted(self, round_: int, attempt: int, reason: str) -> None:
        """The attempt failed; the round is retried with a fresh session or the run ends."""

    def client_refused(self, round_: int, client_id: str, reason: str) -> None:
        """A client declined the round; it is recorded, never silent."""

    def member_excluded(self, round_: int, client_id: str, reason: str) -> None:
        """A member was caught with evidence and is left out of later cohorts: persist it, so a
        restarted server does not invite it again."""

    def round_completed(
        self,
        round_: int,
        result: AggregateResult,
        model: np.ndarray,
        started: float,
        phases: dict[str, float],
        stages: Sequence[StageResult],
    ) -> None:
        """The round's sum is known and applied; must persist before the next round starts.

        ``phases`` are the seconds each phase stayed open, summed over the round's stages; ``stages``
        holds every stage's cohort sum (all the server learned in the round)."""


@dataclass
class _Attempt:
    round: int
    number: int
    tries: int  # attempts at this round by this server process, this one included (max_attempts)
    session: ServerSession | PlaintextSession
    deadline: float
    started: float
    stage: str
    broadcast: dict[str, Any]
    colluders: int  # the consortium's colluder bound for the attempt's cohort (fixes per-cell floors)
    cohort: int  # institutions invited to the attempt's first stage
    summary: Mapping[str, Any] | None = None  # the open stage's StagePlan.summary
    phase_started: float = 0.0
    delivered: bool = False
    joining: bool = False  # the run's first phase, waiting for the cohort to come up (join_timeout_s)
    done: list[StageResult] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    outbox: dict[str, Pending] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    refusal_categories: list[str] = field(default_factory=list)  # every refusal of the attempt, by category


class Coordinator:
    """Drives rounds over a roster of clients; see the module docstring for the contract."""

    def __init__(
        self,
        *,
        roster: Sequence[str],
        plan: RoundPlan,
        task: ServerTask,
        initial_model: np.ndarray,
        trust: TrustAnchor | None,
        clock: Callable[[], float] = time.monotonic,
        observer: CoordinatorObserver | None = None,
        first_round: int = 0,
        first_attempt: int = 1,
        excluded: Mapping[str, str] | None = None,
    ) -> None:
        if len(set(roster)) != len(roster) or len(roster) < plan.min_cohort:
            raise ValueError(f"roster must hold at least {plan.min_cohort} distinct clients")
        self.roster = tuple(sorted(roster))
        self.plan = plan
        self.task = task
        self.model = np.asarray(initial_model, dtype=np.float32)
        self.trust = trust
        self.clock = clock
        self.observer = observer or CoordinatorObserver()
        # Instruction ids must never repeat, also across server restarts (clients skip ids they have
        # handled): start from the wall clock in microseconds, then count up.
        self._next_instruction = time.time_ns() // 1000
        self.round = first_round
        self.results: list[AggregateResult] = []  # per completed round: its last stage's sum
        self.stage_results: list[list[StageResult]] = []  # per completed round: every stage's sum
        self.aborted_attempts: list[tuple[int, int, str]] = []
        self.refusals: list[tuple[int, str, str]] = []
        # Members caught with evidence (a dealing that is provably wrong, a forged share revealed at
        # unmask), client -> reason: left out of every later cohort of this run (logged, persisted by
        # the observer); ``excluded`` restores those an earlier process of this run caught.
        self.excluded: dict[str, str] = dict(excluded or {})
        self.phase_seconds: list[dict[str, float]] = []  # per completed round: seconds each phase stayed open
        self.finished_reason: str | None = None
        self._attempt: _Attempt | None = None
        self._round_seconds: list[float] = []  # this process's completed rounds, for the ETA
        # After an attempt whose unmasking a proven dealer broke: the cohort of every later attempt of
        # the round (the survivors minus the dealer) and the proofs its members check (see
        # secfed.fl.releases). Kept until the round completes: an attempt of it that fails for another
        # reason (a dropout) must be retried over the same cohort, the only one the members accept.
        self._retry: tuple[tuple[str, ...], tuple[DealingFaultProof, ...]] | None = None
        # Clients heard from in this process, and until when the first phase waits for the rest.
        self._joined: set[str] = set()
        self._join_deadline: float | None = None
        self._last_seen: dict[str, float] = {}  # client -> clock() of its last poll or accepted upload
        self._finished_id = 0  # the instruction id of Finished, once the federation has finished
        # What became of recently abandoned attempts, by config digest and session id (for late uploads).
        self._ended: dict[bytes, str] = {}
        # After a restart the first round resumes at the state database's next attempt number, never
        # at 1 again: the attempt is bound into the session's signed configuration, and a repeated
        # number would make the dead incarnation's adverts (same round, roster and model) valid here.
        if first_attempt < 1:
            raise ValueError(f"first_attempt must be >= 1, got {first_attempt}")
        self._start_attempt(first_attempt)

    # -- public API used by the transport ------------------------------------------------------
    def poll(self, client_id: str) -> Pending:
        """The instruction for ``client_id`` now: the pending one for this phase, or wait."""
        self._note_join(client_id)
        self.tick()
        if self.finished_reason is not None:
            if self._finished_id == 0:  # numbered once, so a client's acknowledgement names it
                self._finished_id = self._next_instruction
                self._next_instruction += 1
            return Pending(self._finished_id, Finished(self.finished_reason), b"", self.clock())
        attempt = self._attempt
        assert attempt is not None
        pending = attempt.outbox.get(client_id)
        if pending is not None:
            self._heard_of(attempt)
            return attempt.outbox[client_id]
        wait = Wait(retry_after_s=min(0.2, self.plan.phase_timeout_s / 10))
        return Pending(0, wait, attempt.session.session_id, attempt.deadline)

    def session_open(self, session_id: bytes) -> bool:
        """Whether local work for ``session_id`` can still be used: it is the open attempt's session and
        its compute phase has not closed. False once the attempt was abandoned or went on without the
        late work (whose ready message would be refused), so the institution can stop computing."""
        self.tick()
        attempt = self._attempt
        return (
            self.finished_reason is None
            and attempt is not None
            and bool(session_id)
            and attempt.session.session_id == session_id
            and attempt.session.phase in (Phase.ADVERTISE, Phase.SHARE_KEYS, Phase.COMPUTE)
        )

    def live_view(self) -> dict[str, Any]:
        """What only this process knows, for an operator's status view (JSON-able): the open attempt's
        stage, phase, seconds to its deadline and cohort, which members it still waits for, and when
        each member was last heard from. Membership and timing only: no value of any upload."""
        now = self.clock()
        attempt = self._attempt
        open_attempt = None
        if attempt is not None and self.finished_reason is None:
            srv = attempt.session
            open_attempt = {
                "round": attempt.round,
                "attempt": attempt.number,
                "stage": attempt.stage,
                "phase": srv.phase.value,
                # An attempt nobody has heard of yet has no running deadline (it starts at the first poll).
                "deadline_s": round(max(0.0, attempt.deadline - now), 1) if attempt.delivered else None,
                "cohort": sorted(srv.config.roster),
                "waiting_for": sorted(srv.expected() - srv.received() - attempt.refused),
                "refused": sorted(attempt.refused),
            }
        return {
            "open": open_attempt,
            "finished": self.finished_reason,
            "joined": sorted(self._joined),  # heard from since this process started
            "last_seen_s_ago": {c: round(now - t, 1) for c, t in sorted(self._last_seen.items())},
            "excluded": dict(sorted(self.excluded.items())),
        }

    def current_spec(self) -> VectorSpec | None:
        """The vector spec of the open attempt (for validating uploads before they reach the session)."""
        return self._attempt.session.config.spec if self._attempt is not None else None

    def upload(
        self, client_id: str, message: UploadMessage, *, peer_chain: Sequence[bytes] | None = None
    ) -> None:
        """Hand a client's protocol message to the session; raises SecAggError if it is refused."""
        attempt = self._attempt
        if attempt is None or self.finished_reason is not None:
            raise SecAggError(Phase.DONE, "the federation has finished", client_id=client_id)
        sender = message.client_id if isinstance(message, AdvertiseKeys) else message.sender
        if sender != client_id:
            raise SecAggError(attempt.session.phase, f"message claims sender {sender!r}", client_id=client_id)
        srv = attempt.session
        # Late work for an abandoned attempt is told what became of it, not "another configuration".
        key = (
            message.config_digest
            if isinstance(message, AdvertiseKeys)
            else getattr(message, "session_id", b"")
        )
        if key and key in self._ended:
            raise SecAggError(srv.phase, self._ended[key], client_id=client_id)
        if isinstance(srv, PlaintextSession) or isinstance(message, PlaintextInput):
            if not (isinstance(srv, PlaintextSession) and isinstance(message, PlaintextInput)):
                raise SecAggError(
                    srv.phase, "upload does not match the round's aggregation mode", client_id=client_id
                )
            srv.receive(message)
        elif isinstance(message, AdvertiseKeys):
            srv.receive_advert(message, peer_chain=peer_chain)
        elif isinstance(message, ShareKeysUpload):
            srv.receive_shares(message)
        elif isinstance(message, ComputeReady):
            srv.receive_ready(message)
        elif isinstance(message, MaskedInputUpload):
            srv.receive_masked_input(message)
        elif isinstance(message, ConsistencySignature):
            srv.receive_consistency(message)
        else:
            srv.receive_unmask(message)
        self.upload_accepted(client_id)

    def upload_accepted(self, client_id: str) -> None:
        """The open session took an upload of ``client_id``: it has answered this phase."""
        self._last_seen[client_id] = self.clock()
        attempt = self._attempt
        if attempt is None:
            return
        self._heard_of(attempt)
        attempt.outbox.pop(client_id, None)
        self._advance_if_complete(attempt)

    def _note_join(self, client_id: str) -> None:
        """A client is up. Once the whole cohort is, the first phase runs on its own (short) deadline."""
        self._last_seen[client_id] = self.clock()
        if client_id in self._joined:
            return
        now = self.clock()
        self._joined.add(client_id)
        if self._join_deadline is None:
            self._join_deadline = now + self.plan.join_timeout_s
        attempt = self._attempt
        if attempt is None or not attempt.delivered or not attempt.joining:
            return
        missing = self._not_joined(attempt)
        if not missing:
            attempt.joining = False
            attempt.deadline = min(attempt.deadline, now + self.plan.phase_timeout_s)
            logs.event(log, "cohort-joined", round=attempt.round, attempt=attempt.number)

    def _not_joined(self, attempt: _Attempt) -> list[str]:
        return sorted(set(attempt.session.config.roster) - self._joined)

    def _heard_of(self, attempt: _Attempt) -> None:
        """A client has heard of ``attempt``: start its first phase's deadline if it has not started.

        The deadline runs from the first client that hears of the round, not from server start-up:
        clients may still be starting, or reconnecting after a restart. A poll that delivers the
        instruction is the usual sign; an accepted upload is the other one, and it must count too, or
        an attempt whose clients answer without polling first would wait for its deadline forever.
        """
        if not attempt.delivered:
            attempt.delivered = True
            timeout = None
            missing = self._not_joined(attempt)
            now = self.clock()
            if attempt.joining and missing and self._join_deadline is not None and self._join_deadline > now:
                # Members still starting up: the first phase waits for them until the join deadline.
                timeout = max(self.plan.phase_timeout_s, self._join_deadline - now)
                logs.event(
                    log,
                    "waiting-for-cohort",
                    round=attempt.round,
                    attempt=attempt.number,
                    missing=",".join(missing),
                    until_s=f"{timeout:.0f}",
                )
            else:
                attempt.joining = False
            self._send({cid: p.instruction for cid, p in attempt.outbox.items()}, attempt, timeout)

    def refuse(self, client_id: str, round_: int, reason: str) -> None:
        """A client declines this round (e.g. its privacy budget is spent): stop waiting for it."""
        attempt = self._attempt
        if attempt is None or round_ != attempt.round or client_id not in attempt.session.config.roster:
            raise SecAggError(Phase.CONFIGURE, f"nothing to refuse in round {round_}", client_id=client_id)
        if client_id in attempt.refused:
            return  # one refusal per member and attempt: a repeat (a retried upload) changes nothing
        # Only a category ever reaches the server; anything else a member sends is recorded as
        # "invalid", never as its text (the status view, the metrics' labels and the ledger show it).
        category = reason if reason in _CATEGORIES else "invalid"
        attempt.refused.add(client_id)
        attempt.refusal_categories.append(category)
        attempt.outbox.pop(client_id, None)
        self.refusals.append((round_, client_id, category))
        self.observer.client_refused(round_, client_id, category)
        self._advance_if_complete(attempt)

    def _advance_if_complete(self, attempt: _Attempt) -> None:
        srv = attempt.session
        if srv.received() | attempt.refused >= srv.expected():
            self._advance()

    def tick(self) -> None:
        """Close the open phase if its deadline has passed."""
        attempt = self._attempt
        if attempt is None or self.finished_reason is not None or not attempt.delivered:
            # An attempt nobody has heard of yet has no deadline: it starts at the first poll.
            return
        if self.clock() >= attempt.deadline:
            self._advance()

    # -- internals ----------------------------------------------------------------------------
    def _cohort(self, attempt: int) -> tuple[str, ...]:
        # Cohort choice is public and must be reproducible, not secret: a seeded PRNG is right here.
        rng = random.Random(f"{self.plan.seed}/{self.round}/{attempt}")  # noqa: S311
        members = [c for c in self.roster if c not in self.excluded]
        size = min(self.plan.cohort_size(len(self.roster)), len(members))
        return tuple(sorted(rng.sample(members, size)))

    def _exclude_faulty(self, session: ServerSession | PlaintextSession, error: Exception | None) -> None:
        """Leave out of later cohorts every member this session caught with evidence."""
        caught = dict(getattr(session, "faults", {}))
        if isinstance(error, DealerFaultError):
            caught[error.client_id or ""] = f"its own sharing is wrong: {error.detail}"
        for cid, reason in caught.items():
            if cid in self.excluded or cid not in self.roster:
                continue
            self.excluded[cid] = reason
            self.observer.member_excluded(self.round, cid, reason)
            logs.event(log, "member-excluded", logging.WARNING, round=self.round, client=cid, reason=reason)

    def _plan_proven_retry(
        self, session: ServerSession | PlaintextSession, error: SecAggError, attempt: _Attempt
    ) -> None:
        """After inputs were released and a dealer's wrong sharing (proven) broke the unmasking, retry
        over exactly the survivors minus that dealer, with the proofs so far: the only cohort the
        members may re-release their inputs into (secfed.fl.releases). Only for a round's first stage:
        an earlier stage's inputs were summed already and are never summed again over a second cohort.
        A member excluded for another fault in the session stays in the cohort: without a proof of its
        fault the members cannot leave it out."""
        if (
            isinstance(error, DealerFaultError)
            and error.proof is not None
            and isinstance(session, ServerSession)
            and not attempt.done
        ):
            cohort = tuple(c for c in session.survivors if c != error.client_id)
            earlier = self._retry[1] if self._retry is not None else ()
            self._retry = (cohort, (*earlier, error.proof))
            logs.event(
                log,
                "proven-retry-planned",
                logging.WARNING,
                round=attempt.round,
                dealer=error.client_id,
                cohort=len(cohort),
            )

    def _start_attempt(self, number: int, tries: int = 1) -> None:
        if self.round >= self.plan.rounds:
            self.finished_reason = f"completed {self.plan.rounds} rounds"
            self._attempt = None
            return
        cohort, proofs = self._retry or (self._cohort(number), ())
        if len(cohort) < self.plan.min_cohort:
            reason = f"round {self.round}: only {len(cohort)} members left after excluding " + "; ".join(
                f"{c} ({why})" for c, why in sorted(self.excluded.items())
            )
            self.observer.attempt_aborted(self.round, number, reason)
            self.finished_reason = reason
            self._attempt = None
            return
        self.observer.attempt_started(self.round, number)
        try:
            plan = self.task.next_stage(
                self.round,
                self.model,
                [],
                colluders=self.plan.colluders(len(cohort)),
                attempt=number,
            )
            if plan is None:
                raise ValueError("the task planned no stage for the round")
        except ValueError as exc:  # a task that cannot plan a round cannot run at all: stop, loudly
            reason = f"round {self.round}: task {self.task.name} could not plan the round: {exc}"
            self.observer.attempt_aborted(self.round, number, reason)
            self.finished_reason = reason
            self._attempt = None
            return
        session, start = self._open_stage(plan, cohort, number, fault_proofs=proofs)
        now = self.clock()
        self._attempt = _Attempt(
            round=self.round,
            number=number,
            tries=tries,
            session=session,
            deadline=now,
            started=now,
            stage=plan.name,
            broadcast=start.task_config,
            colluders=self.plan.colluders(len(cohort)),
            cohort=len(cohort),
            summary=plan.summary,
            joining=self._join_deadline is None or now < self._join_deadline,
        )
        self._send(dict.fromkeys(cohort, start), self._attempt)
        logs.event(
            log,
            "attempt-start",
            round=self.round,
            attempt=number,
            cohort=len(cohort),
            threshold=session.config.threshold,
            stage=plan.name,
        )

    def _open_stage(
        self,
        plan: StagePlan,
        roster: tuple[str, ...],
        attempt: int,
        evidence: SumEvidence | None = None,
        fault_proofs: tuple[DealingFaultProof, ...] = (),
    ) -> tuple[ServerSession | PlaintextSession, RoundStart]:
        n = len(roster)
        colluding = self.plan.colluders(n)
        task_config = {**plan.config, "stage": plan.name}
        config = SessionConfig(
            round=self.round,
            roster=roster,
            threshold=self.plan.threshold(n),
            n_colluding=colluding,
            min_cohort=self.plan.min_cohort,
            spec=plan.spec,
            model_hash=model_hash(self.model),
            # The attempt is part of the signed configuration: an advert (and its keys) from an
            # aborted attempt is for another configuration in the retry, so it cannot be replayed.
            label=f"{self.task.name}.{plan.name}.a{attempt}",
            instruction_hash=instruction_hash(self.task.name, task_config),
            consortium=self.trust.consortium_id if self.trust is not None else bytes(32),
        )
        session: ServerSession | PlaintextSession = (
            ServerSession(config, trust=self.trust, keep_inputs=plan.verified)
            if self.plan.secure
            else PlaintextSession(config)
        )
        start = RoundStart(
            config=config,
            task=self.task.name,
            task_config=task_config,
            secure=self.plan.secure,
            evidence=evidence,
            fault_proofs=fault_proofs,
        )
        return session, start

    def _stage_done(self, result: AggregateResult, attempt: _Attempt) -> None:
        """Record a stage's sum; open the round's next stage over its contributors, or finish the round."""
        self._exclude_faulty(attempt.session, None)
        attempt.done.append(
            StageResult(attempt.stage, result, attempt.session.config, attempt.broadcast, attempt.summary)
        )
        logs.event(
            log,
            "stage-complete",
            round=attempt.round,
            stage=attempt.stage,
            progress=(
                f"round {attempt.round + 1}/{self.plan.rounds}, stage {len(attempt.done)} ({attempt.stage}): "
                f"{len(result.contributors)} of {len(attempt.session.config.roster)} institutions, "
                f"{len(result.dropped)} dropped, {self.clock() - attempt.started:.1f} s into the round"
            ),
        )
        plan = self.task.next_stage(
            attempt.round,
            self.model,
            attempt.done,
            colluders=attempt.colluders,
            attempt=attempt.number,
        )
        if plan is None:
            self._finish_round(result, attempt)
            return
        # Later stages run over the clients that contributed to the previous one: a client that
        # dropped or declined mid-round is not waited for again.
        roster = tuple(sorted(result.contributors))
        if len(roster) < self.plan.min_cohort:
            raise SecAggError(
                Phase.CONFIGURE, f"stage {plan.name}: {len(roster)} contributors left, below min_cohort"
            )
        finished = attempt.session
        evidence = finished.evidence() if isinstance(finished, ServerSession) else None
        attempt.session, start = self._open_stage(plan, roster, attempt.number, evidence)
        attempt.stage = plan.name
        attempt.broadcast = start.task_config
        attempt.summary = plan.summary
        attempt.refused = set()
        self._send(dict.fromkeys(roster, start), attempt)
        logs.event(log, "stage-start", round=attempt.round, attempt=attempt.number, stage=plan.name)

    def _advance(self) -> None:
        attempt = self._attempt
        assert attempt is not None
        srv = attempt.session
        now = self.clock()
        phase = srv.phase.value
        attempt.phase_seconds[phase] = attempt.phase_seconds.get(phase, 0.0) + now - attempt.phase_started
        try:
            if isinstance(srv, PlaintextSession):
                self._stage_done(srv.finalize(), attempt)
            elif srv.phase is Phase.ADVERTISE:
                broadcast = srv.close_advertise()
                self.observer.session_opened(attempt.round, attempt.number, srv.session_id)
                self._send({a.client_id: Relay(broadcast) for a in broadcast.adverts}, attempt)
            elif srv.phase is Phase.SHARE_KEYS:
                relays = srv.close_share_keys()
                self._send({cid: Relay(r) for cid, r in relays.items()}, attempt, self.plan.compute_timeout_s)
            elif srv.phase is Phase.COMPUTE:
                go = srv.close_compute()
                self._send(dict.fromkeys(go.ready, Relay(go)), attempt)
            elif srv.phase is Phase.MASKED_INPUT:
                request = srv.close_masked_input()
                self._send(dict.fromkeys(request.u3, Relay(request)), attempt)
            elif srv.phase is Phase.CONSISTENCY:
                unmask = srv.close_consistency()
                self._send(dict.fromkeys(unmask.signatures, Relay(unmask)), attempt)
            elif srv.phase is Phase.UNMASK:
                self._stage_done(srv.finalize(), attempt)
        except SecAggError as exc:  # below threshold, or a close that found the session unusable
            self._exclude_faulty(srv, exc)
            self._plan_proven_retry(srv, exc, attempt)
            self._abort_attempt(attempt, str(exc))
        except ValueError as exc:  # the task rejected a stage's sums (e.g. inconsistent statistics)
            self._abort_attempt(attempt, f"stage {attempt.stage}: {exc}")

    def _send(
        self, outbox: dict[str, Instruction], attempt: _Attempt, timeout_s: float | None = None
    ) -> None:
        attempt.phase_started = self.clock()
        attempt.deadline = attempt.phase_started + (
            self.plan.phase_timeout_s if timeout_s is None else timeout_s
        )
        sid = attempt.session.session_id
        attempt.outbox = {}
        for cid, ins in outbox.items():
            attempt.outbox[cid] = Pending(self._next_instruction, ins, sid, attempt.deadline)
            self._next_instruction += 1

    def _finish_round(self, result: AggregateResult, attempt: _Attempt) -> None:
        # Always a fresh array: the service caches the served model by object identity.
        self.model = np.array(self.task.apply(self.model, result), dtype=np.float32)
        self.results.append(result)
        self.phase_seconds.append(dict(attempt.phase_seconds))
        seconds = self.clock() - attempt.started
        self._round_seconds.append(seconds)
        left = self.plan.rounds - attempt.round - 1
        eta = sum(self._round_seconds) / len(self._round_seconds) * left
        loss = cohort_loss(result.values)  # the cohort's mean, when the task sums learning curves
        evaluated = cohort_eval(result.values)  # of the adapter the cohort received, on held-out records
        logs.event(
            log,
            "round-complete",
            round=attempt.round,
            attempt=attempt.number,
            contributors=len(result.contributors),
            dropped=len(result.dropped),
            seconds=round(seconds, 1),
            progress=(
                f"round {attempt.round + 1}/{self.plan.rounds}: {len(result.contributors)} of "
                f"{attempt.cohort} institutions, {len(result.dropped)} dropped, {seconds:.1f} s"
                + (f", mean train loss {loss[0]:.3f} -> {loss[1]:.3f}" if loss is not None else "")
                + (f", mean eval loss {evaluated:.3f} (received adapter)" if evaluated is not None else "")
                + (f", about {eta:.0f} s to go" if left else ", the last")
            ),
        )
        self.stage_results.append(list(attempt.done))
        self.observer.round_completed(
            attempt.round, result, self.model, attempt.started, dict(attempt.phase_seconds), attempt.done
        )
        self.round += 1
        self._retry = None
        self._start_attempt(1)

    def _abort_attempt(self, attempt: _Attempt, reason: str) -> None:
        if attempt.refusal_categories:
            counts = {c: attempt.refusal_categories.count(c) for c in sorted(set(attempt.refusal_categories))}
            reason += "; refused: " + ", ".join(f"{c} x{n}" for c, n in counts.items())
            if "released" in counts:
                reason += (
                    " (an institution's input for this round already left in an earlier attempt that did "
                    "not complete; a non-DP input is never summed over a second cohort)"
                )
        if attempt.session.phase is not Phase.ABORTED:
            attempt.session.abort(reason)
        last = attempt.tries >= self.plan.max_attempts
        ended = f"attempt {attempt.number} of round {attempt.round} was abandoned ({reason}); " + (
            "the run stopped" if last else f"the round continues with attempt {attempt.number + 1}"
        )
        for key in (attempt.session.config.digest(), attempt.session.session_id):
            if key:  # a plaintext (benchmark) session has no id
                self._ended[key] = ended
        while len(self._ended) > 32:  # only recent attempts can still have work in flight
            del self._ended[next(iter(self._ended))]
        self.aborted_attempts.append((attempt.round, attempt.number, reason))
        self.observer.attempt_aborted(attempt.round, attempt.number, reason)
        logs.event(
            log,
            "attempt-aborted",
            logging.WARNING,
            round=attempt.round,
            attempt=attempt.number,
            reason=reason,
            next="the run stops" if last else f"the round continues with attempt {attempt.number + 1}",
        )
        # Counted per server process, not by attempt number: attempts a restart interrupted are
        # numbered (so their sessions never repeat) but are not this process's failures.
        if last:
            self.finished_reason = f"round {attempt.round} failed {attempt.tries} attempts: {reason}"
            self._attempt = None
            return
        self._start_attempt(attempt.number + 1, attempt.tries + 1)
