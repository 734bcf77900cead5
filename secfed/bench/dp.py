"""``secfed bench dp``: what DP-SGD costs over plain local training, in step time and peak memory.

Both modes train the same LoRA adapter (default model SmolLM2-135M-Instruct, :class:`LoraSettings`
defaults) on the same sequences with the same logical batch and physical micro-batch:

* non-DP: :func:`secfed.model.train.train_local` with ``batch_size = physical`` and
  ``grad_accum = batch / physical``;
* DP: :func:`secfed.dp.sgd.train_local_dp` with ``expected_batch_size = batch`` and
  ``max_physical_batch = physical`` (noise multiplier 1, clipping norm 1).

So that the two do the same model work, the records are ``batch`` built-in records whose prompt and
response are at least ``max_length`` tokens (all truncated to exactly ``max_length``: no padding in
either mode), and DP training sees exactly those ``batch`` records, which makes its Poisson rate 1:
every DP step processes all of them, like every non-DP step. What remains is DP's own cost: per-sample
gradient hooks, clipping, noise, and the frozen-weight checks (done once per call, outside the timed
loop, like the tokenization).

Step time: one warm-up call per mode, then ``repeats`` rounds that each run ``steps`` steps in both
modes on the same model, alternating which mode goes first; a call's time is ``TrainStats.seconds``
(the training loop only) over its steps. Reported values are medians over the rounds; the per-call
work outside the loop is reported separately (``*_call_overhead_s``: DP hashes the frozen weights
twice per round). On a machine shared with other jobs, ``--threads 1`` keeps torch's intra-op
threads from stalling on busy cores, which otherwise swamps the difference being measured.

Peak memory: for each mode a fresh subprocess loads the model and data, trains one warm-up step,
resets the kernel's RSS high-water mark (``/proc/self/clear_refs``), trains ``steps`` steps, and
reports ``VmHWM`` minus the RSS at the reset: the extra resident memory training needed, Python
allocations and torch's alike (tracemalloc sees neither torch's allocator nor its threads). The
children run with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so every
tensor buffer is mapped on allocation and unmapped on free: RSS then follows live memory instead of
what malloc happens to keep cached, which otherwise made repeated measurements of one mode differ 2x.
Where the reset is not permitted it falls back to ``ru_maxrss`` minus the RSS before training, an
upper bound (loading may have peaked higher); the JSON says which method was used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from secfed.bench.stats import add_output_arguments, emit, median

DEFAULT_MODEL = "smollm2-135m-instruct"
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
#: glibc malloc threshold (bytes) fixed in the memory subprocesses; see the module docstring.
MMAP_THRESHOLD = 128 * 1024


class _Setup:
    """Model with a fresh adapter, the benchmark records, and the settings of both modes."""

    def __init__(self, model: str, batch: int, physical: int, max_length: int) -> None:
        from secfed.data.builtin import builtin_splits
        from secfed.data.prompts import tokenize_example
        from secfed.dp.sgd import DpSettings
        from secfed.model.loading import load_base_model
        from secfed.model.lora import LoraSettings, apply_lora
        from secfed.model.train import TrainSettings

        if batch < 1 or physical < 1 or batch % physical:
            raise ValueError(f"--batch ({batch}) must be a positive multiple of --physical ({physical})")
        self.base = load_base_model(model)
        self.peft = apply_lora(self.base.model, LoraSettings())
        splits, _ = builtin_splits(1, train_per_category=24, test_per_category=1, partition="iid")

        def length(record: Any) -> int:
            return len(tokenize_example(record, self.base.tokenizer, style="chat", max_length=512).input_ids)

        # Any record at least max_length long is cut to exactly max_length: equal shapes, no padding.
        full = [r for r in splits[0] if length(r) >= max_length]
        if len(full) < batch:
            raise ValueError(
                f"only {len(full)} built-in records reach {max_length} tokens; lower --max-length"
            )
        self.records = full[:batch]
        self.train = TrainSettings(
            batch_size=physical, grad_accum=batch // physical, max_length=max_length, lr=1e-3, style="chat"
        )
        self.dp = DpSettings(
            NOISE_MULTIPLIER, MAX_GRAD_NORM, expected_batch_size=batch, max_physical_batch=physical
        )

    def run(self, mode: str, steps: int, round_: int = 0) -> Any:
        """One call of ``steps`` steps; returns its ``TrainStats``."""
        from dataclasses import replace

        from secfed.dp.sgd import train_local_dp
        from secfed.model.train import train_local

        settings = replace(self.train, local_steps=steps)
        tok = self.base.tokenizer
        if mode == "dp":
            stats, event = train_local_dp(
                self.peft, tok, self.records, settings, self.dp, round_=round_, progress=False
            )
            if event.sample_rate != 1.0 or event.empty_batches:
                raise AssertionError(f"benchmark DP batches should be all records every step, got {event}")
            return stats
        if mode == "nodp":
            return train_local(self.peft, tok, self.records, settings, round_=round_, progress=False)
        raise ValueError(f"unknown mode {mode!r}")


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    if found is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(found.group(1))


def _set_threads(threads: int | None) -> int:
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def _peak_child(argv: list[str]) -> None:
    """Subprocess entry point: set up, warm up, reset the RSS high-water mark, train, print the peak delta."""
    mode, model, batch, physical, max_length, steps, threads = argv
    _set_threads(int(threads) if threads != "default" else None)
    setup = _Setup(model, int(batch), int(physical), int(max_length))
    setup.run(mode, 1)  # steady state: first-call allocations are not what DP costs per step
    baseline_kb = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        method = "vmhwm-reset"
    except OSError:
        method = "ru_maxrss"
    stats = setup.run(mode, int(steps))
    peak_kb = (
        _status_kb("VmHWM") if method == "vmhwm-reset" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    )
    print(json.dumps({"peak_mb": (peak_kb - baseline_kb) / 1024, "method": method, "tokens": stats.tokens}))


def _peak_mb(
    mode: str, model: str, batch: int, physical: int, max_length: int, steps: int, threads: int | None
) -> dict[str, Any]:
    code = "import sys; from secfed.bench.dp import _peak_child; _peak_child(sys.argv[1:])"
    args = [mode, model, str(batch), str(physical), str(max_length), str(steps), str(threads or "default")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement for {mode} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_benchmark(
    model: str = DEFAULT_MODEL,
    steps: int = 1,
    repeats: int = 5,
    batch: int = 8,
    physical: int = 4,
    max_length: int = 48,
    memory: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    if steps < 1 or repeats < 1:
        raise ValueError("--steps and --repeats must be >= 1")
    torch_threads = _set_threads(threads)
    setup = _Setup(model, batch, physical, max_length)
    for mode in ("dp", "nodp"):
        setup.run(mode, 1)  # warm-up: first-call allocations, lazy imports
    times: dict[str, list[float]] = {"dp": [], "nodp": []}
    tokens: dict[str, list[int]] = {"dp": [], "nodp": []}
    outside: dict[str, list[float]] = {"dp": [], "nodp": []}
    cpu: dict[str, list[float]] = {"dp": [], "nodp": []}
    for r in range(repeats):
        for mode in ("dp", "nodp") if r % 2 == 0 else ("nodp", "dp"):
            started, cpu_started = time.perf_counter(), time.process_time()
            stats = setup.run(mode, steps, round_=r + 1)
            cpu[mode].append(time.process_time() - cpu_started)
            outside[mode].append(time.perf_counter() - started - stats.seconds)
            times[mode].append(stats.seconds / stats.steps)
            tokens[mode].append(stats.tokens // stats.steps)
    dp_s, nodp_s = median(times["dp"]), median(times["nodp"])
    result: dict[str, Any] = {
        "benchmark": "dp",
        "model": model,
        "lora": "LoraSettings() defaults",
        "batch": batch,
        "physical_batch": physical,
        "max_length": max_length,
        "steps_per_call": steps,
        "repeats": repeats,
        "noise_multiplier": NOISE_MULTIPLIER,
        "max_grad_norm": MAX_GRAD_NORM,
        "dp_step_s": dp_s,
        "nodp_step_s": nodp_s,
        "ratio": dp_s / nodp_s,
        # Less sensitive to other jobs on the machine: the fastest step of each mode, and the process
        # CPU time of whole calls (loop plus per-call overhead, so it overstates DP's per-step cost).
        "ratio_min": min(times["dp"]) / min(times["nodp"]),
        "dp_call_cpu_s": median(cpu["dp"]),
        "nodp_call_cpu_s": median(cpu["nodp"]),
        "torch_threads": torch_threads,
        # per call, outside the timed loop: tokenization, and for DP hook setup and two frozen-weight hashes
        "dp_call_overhead_s": median(outside["dp"]),
        "nodp_call_overhead_s": median(outside["nodp"]),
        "dp_step_s_all": times["dp"],
        "nodp_step_s_all": times["nodp"],
        "dp_step_s_stdev": statistics.stdev(times["dp"]) if repeats > 1 else 0.0,
        "nodp_step_s_stdev": statistics.stdev(times["nodp"]) if repeats > 1 else 0.0,
        "tokens_per_step": {"dp": sorted(set(tokens["dp"])), "nodp": sorted(set(tokens["nodp"]))},
        "target_ratio": 1.3,
    }
    if memory:
        del setup  # the children measure in their own processes; free this one's model first
        peaks = {
            mode: _peak_mb(mode, model, batch, physical, max_length, steps, threads)
            for mode in ("dp", "nodp")
        }
        result["dp_peak_mb"] = peaks["dp"]["peak_mb"]
        result["nodp_peak_mb"] = peaks["nodp"]["peak_mb"]
        result["peak_method"] = f"{peaks['dp']['method']}, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"
    return result


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dp", help="DP-SGD step time and peak memory relative to non-DP training")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default {DEFAULT_MODEL})")
    p.add_argument("--steps", type=int, default=1, help="steps per timed call (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved DP/non-DP call pairs (default 5)")
    p.add_argument("--batch", type=int, default=8, help="logical batch size, both modes (default 8)")
    p.add_argument("--physical", type=int, default=4, help="physical micro-batch, both modes (default 4)")
    p.add_argument("--max-length", type=int, default=48, help="tokens per sequence (default 48)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    result = run_benchmark(
        args.model,
        args.steps,
        args.repeats,
        args.batch,
        args.physical,
        args.max_length,
        memory=not args.no_memory,
        threads=args.threads,
    )
    if emit(result, args.out, args.json):
        return 0
    print(
        f"DP-SGD step {result['dp_step_s']:.3f} s vs non-DP {result['nodp_step_s']:.3f} s: "
        f"ratio {result['ratio']:.2f}x (target <= {result['target_ratio']}x); "
        f"batch {args.batch} in micro-batches of {args.physical}, {args.max_length} tokens each"
    )
    if "dp_peak_mb" in result:
        print(
            f"peak extra memory while training: DP {result['dp_peak_mb']:.0f} MB, "
            f"non-DP {result['nodp_peak_mb']:.0f} MB ({result['peak_method']})"
        )
    return 0
