"""``secfed bench ...``: the benchmarks, each registering its own sub-command and writing JSON."""

from __future__ import annotations

import argparse

from secfed.bench import attacks as bench_attacks
from secfed.bench import compare as bench_compare
from secfed.bench import coreset as bench_coreset
from secfed.bench import crashresume as bench_crashresume
from secfed.bench import deploy as bench_deploy
from secfed.bench import dp as bench_dp
from secfed.bench import fuzz as bench_fuzz
from secfed.bench import load as bench_load
from secfed.bench import round as bench_round
from secfed.bench import secagg as bench_secagg
from secfed.bench import simulate_scale as bench_simulate
from secfed.bench import storage as bench_storage
from secfed.bench import train as bench_train

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print or write JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    bench_secagg.register(bench_sub)
    bench_round.register(bench_sub)
    bench_storage.register(bench_sub)
    bench_train.register(bench_sub)
    bench_attacks.register(bench_sub)
    bench_dp.register(bench_sub)
    bench_compare.register(bench_sub)
    bench_coreset.register(bench_sub)
    bench_load.register(bench_sub)
    bench_crashresume.register(bench_sub)
    bench_fuzz.register(bench_sub)
    bench_deploy.register(bench_sub)
    bench_simulate.register(bench_sub)
