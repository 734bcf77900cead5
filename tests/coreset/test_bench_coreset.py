"""``secfed bench coreset`` end to end on a tiny model and a tiny Dolly-shaped split (seconds, not minutes).

Checks the JSON contract (keys, value ranges, targets), that the features are cached and a second
run (through the CLI) reuses them together with the feature time measured when they were computed,
and that an unusable cache entry is recomputed rather than trusted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from secfed.bench import coreset as bench
from secfed.cli import build_parser
from secfed.data.builtin import builtin_splits
from secfed.model.tiny import tiny_llama

CLIENTS = 4
PER_CLIENT = 20
# A coarse grid so that four small clients share cells (single-institution cells are suppressed).
CORESET = {"bins": 6, "max_fraction": 0.1}

REQUIRED = (
    "selected_fraction",
    "selection_s_per_client",
    "selection_stage_s_per_client",
    "full_train_s_per_client",
    "selection_over_train",
    "upload_bytes_per_client",
    "coverage_secure",
    "coverage_plaintext",
    "coverage_plaintext_budget",
    "coverage_random",
    "plaintext_selected_fraction",
    "adjusted_rand",
    "plaintext_stability",
    "suppressed_share",
    "features_cached",
    "targets",
    "per_round",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The split, the tiny model saved as a directory, and a private cache (model hashes included).

    One torch thread: on a shared CI machine two threads spin on busy cores and take longer.
    """
    root = tmp_path_factory.mktemp("bench-coreset")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SECFED_CACHE", str(root / "secfed-cache"))
        yield _write_inputs(root)
    torch.set_num_threads(threads)


def _write_inputs(root: Path) -> dict[str, Path]:
    data = root / "data"
    data.mkdir()
    splits, _ = builtin_splits(CLIENTS, train_per_category=16, test_per_category=1, partition="iid")
    for i, records in enumerate(splits):
        rows = [asdict(r) for r in records]
        for row in rows:
            row.pop("source")
        (data / f"client_{i}.json").write_text(json.dumps(rows))
    model = root / "model"
    tiny = tiny_llama(seed=1)
    tiny.model.save_pretrained(str(model))
    tiny.tokenizer.save_pretrained(str(model))
    return {"data": data, "model": model, "cache": root / "cache"}


def _settings(setup: dict[str, Path], **overrides: Any) -> bench.CoresetBenchSettings:
    base: dict[str, Any] = {
        "data": setup["data"],
        "model": str(setup["model"]),
        "clients": CLIENTS,
        "records_per_client": PER_CLIENT,
        "layers": (1, -1),
        "max_length": 32,
        "rounds": 2,
        "cache_dir": setup["cache"],
        "coreset": CORESET,
        "progress": False,
    }
    return bench.CoresetBenchSettings(**{**base, **overrides})


def _check_ranges(result: dict[str, Any]) -> None:
    for key in REQUIRED:
        assert key in result, key
    assert result["records_total"] == CLIENTS * PER_CLIENT
    for key in ("selected_fraction", "plaintext_selected_fraction", "suppressed_share"):
        assert 0.0 <= result[key] <= 1.0, key
    assert 0 < result["selected_fraction"] <= CORESET["max_fraction"]
    for key in ("coverage_secure", "coverage_plaintext", "coverage_random"):
        assert result[key] > 0, key
    assert -1.0 <= result["adjusted_rand"] <= 1.0
    assert -1.0 <= result["plaintext_stability"] <= 1.0
    assert result["selection_s_per_client"] > result["selection_stage_s_per_client"] > 0
    # PCA statistics of the 64-D projection alone are 64 + 64*65/2 + 1 elements of 8 bytes.
    assert result["upload_bytes_per_client"] >= 8 * (64 + 64 * 65 // 2 + 1)
    assert len(result["per_round"]) == 2
    assert len({r["round_seed"] for r in result["per_round"]}) == 2
    assert set(result["targets"]) >= {
        "selected_fraction_at_most_0.05",
        "selection_under_30pct_of_train",
        "coverage_secure_at_most_0.85",
        "coverage_secure_within_0.1_of_plaintext",
        "single_institution_cells_suppressed",
    }
    assert result["targets"]["single_institution_cells_suppressed"] is True
    for r in result["per_round"]:
        assert r["single_institution_cells_allowed"] == 0
        assert r["min_institutions_per_allowed_cell"] is None or r["min_institutions_per_allowed_cell"] >= 2
    json.dumps(result, allow_nan=False)  # plain JSON, no numpy scalars


def test_benchmark_runs_caches_features_and_reuses_them(setup, capsys):
    first = bench.run_benchmark(_settings(setup))
    _check_ranges(first)
    assert first["features_cached"] is False
    assert first["feature_s_source"] == "this run"
    assert first["full_train_s_per_client"] > 0
    assert first["full_train"]["steps"] == PER_CLIENT // 4  # one epoch in batches of 4
    assert first["selection_over_train"] > 0
    assert first["selection_over_train_cpu"] > 0
    assert isinstance(first["targets"]["selection_under_30pct_of_train"], bool)
    assert Path(first["feature_cache"]).exists()

    out = setup["data"].parent / "result.json"
    argv = ["bench", "coreset", "--data", str(setup["data"]), "--model", str(setup["model"])]
    argv += ["--clients", str(CLIENTS), "--records-per-client", str(PER_CLIENT), "--layers", "1", "-1"]
    argv += ["--max-length", "32"]
    argv += ["--rounds", "2", "--cache-dir", str(setup["cache"]), "--coreset", json.dumps(CORESET)]
    argv += ["--skip-train", "--json", "--out", str(out)]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == second
    _check_ranges(second)
    assert second["features_cached"] is True
    assert second["feature_cache"] == first["feature_cache"]
    assert second["feature_s_all"] == pytest.approx(first["feature_s_all"])  # the time measured at caching
    assert second["feature_s_source"] != "this run"
    assert second["full_train_s_per_client"] is None
    assert second["selection_over_train"] is None
    assert second["targets"]["selection_under_30pct_of_train"] is None
    # Same features, same round seeds: the same selection and quality.
    for key in ("selected_fraction", "coverage_secure", "coverage_plaintext", "adjusted_rand"):
        assert second[key] == first[key], key


def test_other_settings_or_a_corrupt_entry_are_not_served_from_the_cache(setup):
    other = bench.run_benchmark(_settings(setup, layers=(-1,), rounds=1, skip_train=True))
    assert other["features_cached"] is False
    path = Path(other["feature_cache"])
    path.write_bytes(b"not an npz file")
    again = bench.run_benchmark(_settings(setup, layers=(-1,), rounds=1, skip_train=True))
    assert again["features_cached"] is False
    assert again["coverage_secure"] == other["coverage_secure"]
    hit = bench.run_benchmark(_settings(setup, layers=(-1,), rounds=1, skip_train=True))
    assert hit["features_cached"] is True


def test_summary_table_names_every_target(setup):
    result = bench.run_benchmark(_settings(setup, layers=(-1,), rounds=1, skip_train=True))
    table = bench.summary_table(result)
    for label in ("selected fraction", "selection / training", "coverage secure", "suppressed"):
        assert label in table


def test_bad_arguments_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from secfed.cli import main

    assert main(["bench", "coreset", "--data", str(tmp_path), "--clients", "1", "--json"]) == 2
    assert "--clients must be at least 2" in capsys.readouterr().err
    assert main(["bench", "coreset", "--data", str(tmp_path), "--skip-train", "--json"]) == 2
    assert "client_0.json" in capsys.readouterr().err
    bad = ["bench", "coreset", "--data", str(tmp_path), "--coreset", '{"feature_blocks": 3}']
    assert main(bad) == 2
    assert "feature_blocks" in capsys.readouterr().err
