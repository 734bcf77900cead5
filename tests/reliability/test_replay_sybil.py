"""Replays from older sessions and sybil identities, over real loopback gRPC with mutual TLS.

tests/federation/test_security.py covers who may connect at all: no certificate, another CA's
certificate, an expired or revoked one (on a new connection), a broken CRL, a certificate outside the
roster, and an advert carrying someone else's certificate. These tests cover what an insider or a
wire-tapper could still try once connected:

* **replay**: every upload a client sent in an earlier session -- an earlier round, or an aborted
  earlier attempt of the same round -- sent again over the wire, byte for byte, under the same
  identity, at every phase of the later session (also an old Refusal, which would otherwise count the
  client out of the new round). Each is refused, and the later session completes exactly;
* **clones**: two processes running the same institution at once; only one can be in the session;
* **revocation of a connected client mid-round**: its open connection is refused from the next call
  on, and the round completes without it;
* **a server certificate used as a client certificate** (same CA, wrong key usage).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from client.runtime import ClientStopped
from secfed.pki.files import load_ca, load_crl
from secfed.pki.issue import revoke
from secfed.pki.kit import load_kit
from secfed.proto.v1 import federation_pb2 as pb
from secfed.secagg.errors import UPLOAD_PHASES, Phase
from secfed.wire import chunks, convert
from tests.federation import rawclient as rc
from tests.federation.support import Federation, check_plaintext_sums, rounds_log
from tests.reliability.support import Hook, RecordingRuntime, Running, Upload, join_all, start, wait_finished

pytestmark = pytest.mark.timeout(120)

ALL = ("inst00", "inst01", "inst02", "inst03")


def replay(fed: Federation, client_id: str, upload: Upload) -> pb.UploadAck:
    """Send a recorded upload again, byte for byte, on a fresh connection with the client's own kit."""
    with rc.kit_channel(fed, client_id) as chan:
        parts = chunks.split_upload(upload.kind, upload.session_id, upload.round, upload.payload, 4096)  # type: ignore[arg-type]
        return rc.upload(rc.stub(chan), parts)


def assert_refused(ack: pb.UploadAck, what: str) -> None:
    assert not ack.ok, f"{what} was accepted"
    assert ack.error_message and ack.error_type, ack


def test_uploads_of_an_earlier_round_are_refused_at_every_phase(tmp_path: Path) -> None:
    fed = rc.federation(tmp_path, 4, rounds=2, phase_timeout_s=3.0)
    refused: list[tuple[Phase, Phase, str]] = []
    errors: list[BaseException] = []

    def replay_round_0(round_: int, phase: Phase) -> None:
        if round_ != 1:
            return
        try:
            recorder = tapped.runtime
            assert isinstance(recorder, RecordingRuntime)
            old = [u for u in recorder.uploads if u.round == 0]
            assert [u.phase for u in old] == list(PHASES), old
            if phase is Phase.ADVERTISE:  # an old refusal would count inst01 out of round 1
                kind, payload = convert.envelope_to_bytes(convert.Refusal(round=0, reason="budget spent"))
                ack = replay(fed, "inst01", Upload(0, Phase.ADVERTISE, int(kind), payload, b""))
                assert_refused(ack, "a round-0 refusal in round 1")
            for upload in old:  # every round-0 message, whatever phase round 1 is in
                ack = replay(fed, "inst01", upload)
                assert_refused(ack, f"the round-0 {upload.phase.value} upload during {phase.value}")
                refused.append((phase, upload.phase, ack.error_type))
        except BaseException as exc:  # reported below: a hook must not kill the client
            errors.append(exc)

    tapped = start(fed, "inst01", runtime_class=RecordingRuntime, fault=Hook(replay_round_0))
    others = [start(fed, cid) for cid in ALL if cid != "inst01"]
    assert wait_finished(fed, [tapped, *others]) == "completed 2 rounds"
    join_all([tapped, *others])
    assert errors == [], errors
    assert len(refused) == len(PHASES) ** 2  # every old message at every new phase
    r0, r1 = rounds_log(fed)
    # The replays changed nothing: inst01's own round-1 messages were all accepted after them.
    assert r0["contributors"] == r1["contributors"] == list(ALL)
    check_plaintext_sums([r0, r1])
    # The session check, not luck, refused them: e.g. the old masked input during the new masked-input
    # phase is "another session", the old advert during the new advertise phase "another round".
    kinds = {(now, old): why for now, old, why in refused}
    assert kinds[(Phase.MASKED_INPUT, Phase.MASKED_INPUT)] == "MalformedInputError"
    assert kinds[(Phase.ADVERTISE, Phase.ADVERTISE)] == "MalformedInputError"


PHASES = UPLOAD_PHASES  # every phase in which a client uploads, the compute phase included


def abort_then_retry(
    fed: Federation, on_retry: Callable[[Phase, list[Upload]], None]
) -> tuple[list[Running], list[BaseException]]:
    """Round 0, attempt 1 aborts: two of four clients stall in the compute phase (below the threshold of
    3), before any masked input left, so the retry may sum the same inputs; attempt 2 is a fresh
    session. Before each of inst01's uploads in attempt 2, ``on_retry(phase, attempt_1_uploads)``
    runs; the stalled clients' own attempt-1 ready notices then arrive, late, in attempt 2. Returns
    the clients and any error raised in the hook."""
    release = threading.Event()
    errors: list[BaseException] = []
    old: list[Upload] = []

    def stall(round_: int, phase: Phase) -> None:
        if phase is Phase.COMPUTE and not release.is_set():
            release.wait(30)

    def hook(round_: int, phase: Phase) -> None:
        recorder = tapped.runtime
        assert isinstance(recorder, RecordingRuntime)
        if len(recorder.round_starts) < 2:
            return  # attempt 1: behave
        if not old:
            old.extend(recorder.uploads[:-1])  # the last one is attempt 2's advert, about to be sent
            release.set()
        try:
            on_retry(phase, list(old))
        except BaseException as exc:  # reported by the test: a hook must not kill the client
            errors.append(exc)

    tapped = start(fed, "inst01", runtime_class=RecordingRuntime, fault=Hook(hook))
    steady = start(fed, "inst00")
    stalled = [
        start(fed, cid, runtime_class=RecordingRuntime, fault=Hook(stall)) for cid in ("inst02", "inst03")
    ]
    clients = [tapped, steady, *stalled]
    try:
        assert wait_finished(fed, clients) == "completed 1 rounds"
    finally:
        release.set()
    join_all(clients)
    [aborted] = fed.server.coordinator.aborted_attempts
    assert aborted[:2] == (0, 1) and "compute" in aborted[2], aborted
    assert [u.phase for u in old] == [Phase.ADVERTISE, Phase.SHARE_KEYS, Phase.COMPUTE], old
    for c in stalled:  # their stale attempt-1 ready notices went out in attempt 2, and were refused
        assert c.report is not None and 0 in c.report.rounds_completed
        recorder = c.runtime
        assert isinstance(recorder, RecordingRuntime)
        assert (0, Phase.COMPUTE) in recorder.acked  # attempt 2's, after the refused stale one
        assert [u.phase for u in recorder.uploads].count(Phase.COMPUTE) == 2
    return clients, errors


def test_uploads_of_an_aborted_attempt_are_refused_in_the_retry(tmp_path: Path) -> None:
    fed = rc.federation(tmp_path, 4, rounds=1, phase_timeout_s=3.0, max_attempts=3)
    refused: list[tuple[Phase, Phase, str]] = []

    def replay_all(phase: Phase, old: list[Upload]) -> None:
        if phase is Phase.ADVERTISE:
            return  # inst01's own advert goes first (see the next test for why)
        for upload in old:
            ack = replay(fed, "inst01", upload)
            assert_refused(ack, f"the attempt-1 {upload.phase.value} upload during {phase.value}")
            refused.append((phase, upload.phase, ack.error_type))

    _, errors = abort_then_retry(fed, replay_all)
    assert errors == [], errors
    assert len(refused) == 5 * 3  # three old uploads at each of the five later phases
    [record] = rounds_log(fed)
    assert record["contributors"] == list(ALL)  # the replays cost nobody their place
    check_plaintext_sums([record])


def test_an_aborted_attempts_advert_is_refused_in_the_retry(tmp_path: Path) -> None:
    fed = rc.federation(tmp_path, 4, rounds=1, phase_timeout_s=3.0, max_attempts=3)

    def replay_advert_first(phase: Phase, old: list[Upload]) -> None:
        if phase is Phase.ADVERTISE:  # before inst01's own attempt-2 advert
            assert_refused(replay(fed, "inst01", old[0]), "the attempt-1 advert in attempt 2")

    _, errors = abort_then_retry(fed, replay_advert_first)
    assert errors == [], errors


def test_two_processes_of_one_institution_cannot_both_be_in_a_session(tmp_path: Path) -> None:
    fed = rc.federation(tmp_path, 4, rounds=1, phase_timeout_s=3.0)
    clones = [start(fed, "inst03"), start(fed, "inst03")]
    others = [start(fed, cid) for cid in ("inst00", "inst01", "inst02")]
    assert wait_finished(fed, [*clones, *others]) == "completed 1 rounds"
    join_all([*clones, *others])
    [record] = rounds_log(fed)
    check_plaintext_sums([record])  # inst03 contributed at most once: else the sum would be off
    assert record["contributors"].count("inst03") <= 1
    joined = [c.report.rounds_completed for c in clones if c.report is not None]
    # One clone went through the round; the other was refused (its advert a duplicate) and waited.
    assert sorted(len(r) for r in joined) == [0, 1], joined


def test_a_client_revoked_mid_round_is_cut_off_on_its_open_connection(tmp_path: Path) -> None:
    fed = rc.federation(tmp_path, 4, rounds=1, phase_timeout_s=3.0)
    revoked = threading.Event()

    def revoke_me(round_: int, phase: Phase) -> None:
        if phase is Phase.SHARE_KEYS and not revoked.is_set():
            # inst03's advert is in the session; now its certificate is revoked and the CRL deployed
            # to the running server. Its next call travels on its already open connection.
            ca = load_ca(fed.pki / "ca")
            serial = load_kit(fed.pki / "clients" / "inst03").identity.certificate.serial_number
            crl = revoke(ca, [serial], previous=load_crl(fed.pki / "ca" / "crl.pem"))
            rc.publish_crl(fed.pki / "server" / "crl.pem", crl)
            revoked.set()

    victim = start(fed, "inst03", fault=Hook(revoke_me))
    others = [start(fed, cid) for cid in ("inst00", "inst01", "inst02")]
    assert wait_finished(fed, others) == "completed 1 rounds"
    join_all(others)
    assert victim.done.wait(30)
    assert isinstance(victim.error, ClientStopped), victim.error
    assert "PERMISSION_DENIED" in str(victim.error) and "revoked" in str(victim.error)
    [record] = rounds_log(fed)
    assert record["contributors"] == ["inst00", "inst01", "inst02"]
    check_plaintext_sums([record])


def test_the_servers_certificate_is_no_client_certificate(tmp_path: Path) -> None:
    fed = rc.federation(tmp_path, 3, rounds=1)
    try:
        server_kit = load_kit(fed.pki / "server")
        with rc.channel(
            fed.address,
            server_kit.ca_path.read_bytes(),
            key_pem=server_kit.key_path.read_bytes(),
            cert_pem=server_kit.cert_path.read_bytes(),
        ) as chan:
            error = rc.rpc_error(lambda: rc.join(rc.stub(chan)))
        # Either the TLS stack refuses it (no clientAuth key usage) or the authenticator does.
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED), error
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            assert "client certificate refused" in error.details(), error.details()
        with rc.kit_channel(fed, "inst00") as chan:  # and the server is fine
            assert rc.join(rc.stub(chan)).client_id == "inst00"
    finally:
        fed.server.stop()
