"""``secfed simulate``: a whole federation on this machine, by default one OS process per participant.

Why processes and not threads: the point is to exercise what a deployment runs, namely the
``secfed server`` and ``secfed client`` entry points, mutual TLS on a real port, the state database
on disk, and processes that die. A client can be made to SIGKILL itself or hang at a chosen phase
(``--fault``), and the server can be SIGKILLed mid-round or between rounds and restarted on the same
port (``--kill-server-*``); the clients ride out the restart with their normal back-off.

``--backend ray`` trades the transport for scale: the same run directory (consortium, configuration
files, state database, each institution's ledgers) run by the real coordinator and virtual
institutions in Ray workers (:mod:`secfed.harness.ray_backend`), for the hundreds of institutions that
one process each cannot hold.

A run then checks its own outcome from the files it left (see :mod:`secfed.harness.checks`): every
planned round completed exactly once, the secure sums equal the plaintext sums (toy task), and the
state database passes its audit. ``OUT/result.json`` records all of it; the exit status is 0 only
if all three hold.

Every wait is bounded: the server gets a deadline derived from the round plan (every phase of every
attempt timing out, plus restarts), clients a short grace after the server has finished, and
anything still running is terminated (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from secfed import logs
from secfed.harness.checks import check_rounds, plaintext_check, read_rounds_log, state_check
from secfed.harness.faults import UPLOAD_PHASES, ClientFault, parse_faults
from secfed.harness.layout import RunLayout, client_ids, prepare_out_dir, write_run
from secfed.harness.presets import DEFAULT_PRESET, PRESETS, Preset
from secfed.harness.procs import ChildProcess, secfed_command

__all__ = [
    "BACKENDS",
    "RAY_INSTALL_HINT",
    "Backend",
    "BackendRun",
    "ServerKill",
    "SimulationOptions",
    "add_arguments",
    "check_ray_cpus",
    "check_size",
    "options_from_args",
    "run_cli",
    "run_simulation",
]

log = logging.getLogger("secfed.harness")

#: The ways a simulation can run: one OS process per participant over mTLS gRPC, or Ray workers.
BACKENDS = ("process", "ray")
Backend = Literal["process", "ray"]
MAX_CLIENTS = 256  # one OS process each
MAX_VIRTUAL_CLIENTS = 4096  # --backend ray: a guard against a mistyped size (one kit each is provisioned)
RAY_INSTALL_HINT = "install the ray extra: pip install 'secfed[ray]'"
_HOST = "127.0.0.1"
_POLL_S = 0.05
_PORT_WAIT_S = 30.0
_SERVER_LINGER_S = 15.0  # the server waits up to 10 s for every client to hear "finished"
# After the server exits, a client still running never heard "finished" (it polls at least every
# second while the server lingers for it) and will only retry until it gives up: end it soon.
_CLIENT_GRACE_S = 3.0
_PHASES_PER_ATTEMPT = len(UPLOAD_PHASES) - 1  # SecAgg phases; the compute phase has its own deadline


@dataclass(frozen=True)
class ServerKill:
    """SIGKILL the server once round ``round`` is under way (``mid-round``) or committed (``after-round``)."""

    when: Literal["mid-round", "after-round"]
    round: int

    @property
    def order(self) -> tuple[int, int]:
        # Within a round, "mid" necessarily comes before "after".
        return (self.round, 0 if self.when == "mid-round" else 1)


@dataclass(frozen=True)
class SimulationOptions:
    """A validated simulation request (build it with :func:`options_from_args` or directly)."""

    preset: Preset
    out: Path
    clients: int
    rounds: int
    phase_timeout_s: float
    faults: tuple[ClientFault, ...] = ()
    server_kills: tuple[ServerKill, ...] = ()
    force: bool = False
    timeout_s: float | None = None
    backend: Backend = "process"
    ray_cpus: int | None = None  # --backend ray: CPUs of the local Ray cluster (None: all of them)

    @property
    def client_ids(self) -> tuple[str, ...]:
        return client_ids(self.clients)

    @property
    def compute_timeout_s(self) -> float:
        return self.preset.compute_timeout_s or self.phase_timeout_s

    @property
    def deadline_s(self) -> float:
        """The whole run's time limit: every phase of every attempt timing out, per round and restart.

        That is the slowest a *correct* run can be (a phase closes early once all have answered), so
        only a wedged run hits it.
        """
        if self.timeout_s is not None:
            return self.timeout_s
        per_round = self.preset.max_attempts * (
            _PHASES_PER_ATTEMPT * self.phase_timeout_s + self.compute_timeout_s
        )
        joins = (1 + len(self.server_kills)) * self.phase_timeout_s
        return 60.0 + joins + (self.rounds + len(self.server_kills)) * per_round + _SERVER_LINGER_S


# ------------------------------------------------------------------------------------------ arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``secfed simulate`` flags (called by :mod:`secfed.cli`)."""
    names = ", ".join(f"{p.name} ({p.description})" for p in PRESETS.values())
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, help=f"what to run: {names}"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="a simulation described in TOML (e.g. examples/fedit-shared-10.toml) instead of a preset",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="process",
        help="process: one OS process per participant over mutual-TLS gRPC (default); ray: virtual "
        "institutions in Ray workers on a local loopback-only cluster, for hundreds of institutions "
        f"({RAY_INSTALL_HINT})",
    )
    parser.add_argument("--clients", type=int, help="number of institutions (overrides the preset)")
    parser.add_argument("--rounds", type=int, help="number of rounds (overrides the preset)")
    parser.add_argument(
        "--per-round",
        type=int,
        metavar="N",
        help="institutions sampled into each round's cohort (default: the preset's participation, "
        "every institution for the built-in presets)",
    )
    parser.add_argument(
        "--ray-cpus",
        type=int,
        metavar="N",
        help="with --backend ray: CPUs of the local Ray cluster, one worker each (default: all of this "
        "machine's; with GPUs, one worker per GPU)",
    )
    parser.add_argument(
        "--model",
        help="base model for presets that train one: a Hugging Face model directory or a locally cached id "
        "(overrides the preset's model; every process uses the same)",
    )
    parser.add_argument(
        "--out", type=Path, help="run directory (default: runs/simulate-<timestamp> in the current directory)"
    )
    parser.add_argument(
        "--force", action="store_true", help="reuse a non-empty --out (removes a previous run's files there)"
    )
    parser.add_argument(
        "--phase-timeout",
        type=float,
        metavar="S",
        help="seconds each SecAgg phase waits (overrides the preset)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="CLIENT=ACTION@ROUND:PHASE",
        help=f"make a client kill itself or hang (ACTION kill|hang, PHASE one of {', '.join(UPLOAD_PHASES)}); "
        "repeatable, one per client",
    )
    parser.add_argument(
        "--kill-server-after-round",
        action="append",
        type=int,
        default=[],
        metavar="R",
        help="SIGKILL the server once round R is committed, then restart it (repeatable)",
    )
    parser.add_argument(
        "--kill-server-mid-round",
        action="append",
        type=int,
        default=[],
        metavar="R",
        help="SIGKILL the server while round R is under way (after its keys were exchanged), then restart it",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="overall time limit (default: derived from the round plan)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print result.json to stdout instead of a summary"
    )


def options_from_args(args: argparse.Namespace) -> SimulationOptions:
    """Validate the flags against the preset; every error names the flag and what is allowed."""
    if args.config is not None:
        from secfed.harness.simconfig import load_simulation

        preset = load_simulation(args.config)
    else:
        preset = PRESETS[args.preset]
    if args.model is not None:
        if "model" not in preset.task_options:
            raise ValueError(f"--model: preset {preset.name!r} trains no model")
        preset = preset.with_model(args.model)
    backend: Backend = args.backend
    clients = preset.clients if args.clients is None else args.clients
    rounds = preset.rounds if args.rounds is None else args.rounds
    phase_timeout = preset.phase_timeout_s if args.phase_timeout is None else args.phase_timeout
    check_size(backend, clients, args.per_round, preset.min_cohort)
    if args.per_round is not None:
        preset = dataclasses.replace(preset, participation=args.per_round / clients)
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    if not phase_timeout >= 0.1:
        raise ValueError(f"--phase-timeout must be at least 0.1 s, got {phase_timeout}")
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    faulted = args.fault or args.kill_server_mid_round or args.kill_server_after_round
    if backend == "ray" and faulted:
        raise ValueError(
            "--fault and --kill-server-* act on OS processes: they need --backend process "
            "(virtual institutions are not processes)"
        )
    check_ray_cpus(backend, args.ray_cpus)
    ids = client_ids(clients)
    faults = parse_faults(args.fault, ids, rounds)
    kills: list[ServerKill] = []
    for r in args.kill_server_mid_round:
        if not 0 <= r < rounds:
            raise ValueError(f"--kill-server-mid-round {r}: rounds are 0..{rounds - 1}")
        kills.append(ServerKill("mid-round", r))
    for r in args.kill_server_after_round:
        if not 0 <= r < rounds - 1:
            raise ValueError(
                f"--kill-server-after-round {r}: must be a round with another after it (0..{rounds - 2}); "
                "after the last round the server is only shutting down"
            )
        kills.append(ServerKill("after-round", r))
    if len(set(kills)) != len(kills):
        raise ValueError("the same server kill is given twice")
    out = args.out if args.out is not None else _default_out()
    return SimulationOptions(
        preset=preset,
        out=out,
        clients=clients,
        rounds=rounds,
        phase_timeout_s=phase_timeout,
        faults=faults,
        server_kills=tuple(sorted(kills, key=lambda k: k.order)),
        force=args.force,
        timeout_s=args.timeout,
        backend=backend,
        ray_cpus=args.ray_cpus,
    )


def check_size(backend: Backend, clients: int, per_round: int | None, min_cohort: int) -> None:
    """``--clients`` within what ``backend`` runs, ``--per-round`` (None: the preset's) within it."""
    most = MAX_VIRTUAL_CLIENTS if backend == "ray" else MAX_CLIENTS
    if not min_cohort <= clients <= most:
        raise ValueError(
            f"--clients must be from {min_cohort} (the smallest cohort secure aggregation releases) "
            f"to {most} with --backend {backend}, got {clients}"
            + ("" if backend == "ray" else f" (--backend ray runs up to {MAX_VIRTUAL_CLIENTS})")
        )
    if per_round is not None and not min_cohort <= per_round <= clients:
        raise ValueError(
            f"--per-round must be from {min_cohort} (the smallest cohort secure aggregation "
            f"releases) to --clients ({clients}), got {per_round}"
        )


def check_ray_cpus(backend: Backend, ray_cpus: int | None) -> None:
    """``--ray-cpus`` only with Ray, and Ray installed (checked before anything is provisioned)."""
    if backend != "ray":
        if ray_cpus is not None:
            raise ValueError("--ray-cpus only applies with --backend ray")
        return
    if ray_cpus is not None and ray_cpus < 1:
        raise ValueError(f"--ray-cpus must be at least 1, got {ray_cpus}")
    if importlib.util.find_spec("ray") is None:
        raise ValueError(f"--backend ray: Ray is not installed; {RAY_INSTALL_HINT}")


def _default_out() -> Path:
    base = Path.cwd() / "runs" / f"simulate-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class _LogTail:
    """Reads a growing log from an offset: the current server incarnation's lines only."""

    path: Path
    offset: int = 0
    buffer: str = ""

    def reset(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.buffer = ""

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        self.buffer += data.decode("utf-8", errors="replace")
        *lines, self.buffer = self.buffer.split("\n")
        return lines


@dataclass
class _Run:
    opts: SimulationOptions
    layout: RunLayout
    t0: float = field(default_factory=time.monotonic)
    port: int = 0
    server: ChildProcess | None = None
    server_runs: list[ChildProcess] = field(default_factory=list)
    clients: dict[str, ChildProcess] = field(default_factory=dict)
    kills: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    completed: set[int] = field(default_factory=set)
    server_log: _LogTail = field(init=False)
    rounds_log: _LogTail = field(init=False)

    def __post_init__(self) -> None:
        self.server_log = _LogTail(self.layout.log("server"))
        self.rounds_log = _LogTail(self.layout.rounds_log)

    def poll_rounds(self) -> set[int]:
        """Rounds committed so far, read incrementally (a real model's round lines can be large)."""
        for line in self.rounds_log.new_lines():
            try:
                self.completed.add(int(json.loads(line)["round"]))
            except (ValueError, KeyError, TypeError):
                continue
        return self.completed

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def note(self, event: str, **fields: Any) -> None:
        """Record an event in the result's timeline and log it (stderr), for a reader of a failed run."""
        self.timeline.append({"t": round(self.elapsed(), 3), "event": event, **fields})
        logs.event(log, event, **fields)

    # -- server ---------------------------------------------------------------------------------
    def start_server(self, listen: str, banner: str) -> None:
        self.layout.port_file.unlink(missing_ok=True)
        argv = secfed_command(
            "server",
            "--config",
            str(self.layout.server_config),
            "--listen",
            listen,
            "--port-file",
            str(self.layout.port_file),
        )
        self.server = ChildProcess.start(
            "server",
            argv,
            self.layout.log("server"),
            banner=banner,
            torch_threads=self.opts.preset.torch_threads,
        )
        self.server_runs.append(self.server)

    def wait_for_port(self) -> int | None:
        """The port the server wrote, or None if it exited (or took too long) before writing one."""
        assert self.server is not None
        deadline = time.monotonic() + _PORT_WAIT_S
        while time.monotonic() < deadline:
            try:
                return int(self.layout.port_file.read_text().strip())
            except (OSError, ValueError):
                pass  # not written yet, or caught half-written
            if not self.server.alive():
                return None
            time.sleep(_POLL_S)
        self.server.stop()
        return None

    def restart_server(self) -> bool:
        """Start the server again on the same port (the clients know only that one); retry a busy port."""
        for attempt in range(1, 6):
            self.start_server(f"{_HOST}:{self.port}", f"restart {len(self.server_runs)} (attempt {attempt})")
            port = self.wait_for_port()
            if port == self.port:
                return True
            if self.server is not None:
                self.server.stop()
            time.sleep(0.5)
        return False

    # -- kills ----------------------------------------------------------------------------------
    def kill_due(self, kill: ServerKill, completed: set[int], state: dict[str, Any]) -> bool:
        """Whether ``kill`` should fire now; ``state`` carries its progress between polls."""
        if kill.when == "after-round":
            return kill.round in completed
        if kill.round in completed:
            return True  # the round finished between polls: kill anyway, recorded as not mid-round
        if "started_at" not in state:
            pattern = re.compile(rf"\bevent=attempt-start round={kill.round}\b")
            if any(pattern.search(line) for line in self.server_log.new_lines()):
                state["started_at"] = time.monotonic()
            return False
        # The attempt is open; wait until its session id is recorded (keys exchanged), so the restart
        # has to throw away a live session, not one that never began. Bounded: a round whose
        # Advertise phase never closes is killed after two phase timeouts anyway.
        if _session_open(self.layout.state_db, kill.round):
            state["session_open"] = True
            return True
        return time.monotonic() - float(state["started_at"]) > 2 * self.opts.phase_timeout_s

    def kill_and_restart(self, kill: ServerKill, state: dict[str, Any]) -> bool:
        assert self.server is not None
        self.server.kill()
        self.server_log.reset()  # the next kill watches only the new incarnation's lines
        completed = sorted(self.poll_rounds())
        record: dict[str, Any] = {
            "when": kill.when,
            "round": kill.round,
            "at_s": round(self.elapsed(), 3),
            "rounds_completed_at_kill": completed,
        }
        if kill.when == "mid-round":
            record["mid_round"] = kill.round not in completed
            record["session_open"] = bool(state.get("session_open", False))
            if not record["mid_round"]:
                self.warnings.append(
                    f"the mid-round kill of round {kill.round} landed after the round had completed (it was "
                    "faster than the harness polls); a hang fault in that round holds it open"
                )
        self.note("server-killed", when=kill.when, round=kill.round)
        ok = self.restart_server()
        record["restarted"] = ok
        record["restart_s"] = round(self.elapsed() - record["at_s"], 3)
        self.kills.append(record)
        if ok:
            self.note("server-restarted", port=self.port)
        else:
            self.problems.append(f"the server could not be restarted on port {self.port}")
        return ok

    # -- clients --------------------------------------------------------------------------------
    def start_clients(self) -> None:
        faults = {f.client: f for f in self.opts.faults}
        for cid in self.opts.client_ids:
            args = [
                "client",
                "--config",
                str(self.layout.client_config(cid)),
                "--server",
                f"{_HOST}:{self.port}",
            ]
            if cid in faults:
                args += ["--fault", faults[cid].client_arg]
            self.clients[cid] = ChildProcess.start(
                cid, secfed_command(*args), self.layout.log(cid), torch_threads=self.opts.preset.torch_threads
            )

    def finish_clients(self) -> None:
        """Give clients a short grace to hear "finished", then end them; hung ones at once."""
        hung = {f.client for f in self.opts.faults if f.action == "hang"}
        for cid in hung:
            self.clients[cid].stop()
        deadline = time.monotonic() + _CLIENT_GRACE_S
        for child in self.clients.values():
            child.wait(deadline - time.monotonic())
        for child in self.clients.values():
            child.stop()

    def stop_all(self) -> None:
        for child in [*self.server_runs, *self.clients.values()]:
            child.stop(grace_s=1.0)

    def settled(self, completed: set[int]) -> bool:
        """Every planned round is committed, every client that could hear "finished" has, and some never will.

        The server lingers after its last round until each roster client has been told it is over,
        which a killed or hung client never will be; the harness knows which those are, the server
        cannot, so at this point it asks the server to stop (SIGTERM, the server's graceful stop).
        When every client heard "finished" the server exits by itself and is left alone (a signal
        during its interpreter shutdown would kill it).
        """
        if not set(range(self.opts.rounds)) <= completed:
            return False
        hung = {f.client for f in self.opts.faults if f.action == "hang"}
        rest = [child for cid, child in self.clients.items() if cid not in hung]
        if any(child.alive() for child in rest):
            return False
        return bool(hung) or any(child.returncode != 0 for child in rest)

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> None:
        self.start_server(f"{_HOST}:0", "start")
        port = self.wait_for_port()
        if port is None:
            self.problems.append(f"the server did not start; see {self.layout.log('server')}")
            return
        self.port = port
        self.note("server-started", port=port)
        self.start_clients()
        self.note("clients-started", clients=len(self.clients))
        pending = list(self.opts.server_kills)
        kill_state: dict[str, Any] = {}
        deadline = self.t0 + self.opts.deadline_s
        stop_requested = False
        settled_since: float | None = None
        while True:
            assert self.server is not None
            completed = self.poll_rounds()
            if pending and self.kill_due(pending[0], completed, kill_state):
                if not self.kill_and_restart(pending.pop(0), kill_state):
                    return
                kill_state = {}
                continue
            if not self.server.alive():
                break
            if settled_since is None and not pending and self.settled(completed):
                settled_since = time.monotonic()
            if not stop_requested and settled_since is not None and time.monotonic() - settled_since > 1.0:
                self.server.request_stop()
                stop_requested = True
                self.note(
                    "server-stop-requested", reason="all rounds done; the remaining clients are dead or hung"
                )
            if time.monotonic() > deadline:
                self.problems.append(
                    f"the run did not finish within {self.opts.deadline_s:.0f} s; stopped it "
                    f"(rounds completed: {sorted(completed)})"
                )
                self.server.stop()
                break
            time.sleep(_POLL_S)
        self.note("server-exited", exit_code=self.server.returncode)
        for kill in pending:
            self.problems.append(f"server kill {kill.when} {kill.round} never fired (the run ended first)")


def _session_open(db: Path, round_: int) -> bool:
    """Whether the open attempt at ``round_`` has registered its session id (read-only, best effort).

    This peeks at the server's SQLite file rather than its logs because the session id is recorded
    there (and only there) the moment Advertise closes; any error just means "not yet".
    """
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0.5)
        try:
            row = conn.execute(
                "SELECT count(*) FROM session_ids s JOIN attempts a ON a.round = s.round AND "
                "a.attempt = s.attempt WHERE a.state = 'begun' AND s.round = ?",
                (round_,),
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return bool(row and row[0] > 0)


def _client_outcomes(run: _Run) -> tuple[dict[str, Any], list[str]]:
    """Each client's process summary and whether it ended as its fault (or lack of one) implies."""
    faults = {f.client: f for f in run.opts.faults}
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for cid, child in run.clients.items():
        summary = child.summary()
        fault = faults.get(cid)
        if fault is None:
            expected = summary["exit_code"] == 0 and child.stopped_by is None
        elif fault.action == "kill":
            expected = summary["exit_code"] == -9 and child.stopped_by is None
        else:
            expected = child.stopped_by is not None
        summary["fault"] = fault.client_arg if fault else None
        summary["as_expected"] = expected
        if not expected:
            warnings.append(f"client {cid} ended unexpectedly (exit {summary['exit_code']}); see {child.log}")
        out[cid] = summary
    return out, warnings


def _small(values: Any, limit: int = 4096) -> Any:
    """Vectors go into result.json only when small: a LoRA run's sums would dwarf everything else."""
    return values if isinstance(values, list) and len(values) <= limit else None


def _evaluate(preset: Preset, opts: SimulationOptions, *, adapter_dir: Path | None) -> Any:
    from secfed.harness.evaluation import evaluate_builtin, evaluate_file

    style = str(dict(preset.task_options.get("train", {})).get("style", "chat"))
    model = str(preset.task_options.get("model", "smollm2-135m-instruct"))
    if preset.eval_data is not None:
        return evaluate_file(
            model,
            Path(preset.eval_data),
            adapter_dir=adapter_dir,
            style=style,
            max_new_tokens=preset.eval_max_new_tokens,
            max_records=preset.eval_max_records,
        )
    return evaluate_builtin(
        model,
        preset.options_for(0, len(opts.client_ids)),
        len(opts.client_ids),
        adapter_dir=adapter_dir,
        style=style,
        max_new_tokens=preset.eval_max_new_tokens,
    )


@dataclass
class BackendRun:
    """What a backend reports beside the files it left: its own result fields, and what went wrong."""

    wall_s: float
    fields: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _run_processes(opts: SimulationOptions, layout: RunLayout) -> BackendRun:
    """The server and every client as ``secfed`` processes on 127.0.0.1, faults injected as asked."""
    run = _Run(opts, layout)
    try:
        run.run()
        run.finish_clients()
    finally:
        run.stop_all()
    wall = run.elapsed()
    clients, warnings = _client_outcomes(run)
    warnings = run.warnings + warnings
    final_server = run.server_runs[-1].summary() if run.server_runs else None
    if final_server is not None and final_server["exit_code"] != 0:
        warnings.append(f"the server's last run exited with {final_server['exit_code']}")
    fields = {
        "port": run.port,
        "server_kills": run.kills,
        "server_restarts": max(0, len(run.server_runs) - 1),
        "exit_codes": {
            "server": [s.returncode for s in run.server_runs],
            "clients": {cid: c["exit_code"] for cid, c in clients.items()},
        },
        "server_runs": [s.summary() for s in run.server_runs],
        "client_processes": clients,
        "timeline": run.timeline,
    }
    return BackendRun(wall, fields, run.problems, warnings)


def _run_backend(opts: SimulationOptions, layout: RunLayout) -> BackendRun:
    if opts.backend == "ray":
        from secfed.harness.ray_backend import run_on_ray

        return run_on_ray(opts, layout)
    return _run_processes(opts, layout)


def run_simulation(opts: SimulationOptions) -> dict[str, Any]:
    """Run one simulation end to end and return the result (also written to ``OUT/result.json``)."""
    prepare_out_dir(opts.out, force=opts.force)
    layout = RunLayout(opts.out)
    preset = opts.preset
    started = datetime.now(UTC)
    write_run(
        layout,
        name=f"secfed simulate ({preset.name})",
        clients=opts.client_ids,
        rounds={
            "rounds": opts.rounds,
            "participation": preset.participation,
            "min_cohort": preset.min_cohort,
            "phase_timeout_s": float(opts.phase_timeout_s),
            "compute_timeout_s": float(opts.compute_timeout_s),
            # Every client starts at once here: the first phase waits for them no longer than any other.
            "join_timeout_s": float(opts.phase_timeout_s),
            "max_attempts": preset.max_attempts,
            "seed": preset.seed,
        },
        task=preset.task,
        task_options=preset.task_options,
        client_options={
            cid: preset.options_for(i, len(opts.client_ids)) for i, cid in enumerate(opts.client_ids)
        },
        # Fast back-off: a restarted server is found within half a second; never outlive the run.
        retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "give_up_after_s": float(opts.deadline_s)},
        privacy=preset.privacy,
    )
    before = None
    if preset.evaluate:
        # Also converts and caches the base model once, before the child processes need it.
        before = _evaluate(preset, opts, adapter_dir=None)
    backend = _run_backend(opts, layout)

    records = read_rounds_log(layout.rounds_log)
    integrity = state_check(layout.state_db)
    round_problems = check_rounds(
        records, opts.rounds, integrity.get("rounds") if integrity.get("opened") else None
    )
    plaintext = plaintext_check(preset.task, records, preset.task_options)
    evaluation: dict[str, Any] | None = None
    adapter_dir = layout.state_db.parent / "adapter"
    if before is not None:
        evaluation = {"before": before.to_json(), "after": None, "adapter": None}
        if adapter_dir.is_dir():
            from secfed.eval.report import format_table

            after = _evaluate(preset, opts, adapter_dir=adapter_dir)
            evaluation.update(
                after=after.to_json(), adapter=str(adapter_dir), table=format_table(before, after)
            )
        (opts.out / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    completed = not round_problems and len(records) == opts.rounds
    ok = (
        completed and not backend.problems and integrity.get("ok") is True and plaintext["status"] != "failed"
    )
    result: dict[str, Any] = {
        "ok": ok,
        "backend": opts.backend,
        "preset": preset.name,
        "task": {"name": preset.task, "options": dict(preset.task_options)},
        "clients": opts.clients,
        "client_ids": list(opts.client_ids),
        "rounds": opts.rounds,
        "rounds_completed": len(records),
        "all_rounds_completed": completed,
        "phase_timeout_s": opts.phase_timeout_s,
        "out": str(opts.out),
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(backend.wall_s, 3),
        "deadline_s": opts.deadline_s,
        "round_records": [
            {
                "round": r.get("round"),
                "contributors": r.get("contributors"),
                "dropped": r.get("dropped"),
                "model_hash": r.get("model_hash"),
                "seconds": r.get("seconds"),
                "sums": {k: _small(v) for k, v in (r.get("sums") or {}).items()},
                "model": _small(r.get("model")),
            }
            for r in records
        ],
        "faults": [f.as_dict() for f in opts.faults],
        "server_kills": [],
        **backend.fields,
        "integrity": integrity,
        "plaintext_check": plaintext,
        "evaluation": evaluation,
        "privacy": _privacy_outcomes(layout, opts.client_ids),
        "problems": backend.problems + round_problems,
        "warnings": backend.warnings,
        "files": {
            "server_config": str(layout.server_config),
            "state_db": str(layout.state_db),
            "rounds_log": str(layout.rounds_log),
            "logs": str(layout.logs),
        },
    }
    layout.result.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _privacy_outcomes(layout: RunLayout, client_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each institution's privacy spend, recomputed from its own ledger (only where DP was used)."""
    from secfed.dp.ledger import PrivacyLedger

    out: dict[str, dict[str, Any]] = {}
    for cid in client_ids:
        path = layout.client_config(cid).parent / f"{cid}.privacy.jsonl"
        if not path.exists():
            continue
        try:
            entries = PrivacyLedger.open_existing(path)
        except ValueError as exc:
            out[cid] = {"error": str(exc)}
            continue
        if not entries.rounds_trained() and not entries.refusals():
            continue
        spent = entries.spent()
        out[cid] = {
            "epsilon": spent.pld,
            "epsilon_rdp": spent.rdp,
            "delta": entries.delta,
            "rounds_trained": entries.rounds_trained(),
            "refusals": len(entries.refusals()),
            "ledger": str(path),
        }
    return out


# ---------------------------------------------------------------------------------------------- output


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The human summary: one line per round, then the checks and where everything is."""
    checks = {r["round"]: r for r in result["plaintext_check"].get("rounds", [])}
    lines = [
        f"secfed simulate: preset {result['preset']}, {result['clients']} clients, {result['rounds']} rounds "
        f"({result['task']['name']}, {result['backend']} backend)"
    ]
    ray = result.get("ray")
    if ray is not None:
        lines.append(
            f"  Ray on {ray['address']}: {ray['workers']} worker(s) of {ray['cpus_per_worker']} CPU"
            f"{' and 1 GPU' if ray['gpus_per_worker'] else ''} each, hosting {ray['institutions']} "
            "virtual institution(s)"
        )
    for rec in result["round_records"]:
        check = checks.get(rec["round"])
        verdict = ""
        if check is not None and "max_abs_error" in check:
            verdict = (
                f", plaintext {'ok' if check['ok'] else 'MISMATCH'} (max error {check['max_abs_error']:.2g})"
            )
        seconds = rec.get("seconds")
        lines.append(
            f"  round {rec['round']}: {len(rec['contributors'] or [])} contributors, "
            f"{len(rec['dropped'] or [])} dropped"
            + (f", {seconds:.2f} s" if isinstance(seconds, int | float) else "")
            + f", model {str(rec['model_hash'])[:12]}{verdict}"
        )
    for kill in result["server_kills"]:
        lines.append(
            f"  server SIGKILLed {kill['when']} {kill['round']} at {kill['at_s']:.1f} s, "
            f"restarted: {kill['restarted']}"
        )
    evaluation = result.get("evaluation")
    if evaluation is not None and evaluation.get("table"):
        lines.append("held-out instructions, base model vs federated adapter:")
        lines.extend("  " + row for row in evaluation["table"].splitlines())
        lines.append(f"final adapter (PeftModel.from_pretrained loads it): {evaluation['adapter']}")
    for cid, spent in (result.get("privacy") or {}).items():
        if "error" in spent:
            lines.append(f"  privacy ledger of {cid}: {spent['error']}")
            continue
        lines.append(
            f"  {cid}: epsilon {spent['epsilon']:.3f} (RDP {spent['epsilon_rdp']:.3f}) at delta {spent['delta']:g} "
            f"over rounds {spent['rounds_trained']}, {spent['refusals']} round(s) refused"
        )
    status = result["plaintext_check"]["status"]
    if status == "not-applicable":
        lines.append("plaintext check: not applicable to this task")
    else:
        lines.append(f"plaintext check: decoded sum equals the plaintext sum: {status == 'ok'}")
    integrity = result["integrity"]
    lines.append(f"state database integrity: {'ok' if integrity.get('ok') else 'FAILED'}")
    for problem in [
        *result["problems"],
        *integrity.get("problems", []),
        *result["plaintext_check"]["problems"],
    ]:
        lines.append(f"  problem: {problem}")
    for warning in result["warnings"]:
        lines.append(f"  warning: {warning}")
    lines.append(
        f"{'OK' if result['ok'] else 'FAILED'}: {result['rounds_completed']}/{result['rounds']} rounds in "
        f"{result['wall_s']:.1f} s; result {Path(result['out']) / 'result.json'}, logs {result['files']['logs']}"
    )
    return lines


def run_cli(args: argparse.Namespace) -> int:
    """``secfed simulate``: validate, run, print (summary or JSON); exit 0 only if the run is correct."""
    opts = options_from_args(args)
    result = run_simulation(opts)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(summary_lines(result)))
    return 0 if result["ok"] else 1
