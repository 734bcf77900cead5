"""Named federations that ``secfed simulate --preset NAME`` runs.

A preset fixes what a run *is* (task, cohort size, rounds, timing); command-line flags may still
override the size and timing. The table is data, not code, so adding a preset (the LoRA federation,
a large-cohort stress run) is one entry here and no change to the harness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """One runnable federation: the task, its options, and the round plan the server is given."""

    name: str
    description: str
    clients: int
    rounds: int
    task: str
    task_options: Mapping[str, Any] = field(default_factory=dict)
    phase_timeout_s: float = 10.0
    # The compute phase's deadline (local training); None: the same as a SecAgg phase's.
    compute_timeout_s: float | None = None
    max_attempts: int = 3
    min_cohort: int = 3
    participation: float = 1.0
    seed: int = 0
    # Options of every client's task; None means the server's task_options. With partition_data each
    # client also gets its client_index and n_clients, so it takes its own share of the data.
    client_options: Mapping[str, Any] | None = None
    partition_data: bool = False
    # Evaluate the base model before and the exported adapter after the run on the built-in test set.
    evaluate: bool = False
    # Evaluate on this JSON/JSONL file (Rouge-L) instead of the built-in test split.
    eval_data: str | None = None
    eval_max_new_tokens: int = 24
    eval_max_records: int | None = None
    # Threads each child process may use for tensor work (None: the library default). Training presets
    # use 1: several processes already share this machine's few cores.
    torch_threads: int | None = None
    # Every institution's [privacy] policy (budget_epsilon, delta, require_dp); ledgers are per client.
    privacy: Mapping[str, Any] = field(default_factory=dict)

    def with_model(self, model: str) -> Preset:
        """The same preset on another base model (server and clients alike)."""
        client = (
            None if self.client_options is None else MappingProxyType({**self.client_options, "model": model})
        )
        return replace(
            self, task_options=MappingProxyType({**self.task_options, "model": model}), client_options=client
        )

    def options_for(self, index: int, n_clients: int) -> dict[str, Any]:
        options = dict(self.task_options if self.client_options is None else self.client_options)
        if self.partition_data:
            options = {
                k: v.replace("{client_index}", str(index)) if isinstance(v, str) else v
                for k, v in options.items()
            }
            options.update(client_index=index, n_clients=n_clients)
        return options


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "smoke": Preset(
            name="smoke",
            description="3 clients, 2 rounds of the toy task: a quick check that a federation works end to end",
            clients=3,
            rounds=2,
            task="toy-mean",
            task_options=MappingProxyType({"dim": 16}),
            phase_timeout_s=5.0,
        ),
        "toy": Preset(
            name="toy",
            description="4 clients, 3 rounds of the toy task",
            clients=4,
            rounds=3,
            task="toy-mean",
            task_options=MappingProxyType({"dim": 16}),
            phase_timeout_s=10.0,
        ),
        # The main job: SmolLM2-135M-Instruct LoRA-tuned by 4 institutions on the built-in data, each
        # holding a non-IID share (two categories each). Sized for about 10 minutes on a 2-core CPU.
        "default": Preset(
            name="default",
            description="4 institutions LoRA-tune SmolLM2-135M-Instruct on the built-in instruction data",
            clients=4,
            rounds=4,
            task="fedit-lora",
            task_options=MappingProxyType(
                {
                    "model": "smollm2-135m-instruct",
                    "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
                    "train": {
                        "local_steps": 8,
                        "batch_size": 4,
                        "max_length": 96,
                        "lr": 1e-3,
                        "style": "chat",
                    },
                    "max_weight": 16,
                }
            ),
            client_options=MappingProxyType(
                {
                    "model": "smollm2-135m-instruct",
                    "data": "builtin",
                    "train_per_category": 24,
                    "test_per_category": 8,
                    "partition": "category",
                    "data_seed": 0,
                }
            ),
            partition_data=True,
            evaluate=True,
            torch_threads=1,
            phase_timeout_s=600.0,
            compute_timeout_s=1200.0,
        ),
    }
)

# The main job with DP-SGD: each institution calibrates its noise so the 4 rounds cost at most
# epsilon 8 at delta 1e-5, and its budget guard caps it there. Same data and model as "default".
PRESETS = MappingProxyType(
    {
        **PRESETS,
        "dp": replace(
            PRESETS["default"],
            name="dp",
            description="the default federation with DP-SGD: epsilon 8 at delta 1e-5 per institution",
            task_options=MappingProxyType(
                {
                    **PRESETS["default"].task_options,
                    "dp": {
                        "target_epsilon": 8.0,
                        "delta": 1e-5,
                        "max_grad_norm": 1.0,
                        "expected_batch_size": 8,
                        "max_physical_batch": 4,
                    },
                }
            ),
            privacy=MappingProxyType({"budget_epsilon": 8.0, "delta": 1e-5}),
        ),
    }
)

DEFAULT_PRESET = "default"
