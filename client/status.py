"""``secfed status --client client.toml``: what this institution has taken part in and released.

The institution's own view, from its own files only (nothing is asked of the server): the sessions its
audit ledger records (rounds and stages it contributed to), the rounds it refused and why (the full
reason stays here; the server was told a category), the inputs its release log holds, and its privacy
ledger's account: epsilon spent against its budget, and every release without DP. Read-only: no ledger
is created or changed by looking at it (a client may be running).
"""

from __future__ import annotations

from typing import Any

from client.config import ClientConfig
from secfed.audit.report import privacy_section
from secfed.chain import HashChain
from secfed.fl.releases import ReleaseLog
from secfed.home import default_privacy_ledger, default_release_log
from secfed.pki.kit import load_kit

__all__ = ["format_client_status", "read_client_status"]

_RECENT = 10


def read_client_status(config: ClientConfig) -> dict[str, Any]:
    """The institution's status (JSON-able) from the files ``config`` names."""
    institution = load_kit(config.kit).client_id
    privacy_ledger = config.privacy.ledger or default_privacy_ledger(institution)
    release_log = config.release_log or default_release_log(institution)
    sessions: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    if config.audit_ledger.exists():
        for entry in HashChain(config.audit_ledger).entries():
            body = entry.body
            if entry.kind == "session":
                sessions.append({"round": body.get("round"), "label": body.get("label"), "n": body.get("n")})
            elif entry.kind in ("round-refused", "session-refused"):
                refusals.append(
                    {
                        "round": body.get("round"),
                        "kind": entry.kind,
                        "why": body.get("reason") or body.get("error"),
                        "category": body.get("category"),
                    }
                )
    privacy, _ = privacy_section(privacy_ledger if privacy_ledger.exists() else None)
    return {
        "institution": institution,
        "audit_ledger": str(config.audit_ledger),
        "privacy_ledger": str(privacy_ledger) if privacy_ledger.exists() else None,
        "release_log": str(release_log) if release_log.exists() else None,
        "rounds_contributed": sorted({int(s["round"]) for s in sessions if s["round"] is not None}),
        "sessions": len(sessions),
        "recent_sessions": sessions[-_RECENT:],
        "refusals": len(refusals),
        "recent_refusals": refusals[-_RECENT:],
        "inputs_released": len(ReleaseLog(release_log)) if release_log.exists() else 0,
        "privacy": {
            "dp_used": bool(privacy.get("dp_used")),
            "epsilon": privacy.get("epsilon"),
            "delta": privacy.get("delta"),
            "budget": privacy.get("budget"),
            "non_dp_releases": len(privacy.get("non_dp_releases") or []),
            "no_dp_guarantee_since_round": privacy.get("no_dp_guarantee_since_round"),
        },
    }


def format_client_status(status: dict[str, Any]) -> str:
    """The institution's status as a few lines for a terminal."""
    p = status["privacy"]
    rounds = status["rounds_contributed"]
    lines = [
        f"institution {status['institution']}",
        f"rounds contributed to: {len(rounds)}" + (f" (last: {rounds[-1]})" if rounds else ""),
        f"inputs released: {status['inputs_released']} (release log: {status['release_log'] or 'none yet'})",
    ]
    if p["no_dp_guarantee_since_round"] is not None:
        lines.append(
            f"privacy: no DP guarantee since round {p['no_dp_guarantee_since_round']} "
            f"({p['non_dp_releases']} releases without DP)"
        )
    elif p["dp_used"]:
        budget = f" of a budget of {p['budget']:g}" if p["budget"] is not None else ""
        lines.append(f"privacy: epsilon {p['epsilon']:.3g}{budget} at delta {p['delta']:g}")
    else:
        lines.append(
            f"privacy: nothing released under DP yet (ledger: {status['privacy_ledger'] or 'none yet'})"
        )
    if status["refusals"]:
        lines.append(f"refused: {status['refusals']}")
        lines += [f"  round {r['round']}: {r['why']}" for r in status["recent_refusals"]]
    return "\n".join(lines)
