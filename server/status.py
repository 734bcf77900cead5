"""``secfed status``: where a federation run stands, read from the coordinator's state database.

Safe while the server runs: the database is opened read-only (:meth:`StateStore.open_read_only`), and
SQLite's write-ahead log lets a reader see the last committed state without blocking the writer. What
it shows is what the coordinator committed: the run, rounds completed of the plan, the attempt open
now and for how long, each completed round's contributors, dropouts and duration, aborted attempts
with their reasons, refusals (by category, as institutions send them), members excluded with the
evidence's reason, and an estimate of the time left (mean round time so far x rounds left).

The database does not hold what only the running coordinator knows: the open phase and its
deadline, the cohort and whom it still waits for, and when each institution was last heard from. An
operator gets that too by asking the coordinator itself over mutual TLS with an operator kit
(``secfed status --operator KIT``: the Operator service, server/operator.py); it fills ``live``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Every value is shown escaped: a reason or id that came from elsewhere cannot forge lines or move
# the cursor.
from secfed.logs import shown as _shown
from server.state import StateStore

__all__ = ["RunStatus", "format_status", "read_status"]

_RECENT = 10  # completed rounds, aborts and refusals listed in full (all are counted)


@dataclass(frozen=True)
class RunStatus:
    """A snapshot of one run (JSON-able with :func:`dataclasses.asdict`)."""

    state_db: str
    run_id: str
    rounds_planned: int | None
    rounds_completed: int
    open_attempt: dict[str, Any] | None
    finished: bool
    mean_round_s: float | None
    eta_s: float | None
    recent_rounds: list[dict[str, Any]] = field(default_factory=list)
    aborted_attempts: int = 0
    recent_aborts: list[dict[str, Any]] = field(default_factory=list)
    refusals: int = 0
    recent_refusals: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    at: float = 0.0
    live: dict[str, Any] | None = (
        None  # from the running coordinator (Coordinator.live_view); None: not asked
    )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: object) -> RunStatus:
        """A status document as received from a coordinator; ValueError naming what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError(f"a status document is a JSON object, got {type(doc).__name__}")
        missing = sorted(f for f in _REQUIRED if f not in doc)
        if missing:
            raise ValueError(f"the status document lacks {', '.join(missing)}")
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        for name, value in fields.items():
            kinds = _KINDS[name]
            if isinstance(value, bool) is not (bool in kinds) or not isinstance(value, kinds):
                raise ValueError(f"the status document's {name} is a {type(value).__name__}")
        for name in ("recent_rounds", "recent_aborts", "recent_refusals"):
            if not all(isinstance(item, dict) for item in fields.get(name, [])):
                raise ValueError(f"the status document's {name} holds something other than objects")
        return cls(**fields)


_REQUIRED = ("state_db", "run_id", "rounds_completed", "finished")
_NUMBER = (int, float)
#: The JSON types each field of a status document may have (None where the field is optional).
_KINDS: dict[str, tuple[type, ...]] = {
    "state_db": (str,),
    "run_id": (str,),
    "rounds_planned": (int, type(None)),
    "rounds_completed": (int,),
    "open_attempt": (dict, type(None)),
    "finished": (bool,),
    "mean_round_s": (*_NUMBER, type(None)),
    "eta_s": (*_NUMBER, type(None)),
    "recent_rounds": (list,),
    "aborted_attempts": (int,),
    "recent_aborts": (list,),
    "refusals": (int,),
    "recent_refusals": (list,),
    "excluded": (dict,),
    "at": _NUMBER,
    "live": (dict, type(None)),
}


def read_status(state_db: Path, *, rounds_planned: int | None = None, now: float | None = None) -> RunStatus:
    """The run's status from its state database (``rounds_planned`` from the server configuration, if
    known: the database does not store the plan)."""
    now = time.time() if now is None else now
    store = StateStore.open_read_only(state_db)
    try:
        rounds, attempts, events = store.snapshot()
    finally:
        store.close()
    durations = [r.finished_at - r.started_at for r in rounds]
    completed = len(rounds)
    open_ = next((a for a in attempts if a["state"] == "begun"), None)
    finished = rounds_planned is not None and completed >= rounds_planned
    mean = sum(durations) / len(durations) if durations else None
    left = None if rounds_planned is None else max(0, rounds_planned - completed)
    eta = None
    if mean is not None and left is not None:
        elapsed = now - open_["began_at"] if open_ is not None else 0.0
        eta = max(0.0, mean * left - min(elapsed, mean))
    aborts = [
        {"round": a["round"], "attempt": a["attempt"], "reason": a["reason"]}
        for a in attempts
        if a["state"] == "aborted"
    ]
    refusals = [
        {"round": e["round"], "client": e["payload"].get("client"), "reason": e["payload"].get("reason")}
        for e in events
        if e["kind"] == "client_refused"
    ]
    excluded = {
        str(e["payload"].get("client")): str(e["payload"].get("reason"))
        for e in events
        if e["kind"] == "member_excluded"
    }
    return RunStatus(
        state_db=str(state_db),
        run_id=store.run_id,
        rounds_planned=rounds_planned,
        rounds_completed=completed,
        open_attempt=(
            None
            if open_ is None
            else {
                "round": open_["round"],
                "attempt": open_["attempt"],
                "running_s": round(now - open_["began_at"], 1),
            }
        ),
        finished=finished,
        mean_round_s=None if mean is None else round(mean, 1),
        eta_s=None if eta is None else round(eta),
        recent_rounds=[
            {
                "round": r.round,
                "contributors": list(r.contributors),
                "dropped": list(r.dropped),
                "seconds": round(d, 1),
            }
            for r, d in list(zip(rounds, durations, strict=True))[-_RECENT:]
        ],
        aborted_attempts=len(aborts),
        recent_aborts=aborts[-_RECENT:],
        refusals=len(refusals),
        recent_refusals=refusals[-_RECENT:],
        excluded=excluded,
        at=now,
    )


def _fixed(value: object, digits: int) -> str:
    """A number with ``digits`` decimals; ValueError for anything else (a malformed remote document)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) < 1e15:
        raise ValueError(f"expected a number of seconds, got {_shown(value)}")
    return f"{value:.{digits}f}"


def _names(values: object) -> str:
    """A list of ids as ``a, b, c``, each shown escaped."""
    if not isinstance(values, list):
        raise ValueError(f"expected a list of ids, got {_shown(values)}")
    return ", ".join(_shown(v) for v in values)


def format_status(status: RunStatus) -> str:
    """The snapshot as a few lines for a terminal. Every value is shown escaped: a status document may
    come from a coordinator over the network (:func:`format_remote_status`)."""
    planned = f" of {_shown(status.rounds_planned)}" if status.rounds_planned is not None else ""
    lines = [f"run {_shown(status.run_id)} ({_shown(status.state_db)})"]
    state = "finished" if status.finished else "running or stopped"
    lines.append(f"rounds completed: {_shown(status.rounds_completed)}{planned} ({state})")
    if status.open_attempt is not None:
        a = status.open_attempt
        lines.append(
            f"open now: round {_shown(a['round'])}, attempt {_shown(a['attempt'])}, "
            f"for {_fixed(a['running_s'], 0)} s"
        )
    if status.mean_round_s is not None:
        eta = f", about {_fixed(status.eta_s, 0)} s to go" if status.eta_s else ""
        lines.append(f"mean round: {_fixed(status.mean_round_s, 1)} s{eta}")
    for r in status.recent_rounds:
        dropped = f", dropped {_names(r['dropped'])}" if r["dropped"] else ""
        lines.append(
            f"  round {_shown(r['round'])}: {len(r['contributors'])} contributors{dropped}, "
            f"{_fixed(r['seconds'], 1)} s"
        )
    if status.aborted_attempts:
        lines.append(f"aborted attempts: {_shown(status.aborted_attempts)}")
        lines += [
            f"  round {_shown(a['round'])} attempt {_shown(a['attempt'])}: {_shown(a['reason'])}"
            for a in status.recent_aborts
        ]
    if status.refusals:
        lines.append(f"refusals: {_shown(status.refusals)}")
        lines += [
            f"  round {_shown(r['round'])}: {_shown(r['client'])} ({_shown(r['reason'])})"
            for r in status.recent_refusals
        ]
    if status.excluded:
        lines.append("excluded members:")
        lines += [f"  {_shown(client)}: {_shown(why)}" for client, why in sorted(status.excluded.items())]
    if status.live is not None:
        lines += _live_lines(status.live)
    return "\n".join(lines)


def format_remote_status(document: object) -> str:
    """A status document received from a coordinator, for a terminal; ValueError (never another
    exception, never a control character printed) when it is not the document it should be."""
    try:
        return format_status(RunStatus.from_json(document))
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
        raise ValueError(f"the coordinator's status document is malformed: {_shown(exc)}") from exc


def _live_lines(live: dict[str, Any]) -> list[str]:
    """The running coordinator's own view (see :meth:`server.coordinator.Coordinator.live_view`)."""
    lines = ["live (from the coordinator):"]
    now = live.get("open")
    if isinstance(now, dict):
        deadline = now.get("deadline_s")
        due = (
            "not started (no member has polled yet)" if deadline is None else f"{_fixed(deadline, 0)} s left"
        )
        lines.append(
            f"  round {_shown(now.get('round'))} attempt {_shown(now.get('attempt'))}, stage {_shown(now.get('stage'))}, "
            f"phase {_shown(now.get('phase'))}: {due}"
        )
        cohort = now.get("cohort") or []
        lines.append(f"  cohort ({len(cohort)}): {_names(cohort)}")
        if now.get("waiting_for"):
            lines.append(f"  waiting for: {_names(now['waiting_for'])}")
        if now.get("refused"):
            lines.append(f"  refused this attempt: {_names(now['refused'])}")
    elif live.get("finished"):
        lines.append(f"  finished: {_shown(live['finished'])}")
    seen = live.get("last_seen_s_ago") or {}
    if isinstance(seen, dict) and seen:
        lines.append(
            "  last heard from: " + ", ".join(f"{_shown(c)} {_fixed(s, 0)} s ago" for c, s in seen.items())
        )
    return lines
