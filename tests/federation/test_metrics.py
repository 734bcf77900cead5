"""The coordinator's Prometheus endpoint: its text parses with prometheus-client's own parser and its
counters match the state database; it binds to loopback unless the operator asks otherwise."""

from __future__ import annotations

import dataclasses
import sqlite3
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.config import MetricsConfig
from server.metrics import FederationMetrics
from server.runtime import FederationServer
from tests.federation.support import Federation, provision_kits, server_config

pytestmark = pytest.mark.timeout(120)


def _samples(port: int) -> dict[str, float]:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    with direct.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def test_the_metrics_match_the_state_database(tmp_path: Path) -> None:
    pki = provision_kits(tmp_path, 3)
    roster = ("inst00", "inst01", "inst02")
    config = dataclasses.replace(
        server_config(pki, tmp_path / "run", roster, rounds=2), metrics=MetricsConfig(listen="127.0.0.1:0")
    )
    fed = Federation(pki, FederationServer.start(config))
    assert fed.server.metrics_port
    for cid in roster:
        fed.start_client(cid)
    reason = fed.server.wait(linger_s=5.0)
    try:
        samples = _samples(fed.server.metrics_port)
    finally:
        for holder in fed.clients.values():
            holder.thread.join(30)
        fed.server.stop()
    assert reason == "completed 2 rounds"
    with sqlite3.connect(config.state_db) as db:
        completed = db.execute("SELECT count(*) FROM rounds").fetchone()[0]
        aborted = db.execute("SELECT count(*) FROM attempts WHERE state = 'aborted'").fetchone()[0]
        begun = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
    assert samples["secfed_rounds_completed_total"] == completed == 2
    assert samples["secfed_attempts_aborted_total"] == aborted
    assert samples["secfed_attempts_started_total"] == begun
    assert samples["secfed_rounds_planned"] == 2 and samples["secfed_cohort_size"] == 3
    assert samples["secfed_round_contributors"] == 3
    assert samples["secfed_phase_seconds_total{phase=unmask}"] > 0


def test_the_endpoint_stays_on_loopback_unless_asked() -> None:
    metrics = FederationMetrics(rounds_planned=1, cohort_size=3)
    with pytest.raises(ValueError, match="not a loopback address"):
        metrics.serve("0.0.0.0:0")
    with pytest.raises(ValueError, match="host:port"):
        metrics.serve("9464")
    port = metrics.serve("127.0.0.1:0")
    try:
        assert _samples(port)["secfed_rounds_planned"] == 1
    finally:
        metrics.close()


def test_a_failed_start_leaves_no_metrics_endpoint_behind(tmp_path: Path) -> None:
    """Found by an attacker review: the endpoint started before the gRPC port was bound, so a start
    that failed (port taken) left /metrics serving and its port held."""
    import socket

    pki = provision_kits(tmp_path, 3)
    with socket.socket() as taken, socket.socket() as probe:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
        probe.close()
        config = dataclasses.replace(
            server_config(pki, tmp_path / "run", ("inst00", "inst01", "inst02"), rounds=1),
            listen=f"127.0.0.1:{taken.getsockname()[1]}",
            metrics=MetricsConfig(listen=f"127.0.0.1:{metrics_port}"),
        )
        with pytest.raises(OSError, match="cannot listen"):
            FederationServer.start(config)
    with socket.socket() as again:
        again.bind(("127.0.0.1", metrics_port))  # nothing kept it
