"""``secfed bench fuzz``: random and mutated protobufs at every gRPC handler of a live coordinator.

The server is a real ``secfed server`` process on loopback with mutual TLS; the fuzzer connects as
authenticated roster members (the strongest position for an attacker: everything it sends reaches the
parsing code) and as a certificate from the consortium CA that is not in the roster. Each *case* is
one RPC -- ``Join``, ``Poll``, ``Heartbeat``, ``Download``, ``Upload`` or a method that does not exist
-- carrying one of:

* **random bytes** in place of the request message (or of every upload chunk);
* a **structured random** request: every field of the message type, recursively, filled or left out
  at random with boundary values (0, max, negative, NaN, empty and 33-byte hashes, long strings);
* a **mutation** of a valid request: bit flips, overwritten, deleted, inserted or duplicated bytes,
  truncation, a field with a huge declared length;
* for ``Upload``, a **deep** stream: a consistent header (right size and SHA-256, usually the right
  kind) around a structured random SecAgg message, often signed with the attacker's own id as sender,
  so it gets past the transport checks into the converters, the coordinator and the SecAgg session;
  or a **lying** stream (sizes, hashes, kinds, extra headers), or a **chunk flood**.

The verdict on every answer:

* a **crash** is the server process dying, a status ``UNKNOWN`` (a handler raised), an ``INTERNAL``
  that is not gRPC's own "could not deserialize the request", or a traceback in a status detail;
* otherwise the answer must be **clear**: a status with a reason, or an ``UploadAck`` that is either
  ``ok`` for an upload the wire layer decodes as a legitimate Refusal, or refused with a message;
  a deadline passing (the server hung on a request) is unclear;
* **memory** is the server's RSS, sampled throughout: its growth after warm-up must stay bounded;
* afterwards the **state** must be sound: the state database passes its integrity audit, and honest
  client processes then complete a real round whose secure sum equals the plaintext sum.

The generator takes a ``random.Random``: the benchmark seeds one (fast, reproducible), the tests pass
hypothesis's ``st.randoms()`` so that a failing case shrinks.

A grpcio defect found by this benchmark is worked around in ``server/handlers.py``: a request that
gRPC's generated handler cannot deserialize was answered ``INTERNAL`` but its HTTP/2 stream was never
released (about 14 KB each, for good; after ``grpc.max_concurrent_streams`` of them the connection
refused new streams). The server now takes raw bytes and parses them itself, answering
``INVALID_ARGUMENT`` ("not a valid ..."). The report still counts undecodable requests (either status)
and the memory they cost, so a regression shows as growth or ``refused-stream`` verdicts.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from secfed.bench.load import ProcessFederation, log_progress, prepare_run, stop_children_on_sigterm
from secfed.bench.stats import add_output_arguments, emit
from secfed.harness.checks import plaintext_check, read_rounds_log, state_check
from secfed.harness.layout import RunLayout, client_ids
from secfed.harness.procs import ChildProcess
from secfed.proto.v1 import federation_pb2 as pb
from secfed.secagg.config import PROTOCOL_VERSION
from secfed.wire import WireError, convert

__all__ = [
    "METHODS",
    "Case",
    "FuzzContext",
    "FuzzOptions",
    "Outcome",
    "classify_error",
    "generate_case",
    "mutate",
    "random_message",
    "register",
    "run_fuzz",
    "send_case",
]

_SERVICE = "/secfed.v1.Federation/"
#: Each handler, its request type and its RPC shape; plus a method the service does not have.
METHODS: dict[str, tuple[type[Message] | None, str]] = {
    "Join": (pb.JoinRequest, "unary"),
    "Poll": (pb.PollRequest, "unary"),
    "Heartbeat": (pb.HeartbeatRequest, "unary"),
    "Download": (pb.DownloadRequest, "unary_stream"),
    "Upload": (pb.UploadChunk, "stream_unary"),
    "Shutdown": (None, "unary"),  # not in the service: must be UNIMPLEMENTED
}
_WEIGHTS = {"Join": 10, "Poll": 10, "Heartbeat": 10, "Download": 12, "Upload": 55, "Shutdown": 3}
_MEMBERS = {f.name: f.number for f in pb.UploadEnvelope.DESCRIPTOR.oneofs_by_name["message"].fields}
#: Upload kind -> the UploadEnvelope member it must carry (UPLOAD_KIND_SHARE_KEYS <-> share_keys).
KIND_MEMBER: dict[int, str] = {
    int(value): name.removeprefix("UPLOAD_KIND_").lower()
    for name, value in pb.UploadKind.items()
    if value != pb.UPLOAD_KIND_UNSPECIFIED
}
#: Status codes a refusal may carry (with a reason); anything else needs a closer look.
_CLEAR_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)

_INTS: dict[int, tuple[int, int]] = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-300, 1e300, math.inf, -math.inf, math.nan, 3.4e38)


# ---------------------------------------------------------------------------------------- generation


@dataclass
class FuzzContext:
    """What an insider knows and a good fuzzer uses: its own id, the roster, the current model hash."""

    client_id: str = "inst00"
    roster: tuple[str, ...] = ("inst00", "inst01", "inst02", "inst03")
    model_hash: bytes = b""
    model_size: int = 0
    chunk_bytes: int = 4096
    max_upload_bytes: int = 64 * 1024


@dataclass(frozen=True)
class Case:
    """One fuzzed RPC: the method, how its request was made, and the raw request message(s)."""

    method: str
    form: str
    requests: tuple[bytes, ...]

    @property
    def messages(self) -> int:
        return len(self.requests)


def _int(rng: random.Random, lo: int, hi: int) -> int:
    edges = [
        v
        for v in (0, 1, 2, 3, 7, 32, 255, 256, 1024, 2**31 - 1, 2**32 - 1, 2**63 - 1, lo, hi)
        if lo <= v <= hi
    ]
    return rng.choice(edges) if rng.random() < 0.5 else rng.randint(lo, hi)


def _bytes(rng: random.Random, ctx: FuzzContext) -> bytes:
    roll = rng.random()
    if roll < 0.1 and ctx.model_hash:
        return ctx.model_hash
    if roll < 0.4:
        return rng.randbytes(rng.choice((0, 1, 31, 32, 33, 64, 65)))
    return rng.randbytes(int(min(rng.expovariate(1 / 200), 8192.0)))  # (an exponential draw can be inf)


def _text(rng: random.Random, ctx: FuzzContext) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice((ctx.client_id, *ctx.roster))
    if roll < 0.4:
        return ""
    if roll < 0.45:
        return "x" * rng.choice((1024, 5000, 70_000))  # long enough to hit gRPC's message limit
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_:/ .\u00e9\u4e2d\U0001f600\x00\n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


def _scalar(fd: FieldDescriptor, rng: random.Random, ctx: FuzzContext) -> Any:
    cpp = fd.cpp_type
    if cpp in _INTS:
        return _int(rng, *_INTS[cpp])
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        values = [v.number for v in fd.enum_type.values]
        return rng.choice(values) if rng.random() < 0.8 else _int(rng, -(2**31), 2**31 - 1)
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return rng.choice(_FLOATS) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return _bytes(rng, ctx)
    return _text(rng, ctx)


def random_message(desc: Any, rng: random.Random, ctx: FuzzContext, depth: int = 0) -> Message:
    """A message of type ``desc`` with each field (recursively) left out or set to a random value.

    ``desc`` is a message descriptor (the pure-Python or the upb one: typed ``Any`` because the
    stubs know them as two unrelated classes)."""
    msg: Message = message_factory.GetMessageClass(desc)()
    for fd in desc.fields:
        if rng.random() < 0.4:
            continue
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        try:
            if is_map:
                target = getattr(msg, fd.name)
                key_fd, value_fd = (
                    fd.message_type.fields_by_name["key"],
                    fd.message_type.fields_by_name["value"],
                )
                for _ in range(rng.randint(0, 4)):
                    key = _scalar(key_fd, rng, ctx)
                    if value_fd.message_type is not None:
                        target[key].CopyFrom(random_message(value_fd.message_type, rng, ctx, depth + 1))
                    else:
                        target[key] = _scalar(value_fd, rng, ctx)
            elif fd.is_repeated:
                target = getattr(msg, fd.name)
                for _ in range(rng.randint(0, 4)):
                    if fd.message_type is not None:
                        if depth < 3:
                            target.add().CopyFrom(random_message(fd.message_type, rng, ctx, depth + 1))
                    else:
                        target.append(_scalar(fd, rng, ctx))
            elif fd.message_type is not None:
                if depth < 3:
                    getattr(msg, fd.name).CopyFrom(random_message(fd.message_type, rng, ctx, depth + 1))
            else:
                setattr(msg, fd.name, _scalar(fd, rng, ctx))
        except (ValueError, TypeError):
            continue  # a value this field type refuses locally (e.g. NaN in an int): leave it out
    return msg


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four byte-level mutations of ``data`` (the classic mutation fuzzer's operators)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 64)]
        elif op == 5:
            del buf[pos:]
        elif op == 6:
            # A length-delimited field (random number) claiming far more bytes than follow.
            tag = (rng.randint(1, 2000) << 3) | 2
            buf[pos:pos] = _varint(tag) + _varint(rng.choice((2**31, 2**40, 2**63))) + b"x"
        else:
            buf[pos:pos] = _varint((rng.randint(1, 30) << 3) | rng.choice((0, 1, 3, 4, 5, 6, 7)))
    return bytes(buf)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _valid_request(method: str, ctx: FuzzContext) -> bytes:
    """A well-formed request of ``method``: the seed that the mutator corrupts."""
    if method == "Join":
        return pb.JoinRequest(
            software_version="secfed", protocol_version=PROTOCOL_VERSION
        ).SerializeToString()
    if method == "Poll":
        return pb.PollRequest(last_instruction_id=1).SerializeToString()
    if method == "Heartbeat":
        return pb.HeartbeatRequest(round=0).SerializeToString()
    if method == "Download":
        return pb.DownloadRequest(model_hash=ctx.model_hash, offset=0).SerializeToString()
    return b""


def _upload_chunks(
    kind: int, payload: bytes, ctx: FuzzContext, *, total: int | None = None, sha256: bytes | None = None
) -> list[bytes]:
    header = pb.UploadHeader(
        kind=kind,  # type: ignore[arg-type]  # deliberately any int
        round=0,
        total_bytes=len(payload) if total is None else total,
        sha256=hashlib.sha256(payload).digest() if sha256 is None else sha256,
    )
    step = ctx.chunk_bytes
    parts = [pb.UploadChunk(header=header, data=payload[:step]).SerializeToString()]
    parts += [
        pb.UploadChunk(data=payload[i : i + step]).SerializeToString()
        for i in range(step, len(payload), step)
    ]
    return parts


def _envelope(rng: random.Random, ctx: FuzzContext) -> tuple[int, bytes]:
    """A consistent upload (kind, envelope bytes) around a structured random SecAgg message."""
    kind = rng.choice(sorted(KIND_MEMBER))
    member = KIND_MEMBER[kind]
    fd = pb.UploadEnvelope.DESCRIPTOR.fields_by_name[member]
    inner = random_message(fd.message_type, rng, ctx)
    if rng.random() < 0.6:  # the attacker's own id: past the coordinator's sender check
        for id_field in ("sender", "client_id"):
            if id_field in fd.message_type.fields_by_name:
                setattr(inner, id_field, ctx.client_id)
    envelope = pb.UploadEnvelope()
    getattr(envelope, member).CopyFrom(inner)
    payload = envelope.SerializeToString()
    if rng.random() < 0.2:
        payload = mutate(payload, rng)
    if rng.random() < 0.15:
        kind = rng.choice([k for k in KIND_MEMBER if k != kind] + [0, 99])
    return kind, payload


def _upload_case(rng: random.Random, ctx: FuzzContext) -> Case:
    roll = rng.random()
    if roll < 0.45:
        kind, payload = _envelope(rng, ctx)
        return Case("Upload", "deep", tuple(_upload_chunks(kind, payload, ctx)))
    if roll < 0.6:
        kind, payload = _envelope(rng, ctx)
        total = rng.choice(
            (0, len(payload) - 1, len(payload) + 1, ctx.max_upload_bytes + 1, 2**64 - 1, 2**31)
        )
        sha = rng.choice((b"", rng.randbytes(32), rng.randbytes(33), hashlib.sha256(payload).digest()))
        parts = _upload_chunks(kind, payload, ctx, total=max(0, total), sha256=sha)
        if rng.random() < 0.3:  # a second header, or the header moved to a later chunk
            extra = pb.UploadChunk(header=pb.UploadHeader(kind=kind, total_bytes=1)).SerializeToString()  # type: ignore[arg-type]
            parts.insert(rng.randint(0, len(parts)), extra)
        return Case("Upload", "lying-header", tuple(parts))
    if roll < 0.7:
        kind, payload = _envelope(rng, ctx)
        head = pb.UploadChunk(
            header=pb.UploadHeader(
                kind=kind,  # type: ignore[arg-type]
                total_bytes=len(payload),
                sha256=hashlib.sha256(payload).digest(),
            )
        ).SerializeToString()
        size = rng.choice((0, 1))
        flood = [
            pb.UploadChunk(data=payload[i : i + size]).SerializeToString()
            for i in range(rng.randint(10, 120))
        ]
        return Case("Upload", "chunk-flood", (head, *flood))
    if roll < 0.85:
        kind, payload = _envelope(rng, ctx)
        parts = _upload_chunks(kind, payload, ctx)
        i = rng.randrange(len(parts))
        parts[i] = mutate(parts[i], rng)
        return Case("Upload", "mutated", tuple(parts))
    if roll < 0.93:
        n = rng.randint(0, 4)
        return Case(
            "Upload",
            "structured",
            tuple(random_message(pb.UploadChunk.DESCRIPTOR, rng, ctx).SerializeToString() for _ in range(n)),
        )
    return Case("Upload", "random-bytes", tuple(_bytes(rng, ctx) for _ in range(rng.randint(1, 4))))


def decodable(case: Case) -> bool:
    """Whether every request message of ``case`` parses as its method's request type.

    Undecodable ones never reach secfed's code (gRPC's generated handler refuses them first), and each
    costs the server memory for good (the grpcio defect in the module docstring).
    """
    request_type = METHODS[case.method][0]
    if request_type is None:
        return True  # an unknown method: refused by name, nothing is deserialized
    try:
        for raw in case.requests:
            request_type.FromString(raw)
    except DecodeError:
        return False
    return True


def generate_case(rng: random.Random, ctx: FuzzContext) -> Case:
    """One random case for a random handler (see the module docstring for the forms)."""
    method = rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()))[0]
    if method == "Upload":
        return _upload_case(rng, ctx)
    request_type = METHODS[method][0]
    roll = rng.random()
    if request_type is None or roll < 0.3:
        return Case(method, "random-bytes", (_bytes(rng, ctx),))
    if roll < 0.65:
        return Case(
            method, "structured", (random_message(request_type.DESCRIPTOR, rng, ctx).SerializeToString(),)
        )
    return Case(method, "mutated", (mutate(_valid_request(method, ctx), rng),))


# ------------------------------------------------------------------------------------------ sending


@dataclass
class Outcome:
    """The server's answer to one case, and the verdict on it."""

    method: str
    form: str
    status: str  # "OK" or a grpc.StatusCode name
    verdict: str  # "clear", "crash", "unclear"
    detail: str = ""
    accepted: bool = False  # an upload the server took (ack.ok)


def classify_error(code: grpc.StatusCode, details: str) -> str:
    """The verdict on a failed RPC: crash (handler raised, internal error), clear, refused-stream, or unclear."""
    if code == grpc.StatusCode.UNAVAILABLE and "error code 7" in details:
        return "refused-stream"  # HTTP/2 REFUSED_STREAM: the connection takes no new stream
    if "Traceback" in details or "Exception calling application" in details:
        return "crash"
    if code == grpc.StatusCode.UNKNOWN:
        return "crash"
    if code == grpc.StatusCode.INTERNAL:
        # gRPC's own refusal of bytes that are no request message: clear; anything else is not.
        return "clear" if "deserializ" in details.lower() else "crash"
    if code in _CLEAR_CODES and details:
        return "clear"
    return "unclear"


def _upload_oracle(case: Case) -> convert.UploadMessage | None:
    """What the wire layer makes of an upload stream on its own (None: it cannot decode it)."""
    try:
        chunks = [pb.UploadChunk.FromString(raw) for raw in case.requests]
    except DecodeError:
        return None
    if not chunks or not chunks[0].HasField("header"):
        return None
    data = b"".join(c.data for c in chunks)
    try:
        return convert.envelope_from_bytes(int(chunks[0].header.kind), data)
    except WireError:
        return None


def send_case(channel: grpc.Channel, case: Case, timeout_s: float = 20.0) -> Outcome:
    """Send one case over ``channel`` (raw bytes both ways) and judge the answer."""
    path = _SERVICE + case.method
    shape = METHODS[case.method][1]
    try:
        if shape == "unary":
            channel.unary_unary(path)(case.requests[0], timeout=timeout_s)
        elif shape == "unary_stream":
            for _ in channel.unary_stream(path)(case.requests[0], timeout=timeout_s):
                pass
        else:
            raw = channel.stream_unary(path)(iter(case.requests), timeout=timeout_s)
            try:
                ack = pb.UploadAck.FromString(raw)
            except DecodeError:
                return Outcome(case.method, case.form, "OK", "unclear", "the UploadAck does not parse")
            if ack.ok:
                local = _upload_oracle(case)
                if isinstance(local, convert.Refusal):
                    return Outcome(case.method, case.form, "OK", "clear", accepted=True)
                what = type(local).__name__ if local is not None else "undecodable bytes"
                return Outcome(case.method, case.form, "OK", "unclear", f"accepted {what}", accepted=True)
            if not ack.error_message:
                return Outcome(case.method, case.form, "OK", "unclear", "refused without a reason")
            return Outcome(case.method, case.form, "OK", "clear", ack.error_type)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        details: str = exc.details() or ""
        return Outcome(case.method, case.form, code.name, classify_error(code, details), details[:300])
    return Outcome(case.method, case.form, "OK", "clear")


def secure_channel(address: str, ca_pem: bytes, key_pem: bytes, cert_pem: bytes) -> grpc.Channel:
    """A mutual-TLS channel whose own message limits exceed the server's, so the server's refusal shows."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    limit = 64 * 1024 * 1024
    return grpc.secure_channel(
        address,
        credentials,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )


# ---------------------------------------------------------------------------------------- the bench


@dataclass(frozen=True)
class FuzzOptions:
    messages: int = 100_000
    workers: int = 8
    clients: int = 4
    seed: int = 0
    max_rss_growth_mb: float = 256.0
    rpc_timeout_s: float = 20.0
    workdir: Path | None = None
    progress: bool = True
    final_round: bool = True
    # Only requests that parse as their type: isolates secfed's handlers from the grpcio leak.
    decodable_only: bool = False

    def __post_init__(self) -> None:
        if self.messages < 1 or self.workers < 1:
            raise ValueError("--messages and --workers must be at least 1")
        if self.clients < 3:
            raise ValueError(f"--clients must be at least 3, got {self.clients}")


@dataclass
class _Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    cases: int = 0
    messages: int = 0
    by_method: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[str] = field(default_factory=Counter)
    forms: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    reconnects: int = 0
    undecodable: int = 0  # requests refused for not parsing (by grpcio or by server/handlers.py)
    acks: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, case: Case, outcome: Outcome) -> None:
        with self.lock:
            self.cases += 1
            self.messages += case.messages
            self.by_method[case.method] += 1
            self.statuses[f"{case.method}:{outcome.status}"] += 1
            self.verdicts[outcome.verdict] += 1
            if outcome.status in ("INTERNAL", "INVALID_ARGUMENT") and (
                "deserializ" in outcome.detail.lower() or "not a valid" in outcome.detail
            ):
                self.undecodable += 1
            self.forms[f"{case.method}:{case.form}:{outcome.status}"] += 1
            if case.method == "Upload" and outcome.status == "OK":
                self.acks[outcome.detail or ("accepted" if outcome.accepted else "ok")] += 1
            self.accepted += outcome.accepted
            if outcome.verdict != "clear":
                kept = self.examples.setdefault(outcome.verdict, [])
                if len(kept) < 20:
                    kept.append(
                        {
                            "method": case.method,
                            "form": case.form,
                            "status": outcome.status,
                            "detail": outcome.detail,
                            "request_hex": [r[:256].hex() for r in case.requests[:3]],
                        }
                    )


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux ``/proc``; None where that is not available)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def run_fuzz(opts: FuzzOptions) -> dict[str, Any]:
    """Fuzz a live server process, then run an honest round on it; the result (see the module docstring)."""
    if opts.workdir is not None:
        return _run_fuzz(opts, opts.workdir)
    tmp = Path(tempfile.mkdtemp(prefix="secfed-bench-fuzz-"))
    try:
        return _run_fuzz(opts, tmp / "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_fuzz(opts: FuzzOptions, out: Path) -> dict[str, Any]:
    from secfed.pki.files import load_ca
    from secfed.pki.issue import issue_client

    t0 = time.monotonic()
    ids = client_ids(opts.clients)
    max_upload, chunk = 64 * 1024, 4096
    layout = prepare_run(
        out,
        name="secfed bench fuzz",
        clients=ids,
        # One round that cannot complete while only the fuzzer talks: its attempts time out and are
        # retried (generously many), which keeps every phase handler and the ledger busy.
        plan={"rounds": 1, "phase_timeout_s": 2.0, "max_attempts": 1_000_000},
        task_options={"dim": 16},
        # Small upload limits so oversize and flood paths are reached; a rate limit the fuzzer does not
        # hit (it is tested on its own), so every request is judged on its content; short long polls.
        limits={
            "max_upload_bytes": max_upload,
            "chunk_bytes": chunk,
            "max_requests_per_s": 1_000_000.0,
            "burst": 1_000_000,
            "long_poll_s": 0.2,
        },
    )
    fed = ProcessFederation(layout)
    problems: list[str] = []
    tally = _Tally()
    samples: list[tuple[int, float]] = []
    honest: dict[str, ChildProcess] = {}
    closing: dict[str, Any] = {"ran": False}
    try:
        if not fed.start_server("start"):
            raise RuntimeError(f"the fuzz server did not start; see {layout.log('server')}")
        assert fed.server is not None
        address = f"127.0.0.1:{fed.port}"
        ca_pem = (layout.pki / "ca" / "ca.pem").read_bytes()
        identities = [_kit_identity(layout.pki / "clients" / cid, cid) for cid in ids]
        outsider = issue_client(load_ca(layout.pki / "ca"), "outsider")
        identities.append(("outsider", outsider.private_key_pem(), outsider.chain_pem()))
        ctx0 = _context(address, ca_pem, identities[0], max_upload, chunk)
        log_progress(
            opts.progress,
            t0,
            f"server on port {fed.port} (pid {fed.server.pid}); fuzzing {opts.messages} cases",
        )
        pid = fed.server.pid
        baseline = rss_mb(pid)
        stop = threading.Event()

        def monitor() -> None:
            while not stop.wait(0.5):
                value = rss_mb(pid)
                if value is not None:
                    samples.append((tally.cases, value))

        watcher = threading.Thread(target=monitor, name="fuzz-rss", daemon=True)
        watcher.start()
        next_case = iter(range(opts.messages))
        case_lock = threading.Lock()
        dead = threading.Event()

        def worker(index: int) -> None:
            cid, key_pem, cert_pem = identities[index % len(identities)]
            rng = random.Random(f"{opts.seed}/{index}")  # noqa: S311 - reproducible fuzzing, not a secret
            ctx = FuzzContext(
                client_id=cid,
                roster=tuple(ids),
                model_hash=ctx0.model_hash,
                model_size=ctx0.model_size,
                chunk_bytes=chunk,
                max_upload_bytes=max_upload,
            )
            channel = secure_channel(address, ca_pem, key_pem, cert_pem)
            try:
                while not dead.is_set():
                    with case_lock:
                        if next(next_case, None) is None:
                            return
                    case = generate_case(rng, ctx)
                    while opts.decodable_only and not decodable(case):
                        case = generate_case(rng, ctx)
                    outcome = send_case(channel, case, opts.rpc_timeout_s)
                    tally.add(case, outcome)
                    if outcome.verdict == "refused-stream":
                        # This connection refuses every new stream (see REFUSED_STREAM in the module
                        # docstring): go on fuzzing on a new one, as a real client would reconnect.
                        channel.close()
                        channel = secure_channel(address, ca_pem, key_pem, cert_pem)
                        with tally.lock:
                            tally.reconnects += 1
                    elif outcome.status == "UNAVAILABLE" and not fed.server.alive():  # type: ignore[union-attr]
                        dead.set()
            finally:
                channel.close()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(opts.workers)]
        fuzz_started = time.monotonic()
        for t in threads:
            t.start()
        last_report = time.monotonic()
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            if not fed.server.alive():
                dead.set()
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                rss = samples[-1][1] if samples else float("nan")
                log_progress(
                    opts.progress,
                    t0,
                    f"{tally.cases}/{opts.messages} cases ({tally.messages} messages), "
                    f"crashes {tally.verdicts['crash']}, unclear {tally.verdicts['unclear']}, server RSS {rss:.0f} MB",
                )
        for t in threads:
            t.join()
        stop.set()
        watcher.join()
        fuzz_s = time.monotonic() - fuzz_started
        server_alive = fed.server.alive()
        final_rss = rss_mb(pid)
        if not server_alive:
            problems.append(
                f"the server died during fuzzing (exit {fed.server.returncode}); see {layout.log('server')}"
            )
        elif opts.final_round:
            log_progress(opts.progress, t0, "fuzzing done; honest clients now run the round")
            honest = {cid: fed.start_client(cid) for cid in ids}
            deadline = time.monotonic() + 180
            while fed.server.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if fed.server.alive():
                problems.append("the closing round did not finish within 180 s")
            for proc in honest.values():  # they heard "finished" before the server left
                proc.wait(max(0.0, min(10.0, deadline - time.monotonic())))
            closing = _closing_round(layout, fed, honest, problems)
    finally:
        for proc in [*honest.values(), *fed.server_runs]:
            proc.stop(grace_s=2.0)
    audit = state_check(layout.state_db)
    if not audit.get("ok"):
        problems.extend(f"state database: {p}" for p in audit.get("problems", []))
    log_text = (
        layout.log("server").read_text(encoding="utf-8", errors="replace")
        if layout.log("server").exists()
        else ""
    )
    tracebacks = log_text.count("Traceback (most recent call last)") + log_text.count(
        "Exception calling application"
    )
    crashes = tally.verdicts["crash"] + (0 if server_alive else 1)
    memory = _memory(samples, baseline, final_rss, opts)
    undecodable = tally.undecodable
    memory["undecodable_requests"] = undecodable
    if undecodable and memory.get("growth_mb") is not None:
        memory["kb_per_undecodable_request"] = round(memory["growth_mb"] * 1024 / undecodable, 2)
    if not memory["bounded"]:
        problems.append(
            f"server RSS grew by {memory['growth_mb']:.0f} MB after warm-up (limit {opts.max_rss_growth_mb} MB)"
        )
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in the server log")
    if tally.verdicts["unclear"]:
        problems.append(f"{tally.verdicts['unclear']} answers without a clear status")
    if tally.verdicts["refused-stream"]:
        problems.append(
            f"{tally.verdicts['refused-stream']} calls met a connection that refuses new streams "
            f"({tally.reconnects} reconnects): grpcio does not release the stream of an undecodable request"
        )
    return {
        "benchmark": "fuzz",
        "ok": crashes == 0 and not problems,
        "cases": tally.cases,
        "messages": tally.messages,
        "rpcs_per_s": round(tally.cases / fuzz_s, 1),
        "messages_per_s": round(tally.messages / fuzz_s, 1),
        "fuzz_s": round(fuzz_s, 1),
        "crashes": crashes,
        "server_died": not server_alive,
        "unclear": tally.verdicts["unclear"],
        "clear": tally.verdicts["clear"],
        "refused_streams": tally.verdicts["refused-stream"],
        "reconnects": tally.reconnects,
        "uploads_accepted": tally.accepted,
        "server_log_tracebacks": tracebacks,
        "by_method": dict(tally.by_method),
        "forms": dict(sorted(tally.forms.items())),
        "upload_acks": dict(tally.acks.most_common()),
        "statuses": dict(sorted(tally.statuses.items())),
        "examples": tally.examples,
        "memory": memory,
        "integrity": {"ok": bool(audit.get("ok")), "problems": audit.get("problems", [])},
        "attempts_aborted_during_fuzzing": len(audit.get("aborted_attempts", [])),
        "closing_round": closing,
        "identities": [i[0] for i in identities],
        "workers": opts.workers,
        "seed": opts.seed,
        "decodable_only": opts.decodable_only,
        "limits": {
            "max_upload_bytes": max_upload,
            "chunk_bytes": chunk,
            "grpc_message_limit": chunk + 64 * 1024,
        },
        "problems": problems,
        "wall_s": round(time.monotonic() - t0, 1),
        "workdir": str(layout.out) if opts.workdir is not None else None,
    }


def _kit_identity(kit: Path, cid: str) -> tuple[str, bytes, bytes]:
    from secfed.pki.kit import load_kit

    loaded = load_kit(kit)
    return cid, loaded.key_path.read_bytes(), loaded.cert_path.read_bytes()


def _context(
    address: str, ca_pem: bytes, identity: tuple[str, bytes, bytes], max_upload: int, chunk: int
) -> FuzzContext:
    """Ask the server, as a roster member, for the current model (so Download cases can name it)."""
    cid, key_pem, cert_pem = identity
    with secure_channel(address, ca_pem, key_pem, cert_pem) as channel:
        poll = channel.unary_unary(_SERVICE + "Poll")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ins = pb.Instruction.FromString(poll(pb.PollRequest().SerializeToString(), timeout=10))
            except grpc.RpcError:
                time.sleep(0.2)
                continue
            if ins.WhichOneof("step") == "round_start":
                ref = ins.round_start.global_model
                return FuzzContext(
                    cid,
                    model_hash=bytes(ref.hash),
                    model_size=int(ref.size_bytes),
                    chunk_bytes=chunk,
                    max_upload_bytes=max_upload,
                )
            time.sleep(0.1)
    return FuzzContext(cid, chunk_bytes=chunk, max_upload_bytes=max_upload)


def _memory(
    samples: Sequence[tuple[int, float]], baseline: float | None, final: float | None, opts: FuzzOptions
) -> dict[str, Any]:
    """RSS after warm-up (the first 10 % of the cases) vs the peak and the end: growth must stay bounded."""
    if not samples:
        note = "run too short to sample" if final is not None else "RSS not available on this platform"
        return {
            "bounded": True,
            "note": note,
            "baseline_mb": None if baseline is None else round(baseline, 1),
            "final_mb": None if final is None else round(final, 1),
        }
    warm = [v for n, v in samples if n >= opts.messages // 10] or [samples[-1][1]]
    after_warmup = warm[0]
    peak = max(v for _, v in samples)
    half = [(n, v) for n, v in samples if n >= opts.messages // 2]
    slope = None
    if len(half) >= 2 and half[-1][0] > half[0][0]:
        slope = round((half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) * 10_000, 3)
    growth = peak - after_warmup
    return {
        "bounded": growth <= opts.max_rss_growth_mb,
        "baseline_mb": None if baseline is None else round(baseline, 1),
        "after_warmup_mb": round(after_warmup, 1),
        "peak_mb": round(peak, 1),
        "final_mb": None if final is None else round(final, 1),
        "growth_mb": round(growth, 1),
        "second_half_mb_per_10k_cases": slope,
        "samples": len(samples),
    }


def _closing_round(
    layout: RunLayout, fed: ProcessFederation, honest: dict[str, ChildProcess], problems: list[str]
) -> dict[str, Any]:
    """The round honest clients ran after the fuzzing: completed, with the plaintext sum."""
    records = read_rounds_log(layout.rounds_log)
    check = plaintext_check("toy-mean", records, {"dim": 16})
    reason = fed.finished_reason()
    if len(records) != 1 or check.get("status") != "ok":
        problems.append(f"the closing round failed: {reason}; {check.get('problems')}")
    return {
        "ran": True,
        "completed": len(records) == 1,
        "finished_reason": reason,
        "contributors": records[0].get("contributors") if records else None,
        "sum_ok": check.get("status") == "ok",
        "max_abs_error": (check.get("rounds") or [{}])[0].get("max_abs_error"),
        "client_exit_codes": {cid: p.returncode for cid, p in honest.items()},
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fuzz", help="random and mutated protobufs at every gRPC handler of a live server")
    p.add_argument(
        "--messages", type=int, default=100_000, help="fuzzed RPCs (cases) to send (default 100000)"
    )
    p.add_argument("--workers", type=int, default=8, help="concurrent fuzzing connections (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    p.add_argument("--max-rss-growth", type=float, default=256.0, metavar="MB", help="memory bound (256)")
    p.add_argument(
        "--decodable-only",
        action="store_true",
        help="only requests that parse as their message type (skips what gRPC itself refuses)",
    )
    p.add_argument("--workdir", type=Path, help="keep the run directory here (default: a temporary one)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    stop_children_on_sigterm()
    opts = FuzzOptions(
        messages=args.messages,
        workers=args.workers,
        seed=args.seed,
        max_rss_growth_mb=args.max_rss_growth,
        decodable_only=args.decodable_only,
        workdir=args.workdir,
        progress=not args.quiet,
    )
    result = run_fuzz(opts)
    if not emit(result, args.out, args.json):
        mem = result["memory"]
        print(
            f"fuzz: {result['cases']} RPCs ({result['messages']} messages) in {result['fuzz_s']:.0f} s "
            f"({result['rpcs_per_s']:.0f} RPC/s): crashes {result['crashes']}, unclear {result['unclear']}"
        )
        print(
            f"  server RSS {mem.get('after_warmup_mb', mem.get('baseline_mb'))} MB after warm-up, peak "
            f"{mem.get('peak_mb', mem.get('final_mb'))} MB; "
            f"state database {'ok' if result['integrity']['ok'] else 'FAILED'}; closing round "
            f"{'ok' if result['closing_round'].get('sum_ok') else 'FAILED'}"
        )
        for problem in result["problems"]:
            print(f"  problem: {problem}")
        print("OK" if result["ok"] else "FAILED")
    return 0 if result["ok"] else 1
