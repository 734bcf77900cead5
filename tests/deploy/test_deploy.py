"""Deploying across institutions the way the README says: every example, its own directory per party.

Each test lays out a coordinator and institutions in separate directories (only a kit, a copy of an
``examples/deploy/`` TOML with its paths and address edited, and the institution's own data in JSONL,
CSV or a ``datasets`` directory), runs ``secfed server`` and ``secfed client`` as processes on
127.0.0.1 with a tiny model, and checks what a new user would: every round completes, every institution
holds the final adapter and it loads with plain peft, and every party's audit report builds from its
own directory and verifies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from secfed.bench.deploy import start
from secfed.cli import main
from secfed.home import HOME_ENV
from tests.deploy.support import Deployment, lay_out

pytestmark = pytest.mark.timeout(600)


def _adapter_weights(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "adapter_model.safetensors"))


def _loads_with_plain_peft(model_dir: Path, adapter: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(base, str(adapter))
    assert any("lora_" in name for name, _ in model.named_parameters())


def _audit_from_own_directory(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(deployment.home))  # as on each institution's own machine
    for cid, party in deployment.institutions.items():
        assert main(["audit", "report", str(party.config), "--format", "json"]) == 0
        report = party.directory / "audit" / f"{cid}.json"
        assert report.is_file()
        # The report found the institution's own ledger (not beside the config): the example trains
        # without DP, and the report says so from round 0.
        privacy = json.loads(report.read_text())["privacy"]
        assert privacy["no_dp_guarantee_since_round"] == 0 and privacy["datasets"], privacy
        cwd = Path.cwd()
        os.chdir(party.directory)
        try:  # verified by a relative path, from the institution's own directory
            assert main(["audit", "verify", f"audit/{cid}.json"]) == 0, capsys.readouterr().out
        finally:
            os.chdir(cwd)
    coordinator = deployment.coordinator
    assert main(["audit", "report", str(coordinator.config), "--format", "json"]) == 0
    assert main(["audit", "verify", str(coordinator.directory / "audit" / "federation.json")]) == 0


@pytest.mark.parametrize("example", ["fedit", "fedhds"])
def test_example_deployment_trains_and_every_institution_keeps_the_result(
    tmp_path: Path,
    tiny_model_dir: Path,
    example: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = lay_out(tmp_path, example, tiny_model_dir)
    start(deployment)
    codes = deployment.wait(480)
    assert all(code == 0 for code in codes.values()), f"{codes}\n{deployment.logs()}"
    assert "completed 3 rounds" in deployment.coordinator.output()
    server_adapter = _adapter_weights(deployment.coordinator.directory / "state" / "adapter")
    for party in deployment.institutions.values():
        final = party.directory / "global-model" / "final"
        assert "global model saved to" in party.output(), party.output()
        mine = _adapter_weights(final)
        assert mine.keys() == server_adapter.keys()
        for key, value in mine.items():
            np.testing.assert_array_equal(value, server_adapter[key])
        config = json.loads((final / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == tiny_model_dir.name  # portable, not this machine's path
        assert json.loads((final / "secfed_adapter.json").read_text())["base_hash"]
        _loads_with_plain_peft(tiny_model_dir, final)
    _audit_from_own_directory(deployment, capsys, monkeypatch)


def test_an_institution_killed_during_training_does_not_stop_a_four_institution_federation(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    ids = ("hospital-a", "hospital-b", "university-c", "lab-d")
    deployment = lay_out(tmp_path, "fedit", tiny_model_dir, ids=ids)
    config = deployment.coordinator.config
    text = config.read_text()
    assert '"lab-d"' in text  # the roster lists the institutions laid out
    # Short deadlines, or the dead institution's phases would each wait the example's full timeouts.
    text = text.replace("phase_timeout_s = 60.0", "phase_timeout_s = 4.0")
    text = text.replace("compute_timeout_s = 1800.0", "compute_timeout_s = 15.0")
    config.write_text(text)
    # lab-d's client SIGKILLs itself in round 0's local computation.
    start(deployment, client_args={"lab-d": ("--fault", "kill@0:compute")})
    codes = deployment.wait(480)
    logs = deployment.logs()
    assert codes["coordinator"] == 0 and "completed 3 rounds" in deployment.coordinator.output(), logs
    assert codes["lab-d"] not in (0, None), logs
    assert all(codes[cid] == 0 for cid in ids[:3]), logs
    rounds = [
        json.loads(line)
        for line in (deployment.coordinator.directory / "state" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert "lab-d" not in rounds[0]["contributors"] and len(rounds[0]["contributors"]) == 3
