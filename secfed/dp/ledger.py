"""An institution's privacy ledger: the persisted, tamper-evident record of every DP release.

The ledger is the institution's source of truth for how much privacy it has spent (docs/design-notes.md §5):
the server never tells a client its epsilon.  It lives on a :class:`secfed.chain.HashChain`, so the
history cannot be edited or shortened in the middle without ``verify`` noticing, and every figure is
recomputed from the file each time it is asked for.

Entry kinds (``body`` fields):

* ``ledger-open``   (first entry, exactly once): ``institution``, ``delta``, ``budget_epsilon``
  (``null`` = no budget), ``accountant`` (how epsilon is computed), ``format``.
* ``dp-round``      one DP release: ``round``, ``noise_multiplier``, ``sample_rate``, ``steps`` and the
  run's details passed as ``extra`` (``max_grad_norm``, ``expected_batch_size``, ``n_records``,
  ``empty_batches``, ...).
* ``budget-refusal`` a round this institution refused to train (or whose selection statistics it
  refused to release): ``round``, ``reason``,
  ``would_be_epsilon``, ``epsilon_now``, ``budget_epsilon``.
* ``budget-change`` ``from``, ``to``, ``reason``: budgets can change, but never silently.
* ``dp-resubmission`` a retry of ``round`` re-sent the DP update already recorded for it: no new
  release, no cost; listed in the reports as a retry.
* ``dp-selection`` coreset selection statistics released with distributed DP: ``round`` and
  ``events``, one :class:`secfed.dp.skellam.SkellamEvent` mapping per stage (``mechanism``
  ``skellam``, ``lam``: the Skellam noise every coordinate of the *sum* carries at least, ``l1``,
  ``l2``: the stage's sensitivities in ring units, ``what``: the stage, e.g. ``coreset-dp-mean``,
  ``round``), written before the stage's masked vector leaves.
* ``non-dp-release`` something computed from the institution's records left it *without* a DP
  guarantee: ``round``, ``release`` (``update``: a model update trained without DP-SGD; ``selection``:
  coreset statistics), ``what`` (the task's name for it) and ``dataset`` (a content hash of the
  records). One non-DP ``update`` makes the training epsilon unbounded from then on (the guard and the
  reports treat it so); ``selection`` releases (coreset statistics without DP noise; with noise they
  are ``dp-selection`` entries) are listed in the reports, with no bound claimed.

``dp-round``, ``dp-selection``, ``non-dp-release``, ``dp-resubmission`` and ``budget-refusal`` entries
also name the records they are about: ``dataset`` (a SHA-256 of their content) and ``data`` (a name
for people).  The ledger is the institution's, shared by every federation over its records
(:mod:`secfed.home`), and epsilon composes over all of it: datasets may share records, and composing
everything is the only bound that holds without knowing which.

Epsilon composes over the ``dp-round`` and ``dp-selection`` entries only, i.e. over the rounds this
institution actually trained in and the selection statistics it actually released.  Record a release
*before* it leaves the institution: a recorded release that was never sent only over-counts, and one
recorded twice is counted twice (never under-counts).

How they compose (:func:`compose_epsilon`): without ``dp-selection`` entries, exactly as for DP-SGD
alone, by the PLD accountant (RDP as the cross-check).  With them, by Renyi DP: the DP-SGD rounds'
RDP curve (``dp_accounting``'s RDP accountant over ``RDP_ORDERS``) plus the Skellam releases' curves,
converted at the ledger's delta by the conversion the RDP cross-check uses.  The PLD accountant cannot
take the Skellam mechanism (``dp_accounting`` has no PLD for it), and RDP composition of the two is a
valid upper bound; it is looser than PLD for the training part, so a ledger's epsilon can jump when its
first selection release is recorded, by more than the release itself costs.  The training and
selection figures alone are kept too (:meth:`PrivacyLedger.spent_parts`) for the reports.

``delta`` and ``institution`` are fixed for the life of the ledger: epsilons at different deltas do not
compose into one figure, so reopening with another delta is an error.
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from secfed.chain import ChainError, Entry, HashChain
from secfed.dp.accounting import (
    PLD_DISCRETIZATION,
    RDP_ORDERS,
    DpEvent,
    DpRelease,
    EpsilonReport,
    epsilon_pld,
    epsilon_report,
    rdp_curve,
    validate_delta,
)
from secfed.dp.skellam import SkellamEvent, skellam_events_rdp

__all__ = [
    "LEDGER_FORMAT",
    "BudgetExceeded",
    "ChainError",
    "EpsilonParts",
    "LedgerError",
    "PrivacyLedger",
    "compose_epsilon",
    "composed_report",
    "epsilon_parts",
    "selection_events_in",
    "stage_names",
]

LEDGER_FORMAT = 1

OPEN = "ledger-open"
ROUND = "dp-round"
REFUSAL = "budget-refusal"
BUDGET_CHANGE = "budget-change"
NON_DP = "non-dp-release"
RESUBMISSION = "dp-resubmission"
SELECTION = "dp-selection"
_KINDS = frozenset({OPEN, ROUND, REFUSAL, BUDGET_CHANGE, NON_DP, RESUBMISSION, SELECTION})
#: What a non-DP release can be: a model update, coreset statistics, a loss-curve point (training, or
#: evaluation of the received adapter on held-out records: its ``what`` tells them apart; one kind, so
#: reports signed before evaluation curves existed still verify).
NON_DP_KINDS = ("update", "selection", "loss")

_RELEASE_FIELDS = (
    "max_grad_norm",
    "expected_batch_size",
    "n_records",
    "empty_batches",
)


def _unbounded(entries: list[Entry]) -> bool:
    """Whether an update already left without DP (epsilon is then infinite, whatever else composes)."""
    return any(e.kind == NON_DP and e.body.get("release") == "update" for e in entries)


class _AlreadyOpenedError(Exception):
    """Another process wrote the ledger's header first (two federations opening a new ledger at once)."""


class LedgerError(ValueError):
    """The ledger file exists but does not match what the caller expects, or is malformed."""


class BudgetExceeded(ValueError):  # noqa: N818 - a decision, not a fault
    """Recording this release would take the ledger past its budget (nothing was written)."""

    def __init__(self, message: str, epsilon_after: float) -> None:
        super().__init__(message)
        self.epsilon_after = epsilon_after


def _validate_budget(budget: float | None) -> float | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise ValueError(f"budget_epsilon must be a number > 0 or None, got {budget!r}")
    if math.isinf(budget):
        return None
    return float(budget)


def _validate_round(round_: object) -> int:
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
        raise ValueError(f"round must be an integer >= 0, got {round_!r}")
    return round_


def _json_epsilon(value: float) -> float | None:
    return None if math.isinf(value) else value


def selection_events_in(entry: Entry) -> list[SkellamEvent]:
    """The Skellam releases one ``dp-selection`` entry records (``ValueError`` if it is malformed: no
    events, an event that is not a Skellam release, or one that names another round)."""
    if entry.kind != SELECTION:
        raise ValueError(f"entry {entry.seq} is a {entry.kind!r} entry, not {SELECTION!r}")
    round_ = entry.body.get("round")
    _validate_round(round_)
    listed = entry.body.get("events")
    if not isinstance(listed, list) or not listed:
        raise ValueError(f"a selection release needs a non-empty list of events, got {listed!r}")
    events: list[SkellamEvent] = []
    for item in listed:
        if not isinstance(item, Mapping):
            raise ValueError(f"a selection event must be a mapping, got {item!r}")
        event = SkellamEvent.from_mapping(item)
        if event.round is not None and event.round != round_:
            raise ValueError(f"event {event.what!r} is for round {event.round}, not round {round_}")
        events.append(event)
    return events


def stage_names(events: Sequence[SkellamEvent]) -> str:
    """The stages of a selection release for a sentence (``coreset-dp-mean, coreset-dp-hist``)."""
    named = ", ".join(dict.fromkeys(e.what for e in events if e.what))
    return named or f"{len(events)} unnamed stage(s)"


@functools.lru_cache(maxsize=256)
def _skellam_curve(lam: float, l1: float, l2: float) -> tuple[float, ...]:
    return tuple(skellam_events_rdp([SkellamEvent(lam, l1, l2)], RDP_ORDERS))


def _selection_curve(events: Sequence[SkellamEvent]) -> list[float]:
    """The RDP curve of ``events`` composed; equal releases are counted, not recomputed (a ledger holds
    a few stages per round, each with the same noise and sensitivities round after round)."""
    for event in events:
        if not isinstance(event, SkellamEvent):
            raise ValueError(f"expected SkellamEvent, got {type(event).__name__}")
    curve = [0.0] * len(RDP_ORDERS)
    for (lam, l1, l2), count in Counter((e.lam, e.l1, e.l2) for e in events).items():
        for i, value in enumerate(_skellam_curve(lam, l1, l2)):
            curve[i] += count * value
    return curve


def _rdp_to_epsilon(curve: Sequence[float], delta: float) -> float:
    """Epsilon at ``delta`` of an RDP curve over ``RDP_ORDERS``: ``dp_accounting``'s conversion, the
    one its RDP accountant (our cross-check) applies."""
    if not any(curve):
        return 0.0
    from dp_accounting.rdp import rdp_privacy_accountant

    epsilon, _ = rdp_privacy_accountant.compute_epsilon(list(RDP_ORDERS), list(curve), delta)
    return max(0.0, float(epsilon))


def compose_epsilon(training: Sequence[DpEvent], selection: Sequence[SkellamEvent], delta: float) -> float:
    """Epsilon at ``delta`` of DP-SGD rounds and Skellam selection releases composed (module
    docstring): the PLD of ``training`` when there is no selection release, so a ledger without one
    reads exactly as before; else the RDP composition of both, which the PLD accountant cannot do."""
    delta = validate_delta(delta)
    if not selection:
        return epsilon_pld(training, delta)
    curve = [t + s for t, s in zip(rdp_curve(training), _selection_curve(selection), strict=True)]
    return _rdp_to_epsilon(curve, delta)


def composed_report(
    training: Sequence[DpEvent], selection: Sequence[SkellamEvent], delta: float
) -> EpsilonReport:
    """The :class:`EpsilonReport` of these releases: PLD with the RDP cross-check while there is no
    selection release (as for DP-SGD alone); else the RDP composition (:func:`compose_epsilon`) in both
    fields, since it is the one figure that bounds them all and callers read ``pld`` as "the epsilon"."""
    if not selection:
        return epsilon_report(training, delta)
    total = compose_epsilon(training, selection, delta)
    return EpsilonReport(pld=total, rdp=total, delta=validate_delta(delta))


@dataclass(frozen=True)
class EpsilonParts:
    """A ledger's epsilon at ``delta`` and the two kinds of release it is made of, for the reports.

    ``training``: the DP-SGD rounds alone (PLD, the figure a ledger without selection releases
    reports); ``selection``: the Skellam selection releases alone (RDP); ``total``: both composed
    (:func:`compose_epsilon`), the figure the budget is enforced on.  ``total`` is at least
    ``selection`` and at least the training rounds' RDP figure (RDP adds, and the conversion grows with
    the curve), but is not the sum of the parts.  Once an update left without DP, ``training`` and
    ``total`` are infinite; ``selection`` still says what the selection releases cost by themselves.
    """

    training: float
    selection: float
    total: float
    delta: float

    def to_mapping(self) -> dict[str, float | None]:
        """JSON-ready form (infinite epsilon becomes ``None``)."""
        return {
            "epsilon_training": _json_epsilon(self.training),
            "epsilon_selection": _json_epsilon(self.selection),
            "epsilon": _json_epsilon(self.total),
            "delta": self.delta,
        }


def epsilon_parts(
    training: Sequence[DpEvent], selection: Sequence[SkellamEvent], delta: float, *, unbounded: bool = False
) -> EpsilonParts:
    """The :class:`EpsilonParts` of these releases; ``unbounded``: an update also left without DP."""
    delta = validate_delta(delta)
    return EpsilonParts(
        training=math.inf if unbounded else epsilon_pld(training, delta),
        selection=_rdp_to_epsilon(_selection_curve(selection), delta),
        total=math.inf if unbounded else compose_epsilon(training, selection, delta),
        delta=delta,
    )


class PrivacyLedger:
    """The append-only privacy ledger of one institution (see the module docstring).

    Opening creates the file with its ``ledger-open`` header, or checks an existing one: a different
    ``institution`` or ``delta`` raises :class:`LedgerError`; a different ``budget_epsilon`` is
    recorded as a ``budget-change`` entry.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        institution: str,
        delta: float,
        budget_epsilon: float | None,
        chain: HashChain | None = None,
    ) -> None:
        if not (isinstance(institution, str) and institution.strip()):
            raise ValueError(f"institution must be a non-empty string, got {institution!r}")
        self.institution = institution
        self.delta = validate_delta(delta)
        budget = _validate_budget(budget_epsilon)
        # This process's own budget: whatever another federation sharing the ledger writes into it, this
        # one never spends beyond its own (the budget in force is the smaller, see :meth:`budget_epsilon`).
        self._own_budget = budget
        self.chain = chain if chain is not None else HashChain(path)
        entries = self.chain.entries()
        if not entries:
            try:
                self._open(budget)
                return
            except _AlreadyOpenedError:  # another process created it in between: check its header instead
                entries = self.chain.entries()
        header = self._header(entries)
        if header.body.get("institution") != institution:
            raise LedgerError(
                f"{self.path}: this ledger belongs to institution {header.body.get('institution')!r}, "
                f"not {institution!r}"
            )
        if header.body.get("delta") != self.delta:
            raise LedgerError(
                f"{self.path}: this ledger accounts at delta={header.body.get('delta')!r}; reopening it "
                f"with delta={self.delta!r} would mix epsilons that do not compose (start a new ledger)"
            )
        current = self.budget_in(entries)
        if budget != current:
            self.set_budget(budget, reason="ledger reopened with a different budget")

    def _open(self, budget: float | None) -> None:
        """Write the header, unless another process wrote one first (then :class:`_AlreadyOpenedError`)."""

        def empty(entries: list[Entry]) -> None:
            if entries:
                raise _AlreadyOpenedError

        self.chain.append(
            OPEN,
            {
                "format": LEDGER_FORMAT,
                "institution": self.institution,
                "delta": self.delta,
                "budget_epsilon": budget,
                "accountant": {
                    "reported": "pld",
                    "cross_check": "rdp",
                    "pld_value_discretization": PLD_DISCRETIZATION,
                    "neighbouring_relation": "add-or-remove-one training sequence",
                },
            },
            precondition=empty,
        )

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Open an existing ledger as its header says, for reading (nothing is appended).

        For auditors and reports, which must not need (or be able to change) the institution's
        settings.  Raises :class:`LedgerError` if the file is missing or not a privacy ledger and
        :class:`secfed.chain.ChainError` if it was tampered with.
        """
        chain = HashChain(path)
        if not chain.path.exists():
            raise LedgerError(f"{chain.path}: no such privacy ledger")
        entries = chain.entries()
        if not entries or entries[0].kind != OPEN:
            raise LedgerError(f"{chain.path}: not a privacy ledger (first entry is not {OPEN!r})")
        header = entries[0].body
        institution, delta = header.get("institution"), header.get("delta")
        if not isinstance(institution, str) or isinstance(delta, bool) or not isinstance(delta, int | float):
            raise LedgerError(f"{chain.path}: malformed ledger header {header!r}")
        return cls(
            path,
            institution=institution,
            delta=float(delta),
            budget_epsilon=cls.budget_in(entries),
            chain=chain,
        )

    @property
    def path(self) -> Path:
        return self.chain.path

    # -- reading -------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """All verified entries (raises :class:`secfed.chain.ChainError` if the file was tampered with)."""
        entries = self.chain.entries()
        self._header(entries)
        for entry in entries[1:]:
            if entry.kind not in _KINDS or entry.kind == OPEN:
                raise LedgerError(f"{self.path}: entry {entry.seq} has unexpected kind {entry.kind!r}")
        return entries

    def _header(self, entries: list[Entry]) -> Entry:
        if not entries or entries[0].kind != OPEN:
            raise LedgerError(f"{self.path}: not a privacy ledger (first entry is not {OPEN!r})")
        return entries[0]

    @staticmethod
    def budget_in(entries: list[Entry]) -> float | None:
        """The budget in force after ``entries`` (a prefix of a ledger: the header, then any changes)."""
        budget = entries[0].body.get("budget_epsilon")
        for entry in entries:
            if entry.kind == BUDGET_CHANGE:
                budget = entry.body.get("to")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)):
            raise LedgerError(f"malformed budget {budget!r} in the ledger")
        return None if budget is None else float(budget)

    @property
    def budget_epsilon(self) -> float | None:
        """The budget this process enforces: the smaller of its own (the policy it was opened with) and
        the ledger's (the last ``budget-change``, else the header's); ``None`` = none. So a second
        federation that reopens the shared ledger with a larger budget, or none, does not lift the
        budget of one already running."""
        return self._in_force(self.entries())

    def _in_force(self, entries: list[Entry]) -> float | None:
        caps = [b for b in (self._own_budget, self.budget_in(entries)) if b is not None]
        return min(caps) if caps else None

    def events(self) -> list[DpEvent]:
        """The DP releases recorded so far, in order (one per ``dp-round`` entry)."""
        return self._events(self.entries())

    def _events(self, entries: list[Entry]) -> list[DpEvent]:
        events: list[DpEvent] = []
        for entry in entries:
            if entry.kind != ROUND:
                continue
            try:
                events.append(DpEvent.from_mapping(entry.body))
            except ValueError as exc:
                raise LedgerError(f"{self.path}: entry {entry.seq} is not a valid DP round: {exc}") from None
        return events

    def selection_events(self) -> list[SkellamEvent]:
        """The Skellam selection releases recorded so far, in order (every event of every
        ``dp-selection`` entry)."""
        return self._selection_events(self.entries())

    def _selection_events(self, entries: list[Entry]) -> list[SkellamEvent]:
        events: list[SkellamEvent] = []
        for entry in entries:
            if entry.kind != SELECTION:
                continue
            try:
                events += selection_events_in(entry)
            except ValueError as exc:
                raise LedgerError(
                    f"{self.path}: entry {entry.seq} is not a valid selection release: {exc}"
                ) from None
        return events

    def rounds_trained(self) -> list[int]:
        """Round numbers this institution trained (released an update) in, in ledger order."""
        return [e.round for e in self.events() if e.round is not None]

    def refusals(self) -> list[Entry]:
        """The ``budget-refusal`` entries."""
        return [e for e in self.entries() if e.kind == REFUSAL]

    def non_dp_releases(self, kind: str | None = None) -> list[Entry]:
        """The ``non-dp-release`` entries (of one ``release`` kind, if given)."""
        return [
            e for e in self.entries() if e.kind == NON_DP and (kind is None or e.body.get("release") == kind)
        ]

    def spent(self) -> EpsilonReport:
        """Epsilon spent so far at the ledger's delta; unbounded once an update left without DP (no
        composition of DP rounds can bound what a non-DP update revealed).

        Without selection releases: PLD, with the RDP cross-check, as for DP-SGD alone.  With them,
        ``pld`` and ``rdp`` both carry the RDP composition of everything (:func:`composed_report`).
        :meth:`spent_parts` has the training and selection figures apart."""
        entries = self.entries()
        if _unbounded(entries):
            return EpsilonReport(pld=math.inf, rdp=math.inf, delta=self.delta)
        return composed_report(self._events(entries), self._selection_events(entries), self.delta)

    def spent_parts(self) -> EpsilonParts:
        """Training epsilon, selection epsilon and their composition (see :class:`EpsilonParts`)."""
        entries = self.entries()
        return epsilon_parts(
            self._events(entries), self._selection_events(entries), self.delta, unbounded=_unbounded(entries)
        )

    def epsilon_with(
        self,
        planned: Sequence[DpEvent] = (),
        entries: list[Entry] | None = None,
        *,
        planned_selection: Sequence[SkellamEvent] = (),
    ) -> float:
        """The epsilon of everything recorded (``entries``, else the file) composed with the planned
        rounds and selection releases (:func:`compose_epsilon`: PLD while no selection release is
        recorded or planned); infinite once an update left without DP. What the guard, the headroom
        check and the check at writing time all compare with the budget."""
        entries = self.entries() if entries is None else entries
        if _unbounded(entries):
            return math.inf
        return compose_epsilon(
            [*self._events(entries), *planned],
            [*self._selection_events(entries), *planned_selection],
            self.delta,
        )

    def verify(self) -> None:
        """Check the chain and that every entry parses (raises ChainError / LedgerError)."""
        entries = self.entries()
        self._events(entries)
        self._selection_events(entries)

    # -- writing -------------------------------------------------------------------------------

    def record_round(
        self,
        round_: int,
        event: DpEvent,
        extra: Mapping[str, Any] | None = None,
        *,
        within_budget: bool = False,
    ) -> Entry:
        """Record one DP release.  ``extra`` carries the run's details (clip norm, batch size, ...).

        ``extra`` may repeat the mechanism fields only with the same values, so a body can never say
        two different things about the noise that was used. With ``within_budget`` the entry is
        written only if the ledger, as it stands when the entry is appended (under the file's lock),
        composed with it stays within the budget; otherwise :class:`BudgetExceeded` and nothing is
        written.
        """
        _validate_round(round_)
        if not isinstance(event, DpEvent):
            raise ValueError(f"event must be a DpEvent, got {type(event).__name__}")
        if event.round is not None and event.round != round_:
            raise ValueError(f"event is for round {event.round}, not round {round_}")
        planned = DpEvent(event.noise_multiplier, event.sample_rate, event.steps, round_)
        mechanism = planned.to_mapping()
        body: dict[str, Any] = dict(extra or {})
        for key, value in mechanism.items():
            if key in body and body[key] != value:
                raise ValueError(f"extra[{key!r}] = {body[key]!r} contradicts the event's {value!r}")
            body[key] = value
        lead = (
            f"refuses to release round {round_}: its privacy ledger ({self.path}) changed while it trained, "
            "and the release would now take"
        )
        return self.chain.append(
            ROUND,
            body,
            precondition=(lambda entries: self._fits(entries, [planned], (), lead))
            if within_budget
            else None,
        )

    def _fits(
        self, entries: list[Entry], planned: Sequence[DpEvent], selection: Sequence[SkellamEvent], lead: str
    ) -> None:
        """Raise :class:`BudgetExceeded` (``Institution ... <lead> its epsilon to ...``) unless ``entries``
        composed with the planned releases stay within the budget in force."""
        budget = self._in_force(entries)
        if budget is None:
            return
        after = self.epsilon_with(planned, entries, planned_selection=selection)
        if after > budget:
            raise BudgetExceeded(
                f"Institution {self.institution!r} {lead} its epsilon to {after:.3f}, above its privacy "
                f"budget of {budget:.3f} (delta {self.delta:g}).",
                after,
            )

    def record_selection(
        self,
        round_: int,
        events: Sequence[SkellamEvent],
        extra: Mapping[str, Any] | None = None,
        *,
        within_budget: bool = False,
    ) -> Entry:
        """Record, before it leaves, one DP selection release of ``round_``: one Skellam event per stage.

        ``extra`` carries the dataset tag; it may repeat ``round`` and ``events`` only with the same
        values (a body never says two things about the noise). Events naming another round are refused;
        the others are recorded with ``round_``. With ``within_budget`` the entry is written only if the
        ledger, as it stands under the file's lock, composed with these events stays within the budget;
        otherwise :class:`BudgetExceeded` and nothing is written (as :meth:`record_round`)."""
        _validate_round(round_)
        if not events:
            raise ValueError("a selection release needs a non-empty sequence of Skellam events")
        planned: list[SkellamEvent] = []
        for event in events:
            if not isinstance(event, SkellamEvent):
                raise ValueError(f"events must be SkellamEvents, got {type(event).__name__}")
            if event.round is not None and event.round != round_:
                raise ValueError(f"event {event.what!r} is for round {event.round}, not round {round_}")
            planned.append(replace(event, round=round_))
        body: dict[str, Any] = dict(extra or {})
        for key, value in (("round", round_), ("events", [e.to_mapping() for e in planned])):
            if key in body and body[key] != value:
                raise ValueError(f"extra[{key!r}] = {body[key]!r} contradicts the release's {value!r}")
            body[key] = value
        stages = stage_names(planned)
        lead = (
            f"refuses to release the coreset selection statistics of round {round_} ({stages}): "
            f"recording them in its privacy ledger ({self.path}) would take"
        )
        return self.chain.append(
            SELECTION,
            body,
            precondition=(lambda entries: self._fits(entries, (), planned, lead)) if within_budget else None,
        )

    def record_release(
        self,
        round_: int,
        release: DpRelease,
        extra: Mapping[str, Any] | None = None,
        *,
        within_budget: bool = False,
    ) -> Entry:
        """Record a training release such as ``secfed.dp.sgd.DpRoundEvent`` (all its fields)."""
        details = {name: getattr(release, name) for name in _RELEASE_FIELDS if hasattr(release, name)}
        return self.record_round(
            round_,
            DpEvent.from_release(release, round_),
            {**(extra or {}), **details},
            within_budget=within_budget,
        )

    def record_resubmission(self, round_: int, extra: Mapping[str, Any] | None = None) -> Entry:
        """Record that a retry of ``round_`` re-sent the DP update already recorded for it."""
        _validate_round(round_)
        return self.chain.append(RESUBMISSION, {**(extra or {}), "round": round_})

    def resubmissions(self) -> list[Entry]:
        """The ``dp-resubmission`` entries (retries that cost nothing)."""
        return [e for e in self.entries() if e.kind == RESUBMISSION]

    def record_refusal(
        self,
        round_: int | None,
        reason: str,
        would_be_epsilon: float,
        extra: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Record that this institution refused to train ``round_`` (``None`` if not known), or to
        release its selection statistics; ``epsilon_now`` is the ledger's composed epsilon (not
        counting an update that left without DP, as before selection releases existed)."""
        if round_ is not None:
            _validate_round(round_)
        if not (isinstance(reason, str) and reason.strip()):
            raise ValueError("a refusal needs a reason")
        entries = self.entries()
        now = compose_epsilon(self._events(entries), self._selection_events(entries), self.delta)
        return self.chain.append(
            REFUSAL,
            {
                **(extra or {}),
                "round": round_,
                "reason": reason,
                "would_be_epsilon": _json_epsilon(float(would_be_epsilon)),
                "epsilon_now": _json_epsilon(now),
                "budget_epsilon": self.budget_in(entries),
            },
        )

    def record_non_dp(
        self, round_: int, *, release: str, what: str, extra: Mapping[str, Any] | None = None
    ) -> Entry:
        """Record, before it leaves, a release of ``round_`` that carries no DP guarantee."""
        _validate_round(round_)
        if release not in NON_DP_KINDS:
            raise ValueError(f"release must be one of {NON_DP_KINDS}, got {release!r}")
        return self.chain.append(NON_DP, {**(extra or {}), "round": round_, "release": release, "what": what})

    def set_budget(self, budget_epsilon: float | None, *, reason: str) -> Entry:
        """Change the budget; the change is an entry of its own with its reason."""
        new = _validate_budget(budget_epsilon)
        if not (isinstance(reason, str) and reason.strip()):
            raise ValueError("a budget change needs a reason")
        old = self.budget_in(self.entries())
        return self.chain.append(BUDGET_CHANGE, {"from": old, "to": new, "reason": reason})
