"""Chunked transfer of large payloads: split a payload into stream messages, and reassemble it safely.

gRPC messages are limited in size (4 MiB by default) and a LoRA adapter can be a gigabyte, so uploads
and downloads travel as streams of chunks, the first carrying a header with the total size and SHA-256.
Raising the gRPC limit instead would let any peer make the other side buffer one huge message before a
single check ran; with chunks, the receiver checks the header first and refuses an oversized payload
before it has buffered anything.

The assemblers treat every chunk as hostile and enforce, raising :class:`~secfed.wire.WireError`:

- the header comes first (and, for an upload, only once);
- the declared size is within the receiver's limit, checked before any data is buffered;
- never more data than declared, and a complete payload before :meth:`finish`;
- the SHA-256 of what arrived equals the header's;
- a bounded number of chunks (``1 + ceil(size / min_chunk_bytes)`` per stream), so a sender cannot
  make the receiver spin on millions of empty or one-byte chunks.

Memory: the receive buffer is one ``bytearray`` of exactly the declared size, allocated when the first
data byte arrives -- not when the header does, so a header-only probe (or a refused header) costs
nothing -- and filled in place, so reassembly is linear (no repeated concatenation). The declared size
is trusted only up to ``max_total_bytes``: a sender that declares a large size and then stalls makes
the receiver hold at most that much, which is what the limit is for. The hash is computed as data
arrives, so :meth:`finish` adds no second pass. :meth:`finish` returns a read-only ``memoryview`` of
the buffer rather than ``bytes`` to avoid copying a gigabyte once more; protobuf parses it directly.

Nothing here imports gRPC: the functions take and yield generated message objects, whatever carries them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

from secfed.proto.v1 import federation_pb2 as pb
from secfed.wire import WireError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MIN_CHUNK_BYTES",
    "SHA256_BYTES",
    "DownloadAssembler",
    "UploadAssembler",
    "split_download",
    "split_upload",
]

#: A sensible chunk size: far below gRPC's default 4 MiB message limit, large enough that per-message
#: overhead is negligible.
DEFAULT_CHUNK_BYTES: Final = 1 << 20
#: Default floor on the chunk size a receiver tolerates; it bounds the number of chunks per payload.
DEFAULT_MIN_CHUNK_BYTES: Final = 1024
SHA256_BYTES: Final = 32

Bytes = bytes | bytearray | memoryview
_UPLOAD_KINDS: Final = frozenset(int(v) for v in pb.UploadKind.values()) - {int(pb.UPLOAD_KIND_UNSPECIFIED)}


def _byte_view(data: Bytes) -> memoryview:
    return memoryview(data).cast("B")


def _check_chunk_bytes(chunk_bytes: int) -> None:
    if chunk_bytes <= 0:
        raise WireError("chunk_bytes", f"must be > 0, got {chunk_bytes}")


def _chunk_limit(size: int, min_chunk_bytes: int) -> int:
    """Most chunks a stream of ``size`` bytes may take: one per ``min_chunk_bytes``, plus the header."""
    return 1 + -(-size // min_chunk_bytes)


# ---------------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------------


def split_upload(
    kind: pb.UploadKind,
    session_id: bytes,
    round: int,
    payload: Bytes,
    chunk_bytes: int,
    *,
    instruction_id: int = 0,
) -> Iterator[pb.UploadChunk]:
    """The chunks of one upload: the first carries the header and the first slice of data.

    An empty payload is one chunk (header, no data). Arguments are checked now, not when the iterator
    is first advanced, so a bad call fails at the call site.
    """
    _check_chunk_bytes(chunk_bytes)
    if int(kind) not in _UPLOAD_KINDS:
        raise WireError("kind", f"unknown upload kind {int(kind)}")
    view = _byte_view(payload)
    header = pb.UploadHeader(
        kind=kind,
        session_id=session_id,
        round=round,
        total_bytes=len(view),
        sha256=hashlib.sha256(view).digest(),
        instruction_id=instruction_id,
    )

    def chunks() -> Iterator[pb.UploadChunk]:
        yield pb.UploadChunk(header=header, data=bytes(view[:chunk_bytes]))
        for start in range(chunk_bytes, len(view), chunk_bytes):
            yield pb.UploadChunk(data=bytes(view[start : start + chunk_bytes]))

    return chunks()


def split_download(
    data: Bytes, chunk_bytes: int, offset: int = 0, *, sha256: bytes | None = None
) -> Iterator[pb.DownloadChunk]:
    """The chunks of one Download stream starting at ``offset`` (from the client's request).

    The header describes the *whole* vector (size and SHA-256), so a resumed download is verified end
    to end. Pass ``sha256`` when it is known (the server serves one model many times) to skip
    rehashing a large vector per request. ``offset`` is untrusted client input: past the end is a
    :class:`WireError`; exactly at the end gives a header-only stream.
    """
    _check_chunk_bytes(chunk_bytes)
    view = _byte_view(data)
    if not 0 <= offset <= len(view):
        raise WireError("offset", f"{offset} is outside the {len(view)}-byte vector")
    digest = sha256 if sha256 is not None else hashlib.sha256(view).digest()
    if len(digest) != SHA256_BYTES:
        raise WireError("sha256", f"must be {SHA256_BYTES} bytes, got {len(digest)}")
    header = pb.DownloadHeader(total_bytes=len(view), sha256=digest, offset=offset)

    def chunks() -> Iterator[pb.DownloadChunk]:
        yield pb.DownloadChunk(header=header, data=bytes(view[offset : offset + chunk_bytes]))
        for start in range(offset + chunk_bytes, len(view), chunk_bytes):
            yield pb.DownloadChunk(data=bytes(view[start : start + chunk_bytes]))

    return chunks()


# ---------------------------------------------------------------------------------------------------
# Receiving
# ---------------------------------------------------------------------------------------------------


class _Receiver:
    """A payload of a declared size and hash, written in order into a buffer allocated on first data."""

    def __init__(self, total: int, sha256: bytes) -> None:
        self.total = total
        self.sha256 = sha256
        self.received = 0
        self._buf: bytearray | None = None
        self._hash = hashlib.sha256()

    @property
    def allocated(self) -> int:
        return 0 if self._buf is None else len(self._buf)

    def write(self, data: bytes) -> None:
        n = len(data)
        if n == 0:
            return
        if n > self.total - self.received:
            raise WireError(
                "data", f"more data than the declared {self.total} bytes ({self.received} + {n} bytes)"
            )
        if self._buf is None:
            self._buf = bytearray(self.total)
        self._buf[self.received : self.received + n] = data
        self._hash.update(data)
        self.received += n

    def result(self) -> memoryview:
        if self.received < self.total:
            raise WireError("data", f"truncated: received {self.received} of {self.total} bytes")
        if self._hash.digest() != self.sha256:
            raise WireError("sha256", "the payload does not match the header's SHA-256")
        return memoryview(self._buf if self._buf is not None else bytearray()).toreadonly()

    def release(self) -> None:
        self._buf = None


class UploadAssembler:
    """Reassembles one Upload stream; see the module docstring for what it enforces.

    After any :class:`WireError` the assembler is spent (its buffer is released at once) and every
    later call raises again, so a servicer cannot accidentally accept the rest of a rejected stream.
    """

    def __init__(self, max_total_bytes: int, *, min_chunk_bytes: int = DEFAULT_MIN_CHUNK_BYTES) -> None:
        if max_total_bytes < 0 or min_chunk_bytes <= 0:
            raise ValueError("max_total_bytes must be >= 0 and min_chunk_bytes > 0")
        self.max_total_bytes = max_total_bytes
        self.min_chunk_bytes = min_chunk_bytes
        self._header: pb.UploadHeader | None = None
        self._rx: _Receiver | None = None
        self._chunks = 0
        self._max_chunks = 0
        self._failed: WireError | None = None

    @property
    def header(self) -> pb.UploadHeader | None:
        """The accepted header (after the first chunk), so the caller can check kind and session early."""
        return self._header

    @property
    def received(self) -> int:
        return 0 if self._rx is None else self._rx.received

    @property
    def allocated(self) -> int:
        """Bytes of receive buffer held now (0 until the first data arrives)."""
        return 0 if self._rx is None else self._rx.allocated

    def feed(self, chunk: pb.UploadChunk) -> None:
        self._guard()
        try:
            self._feed(chunk)
        except WireError as exc:
            self._fail(exc)
            raise

    def finish(self) -> tuple[pb.UploadHeader, memoryview]:
        """The header and the complete, hash-checked payload (a read-only view, not a copy)."""
        self._guard()
        try:
            if self._header is None or self._rx is None:
                raise WireError("header", "the stream ended before any chunk arrived")
            return self._header, self._rx.result()
        except WireError as exc:
            self._fail(exc)
            raise

    def _feed(self, chunk: pb.UploadChunk) -> None:
        self._chunks += 1
        if chunk.HasField("header"):
            if self._header is not None:
                raise WireError("header", "a second header; only the first chunk may carry one")
            self._accept(chunk.header)
        elif self._header is None:
            raise WireError("header", "the first chunk must carry the upload header")
        if self._chunks > self._max_chunks:
            raise WireError(
                "chunks",
                f"more than {self._max_chunks} chunks for {self.total_declared} bytes "
                f"(chunks must carry at least {self.min_chunk_bytes} bytes)",
            )
        assert self._rx is not None
        self._rx.write(chunk.data)

    @property
    def total_declared(self) -> int:
        return 0 if self._rx is None else self._rx.total

    def _accept(self, header: pb.UploadHeader) -> None:
        if int(header.kind) not in _UPLOAD_KINDS:
            raise WireError("header.kind", f"unknown upload kind {int(header.kind)}")
        if len(header.sha256) != SHA256_BYTES:
            raise WireError("header.sha256", f"must be {SHA256_BYTES} bytes, got {len(header.sha256)}")
        total = int(header.total_bytes)
        if total > self.max_total_bytes:
            raise WireError(
                "header.total_bytes", f"declares {total} bytes, more than the limit of {self.max_total_bytes}"
            )
        self._header = header
        self._rx = _Receiver(total, bytes(header.sha256))
        self._max_chunks = _chunk_limit(total, self.min_chunk_bytes)

    def _guard(self) -> None:
        if self._failed is not None:
            raise WireError(self._failed.field, f"stream already rejected: {self._failed.detail}")

    def _fail(self, exc: WireError) -> None:
        self._failed = exc
        if self._rx is not None:
            self._rx.release()


class DownloadAssembler:
    """Reassembles a downloaded vector across one or more Download streams (resumption).

    Every stream must start with a header whose ``offset`` equals the bytes already held, and whose
    size and hash equal the first stream's; call :meth:`start_stream` before each resumed stream (it
    returns the offset to request). ``expected_sha256`` (from the instruction's ``ModelRef``) makes the
    assembler refuse a stream for a different model at its first header.
    """

    def __init__(
        self,
        max_total_bytes: int,
        *,
        expected_sha256: bytes | None = None,
        min_chunk_bytes: int = DEFAULT_MIN_CHUNK_BYTES,
        max_streams: int = 16,
    ) -> None:
        if max_total_bytes < 0 or min_chunk_bytes <= 0 or max_streams <= 0:
            raise ValueError("max_total_bytes must be >= 0, min_chunk_bytes and max_streams > 0")
        self.max_total_bytes = max_total_bytes
        self.expected_sha256 = expected_sha256
        self.min_chunk_bytes = min_chunk_bytes
        self.max_streams = max_streams
        self._rx: _Receiver | None = None
        self._streams = 0
        self._awaiting_header = True
        self._chunks = 0
        self._max_chunks = 0
        self._failed: WireError | None = None

    @property
    def offset(self) -> int:
        """Bytes held so far: where a resumed download starts."""
        return 0 if self._rx is None else self._rx.received

    @property
    def total_bytes(self) -> int | None:
        """The vector's declared size, once the first header has arrived."""
        return None if self._rx is None else self._rx.total

    @property
    def allocated(self) -> int:
        return 0 if self._rx is None else self._rx.allocated

    def start_stream(self) -> int:
        """Prepare for a new (resumed) stream: its first chunk must carry a header. Returns the offset."""
        self._guard()
        self._awaiting_header = True
        return self.offset

    def feed(self, chunk: pb.DownloadChunk) -> None:
        self._guard()
        try:
            self._feed(chunk)
        except WireError as exc:
            self._fail(exc)
            raise

    def finish(self) -> memoryview:
        """The complete, hash-checked vector (a read-only view, not a copy)."""
        self._guard()
        try:
            if self._rx is None:
                raise WireError("header", "no stream has started")
            return self._rx.result()
        except WireError as exc:
            self._fail(exc)
            raise

    def _feed(self, chunk: pb.DownloadChunk) -> None:
        if chunk.HasField("header"):
            if not self._awaiting_header:
                raise WireError("header", "a second header within one stream")
            self._accept(chunk.header)
        elif self._awaiting_header:
            raise WireError("header", "the first chunk of a stream must carry the download header")
        self._chunks += 1
        if self._chunks > self._max_chunks:
            raise WireError(
                "chunks",
                f"more than {self._max_chunks} chunks in one stream "
                f"(chunks must carry at least {self.min_chunk_bytes} bytes)",
            )
        assert self._rx is not None
        self._rx.write(chunk.data)

    def _accept(self, header: pb.DownloadHeader) -> None:
        self._streams += 1
        if self._streams > self.max_streams:
            raise WireError("header", f"more than {self.max_streams} streams for one download")
        total, digest, offset = int(header.total_bytes), bytes(header.sha256), int(header.offset)
        if self._rx is None:
            if len(digest) != SHA256_BYTES:
                raise WireError("header.sha256", f"must be {SHA256_BYTES} bytes, got {len(digest)}")
            if self.expected_sha256 is not None and digest != self.expected_sha256:
                raise WireError("header.sha256", "the server is sending a different model than requested")
            if total > self.max_total_bytes:
                raise WireError(
                    "header.total_bytes",
                    f"declares {total} bytes, more than the limit of {self.max_total_bytes}",
                )
            self._rx = _Receiver(total, digest)
        else:
            if total != self._rx.total:
                raise WireError("header.total_bytes", f"changed from {self._rx.total} to {total} on resume")
            if digest != self._rx.sha256:
                raise WireError("header.sha256", "changed on resume")
        if offset != self._rx.received:
            raise WireError(
                "header.offset", f"stream starts at {offset}, but {self._rx.received} bytes are held"
            )
        self._awaiting_header = False
        self._chunks = 0
        self._max_chunks = _chunk_limit(total - offset, self.min_chunk_bytes)

    def _guard(self) -> None:
        if self._failed is not None:
            raise WireError(self._failed.field, f"download already rejected: {self._failed.detail}")

    def _fail(self, exc: WireError) -> None:
        self._failed = exc
        if self._rx is not None:
            self._rx.release()
