"""``secfed simulate`` end to end: real server and client processes on 127.0.0.1, real deaths.

Each run is checked twice: by the harness itself (``result.json``: rounds, plaintext sums, state
audit) and here, independently, from the files the run left, reading the state database through
``server.state.StateStore`` (tests may import the server; the harness may not).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from secfed.cli import main
from secfed.dp.ledger import PrivacyLedger
from secfed.harness.faults import UPLOAD_PHASES
from secfed.harness.layout import prepare_out_dir
from secfed.harness.presets import PRESETS
from server.state import StateStore
from tests.federation import support


def simulate(out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``secfed simulate ... --out OUT --json``; return its exit status and ``OUT/result.json``."""
    code = main(["simulate", "--out", str(out), "--json", *args])
    return code, json.loads((out / "result.json").read_text())


def rounds_log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "state" / "rounds.jsonl").read_text().splitlines()]


def assert_plaintext_sums(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The independent check of tests/federation (its reference function), for the presets' toy options."""
    monkeypatch.setitem(support.TOY, "dim", PRESETS["smoke"].task_options["dim"])
    support.check_plaintext_sums(rounds_log(out))


@pytest.mark.timeout(180)
def test_smoke_preset_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--preset", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "round 0: 3 contributors" in printed and "round 1: 3 contributors" in printed
    assert "decoded sum equals the plaintext sum: True" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["ok"] and result["preset"] == "smoke"
    assert (result["clients"], result["rounds"], result["rounds_completed"]) == (3, 2, 2)
    assert [r["round"] for r in result["round_records"]] == [0, 1]
    assert all(r["contributors"] == ["inst00", "inst01", "inst02"] for r in result["round_records"])
    assert result["plaintext_check"]["status"] == "ok"
    assert result["integrity"]["ok"] and result["integrity"]["problems"] == []
    assert result["exit_codes"] == {"server": [0], "clients": {"inst00": 0, "inst01": 0, "inst02": 0}}
    # The run directory is self-contained: relative paths, one log per process.
    assert {p.name for p in (out / "logs").iterdir()} == {
        "server.log",
        "inst00.log",
        "inst01.log",
        "inst02.log",
    }
    assert 'kit = "pki/server"' in (out / "server.toml").read_text()
    with StateStore(out / "state" / "state.sqlite") as store:
        assert store.integrity_check() == []
        assert [r.round for r in store.rounds()] == [0, 1]


@pytest.mark.timeout(120)
def test_twenty_clients_aggregate_equals_plaintext_every_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    # A generous phase timeout costs nothing when everyone answers, and round 0's first deadline runs
    # from server start, while 20 client processes are still starting on a small machine.
    code, result = simulate(
        out, "--preset", "smoke", "--clients", "20", "--rounds", "3", "--phase-timeout", "10"
    )
    assert code == 0, result["problems"]
    ids = [f"inst{i:02d}" for i in range(20)]
    assert [r["round"] for r in result["round_records"]] == [0, 1, 2]
    assert all(r["contributors"] == ids and r["dropped"] == [] for r in result["round_records"])
    assert [r["ok"] for r in result["plaintext_check"]["rounds"]] == [True, True, True]
    assert_plaintext_sums(out, monkeypatch)


@pytest.mark.timeout(180)  # a guard against hangs: ~15 s alone, several times that on a loaded machine
@pytest.mark.parametrize("phase", UPLOAD_PHASES)
def test_client_killed_at_each_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phase: str) -> None:
    out = tmp_path / "run"
    code, result = simulate(
        out,
        "--preset",
        "smoke",
        "--clients",
        "5",
        "--phase-timeout",
        "2",
        "--fault",
        f"inst04=kill@0:{phase}",
    )
    assert code == 0, result["problems"]
    survivors = ["inst00", "inst01", "inst02", "inst03"]
    r0, r1 = result["round_records"]
    # Before its masked input is sent the client cannot be in the sum; once sent, it is (the others
    # reveal what is needed to remove its masks), so it counts as a contributor of round 0.
    contributed = UPLOAD_PHASES.index(phase) > UPLOAD_PHASES.index("masked-input")
    assert ("inst04" in r0["contributors"]) == contributed
    assert set(r0["contributors"]) - {"inst04"} <= set(survivors)
    assert r1["contributors"] == survivors  # excluded from every round after its death
    assert result["exit_codes"]["clients"]["inst04"] == -9
    assert all(result["exit_codes"]["clients"][c] == 0 for c in survivors)
    assert result["faults"] == [{"client": "inst04", "action": "kill", "round": 0, "phase": phase}]
    assert result["plaintext_check"]["status"] == "ok" and result["integrity"]["ok"]
    assert_plaintext_sums(out, monkeypatch)


@pytest.mark.timeout(150)
def test_server_killed_mid_round_and_after_a_round_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the server inside round 1 (held open by a hung client) and again after round 2.

    Whatever happens, no completed round may be lost or repeated, the database must pass its audit
    and no session id may be used twice; and the run must then finish all its rounds.

    The order is chosen so neither kill races the federation. The hang holds round 1's compute phase
    open for a whole timeout, so the mid-round kill finds a live session. (It hangs before any masked
    input is released: a round whose inputs had left cannot be re-summed, see
    ``test_a_retry_never_re_sums_a_released_input``.) Once inst03 hangs,
    every later round waits a phase timeout for it at Advertise, so the after-round-2 kill lands before
    round 3 can complete. (Killing after round 0 first raced a toy round of ~50 ms: the kill could
    land after inst03 had already hung in round 1, leaving the retried round 1 nothing to hold open.)
    """
    out = tmp_path / "run"
    code, result = simulate(
        out,
        *("--preset", "smoke", "--clients", "4", "--rounds", "4", "--phase-timeout", "2"),
        *("--fault", "inst03=hang@1:compute"),
        *("--kill-server-mid-round", "1", "--kill-server-after-round", "2"),
    )
    kills = result["server_kills"]
    assert [(k["when"], k["round"], k["restarted"]) for k in kills] == [
        ("mid-round", 1, True),
        ("after-round", 2, True),
    ]
    assert kills[0]["rounds_completed_at_kill"] == [0]
    assert kills[1]["rounds_completed_at_kill"] == [0, 1, 2]
    assert result["server_restarts"] == 2 and result["exit_codes"]["server"][:2] == [-9, -9]

    # Safety, whether or not the run could finish: rounds exactly once, sound DB, no session reused.
    logged = [r["round"] for r in rounds_log(out)]
    assert logged == list(range(len(logged))) and logged
    with StateStore(out / "state" / "state.sqlite") as store:
        assert store.integrity_check() == []
        db_rounds = store.rounds()
        ledger = store.ledger()
        used = store.used_session_ids()
    assert [r.round for r in db_rounds] == logged
    opened = [e["payload"]["session_id"] for e in ledger if e["kind"] == "session_opened"]
    assert opened and len(opened) == len(set(opened)) == len(used)
    per_round = Counter(s for r in db_rounds for s in r.summary["session_ids"])
    assert all(n == 1 for n in per_round.values()) and set(per_round) <= {s.hex() for s in used}

    # Liveness: the run finished every round, across both restarts.
    assert code == 0, result["problems"]
    assert logged == [0, 1, 2, 3]
    assert result["exit_codes"]["server"] == [-9, -9, 0]
    assert result["plaintext_check"]["status"] == "ok" and result["integrity"]["ok"]
    assert_plaintext_sums(out, monkeypatch)
    # The mid-round kill really hit a live session, and the retried round 1 used a fresh one.
    assert kills[0]["mid_round"] and kills[0]["session_open"]
    interrupted = [
        e["payload"]
        for e in ledger
        if e["kind"] == "attempt_aborted"
        and e["payload"]["round"] == 1
        and e["payload"]["reason"] == "server restarted mid-round"
        and e["payload"]["session_ids"]
    ]
    assert interrupted
    assert not {s for a in interrupted for s in a["session_ids"]} & set(per_round)
    # The hung client is ended by the harness and takes no part after it hung.
    assert result["client_processes"]["inst03"]["stopped_by_harness"] in {"SIGTERM", "SIGKILL"}
    assert all("inst03" not in r.contributors for r in db_rounds[1:])


@pytest.mark.timeout(300)
def test_dp_preset_completes_within_budget_after_the_server_is_killed_mid_round(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``secfed simulate --preset dp --kill-server-mid-round 1``: the deployment path of a DP retry.

    Every institution calibrates its noise so the planned rounds use exactly its budget, so a retry
    that trained a second time would be refused ("would raise its epsilon ... above its privacy
    budget") and the run would stop. It completes, and every ledger holds one release per round."""
    out = tmp_path / "run"
    code, result = simulate(
        out,
        *("--preset", "dp", "--model", str(tiny_model_dir), "--clients", "3", "--rounds", "2"),
        *("--kill-server-mid-round", "1"),
    )
    assert code == 0, result["problems"]
    (kill,) = result["server_kills"]
    assert kill["mid_round"] and kill["session_open"] and kill["restarted"]
    assert result["rounds_completed"] == 2
    for cid in ("inst00", "inst01", "inst02"):
        book = PrivacyLedger.open_existing(out / "clients" / f"{cid}.privacy.jsonl")
        assert book.rounds_trained() == [0, 1] and book.refusals() == []
        assert book.spent().pld <= 8.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "2"], "--clients must be from 3"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--phase-timeout", "0"], "--phase-timeout must be at least 0.1"),
        (["--fault", "inst09=kill@0:advertise"], "unknown client 'inst09'"),
        (["--fault", "inst01=explode@0:advertise"], "expected CLIENT=kill@ROUND:PHASE"),
        (["--fault", "inst01=kill@0:teatime"], "unknown phase 'teatime'"),
        (["--fault", "inst01=kill@5:advertise"], "round 5 never runs"),
        (["--fault", "inst01=kill@0:advertise", "--fault", "inst01=hang@1:unmask"], "already has a fault"),
        (["--kill-server-after-round", "1"], "must be a round with another after it"),
        (["--kill-server-mid-round", "2"], "rounds are 0..1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--preset", "smoke", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_non_empty_out_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["simulate", "--preset", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # --force clears a previous run's files (its state database would resume the old run) and
    # nothing else.
    for name in ("state", "logs"):
        (out / name).mkdir()
        (out / name / "x").write_text("old")
    (out / "result.json").write_text("{}")
    prepare_out_dir(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
