"""``secfed bench simulate``: what a simulated federation costs in wall time and memory, per backend.

One ``secfed simulate`` run of FedIT on the tiny random Llama (built here, so the figures are about
the simulation, not a model download), with ``--clients`` institutions of which ``--per-round`` are
sampled each round, on either backend:

* ``process``: one OS process per institution plus the coordinator's, over mutual-TLS gRPC; every
  institution's process lives through the whole run, whether or not it is sampled.
* ``ray``: virtual institutions in Ray workers on a local loopback cluster; only the cohort works,
  and each worker holds one base model for all the institutions it hosts.

Memory is sampled every ``SAMPLE_S`` over this process and all its descendants (the server and client
processes, or Ray's GCS, raylet and workers): the peak of their summed RSS, and of their summed PSS
(``/proc/<pid>/smaps_rollup``: shared pages split between the processes sharing them, so libraries
mapped by 200 processes are not counted 200 times). Linux only, as ``/proc`` is.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from secfed.bench.stats import add_output_arguments, emit
from secfed.harness.presets import Preset
from secfed.harness.simulate import (
    BACKENDS,
    Backend,
    SimulationOptions,
    check_ray_cpus,
    check_size,
    run_simulation,
)

__all__ = ["TreeMemory", "register", "run_benchmark"]

SAMPLE_S = 0.25
#: One local step of LoRA training per round: the figures are about the simulation, not the training.
TRAIN = MappingProxyType({"local_steps": 1, "batch_size": 2, "max_length": 48, "lr": 1e-3})


def _children() -> dict[int, list[int]]:
    """Every process's children, from ``/proc/<pid>/stat`` (field 4 is the parent's pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is parenthesised and may hold spaces: split after its last ")".
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children, tree, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rss_pss(pid: int) -> tuple[int, int]:
    """``(rss, pss)`` of one process in bytes; (0, 0) once it has exited."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0, 0
    return rss, pss


@dataclass
class TreeMemory:
    """Peak summed RSS and PSS of this process and its descendants, sampled in a background thread."""

    interval_s: float = SAMPLE_S
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="secfed-bench-memory", daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        tree = _tree(os.getpid())
        sizes = [_rss_pss(pid) for pid in tree]
        self.peak_rss = max(self.peak_rss, sum(r for r, _ in sizes))
        self.peak_pss = max(self.peak_pss, sum(p for _, p in sizes))
        self.peak_processes = max(self.peak_processes, len(tree))


def _preset(model: Path, clients: int, per_round: int, rounds: int) -> Preset:
    # Every institution needs a record: the built-in data has six categories.
    per_category = max(10, math.ceil(2 * clients / 6))
    return Preset(
        name="bench-simulate",
        description=f"FedIT on the tiny model, {per_round} of {clients} institutions per round",
        clients=clients,
        rounds=rounds,
        task="fedit-lora",
        task_options=MappingProxyType({"model": str(model), "train": dict(TRAIN), "max_weight": 8}),
        client_options=MappingProxyType(
            {
                "model": str(model),
                "device": "cpu",
                "data": "builtin",
                "train_per_category": per_category,
                "partition": "iid",
            }
        ),
        partition_data=True,
        participation=per_round / clients,
        # Generous: the process backend's first phase waits while every client process starts.
        phase_timeout_s=600.0,
        torch_threads=1,
    )


def run_benchmark(
    backend: Backend, clients: int, per_round: int, rounds: int, ray_cpus: int | None = None
) -> dict[str, Any]:
    """One simulation of ``clients`` institutions (``per_round`` per round) on ``backend``; its figures."""
    check_size(backend, clients, per_round, Preset.min_cohort)
    check_ray_cpus(backend, ray_cpus)
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    from secfed.model.tiny import tiny_llama

    with tempfile.TemporaryDirectory(prefix="secfed-bench-simulate-") as tmp:
        model = Path(tmp) / "tiny-model"
        tiny = tiny_llama(seed=1)
        tiny.model.save_pretrained(model)
        tiny.tokenizer.save_pretrained(model)
        preset = _preset(model, clients, per_round, rounds)
        opts = SimulationOptions(
            preset=preset,
            out=Path(tmp) / "run",
            clients=clients,
            rounds=rounds,
            phase_timeout_s=preset.phase_timeout_s,
            backend=backend,
            ray_cpus=ray_cpus,
        )
        started = time.perf_counter()
        with TreeMemory() as memory:
            result = run_simulation(opts)
        seconds = time.perf_counter() - started
    return {
        "benchmark": "simulate",
        "backend": backend,
        "model": tiny.source,
        "clients": clients,
        "per_round": per_round,
        "rounds": rounds,
        "ok": result["ok"],
        "rounds_completed": result["rounds_completed"],
        "problems": result["problems"],
        "run_wall_s": result["wall_s"],  # the federation itself
        "simulate_wall_s": seconds,  # also provisioning, the state check and the run's own checks
        "round_s": [r["seconds"] for r in result["round_records"]],
        "peak_rss_bytes": memory.peak_rss,
        "peak_pss_bytes": memory.peak_pss,
        "peak_processes": memory.peak_processes,
        "ray": result.get("ray"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        },
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="wall time and peak memory of a simulated federation on the tiny model, per backend",
    )
    p.add_argument("--backend", choices=BACKENDS, default="ray", help="the simulate backend (default ray)")
    p.add_argument("--clients", type=int, default=200, help="institutions (default 200)")
    p.add_argument("--per-round", type=int, default=10, help="institutions per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--ray-cpus", type=int, metavar="N", help="CPUs of the local Ray cluster (default: all)")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    result = run_benchmark(args.backend, args.clients, args.per_round, args.rounds, args.ray_cpus)
    if emit(result, args.out, args.json):
        return 0 if result["ok"] else 1
    gib = 2**30
    print(
        f"simulate, {args.backend} backend: {args.clients} institutions, {args.per_round} per round, "
        f"{args.rounds} rounds of FedIT on {result['model']}",
    )
    print(f"  run {result['run_wall_s']:.1f} s (simulate in all {result['simulate_wall_s']:.1f} s)")
    print(
        f"  peak memory of the process tree: PSS {result['peak_pss_bytes'] / gib:.2f} GiB, "
        f"RSS {result['peak_rss_bytes'] / gib:.2f} GiB, {result['peak_processes']} processes"
    )
    print(f"  {'OK' if result['ok'] else 'FAILED: ' + '; '.join(result['problems'])}")
    return 0 if result["ok"] else 1
