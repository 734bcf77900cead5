"""The Operator service: a running coordinator's status, for the consortium's operators, over mTLS.

``secfed status --config`` reads the state database on the coordinator's machine; an operator
elsewhere, or one who wants what only the running process knows (the open phase and its deadline, the
cohort, whom the phase still waits for, when each institution was last heard from), asks the
coordinator itself with an operator kit. The caller must present an operator certificate of the
consortium CA that is not revoked (:meth:`server.auth.PeerAuthenticator.identify_operator`); an
institution's certificate is refused, as an operator's is by every federation RPC. The answer holds
membership, timing and refusal categories only, never a value of any upload.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from pathlib import Path

import grpc

from secfed import logs
from secfed.proto.v1 import federation_pb2 as pb
from server.auth import PeerAuthenticator, PeerRefused, RateLimiter
from server.coordinator import Coordinator
from server.state import StateError
from server.status import read_status

log = logging.getLogger("secfed.server.operator")


#: Each operator may ask this often (a ``--watch`` refresh every few seconds is far below it).
OPERATOR_RATE_PER_S = 1.0
OPERATOR_BURST = 5
#: A status document is reused for this long at least, and for this many times as long as it took to
#: compute (reading the state database grows with the run's history), so that however many operators
#: ask, computing it takes a bounded share of the coordinator's time.
_MIN_CACHE_S = 1.0
_CACHE_FACTOR = 5.0


class OperatorService:
    """Answers ``Operator.Status`` (registered by :func:`server.handlers.register_operator`).

    The status shares the coordinator's worker threads and interpreter with the institutions' RPCs, and
    reading it costs more the longer the run, so an operator (or many) must not be able to slow a round
    down: each operator is rate-limited, one document is computed at a time (a call meanwhile gets the
    last one, or RESOURCE_EXHAUSTED before there is one), and a document is reused by every operator for
    a while (:data:`_MIN_CACHE_S`, :data:`_CACHE_FACTOR`).
    """

    def __init__(
        self,
        coordinator: Coordinator,
        lock: threading.Lock,
        auth: PeerAuthenticator,
        state_db: Path,
        rounds_planned: int,
    ) -> None:
        self._coord = coordinator
        self._lock = lock
        self._auth = auth
        self._rate = RateLimiter(OPERATOR_RATE_PER_S, OPERATOR_BURST)
        self._state_db = state_db
        self._planned = rounds_planned
        self._computing = threading.Lock()
        self._cached: tuple[float, str] | None = None  # (valid until, document)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:  # noqa: N802 - gRPC method name
        try:
            name = self._auth.identify_operator(context)
        except PeerRefused as exc:
            logs.event(log, "operator-refused", logging.WARNING, reason=exc.message)
            context.abort(exc.code, exc.message)
        if not self._rate.allow(f"operator:{name}"):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"operator {name!r}: rate limit exceeded")
        logs.event(log, "operator-status", logging.DEBUG, operator=name)
        cached = self._cached
        if cached is not None and time.monotonic() < cached[0]:
            return pb.StatusReply(status_json=cached[1])
        if not self._computing.acquire(blocking=False):
            if cached is not None:  # being refreshed: the last one is at most one computation old
                return pb.StatusReply(status_json=cached[1])
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "the status is being computed; ask again shortly"
            )
        try:
            return pb.StatusReply(status_json=self._compute(context))
        finally:
            self._computing.release()

    def _compute(self, context: grpc.ServicerContext) -> str:
        started = time.monotonic()
        with self._lock:
            live = self._coord.live_view()
        try:  # outside the lock: a read-only connection of its own, never blocking the rounds
            status = read_status(self._state_db, rounds_planned=self._planned)
        except StateError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the state database cannot be read: {exc}")
        document = json.dumps(dataclasses.replace(status, live=live).to_json(), sort_keys=True)
        now = time.monotonic()
        self._cached = (now + max(_MIN_CACHE_S, _CACHE_FACTOR * (now - started)), document)
        return document
