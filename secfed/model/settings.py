"""The settings of LoRA and of local training, kept free of torch so configs and instructions can import them.

Round instructions (:mod:`secfed.fl.instruction`) are typed with these dataclasses, and the coordinator,
the CLI and config validation import them without paying for torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

#: How a record becomes a prompt (:mod:`secfed.data.prompts`).
PromptStyle = Literal["alpaca", "chat"]


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters; part of the federation's task config, so every client builds the same shape."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        # Configs arrive from TOML/JSON, where sequences are lists; keep the dataclass hashable.
        modules: Any = self.target_modules
        if not isinstance(modules, tuple):
            object.__setattr__(self, "target_modules", tuple(modules))
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(
                f"LoRA target_modules must be non-empty module names, got {self.target_modules!r}"
            )


@dataclass(frozen=True)
class TrainSettings:
    """Local optimisation of one round. ``local_steps`` counts optimizer steps (after accumulation);
    setting ``epochs`` instead trains for that many passes over the local data (rounded up to steps)."""

    local_steps: int = 10
    epochs: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.0
    style: PromptStyle = "chat"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.local_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("local_steps, batch_size and grad_accum must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.max_length < 16:
            raise ValueError("lr must be > 0 and max_length >= 16")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError("epochs must be > 0")

    def batch_for(self, n_records: int) -> int:
        """Sequences per micro-batch: ``batch_size``, but never more than there are records.

        A coreset winner trains on one to three records; filling a batch of four with copies of the
        same record would cost up to four times the compute for the same gradient, and weight a
        record twice next to its neighbours.
        """
        return max(1, min(self.batch_size, n_records))

    def steps_for(self, n_records: int) -> int:
        if self.epochs is None:
            return self.local_steps
        return max(1, math.ceil(self.epochs * n_records / (self.batch_for(n_records) * self.grad_accum)))

    def dp_steps_for(self, n_records: int, expected_batch_size: int) -> int:
        """The logical steps DP-SGD takes: ``local_steps``, or ``epochs`` passes counted in Poisson
        batches of ``expected_batch_size`` (DP-SGD replaces ``batch_size`` and ``grad_accum``).

        The one step count of a DP round: the budget guard approves, the noise is calibrated for, and
        the trainer runs (and checks) exactly this many steps."""
        return replace(self, batch_size=expected_batch_size, grad_accum=1).steps_for(n_records)
