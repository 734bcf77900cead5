"""Hostile and mistaken peers over real loopback gRPC with real mutual TLS: each is refused, clearly.

One server runs for the whole module (roster inst00..inst04). Each test connects with credentials it
chooses -- none, another CA's, revoked, expired, outside the roster, a certificate that is not the
advert's -- and checks both that the call fails and *where* and *why* it fails. The last test runs a
real round on the same server: the refusals must not have harmed it.

Two layers refuse clients: gRPC's TLS stack (require_client_auth against the consortium CA; it knows
the chain and validity dates, but not our CRL, roster or SAN policy), which surfaces as UNAVAILABLE
because no connection is ever established; and ``server.auth.PeerAuthenticator``, which re-verifies
the peer certificate with the full policy and answers PERMISSION_DENIED with a reason. The CRL is
re-read when its file changes, so revocation (and a CRL the server cannot read) is tested live.

inst04 is the institution whose certificate gets revoked, so the closing round runs without it: its
absence costs one advertise deadline (``phase_timeout_s``), which is kept short for that reason, and
``max_attempts`` is large so that the idle attempts that time out while the refusal tests run do not
end the federation before the closing round.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.tls import ServerRefused, verify_server
from secfed.pki.files import load_ca, load_crl
from secfed.pki.issue import create_ca, issue_client, revoke
from secfed.pki.kit import load_kit
from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
from secfed.secagg.client import ClientSession
from secfed.secagg.messages import AdvertiseKeys
from secfed.wire import chunks, convert
from tests.federation import rawclient as rc
from tests.federation.support import Federation, check_plaintext_sums, rounds_log

pytestmark = pytest.mark.timeout(120)

N_CLIENTS = 5
REVOKED = "inst04"
LEGIT = ("inst00", "inst01", "inst02", "inst03")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = rc.federation(
        tmp_path_factory.mktemp("security"), N_CLIENTS, rounds=1, phase_timeout_s=3.0, max_attempts=1000
    )
    yield federation
    federation.server.stop()  # idempotent: the closing round may already have stopped it


@pytest.fixture(scope="module")
def ca_pem(fed: Federation) -> bytes:
    return (fed.pki / "ca" / "ca.pem").read_bytes()


def assert_legit_client_joins(fed: Federation, client_id: str = "inst00") -> None:
    """The server is still healthy after a refusal: a real kit joins and is told its own id."""
    with rc.kit_channel(fed, client_id) as chan:
        assert rc.join(rc.stub(chan)).client_id == client_id


def assert_tls_refused(error: grpc.RpcError) -> None:
    # No HTTP/2 connection is ever set up, so no status from the servicer can be involved: the
    # client sees the closed socket as UNAVAILABLE.
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())


# -- the TLS layer ---------------------------------------------------------------------------------


def test_no_client_certificate_fails_the_handshake(fed: Federation, ca_pem: bytes) -> None:
    with rc.channel(fed.address, ca_pem) as chan:
        assert_tls_refused(rc.rpc_error(lambda: rc.join(rc.stub(chan))))
        assert_tls_refused(rc.rpc_error(lambda: rc.poll(rc.stub(chan))))
    assert_legit_client_joins(fed)


def test_certificate_from_another_ca_fails_the_handshake(fed: Federation, ca_pem: bytes) -> None:
    # A look-alike: same client id as a roster member, but minted by a CA the consortium never pinned.
    impostor = issue_client(create_ca("impostor CA"), "inst00")
    with rc.identity_channel(fed.address, ca_pem, impostor) as chan:
        assert_tls_refused(rc.rpc_error(lambda: rc.join(rc.stub(chan))))
    assert_legit_client_joins(fed)


def test_expired_certificate_is_refused(fed: Federation, ca_pem: bytes) -> None:
    ca = load_ca(fed.pki / "ca")
    now = datetime.now(UTC)
    expired = issue_client(
        ca, "inst02", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    with rc.identity_channel(fed.address, ca_pem, expired) as chan:
        error = rc.rpc_error(lambda: rc.join(rc.stub(chan)))
    # gRPC's TLS stack (BoringSSL) checks validity dates itself and aborts the handshake with
    # "certificate has expired", so in practice this is UNAVAILABLE and PeerAuthenticator never runs.
    # Should a gRPC build ever let it through, the authenticator's own check must refuse it instead.
    if error.code() == grpc.StatusCode.PERMISSION_DENIED:
        assert "expired" in error.details(), error.details()
    else:
        assert_tls_refused(error)
    assert_legit_client_joins(fed, "inst02")


# -- the authenticator: CRL, roster ----------------------------------------------------------------


def test_revoked_client_is_refused_without_a_server_restart(fed: Federation) -> None:
    with rc.kit_channel(fed, REVOKED) as chan:
        assert rc.join(rc.stub(chan)).client_id == REVOKED  # valid until the CRL says otherwise

    ca = load_ca(fed.pki / "ca")
    serial = load_kit(fed.pki / "clients" / REVOKED).identity.certificate.serial_number
    crl = revoke(ca, [serial], previous=load_crl(fed.pki / "ca" / "crl.pem"))
    rc.publish_crl(fed.pki / "ca" / "crl.pem", crl)  # the CA's published list ...
    rc.publish_crl(fed.pki / "server" / "crl.pem", crl)  # ... deployed to the running server

    with rc.kit_channel(fed, REVOKED) as chan:
        s = rc.stub(chan)
        for call in (lambda: rc.join(s), lambda: rc.poll(s), lambda: rc.heartbeat(s)):
            error = rc.rpc_error(call)
            # TLS still succeeds (gRPC does not know the CRL); the authenticator refuses.
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
            assert "revoked" in error.details(), error.details()
    assert_legit_client_joins(fed)


@contextmanager
def broken_server_crl(fed: Federation) -> Iterator[None]:
    """The server's CRL file half-written -- what a plain ``cp new.pem crl.pem`` looks like to a
    reader mid-copy -- and then the previous CRL put back, whatever happens in between."""
    path = fed.pki / "server" / "crl.pem"
    good = path.read_bytes()
    rc.publish_crl(path, good[: len(good) // 2])
    try:
        yield
    finally:
        rc.publish_crl(path, good)


def test_broken_server_crl_fails_closed_and_recovers(fed: Federation) -> None:
    with broken_server_crl(fed), rc.kit_channel(fed, "inst00") as chan:
        # Without usable revocation data nobody may pass, not even a valid roster member.
        rc.rpc_error(lambda: rc.join(rc.stub(chan)))
    assert_legit_client_joins(fed)  # the CRL is read again once it is whole: no restart needed


def test_broken_server_crl_is_refused_with_a_deliberate_status(fed: Federation) -> None:
    with broken_server_crl(fed), rc.kit_channel(fed, "inst00") as chan:
        error = rc.rpc_error(lambda: rc.join(rc.stub(chan)))
        assert error.code() != grpc.StatusCode.UNKNOWN, error.details()
        assert "CRL" in error.details(), error.details()


def test_valid_certificate_outside_the_roster_is_refused(fed: Federation, ca_pem: bytes) -> None:
    intruder = issue_client(load_ca(fed.pki / "ca"), "intruder")
    with rc.identity_channel(fed.address, ca_pem, intruder) as chan:
        s = rc.stub(chan)
        for call in (lambda: rc.join(s), lambda: rc.poll(s)):
            error = rc.rpc_error(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
            assert "not in this federation's roster" in error.details(), error.details()
    assert_legit_client_joins(fed)


# -- the coordinator: an advert must belong to the TLS peer ---------------------------------------


def _session_for(fed: Federation, client_id: str, instruction: pb.Instruction) -> ClientSession:
    """A SecAgg client session of ``client_id``'s real identity for the round the server announced."""
    kit = load_kit(fed.pki / "clients" / client_id)
    config = convert.session_config_from_proto(instruction.round_start.session)
    inputs = {seg.name: np.zeros(seg.length) for seg in config.spec.segments}
    return ClientSession(
        identity=kit.identity, trust=kit.trust, config=config, model_hash=config.model_hash, inputs=inputs
    )


def _upload_advert(
    s: pb_grpc.FederationStub, instruction: pb.Instruction, advert: AdvertiseKeys
) -> pb.UploadAck:
    kind, payload = convert.envelope_to_bytes(advert)
    parts = chunks.split_upload(
        kind, b"", advert.round, payload, 4096, instruction_id=instruction.instruction_id
    )
    return rc.upload(s, parts)


def test_advert_must_carry_the_tls_peers_certificate(fed: Federation) -> None:
    with rc.kit_channel(fed, "inst00") as chan:
        s = rc.stub(chan)
        instruction = rc.poll_round_start(s)
        theirs = _session_for(fed, "inst01", instruction)
        mine = _session_for(fed, "inst00", instruction)
        try:
            # inst01's genuine, correctly signed advert, replayed over inst00's connection.
            their_advert = theirs.advertise()
            ack = _upload_advert(s, instruction, their_advert)
            assert not ack.ok
            assert "claims sender 'inst01'" in ack.error_message or "TLS peer" in ack.error_message, ack

            # inst00's own advert (its id, signed with its key) wearing inst01's certificate chain.
            forged = dataclasses.replace(mine.advertise(), cert_chain=their_advert.cert_chain)
            ack = _upload_advert(s, instruction, forged)
            assert not ack.ok
            assert "TLS peer" in ack.error_message, ack
            assert ack.error_type == "MalformedInputError", ack
        finally:
            theirs.abandon()
            mine.abandon()
    assert_legit_client_joins(fed)


# -- the client side: a revoked coordinator ---------------------------------------------------------


def test_client_refuses_a_revoked_server_certificate(fed: Federation, tmp_path: Path) -> None:
    # A copy of a client kit, so the institutions of the closing round keep trusting the server.
    kit_dir = tmp_path / "inst03-copy"
    shutil.copytree(fed.pki / "clients" / "inst03", kit_dir)
    verify_server(load_kit(kit_dir), fed.address)  # trusted while the CRL is clean

    ca = load_ca(fed.pki / "ca")
    server_serial = load_kit(fed.pki / "server").identity.certificate.serial_number
    rc.publish_crl(kit_dir / "crl.pem", revoke(ca, [server_serial]))
    with pytest.raises(ServerRefused, match="revoked"):
        verify_server(load_kit(kit_dir), fed.address)


# -- and the server is none the worse -------------------------------------------------------------


def test_legit_clients_still_complete_a_round(fed: Federation) -> None:
    """Runs last in this module: after every refusal above, a real round completes correctly."""
    assert rc.finish_round(fed, LEGIT) == "completed 1 rounds"
    [record] = rounds_log(fed)
    # Threshold 4 of the 5-member cohort: an attempt completes only with all four legit clients.
    assert record["contributors"] == list(LEGIT)
    check_plaintext_sums([record])
