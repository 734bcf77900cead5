"""``secfed bench load``: many client processes that die, hang and come back; every round must stay exact.

What it shows: with N ``secfed client`` processes on loopback (real mutual TLS, the real entry points,
the state database on disk) and a fraction of them dropping out in every round -- SIGKILLed or hung at
a random SecAgg phase -- every round either completes with the secure sum equal to the plaintext sum
of its contributors, or is aborted cleanly (the attempt is recorded as aborted, nothing of it is
applied, and the round is retried with a fresh session or the run ends with a reason). A client that
died is restarted after a short random delay, as a new process with the same identity, often while
the round it died in is still running: it must not get back into that session (it has no keys for it,
and the server must not let it in), and it takes part again from the next round or attempt on.

The fault schedule is drawn up front from ``--seed``: in each round, ``round(dropout * N)`` clients
(a random sample) get a fault, ``--hang-share`` of them a hang and the rest a kill, each at a phase
drawn uniformly from the five upload phases. A client process takes one fault (``secfed client
--fault``), so a client with faults in several rounds gets each from a new incarnation. A hung
process is SIGKILLed (and restarted) once the round it hung in is over; a process whose fault did not
fire in its round (it missed the phase, e.g. because it was restarted late) is restarted with its next
fault.

The verdict comes from the files the run leaves, with the harness's own checks
(:mod:`secfed.harness.checks`): the rounds log and the state database agree and hold each round once,
each round's secure sum equals the plaintext sum (toy task: every client's data is a known function of
its id), and the state database passes its integrity audit. Per-phase latencies are the seconds each
phase of the completing attempt stayed open (``rounds.jsonl``), reported as percentiles over rounds.

Benchmarks compose every part of the system, like the CLI: this module drives the server and clients
only as processes (:mod:`secfed.harness.procs`), so it measures what a deployment runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from secfed.bench.stats import add_output_arguments, emit
from secfed.harness.checks import check_rounds, plaintext_check, read_rounds_log, state_check
from secfed.harness.faults import UPLOAD_PHASES
from secfed.harness.layout import RunLayout, client_ids, prepare_out_dir, toml_value, write_run
from secfed.harness.procs import ChildProcess, secfed_command

__all__ = [
    "LoadOptions",
    "PlannedFault",
    "ProcessFederation",
    "evaluate_run",
    "percentiles",
    "plan_faults",
    "prepare_run",
    "register",
    "run_load",
]

HOST = "127.0.0.1"
TASK = "toy-mean"
_TICK_S = 0.1
_PORT_WAIT_S = 60.0
# After its last round the server waits up to 10 s for every roster client to hear "finished".
_SERVER_LINGER_S = 15.0


def stop_children_on_sigterm() -> None:
    """Make SIGTERM unwind the benchmark like Ctrl-C, so its ``finally`` blocks stop every child process."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def log_progress(enabled: bool, t0: float, message: str) -> None:
    """One progress line on stderr (stdout is reserved for ``--json``)."""
    if enabled:
        print(f"[{time.monotonic() - t0:7.1f} s] {message}", file=sys.stderr, flush=True)


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """Linear-interpolated percentiles plus the max and the sample count (``{}`` for no values)."""
    if not values:
        return {}
    data = sorted(float(v) for v in values)
    out: dict[str, float] = {}
    for p in points:
        pos = (len(data) - 1) * p / 100
        lo, hi = math.floor(pos), math.ceil(pos)
        out[f"p{p}"] = round(data[lo] + (data[hi] - data[lo]) * (pos - lo), 4)
    out["max"] = round(data[-1], 4)
    out["n"] = len(data)
    return out


# ------------------------------------------------------------------------------------- the processes


def prepare_run(
    out: Path,
    *,
    name: str,
    clients: Sequence[str],
    plan: Mapping[str, Any],
    task_options: Mapping[str, Any],
    limits: Mapping[str, Any] | None = None,
    give_up_after_s: float = 3600.0,
) -> RunLayout:
    """A fresh run directory (``out`` is cleared of a previous run's files): PKI, configs, logs.

    The layout is the harness's (:mod:`secfed.harness.layout`), so a run can be inspected or re-run
    by hand like a ``secfed simulate`` run; ``limits`` becomes the server's ``[limits]`` table.
    """
    prepare_out_dir(out, force=True)
    layout = RunLayout(out)
    write_run(
        layout,
        name=name,
        clients=clients,
        rounds=plan,
        task=TASK,
        task_options=task_options,
        client_options={cid: dict(task_options) for cid in clients},
        # Fast back-off: a restarted server is found within half a second.
        retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "give_up_after_s": give_up_after_s},
    )
    if limits:
        lines = ["", "[limits]", *(f"{k} = {toml_value(v)}" for k, v in limits.items())]
        with layout.server_config.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return layout


@dataclass
class ProcessFederation:
    """A ``secfed server`` process and ``secfed client`` processes of one run directory, on loopback.

    The server binds a free port the first time and the same port after a restart (clients know only
    that one). Rounds are read incrementally from ``rounds.jsonl`` as the server commits them.
    """

    layout: RunLayout
    port: int = 0
    server: ChildProcess | None = None
    server_runs: list[ChildProcess] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _buffer: str = ""

    def start_server(self, banner: str) -> bool:
        """Start the server (on the known port once there is one); True once it has written its port."""
        self.layout.port_file.unlink(missing_ok=True)
        argv = secfed_command(
            "server",
            "--config",
            str(self.layout.server_config),
            "--listen",
            f"{HOST}:{self.port}",
            "--port-file",
            str(self.layout.port_file),
        )
        self.server = ChildProcess.start("server", argv, self.layout.log("server"), banner=banner)
        self.server_runs.append(self.server)
        deadline = time.monotonic() + _PORT_WAIT_S
        while time.monotonic() < deadline:
            try:
                port = int(self.layout.port_file.read_text().strip())
            except (OSError, ValueError):
                port = 0  # not written yet, or caught half-written
            if port:
                if self.port and port != self.port:
                    self.server.stop()
                    return False
                self.port = port
                return True
            if not self.server.alive():
                return False
            time.sleep(0.02)
        self.server.stop()
        return False

    def reserve_port(self) -> int:
        """Pick the free port the server will bind, so clients can be started (and wait) before it."""
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = int(sock.getsockname()[1])
        return self.port

    def restart_server(self, attempts: int = 10) -> bool:
        """Start the server again on the same port, retrying while the old socket is still being released."""
        for attempt in range(1, attempts + 1):
            if self.start_server(f"restart {len(self.server_runs)} (attempt {attempt})"):
                return True
            time.sleep(0.3)
        return False

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.kill()

    def start_client(
        self, client_id: str, fault: str | None = None, banner: str | None = None
    ) -> ChildProcess:
        args = [
            "client",
            "--config",
            str(self.layout.client_config(client_id)),
            "--server",
            f"{HOST}:{self.port}",
        ]
        if fault is not None:
            args += ["--fault", fault]
        return ChildProcess.start(client_id, secfed_command(*args), self.layout.log(client_id), banner=banner)

    def poll_rounds(self) -> list[dict[str, Any]]:
        """Rounds committed since the last call (a torn last line waits for its end)."""
        path = self.layout.rounds_log
        if not path.exists():
            return []
        with path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        self._buffer += data.decode("utf-8", errors="replace")
        *lines, self._buffer = self._buffer.split("\n")
        new: list[dict[str, Any]] = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                new.append(record)
        self.records.extend(new)
        return new

    def finished_reason(self) -> str | None:
        """The reason the server printed when it ended (its last incarnation's ``secfed server: ...``)."""
        log = self.layout.log("server")
        if not log.exists():
            return None
        found = re.findall(r"^secfed server: (.*)$", log.read_text(encoding="utf-8", errors="replace"), re.M)
        return found[-1] if found else None


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used (Linux ``/proc``; None elsewhere or once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


T = TypeVar("T")


def start_gated(
    items: Sequence[T],
    start: Callable[[T], None],
    process: Callable[[T], ChildProcess | None],
    batch: int,
    timeout_s: float = 120.0,
) -> float:
    """Start processes ``batch`` at a time, each batch once the previous one has gone idle.

    A client process is *ready* when it has finished importing and sits in its wait for the server:
    its CPU time stops growing (under 0.03 s in the last second, after at least 0.2 s in all). Few
    at a time, an importing process gets a good share of a core, so busy and idle are far apart.
    Where ``/proc`` is missing, or a batch takes longer than ``timeout_s``, it moves on regardless.
    Returns the seconds spent.
    """
    t0 = time.monotonic()
    for i in range(0, len(items), batch):
        group = items[i : i + batch]
        for item in group:
            start(item)
        history: dict[int, list[tuple[float, float]]] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = time.monotonic()
            ready = 0
            for item in group:
                proc = process(item)
                cpu = None if proc is None or not proc.alive() else cpu_seconds(proc.pid)
                if proc is None or cpu is None:
                    ready += 1  # gone, or no /proc: nothing to wait for
                    continue
                samples = history.setdefault(proc.pid, [])
                samples.append((now, cpu))
                past = [c for t, c in samples if now - t >= 1.0]
                if past and cpu >= 0.2 and cpu - past[-1] < 0.03:
                    ready += 1
            if ready == len(group):
                break
    return time.monotonic() - t0


# ------------------------------------------------------------------------------------------ faults


@dataclass(frozen=True)
class PlannedFault:
    """A client process told to SIGKILL itself (``kill``) or stop answering (``hang``) before an upload."""

    client: str
    round: int
    action: Literal["kill", "hang"]
    phase: str

    @property
    def arg(self) -> str:
        """The client process's ``--fault`` value."""
        return f"{self.action}@{self.round}:{self.phase}"


def plan_faults(
    ids: Sequence[str], rounds: int, dropout: float, hang_share: float, rng: random.Random
) -> dict[str, list[PlannedFault]]:
    """Per round, ``round(dropout * len(ids))`` distinct clients get a fault at a uniform random phase."""
    plan: dict[str, list[PlannedFault]] = {cid: [] for cid in ids}
    per_round = round(dropout * len(ids))
    for r in range(rounds):
        for cid in sorted(rng.sample(list(ids), per_round)):
            action: Literal["kill", "hang"] = "hang" if rng.random() < hang_share else "kill"
            plan[cid].append(PlannedFault(cid, r, action, rng.choice(UPLOAD_PHASES)))
    return plan


@dataclass
class _Slot:
    """One client identity and the process currently running it (if any)."""

    client: str
    planned: tuple[PlannedFault, ...]
    pending: list[PlannedFault] = field(default_factory=list)
    proc: ChildProcess | None = None
    fault: PlannedFault | None = None
    restart_at: float | None = None
    incarnations: int = 0
    done: bool = False


# --------------------------------------------------------------------------------------- the bench


@dataclass(frozen=True)
class LoadOptions:
    """One load run. ``workdir`` keeps the run directory (logs, state); by default a temporary one is used."""

    clients: int = 50
    rounds: int = 5
    dropout: float = 0.2
    hang_share: float = 0.3
    phase_timeout_s: float = 20.0
    max_attempts: int = 3
    dim: int = 16
    seed: int = 0
    restart_delay_s: tuple[float, float] = (0.5, 3.0)
    startup_batch: int = 4
    max_workers: int | None = None
    workdir: Path | None = None
    timeout_s: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.clients < 3:
            raise ValueError(f"--clients must be at least 3, got {self.clients}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.hang_share <= 1.0:
            raise ValueError(f"--hang-share must be in [0, 1], got {self.hang_share}")
        if not self.phase_timeout_s >= 0.5:
            raise ValueError(f"--phase-timeout must be at least 0.5 s, got {self.phase_timeout_s}")
        if self.max_attempts < 1:
            raise ValueError(f"--max-attempts must be at least 1, got {self.max_attempts}")

    @property
    def workers(self) -> int:
        """gRPC workers: enough that every client can hold a long poll (the server allows workers / 2)."""
        return self.max_workers if self.max_workers is not None else max(64, 2 * self.clients + 16)

    @property
    def deadline_s(self) -> float:
        """Every phase of every attempt timing out, plus start-up and linger: only a wedged run hits it."""
        if self.timeout_s is not None:
            return self.timeout_s
        return 120.0 + self.rounds * self.max_attempts * len(UPLOAD_PHASES) * self.phase_timeout_s


def run_load(opts: LoadOptions) -> dict[str, Any]:
    """Run one load test end to end and return its result (see the module docstring)."""
    if opts.workdir is not None:
        return _run_load(opts, opts.workdir)
    tmp = Path(tempfile.mkdtemp(prefix="secfed-bench-load-"))
    try:
        return _run_load(opts, tmp / "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_load(opts: LoadOptions, out: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    rng = random.Random(opts.seed)  # noqa: S311 - a reproducible fault schedule, not a secret
    ids = client_ids(opts.clients)
    schedule = plan_faults(ids, opts.rounds, opts.dropout, opts.hang_share, rng)
    log_progress(opts.progress, t0, f"provisioning {opts.clients} clients in {out}")
    layout = prepare_run(
        out,
        name="secfed bench load",
        clients=ids,
        plan={
            "rounds": opts.rounds,
            "phase_timeout_s": float(opts.phase_timeout_s),
            "compute_timeout_s": float(opts.phase_timeout_s),  # toy contributions compute at once
            "max_attempts": opts.max_attempts,
            "seed": opts.seed,
        },
        task_options={"dim": opts.dim},
        limits={"max_workers": opts.workers},
        give_up_after_s=opts.deadline_s,
    )
    fed = ProcessFederation(layout)
    slots = {cid: _Slot(cid, tuple(schedule[cid]), list(schedule[cid])) for cid in ids}
    stats: Counter[str] = Counter()
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    warnings: list[str] = []

    def note(event: str, **fields: Any) -> None:
        events.append({"t": round(time.monotonic() - t0, 3), "event": event, **fields})

    def launch(slot: _Slot, committed: int) -> None:
        # Faults of rounds already over can no longer fire: skip them.
        while slot.pending and slot.pending[0].round < committed:
            stats["faults_skipped"] += 1
            slot.pending.pop(0)
        slot.fault = slot.pending.pop(0) if slot.pending else None
        slot.incarnations += 1
        banner = f"incarnation {slot.incarnations}" + (f", fault {slot.fault.arg}" if slot.fault else "")
        slot.proc = fed.start_client(slot.client, slot.fault.arg if slot.fault else None, banner)
        slot.restart_at = None

    try:
        # The clients start first, against a port nobody listens on yet: a client process spends
        # seconds importing its libraries, and N of them on a few cores would otherwise trickle in
        # during round 0 and miss its first deadline. Each waits for the server (with back-off) once
        # it is ready; the server starts when all are.
        fed.reserve_port()
        log_progress(opts.progress, t0, f"starting {opts.clients} client processes (server port {fed.port})")
        waited = start_gated(
            list(slots.values()), lambda slot: launch(slot, 0), lambda slot: slot.proc, opts.startup_batch
        )
        log_progress(opts.progress, t0, f"clients ready after {waited:.1f} s; starting the server")
        if not fed.start_server("start"):
            problems.append(f"the server did not start; see {layout.log('server')}")
            return _result(opts, layout, fed, slots, stats, events, problems, warnings, t0)
        log_progress(opts.progress, t0, f"server on port {fed.port}")
        deadline = time.monotonic() + opts.deadline_s
        assert fed.server is not None
        while fed.server.alive():
            now = time.monotonic()
            for rec in fed.poll_rounds():
                log_progress(
                    opts.progress,
                    t0,
                    f"round {rec.get('round')} committed: {len(rec.get('contributors') or [])} contributors, "
                    f"{len(rec.get('dropped') or [])} dropped, {float(rec.get('seconds') or 0):.1f} s",
                )
            committed = len(fed.records)
            over = committed >= opts.rounds
            for slot in slots.values():
                _supervise(slot, committed, over, now, rng, opts, stats, note, launch)
            # After the last round the server lingers (up to 10 s) for clients that died or hung and
            # will never hear "finished", then exits by itself; it is not signalled, since a signal
            # that meets its interpreter shutdown would kill it.
            if now > deadline:
                problems.append(f"the run did not finish within {opts.deadline_s:.0f} s; stopped it")
                break
            time.sleep(_TICK_S)
        fed.poll_rounds()
        if fed.server.alive():
            fed.server.stop()
        elif fed.server.returncode not in (0, 1):
            problems.append(f"the server exited with {fed.server.returncode}; see {layout.log('server')}")
    finally:
        for slot in slots.values():
            if slot.proc is not None:
                slot.proc.stop(grace_s=2.0)
        for proc in fed.server_runs:
            proc.stop(grace_s=2.0)
    return _result(opts, layout, fed, slots, stats, events, problems, warnings, t0)


def _supervise(
    slot: _Slot,
    committed: int,
    over: bool,
    now: float,
    rng: random.Random,
    opts: LoadOptions,
    stats: Counter[str],
    note: Callable[..., None],
    launch: Callable[[_Slot, int], None],
) -> None:
    """One supervision step for one client: notice deaths, end finished hangs, restart when due."""
    proc = slot.proc
    if proc is not None and not proc.alive():
        code = proc.returncode
        slot.proc = None
        if code == 0:
            slot.done = True  # it heard "finished"
            return
        if code == -9 and proc.stopped_by is None:
            stats["kills_fired"] += 1
            note("client-died", client=slot.client, fault=slot.fault.arg if slot.fault else None)
        elif proc.stopped_by is None:
            stats["unexpected_exits"] += 1
            note("client-exited", client=slot.client, exit_code=code)
        if not over:
            slot.restart_at = now + rng.uniform(*opts.restart_delay_s)
    elif proc is not None and slot.fault is not None and slot.fault.round < committed:
        # The fault's round is over. A hang that fired is still hanging; a fault that never fired (the
        # process missed its phase) would hold back the next one. Either way: kill and restart.
        if slot.fault.action == "hang" or slot.pending:
            stats["hangs_ended" if slot.fault.action == "hang" else "faults_missed"] += 1
            note("client-stopped", client=slot.client, fault=slot.fault.arg)
            proc.kill()
            slot.proc = None
            slot.restart_at = now + rng.uniform(*opts.restart_delay_s)
        else:
            stats["faults_missed"] += 1
            slot.fault = None
    if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at and not over:
        stats["restarts"] += 1
        launch(slot, committed)


# ------------------------------------------------------------------------------------------ verdict


def evaluate_run(layout: RunLayout, planned_rounds: int, task_options: Mapping[str, Any]) -> dict[str, Any]:
    """What the run directory says happened: per-round outcome, wrong sums, aborts, integrity, latencies.

    A round *completes* when the rounds log and the state database both hold it (the same
    contributors and model); its sum is *wrong* when the plaintext check of the toy task fails for it.
    A round is *aborted* when the run ended on it (every attempt aborted, recorded in the ledger); the
    rounds after it never run. Attempts aborted and retried within a round are counted separately.
    """
    records = read_rounds_log(layout.rounds_log)
    audit = state_check(layout.state_db)
    db_rounds = audit.get("rounds") if audit.get("opened") else None
    round_problems = check_rounds(records, len(records), db_rounds)
    check = plaintext_check(TASK, records, task_options) if records else {"rounds": [], "problems": []}
    verdicts = {r.get("round"): bool(r.get("ok")) for r in check.get("rounds", [])}
    wrong = sorted(r for r, ok in verdicts.items() if not ok)
    # A round the plaintext check never reached (it stops at the first malformed record) is unverified.
    unverified = sorted(
        {rec.get("round") for rec in records} - set(verdicts), key=lambda r: (r is None, r or 0)
    )
    aborted_attempts = [a for a in audit.get("aborted_attempts", []) if isinstance(a, dict)]
    per_round_aborts = Counter(int(a["round"]) for a in aborted_attempts if isinstance(a.get("round"), int))
    completed = len(records)
    aborted_round = completed if completed < planned_rounds and per_round_aborts.get(completed) else None
    phases: dict[str, list[float]] = {}
    for rec in records:
        for phase, seconds in (rec.get("phase_seconds") or {}).items():
            phases.setdefault(str(phase), []).append(float(seconds))
    return {
        "records": records,
        "audit": audit,
        "round_problems": round_problems,
        "plaintext": check,
        "rounds_completed": completed,
        "rounds_aborted": 0 if aborted_round is None else 1,
        "aborted_round": aborted_round,
        "rounds_not_run": planned_rounds - completed - (0 if aborted_round is None else 1),
        "rounds_retried": sorted(r for r in per_round_aborts if r < completed),
        "attempts_aborted": len(aborted_attempts),
        "abort_reasons": Counter(_reason_class(str(a.get("reason"))) for a in aborted_attempts),
        "wrong_sums": len(wrong) + len(unverified),
        "wrong_rounds": wrong + [r for r in unverified if r is not None],
        "phase_latency_s": {p: percentiles(v) for p, v in phases.items()},
        "round_latency_s": percentiles([float(r.get("seconds") or 0.0) for r in records]),
    }


def _reason_class(reason: str) -> str:
    """An abort reason without its numbers, so reasons can be counted ("masked-input: only N ...")."""
    return re.sub(r"\d+", "N", reason)[:120]


def _result(
    opts: LoadOptions,
    layout: RunLayout,
    fed: ProcessFederation,
    slots: Mapping[str, _Slot],
    stats: Counter[str],
    events: list[dict[str, Any]],
    problems: list[str],
    warnings: list[str],
    t0: float,
) -> dict[str, Any]:
    verdict = evaluate_run(layout, opts.rounds, {"dim": opts.dim})
    audit = verdict["audit"]
    reason = fed.finished_reason()
    if verdict["round_problems"]:
        problems.extend(verdict["round_problems"])
    if not audit.get("ok"):
        problems.extend(f"state database: {p}" for p in audit.get("problems", []))
    accounted = verdict["rounds_completed"] + verdict["rounds_aborted"]
    # A round whose inputs had left in an attempt that may have been unmasked cannot be retried
    # without a differencing window (secfed.fl.releases): the run stops there, by design, not by fault.
    stopped_released = "refused: released" in (reason or "")
    if accounted != opts.rounds and not stopped_released:
        problems.append(
            f"{opts.rounds - accounted} round(s) neither completed nor aborted (the run ended early: {reason})"
        )
    if verdict["rounds_aborted"] and not (reason or "").startswith(
        f"round {verdict['aborted_round']} failed"
    ):
        problems.append(f"round {verdict['aborted_round']} aborted, but the server ended with {reason!r}")
    if stats["unexpected_exits"]:
        warnings.append(f"{stats['unexpected_exits']} client process(es) exited on their own with an error")
    records = verdict["records"]
    planned = [f for slot in slots.values() for f in slot.planned]
    result: dict[str, Any] = {
        "benchmark": "load",
        "ok": not problems and verdict["wrong_sums"] == 0,
        "clients": opts.clients,
        "rounds": opts.rounds,
        "dropout": opts.dropout,
        "hang_share": opts.hang_share,
        "phase_timeout_s": opts.phase_timeout_s,
        "max_attempts": opts.max_attempts,
        "seed": opts.seed,
        "task": {"name": TASK, "dim": opts.dim},
        "max_workers": opts.workers,
        "transport": "gRPC, mutual TLS, 127.0.0.1; one OS process per client and for the server",
        "rounds_completed": verdict["rounds_completed"],
        "rounds_aborted": verdict["rounds_aborted"],
        "rounds_not_run": verdict["rounds_not_run"],
        "rounds_retried": len(verdict["rounds_retried"]),
        "retried_rounds": verdict["rounds_retried"],
        "attempts_aborted": verdict["attempts_aborted"],
        "abort_reasons": dict(verdict["abort_reasons"]),
        "wrong_sums": verdict["wrong_sums"],
        "wrong_rounds": verdict["wrong_rounds"],
        "sum_check": "toy task: secure x sum within one fixed-point quantum per contributor of the "
        "plaintext sum, integer weight sum exactly equal",
        "phase_latency_s": verdict["phase_latency_s"],
        "round_latency_s": verdict["round_latency_s"],
        "round_latency_note": "seconds of each round's completing attempt (clients start before the server)",
        "per_round": [
            {
                "round": rec.get("round"),
                "contributors": len(rec.get("contributors") or []),
                "dropped_after_sharing_keys": len(rec.get("dropped") or []),
                "excluded": opts.clients - len(rec.get("contributors") or []),
                "seconds": round(float(rec.get("seconds") or 0.0), 3),
                "sum_ok": rec.get("round") not in verdict["wrong_rounds"],
            }
            for rec in records
        ],
        "faults": {
            "planned": len(planned),
            "planned_kill": sum(1 for f in planned if f.action == "kill"),
            "planned_hang": sum(1 for f in planned if f.action == "hang"),
            "by_phase": dict(Counter(f.phase for f in planned)),
            "kills_fired": stats["kills_fired"],
            "hangs_ended": stats["hangs_ended"],
            "missed": stats["faults_missed"],
            "skipped": stats["faults_skipped"],
        },
        "client_restarts": stats["restarts"],
        "client_incarnations": sum(s.incarnations for s in slots.values()),
        "integrity": {"ok": bool(audit.get("ok")), "problems": audit.get("problems", [])},
        "session_ids": len(audit.get("session_ids", [])),
        "server_exit_codes": [s.returncode for s in fed.server_runs],
        "finished_reason": reason,
        "wall_s": round(time.monotonic() - t0, 3),
        "problems": problems,
        "warnings": warnings,
        "events": events,
        "workdir": str(layout.out) if opts.workdir is not None else None,
    }
    return result


# ------------------------------------------------------------------------------------------- the CLI


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "load", help="N client processes with random dropouts and hangs: every round exact or cleanly aborted"
    )
    p.add_argument("--clients", type=int, default=50, help="client processes (default 50)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    p.add_argument(
        "--dropout", type=float, default=0.2, help="fraction of clients that fail in each round (default 0.2)"
    )
    p.add_argument(
        "--hang-share", type=float, default=0.3, help="share of the failures that hang instead of dying (0.3)"
    )
    p.add_argument(
        "--phase-timeout", type=float, default=20.0, metavar="S", help="seconds each phase waits (default 20)"
    )
    p.add_argument("--max-attempts", type=int, default=3, help="attempts per round before the run ends (3)")
    p.add_argument("--dim", type=int, default=16, help="toy task vector length (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (default 0)")
    p.add_argument("--workdir", type=Path, help="keep the run directory here (default: a temporary one)")
    p.add_argument("--timeout", type=float, metavar="S", help="overall limit (default: from the round plan)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    stop_children_on_sigterm()
    opts = LoadOptions(
        clients=args.clients,
        rounds=args.rounds,
        dropout=args.dropout,
        hang_share=args.hang_share,
        phase_timeout_s=args.phase_timeout,
        max_attempts=args.max_attempts,
        dim=args.dim,
        seed=args.seed,
        workdir=args.workdir,
        timeout_s=args.timeout,
        progress=not args.quiet,
    )
    result = run_load(opts)
    if not emit(result, args.out, args.json):
        for line in summary_lines(result):
            print(line)
    return 0 if result["ok"] else 1


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    faults = result["faults"]
    lines = [
        f"load: {result['clients']} client processes, {result['rounds']} rounds, dropout {result['dropout']:.0%} "
        f"({faults['planned_kill']} kills, {faults['planned_hang']} hangs planned), phase timeout "
        f"{result['phase_timeout_s']} s",
        f"  rounds completed {result['rounds_completed']}, aborted {result['rounds_aborted']}, retried "
        f"{result['rounds_retried']} ({result['attempts_aborted']} attempts aborted); wrong sums "
        f"{result['wrong_sums']}",
    ]
    for rec in result["per_round"]:
        lines.append(
            f"  round {rec['round']}: {rec['contributors']} contributors, {rec['excluded']} excluded, "
            f"{rec['seconds']:.1f} s, sum {'ok' if rec['sum_ok'] else 'WRONG'}"
        )
    for phase, pct in result["phase_latency_s"].items():
        lines.append(
            f"  phase {phase:13s} p50 {pct['p50']:.2f} s  p90 {pct['p90']:.2f} s  max {pct['max']:.2f} s"
        )
    lines.append(
        f"  client restarts {result['client_restarts']}, kills fired {faults['kills_fired']}, hangs ended "
        f"{faults['hangs_ended']}; state database {'ok' if result['integrity']['ok'] else 'FAILED'}"
    )
    lines.extend(f"  problem: {p}" for p in result["problems"])
    lines.extend(f"  warning: {w}" for w in result["warnings"])
    lines.append(f"{'OK' if result['ok'] else 'FAILED'} in {result['wall_s']:.1f} s")
    return lines
