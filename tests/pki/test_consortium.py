"""Provisioning from a consortium file, and the kit preflight (check_kit)."""

from __future__ import annotations

import shutil
import stat
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secfed.crypto.identity import IdentityError, TrustAnchor
from secfed.pki import (
    ConsortiumError,
    PkiError,
    ProvisionResult,
    check_kit,
    create_ca,
    issue_client,
    issue_server,
    load_ca,
    load_consortium,
    load_kit,
    parse_consortium,
    provision,
    revoke,
    write_kit,
)
from secfed.pki.files import cert_pem, crl_pem, load_crl, write_public
from secfed.pki.kit import KitError

EXAMPLE = Path(__file__).resolve().parents[2] / "certs" / "consortium.example.toml"

CONSORTIUM = """\
name = "Test consortium"
cert_valid_days = 200

[server]
host = "fl.test"
port = 8443
ip_addresses = ["127.0.0.1"]

[[clients]]
id = "hospital-a"
name = "Hospital A"

[[clients]]
id = "hospital-b"

[[clients]]
id = "lab.c_3"
"""

IDS = ["hospital-a", "hospital-b", "lab.c_3"]


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    base = tmp_path_factory.mktemp("prov")
    (base / "consortium.toml").write_text(CONSORTIUM)
    return provision(load_consortium(base / "consortium.toml"), base / "out")


def _copy_kit(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _problems(kit: Path, **kw: datetime) -> str:
    report = check_kit(kit, **kw)
    assert not report.ok, "expected check to find problems"
    return "\n".join(report.problems)


# -- provisioning ---------------------------------------------------------------------------------


def test_provision_layout(provisioned: ProvisionResult) -> None:
    out = provisioned.out
    assert sorted(p.name for p in (out / "clients").iterdir()) == sorted(IDS)
    assert set(provisioned.client_kits) == set(IDS)
    for name in ("ca.pem", "ca.key", "crl.pem"):
        assert (out / "ca" / name).is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")], "staging dir left behind"
    for kit in (provisioned.server_kit, *provisioned.client_kits.values()):
        assert sorted(p.name for p in kit.iterdir()) == [
            "ca.pem",
            "cert.pem",
            "crl.pem",
            "key.pem",
            "kit.toml",
        ]


def test_key_files_are_0600(provisioned: ProvisionResult) -> None:
    keys = [provisioned.ca_dir / "ca.key"] + [
        k / "key.pem" for k in (provisioned.server_kit, *provisioned.client_kits.values())
    ]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_every_kit_passes_check(provisioned: ProvisionResult) -> None:
    for kit in (provisioned.server_kit, *provisioned.client_kits.values()):
        report = check_kit(kit)
        assert report.ok, report.problems
        assert not report.warnings
        assert "fl.test:8443" in report.summary


def test_kits_verify_against_ca(provisioned: ProvisionResult) -> None:
    anchor = TrustAnchor.from_pem(
        (provisioned.ca_dir / "ca.pem").read_bytes(), [(provisioned.ca_dir / "crl.pem").read_bytes()]
    )
    for cid, path in provisioned.client_kits.items():
        kit = load_kit(path)
        assert kit.role == "client" and kit.client_id == cid
        assert kit.server_address == "fl.test:8443"
        assert anchor.verify_client(kit.identity.chain_der()).client_id == cid
        meta = tomllib.loads((path / "kit.toml").read_text())
        assert meta["id"] == cid
    assert load_kit(provisioned.client_kits["hospital-a"]).display_name == "Hospital A"
    server = load_kit(provisioned.server_kit)
    assert server.role == "server" and server.client_id == ""
    for host in ("fl.test", "127.0.0.1"):
        anchor.verify_server(server.identity.chain_der(), hostname=host)
    # Clients' pinned CA is the consortium CA, and they accept the server.
    client = load_kit(provisioned.client_kits["hospital-b"])
    client.trust.verify_server(server.identity.chain_der(), hostname="fl.test")
    server.trust.verify_client(client.identity.chain_der())


def test_provision_refuses_nonempty_out_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(CONSORTIUM)
    consortium = load_consortium(tmp_path / "c.toml")
    out = tmp_path / "out"
    out.mkdir()
    provision(consortium, out)  # empty directory is fine
    old_ca = (out / "ca" / "ca.pem").read_bytes()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(PkiError, match="not empty"):
        provision(consortium, out)
    assert (out / "ca" / "ca.pem").read_bytes() == old_ca
    provision(consortium, out, force=True)
    assert (out / "ca" / "ca.pem").read_bytes() != old_ca
    assert (out / "notes.txt").read_text() == "keep me"
    assert check_kit(out / "clients" / "hospital-a").ok


def test_example_file_is_valid() -> None:
    consortium = load_consortium(EXAMPLE)
    assert [c.id for c in consortium.clients] == ["hospital-a", "hospital-b", "university-c"]
    assert consortium.server.address == "fl.example.org:8443"
    assert "fl.example.org" in consortium.server.dns_names


# -- consortium file validation ---------------------------------------------------------------------


def _errors(tmp_path: Path, text: str) -> str:
    path = tmp_path / "consortium.toml"
    path.write_text(text)
    with pytest.raises(ConsortiumError) as ei:
        load_consortium(path)
    return str(ei.value)


def test_bad_client_id_names_file_and_field(tmp_path: Path) -> None:
    text = CONSORTIUM + '\n[[clients]]\nid = "a b"\n'
    msg = _errors(tmp_path, text.replace('id = "lab.c_3"', 'id = "x"'))
    assert f"{tmp_path / 'consortium.toml'}: clients[3].id: 'a b' is not a valid client id" in msg
    assert "[A-Za-z0-9._-]{1,64}" in msg


def test_duplicate_ids(tmp_path: Path) -> None:
    msg = _errors(tmp_path, CONSORTIUM.replace('id = "lab.c_3"', 'id = "Hospital-A"'))
    assert "consortium.toml: clients[2].id: duplicate client id 'Hospital-A' (also clients[0])" in msg


def test_missing_server(tmp_path: Path) -> None:
    text = 'name = "x"\n[[clients]]\nid = "a"\n'
    msg = _errors(tmp_path, text)
    assert "consortium.toml: server: missing required table" in msg


def test_several_errors_reported_together(tmp_path: Path) -> None:
    text = """
name = ""
colour = "blue"
[server]
host = "bad host"
port = 70000
ip_addresses = ["1.2.3"]
[[clients]]
nme = "typo"
"""
    msg = _errors(tmp_path, text)
    for fragment in (
        "consortium.toml: name: missing or empty",
        "consortium.toml: colour: unknown field",
        "consortium.toml: server.host: 'bad host' is not a valid host name",
        "consortium.toml: server.port: must be an integer from 1 to 65535",
        "consortium.toml: server.ip_addresses[0]: '1.2.3' is not a valid IP address",
        "consortium.toml: clients[0].nme: unknown field",
        "consortium.toml: clients[0].id: missing required field",
    ):
        assert fragment in msg, (fragment, msg)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    assert "not valid TOML" in _errors(tmp_path, "name = [unterminated")
    with pytest.raises(ConsortiumError, match="file not found"):
        load_consortium(tmp_path / "absent.toml")


def test_server_host_added_to_sans() -> None:
    c = parse_consortium(
        {"name": "n", "server": {"host": "::1", "port": 1}, "clients": [{"id": "a"}]}, source="inline"
    )
    assert c.server.ip_addresses == ("::1",) and c.server.address == "[::1]:1"
    with pytest.raises(ConsortiumError, match="inline: cert_valid_days"):
        parse_consortium(
            {
                "name": "n",
                "ca_valid_days": 10,
                "cert_valid_days": 20,
                "server": {"host": "h", "port": 1},
                "clients": [{"id": "a"}],
            },
            source="inline",
        )


# -- check_kit ------------------------------------------------------------------------------------


def test_check_revoked_and_trust_anchor_rejects(provisioned: ProvisionResult, tmp_path: Path) -> None:
    kit = _copy_kit(provisioned.client_kits["hospital-b"], tmp_path / "kit")
    ca_dir = _copy_kit(provisioned.ca_dir, tmp_path / "ca")
    ca = load_ca(ca_dir)
    ident = load_kit(kit).identity
    crl = revoke(ca, [ident.certificate.serial_number], previous=load_crl(ca_dir / "crl.pem"))
    write_public(kit / "crl.pem", crl_pem(crl))
    assert "REVOKED" in _problems(kit)
    with pytest.raises(IdentityError) as ei:
        load_kit(kit).trust.verify_client(ident.chain_der())
    assert ei.value.reason == "revoked"


def test_check_key_mismatch(provisioned: ProvisionResult, tmp_path: Path) -> None:
    kit = _copy_kit(provisioned.client_kits["hospital-a"], tmp_path / "kit")
    shutil.copy(provisioned.client_kits["hospital-b"] / "key.pem", kit / "key.pem")
    assert "does not belong to the certificate" in _problems(kit)


def test_check_foreign_ca(provisioned: ProvisionResult, tmp_path: Path) -> None:
    kit = _copy_kit(provisioned.client_kits["hospital-a"], tmp_path / "kit")
    other = create_ca("Test consortium CA")  # same name, different key
    write_public(kit / "ca.pem", cert_pem(other.certificate))
    problems = _problems(kit)
    assert "not issued by the kit's CA" in problems
    assert "not signed by the kit's CA" in problems  # the kit's CRL no longer matches either


def test_check_loose_permissions_and_missing_files(provisioned: ProvisionResult, tmp_path: Path) -> None:
    kit = _copy_kit(provisioned.client_kits["hospital-a"], tmp_path / "kit")
    (kit / "key.pem").chmod(0o644)
    (kit / "crl.pem").unlink()
    problems = _problems(kit)
    assert "chmod 600" in problems and "0644" in problems
    assert "missing file" in problems and "crl.pem" in problems
    assert "does not exist" in _problems(tmp_path / "nope")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_readable_by_others_is_refused_at_load(
    provisioned: ProvisionResult, tmp_path: Path, mode: int
) -> None:
    """Not only `certs check`: a client or server started on a kit whose key others can read stops with
    the fix in the message (anyone else on the machine could impersonate the party)."""
    kit = _copy_kit(provisioned.client_kits["hospital-a"], tmp_path / "kit")
    assert load_kit(kit).client_id == "hospital-a"  # 0600 as provisioned: loads
    (kit / "key.pem").chmod(mode)
    with pytest.raises(KitError, match=rf"mode {mode:04o}.*chmod 600"):
        load_kit(kit)


def test_check_wrong_eku_and_id_mismatch(provisioned: ProvisionResult, tmp_path: Path) -> None:
    kit = _copy_kit(provisioned.client_kits["hospital-a"], tmp_path / "kit")
    for name in ("cert.pem", "key.pem"):
        shutil.copy(provisioned.server_kit / name, kit / name)
    assert "not usable for clientAuth" in _problems(kit)

    kit2 = _copy_kit(provisioned.client_kits["hospital-a"], tmp_path / "kit2")
    toml = kit2 / "kit.toml"
    toml.write_text(toml.read_text().replace('id = "hospital-a"', 'id = "hospital-z"'))
    assert "kit.toml says id 'hospital-z' but the certificate is for client 'hospital-a'" in _problems(kit2)


def test_check_expiry_and_stale_crl(provisioned: ProvisionResult, tmp_path: Path) -> None:
    kit = provisioned.client_kits["hospital-a"]
    now = datetime.now(UTC)
    # After the CRL's 30 days but before the certificate's 200: only the CRL is stale.
    problems = _problems(kit, at=now + timedelta(days=45))
    assert "stale" in problems and "expired" not in problems
    assert "expired" in _problems(kit, at=now + timedelta(days=400))
    assert "not valid until" in _problems(kit, at=now - timedelta(days=1))

    # Expiring soon is a warning, not a failure.
    ca = load_ca(provisioned.ca_dir)
    short = write_kit(
        tmp_path / "short",
        issue_client(ca, "short", valid_days=10),
        ca.certificate,
        load_crl(provisioned.ca_dir / "crl.pem"),
        role="client",
        server_address="fl.test:8443",
    )
    report = check_kit(short)
    assert report.ok and any("expires in" in w for w in report.warnings)


def test_check_server_name_not_covered(provisioned: ProvisionResult, tmp_path: Path) -> None:
    ca = load_ca(provisioned.ca_dir)
    kit = write_kit(
        tmp_path / "srv",
        issue_server(ca, dns_names=["other.test"], ip_addresses=[]),
        ca.certificate,
        load_crl(provisioned.ca_dir / "crl.pem"),
        role="server",
        server_address="fl.test:8443",
    )
    assert "does not cover 'fl.test'" in _problems(kit)
