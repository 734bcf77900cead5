"""Named federations that ``secfed simulate --preset NAME`` runs.

A preset fixes what a run *is* (task, cohort size, rounds, timing); command-line flags may still
override the size and timing. The table is data, not code, so adding a preset (the LoRA federation,
a large-cohort stress run) is one entry here and no change to the harness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    max_attempts: int = 3
    min_cohort: int = 3
    participation: float = 1.0
    seed: int = 0


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
        # Becomes the LoRA instruction-tuning federation once training lands; until then the toy task.
        "default": Preset(
            name="default",
            description="4 clients, 3 rounds of the toy task",
            clients=4,
            rounds=3,
            task="toy-mean",
            task_options=MappingProxyType({"dim": 16}),
            phase_timeout_s=10.0,
        ),
    }
)

DEFAULT_PRESET = "default"
