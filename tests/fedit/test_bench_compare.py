"""``secfed bench dolly`` end to end on a tiny model and a tiny Dolly-shaped split: every method runs,
the JSON has the documented keys, and the methods' data fractions are what they claim."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from secfed.bench.compare import COMPARISONS, CPU_PRESET, METHODS, plot_svg, run_benchmark
from secfed.data.builtin import builtin_splits

pytestmark = pytest.mark.timeout(600)


def _split(directory: Path, n: int) -> Path:
    splits, test = builtin_splits(n, train_per_category=8, test_per_category=1, seed=0, partition="iid")
    directory.mkdir()
    for i, records in enumerate(splits):
        rows = [
            {
                "instruction": r.instruction,
                "context": r.context,
                "response": r.response,
                "category": r.category,
            }
            for r in records
        ]
        (directory / f"client_{i}.json").write_text(json.dumps(rows))
    rows = [
        {"instruction": r.instruction, "context": r.context, "response": r.response, "category": r.category}
        for r in test
    ]
    rows[0]["category"] = "summarization"  # a held-out category appears only in the test set
    (directory / "test.json").write_text(json.dumps(rows))
    return directory


def test_every_method_runs_and_reports(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = tiny_model_dir
    data = _split(tmp_path / "data", 4)
    preset = replace(
        CPU_PRESET,
        clients=4,
        records_per_client=12,
        rounds=2,
        max_length=64,
        eval_records=6,
        max_new_tokens=4,
        local_only_evaluated=2,
        feature_layers=(-1, 1),
        coreset={"max_fraction": 0.1, "k0": 8, "bins": 4},
    )
    result = run_benchmark(data, preset, model=str(model))
    results = result["results"]
    assert set(results) == set(METHODS)
    for name, r in results.items():
        assert {"rougeL", "train_s", "data_fraction"} <= set(r), name
        assert 0 <= r["rougeL"] <= 100 and r["rougeL_heldout"] is not None
    assert results["fedit-secure"]["data_fraction"] == results["centralized"]["data_fraction"] == 1.0
    # At most the 10 % budget as election winners, plus one record for each member that won nothing
    # (every member trains on >= 1 record so the train sum always holds data of every contributor).
    total = 4 * 12
    assert 0 < results["fedhds-secure"]["data_fraction"] <= (int(0.1 * total) + 4) / total
    assert results["base"]["train_s"] == 0.0
    assert results["fedhds-secure-dp"]["epsilon_max"] <= 8.0 + 1e-9
    # secure vs plaintext aggregation differ only by fixed-point rounding: the same answers
    assert results["fedit-secure"]["rougeL"] == pytest.approx(results["fedit-plaintext"]["rougeL"], abs=1e-9)
    # Per-record scores back every mean, and the paired comparisons are built from them.
    for name, r in results.items():
        assert len(r["rougeL_per_record"]) == result["test_records"] == 6, name
        assert sum(r["rougeL_per_record"]) / 6 == pytest.approx(r["rougeL"], abs=1e-2), name
    comparisons = result["comparisons"]
    assert set(comparisons) == {f"{a} vs {b}" for a, b, _ in COMPARISONS}
    for name, c in comparisons.items():
        a, b = name.split(" vs ")
        assert c["delta"] == pytest.approx(results[a]["rougeL"] - results[b]["rougeL"], abs=1e-2), name
        assert c["ci95"][0] <= c["delta"] + 1e-9 and c["delta"] <= c["ci95"][1] + 1e-9, name
    assert comparisons["fedit-secure vs fedit-plaintext"]["ci95"] == [0.0, 0.0]
    json.dumps(result, allow_nan=False)
    svg = plot_svg(result)
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.endswith("</svg>")
    assert all(name in svg for name in METHODS)
