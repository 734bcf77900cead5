"""The wire layer: protobuf conversion (:mod:`secfed.wire.convert`) and chunking (:mod:`secfed.wire.chunks`).

Everything here is transport-agnostic (no gRPC import), so the server and client runtimes, and the
tests, use the same code paths whatever carries the bytes. This module only defines the one error the
layer raises; import the functions from the submodules (importing them here would make every user of
:class:`WireError` pay for numpy and the generated protobuf modules, and invite import cycles).
"""

from __future__ import annotations

__all__ = ["WireError"]


class WireError(ValueError):
    """Bytes from the network that do not form a valid message, or a stream that breaks its header.

    ``field`` names the offending field (``"segments[delta].data"``, ``"header.total_bytes"``,
    ``"envelope"``) so that an UploadAck or a log line says exactly what was wrong, and the peer that
    sent it can be told without leaking a stack trace. Every decoding path in :mod:`secfed.wire` turns
    malformed input into this error and nothing else, so a servicer needs exactly one ``except``.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}")
