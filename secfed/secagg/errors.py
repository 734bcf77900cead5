"""Typed errors of the secure-aggregation protocol.

Every error names the protocol phase and, where one is to blame or concerned, the client, so that a
log line or an RPC status says exactly what went wrong and where. Clients raise the
:class:`ProtocolViolationError` family when the server (or a peer relayed by it) misbehaves; the server
raises :class:`MalformedInputError` and :class:`LateMessageError` for bad uploads and
:class:`BelowThresholdError` when too few clients survive a phase.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from secfed.secagg.messages import DealingFaultProof


class Phase(StrEnum):
    """Protocol phases, in order. ``DONE`` and ``ABORTED`` are terminal."""

    CONFIGURE = "configure"
    ADVERTISE = "advertise"
    SHARE_KEYS = "share-keys"
    COMPUTE = "compute"  # local computation (training, features), after every advert was cross-checked
    MASKED_INPUT = "masked-input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


#: The phases in which a client uploads, in order; a client "dropped at" one of them sends nothing from then on.
UPLOAD_PHASES = (
    Phase.ADVERTISE,
    Phase.SHARE_KEYS,
    Phase.COMPUTE,
    Phase.MASKED_INPUT,
    Phase.CONSISTENCY,
    Phase.UNMASK,
)


class SecAggError(Exception):
    """Base class: a protocol step was refused."""

    def __init__(self, phase: Phase, message: str, *, client_id: str | None = None) -> None:
        self.phase = phase
        self.client_id = client_id
        self.detail = message
        where = f"[{phase.value}]" + (f" client {client_id!r}" if client_id is not None else "")
        super().__init__(f"{where}: {message}")


class ConfigError(SecAggError):
    """The session configuration is unsafe or inconsistent (thresholds, overflow, roster)."""


class BelowThresholdError(SecAggError):
    """Too few clients survived a phase; the session aborts and no secret is released."""


class MalformedInputError(SecAggError):
    """An upload is malformed: wrong length, dtype, segment, spec hash, or a duplicate."""


class LateMessageError(SecAggError):
    """A message arrived for a phase that is already closed (its sender was declared dropped)."""


class PhaseOrderError(SecAggError):
    """A message arrived in the wrong phase (a replay, or a state machine driven out of order)."""


class ProtocolViolationError(SecAggError):
    """The server or a relayed peer message broke the protocol; an honest client stops here."""


class ReplayError(ProtocolViolationError):
    """A message belongs to another session or round."""


class InvalidAdvertError(ProtocolViolationError):
    """A key advertisement failed verification (certificate, roster, duplicate or reused keys)."""


class SignatureError(ProtocolViolationError):
    """A signature over protocol data does not verify."""


class ModelHashMismatchError(ProtocolViolationError):
    """A peer was handed a different global model than this client (split-view model attack)."""


class ConfigMismatchError(ProtocolViolationError):
    """A peer signed a different session configuration than this client received."""


class InconsistentViewError(ProtocolViolationError):
    """The server's view of who is alive contradicts this client's own view."""


class ShareDecryptionError(ProtocolViolationError):
    """A share ciphertext does not decrypt or is not addressed to this client (misrouted or forged)."""


class UnmaskError(SecAggError):
    """The server could not remove the masks (corrupt or missing shares)."""


class MemberFaultError(SecAggError):
    """A member was caught lying with evidence anyone can check (a false complaint): ``client_id``
    names it; the session ends before any input is released and the coordinator leaves it out."""

    def __init__(self, phase: Phase, message: str, *, client_id: str, evidence: dict[str, list[str]]) -> None:
        super().__init__(phase, message, client_id=client_id)
        self.evidence = evidence


class DealerFaultError(UnmaskError):
    """A member's own sharing is wrong, with evidence that holds whoever forwarded its shares.

    ``client_id`` is the dealer. ``evidence`` names what shows it: the holders whose shares (each
    signed by the dealer) do not form one valid sharing, or whose complaints about its shares were
    upheld. ``proof``, when the fault surfaced at unmask (after inputs were released), is the signed
    evidence every member checks before it takes part in the retry. The coordinator records the
    fault with the round and leaves the dealer out of the next attempts."""

    def __init__(
        self,
        phase: Phase,
        message: str,
        *,
        client_id: str,
        evidence: dict[str, list[str]],
        proof: DealingFaultProof | None = None,
    ) -> None:
        super().__init__(phase, message, client_id=client_id)
        self.evidence = evidence
        self.proof = proof
