"""An institution's part in a round, transport-agnostic: instructions in, uploads out.

The gRPC client runtime and the in-process driver (benchmarks, the adversarial catalogue) both drive
this one object, so every check an institution makes runs the same way whatever carries the
messages. In order, for each stage of a round:

1. **Round start.** The instruction's hash must be the one in the session configuration (which every
   advert signs, so a member handed other settings breaks the cross-check at ShareKeys); the task
   parses it with its typed instruction and checks every value against the institution's own policy
   (:meth:`~secfed.fl.tasks.ClientTask.admit`). Only then is a SecAgg session opened and keys
   advertised. Nothing is computed yet.
2. **ShareKeys relay.** Every peer's advert has been verified (so the instruction is cross-checked) and
   the shares open. Now the local computation runs (training, features), or a cached result of the
   same instruction and model is reused (an attempt that failed before its masked input released
   nothing). The client reports ready.
3. **Masked-input request.** The input's release identity is written to the institution's release log
   (refused if another session had it: no differencing), then the input is masked and sent.
4. **Consistency, unmask** as the SecAgg state machine decides; an input re-released into the retry
   of a session a proven dealer broke is unmasked only with its bound survivor set
   (:mod:`secfed.fl.releases`).

A refusal reaches the server as its category only (:class:`~secfed.fl.policy.RefusalCategory`); the
full reason goes to the institution's own log via ``on_refusal``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.cancel import ComputeCancelled
from secfed.crypto.identity import Identity, TrustAnchor
from secfed.fl.instruction import instruction_hash
from secfed.fl.plaintext import PlaintextInput
from secfed.fl.policy import InstitutionPolicy, Refusal, RefusalCategory, Refused, within
from secfed.fl.releases import ReleaseLog
from secfed.fl.tasks import ClientTask
from secfed.fl.vectors import model_hash
from secfed.secagg.client import ClientSession
from secfed.secagg.config import SessionConfig
from secfed.secagg.errors import InconsistentViewError, Phase
from secfed.secagg.faultproof import proven_dealers
from secfed.secagg.messages import (
    AdvertBroadcast,
    AdvertiseKeys,
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

Upload = (
    AdvertiseKeys
    | ShareKeysUpload
    | ComputeReady
    | MaskedInputUpload
    | ConsistencySignature
    | UnmaskResponse
    | Refusal
    | PlaintextInput
)
Relay = AdvertBroadcast | ShareKeysRelay | MaskedInputRequest | ConsistencyRequest | UnmaskRequest


@dataclass(frozen=True)
class StageStart:
    """What a round start carries: the session, the task and its instruction, the global model."""

    config: SessionConfig
    task: str
    task_config: Mapping[str, Any]
    model: NDArray[np.float32]
    secure: bool = True
    evidence: SumEvidence | None = None  # the previous stage's, for a stage whose plan derives from it
    # A retry after an unmasking a dealer's wrong sharing broke: the proofs (see secfed.fl.releases).
    fault_proofs: tuple[DealingFaultProof, ...] = ()


@dataclass
class _Computed:
    key: tuple[bytes, bytes]
    inputs: dict[str, NDArray[np.float64]]
    identity: bytes | None


def refusal_category(exc: ValueError) -> RefusalCategory:
    """The category a local refusal is reported under (never its text: it may hold private numbers)."""
    if isinstance(exc, Refused):
        return exc.category
    from secfed.dp.institution import PrivacyRefusal
    from secfed.fl.instruction import InstructionError

    if isinstance(exc, PrivacyRefusal):
        return RefusalCategory.BUDGET
    if isinstance(exc, InstructionError):
        return RefusalCategory.INCONSISTENCY
    return RefusalCategory.DATA


class Participant:
    """One institution's state across the stages and rounds of a federation (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        trust: TrustAnchor,
        task: ClientTask,
        *,
        policy: InstitutionPolicy | None = None,
        releases: ReleaseLog | None = None,
        on_refusal: Callable[[int, str, ValueError], None] | None = None,
    ) -> None:
        self.identity = identity
        self.client_id = identity.client_id
        self.trust = trust
        self.task = task
        self.policy = policy or InstitutionPolicy()
        self.releases = releases if releases is not None else ReleaseLog(None)
        self._on_refusal = on_refusal
        self.session: ClientSession | None = None
        self._start: StageStart | None = None
        # The last session this institution saw to its end (public state only), and its stage: the
        # next stage's evidence is checked against it.
        self._finished: tuple[ClientSession, StageStart] | None = None
        self._computed: _Computed | None = None
        self.compute_seconds = 0.0

    # -- round start ---------------------------------------------------------------------------
    def start(self, start: StageStart) -> AdvertiseKeys | PlaintextInput | Refusal:
        """Check the instruction, then advertise keys (or refuse, by category)."""
        self.abandon()
        config = start.config
        try:
            self._verify_previous(start)
            if start.task != self.task.name:
                raise Refused(
                    RefusalCategory.POLICY, f"this institution runs {self.task.name!r}, not {start.task!r}"
                )
            if instruction_hash(start.task, start.task_config) != config.instruction_hash:
                raise Refused(
                    RefusalCategory.INCONSISTENCY,
                    "the instruction is not the one the session configuration names (its hash differs)",
                )
            within(config.round, 0, self.policy.max_rounds - 1, "round")
            if not np.all(np.isfinite(start.model)):
                raise Refused(
                    RefusalCategory.BOUNDS, "the global model holds non-finite values", field="global_model"
                )
            required = self.task.admit(config.round, start.model, start.task_config, config, self.policy)
            if not start.secure:
                return self._plaintext(start)
        except ValueError as exc:
            return self._refuse(config.round, exc)
        self.session = ClientSession(
            identity=self.identity,
            trust=self.trust,
            config=config,
            model_hash=model_hash(start.model),
            policy=self.policy.secagg(),
            min_contributors=required,
            abandoned=self.releases.abandoned(config.round),
        )
        self._start = start
        return self.session.advertise()

    def _plaintext(self, start: StageStart) -> PlaintextInput:
        if not self.policy.allow_insecure_baselines:
            raise Refused(
                RefusalCategory.POLICY, "this institution does not allow insecure plaintext aggregation"
            )
        inputs = self.task.compute(start.config.round, start.model, start.task_config)
        segments = {name: np.asarray(v, dtype=np.float32) for name, v in inputs.items()}
        return PlaintextInput(round=start.config.round, sender=self.client_id, segments=segments)

    # -- relays --------------------------------------------------------------------------------
    def relay(self, msg: Relay) -> Upload | None:
        """The upload answering a relay of the open session (None: no session to answer for).

        Raises :class:`~secfed.secagg.errors.SecAggError` when the server or a peer broke the protocol
        (the session is then over and its secrets erased)."""
        session, start = self.session, self._start
        if session is None or start is None:
            return None
        if isinstance(msg, AdvertBroadcast):
            shares = session.on_advert_broadcast(msg)
            self.releases.joined(session.session_id, start.config.round)  # before the shares leave
            return shares
        if isinstance(msg, ShareKeysRelay):
            session.on_share_relay(msg)
            try:
                inputs = self._compute(start).inputs
            except ComputeCancelled:
                self.abandon()
                raise
            except ValueError as exc:
                self.abandon()
                return self._refuse(start.config.round, exc)
            return session.ready(inputs)
        if isinstance(msg, MaskedInputRequest):
            computed = self._computed
            if computed is not None and computed.identity is not None:
                try:
                    self.releases.release(
                        computed.identity,
                        session.session_id,
                        round_=start.config.round,
                        u2=session.u2,
                        threshold=start.config.threshold,
                        colluders=self.policy.secagg().assumed_colluders(start.config),
                        attested=session.abandonments,
                        ready=frozenset(msg.ready),
                        proven=self._proven_dealers(computed.identity, start),
                    )
                except Refused as exc:
                    self.abandon()
                    return self._refuse(start.config.round, exc)
            return session.on_masked_input_request(msg)
        if isinstance(msg, ConsistencyRequest):
            self._check_bound(session, msg)
            return session.on_consistency_request(msg)
        response = session.on_unmask_request(msg)  # checks the request; nothing has left yet
        # Before any share leaves: never attest it abandoned, and remember the survivors it unmasks.
        self.releases.unmasked(session.session_id, session.survivors)
        self._finished = (session, start)
        return response

    def _proven_dealers(self, identity: bytes, start: StageStart) -> frozenset[str]:
        """Dealers whose wrong sharing broke the unmasking of the session this input last went to, as
        the proofs the server sent establish them (checked with that session's threshold)."""
        earlier = self.releases.last_release(identity)
        if earlier is None or not start.fault_proofs:
            return frozenset()
        session_id = bytes.fromhex(earlier.session)
        proven = proven_dealers(start.fault_proofs, self.trust, session_id, earlier.threshold, earlier.u2)
        return frozenset(proven)

    def _check_bound(self, session: ClientSession, msg: ConsistencyRequest) -> None:
        """Sign a survivor set only if this stage's input may be unmasked with it (its bound, if any)."""
        computed = self._computed
        if computed is None or computed.identity is None:
            return
        bound = self.releases.bound(computed.identity, session.session_id)
        if bound is not None and frozenset(msg.u3) != bound:
            self.abandon()
            raise InconsistentViewError(
                Phase.CONSISTENCY,
                f"this input may only be unmasked with its bound of {len(bound)} survivors (the retry of "
                f"a session a proven dealer broke), and the server names {len(msg.u3)} others",
            )

    def finished_config(self) -> SessionConfig | None:
        """The configuration of the last session this institution finished (to decode its evidence)."""
        return self._finished[1].config if self._finished is not None else None

    def _verify_previous(self, start: StageStart) -> None:
        """Recompute the previous stage's sum from the evidence and hand it to the task.

        Evidence for a session this institution did not finish is ignored: a task that needs the sum
        refuses in ``admit`` for want of it. Evidence that fails a check ends the matter at once (a
        :class:`~secfed.secagg.errors.SecAggError`: the server lied about a sum)."""
        finished, self._finished = self._finished, None
        if start.evidence is None or finished is None:
            return
        session, earlier = finished
        if start.evidence.session_id != session.session_id or earlier.config.round != start.config.round:
            return
        result = session.verify_sum(start.evidence)
        self.task.observe_sum(start.config.round, str(earlier.task_config.get("stage", "")), result)

    def _compute(self, start: StageStart) -> _Computed:
        """The stage's input: reused when the same instruction and model were computed already."""
        import time

        key = (start.config.instruction_hash, model_hash(start.model))
        if self._computed is not None and self._computed.key == key:
            return self._computed
        self._computed = None
        began = time.perf_counter()
        inputs = self.task.compute(start.config.round, start.model, start.task_config)
        self.compute_seconds += time.perf_counter() - began
        if not all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in inputs.values()):
            # Training diverged (a crafted adapter can make it): nothing to encode, and the encoder
            # would refuse it later, after the input was logged as released.
            raise Refused(RefusalCategory.DATA, "the local computation produced non-finite values")
        identity = self.task.release_identity(start.config.round, start.model, start.task_config)
        self._computed = _Computed(key, dict(inputs), identity)
        return self._computed

    def _refuse(self, round_: int, exc: ValueError) -> Refusal:
        category = refusal_category(exc)
        if self._on_refusal is not None:
            self._on_refusal(round_, category.value, exc)
        return Refusal(round=round_, reason=category.value)

    def abandon(self) -> None:
        """Erase the open session's secrets (the server aborted it, or a new one starts)."""
        if self.session is not None:
            self.session.abandon()
            self.session = None
        self._start = None
