"""An optional Prometheus endpoint for the coordinator's operator (``[metrics]`` in the server TOML).

Why Prometheus: it is what operators already scrape; ``prometheus-client`` (the ``metrics`` extra) is
the maintained library for its text format, so nothing here formats metrics by hand. The endpoint binds
to 127.0.0.1 by default: it says who was refused and excluded, which is for the operator, not the
network. A non-loopback address must be asked for explicitly (``listen``).

Everything exported is what the coordinator already knows and logs (rounds, phase times, cohort sizes,
dropouts, aborts, refusals by category, exclusions); no institution's data or loss is among it. The
metrics live in a registry of their own, so two servers in one process (the tests) never share one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import numpy as np

from secfed.fl.curves import cohort_eval, cohort_loss
from secfed.fl.tasks import StageResult
from secfed.secagg.messages import AggregateResult
from server.coordinator import CoordinatorObserver

__all__ = ["FederationMetrics", "ObserverChain", "parse_listen"]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` of the metrics endpoint, or ``ValueError`` saying what is wrong."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics listen must be host:port, got {listen!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FederationMetrics(CoordinatorObserver):
    """Coordinator events as Prometheus metrics; :meth:`serve` exposes them over HTTP."""

    def __init__(self, rounds_planned: int, cohort_size: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        self.rounds_planned = Gauge(
            "secfed_rounds_planned", "Rounds the plan asks for", registry=self.registry
        )
        self.rounds_completed = Counter(
            "secfed_rounds_completed", "Rounds completed by this server process", registry=self.registry
        )
        self.current_round = Gauge("secfed_current_round", "Round number now running", registry=self.registry)
        self.attempts_started = Counter(
            "secfed_attempts_started",
            "Attempts started (a round retried counts again)",
            registry=self.registry,
        )
        self.attempts_aborted = Counter("secfed_attempts_aborted", "Attempts aborted", registry=self.registry)
        self.cohort = Gauge("secfed_cohort_size", "Institutions invited to a round", registry=self.registry)
        self.contributors = Gauge(
            "secfed_round_contributors", "Contributors to the last completed round", registry=self.registry
        )
        self.dropped = Counter(
            "secfed_dropped", "Institutions dropped from completed rounds' sums", registry=self.registry
        )
        self.round_seconds = Gauge(
            "secfed_round_seconds", "Duration of the last completed round", registry=self.registry
        )
        self.phase_seconds = Counter(
            "secfed_phase_seconds", "Seconds phases stayed open, by phase", ["phase"], registry=self.registry
        )
        self.refusals = Counter(
            "secfed_refusals",
            "Rounds institutions declined, by category",
            ["category"],
            registry=self.registry,
        )
        self.excluded = Counter(
            "secfed_members_excluded", "Members excluded for a proven fault", registry=self.registry
        )
        self.train_loss = Gauge(
            "secfed_mean_train_loss",
            "The last round's cohort-mean training loss (secure sum; tasks with report_loss)",
            ["step"],
            registry=self.registry,
        )
        self.eval_loss = Gauge(
            "secfed_mean_eval_loss",
            "The last round's cohort-mean loss of the received global adapter on held-out records "
            "(secure sum; tasks with report_eval)",
            ["records"],  # labelled like train_loss, so that it is absent, not 0, until a round reports one
            registry=self.registry,
        )
        self.rounds_planned.set(rounds_planned)
        self.cohort.set(cohort_size)
        self._server: Any = None

    def serve(self, listen: str, *, allow_remote: bool = False) -> int:
        """Serve ``/metrics`` on ``listen`` (port 0: any free one); the port actually bound."""
        from prometheus_client import start_http_server

        host, port = parse_listen(listen)
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"metrics listen {listen!r} is not a loopback address; set [metrics] allow_remote = true "
                "to expose the operator's metrics beyond this machine"
            )
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- observer ------------------------------------------------------------------------------
    def attempt_started(self, round_: int, attempt: int) -> None:
        self.attempts_started.inc()
        self.current_round.set(round_)

    def attempt_aborted(self, round_: int, attempt: int, reason: str) -> None:
        self.attempts_aborted.inc()

    def client_refused(self, round_: int, client_id: str, reason: str) -> None:
        self.refusals.labels(category=reason).inc()

    def member_excluded(self, round_: int, client_id: str, reason: str) -> None:
        self.excluded.inc()

    def round_completed(
        self,
        round_: int,
        result: AggregateResult,
        model: np.ndarray,
        started: float,
        phases: dict[str, float],
        stages: Sequence[StageResult],
    ) -> None:
        self.rounds_completed.inc()
        self.contributors.set(len(result.contributors))
        self.dropped.inc(len(result.dropped))
        self.round_seconds.set(sum(phases.values()))
        for phase, seconds in phases.items():
            self.phase_seconds.labels(phase=phase).inc(seconds)
        loss = cohort_loss(result.values)
        if loss is not None:
            self.train_loss.labels(step="first").set(loss[0])
            self.train_loss.labels(step="last").set(loss[1])
        evaluated = cohort_eval(result.values)
        if evaluated is not None:
            self.eval_loss.labels(records="held_out").set(evaluated)


class ObserverChain(CoordinatorObserver):
    """Several observers in order (persistence first: a metric never counts what was not committed)."""

    def __init__(self, *observers: CoordinatorObserver) -> None:
        self.observers = observers

    def attempt_started(self, round_: int, attempt: int) -> None:
        for o in self.observers:
            o.attempt_started(round_, attempt)

    def session_opened(self, round_: int, attempt: int, session_id: bytes) -> None:
        for o in self.observers:
            o.session_opened(round_, attempt, session_id)

    def attempt_aborted(self, round_: int, attempt: int, reason: str) -> None:
        for o in self.observers:
            o.attempt_aborted(round_, attempt, reason)

    def client_refused(self, round_: int, client_id: str, reason: str) -> None:
        for o in self.observers:
            o.client_refused(round_, client_id, reason)

    def member_excluded(self, round_: int, client_id: str, reason: str) -> None:
        for o in self.observers:
            o.member_excluded(round_, client_id, reason)

    def round_completed(
        self,
        round_: int,
        result: AggregateResult,
        model: np.ndarray,
        started: float,
        phases: dict[str, float],
        stages: Sequence[StageResult],
    ) -> None:
        for o in self.observers:
            o.round_completed(round_, result, model, started, phases, stages)
