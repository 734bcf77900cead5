"""Registers the Federation and Operator services with request parsing done by secfed, not by grpcio.

grpcio's generated registration deserializes each request before the servicer runs; a request that
fails to parse there is answered INTERNAL, but grpcio 1.82 never releases its HTTP/2 stream (about
14 KB each, for good, and after 256 of them the connection refuses new streams). Any holder of a
consortium certificate, even one outside the roster, could exhaust the server that way. So the
methods are registered with raw bytes in, and parsed here: a request that does not parse is
answered INVALID_ARGUMENT with a reason, through the normal servicer path that releases its stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from secfed.proto.v1 import federation_pb2 as pb

SERVICE = "secfed.v1.Federation"
OPERATOR_SERVICE = "secfed.v1.Operator"
M = TypeVar("M", bound=Message)


def _parse(kind: type[M], data: bytes, context: grpc.ServicerContext, what: str) -> M:
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: not a valid {kind.__name__}: {exc}")
        raise AssertionError("unreachable: context.abort raises") from exc


def _unary(kind: type[Message], method: Callable[[Any, grpc.ServicerContext], Any], name: str) -> Any:
    def handler(data: bytes, context: grpc.ServicerContext) -> Any:
        return method(_parse(kind, data, context, name), context)

    return handler


def _chunks(data: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[pb.UploadChunk]:
    for i, raw in enumerate(data):
        yield _parse(pb.UploadChunk, raw, context, f"Upload chunk {i}")


def register(servicer: Any, server: grpc.Server) -> None:
    """Add ``servicer`` (a FederationServicer) to ``server`` with secfed-side request parsing."""

    def upload(data: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        return servicer.Upload(_chunks(data, context), context)

    def download(data: bytes, context: grpc.ServicerContext) -> Any:
        return servicer.Download(_parse(pb.DownloadRequest, data, context, "Download"), context)

    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            _unary(pb.JoinRequest, servicer.Join, "Join"),
            response_serializer=pb.JoinReply.SerializeToString,
        ),
        "Poll": grpc.unary_unary_rpc_method_handler(
            _unary(pb.PollRequest, servicer.Poll, "Poll"),
            response_serializer=pb.Instruction.SerializeToString,
        ),
        "Upload": grpc.stream_unary_rpc_method_handler(
            upload, response_serializer=pb.UploadAck.SerializeToString
        ),
        "Download": grpc.unary_stream_rpc_method_handler(
            download, response_serializer=pb.DownloadChunk.SerializeToString
        ),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            _unary(pb.HeartbeatRequest, servicer.Heartbeat, "Heartbeat"),
            response_serializer=pb.HeartbeatReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def register_operator(servicer: Any, server: grpc.Server) -> None:
    """Add ``servicer`` (a :class:`server.operator.OperatorService`) to ``server``, parsed the same way."""
    handlers = {
        "Status": grpc.unary_unary_rpc_method_handler(
            _unary(pb.StatusRequest, servicer.Status, "Status"),
            response_serializer=pb.StatusReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(OPERATOR_SERVICE, handlers),))
