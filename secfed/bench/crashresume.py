"""``secfed bench crash-resume``: SIGKILL the coordinator at random moments; the run must resume exactly.

Each trial is a fresh federation on loopback -- a ``secfed server`` process and ``secfed client``
processes (the harness's run layout and process handling) -- whose server is SIGKILLed at random
moments, one to three times, and restarted on the same port while the clients ride out the outage
with their normal back-off. A kill lands wherever it lands: during start-up, in the advertise phase
before any session id exists, inside a session whose keys were exchanged, or between two rounds. The
moment of each kill is classified afterwards from the state database the dead process left.

A trial passes when, after its restarts:

* **it resumed**: every planned round completed and the server ended normally;
* **no completed round was lost**: every round the dead server had committed (or announced in
  ``rounds.jsonl``) is in the final database with the same model hash;
* **none was repeated**: database and rounds log hold each round exactly once, in order;
* **the state database passes its integrity audit** (hash-chained ledger, tables, model blobs);
* **no session id was used twice**, and every attempt the kill interrupted was recorded as aborted
  and retried with a fresh session (never resumed);
* **no key was reused**: one roster member is a *witness*, an honest client run in this process that
  also records every advert broadcast the server relays to it (each client's two public keys, per
  session). No public key may appear in two sessions. Masks cannot repeat either: every mask is the
  PRG of a fresh key agreement or seed, salted with the session id;
* **every sum is right**: each round's secure sum equals the plaintext sum of its contributors.

The server and the other clients are processes; the witness is a thread here because it has to
report what it saw (the server is the process being killed, the witness survives it like a client).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secfed.bench.load import (
    HOST,
    ProcessFederation,
    log_progress,
    prepare_run,
    start_gated,
    stop_children_on_sigterm,
)
from secfed.bench.stats import add_output_arguments, emit
from secfed.harness.checks import read_rounds_log, state_check
from secfed.harness.layout import RunLayout, client_ids
from secfed.harness.procs import ChildProcess

__all__ = ["CrashResumeOptions", "KeyWitness", "register", "run_crash_resume", "run_trial"]

_TICK_S = 0.02
_SERVER_LINGER_S = 15.0
_STARTUP_S = 1.5  # a (re)started server takes about this long to be serving its clients again


@dataclass(frozen=True)
class CrashResumeOptions:
    trials: int = 10
    clients: int = 4
    rounds: int = 5
    min_kills: int = 1
    max_kills: int = 3
    phase_timeout_s: float = 5.0
    # Interrupted attempts are aborted and retried; generous, so that kills cannot end a run.
    max_attempts: int = 20
    dim: int = 16
    seed: int = 0
    workdir: Path | None = None
    trial_timeout_s: float = 180.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"--trials must be at least 1, got {self.trials}")
        if self.clients < 3:
            raise ValueError(f"--clients must be at least 3, got {self.clients}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if not 1 <= self.min_kills <= self.max_kills:
            raise ValueError(
                f"kills per trial must satisfy 1 <= min <= max, got {self.min_kills}..{self.max_kills}"
            )


# ---------------------------------------------------------------------------------------- the witness


@dataclass
class KeyWitness:
    """What one honest client saw of everybody's keys: per session id, each advertiser's public keys."""

    client_id: str
    sessions: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    error: str | None = None
    finished_reason: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, session_id: bytes, round_: int, adverts: list[tuple[str, bytes, bytes]]) -> None:
        key = session_id.hex() if session_id else f"round{round_}-unnamed-{len(self.sessions)}"
        with self._lock:
            self.sessions[key] = {cid: (pc.hex(), pm.hex()) for cid, pc, pm in adverts}

    def reused_keys(self) -> list[str]:
        """Public keys that appear in more than one session (there must be none)."""
        owners: dict[str, set[str]] = {}
        with self._lock:
            for sid, adverts in self.sessions.items():
                for cid, (pk_cipher, pk_mask) in adverts.items():
                    for pk in (pk_cipher, pk_mask):
                        owners.setdefault(pk, set()).add(f"{cid}@{sid[:12]}")
        return sorted(f"{pk[:16]}... in {sorted(where)}" for pk, where in owners.items() if len(where) > 1)

    def keys_seen(self) -> int:
        with self._lock:
            return 2 * sum(len(a) for a in self.sessions.values())


def _start_witness(
    layout: RunLayout, client_id: str, address: str, options: Mapping[str, Any]
) -> tuple[KeyWitness, threading.Thread]:
    """Run ``client_id`` as an honest client in a thread that also records every advert broadcast."""
    # The client package is composed here, like every benchmark does (never by the secfed library).
    from client.config import RetryPolicy
    from client.runtime import ClientRuntime
    from secfed.fl.registry import client_task
    from secfed.pki.kit import load_kit
    from secfed.proto.v1 import federation_pb2 as pb
    from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
    from secfed.secagg.messages import AdvertBroadcast
    from secfed.wire import WireError, convert

    witness = KeyWitness(client_id)

    class WitnessRuntime(ClientRuntime):
        def _handle(self, stub: pb_grpc.FederationStub, ins: pb.Instruction) -> None:
            if ins.WhichOneof("step") == "advert_broadcast":
                try:
                    relay = convert.relay_from_instruction(ins)
                except WireError:
                    relay = None  # the runtime itself will refuse it
                if isinstance(relay, AdvertBroadcast):
                    witness.record(
                        bytes(ins.session_id),
                        relay.round,
                        [(a.client_id, a.pk_cipher, a.pk_mask) for a in relay.adverts],
                    )
            super()._handle(stub, ins)

    runtime = WitnessRuntime(
        load_kit(layout.pki / "clients" / client_id),
        client_task("toy-mean", client_id, dict(options)),
        address=address,
        retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=600.0),
    )

    def body() -> None:
        try:
            witness.finished_reason = runtime.run().finished_reason
        except Exception as exc:  # reported in the trial's result
            witness.error = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=body, name=f"witness-{client_id}", daemon=True)
    thread.start()
    return witness, thread


# -------------------------------------------------------------------------------------- DB snapshots


@dataclass(frozen=True)
class DbSnapshot:
    """The coordinator's state as a dead server left it (read-only; the writer is gone)."""

    rounds: dict[int, str]  # round -> model hash (hex)
    open_attempt: tuple[int, int] | None
    open_session_ids: int
    readable: bool = True

    @property
    def point(self) -> str:
        """Where the kill landed, in words."""
        if not self.readable:
            return "start-up (no state database yet)"
        if self.open_attempt is None:
            return "between attempts (no attempt open)"
        if self.open_session_ids == 0:
            return "advertise phase (attempt begun, no session id yet)"
        return "inside a session (keys exchanged)"


def snapshot(db: Path) -> DbSnapshot:
    if not db.exists():
        return DbSnapshot({}, None, 0, readable=False)
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            rounds = {int(r): bytes(h).hex() for r, h in conn.execute("SELECT round, model_hash FROM rounds")}
            row = conn.execute("SELECT round, attempt FROM attempts WHERE state = 'begun'").fetchone()
            open_ = None if row is None else (int(row[0]), int(row[1]))
            ids = 0
            if open_ is not None:
                ids = int(
                    conn.execute(
                        "SELECT count(*) FROM session_ids WHERE round = ? AND attempt = ?", open_
                    ).fetchone()[0]
                )
        finally:
            conn.close()
    except sqlite3.Error:
        return DbSnapshot({}, None, 0, readable=False)
    return DbSnapshot(rounds, open_, ids)


def _models(db: Path) -> tuple[dict[int, Any], dict[int, list[str]]]:
    """Every stored model vector by round (-1: the initial one), and each round's contributors."""
    import numpy as np

    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = conn.execute("SELECT round, vector FROM models WHERE vector IS NOT NULL").fetchall()
        members = {
            int(r): [str(c) for c in json.loads(c)]
            for r, c in conn.execute("SELECT round, contributors FROM rounds")
        }
    finally:
        conn.close()
    models = {int(r): np.frombuffer(bytes(v), dtype="<f4").astype(np.float64) for r, v in rows}
    return models, members


def verify_sums(db: Path, records: list[dict[str, Any]], dim: int) -> list[dict[str, Any]]:
    """Check every committed round against the toy task's plaintext, from the database itself.

    For round ``r`` the model before it (the database's model of round ``r - 1``) and its contributors
    give the plaintext update; the database's model after the round must be that update applied
    (within the fixed-point quantum per contributor, and float32), and where ``rounds.jsonl`` has the
    round, its secure sums must equal the plaintext sums. Unlike a check that follows the log, a
    missing log line does not hide or spoil the rounds after it.
    """
    import numpy as np

    from secfed.fl import toy

    opts = toy.ToyOptions(dim=dim)
    try:
        models, members = _models(db)
    except sqlite3.Error as exc:
        return [
            {"round": None, "ok": False, "sum_checked": False, "problems": [f"cannot read models: {exc}"]}
        ]
    logged = {int(r.get("round", -1)): r for r in records}
    out: list[dict[str, Any]] = []
    for r in sorted(members):
        problems: list[str] = []
        before, after = models.get(r - 1), models.get(r)
        if before is None or after is None:
            out.append(
                {"round": r, "ok": False, "sum_checked": False, "problems": [f"round {r}: model missing"]}
            )
            continue
        contribs = [toy.contribution(c, before.astype(np.float32), opts) for c in members[r]]
        want_x = np.sum([c["x"] for c in contribs], axis=0)
        want_w = sum(float(c["w"][0]) for c in contribs)
        quantum = len(contribs) * 2.0**-opts.frac_bits
        # The stored model is float32: allow its rounding on top of the sum's fixed-point error.
        drift = float(np.max(np.abs(after - (before + want_x / want_w))))
        if drift > quantum / want_w + 1e-5 * (1 + float(np.max(np.abs(after)))):
            problems.append(f"round {r}: the stored model is off the plaintext update by {drift:.3g}")
        checked = r in logged
        if checked:
            got = logged[r].get("sums") or {}
            x = np.asarray(got.get("x", []), dtype=np.float64)
            if x.shape != want_x.shape or float(np.max(np.abs(x - want_x))) > quantum:
                problems.append(f"round {r}: the secure x sum is not the plaintext sum")
            if [float(v) for v in got.get("w", [])] != [want_w]:
                problems.append(f"round {r}: the secure weight sum is not {want_w}")
        out.append({"round": r, "ok": not problems, "sum_checked": checked, "problems": problems})
    return out


# ------------------------------------------------------------------------------------------- a trial


@dataclass
class _Pace:
    """How long a round takes here, learnt from the rounds committed so far (kill moments scale with it)."""

    durations: list[float] = field(default_factory=list)

    def round_s(self) -> float:
        """A short round (the lower quartile: rounds right after a restart also wait for reconnections)."""
        if not self.durations:
            return 0.1
        ordered = sorted(self.durations)
        return max(0.02, ordered[len(ordered) // 4])


def _wait_for_kill_moment(
    fed: ProcessFederation, rounds: int, last_start: float, pace: _Pace, rng: random.Random
) -> tuple[str, float]:
    """Sleep until a random kill moment; returns what was aimed at and the random delay.

    A third of the kills aim at start-up and reconnection (a uniform moment in the first
    ``_STARTUP_S`` after the server's last start). The others pick one of the rounds still to come at
    random, wait until the round before it has been committed, and then a uniform moment within a
    short round's time: that lands them in any phase of that round, or just after it, between two
    rounds (a toy round takes tens of milliseconds, so the moment has to be aimed this closely).
    """
    committed = len(fed.records)
    if rng.random() < 1 / 3 or committed >= rounds - 1:
        aim, delay, since = "start-up", rng.uniform(0.0, _STARTUP_S), last_start
    else:
        target = rng.randint(committed + 1, rounds - 1)  # a round that runs after a commit we can see
        while len(fed.records) < target and fed.server is not None and fed.server.alive():
            fed.poll_rounds()
            time.sleep(_TICK_S / 4)
        aim, delay, since = f"round {target}", rng.uniform(0.0, pace.round_s()), time.monotonic()
    while time.monotonic() < since + delay and len(fed.records) < rounds:
        fed.poll_rounds()
        time.sleep(min(_TICK_S / 4, max(0.0, since + delay - time.monotonic())))
    fed.poll_rounds()
    return aim, delay


def run_trial(
    index: int, out: Path, opts: CrashResumeOptions, rng: random.Random, t0: float, pace: _Pace | None = None
) -> dict[str, Any]:
    """One federation, killed ``min_kills..max_kills`` times at random moments; returns its checks.

    The client processes start first and wait for the server (as in ``secfed bench load``), so round
    0 does not race their start-up; the kill moments are drawn by :func:`_wait_for_kill_moment`.
    """
    pace = pace if pace is not None else _Pace()
    ids = client_ids(opts.clients)
    task_options = {"dim": opts.dim}
    layout = prepare_run(
        out,
        name=f"secfed bench crash-resume trial {index}",
        clients=ids,
        plan={
            "rounds": opts.rounds,
            "phase_timeout_s": float(opts.phase_timeout_s),
            "compute_timeout_s": float(opts.phase_timeout_s),  # toy contributions compute at once
            "max_attempts": opts.max_attempts,
            "seed": opts.seed + index,
        },
        task_options=task_options,
        give_up_after_s=opts.trial_timeout_s,
    )
    fed = ProcessFederation(layout)
    problems: list[str] = []
    kills: list[dict[str, Any]] = []
    clients: dict[str, ChildProcess] = {}
    witness: KeyWitness | None = None
    thread: threading.Thread | None = None
    n_kills = rng.randint(opts.min_kills, opts.max_kills)
    started = time.monotonic()
    deadline = started + opts.trial_timeout_s
    try:
        fed.reserve_port()
        start_gated(
            ids[:-1],
            lambda cid: clients.__setitem__(cid, fed.start_client(cid)),
            clients.get,
            batch=len(ids),
        )
        if not fed.start_server("start"):
            return _trial_result(
                index,
                layout,
                fed,
                kills,
                clients,
                witness,
                opts,
                [f"server did not start ({layout.log('server')})"],
                started,
            )
        witness, thread = _start_witness(layout, ids[-1], f"{HOST}:{fed.port}", task_options)
        last_start = time.monotonic()
        for k in range(n_kills):
            aim, delay = _wait_for_kill_moment(fed, opts.rounds, last_start, pace, rng)
            if fed.server is None or not fed.server.alive():
                kills.append({"kill": k, "fired": False, "aim": aim, "why": "the server had already ended"})
                break
            if len(fed.records) >= opts.rounds:
                kills.append(
                    {"kill": k, "fired": False, "aim": aim, "why": "all rounds were already completed"}
                )
                break
            announced = {int(r["round"]): str(r.get("model_hash")) for r in fed.records}
            fed.kill_server()
            at = round(time.monotonic() - started, 3)
            fed.poll_rounds()  # a line written just before the kill
            announced.update({int(r["round"]): str(r.get("model_hash")) for r in fed.records})
            snap = snapshot(layout.state_db)
            lost = sorted(r for r, h in announced.items() if snap.rounds.get(r) != h)
            if lost:
                problems.append(f"kill {k}: rounds {lost} were announced but are not in the database")
            restarted = fed.restart_server()
            kills.append(
                {
                    "kill": k,
                    "fired": True,
                    "at_s": at,
                    "aim": aim,
                    "delay_s": round(delay, 3),
                    "point": snap.point,
                    "open_attempt": list(snap.open_attempt) if snap.open_attempt else None,
                    "committed_at_kill": dict(sorted(snap.rounds.items())),
                    "restarted": restarted,
                }
            )
            log_progress(
                opts.progress,
                t0,
                f"trial {index}: kill {k + 1}/{n_kills} at {at:.2f} s, {len(snap.rounds)} rounds committed, "
                f"{snap.point}; restarted: {restarted}",
            )
            if not restarted:
                problems.append(f"kill {k}: the server could not be restarted on port {fed.port}")
                break
            last_start = time.monotonic()
        assert fed.server is not None
        while fed.server.alive() and time.monotonic() < deadline:
            fed.poll_rounds()
            time.sleep(0.05)
        if fed.server.alive():
            problems.append(f"the trial did not finish within {opts.trial_timeout_s:.0f} s")
        for proc in clients.values():
            proc.wait(max(0.0, min(5.0, deadline - time.monotonic())))
        if thread is not None:
            thread.join(max(0.0, min(10.0, deadline - time.monotonic())))
    finally:
        for proc in [*clients.values(), *fed.server_runs]:
            proc.stop(grace_s=2.0)
    fed.poll_rounds()
    # Round 0 also waits for the processes to start, and a restart's first round for reconnections.
    pace.durations.extend(float(r.get("seconds") or 0.0) for r in fed.records[1:])
    return _trial_result(index, layout, fed, kills, clients, witness, opts, problems, started)


def _trial_result(
    index: int,
    layout: RunLayout,
    fed: ProcessFederation,
    kills: list[dict[str, Any]],
    clients: Mapping[str, ChildProcess],
    witness: KeyWitness | None,
    opts: CrashResumeOptions,
    problems: list[str],
    started: float,
) -> dict[str, Any]:
    records = read_rounds_log(layout.rounds_log)
    audit = state_check(layout.state_db)
    final = snapshot(layout.state_db)
    problems = list(problems)
    findings: list[str] = []
    # A kill that lands after enough members unmasked leaves their inputs possibly summed: the round
    # is never re-summed (secfed.fl.releases), so the federation stops there, by design.
    stopped_released = "refused: released" in (fed.finished_reason() or "")
    if stopped_released:
        findings.append(f"the federation stopped by the no-differencing rule: {fed.finished_reason()}")
    # The database is the record of what completed; rounds.jsonl is a copy written after each commit.
    # A line the log lacks is a finding of its own (the server died between the two writes); a line
    # the database contradicts, or a round in neither, is a problem.
    db_numbers = sorted(final.rounds)
    if db_numbers != list(range(len(db_numbers) if stopped_released else opts.rounds)):
        problems.append(f"the state database holds rounds {db_numbers}, expected 0..{opts.rounds - 1}")
    logged = [int(rec.get("round", -1)) for rec in records]
    gaps = sorted(set(final.rounds) - set(logged))
    if gaps:
        findings.append(
            f"rounds.jsonl lacks rounds {gaps} that the database holds: the server was killed after "
            "committing a round and before appending its line (the round is not lost; its sums are)"
        )
    if logged != sorted(set(logged)):
        problems.append(f"rounds.jsonl repeats or reorders rounds: {logged}")
    for rec in records:
        if final.rounds.get(int(rec.get("round", -1))) != rec.get("model_hash"):
            problems.append(f"round {rec.get('round')}: rounds.jsonl and the database disagree")
    # No completed round lost: whatever the dead server had committed is still there, unchanged.
    lost = sorted(
        {
            r
            for kill in kills
            for r, digest in (kill.get("committed_at_kill") or {}).items()
            if final.rounds.get(int(r)) != digest
        }
    )
    if lost:
        problems.append(f"rounds {lost} were committed before a kill but are missing or changed afterwards")
    # The rounds table's key forbids a second row per round; the ledger names a second completion.
    twice = [p for p in audit.get("problems", []) if "completed a second time" in p]
    repeated = [r for r, n in Counter(logged).items() if n > 1] + twice
    if not audit.get("ok"):
        problems.extend(f"state database: {p}" for p in audit.get("problems", []))
    sums = verify_sums(layout.state_db, records, opts.dim)
    wrong = [r["round"] for r in sums if not r["ok"]]
    problems.extend(p for r in sums for p in r["problems"])
    interrupted = sum(
        1
        for a in audit.get("aborted_attempts", [])
        if isinstance(a, dict) and a.get("reason") == "server restarted mid-round"
    )
    # A kill during the next start-up, before it recorded the abort, finds the same attempt still open.
    expected_interrupted = len({tuple(k["open_attempt"]) for k in kills if k.get("open_attempt")})
    if interrupted != expected_interrupted:
        problems.append(
            f"{expected_interrupted} kills interrupted an open attempt, but {interrupted} attempts were "
            "recorded as interrupted"
        )
    reused_keys = witness.reused_keys() if witness is not None else []
    if reused_keys:
        problems.append(f"public keys reused across sessions: {reused_keys[:3]}")
    if witness is None or witness.error or not witness.sessions:
        problems.append(f"the key witness saw no session ({witness.error if witness else 'not started'})")
    final_exit = fed.server_runs[-1].returncode if fed.server_runs else None
    if final_exit != 0 and not stopped_released:
        problems.append(f"the server's last run exited with {final_exit}")
    exits = {cid: proc.returncode for cid, proc in clients.items()}
    if any(code != 0 for code in exits.values()) and not stopped_released:
        problems.append(f"client processes did not all finish normally: {exits}")
    resumed = len(final.rounds) == opts.rounds and final_exit == 0
    return {
        "trial": index,
        "ok": not problems,
        "resumed": resumed,
        "stopped_released": stopped_released,
        "kills": kills,
        "kills_fired": sum(1 for k in kills if k.get("fired")),
        "server_restarts": max(0, len(fed.server_runs) - 1),
        "rounds_completed": len(final.rounds),
        "rounds_lost": len(lost),
        "rounds_repeated": len(repeated),
        "rounds_log_gaps": len(gaps),
        "findings": findings,
        "wrong_sums": len(wrong),
        "sums_checked": sum(r["sum_checked"] for r in sums),
        "models_checked": len(sums),
        "integrity_ok": bool(audit.get("ok")),
        "session_ids": len(audit.get("session_ids", [])),
        "session_ids_reused": sum(1 for p in audit.get("problems", []) if "opened more than once" in p),
        "interrupted_attempts": interrupted,
        "attempts_aborted": len(audit.get("aborted_attempts", [])),
        "witness_sessions": len(witness.sessions) if witness else 0,
        "witness_keys": witness.keys_seen() if witness else 0,
        "keys_reused": len(reused_keys),
        "client_exit_codes": exits,
        "server_exit_codes": [s.returncode for s in fed.server_runs],
        "wall_s": round(time.monotonic() - started, 3),
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------- the bench


def run_crash_resume(opts: CrashResumeOptions) -> dict[str, Any]:
    """Run every trial (in a temporary directory unless ``workdir``) and summarise them."""
    t0 = time.monotonic()
    rng = random.Random(opts.seed)  # noqa: S311 - reproducible kill moments, not a secret
    tmp: Path | None = None
    root = opts.workdir
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="secfed-bench-crash-"))
        root = tmp
    trials: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    pace = _Pace()
    try:
        i = 0
        # A trial whose run finished before its first kill came tested nothing: it is run again
        # (with the next random moments), at most as many times as there are trials.
        while len(trials) < opts.trials and len(discarded) <= opts.trials:
            trial = run_trial(i, root / f"trial{i:02d}", opts, rng, t0, pace)
            (trials if trial["kills_fired"] or not trial["ok"] else discarded).append(trial)
            log_progress(
                opts.progress,
                t0,
                f"trial {i}: {'OK' if trial['ok'] else 'FAILED'} -- {trial['kills_fired']} kills, "
                f"{trial['rounds_completed']}/{opts.rounds} rounds, {trial['wall_s']:.1f} s"
                + ("" if trial["kills_fired"] else " (no kill fired: not counted)")
                + "".join(f"\n    problem: {p}" for p in trial["problems"]),
            )
            i += 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    points = Counter(k["point"] for t in trials for k in t["kills"] if k.get("fired"))
    return {
        "benchmark": "crash-resume",
        "ok": len(trials) == opts.trials and all(t["ok"] for t in trials),
        "trials": len(trials),
        "trials_discarded": len(discarded),
        "trials_resumed": sum(1 for t in trials if t["resumed"]),
        "trials_ok": sum(1 for t in trials if t["ok"]),
        "clients": opts.clients,
        "rounds_per_trial": opts.rounds,
        "kills": sum(t["kills_fired"] for t in trials),
        "kill_points": dict(points),
        "rounds_lost": sum(t["rounds_lost"] for t in trials),
        "rounds_repeated": sum(t["rounds_repeated"] for t in trials),
        "rounds_log_gaps": sum(t["rounds_log_gaps"] for t in trials),
        "findings": [f"trial {t['trial']}: {f}" for t in trials for f in t["findings"]],
        "models_checked": sum(t["models_checked"] for t in trials),
        "sums_checked": sum(t["sums_checked"] for t in trials),
        "wrong_sums": sum(t["wrong_sums"] for t in trials),
        "integrity_failures": sum(1 for t in trials if not t["integrity_ok"]),
        "session_ids_reused": sum(t["session_ids_reused"] for t in trials),
        "keys_reused": sum(t["keys_reused"] for t in trials),
        "witness_keys_checked": sum(t["witness_keys"] for t in trials),
        "interrupted_attempts": sum(t["interrupted_attempts"] for t in trials),
        "seed": opts.seed,
        "phase_timeout_s": opts.phase_timeout_s,
        "transport": "gRPC, mutual TLS, 127.0.0.1; server and clients are processes, the key witness a thread",
        "wall_s": round(time.monotonic() - t0, 3),
        "trial_results": trials,
        "workdir": str(opts.workdir) if opts.workdir is not None else None,
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "crash-resume", help="SIGKILL the server at random moments; every trial must resume exactly"
    )
    p.add_argument("--trials", type=int, default=10, help="independent federations (default 10)")
    p.add_argument(
        "--clients", type=int, default=4, help="clients per trial, one of them the key witness (4)"
    )
    p.add_argument("--rounds", type=int, default=5, help="rounds per trial (default 5)")
    p.add_argument("--max-kills", type=int, default=3, help="server kills per trial: 1..N at random (3)")
    p.add_argument("--phase-timeout", type=float, default=5.0, metavar="S", help="phase timeout (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    p.add_argument("--workdir", type=Path, help="keep every trial's run directory here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    stop_children_on_sigterm()
    opts = CrashResumeOptions(
        trials=args.trials,
        clients=args.clients,
        rounds=args.rounds,
        max_kills=args.max_kills,
        phase_timeout_s=args.phase_timeout,
        seed=args.seed,
        workdir=args.workdir,
        progress=not args.quiet,
    )
    result = run_crash_resume(opts)
    if not emit(result, args.out, args.json):
        print(
            f"crash-resume: {result['trials_ok']}/{result['trials']} trials OK, "
            f"{result['trials_resumed']} resumed after {result['kills']} server kills "
            f"({', '.join(f'{n} {p}' for p, n in result['kill_points'].items())})"
        )
        print(
            f"  rounds lost {result['rounds_lost']}, repeated {result['rounds_repeated']}, wrong sums "
            f"{result['wrong_sums']}, integrity failures {result['integrity_failures']}, session ids reused "
            f"{result['session_ids_reused']}, keys reused {result['keys_reused']} "
            f"(of {result['witness_keys_checked']} public keys seen by the witness)"
        )
        for finding in result["findings"]:
            print(f"  finding: {finding}")
        for trial in result["trial_results"]:
            for problem in trial["problems"]:
                print(f"  trial {trial['trial']}: problem: {problem}", file=sys.stderr)
        print(f"{'OK' if result['ok'] else 'FAILED'} in {result['wall_s']:.1f} s")
    return 0 if result["ok"] else 1
