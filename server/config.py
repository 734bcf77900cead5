"""The coordinator's configuration file (``secfed server --config server.toml``).

Relative paths are resolved against the directory of the configuration file, so a deployment
directory can be moved as a whole. See ``server/server.example.toml`` for every option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from secfed import tomlconfig
from secfed.fl.tasks import resolve_task_paths
from server.coordinator import RoundPlan


@dataclass(frozen=True)
class Limits:
    """Resource limits that keep one client (or a flood of them) from hurting the others."""

    max_upload_bytes: int = 2 * 1024**3
    chunk_bytes: int = 1024 * 1024
    max_requests_per_s: float = 50.0
    burst: int = 100
    max_workers: int = 64
    # A Poll with nothing to do is held this long, answered the moment an instruction appears:
    # low latency between phases without clients polling in a tight loop.
    long_poll_s: float = 5.0
    # Stalled or slow-loris uploads: each client may hold only a few upload streams at once, and a
    # stream that sends no chunk for this long is cancelled.
    max_uploads_per_client: int = 2
    upload_idle_timeout_s: float = 60.0


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: an optional Prometheus endpoint (the ``metrics`` extra), loopback unless asked."""

    listen: str = "127.0.0.1:9464"
    allow_remote: bool = False


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    kit: Path
    state_db: Path
    roster: tuple[str, ...]
    federation_name: str = "secfed"
    plan: RoundPlan = field(default_factory=RoundPlan)
    task: str = "toy-mean"
    task_options: dict[str, Any] = field(default_factory=dict)
    # The distribution providing a plug-in task (secfed.fl.registry); None for secfed's own tasks.
    task_plugin: str | None = None
    limits: Limits = field(default_factory=Limits)
    # Global models kept in the state database (the latest k; None: all). Resuming needs only the
    # latest; every institution keeps its own copy of the final one.
    keep_models: int | None = None
    metrics: MetricsConfig | None = None  # None: no metrics endpoint
    # [tensorboard] logdir: per-round curves as TensorBoard event files (the tensorboard extra); None: off
    tensorboard_dir: Path | None = None


def load_server_config(path: Path) -> ServerConfig:
    doc = tomlconfig.load(path)
    base = path.parent
    srv = doc.table("server")
    listen = srv.get("listen", str, "127.0.0.1:8443")
    kit = base / srv.get("kit", str, required=True)
    state_db = base / srv.get("state_db", str, "state.sqlite")
    roster = srv.strings("roster", None)
    if not roster:
        raise srv.error("roster", "must list at least three client ids")
    name = srv.get("federation_name", str, "secfed")
    keep_models = srv.number("keep_models", int, 0, low=0) or None
    srv.finish()

    rounds = doc.table("rounds")
    colluding = rounds.number("colluding_fraction", float, 1 / 3, low=0.0, high=0.99)
    try:
        plan = RoundPlan(
            rounds=rounds.number("rounds", int, 3, low=1),
            participation=rounds.number("participation", float, 1.0, low=0.0, high=1.0),
            min_cohort=rounds.number("min_cohort", int, 3, low=3),
            colluding_fraction=Fraction(colluding).limit_denominator(1000),
            phase_timeout_s=rounds.number("phase_timeout_s", float, RoundPlan.phase_timeout_s, low=0.1),
            compute_timeout_s=rounds.number("compute_timeout_s", float, RoundPlan.compute_timeout_s, low=0.1),
            join_timeout_s=rounds.number("join_timeout_s", float, RoundPlan.join_timeout_s, low=0.1),
            max_attempts=rounds.number("max_attempts", int, 3, low=1),
            seed=rounds.get("seed", int, 0),
            secure=not rounds.get("insecure_plaintext", bool, False),
        )
    except ValueError as exc:
        raise tomlconfig.ConfigFileError(f"{path}: rounds: {exc}") from exc
    rounds.finish()

    task = doc.table("task")
    task_name = task.get("name", str, "toy-mean")
    task_plugin = task.get("plugin", str, "") or None
    task_options = resolve_task_paths(base, task.get("options", dict, {}))
    task.finish()
    dp = task_options.get("dp")
    if isinstance(dp, dict) and "target_epsilon" in dp and "rounds" not in dp:
        # A target epsilon is spread over the federation's planned rounds unless said otherwise.
        task_options["dp"] = {**dp, "rounds": plan.rounds}

    lim = doc.table("limits")
    limits = Limits(
        max_upload_bytes=lim.number("max_upload_bytes", int, Limits.max_upload_bytes, low=1024),
        chunk_bytes=lim.number("chunk_bytes", int, Limits.chunk_bytes, low=1024, high=64 * 1024 * 1024),
        max_requests_per_s=lim.number("max_requests_per_s", float, Limits.max_requests_per_s, low=0.1),
        burst=lim.number("burst", int, Limits.burst, low=1),
        max_workers=lim.number("max_workers", int, Limits.max_workers, low=8, high=1024),
        long_poll_s=lim.number("long_poll_s", float, Limits.long_poll_s, low=0.0, high=30.0),
        max_uploads_per_client=lim.number(
            "max_uploads_per_client", int, Limits.max_uploads_per_client, low=1
        ),
        upload_idle_timeout_s=lim.number(
            "upload_idle_timeout_s", float, Limits.upload_idle_timeout_s, low=1.0
        ),
    )
    lim.finish()
    met = doc.table("metrics")
    metrics = None
    if met.get("enabled", bool, False):
        metrics = MetricsConfig(
            listen=met.get("listen", str, MetricsConfig.listen),
            allow_remote=met.get("allow_remote", bool, False),
        )
    else:
        met.get("listen", str, MetricsConfig.listen)
        met.get("allow_remote", bool, False)
    met.finish()
    board = doc.table("tensorboard")
    tensorboard_dir = None
    if "logdir" in board.data:  # an absent section or key leaves the curves off
        logdir = board.get("logdir", str, "")
        if not logdir:  # "" would write into the configuration directory itself
            raise board.error("logdir", "must name a directory (leave the key out to write no curves)")
        tensorboard_dir = base / logdir
    board.finish()
    doc.finish()
    return ServerConfig(
        listen=listen,
        kit=kit,
        state_db=state_db,
        roster=tuple(roster),
        federation_name=name,
        plan=plan,
        task=task_name,
        task_options=task_options,
        task_plugin=task_plugin,
        limits=limits,
        keep_models=keep_models,
        metrics=metrics,
        tensorboard_dir=tensorboard_dir,
    )
