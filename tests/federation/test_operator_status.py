"""``secfed status --operator KIT``: an operator asks a running coordinator over mutual TLS.

Against a real loopback coordinator with real TLS: the operator sees the state database's view plus
what only the process knows (the open phase and its deadline, the cohort, whom it waits for, who was
last heard from when), mid-round and after a restart. The certificate roles do not mix: an
institution's certificate cannot read the status (an institution must not learn who else is slow or
refused), an operator's cannot take part in the federation (it could otherwise join rounds as a
member), and a revoked operator is refused without a server restart.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.channel import CoordinatorLink
from client.operator_status import RemoteStatusError, fetch_status
from secfed import cli
from secfed.pki.files import crl_pem, load_ca, load_crl, write_public
from secfed.pki.issue import revoke
from secfed.pki.kit import load_kit
from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
from server.runtime import FederationServer
from tests.federation import rawclient as rc
from tests.federation.support import Federation, start_federation

pytestmark = pytest.mark.timeout(120)


def _operator_kit(fed: Federation, tmp: Path, name: str = "ops") -> Path:
    out = tmp / f"operator-{name}"
    args = ["certs", "issue", "--ca", str(fed.pki / "ca"), "--operator", name]
    assert cli.main([*args, "--server-address", fed.address, "--out", str(out)]) == 0
    return out


def _status_json(kit: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    capsys.readouterr()
    assert cli.main(["status", "--operator", str(kit), "--json", *extra]) == 0
    document = json.loads(capsys.readouterr().out)
    assert isinstance(document, dict)
    return document


def _live(fed: Federation) -> dict[str, Any]:
    """The coordinator's live view read in-process (waiting on it spends no operator's rate limit)."""
    with fed.server.service._lock:
        return fed.server.coordinator.live_view()


def _until(condition: Any, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


def test_an_operator_sees_the_live_round_and_after_a_restart_the_aborted_attempt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = start_federation(tmp_path, 3, rounds=2, phase_timeout_s=60.0)
    kit = _operator_kit(fed, tmp_path)
    try:
        fed.start_client("inst00")  # the others never come: round 0 stays open, waiting for them
        _until(lambda: _live(fed)["open"]["waiting_for"] == ["inst01", "inst02"])  # inst00's advert is in
        doc = _status_json(kit, capsys)
        live = doc["live"]
        assert doc["run_id"] and doc["rounds_completed"] == 0 and doc["rounds_planned"] == 2
        assert doc["open_attempt"]["round"] == 0  # from the state database
        assert live["open"]["round"] == 0 and live["open"]["attempt"] == 1
        assert live["open"]["phase"] == "advertise"
        assert live["open"]["cohort"] == ["inst00", "inst01", "inst02"]
        assert live["open"]["waiting_for"] == ["inst01", "inst02"] and "inst00" in live["last_seen_s_ago"]
        assert live["joined"] == ["inst00"] and live["finished"] is None
        assert 0 < live["open"]["deadline_s"] <= 60.0  # inst00 polled: the phase deadline runs
        capsys.readouterr()
        assert cli.main(["status", "--operator", str(kit)]) == 0
        text = capsys.readouterr().out
        assert "live (from the coordinator):" in text and "phase advertise" in text
        assert "cohort (3): inst00, inst01, inst02" in text and "last heard from: inst00" in text
    finally:
        fed.server.stop()
    restarted = FederationServer.start(fed.server.config)
    try:
        address = f"127.0.0.1:{restarted.port}"  # a new port: the kit's address is overridden
        doc = _status_json(kit, capsys, "--server", address)
        assert doc["aborted_attempts"] == 1
        assert doc["recent_aborts"][0]["reason"] == "server restarted mid-round"
        assert doc["live"]["open"]["attempt"] == 2 and doc["live"]["joined"] == []
        assert doc["live"]["open"]["deadline_s"] is None  # nobody has polled the new process yet
    finally:
        restarted.stop()


def test_certificate_roles_do_not_mix_and_a_revoked_operator_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = start_federation(tmp_path, 3, rounds=1, phase_timeout_s=60.0)
    kit_dir = _operator_kit(fed, tmp_path)
    operator = load_kit(kit_dir)
    institution = load_kit(fed.pki / "clients" / "inst01")
    try:
        # An institution's certificate never reads the status, even bypassing the client-side check.
        with CoordinatorLink(institution, fed.address) as link:
            error = rc.rpc_error(
                lambda: pb_grpc.OperatorStub(link.channel).Status(  # type: ignore[no-untyped-call]
                    pb.StatusRequest(), timeout=10
                )
            )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "operator certificate refused (no-operator-uri)" in (error.details() or "")
        with pytest.raises(RemoteStatusError, match="this is a client kit"):
            fetch_status(institution, fed.address)
        # An operator's certificate never takes part in the federation.
        with CoordinatorLink(operator, fed.address) as link:
            s = pb_grpc.FederationStub(link.channel)  # type: ignore[no-untyped-call]
            for call in (lambda: rc.join(s), lambda: rc.poll(s), lambda: rc.heartbeat(s)):
                error = rc.rpc_error(call)
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "(no-client-uri)" in (error.details() or ""), error.details()
        assert fetch_status(operator, fed.address)["live"]["joined"] == []  # it was never counted
        # Revoked: refused from the next call on, without restarting the coordinator, even when the new
        # CRL is copied in with the old file's timestamp kept (cp -p, rsync -t): not the mtime alone
        # tells the server that its CRL changed.
        ca = load_ca(fed.pki / "ca")
        crl = revoke(
            ca, [operator.identity.certificate.serial_number], previous=load_crl(fed.pki / "ca" / "crl.pem")
        )
        server_crl = fed.pki / "server" / "crl.pem"
        old = server_crl.stat()
        write_public(server_crl, crl_pem(crl))
        os.utime(server_crl, ns=(old.st_atime_ns, old.st_mtime_ns))
        with pytest.raises(
            RemoteStatusError, match=r"PERMISSION_DENIED: operator certificate refused \(revoked\)"
        ):
            fetch_status(operator, fed.address)
        capsys.readouterr()
        assert cli.main(["status", "--operator", str(kit_dir)]) == 2
        err = capsys.readouterr().err
        assert "revoked" in err and "Traceback" not in err
    finally:
        fed.server.stop()


def test_operator_status_needs_an_address_and_only_takes_server_with_operator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    assert cli.main(["certs", "init-ca", "--out", str(pki)]) == 0
    assert (
        cli.main(["certs", "issue", "--ca", str(pki), "--operator", "ops", "--out", str(tmp_path / "ops")])
        == 0
    )
    capsys.readouterr()
    assert cli.main(["status", "--operator", str(tmp_path / "ops")]) == 2
    assert "records no server_address; pass --server HOST:PORT" in capsys.readouterr().err
    assert cli.main(["status", "--operator", str(tmp_path / "ops"), "--server", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err  # nothing listens there: said plainly, not as gRPC's forwarder detail
    assert "127.0.0.1:1: cannot reach the coordinator (unreachable:" in err and "grpc.sock" not in err
    assert cli.main(["status", "--state", str(tmp_path / "x.sqlite"), "--server", "127.0.0.1:1"]) == 2
    assert "--server only applies with --operator" in capsys.readouterr().err


def test_operators_cannot_slow_the_rounds_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: one operator certificate (or several) firing Status calls, each of which reads the whole
    state database, to starve the institutions' RPCs. Each operator is rate-limited, and however many
    ask, the document is computed at most once per cache period and reused."""
    import server.operator as operator_module

    reads: list[Path] = []
    from server.status import read_status as real

    def counted(path: Path, **kw: Any) -> Any:
        reads.append(path)
        return real(path, **kw)

    monkeypatch.setattr(operator_module, "read_status", counted)
    # No refill and no expiry during the test, however slow the machine: the counts below are exact.
    monkeypatch.setattr(operator_module, "OPERATOR_RATE_PER_S", 1e-9)
    monkeypatch.setattr(operator_module, "_MIN_CACHE_S", 3600.0)
    fed = start_federation(tmp_path, 3, rounds=1, phase_timeout_s=60.0)
    first, second = load_kit(_operator_kit(fed, tmp_path, "a")), load_kit(_operator_kit(fed, tmp_path, "b"))
    try:
        answers = [fetch_status(first, fed.address) for _ in range(operator_module.OPERATOR_BURST)]
        with pytest.raises(RemoteStatusError, match="RESOURCE_EXHAUSTED: operator 'a': rate limit exceeded"):
            fetch_status(first, fed.address)
        answers.append(fetch_status(second, fed.address))  # another operator has its own allowance
        assert len(reads) == 1  # one computation served all six
        assert all(a == answers[0] for a in answers)
    finally:
        fed.server.stop()
