"""``secfed status --client``: an institution sees, from its own files only, the rounds it contributed
to, what it refused and why, the inputs it released and its privacy account; looking changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.config import ClientConfig
from client.status import format_client_status, read_client_status
from secfed import cli
from tests.federation.support import start_federation

pytestmark = pytest.mark.timeout(120)


def test_an_institution_sees_its_own_rounds_refusals_and_releases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = start_federation(tmp_path, 4, rounds=2, secure=False)
    for i in range(3):
        fed.start_client(f"inst{i:02d}", allow_plaintext=True)
    fed.start_client("inst03")  # its policy refuses the insecure baseline
    fed.finish()
    refusing = ClientConfig(kit=fed.pki / "clients" / "inst03", audit_ledger=fed.audit_ledger("inst03"))
    status = read_client_status(refusing)
    assert status["institution"] == "inst03" and status["rounds_contributed"] == []
    assert status["refusals"] == 2 and "insecure" in str(status["recent_refusals"][0]["why"])
    assert "refused: 2" in format_client_status(status)

    fed2 = start_federation(tmp_path / "secure", 3, rounds=2)
    for i in range(3):
        fed2.start_client(f"inst{i:02d}")
    assert fed2.finish() == "completed 2 rounds"
    ledger = fed2.audit_ledger("inst00")
    before = ledger.read_bytes()
    mine = read_client_status(ClientConfig(kit=fed2.pki / "clients" / "inst00", audit_ledger=ledger))
    assert mine["rounds_contributed"] == [0, 1] and mine["refusals"] == 0
    assert "rounds contributed to: 2 (last: 1)" in format_client_status(mine)
    assert ledger.read_bytes() == before

    toml = tmp_path / "client.toml"
    toml.write_text(
        f'[client]\nkit = "{fed2.pki / "clients" / "inst00"}"\naudit_ledger = "{ledger}"\n'
        '[task]\nname = "toy-mean"\n[privacy]\nrequire_dp = false\n'
    )
    assert cli.main(["status", "--client", str(toml), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rounds_contributed"] == [0, 1]
