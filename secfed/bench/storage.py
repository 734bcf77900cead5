"""``secfed bench storage``: how much disk a coordinator's run directory takes per kept round.

The question (issue [observability]): does the state grow by about one float32 model per *kept* round
plus O(1) metadata, whatever the model size? It runs the real stack (a provisioned consortium, the
coordinator behind mutual-TLS gRPC on 127.0.0.1, client runtimes as threads of this process) with the
``bench-vector`` task, whose local work is free, for ``--rounds`` rounds at ``--dim`` parameters with
``keep_models = --keep``, then measures the state (the SQLite database with its write-ahead log, and
``rounds.jsonl``; the exported final model, one copy whatever the rounds, is reported apart as
``export_bytes``) and counts the model vectors the database still holds.

``bytes_per_kept_model`` is the directory's size over the models it keeps; the target is at most
1.1 x ``model_bytes`` (4 bytes a parameter). ``rounds_log_bytes_per_round`` is the rounds log's growth
a round (metadata and hashes only). Benchmarks compose the server and client packages, like the CLI:
they are imported lazily here, never by the library.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from secfed.bench.round import run_vector_federation
from secfed.bench.stats import add_output_arguments, emit
from secfed.pki.consortium import loopback_consortium, provision


def run_benchmark(dim: int, rounds: int, keep: int, clients: int = 3) -> dict[str, Any]:
    from server.config import ServerConfig
    from server.coordinator import RoundPlan

    if dim < 1 or rounds < 1 or keep < 1 or clients < 3:
        raise ValueError("--dim, --rounds and --keep must be at least 1, --clients at least 3")
    with tempfile.TemporaryDirectory(prefix="secfed-bench-storage-") as tmp:
        root = Path(tmp)
        roster = tuple(f"inst{i:03d}" for i in range(clients))
        pki = provision(loopback_consortium("bench", list(roster)), root / "pki").out
        state = root / "state"
        config = ServerConfig(
            listen="127.0.0.1:0",
            kit=pki / "server",
            state_db=state / "state.sqlite",
            roster=roster,
            plan=RoundPlan(rounds=rounds, phase_timeout_s=600.0),
            task="bench-vector",
            task_options={"dim": dim},
            keep_models=keep,
        )
        started = time.perf_counter()
        run_vector_federation(pki, config)
        # The state: the database (and its write-ahead log) and the rounds log. The exported final
        # model (state/adapter/ or model.npy) is the run's result, one copy whatever the rounds, and is
        # reported apart.
        state_files = ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "rounds.jsonl")
        files = {p.name: p.stat().st_size for p in sorted(state.iterdir()) if p.name in state_files}
        export = sum(p.stat().st_size for p in state.rglob("*") if p.is_file() and p.name not in state_files)
        with sqlite3.connect(config.state_db) as db:
            kept = int(db.execute("SELECT count(*) FROM models WHERE vector IS NOT NULL").fetchone()[0])
        total = sum(files.values())
        model_bytes = 4 * dim
        return {
            "benchmark": "storage",
            "dim": dim,
            "rounds": rounds,
            "keep_models": keep,
            "clients": clients,
            "model_bytes": model_bytes,
            "kept_models": kept,
            "state_bytes": total,
            "files": files,
            "export_bytes": export,
            "bytes_per_kept_model": total / kept,
            "bytes_per_kept_model_over_model_bytes": total / kept / model_bytes,
            "rounds_log_bytes_per_round": files.get("rounds.jsonl", 0) / rounds,
            "run_s": time.perf_counter() - started,
        }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("storage", help="disk a coordinator's run takes per kept round (bounded storage)")
    p.add_argument("--dim", type=int, default=1_000_000, help="model parameters (default 10^6)")
    p.add_argument("--rounds", type=int, default=6, help="rounds to run (default 6)")
    p.add_argument("--keep", type=int, default=2, help="[server] keep_models (default 2)")
    p.add_argument("--clients", type=int, default=3, help="institutions (default 3)")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    result = run_benchmark(args.dim, args.rounds, args.keep, args.clients)
    if emit(result, args.out, args.json):
        return 0
    print(
        f"d={args.dim}, {args.rounds} rounds, keep_models={args.keep}: {result['state_bytes'] / 1e6:.1f} MB "
        f"for {result['kept_models']} kept models = {result['bytes_per_kept_model_over_model_bytes']:.3f} x "
        f"a float32 model each; rounds.jsonl grows {result['rounds_log_bytes_per_round']:.0f} B a round"
    )
    return 0
