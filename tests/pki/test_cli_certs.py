"""``secfed certs`` sub-commands, driven through a throw-away argparse parser."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from secfed.cli.certs import register
from secfed.crypto.identity import IdentityError
from secfed.pki import load_kit
from secfed.pki.files import load_crl

CONSORTIUM = """\
name = "CLI consortium"
[server]
host = "localhost"
port = 50051
[[clients]]
id = "alpha"
[[clients]]
id = "beta"
[[clients]]
id = "gamma"
"""


def _run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="secfed")
    sub = parser.add_subparsers()
    register(sub)
    args = parser.parse_args([str(a) for a in argv])
    code = args.func(args)
    assert isinstance(code, int)
    return code


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    assert _run("certs", "init-ca", "--out", tmp_path / "ca", "--name", "CLI CA") == 0
    return tmp_path / "ca"


def test_init_ca_files_and_refusal(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.key", "ca.pem", "crl.pem"]
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert len(list(load_crl(ca_dir / "crl.pem"))) == 0
    capsys.readouterr()
    assert _run("certs", "init-ca", "--out", ca_dir) == 1
    assert "a CA already exists" in capsys.readouterr().err


def test_issue_check_revoke_cycle(ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kit = tmp_path / "alice"
    assert (
        _run(
            "certs",
            "issue",
            "--ca",
            ca_dir,
            "--client",
            "alice",
            "--server-address",
            "localhost:1",
            "--out",
            kit,
        )
        == 0
    )
    assert stat.S_IMODE((kit / "key.pem").stat().st_mode) == 0o600
    srv = tmp_path / "srv"
    assert _run("certs", "issue", "--ca", ca_dir, "--server", "--dns", "fl.test", "--out", srv) == 0
    capsys.readouterr()

    assert _run("certs", "check", kit) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: client kit 'alice'")
    assert _run("certs", "check", srv) == 0
    assert capsys.readouterr().out.startswith("OK: server kit")

    # Refuses to overwrite an existing kit.
    assert _run("certs", "issue", "--ca", ca_dir, "--client", "alice", "--out", kit) == 1
    assert "not empty" in capsys.readouterr().err

    assert _run("certs", "revoke", "--ca", ca_dir, "--cert", kit / "cert.pem", "--update-kit", kit) == 0
    serial = load_kit(srv).identity.certificate.serial_number
    assert _run("certs", "revoke", "--ca", ca_dir, "--serial", f"{serial:X}", "--reason", "superseded") == 0
    assert len(list(load_crl(ca_dir / "crl.pem"))) == 2  # previous entry kept
    capsys.readouterr()

    assert _run("certs", "check", kit) == 1
    out = capsys.readouterr().out
    assert "has 1 problem(s):" in out and "  1. " in out and "REVOKED" in out
    with pytest.raises(IdentityError) as ei:
        load_kit(kit).trust.verify_client(load_kit(kit).identity.chain_der())
    assert ei.value.reason == "revoked"


def test_revoke_rejects_foreign_cert_and_nothing_to_do(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run("certs", "init-ca", "--out", tmp_path / "other")
    _run("certs", "issue", "--ca", tmp_path / "other", "--client", "x", "--out", tmp_path / "x")
    capsys.readouterr()
    assert _run("certs", "revoke", "--ca", ca_dir, "--cert", tmp_path / "x" / "cert.pem") == 1
    assert "was not issued by the CA" in capsys.readouterr().err
    assert _run("certs", "revoke", "--ca", ca_dir) == 1
    assert "nothing to revoke" in capsys.readouterr().err
    assert _run("certs", "revoke", "--ca", ca_dir, "--refresh") == 0


def test_provision_and_check_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "consortium.toml").write_text(CONSORTIUM)
    out = tmp_path / "kits"
    assert _run("certs", "provision", tmp_path / "consortium.toml", "--out", out) == 0
    for kit in [out / "server", *(out / "clients").iterdir()]:
        assert _run("certs", "check", kit) == 0, capsys.readouterr().out
    assert load_kit(out / "clients" / "beta").server_address == "localhost:50051"
    capsys.readouterr()
    assert _run("certs", "provision", tmp_path / "consortium.toml", "--out", out) == 1
    assert "--force" in capsys.readouterr().err
    assert _run("certs", "provision", tmp_path / "consortium.toml", "--out", out, "--force") == 0


def test_provision_bad_file_names_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "consortium.toml"
    path.write_text(CONSORTIUM.replace('id = "gamma"', 'id = "a b"'))
    assert _run("certs", "provision", path, "--out", tmp_path / "kits") == 1
    err = capsys.readouterr().err
    assert "consortium.toml: clients[2].id: 'a b' is not a valid client id ([A-Za-z0-9._-]{1,64})" in err
    assert not (tmp_path / "kits").exists()


def test_check_at_future_date(ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kit = tmp_path / "k"
    _run("certs", "issue", "--ca", ca_dir, "--client", "k", "--days", "40", "--out", kit)
    capsys.readouterr()
    assert _run("certs", "check", kit, "--at", "2099-01-01") == 1
    out = capsys.readouterr().out
    assert "1. certificate expired" in out and "stale" in out


def test_bare_certs_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("certs") == 2
    assert "provision" in capsys.readouterr().err


def test_through_secfed_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = pytest.importorskip("secfed.cli")
    (tmp_path / "c.toml").write_text(CONSORTIUM)
    assert cli.main(["certs", "provision", str(tmp_path / "c.toml"), "--out", str(tmp_path / "kits")]) == 0
    assert cli.main(["certs", "check", str(tmp_path / "kits" / "clients" / "alpha")]) == 0
    assert "OK: client kit 'alpha'" in capsys.readouterr().out
