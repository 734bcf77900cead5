"""Privacy-budget audit reports: what was protected, how, by how much, and what was not covered.

Two kinds, both versioned JSON (``format`` / ``version``), later signed (:mod:`secfed.audit.signing`)
and rendered (:mod:`secfed.audit.html`):

* an **institution** report, issued and signed by the institution itself from its own ledgers (its
  privacy ledger is the source of truth for its epsilon; the server never tells it its epsilon),
  plus the server's public round records when they are at hand;
* a **federation** report, issued and signed by the coordinator from its state database (cohorts,
  dropouts, SecAgg parameters, what it learned), quoting each institution's epsilon only from
  institution reports whose signatures verify.

Every figure is recomputed from the ledgers here, never copied from logs; ``secfed audit verify``
recomputes them again and compares.

Coreset selection statistics released under distributed DP (``dp-selection`` ledger entries: Skellam
noise added by every institution before its masked vector leaves) are accounted like training: the
privacy section then carries the training and selection epsilons apart and their composition as
``epsilon``, and the report says what covered them instead of listing them as not covered. Every field
added for them appears only when the ledger has such an entry, so reports signed before they existed
verify unchanged.
"""

from __future__ import annotations

import importlib.metadata
import math
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secfed.chain import HashChain
from secfed.dp.accounting import DpEvent, EpsilonReport
from secfed.dp.ledger import NON_DP_KINDS, composed_report, epsilon_parts, selection_events_in
from secfed.dp.skellam import SkellamEvent

FORMAT = "secfed-audit-report"
VERSION = 1

LIBRARIES = (
    "secfed",
    "torch",
    "transformers",
    "peft",
    "opacus",
    "dp-accounting",
    "cryptography",
    "grpcio",
    "protobuf",
    "numpy",
    "scikit-learn",
)

SELECTION_NOT_COVERED = (
    "Coreset selection statistics (PCA sums, centroid histograms, election slots) are released as "
    "secure-aggregation sums over the cohort without DP noise: the cohort sums themselves are not "
    "covered by epsilon. They are shown to the cohort's members as well (with the evidence that lets "
    "each verify them before it acts on the next plan), so every member learns what the server learns."
)
"""The item of :data:`NOT_COVERED` left out of a report whose selection releases were all DP."""

NOT_COVERED = (
    "Evaluation metrics (loss, Rouge-L, accuracy) computed on held-out data and reported to the "
    "operator are not protected by the DP guarantee.",
    "Hyper-parameter choices and any tuning done by looking at results are not accounted for.",
    SELECTION_NOT_COVERED,
    "The number of institutions with a centroid in each grid cell is released for every cell (it decides "
    "which cells are summed further, at least c + 2 institutions each).",
    "The base model and anything it memorised before federated tuning.",
    "The FedAvg weight and number of rounds an institution took part in, and its participation and "
    "refusals (by category: policy, bounds, budget, inconsistency, released, data), are visible to "
    "the server, as are the session ids an institution attests it abandoned without unmasking.",
    "Adapters a server crafts within the clip bound, and near-repeats of an input (the same records "
    "under a nearby global model, the same features under many projections), are not refused: only "
    "DP covers them.",
    "Secure aggregation protects individual updates only while fewer than the stated colluding bound "
    "of institutions collude with the server; it does not protect the cohort sum.",
    "DP noise is drawn from AES-256-CTR under a fresh OS-random key (secfed/dp/csprng.py), but which "
    "records each DP step samples (Poisson sampling) comes from torch's generator seeded with 43 secret "
    "bits from the OS CSPRNG, not from a CSPRNG itself.",
)


ACCOUNTANT = "PLD (Google dp-accounting), RDP as a conservative cross-check"
ACCOUNTANT_WITH_SELECTION = (
    "Renyi DP composition of the DP-SGD rounds and the Skellam selection releases, converted at delta "
    "with dp-accounting's RDP conversion (the PLD accountant cannot take the Skellam mechanism); the "
    "training rounds alone by PLD"
)


@dataclass(frozen=True)
class ServerFacts:
    """What the coordinator's state database says about a run (read by the CLI, which may import the server)."""

    run_id: str
    federation: str
    task: str
    rounds: Sequence[Mapping[str, Any]]  # round, contributors, dropped, model_hash (hex), summary
    events: Sequence[Mapping[str, Any]]  # the server ledger: seq, kind, round, payload, hash
    integrity_problems: Sequence[str] = ()
    state_path: str = "state/state.sqlite"  # the state database, relative to the report's root

    @property
    def ledger_head(self) -> dict[str, Any]:
        last = self.events[-1] if self.events else None
        return {"entries": len(self.events), "head": str(last["hash"]) if last is not None else None}


@dataclass(frozen=True)
class LedgerRef:
    name: str
    path: str
    entries: int
    head: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "entries": self.entries, "head": self.head}


def code_identification() -> dict[str, Any]:
    """The software that produced the run (this process's versions, and the git commit if any)."""
    versions: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    commit = ""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    version = versions.get("secfed", "unknown") + (f" (git {commit})" if commit else "")
    return {"code_version": version, "libraries": versions}


def _finite(x: float) -> float | None:
    """JSON has no infinity: a non-private release is reported as null epsilon plus ``dp_used``."""
    return x if math.isfinite(x) else None


def _ledger_ref(name: str, path: Path, root: Path) -> LedgerRef:
    chain = HashChain(path)
    entries = chain.entries()
    try:
        shown = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        shown = str(path)
    return LedgerRef(name, shown, len(entries), entries[-1].hash if entries else chain.head())


def _stage_of(label: str) -> str:
    """The stage name in a session label ``<task>.<stage>.a<attempt>``."""
    parts = label.split(".")
    return parts[1] if len(parts) >= 2 else label


def privacy_section(
    privacy_ledger: Path | None, *, limit: int | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``privacy`` section and the per-round ``mechanism`` table, recomputed from the ledger
    (from its first ``limit`` entries: what a report signed earlier covered)."""
    if privacy_ledger is None or not privacy_ledger.exists():
        return {"dp_used": False}, []
    from secfed.dp.ledger import PrivacyLedger

    ledger = PrivacyLedger.open_existing(privacy_ledger)
    entries = ledger.entries()[:limit]
    delta = ledger.delta
    mechanism: list[dict[str, Any]] = []
    over: list[dict[str, Any]] = []
    events: list[DpEvent] = []
    selection: list[SkellamEvent] = []
    selection_releases: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    non_dp: list[dict[str, Any]] = []
    retries: list[dict[str, Any]] = []
    datasets: dict[str, dict[str, Any]] = {}

    def about(body: Mapping[str, Any], what: str) -> None:
        """Count a release against the records it names (older entries name none)."""
        key = str(body.get("dataset") or "")
        if not key:
            return
        row = datasets.setdefault(
            key, {"dataset": key, "data": body.get("data"), "dp_rounds": 0, "non_dp": 0}
        )
        row[what] = row.get(what, 0) + 1  # "dp_selection" only in rows that have any (older reports)

    for entry in entries:
        if entry.kind == "dp-round":
            event = DpEvent.from_mapping(entry.body)
            events.append(event)
            about(entry.body, "dp_rounds")
            spent = composed_report(events, selection, delta)  # the selection released so far included
            over.append(
                {"round": event.round, "epsilon": _finite(spent.pld), "epsilon_rdp": _finite(spent.rdp)}
            )
            mechanism.append(
                {
                    k: entry.body.get(k)
                    for k in (
                        "round",
                        "noise_multiplier",
                        "sample_rate",
                        "steps",
                        "max_grad_norm",
                        "expected_batch_size",
                        "n_records",
                        "empty_batches",
                    )
                }
            )
        elif entry.kind == "dp-selection":
            stage_events = selection_events_in(entry)
            selection += stage_events
            about(entry.body, "dp_selection")
            selection_releases.append(
                {
                    "round": entry.body.get("round"),
                    "stages": [{"what": e.what, "lam": e.lam, "l1": e.l1, "l2": e.l2} for e in stage_events],
                    "dataset": entry.body.get("dataset"),
                }
            )
        elif entry.kind == "budget-refusal":
            refusals.append({"round": entry.body.get("round"), "reason": entry.body.get("reason")})
        elif entry.kind == "non-dp-release":
            non_dp.append({k: entry.body.get(k) for k in ("round", "release", "what", "dataset")})
            about(entry.body, "non_dp")
        elif entry.kind == "dp-resubmission":
            retries.append({"round": entry.body.get("round"), "dataset": entry.body.get("dataset")})
    unbounded = any(r["release"] == "update" for r in non_dp)
    total = composed_report(events, selection, delta)
    if unbounded:  # an update left without DP: no bound, whatever the DP rounds compose to
        total = EpsilonReport(pld=math.inf, rdp=math.inf, delta=delta)
    any_dp = bool(events or selection)
    budget = PrivacyLedger.budget_in(entries) if entries else None
    section: dict[str, Any] = {
        "dp_used": bool(events),
        "delta": delta,
        # No DP release: no bound at all (null), not "epsilon 0".
        "epsilon": _finite(total.pld) if any_dp and not unbounded else None,
        "epsilon_rdp": _finite(total.rdp) if any_dp and not unbounded else None,
        "accountant": ACCOUNTANT_WITH_SELECTION if selection else ACCOUNTANT,
        "budget": budget,
        "budget_left": None
        if budget is None or not math.isfinite(total.pld)
        else max(0.0, budget - total.pld),
        "rounds_trained": [e.round for e in events],
        "over_rounds": over,
        "refusals": refusals,
        # Releases with no DP guarantee (updates trained without DP-SGD, coreset statistics).
        "non_dp_releases": non_dp,
        "no_dp_guarantee_since_round": min(
            (r["round"] for r in non_dp if r["release"] == "update"), default=None
        ),
        # Retried rounds that re-submitted the DP update already released (no new release, no cost).
        "retries": retries,
        # The records the releases were computed from (content hash, name): the ledger is the
        # institution's, shared by its federations, and epsilon composes over all of them.
        "datasets": list(datasets.values()),
    }
    if selection:
        parts = epsilon_parts(events, selection, delta, unbounded=unbounded)
        section.update(
            # The training rounds alone (PLD, null without any), the selection releases alone (RDP);
            # "epsilon" above is their composition, the figure the budget is held to.
            epsilon_training=_finite(parts.training) if events else None,
            epsilon_selection=_finite(parts.selection),
            selection_releases=selection_releases,
        )
    return section, mechanism


def selection_dp_covered(privacy: Mapping[str, Any]) -> bool:
    """Whether every coreset selection release the privacy section lists was DP: it has DP selection
    releases and no selection statistics left without DP noise."""
    non_dp = privacy.get("non_dp_releases") or []
    return bool(privacy.get("selection_releases")) and not any(
        isinstance(r, Mapping) and r.get("release") == "selection" for r in non_dp
    )


def not_covered(*, selection_covered: bool) -> list[str]:
    """What the guarantee does not protect; the selection item only while selection is not known to
    have been DP throughout (it would otherwise claim covered releases uncovered)."""
    return [item for item in NOT_COVERED if not (selection_covered and item == SELECTION_NOT_COVERED)]


def _stages(releases: Sequence[Mapping[str, Any]]) -> str:
    """The stage names of selection releases, each once, in order of first release."""
    names = (str(st.get("what")) for r in releases for st in r.get("stages") or [] if st.get("what"))
    return ", ".join(dict.fromkeys(names)) or "unnamed stages"


def _eps_text(value: Any, unbounded: str = "an unbounded epsilon") -> str:
    return f"epsilon = {value:.3g}" if isinstance(value, float | int) else unbounded


def guarantee_section(privacy: Mapping[str, Any], *, institution: str | None) -> dict[str, Any]:
    who = f"institution {institution}" if institution else "each institution"
    since = privacy.get("no_dp_guarantee_since_round")
    dp_selection = [r for r in privacy.get("selection_releases") or [] if isinstance(r, Mapping)]
    if since is not None:
        plain = (
            f"{who.capitalize()} released model updates trained WITHOUT differential privacy from round {since} "
            "on: its training records have no DP guarantee (epsilon is unbounded), whatever DP rounds it "
            "also took part in. Secure aggregation still ensured the server only saw sums over the whole "
            "cohort, never one institution's update, as long as fewer than the colluding bound of "
            "institutions colluded with it."
        )
    elif privacy.get("dp_used"):
        eps_text = _eps_text(privacy.get("epsilon"))
        seen = "those updates and its DP coreset selection statistics" if dp_selection else "those updates"
        parts = (
            f" (training alone: {_eps_text(privacy.get('epsilon_training'))}; coreset selection alone: "
            f"{_eps_text(privacy.get('epsilon_selection'))}; composed by Renyi DP)"
            if dp_selection
            else ""
        )
        plain = (
            f"The adapter updates that {who} sent were trained with differentially private SGD. Whether "
            f"or not any single training record of {who} was used changes the probability of anything "
            f"the other parties could see from {seen} by at most a factor e^epsilon, except with "
            f"probability delta: here {eps_text} at delta = {privacy.get('delta'):g}{parts}. In addition, "
            "the server only ever saw sums over the whole cohort (secure aggregation), never one "
            "institution's update."
        )
    else:
        plain = (
            f"No differential privacy was applied to the updates of {who}: there is no epsilon bound. "
            "Secure aggregation still ensured the server only saw sums over the whole cohort, never one "
            "institution's update, as long as fewer than the colluding bound of institutions colluded with it."
        )
    if dp_selection:
        plain += (
            f" The coreset selection statistics of {who} ({len(dp_selection)} releases: {_stages(dp_selection)}) "
            f"were released with distributed differential privacy: before each masked vector left, {who} "
            "added its share of Skellam noise, so that every sum decoded through secure aggregation carries "
            "at least the accounted noise as long as no more than the colluding bound of institutions "
            "collude with the server. By themselves they cost "
            f"{_eps_text(privacy.get('epsilon_selection'))} at delta = {privacy.get('delta'):g}."
        )
    selection = [r for r in privacy.get("non_dp_releases") or [] if r.get("release") == "selection"]
    if selection:
        plain += (
            f" Coreset selection statistics of {who} ({len(selection)} releases) carry no DP guarantee; the "
            f"server saw them only as cohort sums over cells of at least c + 2 institutions."
        )
    losses = [r for r in privacy.get("non_dp_releases") or [] if r.get("release") == "loss"]
    if losses:
        plain += (
            f" The training and evaluation losses of {who} ({len(losses)} releases, for the federation's "
            "learning curves) "
            "carry no DP guarantee; with secure aggregation the server saw them only summed with the whole "
            "cohort's."
        )
    covered = [
        "every adapter update the institution released in a round it trained, composed over those rounds",
        "the global adapter and everything computed from the updates (post-processing)",
    ]
    adjacency = "add-or-remove-one record (Poisson-subsampled Gaussian mechanism)"
    accountant = (
        "privacy loss distribution (PLD), with Renyi DP as a cross-check; never the GDP/CLT approximation"
    )
    if dp_selection:
        covered.append(
            f"the coreset selection statistics it released with Skellam noise through secure aggregation "
            f"({_stages(dp_selection)}), composed with its training releases"
        )
        adjacency = (
            "add-or-remove-one record (Poisson-subsampled Gaussian mechanism for training; Skellam "
            "mechanism for coreset selection statistics)"
        )
        accountant = (
            "Renyi DP composition of the training rounds and the Skellam selection releases (the PLD "
            "accountant cannot take the Skellam mechanism), training alone by privacy loss distribution "
            "(PLD); never the GDP/CLT approximation"
        )
    return {
        "dp_used": bool(privacy.get("dp_used")) and since is None,
        "plain": plain,
        "privacy_unit": "one training sequence (one instruction record) held by one institution",
        "adjacency": adjacency,
        "covered": covered,
        "accountant": accountant,
    }


def _base_model_hash(facts: ServerFacts | None) -> str | None:
    for record in facts.rounds if facts is not None else ():
        for stage in (record.get("summary") or {}).get("stages", {}).values():
            value = (stage.get("broadcast") or {}).get("base_hash")
            if value:
                return str(value)
    return None


def _identification(facts: ServerFacts | None, code: Mapping[str, Any]) -> dict[str, Any]:
    rounds = list(facts.rounds) if facts is not None else []
    return {
        "run_id": facts.run_id if facts is not None else None,
        "federation": facts.federation if facts is not None else None,
        "task": facts.task if facts is not None else None,
        **code,
        "base_model_hash": _base_model_hash(facts),
        "final_adapter_hash": str(rounds[-1]["model_hash"]) if rounds else None,
        "rounds_completed": len(rounds),
    }


def _stage_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for stage, facts in ((record.get("summary") or {}).get("stages") or {}).items():
        rows.append(
            {
                "round": record["round"],
                "stage": stage,
                **{k: facts.get(k) for k in ("n", "threshold", "colluding", "min_cohort", "ring_bits")},
                "segments": {
                    name: {"length": seg.get("length"), "frac_bits": seg.get("frac_bits")}
                    for name, seg in (facts.get("segments") or {}).items()
                },
                "clipped_fraction": None,
                "contributors": facts.get("contributors"),
                "dropped": facts.get("dropped"),
            }
        )
    return rows


def round_selection(stages: Mapping[str, Any]) -> dict[str, Any] | None:
    """The coreset selection of a round (FedHDS), from the public summary of its train stage (older run
    directories kept it in the stage's broadcast)."""
    for facts in stages.values():
        found = facts.get("summary") or (facts.get("broadcast") or {}).get("selection_summary")
        if isinstance(found, Mapping) and "selected" in found:
            return {
                "selected": found.get("selected"),
                "records": found.get("records"),
                "fraction": found.get("fraction"),
                "mode": found.get("mode"),
            }
    return None


def _round_rows(facts: ServerFacts | None, institution: str | None) -> list[dict[str, Any]]:
    if facts is None:
        return []
    refused: dict[int, list[str]] = {}
    aborted: dict[int, list[str]] = {}
    for event in facts.events:
        payload = event.get("payload") or {}
        if event.get("kind") == "client_refused" and isinstance(event.get("round"), int):
            refused.setdefault(int(event["round"]), []).append(str(payload.get("client")))
        if event.get("kind") == "attempt_aborted" and isinstance(payload.get("round"), int):
            aborted.setdefault(int(payload["round"]), []).append(str(payload.get("reason")))
    rows = []
    for record in facts.rounds:
        summary = record.get("summary") or {}
        stages = summary.get("stages") or {}
        row: dict[str, Any] = {
            "round": record["round"],
            "contributors": len(record.get("contributors") or []),
            "dropped": len(record.get("dropped") or []),
            "refused": refused.get(int(record["round"]), []),
            # Attempts of this round that were abandoned and retried, with the server's reason.
            "retried_after": aborted.get(int(record["round"]), []),
            "learned": {name: st.get("sums", {}) for name, st in stages.items()},
            "selection": round_selection(stages),
        }
        if institution is not None:
            row["participated"] = institution in (record.get("contributors") or [])
        rows.append(row)
    return rows


def institution_report(
    institution: str,
    *,
    root: Path,
    audit_ledger: Path | None,
    privacy_ledger: Path | None,
    server: ServerFacts | None,
    empirical: Mapping[str, Any] | None = None,
    code: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report an institution signs about itself, from its ledgers (and the server's public records)."""
    privacy, mechanism = privacy_section(privacy_ledger)
    ledgers: list[LedgerRef] = []
    sessions: list[dict[str, Any]] = []
    if privacy_ledger is not None and privacy_ledger.exists():
        ledgers.append(_ledger_ref("privacy", privacy_ledger, root))
    if audit_ledger is not None and audit_ledger.exists():
        ref = _ledger_ref("audit", audit_ledger, root)
        ledgers.append(ref)
        for entry in HashChain(audit_ledger).entries():
            if entry.kind == "session":
                b = entry.body
                sessions.append(
                    {
                        "round": b.get("round"),
                        "stage": _stage_of(str(b.get("label", ""))),
                        **{k: b.get(k) for k in ("n", "threshold", "colluding", "min_cohort", "ring_bits")},
                        "segments": b.get("segments", {}),
                        "clipped_fraction": b.get("clipped_fraction"),
                        "session_id": b.get("session_id"),
                    }
                )
    if server is not None:
        ledgers.append(LedgerRef("server-state", server.state_path, **server.ledger_head))
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": "institution",
        "institution": institution,
        "generated_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "identification": _identification(server, code or code_identification()),
        "guarantee": guarantee_section(privacy, institution=institution),
        "mechanism": mechanism,
        "privacy": privacy,
        "secure_aggregation": sessions,
        "rounds": _round_rows(server, institution),
        "not_covered": not_covered(selection_covered=selection_dp_covered(privacy)),
        "empirical_audit": dict(empirical) if empirical else None,
        "ledgers": [ref.to_json() for ref in ledgers],
    }


def quote_institution(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the federation report says of one institution: taken from its verified report only (also
    what ``audit verify`` recomputes to check the quote)."""
    privacy = report.get("privacy") or {}
    quote = {
        "dp_used": bool(privacy.get("dp_used")),
        "epsilon": privacy.get("epsilon"),
        "epsilon_rdp": privacy.get("epsilon_rdp"),
        "delta": privacy.get("delta"),
        "budget": privacy.get("budget"),
        "rounds_trained": privacy.get("rounds_trained", []),
        "refusals": len(privacy.get("refusals", [])),
        "refused_rounds": [r.get("round") for r in privacy.get("refusals", [])],
        "retried_rounds": [r.get("round") for r in privacy.get("retries", [])],
        "non_dp_releases": {
            kind: sum(1 for r in privacy.get("non_dp_releases", []) if r.get("release") == kind)
            for kind in NON_DP_KINDS
        },
        "no_dp_guarantee_since_round": privacy.get("no_dp_guarantee_since_round"),
        "over_rounds": privacy.get("over_rounds", []),
        "report_verified": True,
    }
    if privacy.get("selection_releases"):  # only then: quotes of older reports stay as they were
        quote.update(
            epsilon_training=privacy.get("epsilon_training"),
            epsilon_selection=privacy.get("epsilon_selection"),
            dp_selection_releases=len(privacy.get("selection_releases") or []),
            selection_dp_covered=selection_dp_covered(privacy),
        )
    return quote


def federation_selection_covered(quoted: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether every quoted institution's selection releases were all DP (the federation report then
    leaves the selection item out of what is not covered, as each of those reports does)."""
    return bool(quoted) and all(q.get("selection_dp_covered") is True for q in quoted.values())


def federation_guarantee(quoted: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The federation's guarantee in words, from the quoted institutions (recomputed by ``verify``)."""
    guarantee = guarantee_section({"dp_used": False}, institution=None)
    without = sorted(cid for cid, q in quoted.items() if q.get("no_dp_guarantee_since_round") is not None)
    if any(q.get("dp_used") for q in quoted.values()):
        guarantee["dp_used"] = not without
        guarantee["plain"] = (
            "Each institution accounts its own privacy loss from its own ledger; the figures below are "
            "quoted from each institution's signed report. The server only ever saw sums over the whole "
            "cohort (secure aggregation), never one institution's update."
        )
        guarantee["plain"] += (
            f" Institution(s) {', '.join(without)} released model updates trained WITHOUT differential "
            "privacy: their records have no DP guarantee (see each one's report)."
            if without
            else " Every institution trained with differentially private SGD."
        )
    with_selection = sorted(cid for cid, q in quoted.items() if q.get("dp_selection_releases"))
    if with_selection:
        guarantee["plain"] += (
            f" The coreset selection statistics of institution(s) {', '.join(with_selection)} were released "
            "with distributed differential privacy (Skellam noise added by each institution through secure "
            "aggregation); each one's epsilon includes them."
        )
    return guarantee


def federation_report(
    server: ServerFacts,
    *,
    institutions: Mapping[str, Mapping[str, Any]],
    empirical: Mapping[str, Any] | None = None,
    code: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The coordinator's report; ``institutions`` maps id -> that institution's *verified* report."""
    quoted = {cid: quote_institution(report) for cid, report in sorted(institutions.items())}
    guarantee = federation_guarantee(quoted)
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": "federation",
        "generated_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "identification": _identification(server, code or code_identification()),
        "guarantee": guarantee,
        "institutions": quoted,
        "secure_aggregation": [row for record in server.rounds for row in _stage_rows(record)],
        "rounds": _round_rows(server, None),
        "integrity": {
            "state_database_ok": not server.integrity_problems,
            "problems": list(server.integrity_problems),
        },
        "not_covered": not_covered(selection_covered=federation_selection_covered(quoted)),
        "empirical_audit": dict(empirical) if empirical else None,
        "ledgers": [LedgerRef("server-state", server.state_path, **server.ledger_head).to_json()],
    }
