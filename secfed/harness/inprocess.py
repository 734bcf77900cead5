"""A federation by function call: the real coordinator here, the real institutions wherever a backend keeps them.

The coordinator (:class:`server.coordinator.Coordinator`) and every institution's
:class:`~secfed.fl.participant.Participant` (instruction checks, policy, compute phase, release log,
the SecAgg client state machine) exchange their messages by function call instead of gRPC. The
transport is what ``secfed simulate``'s process backend and ``secfed bench round``/``load`` measure;
everything else runs here unchanged, so many institutions can be simulated without one OS process
and one model copy each.

:class:`Driver` is the one loop. It polls every roster member, as a client would, turns each new
instruction into an :class:`Ask`, and hands the asks to an :class:`Institutions` backend:
:class:`LocalInstitutions` answers them one at a time in this process (benchmarks, the adversarial
catalogue); :mod:`secfed.harness.ray_backend` answers a sweep's asks at once, in Ray workers. Only
members with an instruction are asked, so only the round's cohort does any work.

The coordinator's clock is the driver's (:class:`Clock`): when no institution has anything to do, it
jumps past the open phase's deadline, as a real one would run out. An optional :class:`Interceptor`
rewrites what the server sends (the adversarial catalogue's lying server); ``drop`` silences a client.
The server package is imported lazily: this module composes the system, as benchmarks and the CLI do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from secfed.crypto.identity import Identity, TrustAnchor
from secfed.fl.participant import Participant, Relay, StageStart, Upload
from secfed.fl.plaintext import PlaintextInput
from secfed.fl.policy import Refusal
from secfed.fl.tasks import StageResult
from secfed.pki.issue import CertificateAuthority, create_ca, issue_client
from secfed.secagg.errors import SecAggError
from secfed.secagg.messages import AdvertiseKeys, MaskedInputUpload
from secfed.secagg.server import ServerSession

if TYPE_CHECKING:
    from server.coordinator import Coordinator

__all__ = [
    "Answer",
    "Ask",
    "Clock",
    "Consortium",
    "Driver",
    "Institutions",
    "Interceptor",
    "LocalInstitutions",
    "Violation",
    "answer",
    "make_consortium",
]

#: How far the clock jumps when nobody has anything to do: past any phase deadline of a test plan.
_SKIP_S = 1000.0


@dataclass
class Clock:
    """The coordinator's clock: simulated from 0, or wall time (``wall``); :meth:`skip` moves it on.

    Wall time keeps the durations the coordinator records (``rounds.jsonl``) real; a skip only
    happens when every institution waits, which a run without faults never does."""

    wall: bool = False
    skipped: float = 0.0

    def __call__(self) -> float:
        return (time.monotonic() if self.wall else 0.0) + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds


@dataclass
class Consortium:
    ca: CertificateAuthority
    trust: TrustAnchor
    identities: dict[str, Identity]


def make_consortium(ids: list[str] | tuple[str, ...]) -> Consortium:
    """A throwaway CA and one identity per institution, in memory (no files)."""
    ca = create_ca("secfed in-process CA")
    return Consortium(ca, TrustAnchor(ca.certificate), {cid: issue_client(ca, cid) for cid in ids})


@dataclass(frozen=True)
class Ask:
    """One instruction for one institution: a stage start, or a relay of its open session."""

    cid: str
    message: StageStart | Relay


@dataclass(frozen=True)
class Violation:
    """The institution caught the server (or a peer) breaking the protocol; its session is over."""

    error: str


#: What an institution gives back: an upload (a refusal included), a violation, or nothing to send.
Answer = Upload | Violation | None


def answer(participant: Participant, message: StageStart | Relay) -> Answer:
    """Hand ``message`` to ``participant``: the one place a backend applies an instruction.

    A protocol break ends the session there and then (its secrets are erased), as the gRPC client does.
    """
    try:
        if isinstance(message, StageStart):
            return participant.start(message)
        return participant.relay(message)
    except SecAggError as exc:
        participant.abandon()
        return Violation(str(exc))


class Institutions(Protocol):
    """Where the institutions live and compute.

    ``parallel``: whether the asks of one sweep may be answered together (then the driver hands them
    over in one batch); otherwise each is answered before the next member is polled.
    """

    parallel: bool

    def answer(self, asks: Sequence[Ask]) -> list[Answer]:
        """One answer per ask, in order."""
        ...


class LocalInstitutions:
    """Institutions in this process, answering one at a time (what the adversarial catalogue expects)."""

    parallel = False

    def __init__(self, participants: Mapping[str, Participant]) -> None:
        self.participants = dict(participants)

    def answer(self, asks: Sequence[Ask]) -> list[Answer]:
        return [answer(self.participants[ask.cid], ask.message) for ask in asks]


class Interceptor(Protocol):
    """A server in the middle: rewrites what it sends per recipient and sees every upload
    (:class:`secfed.bench.lying.Lie`). ``accept_any_advert``: its session takes adverts signed for
    any configuration."""

    accept_any_advert: bool

    def start(self, cid: str, start: StageStart) -> StageStart: ...

    def relay(self, cid: str, msg: Relay) -> Relay: ...

    def upload(self, cid: str, msg: Upload) -> None: ...


@dataclass
class Driver:
    """Runs ``coordinator`` to its end over ``institutions``; records every sum the server obtained.

    ``stages`` holds every stage sum in the order obtained (also those of attempts that later failed),
    ``handed`` the instruction hash each of its contributors had been handed; ``violations`` what
    each institution caught, ``upload_values`` the values institutions masked (or sent in the clear).
    """

    coordinator: Coordinator
    institutions: Institutions
    clock: Clock
    lie: Interceptor | None = None
    drop: Callable[[str, int, str, Any], bool] | None = None
    stages: list[StageResult] = field(default_factory=list)
    handed: list[dict[str, bytes]] = field(default_factory=list)
    violations: dict[str, list[str]] = field(default_factory=dict)
    upload_values: int = 0
    seconds: float = 0.0
    # Per member: the instruction hash it was last handed, its last instruction id, whether it finished.
    _instruction_hash: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)
    _last_instruction: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _finished: set[str] = field(default_factory=set, init=False, repr=False)
    _seen: set[int] = field(default_factory=set, init=False, repr=False)

    def run(self, max_steps: int = 20_000) -> str:
        """Sweep until the coordinator finishes (or ``max_steps`` sweeps); its finished reason."""
        started = time.perf_counter()
        coordinator = self.coordinator
        for _ in range(max_steps):
            if coordinator.finished_reason is not None:
                break
            progressed = False
            batch: list[Ask] = []
            for cid in coordinator.roster:
                if cid in self._finished:
                    continue
                fresh, ask = self._poll(cid)
                progressed |= fresh
                if ask is None:
                    continue
                batch.append(ask)
                if not self.institutions.parallel:
                    self._deliver(batch)
                    batch = []
            self._deliver(batch)
            self._note_sums()
            if not progressed:
                self.clock.skip(_SKIP_S)
                coordinator.tick()
        self.seconds += time.perf_counter() - started
        return coordinator.finished_reason or "did not finish"

    def _poll(self, cid: str) -> tuple[bool, Ask | None]:
        """Whether ``cid`` had a new instruction, and what to ask it (None: nothing, or dropped)."""
        from server.coordinator import Finished, RoundStart, Wait

        pending = self.coordinator.poll(cid)
        ins = pending.instruction
        if isinstance(ins, Finished):
            self._finished.add(cid)
            return False, None
        if isinstance(ins, Wait) or pending.instruction_id == self._last_instruction.get(cid):
            return False, None
        self._last_instruction[cid] = pending.instruction_id
        if isinstance(ins, RoundStart):
            start = StageStart(
                ins.config,
                ins.task,
                ins.task_config,
                self.coordinator.model,
                ins.secure,
                ins.evidence,
                ins.fault_proofs,
            )
            start = self.lie.start(cid, start) if self.lie is not None else start
            self._instruction_hash[cid] = start.config.instruction_hash
            stage = str(ins.task_config.get("stage", ""))
            dropped = self.drop is not None and self.drop(cid, ins.config.round, stage, ins)
            return True, None if dropped else Ask(cid, start)
        message = self.lie.relay(cid, ins.message) if self.lie is not None else ins.message
        attempt = self.coordinator._attempt
        stage = str(attempt.stage) if attempt is not None else ""
        dropped = self.drop is not None and self.drop(cid, self.coordinator.round, stage, message)
        return True, None if dropped else Ask(cid, message)

    def _deliver(self, batch: Sequence[Ask]) -> None:
        if not batch:
            return
        for ask, reply in zip(batch, self.institutions.answer(batch), strict=True):
            self._upload(ask.cid, reply)

    def _upload(self, cid: str, reply: Answer) -> None:
        coordinator = self.coordinator
        if isinstance(reply, Violation):
            self.violations.setdefault(cid, []).append(reply.error)
        elif isinstance(reply, Refusal):
            with contextlib.suppress(SecAggError):  # a refusal after the attempt ended
                coordinator.refuse(cid, reply.round, reply.reason)
        elif reply is not None:
            if self.lie is not None:
                self.lie.upload(cid, reply)
            if isinstance(reply, MaskedInputUpload | PlaintextInput):
                self.upload_values += sum(int(np.asarray(v).size) for v in reply.segments.values())
            try:
                coordinator.upload(cid, reply)
            except SecAggError as exc:
                attempt = coordinator._attempt
                session = attempt.session if attempt is not None else None
                if (
                    self.lie is not None
                    and self.lie.accept_any_advert
                    and isinstance(reply, AdvertiseKeys)
                    and isinstance(session, ServerSession)
                ):
                    session._adverts[cid] = reply
                    coordinator.upload_accepted(cid)
                else:
                    self.violations.setdefault(cid, []).append(f"upload refused: {exc}")

    def _note_sums(self) -> None:
        """Record every sum the server obtained so far, also in an attempt that later failed."""
        attempt = self.coordinator._attempt
        current = list(attempt.done) if attempt is not None else []
        for st in [*(st for stages in self.coordinator.stage_results for st in stages), *current]:
            if id(st) not in self._seen:
                self._seen.add(id(st))
                self.stages.append(st)
                self.handed.append({c: self._instruction_hash.get(c, b"") for c in st.result.contributors})
