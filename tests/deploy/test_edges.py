"""The rough edges a first deployment hits, each as the exit code and message a user sees."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from secfed.cli import main
from secfed.fl.fedit import ClientDataOptions, client_records
from secfed.harness.procs import child_env, secfed_command
from tests.deploy.support import lay_out

pytestmark = pytest.mark.timeout(120)


def test_a_client_without_data_refuses_to_start_instead_of_training_on_builtin_records() -> None:
    with pytest.raises(ValueError, match=r'no training data: set data = "path/to/records.jsonl"'):
        client_records("hospital-a", ClientDataOptions())


def test_a_wrong_kit_path_is_one_line_not_a_traceback(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = lay_out(tmp_path, "fedit", tiny_model_dir)
    party = deployment.institutions["hospital-a"]
    party.config.write_text(party.config.read_text().replace('kit = "kit"', 'kit = "kits/hospital-a"'))
    assert main(["client", "--config", str(party.config)]) == 2
    err = capsys.readouterr().err
    assert "secfed client: error:" in err and "kits/hospital-a" in err and "Traceback" not in err


def test_a_client_whose_data_file_is_missing_names_the_file(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = lay_out(tmp_path, "fedit", tiny_model_dir)
    party = deployment.institutions["hospital-a"]
    (party.directory / "data" / "records.jsonl").unlink()
    assert main(["client", "--config", str(party.config)]) == 2
    err = capsys.readouterr().err
    assert str(party.directory / "data" / "records.jsonl") in err and "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_waiting_client_at_once_with_a_last_line(
    tmp_path: Path, tiny_model_dir: Path, sig: signal.Signals
) -> None:
    deployment = lay_out(tmp_path, "fedit", tiny_model_dir)
    party = deployment.institutions["hospital-a"]
    config = party.config.read_text().replace('server = ""', 'server = "127.0.0.1:9"')  # nobody listens
    party.config.write_text(config)
    proc = subprocess.Popen(
        secfed_command("client", "--config", str(party.config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_env(torch_threads=1),
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # until it says what it is waiting for
        if "waiting-for-coordinator" in line:
            assert "127.0.0.1:9" in line
            break
    sent = time.monotonic()
    proc.send_signal(sig)
    rest = proc.communicate(timeout=30)[0]
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 130
    assert "stopped by a signal" in rest and "Traceback" not in rest
