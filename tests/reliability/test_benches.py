"""The reliability benchmarks at small scale, through the same code the full runs use.

``secfed bench load``, ``crash-resume`` and ``fuzz`` are the campaign's evidence (50 clients, 10
trials, 100k messages); here each runs small enough for the test suite, and its verdict must hold. The
checkers the benchmarks rely on are tested too: a tampered sum must be reported as wrong, a lost round
as lost -- a verdict that cannot fail would prove nothing.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed.bench.crashresume import CrashResumeOptions, KeyWitness, run_crash_resume, verify_sums
from secfed.bench.fuzz import FuzzOptions, run_fuzz
from secfed.bench.load import LoadOptions, evaluate_run, percentiles, plan_faults, run_load
from secfed.harness.faults import UPLOAD_PHASES
from secfed.harness.layout import RunLayout, client_ids

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def load_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    # 7 clients (threshold 5: a session survives 2 dropouts) and 2 failures per round: clients die,
    # hang and are restarted mid-round, attempts abort and are retried.
    out = tmp_path_factory.mktemp("load") / "run"
    opts = LoadOptions(
        clients=7,
        rounds=2,
        dropout=0.29,
        phase_timeout_s=2.0,
        seed=0,
        workdir=out,
        startup_batch=7,
        progress=False,
    )
    return run_load(opts), out


def test_load_every_round_completes_exactly_or_aborts_cleanly(load_run: tuple[dict[str, Any], Path]) -> None:
    result, _ = load_run
    assert result["ok"], result["problems"]
    # Every round completes exactly, or aborts; a round whose inputs had been released in an attempt
    # that might have been unmasked is never retried (no differencing), and the run stops there.
    assert result["rounds_completed"] + result["rounds_aborted"] + result["rounds_not_run"] == 2
    if result["rounds_not_run"]:
        assert "refused: released" in result["finished_reason"]
    assert result["wrong_sums"] == 0 and result["integrity"]["ok"]
    faults = result["faults"]
    assert faults["planned"] == 4 and faults["kills_fired"] >= 1 and result["client_restarts"] >= 1
    assert set(result["phase_latency_s"]) >= set(UPLOAD_PHASES)
    assert all(p["p50"] <= p["p90"] <= p["max"] for p in result["phase_latency_s"].values())
    json.dumps(result)  # the --json output


def test_load_verdict_catches_a_wrong_sum(load_run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    _, out = load_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    layout = RunLayout(copy)
    lines = layout.rounds_log.read_text().splitlines()
    record = json.loads(lines[-1])
    record["sums"]["x"][0] += 0.5  # what a mask left in the sum would look like, only much smaller
    lines[-1] = json.dumps(record)
    layout.rounds_log.write_text("\n".join(lines) + "\n")
    verdict = evaluate_run(layout, 2, {"dim": 16})
    assert verdict["wrong_sums"] == 1 and verdict["wrong_rounds"] == [1]


def test_crash_resume_sum_check_catches_a_wrong_sum_or_model(
    load_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """The crash-resume verdict checks sums against the database's models, not the log's chain."""
    _, out = load_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    layout = RunLayout(copy)
    records = [json.loads(line) for line in layout.rounds_log.read_text().splitlines()]
    assert all(r["ok"] for r in verify_sums(layout.state_db, records, 16))
    records[0]["sums"]["w"] = [records[0]["sums"]["w"][0] + 1]
    assert [r["ok"] for r in verify_sums(layout.state_db, records, 16)] == [False, True]
    # A round whose stored model is not its plaintext update (a mask left in, say).
    with sqlite3.connect(layout.state_db) as conn:
        (blob,) = conn.execute("SELECT vector FROM models WHERE round = 1").fetchone()
        model = np.frombuffer(blob, dtype="<f4").copy()
        model[0] += 0.25
        conn.execute("UPDATE models SET vector = ? WHERE round = 1", (model.tobytes(),))
    checked = verify_sums(layout.state_db, records[1:], 16)  # round 1's log line only
    assert [r["ok"] for r in checked] == [True, False] and "off the plaintext update" in checked[1][
        "problems"
    ][0]


def test_fault_plan_is_reproducible_and_sized() -> None:
    ids = client_ids(50)
    plan = plan_faults(ids, 5, 0.2, 0.3, random.Random(7))
    again = plan_faults(ids, 5, 0.2, 0.3, random.Random(7))
    assert plan == again
    per_round = [sum(1 for faults in plan.values() for f in faults if f.round == r) for r in range(5)]
    assert per_round == [10] * 5  # exactly 20 % of the clients fail in each round
    assert {f.phase for faults in plan.values() for f in faults} <= set(UPLOAD_PHASES)
    assert percentiles([1.0, 2.0, 3.0, 4.0]) == {"p50": 2.5, "p90": 3.7, "p99": 3.97, "max": 4.0, "n": 4}


def test_crash_resume_small() -> None:
    result = run_crash_resume(
        CrashResumeOptions(trials=2, rounds=3, max_kills=2, phase_timeout_s=3.0, seed=3, progress=False)
    )
    assert result["ok"], [t["problems"] for t in result["trial_results"]]
    trials = result["trial_results"]
    # A trial resumes to the end, or stops where a kill left released inputs that may have been
    # summed (they are never re-summed over another cohort): never a lost or repeated round.
    assert all(t["resumed"] or t["stopped_released"] for t in trials)
    assert result["kills"] >= 2 and result["rounds_lost"] == result["rounds_repeated"] == 0
    assert result["keys_reused"] == 0 and result["session_ids_reused"] == 0
    assert result["witness_keys_checked"] > 0
    # Every committed round's model checked against the plaintext update (log gaps are findings).
    assert (
        result["models_checked"] == sum(t["rounds_completed"] for t in trials) and result["wrong_sums"] == 0
    )


def test_key_witness_reports_a_reused_key() -> None:
    witness = KeyWitness("inst03")
    witness.record(b"\x01" * 32, 0, [("inst00", b"a" * 32, b"b" * 32), ("inst01", b"c" * 32, b"d" * 32)])
    assert witness.reused_keys() == []
    witness.record(b"\x02" * 32, 0, [("inst00", b"e" * 32, b"f" * 32), ("inst01", b"c" * 32, b"g" * 32)])
    [reused] = witness.reused_keys()
    assert "inst01@" in reused and witness.keys_seen() == 8


def test_fuzz_small() -> None:
    result = run_fuzz(FuzzOptions(messages=1500, workers=4, seed=5, progress=False))
    assert result["crashes"] == 0 and not result["server_died"]
    assert result["unclear"] == 0, result["examples"]
    assert result["closing_round"]["sum_ok"] and result["integrity"]["ok"]
    assert result["ok"], result["problems"]
    assert set(result["by_method"]) == {"Join", "Poll", "Heartbeat", "Download", "Upload", "Shutdown"}
    assert result["uploads_accepted"] >= 0 and result["cases"] == 1500
