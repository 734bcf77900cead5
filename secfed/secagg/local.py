"""Run a whole secure-aggregation session in one process, with optional dropouts.

This is the honest message router: it moves each state machine's output to the state machines that
should receive it, exactly as the gRPC layer does over the network. Tests use it (and subclass the
routing to play a lying server), and ``secfed bench secagg`` uses it to time each phase without any
transport cost.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from secfed.secagg.client import ClientSession
from secfed.secagg.errors import UPLOAD_PHASES, Phase, SecAggError
from secfed.secagg.messages import (
    AdvertBroadcast,
    AggregateResult,
    ConsistencyRequest,
    MaskedInputRequest,
    ShareKeysRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from secfed.secagg.server import ServerSession

T = TypeVar("T")
U = TypeVar("U")


@dataclass
class LocalRun:
    """What happened: the result or the error that ended the session, and where the time went."""

    result: AggregateResult | None = None
    error: SecAggError | None = None
    client_seconds: dict[Phase, list[float]] = field(default_factory=lambda: defaultdict(list))
    server_seconds: dict[Phase, float] = field(default_factory=lambda: defaultdict(float))
    upload_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unmask_responses: list[UnmaskResponse] = field(default_factory=list)


def _message_bytes(msg: object) -> int:
    """Payload bytes of an upload: keys, signatures, ciphertexts, shares and vectors (not framing)."""
    total = 0
    for value in vars(msg).values():
        if isinstance(value, bytes | str):
            total += len(value)
        elif isinstance(value, tuple):
            total += sum(len(v) for v in value if isinstance(v, bytes | str))
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if hasattr(v, "nbytes"):
                    size = int(v.nbytes)
                elif isinstance(v, bytes | str):
                    size = len(v)
                else:  # a nested message (a share commitment)
                    size = _message_bytes(v)
                total += len(k) + size
    return total


class LocalRouter:
    """Drives one session between in-process clients and server. Override ``route_*`` to lie."""

    def __init__(self, server: ServerSession, clients: Mapping[str, ClientSession]) -> None:
        self.server = server
        self.clients = dict(clients)

    # Hooks a lying-server double overrides: what each client is sent.
    def route_adverts(self, recipient: str, msg: AdvertBroadcast) -> AdvertBroadcast:
        return msg

    def route_relay(self, recipient: str, msg: ShareKeysRelay) -> ShareKeysRelay:
        return msg

    def route_masked_input_request(self, recipient: str, msg: MaskedInputRequest) -> MaskedInputRequest:
        return msg

    def route_consistency(self, recipient: str, msg: ConsistencyRequest) -> ConsistencyRequest:
        return msg

    def route_unmask(self, recipient: str, msg: UnmaskRequest) -> UnmaskRequest:
        return msg

    def run(self, drop: Mapping[str, Phase] | None = None) -> LocalRun:
        """Run all phases; ``drop[c] = phase`` makes client ``c`` go silent from that phase on."""
        drop = drop or {}
        run = LocalRun()

        def alive(cid: str, phase: Phase) -> bool:
            at = drop.get(cid)
            return at is None or UPLOAD_PHASES.index(phase) < UPLOAD_PHASES.index(at)

        def timed(fn: Callable[[], T], seconds: list[float] | None, phase: Phase) -> T:
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            if seconds is None:
                run.server_seconds[phase] += elapsed
            else:
                seconds.append(elapsed)
            return out

        def upload(cid: str, phase: Phase, make: Callable[[], U], accept: Callable[[U], None]) -> U:
            msg = timed(make, run.client_seconds[phase], phase)
            run.upload_bytes[cid] += _message_bytes(msg)
            timed(lambda: accept(msg), None, phase)
            return msg

        srv, clients = self.server, self.clients
        try:
            for cid, client in clients.items():
                if alive(cid, Phase.ADVERTISE):
                    upload(cid, Phase.ADVERTISE, client.advertise, srv.receive_advert)
            broadcast = timed(srv.close_advertise, None, Phase.ADVERTISE)

            for cid in [a.client_id for a in broadcast.adverts]:
                if alive(cid, Phase.SHARE_KEYS):
                    bc = self.route_adverts(cid, broadcast)
                    upload(
                        cid,
                        Phase.SHARE_KEYS,
                        partial(clients[cid].on_advert_broadcast, bc),
                        srv.receive_shares,
                    )
            relays = timed(srv.close_share_keys, None, Phase.SHARE_KEYS)

            for cid, relay in relays.items():
                if alive(cid, Phase.COMPUTE):
                    rl = self.route_relay(cid, relay)
                    timed(
                        partial(clients[cid].on_share_relay, rl),
                        run.client_seconds[Phase.COMPUTE],
                        Phase.COMPUTE,
                    )
                    upload(cid, Phase.COMPUTE, clients[cid].ready, srv.receive_ready)
            go = timed(srv.close_compute, None, Phase.COMPUTE)

            for cid in go.ready:
                if alive(cid, Phase.MASKED_INPUT):
                    mr = self.route_masked_input_request(cid, go)
                    upload(
                        cid,
                        Phase.MASKED_INPUT,
                        partial(clients[cid].on_masked_input_request, mr),
                        srv.receive_masked_input,
                    )
            request = timed(srv.close_masked_input, None, Phase.MASKED_INPUT)

            for cid in request.u3:
                if alive(cid, Phase.CONSISTENCY):
                    rq = self.route_consistency(cid, request)
                    upload(
                        cid,
                        Phase.CONSISTENCY,
                        partial(clients[cid].on_consistency_request, rq),
                        srv.receive_consistency,
                    )
            unmask = timed(srv.close_consistency, None, Phase.CONSISTENCY)

            for cid in unmask.signatures:
                if alive(cid, Phase.UNMASK):
                    um = self.route_unmask(cid, unmask)
                    response = upload(
                        cid,
                        Phase.UNMASK,
                        partial(clients[cid].on_unmask_request, um),
                        srv.receive_unmask,
                    )
                    run.unmask_responses.append(response)
            run.result = timed(srv.finalize, None, Phase.UNMASK)
        except SecAggError as exc:
            run.error = exc
        return run
