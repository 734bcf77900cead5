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
from pathlib import Path

import grpc

from secfed import logs
from secfed.proto.v1 import federation_pb2 as pb
from server.auth import PeerAuthenticator, PeerRefused, RateLimiter
from server.coordinator import Coordinator
from server.state import StateError
from server.status import read_status

log = logging.getLogger("secfed.server.operator")


class OperatorService:
    """Answers ``Operator.Status`` (registered by :func:`server.handlers.register_operator`)."""

    def __init__(
        self,
        coordinator: Coordinator,
        lock: threading.Lock,
        auth: PeerAuthenticator,
        rate: RateLimiter,
        state_db: Path,
        rounds_planned: int,
    ) -> None:
        self._coord = coordinator
        self._lock = lock
        self._auth = auth
        self._rate = rate
        self._state_db = state_db
        self._planned = rounds_planned

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:  # noqa: N802 - gRPC method name
        try:
            name = self._auth.identify_operator(context)
        except PeerRefused as exc:
            logs.event(log, "operator-refused", logging.WARNING, reason=exc.message)
            context.abort(exc.code, exc.message)
        if not self._rate.allow(f"operator:{name}"):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"operator {name!r}: rate limit exceeded")
        with self._lock:
            live = self._coord.live_view()
        try:  # outside the lock: a read-only connection of its own, never blocking the rounds
            status = read_status(self._state_db, rounds_planned=self._planned)
        except StateError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the state database cannot be read: {exc}")
        logs.event(log, "operator-status", logging.DEBUG, operator=name)
        document = dataclasses.replace(status, live=live).to_json()
        return pb.StatusReply(status_json=json.dumps(document, sort_keys=True))
