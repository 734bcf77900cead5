"""FedHDS with DP selection end to end (tiny random Llama, real coordinator and SecAgg state machines in
process): the three release stages run once per federation, later rounds train on the public release,
and every institution derives each plan itself from the sums it verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed.bench.inprocess import run_inprocess
from secfed.coreset.dp_config import DP_STAGES
from secfed.fl.fedhds import FedhdsClient, FedhdsServer
from secfed.fl.fedit import ModelPool

pytestmark = pytest.mark.timeout(300)
N = 5


def _options(model: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(model),
        "train": {"batch_size": 2, "max_length": 64, "lr": 5e-3, "style": "chat"},
        "max_weight": 8,
        "coreset": {"max_fraction": 0.1},
        "feature_layers": [-1, 1],
        "feature_max_length": 48,
        "selection_dp": {"epsilon": 2.0, "bins": 4},
        **extra,
    }


def _clients(model: Path, pool: ModelPool) -> dict[str, FedhdsClient]:
    data = {
        "data": "builtin",
        "n_clients": N,
        "train_per_category": 6,
        "test_per_category": 1,
        "partition": "iid",
    }
    return {
        f"inst{i:02d}": FedhdsClient(
            f"inst{i:02d}", {"model": str(model), **data, "client_index": i}, model_pool=pool
        )
        for i in range(N)
    }


def test_release_runs_once_and_later_rounds_train_on_it(tiny_model_dir: Path) -> None:
    server = FedhdsServer(_options(tiny_model_dir))
    clients = _clients(tiny_model_dir, {})
    run = run_inprocess(server, clients, rounds=2, seed=3)
    assert run.finished_reason == "completed 2 rounds", run.aborted
    assert [s.name for s in run.stage_results[0]] == [*DP_STAGES, "train"]
    assert [s.name for s in run.stage_results[1]] == ["train"]
    for round_ in (0, 1):
        summary = server.summaries[round_]
        assert summary["mode"] == "fedhds-dp" and summary["selected"] is None
        assert summary["selection_epsilon"] == 2.0
        train = run.stage_results[round_][-1].result
        assert len(train.contributors) == N and float(train.values["weight"][0]) == 8.0 * N
    for client in clients.values():
        assert 1 <= len(client.last_selected) <= max(1, int(0.1 * len(client.records)))
    assert not np.array_equal(run.model, server.initial_model())
