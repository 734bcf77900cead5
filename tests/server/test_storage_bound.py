"""Bounded storage at the size the issue names: 20 rounds of a 10^6-dimensional task.

Driven through :class:`server.runtime.StoreObserver`, the path every completed round takes on the
coordinator (write-ahead line, the round's commit with its model, the rounds log), without the secure
aggregation that would make 20 rounds of 10^6 coordinates too slow for a test (``secfed bench storage``
measures the whole stack). The bound: the kept models (``keep_models``) as float32, 10 % slack for
SQLite's pages, and O(1) metadata per round. Before bounded storage, this run directory held 20 models
and every round's sums as JSON text: about 20 x (4 + 2 x 19) MB.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from secfed.secagg.messages import AggregateResult
from server.config import ServerConfig
from server.runtime import StoreObserver
from server.state import StateStore

DIM, ROUNDS, KEEP = 1_000_000, 20, 2


def test_twenty_rounds_of_a_million_coordinates_stay_within_the_kept_models(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    config = ServerConfig(
        listen="127.0.0.1:0", kit=tmp_path, state_db=run / "state.sqlite", roster=("a", "b", "c")
    )
    store = StateStore(config.state_db, keep_models=KEEP)
    rng = np.random.default_rng(0)
    store.save_initial_model(rng.standard_normal(DIM).astype(np.float32))
    observer = StoreObserver(store, run / "rounds.jsonl", config)
    try:
        for r in range(ROUNDS):
            observer.attempt_started(r, 1)
            model = rng.standard_normal(DIM).astype(np.float32)
            values = {"x": rng.standard_normal(DIM), "w": np.array([3.0])}
            result = AggregateResult(
                b"s" * 32, ("a", "b", "c"), (), np.zeros(DIM + 1, dtype=np.uint64), values
            )
            observer.round_completed(r, result, model, time.monotonic(), {"compute": 1.0}, [])
    finally:
        store.close()
    size = sum(p.stat().st_size for p in run.iterdir())
    bound = KEEP * 4 * DIM * 1.1 + ROUNDS * 4096
    assert size <= bound, (size, bound)
    assert len((run / "rounds.jsonl").read_text().splitlines()) == ROUNDS
