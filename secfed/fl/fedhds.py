"""FedHDS: federated instruction tuning on a small coreset chosen each round, seen by the server only in sums.

Each round runs the coreset stages of :mod:`secfed.coreset` (federated PCA statistics, cell
occupancy, the centroid histogram, one or more anonymous slot elections), every one a secure-
aggregation session, and then a ``train`` stage that is FedIT's secure FedAvg restricted to the
selected records: each election winner trains on its record nearest each global cluster it won
(the sample trained on is the sample selected). Every cohort member takes part in the train stage,
winners and non-winners alike (a non-winner uploads zeros), so the server does not learn who won.

``selection = "random"`` is the baseline at the same budget: every institution trains on a random
``random_fraction`` of its records, with no coreset stages.

Features come from the frozen base model ("turbo", the default: computed once per institution and
reused every round) or from the current global model (``feature_model = "global"``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed import logs
from secfed.fl import tasks
from secfed.fl.fedit import FeditClient, FeditServer, ModelPool, train_round
from secfed.fl.tasks import StagePlan, StageResult
from secfed.secagg.messages import AggregateResult

NAME = "fedhds-lora"
TRAIN_STAGE = "train"
log = logging.getLogger("secfed.fl.fedhds")


@dataclass(frozen=True)
class SelectionOptions:
    """The coreset part of ``[task.options]`` (public: sent to every institution)."""

    selection: str = "fedhds"  # or "random": the same-budget baseline
    random_fraction: float = 0.05
    coreset: dict[str, Any] = field(default_factory=dict)  # secfed.coreset.config.CoresetConfig fields
    feature_model: str = "base"  # "base" (frozen, cached) or "global" (this round's adapter)
    feature_layers: tuple[int, ...] = (-1,)
    feature_max_length: int = 96
    selected_epochs: float = 1.0  # passes over the selected records per round

    def __post_init__(self) -> None:
        if self.selection not in ("fedhds", "random"):
            raise ValueError(f"{NAME}: selection must be 'fedhds' or 'random', got {self.selection!r}")
        if not 0 < self.random_fraction <= 1:
            raise ValueError(f"{NAME}: random_fraction must be in (0, 1]")
        if self.feature_model not in ("base", "global"):
            raise ValueError(f"{NAME}: feature_model must be 'base' or 'global'")
        if not self.feature_layers or self.feature_max_length < 8 or not self.selected_epochs > 0:
            raise ValueError(f"{NAME}: feature_layers must be non-empty, feature_max_length >= 8, epochs > 0")

    def coreset_config(self) -> Any:
        from secfed.coreset.config import CoresetConfig

        return CoresetConfig.from_json({**self.coreset, "feature_blocks": len(self.feature_layers)})

    def to_json(self) -> dict[str, Any]:
        return {
            "selection": self.selection,
            "random_fraction": self.random_fraction,
            "feature_model": self.feature_model,
            "feature_layers": list(self.feature_layers),
            "feature_max_length": self.feature_max_length,
            "selected_epochs": self.selected_epochs,
        }


def _split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], SelectionOptions]:
    own = set(SelectionOptions.__dataclass_fields__)
    fedit = {k: v for k, v in options.items() if k not in own}
    mine = {k: v for k, v in options.items() if k in own}
    if "feature_layers" in mine:
        mine["feature_layers"] = tuple(int(x) for x in mine["feature_layers"])
    return fedit, SelectionOptions(**mine)


class FedhdsServer(FeditServer):
    name = NAME

    def __init__(self, options: Mapping[str, Any]) -> None:
        fedit, self.selection = _split_options(options)
        super().__init__(fedit)
        self.coreset = self.selection.coreset_config()
        self.summaries: dict[int, dict[str, Any]] = {}

    def _round_seed(self, round_: int) -> int:
        # Public: the projection and every server-side choice derive from it (never a secret).
        return (int(self.opts.seed) * 1_000_003 + round_) % 2**62

    def task_config(self, round_: int) -> dict[str, Any]:
        return {**super().task_config(round_), "fedhds": self.selection.to_json()}

    def next_stage(
        self, round_: int, model: NDArray[np.float32], done: Sequence[StageResult]
    ) -> StagePlan | None:
        from secfed.coreset import server as coreset_server
        from secfed.coreset.layout import CohortSum

        if done and done[-1].name == TRAIN_STAGE:
            return None
        if self.selection.selection == "random":
            if done:
                raise ValueError(f"unexpected stage {done[-1].name!r} in a random-selection round")
            summary = {"mode": "random", "fraction": self.selection.random_fraction}
            return self._train_stage(round_, model, {"mode": "random"}, summary)
        sums = [CohortSum(st.name, st.result.values, len(st.result.contributors)) for st in done]
        if len(sums) >= 3 and sums[2].n_contributors < sums[1].n_contributors:
            # A cell allowed for having min_cohort institutions in the occupancy stage could then be
            # summed over fewer of them: restart the round rather than reveal such a sum.
            raise ValueError(
                f"the cohort shrank from {sums[1].n_contributors} to {sums[2].n_contributors} institutions "
                "between the occupancy and histogram stages"
            )
        plan = coreset_server.next_stage(self.coreset, self._round_seed(round_), sums)
        if isinstance(plan, coreset_server.StagePlan):
            # Every stage carries the round's FedIT settings too (base model hash, LoRA, feature options).
            return StagePlan(
                plan.name, plan.layout.vector_spec(), {**self.task_config(round_), **plan.broadcast}
            )
        total = int(plan.summary.get("total_records", 0))
        selected = int(plan.summary.get("n_winners", 0))
        summary = {
            "mode": "fedhds",
            **plan.summary,
            "selected": selected,
            "records": total,
            "fraction": selected / total if total else 0.0,
        }
        return self._train_stage(round_, model, {"mode": "fedhds", **plan.broadcast}, summary)

    def _train_stage(
        self, round_: int, model: NDArray[np.float32], selection: dict[str, Any], summary: dict[str, Any]
    ) -> StagePlan:
        self.summaries[round_] = summary
        logs.event(
            log,
            "coreset-selected",
            round=round_,
            **{k: v for k, v in summary.items() if not isinstance(v, list)},
        )
        config = {**self.task_config(round_), "selection": selection, "selection_summary": summary}
        return StagePlan(TRAIN_STAGE, self.spec(model), config)

    def apply(self, model: NDArray[np.float32], result: AggregateResult) -> NDArray[np.float32]:
        if float(result.values["weight"][0]) <= 0:
            log.warning("round selected no records: the global adapter is unchanged")
            return np.array(model, dtype=np.float32)
        return super().apply(model, result)


class FedhdsClient(FeditClient):
    """An institution's FedHDS half: coreset statistics in the coreset stages, training in ``train``."""

    name = NAME

    def __init__(
        self, client_id: str, options: Mapping[str, Any], *, model_pool: ModelPool | None = None
    ) -> None:
        super().__init__(client_id, options, model_pool=model_pool)
        self._coreset: Any = None
        self._features_round: int | None = None
        self.last_selected: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.selection_s = 0.0
        self.records_trained = 0  # summed over rounds
        self.features: tuple[NDArray[np.int64], NDArray[np.float64]] | None = None

    def preload_features(self, indices: NDArray[np.int64], features: NDArray[np.float64]) -> None:
        """Use features computed earlier from the same frozen base model (benchmarks compare several
        selection methods on the same institutions; turbo features do not depend on the round)."""
        from secfed.coreset.client import CoresetClient

        if len(indices) != len(self.records):
            raise ValueError(f"{len(indices)} feature rows for {len(self.records)} records")
        self.features = (indices, features)
        self._coreset = CoresetClient(indices, features)

    def _features(self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]) -> Any:
        """This round's CoresetClient (turbo features are computed once and reused)."""
        from secfed.coreset.client import CoresetClient
        from secfed.coreset.features import last_token_features
        from secfed.model.lora import vector_to_adapter

        opts = task_config.get("fedhds", {})
        per_round = opts.get("feature_model", "base") == "global"
        if self._coreset is not None and (not per_round or self._features_round == round_):
            return self._coreset
        peft = self._ensure_model(task_config)
        layers = [int(x) for x in opts.get("feature_layers", [-1])]
        max_length = int(opts.get("feature_max_length", 96))
        tokenizer = self._base.tokenizer
        if per_round:
            vector_to_adapter(peft, model)
            indices, feats = last_token_features(
                peft, tokenizer, self.records, layers=layers, max_length=max_length
            )
        else:
            with peft.disable_adapter():
                indices, feats = last_token_features(
                    peft, tokenizer, self.records, layers=layers, max_length=max_length
                )
        self._coreset = CoresetClient(indices, feats)
        self.features = (indices, feats)
        self._features_round = round_
        return self._coreset

    def compute(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> dict[str, NDArray[np.float64]]:
        stage = str(task_config.get("stage", ""))
        if stage == TRAIN_STAGE:
            return self._train(round_, model, task_config)
        started = time.perf_counter()
        coreset = self._features(round_, model, task_config)
        out: dict[str, NDArray[np.float64]] = coreset.contribute(task_config)
        self.selection_s += time.perf_counter() - started
        return out

    def _selected_indices(self, task_config: Mapping[str, Any]) -> NDArray[np.int64]:
        selection = task_config.get("selection") or {}
        if selection.get("mode") == "assigned":  # the INSECURE plaintext baseline: the server chose
            return np.asarray(selection.get("assigned", {}).get(self.client_id, []), dtype=np.int64)
        if selection.get("mode") == "random":
            fraction = float((task_config.get("fedhds") or {}).get("random_fraction", 0.05))
            k = min(len(self.records), max(1, round(fraction * len(self.records))))
            # The institution's own secret randomness: the server does not learn which records.
            pool = list(range(len(self.records)))
            chosen = [pool.pop(secrets.randbelow(len(pool))) for _ in range(k)]
            return np.asarray(sorted(chosen), dtype=np.int64)
        if self._coreset is None:
            raise ValueError(
                f"{NAME} client {self.client_id}: a train stage without this round's coreset stages"
            )
        picked: NDArray[np.int64] = self._coreset.selection(
            {**selection, "stage": "coreset-selection"}
        ).records
        return picked

    def _train(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> dict[str, NDArray[np.float64]]:
        from secfed.model.lora import adapter_to_vector, vector_to_adapter
        from secfed.model.train import TrainSettings

        started = time.perf_counter()
        indices = self._selected_indices(task_config)
        self.last_selected = indices
        if len(indices) == 0:  # not a winner: zeros, so the server cannot tell who won
            self.last_compute_s = time.perf_counter() - started
            return {"delta": np.zeros(self._adapter_size(task_config)), "weight": np.zeros(1)}
        records = [self.records[int(i)] for i in indices]
        self.records_trained += len(records)
        peft = self._ensure_model(task_config)
        vector_to_adapter(peft, model)
        epochs = float((task_config.get("fedhds") or {}).get("selected_epochs", 1.0))
        train = {**task_config.get("train", {}), "epochs": epochs}
        settings = TrainSettings(**{**train, "seed": int(task_config.get("seed", 0))})
        stats, dp_trained = train_round(
            self.privacy, peft, self._base.tokenizer, records, settings, task_config, round_, self.client_id
        )
        self.last_stats = stats
        delta = adapter_to_vector(peft).astype(np.float64) - model.astype(np.float64)
        max_weight = int(task_config.get("max_weight", 16))
        weight = float(max_weight if dp_trained else min(len(records), max_weight))
        self.last_compute_s = time.perf_counter() - started
        logs.event(
            log,
            "coreset-train",
            client=self.client_id,
            round=round_,
            selected=len(records),
            steps=stats.steps,
            seconds=f"{stats.seconds:.1f}",
        )
        return {"delta": weight * delta, "weight": np.array([weight])}

    def _adapter_size(self, task_config: Mapping[str, Any]) -> int:
        from secfed.model.lora import adapter_size

        return int(adapter_size(self._ensure_model(task_config)))


tasks.register(NAME, FedhdsServer, FedhdsClient, privacy_aware=True)
