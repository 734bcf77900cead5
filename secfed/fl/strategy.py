"""How the server turns a decoded cohort sum into the next global model: one rule, used by every task.

The server half of a task only ever receives cohort sums (``AggregateResult.values``), never one
institution's update, so an aggregation strategy here is a function of the current model and those sums.
FedAvg over weighted deltas is the one secfed's tasks use: each institution uploads ``w * delta`` and
``w``, and the server moves the model by ``sum(w * delta) / sum(w)``. A server optimizer (FedAdam,
FedYogi) would be another strategy over the same sums: it would keep its moments between rounds and
step on the same mean delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from secfed.secagg.messages import AggregateResult

__all__ = ["WeightedDeltaMean"]


@dataclass(frozen=True)
class WeightedDeltaMean:
    """FedAvg over decoded sums: ``model + sum(w * delta) / sum(w)``, reading the sums from the segments
    named ``delta`` and ``weight`` of the task's vector spec."""

    task: str
    delta: str = "delta"
    weight: str = "weight"

    def __call__(self, model: NDArray[np.float32], result: AggregateResult) -> NDArray[np.float32]:
        total = float(result.values[self.weight][0])
        if total <= 0:
            raise ValueError(f"{self.task}: the cohort's total weight is zero")
        updated: NDArray[np.float32] = (model + result.values[self.delta] / total).astype(np.float32)
        return updated
