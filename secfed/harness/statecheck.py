"""``python -m secfed.harness.statecheck STATE_DB``: audit a coordinator's state database, print JSON.

This runs in a child process because the ``secfed`` library must not import the ``server`` package
(the harness drives the server only through processes and files); the import below happens only
when this module is run. It reports :meth:`server.state.StateStore.integrity_check`'s problems plus
what the harness cross-checks against ``rounds.jsonl``: the completed rounds, every session id and
whether any was opened twice (two sessions sharing an id would let their masks cancel).

Exit status: 0 sound, 1 problems found, 2 the file could not be opened as a state store.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["audit", "main"]


def audit(db: Path) -> dict[str, Any]:
    """Everything the harness reports about the state database (see the module docstring)."""
    from server.state import StateError, StateStore

    if not db.is_file():
        return {"db": str(db), "ok": False, "problems": [f"{db}: no state database"], "opened": False}
    try:
        store = StateStore(db)
    except (StateError, OSError) as exc:
        return {"db": str(db), "ok": False, "problems": [str(exc)], "opened": False}
    with store:
        problems = store.integrity_check()
        rounds = store.rounds()
        ledger = store.ledger()
        used = store.used_session_ids()
        run_id = store.run_id
    opened = Counter(
        e["payload"].get("session_id")
        for e in ledger
        if e["kind"] == "session_opened" and isinstance(e["payload"], dict)
    )
    reopened = sorted(str(s) for s, n in opened.items() if n > 1)
    problems += [f"session id {s} opened more than once" for s in reopened]
    return {
        "db": str(db),
        "opened": True,
        "ok": not problems,
        "problems": problems,
        "run_id": run_id,
        "rounds": [
            {
                "round": r.round,
                "contributors": list(r.contributors),
                "dropped": list(r.dropped),
                "model_hash": r.model_hash.hex(),
            }
            for r in rounds
        ],
        "session_ids": sorted(s.hex() for s in used),
        "attempts_begun": sum(1 for e in ledger if e["kind"] == "attempt_begun"),
        "aborted_attempts": [
            {"round": e["round"], "reason": e["payload"].get("reason")}
            for e in ledger
            if e["kind"] == "attempt_aborted" and isinstance(e["payload"], dict)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m secfed.harness.statecheck STATE_DB", file=sys.stderr)
        return 2
    report = audit(Path(args[0]))
    print(json.dumps(report, indent=2))
    if not report["opened"]:
        return 2
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
