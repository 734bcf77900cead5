"""``secfed bench train``: training throughput and where a FedIT round's time goes.

Two measurements on the real default model (SmolLM2-135M-Instruct, LoRA r=8 on q/v):
1. ``tokens_per_s``: one client's local training alone, all cores, after a warm-up step.
2. One full round with ``--clients`` institutions over mutual-TLS gRPC on 127.0.0.1 (client runtimes
   are threads of this process, each with its own copy of the base model), split into local training
   (model load + adapter load + training, the slowest client), secure aggregation plus transport
   (the rest of the round's wall time: model download, masking, every SecAgg phase), and evaluation
   of the new adapter on the built-in held-out prompts. Coreset selection (features/selection) does
   not exist yet and is reported as 0.

Like the other benchmarks it composes the server and client packages, imported lazily here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from secfed.bench.stats import add_output_arguments, emit
from secfed.pki.consortium import loopback_consortium, provision

TRAIN: dict[str, Any] = {"local_steps": 4, "batch_size": 4, "max_length": 96, "lr": 1e-3, "style": "chat"}
DATA = {
    "data": "builtin",
    "train_per_category": 16,
    "test_per_category": 4,
    "partition": "category",
    "data_seed": 0,
}


def _isolated_tokens_per_s(model: str, steps: int) -> dict[str, float]:
    from secfed.data.builtin import builtin_splits
    from secfed.model.loading import load_base_model
    from secfed.model.lora import LoraSettings, apply_lora
    from secfed.model.train import TrainSettings, train_local

    base = load_base_model(model)
    peft = apply_lora(base.model, LoraSettings())
    splits, _ = builtin_splits(1, train_per_category=16, test_per_category=4, partition="iid")
    settings = TrainSettings(**{**TRAIN, "local_steps": 1})
    train_local(peft, base.tokenizer, splits[0], settings, progress=False)  # warm-up
    stats = train_local(
        peft, base.tokenizer, splits[0], TrainSettings(**{**TRAIN, "local_steps": steps}), progress=False
    )
    return {"tokens": stats.tokens, "seconds": stats.seconds, "tokens_per_s": stats.tokens_per_s}


def _round(model: str, clients: int, workdir: Path) -> dict[str, Any]:
    from client.config import RetryPolicy
    from client.runtime import ClientRuntime
    from secfed.fl.fedit import FeditClient
    from secfed.harness.evaluation import evaluate_builtin
    from secfed.pki.kit import load_kit
    from server.config import ServerConfig
    from server.coordinator import RoundPlan
    from server.runtime import FederationServer

    roster = tuple(f"inst{i:02d}" for i in range(clients))
    pki = provision(loopback_consortium("bench-train", roster), workdir / "pki").out
    config = ServerConfig(
        listen="127.0.0.1:0",
        kit=pki / "server",
        state_db=workdir / "state" / "state.sqlite",
        roster=roster,
        plan=RoundPlan(rounds=1, phase_timeout_s=1800.0),
        task="fedit-lora",
        task_options={"model": model, "train": TRAIN},
    )
    server = FederationServer.start(config)
    tasks = [
        FeditClient(cid, {"model": model, **DATA, "client_index": i, "n_clients": clients})
        for i, cid in enumerate(roster)
    ]
    errors: list[BaseException] = []

    def run(task: FeditClient) -> None:
        try:
            ClientRuntime(
                load_kit(pki / "clients" / task.client_id),
                task,
                address=f"127.0.0.1:{server.port}",
                retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=1800),
            ).run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in tasks]
    for t in threads:
        t.start()
    try:
        reason = server.wait(linger_s=10.0)
        record = json.loads((workdir / "state" / "rounds.jsonl").read_text().splitlines()[-1])
    finally:
        server.stop()
    for t in threads:
        t.join(60)
    if errors or not reason.startswith("completed"):
        raise RuntimeError(f"benchmark round failed: {reason}; errors: {errors[:3]}")
    round_s = float(record["seconds"])
    compute_s = max(t.last_compute_s for t in tasks)
    tokens = sum(t.last_stats.tokens for t in tasks)
    started = time.perf_counter()
    evaluate_builtin(
        model,
        {**DATA, "client_index": 0, "n_clients": clients},
        clients,
        adapter_dir=workdir / "state" / "adapter",
        progress=False,
    )
    eval_s = time.perf_counter() - started
    secagg_transport_s = max(0.0, round_s - compute_s)
    return {
        "round_s": round_s,
        "local_training_s": compute_s,
        "secagg_transport_s": secagg_transport_s,
        "secagg_transport_fraction": secagg_transport_s / round_s,
        "feature_selection_s": 0.0,
        "evaluation_s": eval_s,
        "round_training_tokens": tokens,
        "phase_s": record["phase_seconds"],
    }


def run_benchmark(clients: int, model: str, isolated_steps: int) -> dict[str, Any]:
    if clients < 3:
        raise ValueError("--clients must be at least 3")
    isolated = _isolated_tokens_per_s(model, isolated_steps)
    with tempfile.TemporaryDirectory(prefix="secfed-bench-train-") as tmp:
        round_ = _round(model, clients, Path(tmp))
    return {
        "benchmark": "train",
        "model": model,
        "clients": clients,
        "train": TRAIN,
        "tokens_per_s": isolated["tokens_per_s"],
        "isolated": isolated,
        "round_s": round_["round_s"],
        "secagg_transport_s": round_["secagg_transport_s"],
        "round": round_,
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="training tokens/s and the time breakdown of a FedIT round")
    p.add_argument("--clients", type=int, default=10, help="institutions in the round (default 10)")
    p.add_argument(
        "--model", default="smollm2-135m-instruct", help="base model (default SmolLM2-135M-Instruct)"
    )
    p.add_argument("--isolated-steps", type=int, default=6, help="steps of the single-client throughput run")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    result = run_benchmark(args.clients, args.model, args.isolated_steps)
    if emit(result, args.out, args.json):
        return 0
    r = result["round"]
    print(f"training throughput (one client alone): {result['tokens_per_s']:.0f} tokens/s")
    print(
        f"FedIT round, {args.clients} clients: {r['round_s']:.1f} s = local training {r['local_training_s']:.1f} s "
        f"+ secure aggregation and transport {r['secagg_transport_s']:.2f} s "
        f"({100 * r['secagg_transport_fraction']:.1f} %); evaluation afterwards {r['evaluation_s']:.1f} s"
    )
    return 0
