"""Chunked uploads and downloads: exact reassembly, and every way a stream can lie is refused."""

from __future__ import annotations

import hashlib
import os

import pytest

from secfed.proto.v1 import federation_pb2 as pb
from secfed.wire import WireError
from secfed.wire.chunks import (
    DownloadAssembler,
    UploadAssembler,
    split_download,
    split_upload,
)

KIND = pb.UPLOAD_KIND_MASKED_INPUT
CHUNK = 1000
GiB = 1 << 30


def upload(payload: bytes | bytearray | memoryview, chunk: int = CHUNK) -> list[pb.UploadChunk]:
    return list(split_upload(KIND, b"sid", 3, payload, chunk, instruction_id=42))


def over_the_wire(chunks: list[pb.UploadChunk]) -> list[pb.UploadChunk]:
    return [pb.UploadChunk.FromString(c.SerializeToString()) for c in chunks]


def assemble(chunks: list[pb.UploadChunk], max_total: int = 64 << 20, min_chunk: int = 1) -> bytes:
    asm = UploadAssembler(max_total, min_chunk_bytes=min_chunk)
    for c in chunks:
        asm.feed(c)
    header, data = asm.finish()
    assert header.kind == KIND and header.session_id == b"sid" and header.round == 3
    assert header.instruction_id == 42
    return bytes(data)


def header_chunk(total: int, sha: bytes = b"\0" * 32, data: bytes = b"") -> pb.UploadChunk:
    return pb.UploadChunk(
        header=pb.UploadHeader(kind=KIND, session_id=b"sid", round=3, total_bytes=total, sha256=sha),
        data=data,
    )


# ---------------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17])
def test_upload_sizes_reassemble_exactly(size: int) -> None:
    payload = os.urandom(size)
    chunks = upload(payload)
    assert len(chunks) == max(1, -(-size // CHUNK))
    assert chunks[0].HasField("header") and not any(c.HasField("header") for c in chunks[1:])
    assert chunks[0].header.total_bytes == size
    assert chunks[0].header.sha256 == hashlib.sha256(payload).digest()
    assert all(len(c.data) <= CHUNK for c in chunks)
    assert assemble(over_the_wire(chunks)) == payload


def test_ten_megabytes() -> None:
    payload = os.urandom(10 << 20)
    chunks = upload(payload, chunk=256 << 10)
    asm = UploadAssembler(16 << 20)  # default min_chunk_bytes
    for c in chunks:
        asm.feed(c)
    assert asm.allocated == len(payload)
    _, data = asm.finish()
    assert data.readonly and data == payload


def test_memoryview_and_bytearray_payloads() -> None:
    payload = os.urandom(3 * CHUNK)
    assert assemble(upload(memoryview(payload)[CHUNK:])) == payload[CHUNK:]
    assert assemble(upload(bytearray(payload))) == payload


def test_oversized_declaration_refused_before_any_data() -> None:
    asm = UploadAssembler(1000)
    with pytest.raises(WireError) as err:
        asm.feed(header_chunk(1001, data=b"x" * 500))
    assert err.value.field == "header.total_bytes"
    assert asm.allocated == 0 and asm.received == 0
    with pytest.raises(WireError, match="already rejected"):
        asm.feed(pb.UploadChunk(data=b"x"))


def test_large_declaration_within_limit_costs_nothing_until_data_arrives() -> None:
    """1 GiB declared, 2 GiB allowed: the header is accepted and nothing is allocated yet.

    The buffer (exactly the declared size) is allocated at the first data byte; this test stops before
    that, so it never allocates the gigabyte.
    """
    asm = UploadAssembler(2 * GiB)
    asm.feed(header_chunk(GiB))
    assert asm.header is not None and asm.header.total_bytes == GiB
    assert asm.allocated == 0
    with pytest.raises(WireError, match="truncated: received 0 of"):
        asm.finish()


def test_more_data_than_declared() -> None:
    payload = os.urandom(10)
    chunks = upload(payload)
    chunks.append(pb.UploadChunk(data=b"!"))
    asm = UploadAssembler(100, min_chunk_bytes=1)
    asm.feed(chunks[0])
    with pytest.raises(WireError, match="more data than the declared 10 bytes") as err:
        asm.feed(chunks[1])
    assert err.value.field == "data"


def test_extra_data_in_one_oversized_chunk() -> None:
    asm = UploadAssembler(100)
    with pytest.raises(WireError) as err:
        asm.feed(header_chunk(10, data=b"x" * 11))
    assert err.value.field == "data"
    assert asm.allocated == 0


def test_hash_mismatch() -> None:
    payload = os.urandom(3 * CHUNK)
    chunks = upload(payload)
    tampered = bytearray(chunks[1].data)
    tampered[5] ^= 1
    chunks[1] = pb.UploadChunk(data=bytes(tampered))
    with pytest.raises(WireError) as err:
        assemble(chunks)
    assert err.value.field == "sha256"


def test_truncated_stream() -> None:
    chunks = upload(os.urandom(3 * CHUNK))
    with pytest.raises(WireError, match="truncated") as err:
        assemble(chunks[:-1])
    assert err.value.field == "data"


def test_missing_header() -> None:
    chunks = upload(os.urandom(3 * CHUNK))
    with pytest.raises(WireError, match="first chunk must carry") as err:
        assemble(chunks[1:])
    assert err.value.field == "header"


def test_duplicate_header() -> None:
    payload = os.urandom(3 * CHUNK)
    chunks = upload(payload)
    second = pb.UploadChunk()
    second.CopyFrom(chunks[1])
    second.header.CopyFrom(chunks[0].header)
    with pytest.raises(WireError, match="second header") as err:
        assemble([chunks[0], second, *chunks[2:]])
    assert err.value.field == "header"


def test_empty_stream() -> None:
    with pytest.raises(WireError, match="before any chunk") as err:
        UploadAssembler(10).finish()
    assert err.value.field == "header"


def test_chunk_count_is_bounded() -> None:
    payload = os.urandom(4096)
    dribble = upload(payload, chunk=1)  # 4096 one-byte chunks; the floor is 1024 bytes -> at most 5
    asm = UploadAssembler(1 << 20, min_chunk_bytes=1024)
    with pytest.raises(WireError, match="more than 5 chunks") as err:
        for c in dribble:
            asm.feed(c)
    assert err.value.field == "chunks"
    assert asm.received == 5
    # Empty chunks make no progress and count just the same.
    asm = UploadAssembler(1 << 20, min_chunk_bytes=1024)
    asm.feed(header_chunk(10))
    with pytest.raises(WireError):
        for _ in range(10):
            asm.feed(pb.UploadChunk())


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (pb.UploadHeader(kind=pb.UPLOAD_KIND_UNSPECIFIED, total_bytes=1, sha256=b"\0" * 32), "header.kind"),
        (pb.UploadHeader(kind=KIND, total_bytes=1, sha256=b"\0" * 31), "header.sha256"),
        (pb.UploadHeader(kind=KIND, total_bytes=1), "header.sha256"),
    ],
)
def test_bad_headers(header: pb.UploadHeader, field: str) -> None:
    with pytest.raises(WireError) as err:
        UploadAssembler(10).feed(pb.UploadChunk(header=header))
    assert err.value.field == field


def test_unknown_kind_in_header_from_the_wire() -> None:
    chunk = header_chunk(0, sha=hashlib.sha256(b"").digest())
    chunk.header.kind = 99  # type: ignore[assignment]  # open enum: any int can arrive
    with pytest.raises(WireError) as err:
        UploadAssembler(10).feed(pb.UploadChunk.FromString(chunk.SerializeToString()))
    assert err.value.field == "header.kind"


def test_split_upload_checks_its_arguments_at_call_time() -> None:
    with pytest.raises(WireError) as err:
        split_upload(KIND, b"", 0, b"abc", 0)
    assert err.value.field == "chunk_bytes"
    with pytest.raises(WireError) as err:
        split_upload(pb.UPLOAD_KIND_UNSPECIFIED, b"", 0, b"abc", 10)
    assert err.value.field == "kind"


# ---------------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------------


def download(data: bytes, offset: int = 0, chunk: int = CHUNK) -> list[pb.DownloadChunk]:
    return [pb.DownloadChunk.FromString(c.SerializeToString()) for c in split_download(data, chunk, offset)]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 7 * CHUNK + 3])
def test_download_sizes_reassemble_exactly(size: int) -> None:
    data = os.urandom(size)
    chunks = download(data)
    assert chunks[0].header.total_bytes == size and chunks[0].header.offset == 0
    assert chunks[0].header.sha256 == hashlib.sha256(data).digest()
    asm = DownloadAssembler(1 << 20, expected_sha256=hashlib.sha256(data).digest(), min_chunk_bytes=1)
    for c in chunks:
        asm.feed(c)
    assert asm.total_bytes == size
    assert bytes(asm.finish()) == data


def test_download_resumes_after_a_broken_stream() -> None:
    data = os.urandom(10 * CHUNK + 5)
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1)
    for c in download(data)[:4]:  # the connection drops after four chunks
        asm.feed(c)
    offset = asm.start_stream()
    assert offset == 4 * CHUNK
    for c in download(data, offset):
        asm.feed(c)
    assert bytes(asm.finish()) == data


def test_resume_at_the_end_is_a_header_only_stream() -> None:
    data = os.urandom(2 * CHUNK)
    chunks = download(data, offset=len(data))
    assert len(chunks) == 1 and chunks[0].data == b""
    with pytest.raises(WireError) as err:
        list(split_download(data, CHUNK, len(data) + 1))
    assert err.value.field == "offset"


def test_download_with_precomputed_hash() -> None:
    data = os.urandom(3 * CHUNK)
    digest = hashlib.sha256(data).digest()
    chunks = list(split_download(memoryview(data), CHUNK, 0, sha256=digest))
    assert chunks[0].header.sha256 == digest
    with pytest.raises(WireError) as err:
        split_download(data, CHUNK, 0, sha256=b"short")
    assert err.value.field == "sha256"


def test_resume_must_continue_where_it_stopped() -> None:
    data = os.urandom(4 * CHUNK)
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1)
    for c in download(data)[:2]:
        asm.feed(c)
    asm.start_stream()
    with pytest.raises(WireError) as err:
        asm.feed(download(data, CHUNK)[0])  # overlaps bytes already held
    assert err.value.field == "header.offset"


def test_resume_must_be_the_same_vector() -> None:
    data = os.urandom(4 * CHUNK)
    other = os.urandom(4 * CHUNK)
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1)
    asm.feed(download(data)[0])
    asm.start_stream()
    with pytest.raises(WireError) as err:
        asm.feed(download(other, CHUNK)[0])
    assert err.value.field == "header.sha256"


def test_download_header_rules() -> None:
    data = os.urandom(3 * CHUNK)
    chunks = download(data)
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1)
    with pytest.raises(WireError, match="must carry the download header"):
        asm.feed(chunks[1])
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1)
    asm.feed(chunks[0])
    with pytest.raises(WireError, match="second header within one stream"):
        asm.feed(chunks[0])
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1)
    asm.feed(chunks[0])
    asm.start_stream()
    with pytest.raises(WireError, match="must carry the download header"):
        asm.feed(chunks[1])  # a resumed stream without its header


def test_download_refuses_wrong_model_and_oversize_before_data() -> None:
    data = os.urandom(3 * CHUNK)
    first = download(data)[0]
    asm = DownloadAssembler(1 << 20, expected_sha256=hashlib.sha256(b"another model").digest())
    with pytest.raises(WireError, match="different model") as err:
        asm.feed(first)
    assert err.value.field == "header.sha256" and asm.allocated == 0
    asm = DownloadAssembler(len(data) - 1)
    with pytest.raises(WireError) as err:
        asm.feed(first)
    assert err.value.field == "header.total_bytes" and asm.allocated == 0


def test_download_too_much_data_and_bad_hash() -> None:
    data = os.urandom(2 * CHUNK)
    chunks = download(data)
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1)
    for c in chunks:
        asm.feed(c)
    with pytest.raises(WireError) as err:
        asm.feed(pb.DownloadChunk(data=b"x"))
    assert err.value.field == "data"

    chunks[1] = pb.DownloadChunk(data=bytes(reversed(chunks[1].data)))
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1)
    for c in chunks:
        asm.feed(c)
    with pytest.raises(WireError) as err:
        asm.finish()
    assert err.value.field == "sha256"


def test_download_stream_count_is_bounded() -> None:
    data = os.urandom(CHUNK)
    asm = DownloadAssembler(1 << 20, min_chunk_bytes=1, max_streams=3)
    header_only = download(data)[0]
    header_only.data = b""
    asm.feed(header_only)
    asm.start_stream()
    asm.feed(header_only)
    asm.start_stream()
    asm.feed(header_only)
    asm.start_stream()
    with pytest.raises(WireError, match="more than 3 streams"):
        asm.feed(header_only)
