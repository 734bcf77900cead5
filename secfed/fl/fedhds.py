"""FedHDS: federated instruction tuning on a small coreset chosen each round, seen by the server only in sums.

Each round runs the coreset stages of :mod:`secfed.coreset` (federated PCA statistics, cell
occupancy, the centroid histogram, one or more anonymous slot elections), every one a secure-
aggregation session, and then a ``train`` stage that is FedIT's secure FedAvg restricted to the
selected records: each election winner trains on its record nearest each global cluster it won
(the sample trained on is the sample selected). Every cohort member trains in the train stage, on at
least one record: a non-winner trains on its record nearest any global cluster centre. So the train
sum always holds real data of every contributor (at least ``c + 2`` of them, the SecAgg floor: never
one winner's update beside zeros), and with a public, data-independent weight (``max_weight``) the
weight segment reveals neither who won nor how many records anyone trained on.

``selection = "random"`` is the baseline at the same budget: every institution trains on a random
``random_fraction`` of its records, with no coreset stages.

Features come from the frozen base model ("turbo", the default: computed once per institution and
reused every round) or from the current global model (``feature_model = "global"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from secfed import logs
from secfed.coreset.config import CoresetConfig
from secfed.coreset.dp_config import DpSelection
from secfed.data.formats import Record
from secfed.dp.policy import PrivacyPolicy
from secfed.fl import tasks
from secfed.fl.fedit import FeditClient, FeditInstruction, FeditServer, ModelPool, TrainingPlan
from secfed.fl.instruction import FrozenModel, canonical_json
from secfed.fl.policy import InstitutionPolicy, RefusalCategory, Refused, within
from secfed.fl.releases import release_identity
from secfed.fl.resubmit import RoundKey
from secfed.fl.tasks import StagePlan, StageResult
from secfed.fl.vectors import model_hash
from secfed.model.settings import TrainSettings
from secfed.secagg.config import ClientPolicy, SessionConfig
from secfed.secagg.messages import AggregateResult

NAME = "fedhds-lora"
TRAIN_STAGE = "train"
log = logging.getLogger("secfed.fl.fedhds")


@dataclass(frozen=True)
class SelectionOptions:
    """The coreset part of ``[task.options]`` (public: sent to every institution)."""

    selection: Literal["fedhds", "random"] = "fedhds"  # "random": the same-budget baseline
    random_fraction: float = 0.05
    coreset: dict[str, Any] = field(default_factory=dict)  # secfed.coreset.config.CoresetConfig fields
    feature_model: Literal["base", "global"] = "base"  # frozen and cached, or this round's adapter
    feature_layers: tuple[int, ...] = (-1,)
    feature_max_length: int = 96
    selected_epochs: float = 1.0  # passes over the selected records per round
    # secfed.coreset.dp_config.DpSelection fields: selection statistics released once under DP
    selection_dp: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.selection not in ("fedhds", "random"):
            raise ValueError(f"{NAME}: selection must be 'fedhds' or 'random', got {self.selection!r}")
        if not 0 < self.random_fraction <= 1:
            raise ValueError(f"{NAME}: random_fraction must be in (0, 1]")
        if self.feature_model not in ("base", "global"):
            raise ValueError(f"{NAME}: feature_model must be 'base' or 'global'")
        if not self.feature_layers or self.feature_max_length < 8 or not self.selected_epochs > 0:
            raise ValueError(f"{NAME}: feature_layers must be non-empty, feature_max_length >= 8, epochs > 0")
        if self.selection_dp is not None:
            if self.selection != "fedhds" or self.feature_model != "base":
                raise ValueError(
                    f"{NAME}: selection_dp needs selection = 'fedhds' and feature_model = 'base' (the "
                    "statistics are released once per federation, so the features must not change)"
                )
            DpSelection.from_json(dict(self.selection_dp))

    def coreset_config(self) -> CoresetConfig:
        return CoresetConfig.from_json({**self.coreset, "feature_blocks": len(self.feature_layers)})

    def settings(self) -> SelectionSettings:
        return SelectionSettings(
            selection=self.selection,
            random_fraction=self.random_fraction,
            feature_model=self.feature_model,
            feature_layers=tuple(self.feature_layers),
            feature_max_length=self.feature_max_length,
            selected_epochs=self.selected_epochs,
            selection_dp=None
            if self.selection_dp is None
            else DpSelection.from_json(dict(self.selection_dp)),
        )


class SelectionSettings(FrozenModel):
    """How the round selects records (the public part every institution acts on)."""

    selection: Literal["fedhds", "random"]
    random_fraction: float
    feature_model: Literal["base", "global"]
    feature_layers: tuple[int, ...]
    feature_max_length: int
    selected_epochs: float
    selection_dp: DpSelection | None = None


class CoresetPlan(FrozenModel):
    """A coreset stage's public plan, derived by the server from the earlier stages' sums.

    ``space`` (stages after PCA), ``allowed`` (after occupancy), ``clusters`` (elections and the
    selection), ``ballot`` (elections) and ``winners`` (the selection, in the train stage); under DP
    selection ``dp`` (a release stage's plan) and ``release`` (the train stage's public release);
    absent parts are null, never missing.
    """

    space: dict[str, Any] | None
    allowed: list[int] | None
    clusters: dict[str, Any] | None
    ballot: dict[str, Any] | None
    winners: list[list[int]] | None
    dp: dict[str, Any] | None = None
    release: dict[str, Any] | None = None


class FedhdsInstruction(FeditInstruction):
    """FedIT's instruction plus the selection settings, the coreset config and the stage's plan."""

    fedhds: SelectionSettings
    coreset: CoresetConfig
    round_seed: int
    plan: CoresetPlan | None

    def broadcast(self) -> dict[str, Any]:
        """The coreset code's view of this stage (``secfed.coreset`` reads plain JSON broadcasts)."""
        from secfed.coreset.server import SELECTION_STAGE

        stage = SELECTION_STAGE if self.stage == TRAIN_STAGE else self.stage
        out: dict[str, Any] = {
            "stage": stage,
            "round_seed": self.round_seed,
            "config": self.coreset.to_json(),
        }
        if self.plan is not None:
            out.update({k: v for k, v in self.plan.wire().items() if v is not None})
        return out


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
        from secfed.fl.fedhds_dp import ServerReleases

        fedit, self.selection = _split_options(options)
        super().__init__(fedit)
        self.coreset = self.selection.coreset_config()
        self.summaries: dict[int, dict[str, Any]] = {}
        self.dp_selection = self.selection.settings().selection_dp
        self.dp_releases = ServerReleases()

    def _round_seed(self, round_: int, attempt: int = 1) -> int:
        """Public: the projection and every server-side choice derive from it (never a secret).

        Each attempt of a round draws its own: an attempt that failed after its PCA sum was released
        must not have that sum repeated over another cohort (the institutions would refuse it as a
        released input), so the retry projects afresh."""
        return (
            int.from_bytes(
                hashlib.sha256(
                    f"secfed/fedhds/round-seed/{self.opts.seed}/{round_}/{attempt}".encode()
                ).digest()[:8],
                "little",
            )
            % 2**62
        )

    def round_coreset(self, colluders: int) -> CoresetConfig:
        """The round's coreset config: a cell's statistics need ``c + 2`` institutions (two honest ones
        whatever c the server holds), or the configured floor if that is higher."""
        return dataclasses.replace(self.coreset, min_cohort=max(self.coreset.min_cohort, colluders + 2))

    def stage_instruction(
        self,
        stage: str,
        round_: int,
        plan: Mapping[str, Any] | None,
        coreset: CoresetConfig | None = None,
        attempt: int = 1,
    ) -> FedhdsInstruction:
        fedit = self.instruction(stage)
        return FedhdsInstruction(
            **{name: getattr(fedit, name) for name in FeditInstruction.model_fields},
            fedhds=self.selection.settings(),
            coreset=coreset or self.coreset,
            round_seed=self._round_seed(round_, attempt),
            plan=None if plan is None else CoresetPlan(**{k: plan.get(k) for k in CoresetPlan.model_fields}),
        )

    def task_config(self, round_: int) -> dict[str, Any]:
        return self.stage_instruction(tasks.UPDATE_STAGE, round_, None).wire()

    def next_stage(
        self,
        round_: int,
        model: NDArray[np.float32],
        done: Sequence[StageResult],
        *,
        colluders: int,
        attempt: int,
    ) -> StagePlan | None:
        from secfed.coreset import server as coreset_server
        from secfed.coreset.layout import CohortSum

        if done and done[-1].name == TRAIN_STAGE:
            return None
        if self.dp_selection is not None:
            return self._dp_next_stage(round_, model, done, self.dp_selection, colluders, attempt)
        if self.selection.selection == "random":
            if done:
                raise ValueError(f"unexpected stage {done[-1].name!r} in a random-selection round")
            summary = {"mode": "random", "fraction": self.selection.random_fraction}
            return self._train_stage(round_, model, None, summary, self.round_coreset(colluders), attempt)
        sums = [CohortSum(st.name, st.result.values, len(st.result.contributors)) for st in done]
        if len(sums) >= 3 and sums[2].n_contributors < sums[1].n_contributors:
            # A cell allowed for having min_cohort institutions in the occupancy stage could then be
            # summed over fewer of them: restart the round rather than reveal such a sum.
            raise ValueError(
                f"the cohort shrank from {sums[1].n_contributors} to {sums[2].n_contributors} institutions "
                "between the occupancy and histogram stages"
            )
        coreset = self.round_coreset(colluders)
        plan = coreset_server.next_stage(coreset, self._round_seed(round_, attempt), sums)
        if isinstance(plan, coreset_server.StagePlan):
            ins = self.stage_instruction(plan.name, round_, plan.broadcast, coreset, attempt)
            # Every coreset sum feeds the next plan: the cohort verifies it (StagePlan.verified).
            return StagePlan(plan.name, plan.layout.vector_spec(), ins.wire(), verified=True)
        total = int(plan.summary.get("total_records", 0))
        selected = int(plan.summary.get("n_winners", 0))
        summary = {
            "mode": "fedhds",
            **plan.summary,
            "selected": selected,
            "records": total,
            "fraction": selected / total if total else 0.0,
        }
        return self._train_stage(round_, model, plan.broadcast, summary, coreset, attempt)

    def _dp_next_stage(
        self,
        round_: int,
        model: NDArray[np.float32],
        done: Sequence[StageResult],
        dp: DpSelection,
        colluders: int,
        attempt: int,
    ) -> StagePlan:
        """The next unreleased DP stage of the federation, or this round's train stage on the release."""
        from secfed.coreset.dp_config import DP_STAGES
        from secfed.coreset.dp_release import DpStagePlan, release_layout
        from secfed.coreset.layout import CohortSum
        from secfed.fl.fedhds_dp import derive_release, release_seed

        if done and done[-1].name in DP_STAGES:
            last = done[-1]
            if last.config is None:
                raise ValueError(f"stage {last.name!r} completed without its session configuration")
            total = CohortSum(last.name, last.result.values, len(last.result.contributors))
            self.dp_releases.keep(last.name, total, last.config.threshold - last.config.n_colluding)
        coreset = self.round_coreset(colluders)
        seed = release_seed(self.opts.seed)
        step = derive_release(dp, self.dp_releases.sums, max_fraction=coreset.max_fraction, seed=seed)
        if isinstance(step, DpStagePlan):
            plan = {"dp": {"stage": step.name, **step.broadcast}}
            ins = self.stage_instruction(step.name, round_, plan, coreset, attempt)
            spec = release_layout(dp, step.name, max_records=coreset.max_records).vector_spec()
            return StagePlan(step.name, spec, ins.wire(), verified=True)
        summary = {
            "mode": "fedhds-dp",
            # Who trains on what is each institution's private choice: the server never learns it.
            "selected": None,
            "records": round(step.records),
            "fraction": None,
            "centres": len(step.centres),
            "kept_cells": step.kept_cells,
            "selection_epsilon": dp.epsilon,
            "selection_delta": dp.delta,
        }
        return self._train_stage(round_, model, {"release": step.to_json()}, summary, coreset, attempt)

    def _train_stage(
        self,
        round_: int,
        model: NDArray[np.float32],
        selection: Mapping[str, Any] | None,
        summary: dict[str, Any],
        coreset: CoresetConfig,
        attempt: int,
    ) -> StagePlan:
        self.summaries[round_] = summary
        logs.event(
            log,
            "coreset-selected",
            round=round_,
            **{k: v for k, v in summary.items() if not isinstance(v, list)},
        )
        ins = self.stage_instruction(TRAIN_STAGE, round_, selection, coreset, attempt)
        return StagePlan(TRAIN_STAGE, self.spec(model), ins.wire(), summary=summary)

    def apply(self, model: NDArray[np.float32], result: AggregateResult) -> NDArray[np.float32]:
        if float(result.values["weight"][0]) <= 0:
            log.warning("round selected no records: the global adapter is unchanged")
            return np.array(model, dtype=np.float32)
        return super().apply(model, result)


class FedhdsClient(FeditClient):
    """An institution's FedHDS half: coreset statistics in the coreset stages, training in ``train``."""

    name = NAME
    instruction_type: type[FedhdsInstruction] = FedhdsInstruction

    def __init__(
        self,
        client_id: str,
        options: Mapping[str, Any],
        *,
        privacy: PrivacyPolicy | None = None,
        model_pool: ModelPool | None = None,
    ) -> None:
        super().__init__(client_id, options, privacy=privacy, model_pool=model_pool)
        self._coreset: Any = None
        self._features_round: int | None = None
        self.last_selected: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.last_accepted = 0  # DP selection: centres this institution accepted (never sent)
        self.selection_s = 0.0
        self.records_trained = 0  # summed over rounds
        self.features: tuple[NDArray[np.int64], NDArray[np.float64]] | None = None
        # This round's verified stage sums (reset at its PCA stage) and their contributors.
        self._verified: list[Any] = []
        self._verified_cohort: tuple[str, ...] = ()
        # DP selection: the verified release sums (beside the privacy ledger, across restarts), the share
        # of noise admitted for the current release stage, and the train stage's release and roster.
        from secfed.fl.fedhds_dp import ReleaseStore

        ledger = self.privacy.ledger.path if self.privacy.ledger is not None else None
        self._dp_store = ReleaseStore(
            ledger.with_name(ledger.name + ".selection-release.json") if ledger else None
        )
        self._dp_share: Any = None
        self._dp_admitted_key: str | None = None
        self._dp_derived: tuple[tuple[str, tuple[str, ...], str], Any] | None = None
        # The t - c each release stage's noise was drawn for, by (stage, release key, round seed): the
        # participant reuses a computed input for the same instruction in a later session.
        self._dp_drawn: dict[tuple[str, str, int], int] = {}
        self._dp_round: tuple[Any, tuple[str, ...], int, NDArray[np.float64]] | None = None

    def preload_features(self, indices: NDArray[np.int64], features: NDArray[np.float64]) -> None:
        """Use features computed earlier from the same frozen base model (benchmarks compare several
        selection methods on the same institutions; turbo features do not depend on the round)."""
        from secfed.coreset.client import CoresetClient

        if len(indices) != len(self.records):
            raise ValueError(f"{len(indices)} feature rows for {len(self.records)} records")
        self.features = (indices, features)
        self._coreset = CoresetClient(indices, features)

    def admit(
        self,
        round_: int,
        model: NDArray[np.float32],
        task_config: Mapping[str, Any],
        session: SessionConfig,
        policy: InstitutionPolicy,
    ) -> int | None:
        """Bounds, the per-cell floor, and a plan this institution derived itself from verified sums.

        Every plan after PCA (space, allowed cells, clusters, ballots, winners) is a function of the
        earlier stages' sums and public settings; the institution recomputes it from the sums it
        verified (:meth:`observe_sum`) and refuses an instruction whose plan differs, so a server
        cannot list a one-institution cell as allowed or pick a space, clusters or ballot of its own.
        """
        ins = FedhdsInstruction.parse(task_config)
        self.check_selection(ins, session, policy)
        if ins.fedhds.selection_dp is not None:
            return self._admit_dp(round_, model, task_config, ins, session, policy)
        if ins.stage == space_stage():
            self._verified = []
        elif ins.fedhds.selection == "fedhds":
            self.check_plan(ins, session)
        if ins.stage == TRAIN_STAGE:
            return super().admit(round_, model, task_config, session, policy)
        # A coreset stage: its vector spec follows from the public config and the plan.
        privacy = self.privacy.policy
        if privacy is not None and privacy.require_selection_dp:
            raise Refused(
                RefusalCategory.POLICY,
                "these coreset statistics carry no DP guarantee and this institution requires DP for "
                "selection ([privacy] require_selection_dp; a federation with selection_dp satisfies it)",
            )
        self.check_instruction(ins, policy)
        self._ensure_model(ins)
        if session.spec.spec_hash() != coreset_stage_spec(ins).spec_hash():
            raise Refused(
                RefusalCategory.INCONSISTENCY, "the session's vector spec does not follow from the plan"
            )
        # Statistics per grid cell or cluster are released over the whole roster or not at all: a
        # dropout would leave a cell allowed for c + 2 institutions summed over fewer.
        return len(session.roster) if ins.stage not in (space_stage(), occupancy_stage()) else None

    def _dp_key(self, ins: FedhdsInstruction) -> str:
        """Names this institution's release: its records, the feature settings, the seed, the settings."""
        from secfed.fl.fedhds_dp import release_key, release_seed

        assert ins.fedhds.selection_dp is not None
        # Only what shapes the released statistics: a post-processing setting (max_fraction) or a
        # layout bound (max_records) must not rename the release, or it could be released again.
        features = {
            "base": ins.base_hash,
            "layers": list(ins.fedhds.feature_layers),
            "max_length": ins.fedhds.feature_max_length,
        }
        return release_key(
            self.dataset_hash(),
            release_seed(ins.init_seed),
            ins.fedhds.selection_dp,
            features,
        )

    def _admit_dp(
        self,
        round_: int,
        model: NDArray[np.float32],
        task_config: Mapping[str, Any],
        ins: FedhdsInstruction,
        session: SessionConfig,
        policy: InstitutionPolicy,
    ) -> int | None:
        """A DP release stage or a train stage on the release: each plan is the one this institution
        derives from the sums it verified itself, and its noise share assumes no fewer colluders than it does."""
        from secfed.coreset.dp_choice import offer_seed
        from secfed.coreset.dp_config import DP_MEAN_STAGE, DP_STAGES, calibrated_lambda, selection_events
        from secfed.coreset.dp_release import DpRelease, DpStagePlan, NoiseShare, release_layout
        from secfed.fl.fedhds_dp import derive_release, release_seed

        dp = ins.fedhds.selection_dp
        assert dp is not None
        # Shapes the server chooses are bounded like the non-DP ones (they size every computation an
        # institution repeats to verify a plan); epsilon is bounded by the institution's budget.
        within(dp.k0, 1, policy.max_k0, "selection_dp.k0")
        within(dp.dims, 1, policy.max_dims, "selection_dp.dims")
        within(dp.bins, 1, policy.max_bins, "selection_dp.bins")
        self.check_instruction(ins, policy)
        self._ensure_model(ins)
        key = self._dp_key(ins)
        sums = self._dp_store.sums(key)
        # Derived once per state of the release (every later round re-checks the same release).
        memo = (
            key,
            tuple(sorted(sums)),
            json.dumps([dp.to_json(), ins.coreset.max_fraction], sort_keys=True),
        )
        if self._dp_derived is None or self._dp_derived[0] != memo:
            try:
                derived = derive_release(
                    dp, sums, max_fraction=ins.coreset.max_fraction, seed=release_seed(ins.init_seed)
                )
            except ValueError as exc:
                raise Refused(RefusalCategory.INCONSISTENCY, f"no DP selection plan follows: {exc}") from exc
            self._dp_derived = (memo, derived)
        expected = self._dp_derived[1]
        plan = ins.plan.wire() if ins.plan is not None else {}
        if ins.stage in DP_STAGES:
            if not isinstance(expected, DpStagePlan) or expected.name != ins.stage:
                have = (
                    expected.name if isinstance(expected, DpStagePlan) else "the train stage (all released)"
                )
                raise Refused(
                    RefusalCategory.INCONSISTENCY,
                    f"this institution's verified release sums call for {have}, not {ins.stage!r} (every "
                    "DP selection statistic is released once per federation)",
                    field="stage",
                )
            mismatch = _differs({"stage": expected.name, **expected.broadcast}, plan.get("dp"))
            if mismatch is not None:
                raise Refused(
                    RefusalCategory.INCONSISTENCY,
                    f"differs from the plan the verified sums give ({mismatch})",
                    field="plan.dp",
                )
            own = ClientPolicy(policy.min_cohort, policy.colluding_fraction).assumed_colluders(session)
            if own > session.n_colluding:
                raise Refused(
                    RefusalCategory.BOUNDS,
                    f"the session assumes {session.n_colluding} colluders, this institution {own}: every "
                    "noise share is sized for the session's t - c honest contributors, so the session must "
                    "assume at least as many colluders as this institution does",
                    field="n_colluding",
                )
            layout = release_layout(dp, ins.stage, max_records=ins.coreset.max_records)
            if session.spec.spec_hash() != layout.vector_spec().spec_hash():
                raise Refused(
                    RefusalCategory.INCONSISTENCY,
                    "the session's vector spec does not follow from the settings",
                )
            if ins.stage == DP_MEAN_STAGE:  # refuse now, not halfway through, if the whole release cannot fit
                self.privacy.plan_selection(round_, list(selection_events(dp, round_).values()))
            honest = session.threshold - session.n_colluding
            drawn = self._dp_drawn.get((ins.stage, key, ins.round_seed))
            if drawn is not None and honest < drawn:
                # The same instruction's vector, already computed, carries noise for `drawn` honest
                # contributors and would be re-sent as is: in a session guaranteeing fewer, the sum
                # would hold less than the target noise.
                raise Refused(
                    RefusalCategory.BOUNDS,
                    f"this stage's noise was drawn for {drawn} honest contributors; this session "
                    f"guarantees only {honest} (t - c)",
                    field="threshold",
                )
            self._dp_share = NoiseShare(calibrated_lambda(dp), honest)
            self._dp_admitted_key = key
            return None
        if ins.stage != TRAIN_STAGE:
            raise Refused(RefusalCategory.INCONSISTENCY, f"unknown stage {ins.stage!r} under DP selection")
        if not isinstance(expected, DpRelease):
            raise Refused(
                RefusalCategory.INCONSISTENCY,
                f"a train stage before this institution verified the federation's DP selection release "
                f"(next for it: {expected.name!r}); it cannot tell a real release from a made-up one",
                field="plan.release",
            )
        mismatch = _differs(expected.to_json(), plan.get("release"))
        if mismatch is not None:
            raise Refused(
                RefusalCategory.INCONSISTENCY,
                f"differs from the release the verified sums give ({mismatch})",
                field="plan.release",
            )
        # The offers' seed is the institution's own (release seed and round): never the server's round_seed.
        offers_from = offer_seed(release_seed(ins.init_seed), round_)
        self._dp_round = (expected, tuple(session.roster), offers_from, self._dp_rows(round_, model, ins))
        return super().admit(round_, model, task_config, session, policy)

    def observe_sum(self, round_: int, stage: str, result: AggregateResult) -> None:
        from secfed.coreset.dp_config import DP_STAGES
        from secfed.coreset.layout import CohortSum
        from secfed.fl.fedhds_dp import ReleasedSum

        if stage in DP_STAGES:
            if self._dp_share is None or self._dp_admitted_key is None:
                raise Refused(
                    RefusalCategory.INCONSISTENCY, f"a sum of {stage!r} this institution was not admitted to"
                )
            total = CohortSum(stage, result.values, len(result.contributors))
            self._dp_store.add(self._dp_admitted_key, ReleasedSum(total, self._dp_share.honest))
            return
        self._verified.append(CohortSum(stage, result.values, len(result.contributors)))
        self._verified_cohort = tuple(sorted(result.contributors))

    def check_plan(self, ins: FedhdsInstruction, session: SessionConfig) -> None:
        """The instruction's stage and plan must be the ones this institution derives from its sums."""
        from secfed.coreset import server as coreset_server

        if not self._verified:
            raise Refused(
                RefusalCategory.INCONSISTENCY,
                f"stage {ins.stage!r} without the verified sums of this round's earlier stages",
                field="stage",
            )
        if tuple(sorted(session.roster)) != self._verified_cohort:
            raise Refused(
                RefusalCategory.INCONSISTENCY,
                "the stage's roster is not the previous stage's verified contributors",
                field="roster",
            )
        try:
            expected = coreset_server.next_stage(ins.coreset, ins.round_seed, self._verified)
        except ValueError as exc:
            raise Refused(
                RefusalCategory.INCONSISTENCY, f"no plan follows from the verified sums: {exc}"
            ) from exc
        name = expected.name if isinstance(expected, coreset_server.StagePlan) else TRAIN_STAGE
        if ins.stage != name:
            raise Refused(RefusalCategory.INCONSISTENCY, f"the sums call for stage {name!r}", field="stage")
        plan = ins.plan.wire() if ins.plan is not None else {}
        for key in CoresetPlan.model_fields:
            mismatch = _differs(expected.broadcast.get(key), plan.get(key))
            if mismatch is not None:
                raise Refused(
                    RefusalCategory.INCONSISTENCY,
                    f"differs from the plan the verified sums give ({mismatch})",
                    field=f"plan.{key}",
                )

    def check_selection(
        self, ins: FedhdsInstruction, session: SessionConfig, policy: InstitutionPolicy
    ) -> None:
        """The coreset settings within this institution's bounds, and a per-cell floor of c + 2 institutions."""
        c = ins.coreset
        sel = ins.fedhds
        within(c.k0, 1, policy.max_k0, "coreset.k0")
        within(c.dims, 1, policy.max_dims, "coreset.dims")
        within(c.bins, 1, policy.max_bins, "coreset.bins")
        within(
            c.local_min_cluster_size, 2, policy.max_local_min_cluster_size, "coreset.local_min_cluster_size"
        )
        within(
            c.global_min_cluster_size,
            2,
            policy.max_global_min_cluster_size,
            "coreset.global_min_cluster_size",
        )
        within(c.max_fraction, 0.0, policy.max_selected_fraction, "coreset.max_fraction")
        within(c.slot_buckets, 1, policy.max_slot_buckets, "coreset.slot_buckets")
        within(c.slots_per_bucket, 1, policy.max_slots_per_bucket, "coreset.slots_per_bucket")
        within(c.max_election_attempts, 1, policy.max_election_attempts, "coreset.max_election_attempts")
        within(sel.feature_max_length, 8, policy.max_feature_length, "fedhds.feature_max_length")
        within(sel.random_fraction, 0.0, policy.max_selected_fraction, "fedhds.random_fraction")
        within(sel.selected_epochs, 0.0, policy.max_epochs, "fedhds.selected_epochs")
        if c.feature_blocks != len(sel.feature_layers):
            raise Refused(
                RefusalCategory.INCONSISTENCY, "feature_blocks must equal the number of feature layers"
            )
        # A cell's statistics are released only when c + 2 institutions have centroids in it, c the
        # larger of the server's colluder bound and this institution's own: two honest ones at least.
        floor = ClientPolicy(policy.min_cohort, policy.colluding_fraction).assumed_colluders(session) + 2
        if c.min_cohort < floor:
            raise Refused(
                RefusalCategory.BOUNDS,
                f"cells need at least {floor} institutions for this institution (c + 2), the plan allows {c.min_cohort}",
                field="coreset.min_cohort",
            )

    def _features(self, round_: int, model: NDArray[np.float32], ins: FedhdsInstruction) -> Any:
        """This round's CoresetClient (turbo features are computed once and reused)."""
        from secfed.coreset.client import CoresetClient
        from secfed.coreset.features import last_token_features
        from secfed.model.lora import vector_to_adapter

        per_round = ins.fedhds.feature_model == "global"
        if self._coreset is not None and (not per_round or self._features_round == round_):
            return self._coreset
        peft = self._ensure_model(ins)
        layers = list(ins.fedhds.feature_layers)
        max_length = ins.fedhds.feature_max_length
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
        ins = FedhdsInstruction.parse(task_config)
        if ins.stage == TRAIN_STAGE:
            return self._kept_update(round_, model, ins) or self._train_and_release(round_, model, ins)
        if ins.fedhds.selection_dp is not None:
            return self._dp_contribution(round_, model, ins)
        started = time.perf_counter()
        coreset = self._features(round_, model, ins)
        out: dict[str, NDArray[np.float64]] = coreset.contribute(ins.broadcast())
        # Statistics of these features in this stage under this round seed (which fixes the public
        # projection): named by what they are computed from, never by other settings, so a re-run of
        # the stage with any field changed is the same input; a fresh projection is a new one.
        indices, feats = self.features if self.features is not None else (np.zeros(0), np.zeros(0))
        self._last_identity = release_identity(
            "fedhds-stage",
            ins.stage.encode(),
            hashlib.sha256(
                np.ascontiguousarray(indices).tobytes() + np.ascontiguousarray(feats).tobytes()
            ).digest(),
            str(ins.round_seed).encode(),
        )
        self.privacy.record_non_dp(round_, release="selection", what=ins.stage)
        self.selection_s += time.perf_counter() - started
        return out

    def _dp_rows(
        self, round_: int, model: NDArray[np.float32], ins: FedhdsInstruction
    ) -> NDArray[np.float64]:
        """This institution's feature rows under the federation's public release projection."""
        from secfed.coreset.dp_release import projected_rows
        from secfed.fl.fedhds_dp import release_seed

        assert ins.fedhds.selection_dp is not None
        self._features(round_, model, ins)
        assert self.features is not None
        return projected_rows(
            self.features[1],
            len(ins.fedhds.feature_layers),
            ins.fedhds.selection_dp,
            release_seed(ins.init_seed),
        )

    def _dp_contribution(
        self, round_: int, model: NDArray[np.float32], ins: FedhdsInstruction
    ) -> dict[str, NDArray[np.float64]]:
        """This institution's noised vector for a release stage, ledgered before it leaves.

        Its release identity names the records and the release (not the round or attempt), so the
        registry refuses to sum it into a second session unless the first provably never unmasked."""
        from secfed.coreset.dp_config import selection_events
        from secfed.coreset.dp_release import contribution
        from secfed.dp.csprng import AesCtrGaussian

        dp = ins.fedhds.selection_dp
        if dp is None or self._dp_share is None or self._dp_admitted_key is None:
            raise Refused(RefusalCategory.INCONSISTENCY, f"stage {ins.stage!r} was not admitted")
        started = time.perf_counter()
        rows = self._dp_rows(round_, model, ins)
        plan = dict((ins.plan.dp if ins.plan is not None else None) or {})
        with AesCtrGaussian() as stream:
            out = contribution(
                dp, ins.stage, rows, plan, self._dp_share, stream, max_records=ins.coreset.max_records
            )
        self._dp_drawn[(ins.stage, self._dp_admitted_key, ins.round_seed)] = self._dp_share.honest
        self._last_identity = release_identity("fedhds-dp-stage", ins.stage.encode(), self._dp_admitted_key)
        self.privacy.record_selection(round_, [selection_events(dp, round_)[ins.stage]])
        self.selection_s += time.perf_counter() - started
        return out

    def _dp_selected_indices(self, ins: FedhdsInstruction) -> NDArray[np.int64]:
        """Representatives chosen locally from the verified release (:mod:`secfed.coreset.dp_choice`)."""
        from secfed.coreset.dp_choice import local_choice, padded_choice
        from secfed.dp.csprng import AesCtrGaussian

        dp = ins.fedhds.selection_dp
        if dp is None or self._dp_round is None or self.features is None:
            raise Refused(RefusalCategory.INCONSISTENCY, "a train stage without a verified DP release")
        release, roster, offer_seed, rows = self._dp_round
        with AesCtrGaussian() as stream:
            picked = local_choice(
                rows,
                release,
                me=self.client_id,
                roster=roster,
                round_seed=offer_seed,
                oversample=dp.oversample,
                max_fraction=ins.coreset.max_fraction,
                stream=stream,
            )
        self.last_accepted = len(picked)
        picked = padded_choice(rows, release, picked, max_fraction=ins.coreset.max_fraction)
        indices: NDArray[np.int64] = self.features[0][picked]
        return indices

    def _selected_indices(self, ins: FedhdsInstruction) -> NDArray[np.int64]:
        """The records this institution trains on: its own choice from the public selection, never a
        list the server names (the server would then pick one institution's record to train on)."""
        if ins.fedhds.selection_dp is not None:
            return self._dp_selected_indices(ins)
        if ins.fedhds.selection == "random":
            k = min(len(self.records), max(1, round(ins.fedhds.random_fraction * len(self.records))))
            # The institution's own secret randomness: the server does not learn which records.
            pool = list(range(len(self.records)))
            chosen = [pool.pop(secrets.randbelow(len(pool))) for _ in range(k)]
            return np.asarray(sorted(chosen), dtype=np.int64)
        if self._coreset is None or ins.plan is None:
            raise Refused(
                RefusalCategory.INCONSISTENCY,
                f"{NAME} client {self.client_id}: a train stage without this round's coreset stages",
            )
        broadcast = ins.broadcast()
        picked: NDArray[np.int64] = self._coreset.selection(broadcast).records
        if len(picked):
            return picked
        nearest: NDArray[np.int64] = self._coreset.nearest_candidate(broadcast)
        return nearest

    def training_inputs(self, ins: FeditInstruction) -> tuple[list[Record], TrainSettings]:
        """The records this institution selected itself from the verified plan, for the set epochs."""
        assert isinstance(ins, FedhdsInstruction)
        indices = self._selected_indices(ins)
        if len(indices) == 0:
            raise Refused(RefusalCategory.DATA, "no record to train on")
        self.last_selected = indices
        records = [self.records[int(i)] for i in indices]
        return records, dataclasses.replace(ins.train, epochs=ins.fedhds.selected_epochs)

    def update_weight(self, ins: FeditInstruction, plan: TrainingPlan, dp_trained: bool) -> float:
        """A public weight: a winner and a non-winner, one record or five, weigh the same, so the weight
        sum reveals only the (public) number of contributors."""
        return float(ins.max_weight)

    def log_training(self, round_: int, plan: TrainingPlan, stats: Any) -> None:
        self.records_trained += len(plan.records)
        logs.event(
            log,
            "coreset-train",
            client=self.client_id,
            round=round_,
            selected=len(plan.records),
            steps=stats.steps,
            seconds=f"{stats.seconds:.1f}",
        )

    def _round_key(self, round_: int, model: NDArray[np.float32], ins: FeditInstruction) -> RoundKey:
        """A retried round draws a fresh projection and selection (``round_seed``, ``plan``), yet the
        DP update trained in an earlier attempt from the same model under the same settings is still
        this institution's release for the round: re-submitting it reveals nothing new, training on
        the new selection would spend the budget twice. So those two fields are not part of the key."""
        wire = {k: v for k, v in ins.wire().items() if k not in ("round_seed", "plan")}
        return round_, model_hash(model), self.dataset_hash() + canonical_json(wire)


def space_stage() -> str:
    from secfed.coreset.space import PCA_STAGE

    return PCA_STAGE


def occupancy_stage() -> str:
    from secfed.coreset.grid import OCCUPANCY_STAGE

    return OCCUPANCY_STAGE


def _differs(expected: Any, got: Any, path: str = "") -> str | None:
    """Where two JSON values differ (numbers to 1e-9 relative: the same sums on another machine's
    BLAS may round the last bits of a PCA basis differently), or None."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if set(expected) != set(got):
            return f"{path or 'value'} has keys {sorted(got)}, expected {sorted(expected)}"
        for key in expected:
            found = _differs(expected[key], got[key], f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(expected, list | tuple) and isinstance(got, list | tuple):
        if len(expected) != len(got):
            return f"{path or 'value'} has {len(got)} entries, expected {len(expected)}"
        for k, (a, b) in enumerate(zip(expected, got, strict=True)):
            found = _differs(a, b, f"{path}[{k}]")
            if found is not None:
                return found
        return None
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(got, numbers) and not isinstance(expected, bool):
        if isinstance(got, bool) or not np.isclose(float(expected), float(got), rtol=1e-9, atol=1e-12):
            return f"{path or 'value'} is {got}, expected {expected}"
        return None
    if expected != got:
        return f"{path or 'value'} is {got!r}, expected {expected!r}"
    return None


def coreset_stage_spec(ins: FedhdsInstruction) -> Any:
    """The vector spec of a coreset stage, rebuilt by the institution from the public config and plan."""
    from secfed.coreset import election, grid, space
    from secfed.coreset.space import SharedSpace

    c = ins.coreset
    if ins.stage == space.PCA_STAGE:
        return space.pca_layout(c.k0, bound=c.bound, max_records=c.max_records).vector_spec()
    plan = ins.plan
    if plan is None or plan.space is None:
        raise Refused(
            RefusalCategory.INCONSISTENCY, f"stage {ins.stage!r} without a shared space", field="plan.space"
        )
    shared = SharedSpace.from_json(dict(plan.space))
    if ins.stage == grid.OCCUPANCY_STAGE:
        return grid.occupancy_layout(shared.grid).vector_spec()
    if plan.allowed is None:
        raise Refused(
            RefusalCategory.INCONSISTENCY, f"stage {ins.stage!r} without allowed cells", field="plan.allowed"
        )
    if ins.stage == grid.HISTOGRAM_STAGE:
        return grid.histogram_layout(
            len(plan.allowed), c.dims, coord_bound=shared.coord_bound(c.bound), max_records=c.max_records
        ).vector_spec()
    if plan.ballot is None:
        raise Refused(RefusalCategory.INCONSISTENCY, f"unknown coreset stage {ins.stage!r}", field="stage")
    ballot = election.Ballot.from_json(dict(plan.ballot))
    if ins.stage != election.election_stage(ballot.attempt):
        raise Refused(
            RefusalCategory.INCONSISTENCY, "the ballot is for another election", field="plan.ballot"
        )
    return election.election_layout(ballot).vector_spec()
