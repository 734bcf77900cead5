"""``secfed status --operator KIT``: ask a running coordinator for its status over mutual TLS.

The operator's kit (``secfed certs issue --operator NAME``) authenticates the operator to the
coordinator, and the coordinator to the operator: the connection goes through the same checked link
as an institution's (:class:`client.channel.CoordinatorLink`: the coordinator's certificate against the
consortium CA, its CRL and the address dialed), so a status view never comes from an impostor.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from client.channel import CoordinatorLink
from client.tls import ServerRefused
from secfed.logs import shown
from secfed.pki.kit import Kit
from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc

__all__ = ["RemoteStatusError", "fetch_status"]


class RemoteStatusError(Exception):
    """The coordinator could not be asked, or refused to answer; the message says which and why."""


def fetch_status(kit: Kit, address: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """The coordinator's status document (see ``Operator.Status`` in the wire contract)."""
    if kit.role != "operator":
        raise RemoteStatusError(
            f"{kit.root}: this is a {kit.role} kit; asking a coordinator needs an operator kit "
            "(secfed certs issue --operator NAME)"
        )
    with CoordinatorLink(kit, address, connect_timeout_s=timeout_s) as link:
        stub = pb_grpc.OperatorStub(link.channel)  # type: ignore[no-untyped-call]
        try:
            reply = stub.Status(pb.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            try:
                link.raise_if_refused()
            except ServerRefused as refused:
                raise RemoteStatusError(f"{address}: {refused}") from exc
            failure = link.failure
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if failure is not None and code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                # gRPC's own text would name the local forwarder's socket: say what happened instead.
                raise RemoteStatusError(
                    f"{address}: cannot reach the coordinator ({failure.kind}: {shown(failure.detail)})"
                ) from exc
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "error"
            raise RemoteStatusError(f"{address}: {name}: {shown(details)}") from exc
    try:
        document = json.loads(reply.status_json)
    except ValueError as exc:
        raise RemoteStatusError(f"{address}: the coordinator's status is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise RemoteStatusError(f"{address}: the coordinator's status is not a JSON object")
    return document
