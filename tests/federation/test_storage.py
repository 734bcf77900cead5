"""Bounded storage: a run's directory grows by about one float32 model per *kept* round, not by a JSON
copy of every round's secure sum.

The failure it defeats: ``state/rounds.jsonl`` grew by ~10 MB a round for a 0.46 M-parameter adapter
(every round's sum as JSON text), and the state database kept every round's model with no way to bound
it: gigabytes per run for a 7B model's adapter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from client.config import RetryPolicy
from client.runtime import ClientRuntime
from secfed.fl.registry import client_task
from secfed.pki.kit import load_kit
from server.runtime import FederationServer
from tests.federation.support import provision_kits, server_config

pytestmark = pytest.mark.timeout(180)

DIM = 60_000  # 240 KB as float32: far above what rounds.jsonl writes out
ROUNDS, KEEP = 5, 2


def test_rounds_log_keeps_hashes_and_the_database_only_the_kept_models(tmp_path: Path) -> None:
    pki = provision_kits(tmp_path, 3)
    roster = ("inst00", "inst01", "inst02")
    config = dataclasses.replace(
        server_config(pki, tmp_path / "run", roster, rounds=ROUNDS),
        task_options={"dim": DIM},
        keep_models=KEEP,
    )
    server = FederationServer.start(config)
    threads = []
    for cid in roster:
        runtime = ClientRuntime(
            load_kit(pki / "clients" / cid),
            client_task("toy-mean", cid, {"dim": DIM}),
            address=f"127.0.0.1:{server.port}",
            retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=60),
        )
        thread = threading.Thread(target=runtime.run, daemon=True)
        thread.start()
        threads.append(thread)
    try:
        assert server.wait(linger_s=5.0) == f"completed {ROUNDS} rounds"
    finally:
        for thread in threads:
            thread.join(60)
        server.stop()
    log = config.state_db.parent / "rounds.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == ROUNDS
    for raw in lines:
        record = json.loads(raw)
        assert len(raw) < 4096 and "x" not in record["sums"] and record["model"] is None
        assert record["large_sums"]["x"]["length"] == DIM and record["sums"]["w"]  # small ones stay
    with sqlite3.connect(config.state_db) as db:
        kept = db.execute("SELECT count(*) FROM models WHERE vector IS NOT NULL").fetchone()[0]
    assert kept == KEEP
    # The database: the kept models (pruned before each insert, so their pages are reused) and O(1) metadata.
    model_bytes = 4 * DIM
    size = sum(p.stat().st_size for p in config.state_db.parent.glob("state.sqlite*"))
    assert size <= KEEP * model_bytes * 1.1 + 256 * 1024, size
    last = json.loads(lines[-1])
    with sqlite3.connect(config.state_db) as db:
        vector = db.execute("SELECT vector FROM models ORDER BY round DESC LIMIT 1").fetchone()[0]
    assert hashlib.sha256(vector).hexdigest() == last["model_hash"]
