"""The ``secfed`` entry point: the main job and the secagg benchmark's JSON contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secfed.cli import main


def test_main_job_runs_the_default_federation(tmp_path: Path) -> None:
    """``secfed simulate`` (the README's first command) with its default preset, into a given folder."""
    out = tmp_path / "run"
    assert main(["simulate", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["ok"] and result["preset"] == "default"
    assert result["rounds_completed"] == result["rounds"] == 3
    assert result["plaintext_check"]["status"] == "ok" and result["integrity"]["ok"]


def test_bench_secagg_json_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code = main(
        [
            "bench",
            "secagg",
            "--clients",
            "6",
            "--dim",
            "2000",
            "--repeats",
            "1",
            "--compare",
            "flower",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    for key in ("client_mask_s", "server_unmask_s", "upload_bytes"):
        assert result["ours"][key] > 0
    assert result["plaintext_bytes"] == 8000
    assert result["flower"]["client_mask_s"] > 0
    # key material is O(n): a handful of clients add at most a few KB on top of the vector
    assert result["plaintext_bytes"] < result["ours"]["upload_bytes"] < result["plaintext_bytes"] + 8 * 1024


def test_bench_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "secagg", "--clients", "2", "--json"]) == 2
    assert "--clients must be at least 3" in capsys.readouterr().err
