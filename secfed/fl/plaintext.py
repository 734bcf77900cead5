"""INSECURE plaintext aggregation: the baseline that secure aggregation is measured against.

The server sees every client's contribution in the clear. It exists only so benchmarks can compare
"the same round without secure aggregation" over the same transport (and, later, FedIT with plaintext
FedAvg); clients refuse it unless their own configuration explicitly allows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from secfed.secagg.config import SessionConfig
from secfed.secagg.errors import LateMessageError, MalformedInputError, Phase, PhaseOrderError
from secfed.secagg.messages import AggregateResult


@dataclass(frozen=True, eq=False)
class PlaintextInput:
    round: int
    sender: str
    segments: Mapping[str, NDArray[np.float32]]


class PlaintextSession:
    """Collects plaintext contributions and sums them; mirrors the parts of ``ServerSession`` a coordinator uses."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.session_id = b""
        self.phase = Phase.MASKED_INPUT
        self.abort_reason: str | None = None
        spec = config.spec
        self._sums = {s.name: np.zeros(s.length, dtype=np.float64) for s in spec.segments}
        self._from: set[str] = set()

    def expected(self) -> frozenset[str]:
        return frozenset(self.config.roster) if self.phase is Phase.MASKED_INPUT else frozenset()

    def received(self) -> frozenset[str]:
        return frozenset(self._from)

    def abort(self, reason: str) -> None:
        self.abort_reason = reason
        self.phase = Phase.ABORTED

    def receive(self, msg: PlaintextInput) -> None:
        who = msg.sender
        if self.phase is not Phase.MASKED_INPUT:
            cls = LateMessageError if self.phase is Phase.DONE else PhaseOrderError
            raise cls(Phase.MASKED_INPUT, f"plaintext round is {self.phase.value}", client_id=who)

        def bad(message: str) -> MalformedInputError:
            return MalformedInputError(Phase.MASKED_INPUT, message, client_id=who)

        if who not in self.config.roster or msg.round != self.config.round:
            raise bad("sender not in this round's cohort, or wrong round")
        if who in self._from:
            raise bad("duplicate plaintext input")
        if set(msg.segments) != set(self._sums):
            raise bad(f"segments must be exactly {sorted(self._sums)}")
        for name, values in msg.segments.items():
            if values.shape != self._sums[name].shape or not np.all(np.isfinite(values)):
                raise bad(f"segment {name!r} has the wrong length or non-finite values")
        for name, values in msg.segments.items():
            self._sums[name] += values
        self._from.add(who)

    def finalize(self) -> AggregateResult:
        if len(self._from) < self.config.min_cohort:
            self.abort(f"only {len(self._from)} plaintext inputs")
            raise MalformedInputError(
                Phase.MASKED_INPUT, f"only {len(self._from)} inputs, need {self.config.min_cohort}"
            )
        self.phase = Phase.DONE
        contributors = tuple(c for c in self.config.roster if c in self._from)
        return AggregateResult(
            session_id=b"",
            contributors=contributors,
            dropped=(),
            ring_sum=np.zeros(0, dtype=np.uint32),
            values=dict(self._sums),
        )
