"""FedIT: federated instruction tuning of one LoRA adapter, summed by secure aggregation.

The federation's "global model" is the adapter, flattened to a float32 vector in a fixed order. Each
round a client loads it into its own copy of the base model, trains locally, and uploads
``[w * (new - global), w]`` where ``w = min(training records, max_weight)``: a bounded integer weight,
so the upload never reveals a raw record count beyond the cap and the fixed-point range is known in
advance. The server, which only ever sees the cohort sums, moves the adapter by
``sum(w * delta) / sum(w)``: FedAvg weighted by (capped) data size.

Every institution must run the same base model: the server sends the base model's hash with each
round and a client with different weights refuses to take part rather than corrupt the average.

An institution may hold some of its records out of training (``eval_holdout`` in its own policy) and,
when the federation sets ``report_eval``, send the loss of each global adapter it receives on them,
summed with the cohort's (:mod:`secfed.fl.curves`): an evaluation curve no server can point at chosen
records, since the institution alone decides which records are held out (:func:`split_holdout`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from secfed import logs
from secfed.data.builtin import BUILTIN_DATA
from secfed.dp.policy import DpOptions, PrivacyPolicy
from secfed.fl import curves, tasks
from secfed.fl.instruction import RoundInstruction, canonical_json
from secfed.fl.policy import InstitutionPolicy, RefusalCategory, Refused, within
from secfed.fl.releases import release_identity
from secfed.fl.resubmit import RoundKey, UpdateStore
from secfed.fl.strategy import WeightedDeltaMean
from secfed.fl.vectors import model_hash
from secfed.model.quantization import (
    Quantization,
    QuantizationError,
    base_identity,
    check_scheme,
    scheme_of,
)
from secfed.model.settings import LoraSettings, TrainSettings
from secfed.secagg.config import SessionConfig
from secfed.secagg.messages import AggregateResult
from secfed.secagg.spec import Segment, VectorSpec

if TYPE_CHECKING:
    from secfed.data.formats import Record
    from secfed.dp.institution import InstitutionPrivacy
    from secfed.model.train import TrainStats

NAME = "fedit-lora"
# transformers' model loading switches process-wide state (default dtype, meta-device init), so when
# several clients share a process (benchmarks, tests) they load one at a time.
_LOAD_LOCK = threading.Lock()
log = logging.getLogger("secfed.fl.fedit")

#: 2^-32 resolution in a 64-bit ring: exact enough for LoRA deltas, and room for ~10^5 contributors.
DELTA_FRAC_BITS = 32


@dataclass(frozen=True)
class FeditOptions:
    """Server-side options (``[task.options]`` of the server config); the round instruction is built from them."""

    model: str = "smollm2-135m-instruct"
    lora: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    max_weight: int = 16
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    dp: dict[str, Any] | None = None  # DP-SGD mechanism for every institution (secfed.dp.policy.DpOptions)
    # Ask every institution for its training loss (summed securely: the server sees the cohort mean).
    report_loss: bool = False
    # Ask every institution for the loss of the global adapter it receives on records it holds out of
    # training (its policy's eval_holdout), before it trains (summed securely, like report_loss).
    report_eval: bool = False
    # QLoRA: every institution loads the base in 4 ("nf4") or 8 ("int8") bits on its GPU
    # (secfed.model.quantization); part of the base identity, so the whole federation uses one scheme.
    quantization: str | None = None

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> FeditOptions:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"{NAME} task: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        opts = cls(**options)
        if opts.max_weight < 1 or not opts.clip > 0:
            raise ValueError(f"{NAME} task: max_weight must be >= 1 and clip > 0")
        curves_asked = [name for name in ("report_loss", "report_eval") if getattr(opts, name)]
        if curves_asked and opts.dp is not None:
            raise ValueError(
                f"{NAME} task: {' and '.join(curves_asked)} with dp: a loss curve would be a release DP-SGD "
                "does not cover (it would need noise of its own, which is not built yet); drop one of them"
            )
        try:
            check_scheme(opts.quantization, where=f"{NAME} task option quantization")
        except QuantizationError as exc:
            raise ValueError(str(exc)) from None
        lora_fields = set(LoraSettings.__dataclass_fields__)
        train_fields = set(TrainSettings.__dataclass_fields__) - {"seed"}
        if set(opts.lora) - lora_fields:
            raise ValueError(f"{NAME} task: unknown lora option(s) {sorted(set(opts.lora) - lora_fields)}")
        if set(opts.train) - train_fields:
            raise ValueError(f"{NAME} task: unknown train option(s) {sorted(set(opts.train) - train_fields)}")
        try:
            opts.lora_settings()
            opts.train_settings()
            opts.dp_options()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{NAME} task: {exc}") from exc
        return opts

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(**self.lora)

    def train_settings(self) -> TrainSettings:
        return TrainSettings(**{**self.train, "seed": self.seed})

    def dp_options(self) -> DpOptions | None:
        return DpOptions.from_mapping(self.dp) if self.dp is not None else None


class FeditInstruction(RoundInstruction):
    """Everything a FedIT institution acts on in a round (hashed into the session every advert signs).

    ``init_seed`` is the public seed of round 0's adapter (:func:`secfed.model.lora.seeded_initial_vector`),
    so an institution can check that the federation starts from the honest initialisation.
    """

    base_hash: str
    lora: LoraSettings
    train: TrainSettings
    max_weight: int
    clip: float
    init_seed: int
    dp: DpOptions | None
    report_loss: bool
    report_eval: bool
    quantization: Quantization | None


def update_spec(
    adapter_size: int, max_weight: int, clip: float, report_loss: bool, report_eval: bool
) -> VectorSpec:
    """The one spec a FedIT update may be summed in: ``[w * delta, w]`` with public bounds, and with
    ``report_loss`` the learning-curve segments (each contributor's first and last step loss, clipped
    to ``LOSS_CLIP``, and a 1: the server divides the sums), with ``report_eval`` the evaluation-curve
    ones (the received adapter's loss on held-out records, clipped likewise, and a 1).

    Built by the server and rebuilt by every institution from the instruction; a session whose spec
    differs (a weight cap with no room, a clip that does not match) is refused.
    """
    w = float(max_weight)
    return VectorSpec(
        (
            Segment("delta", adapter_size, clip=w * clip, frac_bits=DELTA_FRAC_BITS),
            Segment("weight", 1, clip=w, frac_bits=0),
            *(curves.LOSS_SPEC if report_loss else ()),
            *(curves.EVAL_SPEC if report_eval else ()),
        ),
        ring_bits=64,
    )


class FeditServer(tasks.SingleStage):
    """Holds the base model only to initialise the adapter and to export the final one."""

    name = NAME
    strategy = WeightedDeltaMean(NAME)

    def __init__(self, options: Mapping[str, Any]) -> None:
        from secfed.model.loading import load_base_model
        from secfed.model.lora import adapter_size, apply_lora

        self.opts = FeditOptions.from_mapping(options)
        self.base = load_base_model(self.opts.model, device="cpu")
        self.peft = apply_lora(self.base.model, self.opts.lora_settings())
        self.size = adapter_size(self.peft)

    def initial_model(self) -> NDArray[np.float32]:
        from secfed.model.lora import seeded_initial_vector

        return seeded_initial_vector(self.peft, self.opts.seed)

    def spec(self, model: NDArray[np.float32]) -> VectorSpec:
        o = self.opts
        return update_spec(self.size, o.max_weight, o.clip, o.report_loss, o.report_eval)

    def instruction(self, stage: str) -> FeditInstruction:
        o = self.opts
        quantization = check_scheme(o.quantization)
        return FeditInstruction(
            stage=stage,
            base_hash=base_identity(self.base.base_hash, quantization),
            lora=o.lora_settings(),
            train=o.train_settings(),
            max_weight=o.max_weight,
            clip=o.clip,
            init_seed=o.seed,
            dp=o.dp_options(),
            report_loss=o.report_loss,
            report_eval=o.report_eval,
            quantization=quantization,
        )

    def task_config(self, round_: int) -> dict[str, Any]:
        return self.instruction(tasks.UPDATE_STAGE).wire()

    def apply(self, model: NDArray[np.float32], result: AggregateResult) -> NDArray[np.float32]:
        return self.strategy(model, result)

    def export(self, model: NDArray[np.float32], directory: Path) -> None:
        """Write the global adapter as a peft directory (``PeftModel.from_pretrained`` loads it)."""
        from secfed.model.lora import save_adapter, vector_to_adapter

        vector_to_adapter(self.peft, model)
        quantization = check_scheme(self.opts.quantization)
        save_adapter(
            self.peft,
            directory / "adapter",
            base_hash=base_identity(self.base.base_hash, quantization),
            base_model=self.opts.model,
            quantization=quantization,
        )


@dataclass(frozen=True)
class ClientDataOptions:
    """Where an institution's training data comes from (``[task.options]`` of its client config).

    ``data`` has no default: a client that trained on the built-in demonstration records because an
    option was forgotten would report a federation that never saw the institution's data. It is a
    path (JSON, JSONL, CSV, Parquet or a ``datasets`` ``save_to_disk`` directory; relative paths are
    resolved against the configuration file) or the word ``"builtin"``. ``columns`` maps secfed's
    fields to the data's own column names.
    """

    data: str | None = None
    columns: Mapping[str, str] | None = None
    client_index: int = 0
    n_clients: int = 1
    train_per_category: int = 40
    test_per_category: int = 10
    partition: str = "category"
    data_seed: int = 0
    max_records: int | None = None


def client_records(client_id: str, opts: ClientDataOptions) -> list[Record]:
    """This institution's training records: its own data file or directory, or its built-in share."""
    if opts.data is None:
        raise ValueError(
            f'{NAME} client {client_id}: no training data: set data = "path/to/records.jsonl" in '
            "[task.options] of the client configuration (JSON, JSONL, CSV, Parquet or a datasets "
            'save_to_disk directory), or data = "builtin" for the built-in demonstration records'
        )
    if opts.data == BUILTIN_DATA:
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
        if opts.max_records is not None:
            records = records[: opts.max_records]
    else:
        from secfed.data.formats import load_records

        records = load_records(Path(opts.data), max_records=opts.max_records, columns=opts.columns)
    if not records:
        raise ValueError(f"{NAME} client {client_id}: no training records")
    return records


def _record_content(record: Record) -> bytes:
    """The canonical bytes of one record's content (what it is hashed as)."""
    return canonical_json([record.instruction, record.context, record.response, record.category])


def records_fingerprint(records: list[Record]) -> bytes:
    """SHA-256 of the records' content, in order (what an update is computed from)."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(_record_content(r))
    return digest.digest()


#: The most held-out records one evaluation runs on: it runs every round before training, and 64
#: sequences keep it to a few forward passes (a fraction of a round's cost) while averaging out most
#: of one record's noise. The same 64 each round (the lowest hashes), so the curve compares adapters.
EVAL_MAX_RECORDS = 64
#: What the ledger names an evaluation release (of kind "loss") by.
EVAL_RELEASE = f"{NAME} eval"
_HOLDOUT_CONTEXT = b"secfed/eval-holdout/v1\x00"


def _holdout_rank(record: Record) -> int:
    """Where a record falls in ``[0, 2^64)``: SHA-256 of its content under a context of its own.

    A function of the content alone, so the holdout is the same every round, after a restart, and in
    any order the records are loaded; duplicates of a record fall on the same side."""
    return int.from_bytes(hashlib.sha256(_HOLDOUT_CONTEXT + _record_content(record)).digest()[:8], "big")


def split_holdout(records: list[Record], fraction: float) -> tuple[list[Record], list[Record]]:
    """``(train, evaluate)``: a record is held out when its rank (:func:`_holdout_rank`) lies in the
    lowest ``fraction`` of the range, so about that fraction is. ``train`` is every other record, in
    order; ``evaluate`` the held-out ones of lowest rank, at most ``EVAL_MAX_RECORDS`` (a held-out
    record beyond those is neither trained nor evaluated on).

    The institution's own policy sets ``fraction``: no server value enters, so no server can move a
    record into or out of training."""
    threshold = int(fraction * 2**64)
    ranked = [(_holdout_rank(r), r) for r in records]
    train = [r for rank, r in ranked if rank >= threshold]
    held = sorted((rank, i) for i, (rank, _r) in enumerate(ranked) if rank < threshold)
    return train, [records[i] for _rank, i in held[:EVAL_MAX_RECORDS]]


#: In-process benchmarks run many institutions one after another in one process; they can share one
#: loaded base model and adapter (each round starts by loading the global adapter, so nothing leaks
#: from one institution's training into another's). Key: (model source, device, quantization scheme).
ModelPool = dict[tuple[str, str, str | None], tuple[Any, Any, Any]]


class FeditClient:
    """Trains the adapter locally each round and returns its weighted delta (masked before upload)."""

    name = NAME
    instruction_type: type[FeditInstruction] = FeditInstruction

    def __init__(
        self,
        client_id: str,
        options: Mapping[str, Any],
        *,
        privacy: PrivacyPolicy | None = None,
        model_pool: ModelPool | None = None,
    ) -> None:
        """``options``: the client config's ``[task.options]``; ``privacy``: the institution's own policy
        (its ``[privacy]`` table), which this task enforces before every round (None: no DP rules and no
        ledger of its own, as in tests and benchmarks)."""
        known = set(ClientDataOptions.__dataclass_fields__) | {"model", "device"}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"{NAME} client {client_id}: unknown option(s) {sorted(unknown)}")
        self.client_id = client_id
        self.model_source = str(options.get("model", FeditOptions.model))
        self.device = str(options.get("device", "auto"))
        data_opts = {k: v for k, v in options.items() if k in ClientDataOptions.__dataclass_fields__}
        data = ClientDataOptions(**data_opts)
        self.records = client_records(client_id, data)
        self._fingerprint: bytes | None = None
        from secfed.dp.institution import DatasetTag, InstitutionPrivacy

        name = (
            str(data.data)
            if data.data != BUILTIN_DATA
            else f"builtin share {data.client_index + 1}/{data.n_clients}"
        )
        self.privacy = InstitutionPrivacy(client_id, privacy, DatasetTag(self.dataset_hash().hex(), name))
        self._base: Any = None
        self._peft: Any = None
        self._lora: LoraSettings | None = None
        self._pool = model_pool
        # The last global adapter this institution accepted, and its round: a later one may move by no
        # more than the clip bound per round (a crafted jump is refused).
        self._last_model: tuple[int, NDArray[np.float32]] | None = None
        self._instruction: FeditInstruction | None = None
        self._plan: TrainingPlan | None = None
        # The last DP update this institution released: a retry of the same round re-submits it
        # instead of spending budget on a second one (kept beside the privacy ledger, across restarts).
        ledger = self.privacy.ledger.path if self.privacy.ledger is not None else None
        self._dp_updates = UpdateStore(
            ledger.with_name(ledger.name + ".last-dp-update.npz") if ledger else None
        )
        self._last_identity: bytes | None = None
        self.last_stats: Any = None
        self.last_compute_s = 0.0

    def _ensure_model(self, ins: FeditInstruction) -> Any:
        from secfed.model.lora import apply_lora

        key = (self.model_source, self.device, ins.quantization)
        with _LOAD_LOCK:
            if self._base is None and self._pool is not None:
                self._base, self._peft, self._lora = self._pool.get(key, (None, None, None))
            if self._base is None:
                self._base = self._load_base(ins)
            loaded = scheme_of(self._base.model)
            if ins.quantization != loaded:
                raise Refused(
                    RefusalCategory.INCONSISTENCY,
                    f"the instruction asks for a {ins.quantization or 'full-precision'} base, but this "
                    f"institution trains the federation on a {loaded or 'full-precision'} one (the "
                    "quantization of a federation does not change between rounds)",
                    field="quantization",
                )
            if ins.base_hash != self._base.base_hash:
                raise Refused(
                    RefusalCategory.POLICY,
                    f"the server's base model ({ins.base_hash}) is not this institution's "
                    f"({self._base.base_hash}); refusing to train on a different model",
                    field="base_hash",
                )
            if self._peft is None:
                self._peft = apply_lora(self._base.model, ins.lora)
                self._lora = ins.lora
                if self._pool is not None:
                    self._pool[key] = (self._base, self._peft, ins.lora)
            elif ins.lora != self._lora:
                raise Refused(
                    RefusalCategory.INCONSISTENCY, "LoRA settings changed between rounds", field="lora"
                )
            return self._peft

    def _load_base(self, ins: FeditInstruction) -> Any:
        """The base model as the instruction asks for it; an institution that cannot load a quantized
        base (no GPU, no bitsandbytes) refuses the round with the reason instead of failing in training."""
        from secfed.model.loading import ModelLoadError, load_base_model

        try:
            return load_base_model(self.model_source, device=self.device, quantization=ins.quantization)
        except ModelLoadError as exc:
            if ins.quantization is None:
                raise
            raise Refused(RefusalCategory.POLICY, str(exc), field="quantization") from None

    def admit(
        self,
        round_: int,
        model: NDArray[np.float32],
        task_config: Mapping[str, Any],
        session: SessionConfig,
        policy: InstitutionPolicy,
    ) -> int | None:
        ins = self.instruction_type.parse(task_config)
        self.check_instruction(ins, policy)
        peft = self._ensure_model(ins)
        from secfed.model.lora import adapter_size

        expected = update_spec(adapter_size(peft), ins.max_weight, ins.clip, ins.report_loss, ins.report_eval)
        if session.spec.spec_hash() != expected.spec_hash():
            raise Refused(
                RefusalCategory.INCONSISTENCY,
                "the session's vector spec is not [max_weight * clip bounded delta, max_weight bounded weight]",
            )
        self.check_global_model(round_, model, ins, policy)
        # Every privacy check (DP required, budget) on exactly what will run, before any work. A retry
        # of a round whose DP update this institution already released re-submits that update: it is
        # covered by the guarantee already ledgered, so it is neither trained nor charged again.
        if ins.dp is not None and self._dp_updates.get(self._round_key(round_, model, ins)) is not None:
            self._plan = None  # nothing to train: compute re-submits the kept update
            self.privacy.record_resubmission(round_)
        else:
            records, settings = self.training_inputs(ins)
            # Held-out records never train, in any round, so every evaluation is on unseen records.
            train, _held_out = split_holdout(records, policy.eval_holdout)
            if not train:
                raise Refused(
                    RefusalCategory.DATA,
                    f"all {len(records)} records this round would train on are in this institution's "
                    f"eval holdout (eval_holdout = {policy.eval_holdout})",
                )
            evaluate = self.eval_records(ins, policy)
            self._plan = plan_training(self.privacy, train, settings, ins.dp, round_, evaluate=evaluate)
        self._instruction = ins  # the last instruction admitted: what a saved result is checked with
        return None

    def training_inputs(self, ins: FeditInstruction) -> tuple[list[Record], TrainSettings]:
        """The records and settings this round trains with: every record, the federation's settings.

        :meth:`admit` then drops the records the institution holds out for evaluation."""
        return self.records, ins.train

    def eval_records(self, ins: FeditInstruction, policy: InstitutionPolicy) -> list[Record]:
        """The held-out records this round evaluates the received adapter on; none unless it asks.

        Drawn from all of the institution's records (a subclass that trains on a selection evaluates on
        the same holdout), by the institution's own fraction only."""
        if not ins.report_eval:
            return []
        _train, evaluate = split_holdout(self.records, policy.eval_holdout)
        if not evaluate:
            raise Refused(
                RefusalCategory.DATA,
                f"none of this institution's {len(self.records)} records falls in its eval holdout "
                f"(eval_holdout = {policy.eval_holdout}); a larger fraction would hold some out",
                field="report_eval",
            )
        return evaluate

    def admitted_plan(self, round_: int) -> TrainingPlan:
        """The plan :meth:`admit` made for ``round_`` (the participant admits before it computes)."""
        plan = self._plan
        if plan is None or plan.round != round_:
            raise Refused(RefusalCategory.INCONSISTENCY, f"round {round_} was not admitted before training")
        return plan

    def observe_sum(self, round_: int, stage: str, result: AggregateResult) -> None:
        """One stage a round: no plan derives from a sum."""

    def check_instruction(self, ins: FeditInstruction, policy: InstitutionPolicy) -> None:
        """Every server-chosen training value within this institution's bounds (before any work)."""
        within(ins.max_weight, 1, policy.max_weight, "max_weight")
        within(ins.clip, 1e-12, policy.max_clip, "clip")
        within(ins.lora.r, 1, policy.max_lora_rank, "lora.r")
        t = ins.train
        within(t.lr, policy.min_lr, policy.max_lr, "train.lr")
        within(t.local_steps, 1, policy.max_local_steps, "train.local_steps")
        if t.epochs is not None:
            within(t.epochs, 0.0, policy.max_epochs, "train.epochs")
        within(t.batch_size * t.grad_accum, 1, policy.max_batch_size, "train.batch_size")
        within(t.max_length, 16, policy.max_length, "train.max_length")
        asks = (
            ("report_loss", "training losses"),
            ("report_eval", "evaluation losses of the global adapter"),
        )
        for asked, what in asks:
            if not getattr(ins, asked):
                continue
            if not policy.share_loss:
                raise Refused(
                    RefusalCategory.POLICY,
                    f"the federation asks for {what}; this institution's policy does not share them "
                    "(share_loss = false)",
                    field=asked,
                )
            if ins.dp is not None:
                raise Refused(
                    RefusalCategory.POLICY,
                    f"the federation asks for {what} under DP-SGD: a release the DP guarantee would "
                    "not cover",
                    field=asked,
                )
        if ins.report_eval and policy.eval_holdout == 0:
            raise Refused(
                RefusalCategory.POLICY,
                "the federation asks for evaluation losses of the global adapter; this institution holds "
                "no records out of training to evaluate on (eval_holdout = 0)",
                field="report_eval",
            )

    def check_global_model(
        self, round_: int, model: NDArray[np.float32], ins: FeditInstruction, policy: InstitutionPolicy
    ) -> None:
        """Round 0 starts from the public-seed adapter (or the one the institution names); later rounds
        move by at most the clip bound per round from the last adapter this institution accepted.

        An adapter crafted within that bound is not caught here: only DP covers it (docs/threat-model.md).
        """
        from secfed.model.lora import seeded_initial_vector

        if round_ == 0 or self._last_model is None:
            allowed = {model_hash(seeded_initial_vector(self._peft, ins.init_seed)).hex()}
            if policy.initial_adapter_sha256 is not None:
                allowed.add(policy.initial_adapter_sha256)
            if round_ == 0 and model_hash(model).hex() not in allowed:
                raise Refused(
                    RefusalCategory.POLICY,
                    "round 0's adapter is neither the public-seed initialisation nor the one this "
                    "institution's policy names",
                    field="global_model",
                )
            if round_ > 0:
                # A restarted institution has no earlier adapter to compare with; it accepts this one
                # as its reference (the jump check resumes from the next round).
                self._last_model = (round_, model)
            return
        last_round, last = self._last_model
        if round_ < last_round:
            raise Refused(
                RefusalCategory.INCONSISTENCY, f"round {round_} after round {last_round}", field="round"
            )
        if last.shape != model.shape:
            raise Refused(RefusalCategory.INCONSISTENCY, "the adapter changed shape", field="global_model")
        # FedAvg of updates clipped to ±clip per coordinate moves each coordinate by at most clip per
        # round (plus fixed-point rounding).
        step = float(np.max(np.abs(model.astype(np.float64) - last.astype(np.float64)), initial=0.0))
        bound = ins.clip * max(1, round_ - last_round) * (1 + 1e-6) + 1e-6
        if step > bound:
            raise Refused(
                RefusalCategory.BOUNDS,
                f"the global adapter moved by {step:.3g} since round {last_round}, more than the clip bound allows",
                field="global_model",
            )

    def release_identity(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> bytes | None:
        return self._last_identity

    def save_model(self, model: NDArray[np.float32], rounds_completed: int, directory: Path) -> None:
        """This institution's copy of the global adapter, as a peft directory with a portable base name.

        The adapter must be reachable from the last one this institution accepted within the clip
        bound per round (as any global adapter it is handed), so a server cannot pass off a crafted
        adapter as the federation's result."""
        from secfed.model.lora import save_adapter, vector_to_adapter

        ins, last = self._instruction, self._last_model
        if ins is None or self._peft is None or last is None:
            raise ValueError(
                "this institution trained in no round of this run: nothing to check the result against"
            )
        if not last[0] < rounds_completed <= InstitutionPolicy.max_rounds:
            raise Refused(
                RefusalCategory.INCONSISTENCY,
                f"a result after {rounds_completed} rounds, but this institution trained in round {last[0]}",
                field="rounds_completed",
            )
        self.check_global_model(rounds_completed, model, ins, InstitutionPolicy())
        vector_to_adapter(self._peft, model)
        save_adapter(self._peft, directory, base_model=self.model_source, quantization=ins.quantization)

    def update_identity(self, model: NDArray[np.float32]) -> bytes:
        """The release identity of an update trained from ``model`` on this institution's records.

        Named by what it is computed from and nothing else: the global model and the institution's
        whole dataset (a FedHDS subset included). No server-chosen setting enters it: a setting that
        does not change the update (a clip nothing reaches, a weight cap above the record count, a
        seed, a sign of zero) would otherwise rename the same update, and a re-run without one member
        would difference it out. So any second session training from the same model on the same data
        is the same input, whatever its settings.

        A DP-SGD update has one too. Its own guarantee covers re-sending it, but not its peers: a server
        that re-runs a completed round without one member gets the same (kept) updates from the others
        and differences that member's update out (attack catalogue, "complement re-submission"). So a
        kept DP update is re-submitted only where any input may be: into the same session, or after
        the earlier session is proven void (never unmasked), as in a retry after a lost attempt."""
        return release_identity("lora-update", model_hash(model), self.dataset_hash())

    def compute(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> dict[str, NDArray[np.float64]]:

        ins = self.instruction_type.parse(task_config)
        return self._kept_update(round_, model, ins) or self._train_and_release(round_, model, ins)

    def _train_and_release(
        self, round_: int, model: NDArray[np.float32], ins: FeditInstruction
    ) -> dict[str, NDArray[np.float64]]:
        """Train the admitted plan from ``model`` and release ``[w * delta, w]`` (the one training step
        of every LoRA task; :meth:`update_weight` and :meth:`log_training` are what tasks vary)."""
        from secfed.model.lora import adapter_to_vector, vector_to_adapter

        started = time.perf_counter()
        plan = self.admitted_plan(round_)
        peft = self._ensure_model(ins)
        vector_to_adapter(peft, model)
        self._last_model = (round_, np.array(model, dtype=np.float32))
        stats, dp_trained = train_round(self.privacy, peft, self._base.tokenizer, plan, self.client_id)
        self.last_stats = stats
        self._last_identity = self.update_identity(model)
        delta = adapter_to_vector(peft).astype(np.float64) - model.astype(np.float64)
        weight = self.update_weight(ins, plan, dp_trained)
        self.last_compute_s = time.perf_counter() - started
        self.log_training(round_, plan, stats)
        return self._released(
            round_, model, ins, {"delta": weight * delta, "weight": np.array([weight])}, dp_trained
        )

    def update_weight(self, ins: FeditInstruction, plan: TrainingPlan, dp_trained: bool) -> float:
        """FedAvg's weight of this update. Under DP the weight must not depend on the data (a record
        count is a release DP-SGD does not cover), so every DP round uses the public cap; otherwise
        FedAvg weights by data size, capped."""
        return float(ins.max_weight if dp_trained else min(len(plan.records), ins.max_weight))

    def log_training(self, round_: int, plan: TrainingPlan, stats: Any) -> None:
        evaluated: dict[str, Any] = {} if stats.eval_loss is None else {"eval_loss": f"{stats.eval_loss:.3f}"}
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
            **evaluated,
        )

    def _kept_update(
        self, round_: int, model: NDArray[np.float32], ins: FeditInstruction
    ) -> dict[str, NDArray[np.float64]] | None:
        """The DP update already released for this round (a retry re-submits it), or None."""
        kept = self._dp_updates.get(self._round_key(round_, model, ins)) if ins.dp is not None else None
        if kept is not None:
            self._last_identity = self.update_identity(model)
        return kept

    def _released(
        self,
        round_: int,
        model: NDArray[np.float32],
        ins: FeditInstruction,
        out: dict[str, NDArray[np.float64]],
        dp_trained: bool,
    ) -> dict[str, NDArray[np.float64]]:
        """Before an update leaves: keep a DP one for a retry, ledger a non-DP one; add and ledger the
        learning- and evaluation-curve segments when the federation asked for them (never under DP:
        refused at admit). The ledger knows one kind of loss release ("loss", ``NON_DP_KINDS``), so an
        evaluation is ledgered as one, told apart by its ``what``."""
        if dp_trained:
            self._dp_updates.put(self._round_key(round_, model, ins), out)
        else:
            self.privacy.record_non_dp(round_, release="update", what=NAME)
        if ins.report_loss:  # never with DP-SGD: admit refuses that
            self.privacy.record_non_dp(round_, release="loss", what=NAME)
            out = {**out, **curves.loss_segments(self.last_stats.first_loss, self.last_stats.last_loss)}
        if ins.report_eval:  # admit planned the evaluation (or refused), never with DP-SGD
            self.privacy.record_non_dp(round_, release="loss", what=EVAL_RELEASE)
            out = {**out, **curves.eval_segments(self.last_stats.eval_loss)}
        return out

    def dataset_hash(self) -> bytes:
        """A content hash of this institution's records (what its privacy ledger's releases are about)."""
        if self._fingerprint is None:
            self._fingerprint = records_fingerprint(self.records)
        return self._fingerprint

    def _round_key(self, round_: int, model: NDArray[np.float32], ins: FeditInstruction) -> RoundKey:
        """What makes two attempts at a round the same computation: the round, the global model, the
        instruction (a retry of the same round sends the same ones) and this institution's records (the
        kept update is the institution's, shared by its federations: another dataset is another update)."""
        return round_, model_hash(model), self.dataset_hash() + canonical_json(ins.wire())


@dataclass(frozen=True)
class TrainingPlan:
    """What one round's local training will be, fixed before any work: the records, the settings, the
    step count, under DP the mechanism the institution's budget approved for it, and the held-out
    records to evaluate the received adapter on first (empty: no evaluation; never under DP)."""

    round: int
    records: list[Record]
    settings: TrainSettings
    steps: int
    dp: Any  # secfed.dp.sgd.DpSettings (torch-side) or None: the federation trains without DP
    evaluate: tuple[Record, ...]


def plan_training(
    privacy: InstitutionPrivacy,
    records: list[Record],
    settings: TrainSettings,
    dp_options: DpOptions | None,
    round_: int,
    *,
    evaluate: Sequence[Record] = (),
) -> TrainingPlan:
    """Plan the round and run every privacy check on it (DP required, budget) before any training.

    Raises ValueError (a ``PrivacyRefusal``, already ledgered) when the institution's policy declines
    it: a refused session has spent nothing."""
    n = len(records)
    steps = settings.dp_steps_for(n, dp_options.expected_batch_size) if dp_options else settings.steps_for(n)
    dp = privacy.plan_round(round_, dp_options, n, steps)
    return TrainingPlan(round_, records, settings, steps, dp, tuple(evaluate))


def train_round(
    privacy: InstitutionPrivacy, peft: Any, tokenizer: Any, plan: TrainingPlan, client_id: str
) -> tuple[TrainStats, bool]:
    """Train one round as planned (:func:`plan_training`), with DP-SGD when the plan has a mechanism,
    after evaluating the adapter it starts from on the plan's held-out records, if any.

    Returns the training stats (``eval_loss`` set when the plan evaluates) and whether DP-SGD was used."""
    from secfed.dp.sgd import train_local_dp
    from secfed.model.train import evaluate_loss, train_local

    round_, records, settings, dp = plan.round, plan.records, plan.settings, plan.dp
    desc = f"{client_id} round {round_}"
    if dp is None:
        # Before training: the loss of the global adapter as received, the one the cohort shares.
        eval_loss = evaluate_loss(peft, tokenizer, plan.evaluate, settings) if plan.evaluate else None
        stats = train_local(peft, tokenizer, records, settings, round_=round_, desc=desc)
        return dataclasses.replace(stats, eval_loss=eval_loss), False
    # Poisson sampling amplifies privacy only if nobody else knows which records were drawn: the
    # batch seed is the institution's own secret, never the server's public seed.
    secret = dataclasses.replace(
        settings, seed=secrets.randbits(43)
    )  # trainers fold it into a 63-bit torch seed
    stats, event = train_local_dp(peft, tokenizer, records, secret, dp, round_=round_, desc=f"{desc} (DP)")
    planned = (dp.noise_multiplier, dp.sample_rate(len(records)), plan.steps)
    if (event.noise_multiplier, event.sample_rate, event.steps) != planned:
        # The guard approved ``planned``; a release under any other mechanism is not covered by it,
        # so nothing leaves (the update is discarded before it is masked).
        raise Refused(
            RefusalCategory.BUDGET,
            f"{client_id} round {round_}: DP-SGD ran (noise, rate, steps) = "
            f"{(event.noise_multiplier, event.sample_rate, event.steps)}, the budget approved {planned}",
        )
    privacy.record(round_, event)
    return stats, True
