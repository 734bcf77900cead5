"""The institution's side of DP in a federated round: calibrate, check the budget, train, ledger.

A training task (FedIT, FedHDS) asks :meth:`InstitutionPrivacy.plan_round` before it trains. With
the consortium's DP options and the institution's own record count it fixes the noise multiplier
(explicit, or calibrated to the target epsilon over the planned rounds), asks the budget guard
whether that round still fits the institution's budget, and either returns the DP settings to train
with or raises :class:`PrivacyRefusal` (already written to the ledger) so the client tells the
server it sits this round out. After training, :meth:`record` writes what was actually released.

Coreset selection under distributed DP takes the same two steps: ``plan_selection`` with all of a
round's stages before any selection statistic is computed (refusing when their Skellam releases cannot
fit the budget), then ``record_selection`` for each stage (or several at once) before its masked
vector leaves.

Rounds the institution did not train in (refused, not sampled, dropped before training) cost it
nothing: only ``dp-round`` and ``dp-selection`` entries enter the composition.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from secfed import logs
from secfed.dp.accounting import DpEvent, calibrate_noise
from secfed.dp.guard import BudgetGuard
from secfed.dp.ledger import NON_DP, ROUND, SELECTION, BudgetExceeded, PrivacyLedger, stage_names
from secfed.dp.policy import DpOptions, PrivacyPolicy
from secfed.home import default_privacy_ledger

if TYPE_CHECKING:
    from secfed.dp.sgd import DpRoundEvent, DpSettings
    from secfed.dp.skellam import SkellamEvent

log = logging.getLogger("secfed.dp")


class PrivacyRefusal(ValueError):  # noqa: N818 - a decision, reported to the server as a refusal
    """This institution declines the round under its privacy policy; the reason is a plain sentence."""


@dataclass(frozen=True)
class DatasetTag:
    """Which records a release is computed from: a content hash (the identity that matters, so the
    same records under another file name or in another federation are recognised) and a name for
    people (the file the records came from)."""

    sha256: str
    name: str

    def to_mapping(self) -> dict[str, str]:
        return {"dataset": self.sha256, "data": self.name}


class InstitutionPrivacy:
    """One institution's privacy state: its policy, its ledger, and the dataset its releases are about.

    The ledger is the institution's (default ``$SECFED_HOME/<institution>/privacy-ledger.jsonl``, see
    :mod:`secfed.home`), not one federation's: every federation over the same records appends to it,
    so their releases compose. Epsilon composes over every release in the ledger, whatever dataset
    each entry names: two datasets may share records, and only composing everything is sound without
    knowing which (an institution with truly disjoint datasets and separate budgets gives each its own
    ledger)."""

    def __init__(
        self, institution: str, policy: PrivacyPolicy | None, dataset: DatasetTag | None = None
    ) -> None:
        self.institution = institution
        self.policy = policy
        self.dataset = dataset
        self.ledger = (
            PrivacyLedger(
                policy.ledger if policy.ledger is not None else default_privacy_ledger(institution),
                institution=institution,
                delta=policy.delta,
                budget_epsilon=policy.budget_epsilon,
            )
            if policy is not None
            else None
        )
        if self.ledger is not None:
            self._log_opened(self.ledger)

    def _log_opened(self, ledger: PrivacyLedger) -> None:
        """Say, locally, where the ledger is and what it already holds about these records."""
        entries = ledger.entries()
        tagged = [e for e in entries if e.kind in (ROUND, SELECTION, NON_DP)]
        mine = [
            e for e in tagged if self.dataset is not None and e.body.get("dataset") == self.dataset.sha256
        ]
        logs.event(
            log,
            "privacy-ledger",
            institution=self.institution,
            path=str(ledger.path),
            releases=len(tagged),
            releases_on_these_records=len(mine),
            epsilon_now=f"{ledger.spent().pld:.3f}",
            budget=ledger.budget_epsilon,
        )

    def _where(self) -> str:
        """Where the spending is recorded, for the local message (the server sees only a category)."""
        return f"(Privacy ledger: {self.ledger.path}.)" if self.ledger is not None else ""

    def _tag(self) -> dict[str, str]:
        return self.dataset.to_mapping() if self.dataset is not None else {}

    def plan_round(self, round_: int, dp: DpOptions | None, n_records: int, steps: int) -> DpSettings | None:
        """The DP settings to train ``round_`` with (None: the federation trains without DP)."""
        from secfed.dp.sgd import DpSettings

        if dp is None:
            if self.policy is not None and self.policy.require_dp:
                reason = (
                    f"Institution {self.institution!r} refuses round {round_}: its policy requires DP-SGD "
                    "and the federation asked for training without it."
                )
                if self.ledger is not None:
                    self.ledger.record_refusal(round_, reason, float("inf"), extra=self._tag())
                raise PrivacyRefusal(reason)
            return None
        settings = DpSettings(
            noise_multiplier=dp.noise_multiplier or 1.0,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=dp.expected_batch_size,
            max_physical_batch=dp.max_physical_batch,
        )
        rate = settings.sample_rate(n_records)
        if dp.noise_multiplier is not None:
            sigma = dp.noise_multiplier
        else:
            assert dp.target_epsilon is not None and dp.rounds is not None  # DpOptions validated it
            sigma = calibrate_noise(dp.target_epsilon, dp.delta, rate, steps, dp.rounds)
        planned = DpEvent(sigma, rate, steps, round_)
        if self.ledger is not None:
            self._check_headroom(round_, dp, planned)
            decision = BudgetGuard(self.ledger).check(planned, extra=self._tag())
            logs.event(
                log,
                "privacy-check",
                institution=self.institution,
                round=round_,
                allowed=decision.allowed,
                epsilon_now=f"{decision.epsilon_now:.3f}",
                epsilon_after=f"{decision.epsilon_after:.3f}",
            )
            if not decision.allowed:
                raise PrivacyRefusal(f"{decision.reason} {self._where()}")
        return replace(settings, noise_multiplier=sigma)

    def _check_headroom(self, round_: int, dp: DpOptions, planned: DpEvent) -> None:
        """Refuse now, not mid-run, when the rest of the planned run cannot fit the budget.

        The coordinator cannot know an institution's epsilon (it depends on the private record count),
        so each institution checks the rounds still planned (``dp.rounds``, this one included) at this
        round's mechanism. Conservative: rounds it may not be sampled into count too."""
        ledger = self.ledger
        budget = ledger.budget_epsilon if ledger is not None else None
        if ledger is None or budget is None or dp.rounds is None or round_ >= dp.rounds:
            return
        remaining = dp.rounds - round_
        after = ledger.epsilon_with([replace(planned, round=round_ + k) for k in range(remaining)])
        if after <= budget:
            logs.event(
                log,
                "privacy-headroom",
                institution=self.institution,
                round=round_,
                run_epsilon=f"{after:.3f}",
                budget=budget,
            )
            return
        reason = (
            f"Institution {self.institution!r} refuses round {round_}: the rest of the planned run "
            f"({remaining} round(s) at this round's noise) would take its epsilon to {after:.3f}, above its "
            f"privacy budget of {budget:.3f} (delta {ledger.delta:g}); refusing now rather than mid-run."
        )
        ledger.record_refusal(round_, reason, after, extra=self._tag())
        raise PrivacyRefusal(f"{reason} {self._where()}")

    def plan_selection(self, round_: int, events: Sequence[SkellamEvent]) -> None:
        """Check, before any selection statistic of ``round_`` is computed, that its Skellam releases
        (``events``, one per stage) fit the budget with everything already recorded.

        Raises :class:`PrivacyRefusal`, after writing the refusal to the ledger, when they do not, so
        the institution sits the selection out instead of stopping between two stages. Without a
        ledger there is no budget to check."""
        if self.ledger is None:
            return
        decision = BudgetGuard(self.ledger).check_selection(round_, events, extra=self._tag())
        logs.event(
            log,
            "privacy-check",
            institution=self.institution,
            round=round_,
            release="selection",
            stages=stage_names(events),
            allowed=decision.allowed,
            epsilon_now=f"{decision.epsilon_now:.3f}",
            epsilon_after=f"{decision.epsilon_after:.3f}",
        )
        if not decision.allowed:
            raise PrivacyRefusal(f"{decision.reason} {self._where()}")

    def record_selection(self, round_: int, events: Sequence[SkellamEvent]) -> None:
        """Ledger a selection release (one Skellam event per stage) before its masked vector leaves;
        without a ledger (in-process tests) only log it.

        As for :meth:`record`, the budget is checked again as the entry is written, under the ledger's
        lock (another federation over the same records may have recorded releases since
        :meth:`plan_selection`). Raises :class:`PrivacyRefusal` (a refusal written, the release not,
        and the vector must not leave) when it no longer fits."""
        if self.ledger is None:
            logs.event(
                log,
                "dp-selection-unledgered",
                logging.WARNING,
                institution=self.institution,
                round=round_,
                stages=stage_names(events),
                lam=[e.lam for e in events],
            )
            return
        try:
            self.ledger.record_selection(round_, events, extra=self._tag(), within_budget=True)
        except BudgetExceeded as exc:
            self.ledger.record_refusal(round_, str(exc), exc.epsilon_after, extra=self._tag())
            raise PrivacyRefusal(str(exc)) from None
        parts = self.ledger.spent_parts()
        logs.event(
            log,
            "privacy-spent",
            institution=self.institution,
            round=round_,
            release="selection",
            stages=stage_names(events),
            epsilon_selection=f"{parts.selection:.3f}",
            epsilon=f"{parts.total:.3f}",
            delta=self.ledger.delta,
        )

    def record_non_dp(self, round_: int, *, release: str, what: str) -> None:
        """Ledger, before it leaves, a release with no DP guarantee (an update trained without DP-SGD,
        coreset statistics): the institution's reports then say plainly that those records have none."""
        if self.ledger is not None:
            self.ledger.record_non_dp(round_, release=release, what=what, extra=self._tag())
        logs.event(
            log, "non-dp-release", institution=self.institution, round=round_, release=release, what=what
        )

    def record_resubmission(self, round_: int) -> None:
        """Ledger that a retry of ``round_`` re-sent the DP update already ledgered for it (no new
        release: it costs nothing, and the reports list it as a retry)."""
        if self.ledger is not None:
            self.ledger.record_resubmission(round_, extra=self._tag())
        logs.event(log, "dp-update-resubmitted", institution=self.institution, round=round_)

    def record(self, round_: int, event: DpRoundEvent) -> None:
        """Ledger what is about to be released; without a ledger (in-process tests) only log it.

        The budget is checked again as the entry is written, under the ledger's lock: another client
        process appending to the same ledger (a second federation over the same records) between the
        plan and now cannot take it past the budget. Raises :class:`PrivacyRefusal` (nothing written,
        the update must not leave) when it would."""
        if self.ledger is not None:
            try:
                self.ledger.record_release(round_, event, extra=self._tag(), within_budget=True)
            except BudgetExceeded as exc:
                self.ledger.record_refusal(round_, str(exc), exc.epsilon_after, extra=self._tag())
                raise PrivacyRefusal(str(exc)) from None
            spent = self.ledger.spent()
            logs.event(
                log,
                "privacy-spent",
                institution=self.institution,
                round=round_,
                epsilon=f"{spent.pld:.3f}",
                epsilon_rdp=f"{spent.rdp:.3f}",
                delta=self.ledger.delta,
            )
        else:
            logs.event(
                log,
                "dp-round-unledgered",
                logging.WARNING,
                institution=self.institution,
                round=round_,
                noise_multiplier=event.noise_multiplier,
                sample_rate=event.sample_rate,
                steps=event.steps,
            )
