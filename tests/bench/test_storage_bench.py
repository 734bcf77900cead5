"""``secfed bench storage`` runs the real stack and reports what the state keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secfed import cli

pytestmark = pytest.mark.timeout(120)


def test_the_storage_benchmark_reports_the_kept_models_and_the_state_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "storage.json"
    argv = ["bench", "storage", "--dim", "50000", "--rounds", "3", "--keep", "1", "--json", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["kept_models"] == 1 and result["model_bytes"] == 200_000
    assert result["state_bytes"] == sum(result["files"].values())
    assert result["bytes_per_kept_model"] >= result["model_bytes"]  # the kept model is really there
    assert result["rounds_log_bytes_per_round"] < 4096
