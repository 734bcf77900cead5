"""``secfed bench round``: one round with secure aggregation vs the same round in plaintext, same transport.

Both runs use the real stack: a provisioned consortium, the coordinator behind mutual-TLS gRPC on
127.0.0.1, and client runtimes (threads of this process) with the ``bench-vector`` task, whose
local work is free, so the figures are aggregation plus transport. Each mode runs ``repeats`` times
in alternation (plaintext, secure, plaintext, ...) and medians are reported, so machine noise
affects both sides alike.

Benchmarks compose every part of the system, like the CLI: the server and client packages are
imported lazily here, never by the ``secfed`` library itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from secfed.bench.stats import add_output_arguments, emit, median
from secfed.fl.policy import InstitutionPolicy
from secfed.pki.consortium import loopback_consortium, provision


def run_vector_federation(pki: Path, config: Any, *, secure: bool = True) -> Any:
    """Run ``config`` (a ``ServerConfig`` of the ``bench-vector`` task) to its end over mTLS gRPC, with
    one client runtime thread per roster member; the stopped ``FederationServer`` (its service's byte
    counters and the state directory stay readable). Raises ``RuntimeError`` unless every round completed.
    """
    from client.config import RetryPolicy
    from client.runtime import ClientRuntime
    from secfed.fl.registry import client_task
    from secfed.pki.kit import load_kit
    from server.runtime import FederationServer

    server = FederationServer.start(config)
    errors: list[BaseException] = []

    def run_client(cid: str) -> None:
        try:
            ClientRuntime(
                load_kit(pki / "clients" / cid),
                client_task("bench-vector", cid, dict(config.task_options)),
                address=f"127.0.0.1:{server.port}",
                retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=600),
                policy=InstitutionPolicy(allow_insecure_baselines=not secure),
            ).run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run_client, args=(cid,), daemon=True) for cid in config.roster]
    for t in threads:
        t.start()
    try:
        reason = server.wait(linger_s=10.0)
    finally:
        server.stop()
    for t in threads:
        t.join(60)
    if errors or not reason.startswith("completed"):
        raise RuntimeError(f"benchmark run failed: {reason}; client errors: {errors[:3]}")
    return server


def _one_round(pki: Path, workdir: Path, clients: int, dim: int, secure: bool) -> dict[str, Any]:
    from server.config import ServerConfig
    from server.coordinator import RoundPlan

    roster = tuple(f"inst{i:03d}" for i in range(clients))
    config = ServerConfig(
        listen="127.0.0.1:0",
        kit=pki / "server",
        state_db=workdir / "state.sqlite",
        roster=roster,
        plan=RoundPlan(rounds=1, phase_timeout_s=600.0, secure=secure),
        task="bench-vector",
        task_options={"dim": dim},
    )
    server = run_vector_federation(pki, config, secure=secure)
    record = json.loads((workdir / "rounds.jsonl").read_text().splitlines()[-1])
    wire = dict(server.service.wire_bytes)
    return {"round_s": record["seconds"], "phase_seconds": record["phase_seconds"], "wire_bytes": wire}


def run_benchmark(clients: int, dim: int, repeats: int, progress: bool = True) -> dict[str, Any]:
    if clients < 3:
        raise ValueError("--clients must be at least 3")
    if dim < 1 or repeats < 1:
        raise ValueError("--dim and --repeats must be at least 1")
    runs: dict[str, list[dict[str, Any]]] = {"secure": [], "plaintext": []}
    with tempfile.TemporaryDirectory(prefix="secfed-bench-round-") as tmp:
        root = Path(tmp)
        consortium = loopback_consortium("bench", [f"inst{i:03d}" for i in range(clients)])
        pki = provision(consortium, root / "pki").out
        order = [mode for _ in range(repeats) for mode in ("plaintext", "secure")]
        for i, mode in enumerate(tqdm(order, desc="round bench", disable=not progress, file=sys.stderr)):
            workdir = root / f"run{i}"
            workdir.mkdir()
            runs[mode].append(_one_round(pki, workdir, clients, dim, secure=mode == "secure"))

    def summary(mode: str) -> dict[str, Any]:
        rs = runs[mode]
        phases = sorted({p for r in rs for p in r["phase_seconds"]})
        return {
            "round_s": median([r["round_s"] for r in rs]),
            "phase_s": {p: median([r["phase_seconds"].get(p, 0.0) for r in rs]) for p in phases},
            "upload_bytes_per_client": median([r["wire_bytes"]["upload"] / clients for r in rs]),
            "wire_bytes": {
                k: median([r["wire_bytes"][k] for r in rs]) for k in ("upload", "download", "instructions")
            },
        }

    secure, plain = summary("secure"), summary("plaintext")
    return {
        "benchmark": "round",
        "clients": clients,
        "dim": dim,
        "repeats": repeats,
        "transport": "gRPC, mutual TLS, 127.0.0.1; clients are threads of one process",
        "secure_round_s": secure["round_s"],
        "plaintext_round_s": plain["round_s"],
        "secure_over_plaintext": secure["round_s"] / plain["round_s"],
        "secure": secure,
        "plaintext": plain,
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("round", help="a secure round vs the same round in plaintext over mTLS gRPC")
    p.add_argument("--clients", type=int, default=10, help="clients in the round (default 10)")
    p.add_argument("--dim", type=int, default=1_000_000, help="vector length (default 10^6)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per mode; medians are reported (default 3)")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    result = run_benchmark(args.clients, args.dim, args.repeats, progress=not args.json)
    result["bench_wall_s"] = time.perf_counter() - started
    if emit(result, args.out, args.json):
        return 0
    print(
        f"round with {args.clients} clients, d={args.dim}, median of {args.repeats} per mode, over mTLS gRPC:"
    )
    print(f"  secure    {result['secure_round_s']:.3f} s   phases {result['secure']['phase_s']}")
    print(f"  plaintext {result['plaintext_round_s']:.3f} s")
    print(f"  secure / plaintext = {result['secure_over_plaintext']:.2f}")
    return 0
