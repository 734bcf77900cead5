"""Clients that crash and restart: a new incarnation never gets back into the session already running.

A crashed client process loses every key of its session with it. When the institution restarts it
(same kit, same identity, a new process with an empty memory) while the round is still running, the
server must keep the new incarnation out of that session -- it may not re-advertise, and it is never
handed the session's RoundStart again -- and the round must end exactly as it would without the
restart: completed with the right sum if enough of the others answer, aborted cleanly otherwise. From
the next round (or attempt) on the new incarnation takes part like any other client.

Crashes are simulated in-process (an exception no handler of the runtime catches, raised just before
the upload of the chosen phase, where ``secfed client --fault kill@R:P`` SIGKILLs the process); the
process-level version of a crash at each phase, without a restart, is tests/harness/test_simulate.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from secfed.pki.kit import load_kit
from secfed.secagg.client import ClientSession
from secfed.secagg.errors import UPLOAD_PHASES, Phase
from secfed.wire import chunks, convert
from server.config import Limits
from server.runtime import FederationServer
from server.state import StateStore
from tests.federation import rawclient as rc
from tests.federation.support import check_plaintext_sums, provision_kits, rounds_log, server_config
from tests.reliability.support import (
    Hook,
    RecordingRuntime,
    SimulatedCrash,
    crash_at,
    free_port,
    join_all,
    run_client,
    start,
    wait_finished,
)

pytestmark = pytest.mark.timeout(90)

VICTIM = "inst04"
OTHERS = ("inst00", "inst01", "inst02", "inst03")


@pytest.mark.parametrize("phase", UPLOAD_PHASES, ids=lambda p: p.value)
def test_restarted_client_stays_out_of_the_running_session(tmp_path: Path, phase: Phase) -> None:
    # 5 clients, threshold 4: the round survives the one crash. A short phase timeout, because the
    # phase after the crash waits for its deadline (the dead incarnation never answers it).
    fed = rc.federation(tmp_path, 5, rounds=2, phase_timeout_s=3.0)
    others = [start(fed, cid) for cid in OTHERS]
    first = start(fed, VICTIM, fault=crash_at(0, phase))
    assert first.done.wait(30), "the first incarnation did not reach its crash point"
    assert isinstance(first.error, SimulatedCrash)
    # The institution restarts it at once: same kit, a runtime that remembers nothing.
    second = start(fed, VICTIM, runtime_class=RecordingRuntime)
    assert wait_finished(fed, [*others, second]) == "completed 2 rounds"
    join_all([*others, second])

    r0, r1 = rounds_log(fed)
    check_plaintext_sums([r0, r1])  # exact sums, whoever contributed
    assert second.report is not None and second.report.violations == []
    joined_round_0 = 0 in second.report.rounds_joined
    if phase is Phase.ADVERTISE:
        # Died before its advert was sent: the session never held anything of the first incarnation,
        # so the second may take the place with fresh keys, if it starts before the phase closes.
        assert (VICTIM in r0["contributors"]) == joined_round_0
    else:
        # Its advert was in the session: the second incarnation is never handed that session's
        # RoundStart again, and nothing it could send would be accepted (no keys for it).
        assert not joined_round_0
        assert [ins.round_start.round for ins in second.runtime.round_starts] == [1]  # type: ignore[attr-defined]
        contributed = phase in (Phase.CONSISTENCY, Phase.UNMASK)  # its masked input was already in
        assert (VICTIM in r0["contributors"]) == contributed
        assert r0["dropped"] == ([VICTIM] if phase in (Phase.COMPUTE, Phase.MASKED_INPUT) else [])
        assert set(r0["contributors"]) - {VICTIM} == set(OTHERS)
    # ... and it takes part again from the next round on.
    assert VICTIM in r1["contributors"] and 1 in second.report.rounds_completed
    with StateStore(fed.server.config.state_db) as store:
        assert store.integrity_check() == []


def test_second_incarnation_cannot_re_advertise_while_advertise_is_open(tmp_path: Path) -> None:
    """The window in which a new incarnation could try hardest: its predecessor's advert is accepted,
    and the advertise phase is still open (another client is slow). A fresh advert -- new keys, the same
    identity, correctly signed -- must be refused, and the round goes on without the dead client."""
    fed = rc.federation(tmp_path, 4, limits=Limits(long_poll_s=0.5), rounds=1, phase_timeout_s=3.0)
    release = threading.Event()

    def slow(round_: int, phase: Phase) -> None:
        if phase is Phase.ADVERTISE:
            release.wait(20)  # holds the advertise phase open

    victim_fault = crash_at(0, Phase.SHARE_KEYS)
    victim = start(fed, "inst03", fault=victim_fault, runtime_class=RecordingRuntime)
    slowpoke = start(fed, "inst02", fault=Hook(slow))
    others = [start(fed, cid) for cid in ("inst00", "inst01")]
    try:
        recorder = victim.runtime
        assert isinstance(recorder, RecordingRuntime)
        assert recorder.acked_event.wait(20) and recorder.acked == [(0, Phase.ADVERTISE)]
        round_start = recorder.round_starts[0]

        with rc.kit_channel(fed, "inst03") as chan:
            s = rc.stub(chan)
            # A new incarnation polls: the running session's RoundStart is not handed out again.
            assert rc.poll(s).WhichOneof("step") == "wait"
            kit = load_kit(fed.pki / "clients" / "inst03")
            config = convert.session_config_from_proto(round_start.round_start.session)
            fresh = ClientSession(
                identity=kit.identity,
                trust=kit.trust,
                config=config,
                model_hash=config.model_hash,
                inputs={seg.name: np.zeros(seg.length) for seg in config.spec.segments},
            )
            try:
                advert = fresh.advertise()
                kind, payload = convert.envelope_to_bytes(advert)
                ack = rc.upload(s, chunks.split_upload(kind, b"", 0, payload, 4096))
            finally:
                fresh.abandon()
        assert not ack.ok and "duplicate advert" in ack.error_message, ack
        assert ack.error_type == "MalformedInputError"
    finally:
        release.set()
    assert wait_finished(fed, [slowpoke, *others]) == "completed 1 rounds"
    join_all([slowpoke, *others])
    assert isinstance(victim.error, SimulatedCrash)
    [record] = rounds_log(fed)
    assert record["contributors"] == ["inst00", "inst01", "inst02"]
    check_plaintext_sums([record])


def test_client_started_before_the_server_waits_for_it(tmp_path: Path) -> None:
    """Institutions may start while the coordinator is (re)starting: they wait, they do not exit.

    gRPC calls are retried on UNAVAILABLE, but the certificate check the client makes before opening
    its channel (client.tls.verify_server) used to fail at once with "connection refused".
    """
    pki = provision_kits(tmp_path, 3)
    roster = ("inst00", "inst01", "inst02")
    port = free_port()
    config = replace(server_config(pki, tmp_path / "run", roster, rounds=1), listen=f"127.0.0.1:{port}")
    tried = threading.Semaphore(0)

    def sleep(seconds: float) -> None:
        tried.release()  # the client found no server and backs off
        time.sleep(seconds)

    clients = [run_client(pki, cid, f"127.0.0.1:{port}", sleep=sleep) for cid in roster]
    deadline = time.monotonic() + 30
    found_none = 0
    while found_none < len(roster):  # every client has found no server at least once before it starts
        if tried.acquire(timeout=0.1):
            found_none += 1
            continue
        assert not any(c.error for c in clients), [c.error for c in clients]
        assert time.monotonic() < deadline, "the clients never tried to reach the server"
    server = FederationServer.start(config)
    try:
        deadline = time.monotonic() + 60
        while server.coordinator.finished_reason is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.coordinator.finished_reason == "completed 1 rounds"
        join_all(clients)
    finally:
        server.stop()
    assert all(c.report is not None and c.report.rounds_completed == [0] for c in clients)


def test_client_gives_up_on_a_server_that_never_comes(tmp_path: Path) -> None:
    """Waiting for the server is bounded by the retry policy: then the client stops with a reason."""
    from client.runtime import ClientStopped
    from tests.reliability.support import FAST_RETRY

    pki = provision_kits(tmp_path, 3)
    client = run_client(
        pki, "inst00", f"127.0.0.1:{free_port()}", retry=replace(FAST_RETRY, give_up_after_s=1.0)
    )
    assert client.done.wait(30)
    assert isinstance(client.error, ClientStopped), client.error
    assert "unreachable" in str(client.error) or grpc.StatusCode.UNAVAILABLE.name in str(client.error)
