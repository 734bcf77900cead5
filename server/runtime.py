"""The coordinator process: state store, coordinator, gRPC server with mutual TLS, and its lifecycle.

On start it resumes from the state database: the next round is the one after the last completed
round, and an attempt that was interrupted by a crash is recorded as aborted and restarted with a
fresh session (new keys, new session id), never continued. Each completed round is committed to the
database before the next round starts, and appended to ``rounds.jsonl`` beside it for humans and the
local harness.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from secfed import logs
from secfed.durable import append_line, write_synced
from secfed.fl.registry import server_task
from secfed.fl.tasks import StageResult
from secfed.fl.vectors import model_hash
from secfed.pki.kit import load_kit
from secfed.secagg.messages import AggregateResult
from server import handlers
from server.auth import PeerAuthenticator
from server.config import ServerConfig
from server.coordinator import Coordinator, CoordinatorObserver
from server.metrics import FederationMetrics, ObserverChain
from server.operator import OperatorService
from server.service import FederationService
from server.state import RoundRecord, StateStore
from server.tensorboard import TensorBoardCurves

log = logging.getLogger("secfed.server")

_GRPC_OVERHEAD = 64 * 1024


MEMBER_EXCLUDED = "member_excluded"
#: Vectors up to this many values are written into rounds.jsonl in full (toy tasks, weights, counts).
_INLINE_VALUES = 4096


def excluded_members(store: StateStore) -> dict[str, str]:
    """The members earlier processes of this run caught with evidence (client -> reason)."""
    return {
        str(event["payload"]["client"]): str(event["payload"]["reason"])
        for event in store.ledger()
        if event["kind"] == MEMBER_EXCLUDED
    }


class StoreObserver(CoordinatorObserver):
    """Persists what the coordinator does, so a restarted server resumes exactly where it was."""

    def __init__(self, store: StateStore, rounds_log: Path, config: ServerConfig) -> None:
        self.store = store
        self.rounds_log = rounds_log
        self.config = config
        self.session_ids: list[bytes] = []

    def attempt_started(self, round_: int, attempt: int) -> None:
        self.session_ids = []
        self.store.begin_attempt(round_, [])

    def session_opened(self, round_: int, attempt: int, session_id: bytes) -> None:
        self.session_ids.append(session_id)
        self.store.add_session_id(round_, session_id)

    def attempt_aborted(self, round_: int, attempt: int, reason: str) -> None:
        self.store.record_aborted_attempt(round_, reason, [])

    def client_refused(self, round_: int, client_id: str, reason: str) -> None:
        self.store.append_event("client_refused", round_, {"client": client_id, "reason": reason})

    def member_excluded(self, round_: int, client_id: str, reason: str) -> None:
        self.store.append_event(MEMBER_EXCLUDED, round_, {"client": client_id, "reason": reason})

    def round_completed(
        self,
        round_: int,
        result: AggregateResult,
        model: np.ndarray,
        started: float,
        phases: dict[str, float],
        stages: Sequence[StageResult],
    ) -> None:
        finished = time.time()
        summary = {
            "session_ids": [s.hex() for s in self.session_ids],
            "sums": {name: [len(v)] for name, v in result.values.items()},
            # What the server learned this round: each stage's cohort sums, by shape.
            "stages": {st.name: st.audit_facts() for st in stages},
            "task": self.config.task,
            "phase_seconds": phases,
            "secure": self.config.plan.secure,
        }
        record = RoundRecord(
            round=round_,
            status="completed",
            contributors=result.contributors,
            dropped=result.dropped,
            model_hash=model_hash(model),
            started_at=finished - (time.monotonic() - started),
            finished_at=finished,
            summary=summary,
        )
        # Metadata and hashes: a segment or model larger than _INLINE_VALUES is named by its length and
        # hash, never written out (an adapter's sum as JSON text cost ~10 MB a round); the model
        # itself is in the state database, kept per [server] keep_models.
        line = {
            "round": round_,
            "contributors": list(result.contributors),
            "dropped": list(result.dropped),
            "model_hash": record.model_hash.hex(),
            "sums": {name: v.tolist() for name, v in result.values.items() if v.size <= _INLINE_VALUES},
            "large_sums": {
                name: {
                    "length": int(v.size),
                    "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest(),
                }
                for name, v in result.values.items()
                if v.size > _INLINE_VALUES
            },
            "model": np.asarray(model, dtype=np.float64).tolist() if model.size <= _INLINE_VALUES else None,
            "seconds": record.finished_at - record.started_at,
            "phase_seconds": phases,
            "secure": self.config.plan.secure,
        }
        # Write-ahead: the line is on disk before the round commits, so a crash between the commit
        # and the append cannot lose it (recover_rounds_log finishes the append at the next start).
        pending = pending_line_path(self.rounds_log)
        write_synced(pending, json.dumps(line))
        self.store.complete_round(record, model)
        append_line(self.rounds_log, json.dumps(line))
        pending.unlink()
        logs.event(
            log,
            "round",
            round=round_,
            contributors=len(result.contributors),
            dropped=len(result.dropped),
            seconds=f"{line['seconds']:.2f}",
        )


def log_dropout_tolerance(config: ServerConfig) -> None:
    """Say at start how many dropouts a round survives; a configuration that survives none says so."""
    plan = config.plan
    cohort, threshold, tolerated = plan.dropout_tolerance(len(config.roster))
    colluders = plan.colluders(cohort)
    facts = {"cohort": cohort, "roster": len(config.roster), "threshold": threshold, "colluders": colluders}
    if tolerated:
        logs.event(log, "dropout-tolerance", **facts, survives_dropouts=tolerated)
        return
    logs.event(
        log,
        "dropout-tolerance",
        logging.WARNING,
        **facts,
        survives_dropouts=0,
        advice=(
            "one institution that drops out or crashes aborts the attempt; add institutions to the roster "
            "or lower [rounds].colluding_fraction (each institution's [policy] floor still applies)"
        ),
    )


def pending_line_path(rounds_log: Path) -> Path:
    return rounds_log.with_name(rounds_log.name + ".pending")


def recover_rounds_log(store: StateStore, rounds_log: Path) -> int | None:
    """Finish a ``rounds.jsonl`` append a crash interrupted; return the round recovered, if any.

    A pending line whose round is committed in the database but missing from the log is appended;
    one whose round never committed is dropped (that round is run again).
    """
    pending = pending_line_path(rounds_log)
    if not pending.exists():
        return None
    try:
        line = json.loads(pending.read_text(encoding="utf-8"))
        round_ = int(line["round"])
    except (ValueError, KeyError, TypeError):
        pending.unlink()  # torn before its rename: the round had not committed either
        return None
    logged = set()
    if rounds_log.exists():
        for text in rounds_log.read_text(encoding="utf-8").splitlines():
            try:
                logged.add(int(json.loads(text)["round"]))
            except (ValueError, KeyError, TypeError):
                continue
    committed = {r.round: r.model_hash.hex() for r in store.rounds()}
    recovered = None
    if committed.get(round_) == line.get("model_hash") and round_ not in logged:
        append_line(rounds_log, json.dumps(line))
        recovered = round_
    pending.unlink()
    return recovered


def _metrics(config: ServerConfig) -> FederationMetrics | None:
    """The metrics of ``[metrics]`` (served once the server is up); a clear error without the extra."""
    if config.metrics is None:
        return None
    try:
        return FederationMetrics(config.plan.rounds, config.plan.cohort_size(len(config.roster)))
    except ImportError as exc:
        raise ValueError(
            "[metrics] enabled needs the prometheus-client package: pip install 'secfed[metrics]'"
        ) from exc


def _tensorboard(config: ServerConfig) -> TensorBoardCurves | None:
    """The curves of ``[tensorboard]`` (event files in its logdir); a clear error without the extra."""
    if config.tensorboard_dir is None:
        return None
    try:
        return TensorBoardCurves(config.tensorboard_dir)
    except ImportError as exc:
        raise ValueError(
            "[tensorboard] logdir needs the tensorboardX package: pip install 'secfed[tensorboard]'"
        ) from exc


@dataclass
class FederationServer:
    config: ServerConfig
    port: int
    coordinator: Coordinator
    service: FederationService
    grpc_server: grpc.Server
    store: StateStore
    stop_event: threading.Event
    metrics: FederationMetrics | None = None
    metrics_port: int | None = None
    tensorboard: TensorBoardCurves | None = None

    @classmethod
    def start(cls, config: ServerConfig) -> FederationServer:
        kit = load_kit(config.kit)
        if kit.role != "server":
            raise ValueError(f"{config.kit}: this kit is for a {kit.role}, not the server")
        task = server_task(config.task, config.task_options, plugin=config.task_plugin)
        config.state_db.parent.mkdir(parents=True, exist_ok=True)
        store = StateStore(config.state_db, keep_models=config.keep_models)
        if not store.has_initial_model():
            store.save_initial_model(np.asarray(task.initial_model(), dtype=np.float32))
        recovered = recover_rounds_log(store, config.state_db.parent / "rounds.jsonl")
        if recovered is not None:
            logs.event(log, "rounds-log-recovered", logging.WARNING, round=recovered)
        interrupted = store.interrupted_attempt()
        if interrupted is not None:
            store.record_aborted_attempt(interrupted[0], "server restarted mid-round", [])
            logs.event(
                log, "resume-interrupted", logging.WARNING, round=interrupted[0], attempt=interrupted[1]
            )
        _, _, model = store.global_model()
        first_round = store.last_completed_round() + 1
        lock = threading.Lock()
        observer: CoordinatorObserver = StoreObserver(store, config.state_db.parent / "rounds.jsonl", config)
        metrics = _metrics(config)
        if metrics is not None:
            observer = ObserverChain(observer, metrics)
        tensorboard = _tensorboard(config)
        if tensorboard is not None:
            observer = ObserverChain(observer, tensorboard)
        coordinator = Coordinator(
            roster=config.roster,
            plan=config.plan,
            task=task,
            initial_model=model,
            trust=kit.trust,
            observer=observer,
            first_round=first_round,
            first_attempt=store.next_attempt(first_round),
            excluded=excluded_members(store),
        )
        auth = PeerAuthenticator(kit, frozenset(config.roster))
        service = FederationService(coordinator, lock, auth, config.limits, config.federation_name)
        operator = OperatorService(coordinator, lock, auth, config.state_db, config.plan.rounds)
        message_limit = config.limits.chunk_bytes + _GRPC_OVERHEAD
        grpc_server = grpc.server(
            ThreadPoolExecutor(max_workers=config.limits.max_workers, thread_name_prefix="secfed-rpc"),
            options=[
                ("grpc.max_receive_message_length", message_limit),
                ("grpc.max_send_message_length", message_limit),
                ("grpc.max_concurrent_streams", config.limits.max_workers * 4),
            ],
            maximum_concurrent_rpcs=config.limits.max_workers * 8,
        )
        handlers.register(service, grpc_server)
        handlers.register_operator(operator, grpc_server)
        credentials = grpc.ssl_server_credentials(
            [(kit.key_path.read_bytes(), kit.cert_path.read_bytes())],
            root_certificates=kit.ca_path.read_bytes(),
            require_client_auth=True,
        )
        try:
            port = grpc_server.add_secure_port(config.listen, credentials)
        except RuntimeError as exc:
            port = 0
            error = f"cannot listen on {config.listen}: {exc}"
        else:
            error = f"cannot listen on {config.listen}"
        if port == 0:
            store.close()
            if tensorboard is not None:
                tensorboard.close()
            raise OSError(error)
        metrics_port = None
        if metrics is not None and config.metrics is not None:
            try:  # only once the federation's own port is bound: a failed start leaves nothing serving
                metrics_port = metrics.serve(config.metrics.listen, allow_remote=config.metrics.allow_remote)
            except (OSError, ValueError):
                store.close()
                if tensorboard is not None:
                    tensorboard.close()
                raise
            logs.event(log, "metrics-listening", address=config.metrics.listen, port=metrics_port)
        grpc_server.start()
        server = cls(
            config,
            port,
            coordinator,
            service,
            grpc_server,
            store,
            threading.Event(),
            metrics,
            metrics_port,
            tensorboard,
        )
        threading.Thread(target=server._tick_loop, args=(lock,), name="secfed-tick", daemon=True).start()
        logs.event(
            log, "listening", address=config.listen, port=port, first_round=first_round, run=store.run_id
        )
        log_dropout_tolerance(config)
        return server

    def _tick_loop(self, lock: threading.Lock) -> None:
        while not self.stop_event.wait(0.1):
            with lock:
                self.coordinator.tick()
                self.service.notify()

    def wait(self, linger_s: float = 30.0) -> str:
        """Block until the federation finishes and every client has its copy of the result (or
        ``linger_s`` passed).

        The model after the last completed round is exported beside the state database whether or not
        the run completed (an interrupted run keeps what it achieved), and clients fetch the same model.
        """
        while self.coordinator.finished_reason is None and not self.stop_event.is_set():
            time.sleep(0.1)
        if self.coordinator.finished_reason is not None and self.coordinator.round > 0:
            out = self.config.state_db.parent
            self.coordinator.task.export(self.coordinator.model, out)
            logs.event(
                log,
                "exported",
                directory=str(out),
                task=self.coordinator.task.name,
                rounds_completed=self.coordinator.round,
            )
        deadline = time.monotonic() + linger_s
        roster = set(self.config.roster)
        while (
            time.monotonic() < deadline
            and not roster <= self.service.finished_clients
            and not self.stop_event.is_set()
        ):
            time.sleep(0.1)
        return self.coordinator.finished_reason or "stopped"

    def stop(self) -> None:
        self.stop_event.set()
        self.grpc_server.stop(grace=1.0).wait()
        if self.metrics is not None:
            self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.store.close()
