"""FedHDS end to end with a tiny random Llama: coreset stages as SecAgg sessions, then training on the
selected records only, through the real coordinator and SecAgg state machines (in process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed.audit.report import round_selection
from secfed.bench.inprocess import run_inprocess
from secfed.fl.fedhds import FedhdsClient, FedhdsServer
from secfed.fl.fedit import ModelPool

pytestmark = pytest.mark.timeout(300)
N = 5


def _options(model: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(model),
        "train": {"batch_size": 2, "max_length": 64, "lr": 5e-3, "style": "chat"},
        "max_weight": 8,
        "coreset": {"k0": 8, "bins": 4, "max_fraction": 0.1, "min_cohort": 2},
        "feature_layers": [-1, 1],
        "feature_max_length": 48,
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


def test_secure_fedhds_round_selects_a_small_coreset_and_trains_only_on_it(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FedhdsServer(_options(tiny_model_dir))
    pool: ModelPool = {}
    clients = _clients(tiny_model_dir, pool)
    trained: dict[int, dict[str, np.ndarray]] = {}
    original = FedhdsClient._train_and_release

    def spy(self: FedhdsClient, round_: int, model: np.ndarray, config: Any) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = original(self, round_, model, config)
        trained.setdefault(round_, {})[self.client_id] = self.last_selected.copy()
        return out

    monkeypatch.setattr(FedhdsClient, "_train_and_release", spy)
    run = run_inprocess(server, clients, rounds=2, seed=3)
    assert run.finished_reason == "completed 2 rounds", run.aborted
    total = sum(len(c.records) for c in clients.values())
    for round_, stages in enumerate(run.stage_results):
        names = [s.name for s in stages]
        assert names[:3] == ["coreset-pca", "coreset-occupancy", "coreset-histogram"]
        assert names[-1] == "train" and all(n.startswith("coreset-election") for n in names[3:-1])
        summary = server.summaries[round_]
        selected = summary["selected"]
        assert 0 < selected <= 0.1 * total
        # every cohort member trains on at least one record (a non-winner on its nearest candidate),
        # so the train sum holds data of every contributor, never one winner's update beside zeros
        per_member = [len(v) for v in trained[round_].values()]
        assert len(per_member) == N and min(per_member) >= 1
        assert selected <= sum(per_member) <= selected + N
        # the round record keeps the public selection summary; the audit report reads it from there
        facts = {st.name: st.audit_facts() for st in stages}
        assert round_selection(facts) == {
            "selected": selected,
            "records": total,
            "fraction": selected / total,
            "mode": "fedhds",
        }
        # every cohort member uploaded to the train stage with the public weight (max_weight): the
        # weight sum reveals neither the winners nor how many records anyone trained on
        train = stages[-1].result
        assert len(train.contributors) == N
        assert float(train.values["weight"][0]) == 8.0 * N
        # each winner's records are distinct rows of its own data
        for cid, rows in trained[round_].items():
            assert len(set(rows.tolist())) == len(rows) and all(
                0 <= r < len(clients[cid].records) for r in rows
            )
    assert not np.array_equal(run.model, server.initial_model())


def test_random_selection_baseline_has_no_coreset_stages(tiny_model_dir: Path) -> None:
    server = FedhdsServer(_options(tiny_model_dir, selection="random", random_fraction=0.2))
    clients = _clients(tiny_model_dir, {})
    run = run_inprocess(server, clients, rounds=1)
    assert run.finished_reason == "completed 1 rounds"
    assert [s.name for s in run.stage_results[0]] == ["train"]
    assert float(run.stage_results[0][0].result.values["weight"][0]) == 8.0 * N  # public weights
    assert all(len(c.last_selected) == max(1, round(0.2 * len(c.records))) for c in clients.values())


def test_unknown_options_are_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="selection must be"):
        FedhdsServer(_options(tiny_model_dir, selection="magic"))
    with pytest.raises(ValueError, match="unknown coreset settings"):
        FedhdsServer(_options(tiny_model_dir, coreset={"grid": 3}))
