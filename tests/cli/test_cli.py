"""The ``secfed`` entry point: the main job and the secagg benchmark's JSON contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secfed.cli import main


def test_main_job_runs_the_default_federation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``secfed simulate`` (the README's first command): the default preset (LoRA tuning on the
    built-in data, evaluated before and after) end to end, on a tiny model so it stays fast."""
    from secfed.model.tiny import tiny_llama

    model_dir = tmp_path / "tiny"
    tiny = tiny_llama(seed=3)
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    code = main(["simulate", "--model", str(model_dir), "--clients", "3", "--rounds", "1", "--out", str(out)])
    result = json.loads((out / "result.json").read_text())
    assert code == 0, result["problems"]
    assert result["ok"] and result["preset"] == "default" and result["task"]["name"] == "fedit-lora"
    assert result["rounds_completed"] == 1 and result["integrity"]["ok"]
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["before"]["overall"]["n"] == evaluation["after"]["overall"]["n"] > 0
    assert (out / "state" / "adapter" / "adapter_config.json").is_file()
    printed = capsys.readouterr().out
    assert "base model vs federated adapter" in printed and "PeftModel.from_pretrained" in printed


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
    for key in ("client_mask_s", "server_unmask_s", "upload_bytes", "client_mask_add_s", "floor_keystream_s"):
        assert result["ours"][key] > 0
    assert result["vector_bytes"] == 8000 and result["mask_add_over_floor"] > 0
    assert result["server_floor_keystream_s"] > 0 and result["unmask_over_floor"] > 0
    assert result["plaintext_bytes"] == 8000
    assert result["ours"]["client_encode_s"] > 0
    # measured in a fresh process: the encoded vector (8 KB) and its chunk temporaries, well under 64 MB
    assert 0 <= result["ours"]["client_peak_rss_delta_bytes"] < 64 * 2**20
    assert result["client_peak_rss_over_vector_bytes"] == result["ours"]["client_peak_rss_delta_bytes"] / 8000
    assert result["flower"]["client_mask_s"] > 0
    # key material is O(n): a handful of clients add at most a few KB on top of the vector
    assert result["plaintext_bytes"] < result["ours"]["upload_bytes"] < result["plaintext_bytes"] + 8 * 1024


def test_bench_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "secagg", "--clients", "2", "--json"]) == 2
    assert "--clients must be at least 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--records-per-client", "0", "--records-per-client must be at least 1, got 0"),
        ("--rounds", "0", "--rounds must be at least 1, got 0"),
        ("--selected-epochs", "0", "--selected-epochs must be positive, got 0.0"),
    ],
)
def test_bench_dolly_rejects_bad_overrides_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    assert main(["bench", "dolly", "--data", str(tmp_path / "absent"), flag, value]) == 2
    assert message in capsys.readouterr().err
