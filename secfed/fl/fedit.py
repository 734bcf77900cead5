"""FedIT: federated instruction tuning of one LoRA adapter, summed by secure aggregation.

The federation's "global model" is the adapter, flattened to a float32 vector in a fixed order. Each
round a client loads it into its own copy of the base model, trains locally, and uploads
``[w * (new - global), w]`` where ``w = min(training records, max_weight)``: a bounded integer weight,
so the upload never reveals a raw record count beyond the cap and the fixed-point range is known in
advance. The server, which only ever sees the cohort sums, moves the adapter by
``sum(w * delta) / sum(w)``: FedAvg weighted by (capped) data size.

Every institution must run the same base model: the server sends the base model's hash with each
round and a client with different weights refuses to take part rather than corrupt the average.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from secfed import logs
from secfed.fl import tasks
from secfed.secagg.messages import AggregateResult
from secfed.secagg.spec import Segment, VectorSpec

if TYPE_CHECKING:
    from secfed.data.formats import Record
    from secfed.dp.institution import InstitutionPrivacy
    from secfed.model.train import TrainSettings, TrainStats

NAME = "fedit-lora"
# transformers' model loading switches process-wide state (default dtype, meta-device init), so when
# several clients share a process (benchmarks, tests) they load one at a time.
_LOAD_LOCK = threading.Lock()
log = logging.getLogger("secfed.fl.fedit")

#: 2^-32 resolution in a 64-bit ring: exact enough for LoRA deltas, and room for ~10^5 contributors.
DELTA_FRAC_BITS = 32


@dataclass(frozen=True)
class FeditOptions:
    """Server-side options (``[task.options]`` of the server config); sent to clients each round."""

    model: str = "smollm2-135m-instruct"
    lora: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    max_weight: int = 16
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    dp: dict[str, Any] | None = None  # DP-SGD mechanism for every institution (secfed.dp.policy.DpOptions)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> FeditOptions:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"{NAME} task: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        opts = cls(**options)
        if opts.max_weight < 1 or not opts.clip > 0:
            raise ValueError(f"{NAME} task: max_weight must be >= 1 and clip > 0")
        from secfed.model.lora import LoraSettings
        from secfed.model.train import TrainSettings

        lora_fields = set(LoraSettings.__dataclass_fields__)
        train_fields = set(TrainSettings.__dataclass_fields__) - {"seed"}
        if set(opts.lora) - lora_fields:
            raise ValueError(f"{NAME} task: unknown lora option(s) {sorted(set(opts.lora) - lora_fields)}")
        if set(opts.train) - train_fields:
            raise ValueError(f"{NAME} task: unknown train option(s) {sorted(set(opts.train) - train_fields)}")
        if opts.dp is not None:
            from secfed.dp.policy import DpOptions

            try:
                DpOptions.from_mapping(opts.dp)
            except ValueError as exc:
                raise ValueError(f"{NAME} task: {exc}") from exc
        return opts


def _lora_settings(raw: Mapping[str, Any]) -> Any:
    from secfed.model.lora import LoraSettings

    values = dict(raw)
    if "target_modules" in values:
        values["target_modules"] = tuple(values["target_modules"])
    return LoraSettings(**values)


class FeditServer:
    """Holds the base model only to initialise the adapter and to export the final one."""

    name = NAME

    def __init__(self, options: Mapping[str, Any]) -> None:
        import torch

        from secfed.model.loading import load_base_model
        from secfed.model.lora import adapter_size, apply_lora

        self.opts = FeditOptions.from_mapping(options)
        self.base = load_base_model(self.opts.model, device="cpu")
        torch.manual_seed(self.opts.seed)
        self.peft = apply_lora(self.base.model, _lora_settings(self.opts.lora))
        self.size = adapter_size(self.peft)

    def initial_model(self) -> NDArray[np.float32]:
        from secfed.model.lora import adapter_to_vector

        return adapter_to_vector(self.peft)

    def spec(self, model: NDArray[np.float32]) -> VectorSpec:
        w = float(self.opts.max_weight)
        return VectorSpec(
            (
                Segment("delta", self.size, clip=w * self.opts.clip, frac_bits=DELTA_FRAC_BITS),
                Segment("weight", 1, clip=w, frac_bits=0),
            ),
            ring_bits=64,
        )

    def task_config(self, round_: int) -> dict[str, Any]:
        return {
            "base_hash": self.base.base_hash,
            "lora": dict(self.opts.lora),
            "train": dict(self.opts.train),
            "max_weight": self.opts.max_weight,
            "seed": self.opts.seed,
            "dp": dict(self.opts.dp) if self.opts.dp is not None else None,
        }

    def apply(self, model: NDArray[np.float32], result: AggregateResult) -> NDArray[np.float32]:
        total = float(result.values["weight"][0])
        if total <= 0:
            raise ValueError(f"{NAME}: the cohort's total weight is zero")
        updated: NDArray[np.float32] = (model + result.values["delta"] / total).astype(np.float32)
        return updated

    def export(self, model: NDArray[np.float32], directory: Path) -> None:
        """Write the global adapter as a peft directory (``PeftModel.from_pretrained`` loads it)."""
        from secfed.model.lora import save_adapter, vector_to_adapter

        vector_to_adapter(self.peft, model)
        save_adapter(self.peft, directory / "adapter")


@dataclass(frozen=True)
class ClientDataOptions:
    """Where an institution's training data comes from (``[task.options]`` of its client config)."""

    data: str = "builtin"
    client_index: int = 0
    n_clients: int = 1
    train_per_category: int = 40
    test_per_category: int = 10
    partition: str = "category"
    data_seed: int = 0
    max_records: int | None = None


def client_records(client_id: str, opts: ClientDataOptions, base_dir: Path | None = None) -> list[Record]:
    """This institution's training records: a local JSON/JSONL file, or its share of the built-in data."""
    if opts.data == "builtin":
        from secfed.data.builtin import builtin_splits

        if not 0 <= opts.client_index < opts.n_clients:
            raise ValueError(f"{NAME} client {client_id}: client_index must be in [0, n_clients)")
        splits, _test = builtin_splits(
            opts.n_clients,
            train_per_category=opts.train_per_category,
            test_per_category=opts.test_per_category,
            seed=opts.data_seed,
            partition=opts.partition,  # type: ignore[arg-type]
        )
        records = splits[opts.client_index]
    else:
        from secfed.data.formats import load_records

        path = Path(opts.data)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        records = load_records(path)
    if opts.max_records is not None:
        records = records[: opts.max_records]
    if not records:
        raise ValueError(f"{NAME} client {client_id}: no training records")
    return records


#: In-process benchmarks run many institutions one after another in one process; they can share one
#: loaded base model and adapter (each round starts by loading the global adapter, so nothing leaks
#: from one institution's training into another's). Key: (model source, device).
ModelPool = dict[tuple[str, str], tuple[Any, Any, Any]]


class FeditClient:
    """Trains the adapter locally each round and returns its weighted delta (masked before upload)."""

    name = NAME

    def __init__(
        self, client_id: str, options: Mapping[str, Any], *, model_pool: ModelPool | None = None
    ) -> None:
        known = set(ClientDataOptions.__dataclass_fields__) | {"model", "device", "privacy"}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"{NAME} client {client_id}: unknown option(s) {sorted(unknown)}")
        self.client_id = client_id
        self.model_source = str(options.get("model", FeditOptions.model))
        self.device = str(options.get("device", "auto"))
        data_opts = {k: v for k, v in options.items() if k in ClientDataOptions.__dataclass_fields__}
        self.records = client_records(client_id, ClientDataOptions(**data_opts))
        from secfed.dp.institution import InstitutionPrivacy
        from secfed.dp.policy import PrivacyPolicy

        policy = PrivacyPolicy.from_mapping(options["privacy"]) if "privacy" in options else None
        self.privacy = InstitutionPrivacy(client_id, policy)
        self._base: Any = None
        self._peft: Any = None
        self._lora: dict[str, Any] | None = None
        self._pool = model_pool
        self.last_stats: Any = None
        self.last_compute_s = 0.0

    def _ensure_model(self, task_config: Mapping[str, Any]) -> Any:
        from secfed.model.loading import load_base_model
        from secfed.model.lora import apply_lora

        with _LOAD_LOCK:
            if self._base is None and self._pool is not None:
                self._base, self._peft, self._lora = self._pool.get(
                    (self.model_source, self.device), (None, None, None)
                )
            if self._base is None:
                self._base = load_base_model(self.model_source, device=self.device)
            if task_config.get("base_hash") != self._base.base_hash:
                raise ValueError(
                    f"{NAME} client {self.client_id}: the server's base model ({task_config.get('base_hash')}) "
                    f"is not this institution's ({self._base.base_hash}); refusing to train on a different model"
                )
            lora = dict(task_config.get("lora", {}))
            if self._peft is None:
                self._peft = apply_lora(self._base.model, _lora_settings(lora))
                self._lora = lora
                if self._pool is not None:
                    self._pool[(self.model_source, self.device)] = (self._base, self._peft, lora)
            elif lora != self._lora:
                raise ValueError(f"{NAME} client {self.client_id}: LoRA settings changed between rounds")
            return self._peft

    def compute(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> dict[str, NDArray[np.float64]]:
        from secfed.model.lora import adapter_to_vector, vector_to_adapter
        from secfed.model.train import TrainSettings

        started = time.perf_counter()
        peft = self._ensure_model(task_config)
        vector_to_adapter(peft, model)
        settings = TrainSettings(**{**task_config.get("train", {}), "seed": int(task_config.get("seed", 0))})
        stats, dp_trained = train_round(
            self.privacy,
            peft,
            self._base.tokenizer,
            self.records,
            settings,
            task_config,
            round_,
            self.client_id,
        )
        self.last_stats = stats
        delta = adapter_to_vector(peft).astype(np.float64) - model.astype(np.float64)
        max_weight = int(task_config.get("max_weight", 16))
        # Under DP the weight must not depend on the data (a record count is a release DP-SGD does
        # not cover), so every DP round uses the public cap; otherwise FedAvg weights by data size.
        weight = float(max_weight if dp_trained else min(len(self.records), max_weight))
        self.last_compute_s = time.perf_counter() - started
        logs.event(
            log,
            "local-train",
            client=self.client_id,
            round=round_,
            steps=stats.steps,
            tokens=stats.tokens,
            seconds=f"{stats.seconds:.1f}",
            loss_first=f"{stats.first_loss:.3f}",
            loss_last=f"{stats.last_loss:.3f}",
        )
        return {"delta": weight * delta, "weight": np.array([weight])}


def train_round(
    privacy: InstitutionPrivacy,
    peft: Any,
    tokenizer: Any,
    records: list[Record],
    settings: TrainSettings,
    task_config: Mapping[str, Any],
    round_: int,
    client_id: str,
) -> tuple[TrainStats, bool]:
    """Train one round, with DP-SGD when the federation asks for it and the budget allows.

    Returns the training stats and whether DP-SGD was used. Raises ValueError (a
    ``PrivacyRefusal``) when the institution's policy declines the round; it is already ledgered.
    """
    from secfed.dp.policy import DpOptions
    from secfed.dp.sgd import train_local_dp
    from secfed.model.train import train_local

    raw = task_config.get("dp")
    dp_options = DpOptions.from_mapping(raw) if raw else None
    steps = settings.steps_for(len(records))
    dp = privacy.plan_round(round_, dp_options, len(records), steps)
    desc = f"{client_id} round {round_}"
    if dp is None:
        return train_local(peft, tokenizer, records, settings, round_=round_, desc=desc), False
    # Poisson sampling amplifies privacy only if nobody else knows which records were drawn: the
    # batch seed is the institution's own secret, never the server's public seed.
    secret = dataclasses.replace(
        settings, seed=secrets.randbits(43)
    )  # trainers fold it into a 63-bit torch seed
    stats, event = train_local_dp(peft, tokenizer, records, secret, dp, round_=round_, desc=f"{desc} (DP)")
    privacy.record(round_, event)
    return stats, True


tasks.register(NAME, FeditServer, FeditClient, privacy_aware=True)
