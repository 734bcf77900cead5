"""DP-SGD noise generation speed: the AES-CTR generator (secfed.dp.csprng) against torch.randn and the
Opacus secure-mode path it replaced, side by side in one process (medians of 9 draws).

    .venv/bin/python benchmarks/noise_speed.py --out benchmarks/results/noise-speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from opacus.optimizers.optimizer import _generate_noise

from secfed.dp.csprng import AesCtrGaussian


def median_s(fn: Callable[[], object], repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    source = AesCtrGaussian()
    generator = torch.Generator().manual_seed(1)
    rows = []
    for n in (1_000_000, 5_000_000):
        reference = torch.zeros(n)
        row = {
            "parameters": n,
            "torch_randn_s": median_s(lambda n=n: torch.randn(n)),
            "opacus_secure_mode_mt19937_s": median_s(
                lambda ref=reference: _generate_noise(1.0, ref, generator, True)
            ),
            "csprng_dp_noise_s": median_s(lambda n=n: source.gaussian((n,), std=1.0)),
        }
        row["csprng_over_opacus"] = row["csprng_dp_noise_s"] / row["opacus_secure_mode_mt19937_s"]
        rows.append(row)
        print(json.dumps(row))
    source.close()
    result = {"threads": torch.get_num_threads(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
