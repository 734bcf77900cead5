"""The entries an institution writes to its audit ledger, built once for every runtime that writes them.

``secfed client`` (client/runtime.py) and the Ray backend's virtual institutions
(secfed/harness/virtual.py) keep the same hash-chained audit ledger, which ``secfed audit report`` reads
(:mod:`secfed.audit.report`); one function per entry kind keeps the two from drifting apart.
"""

from __future__ import annotations

from typing import Any

from secfed.secagg.client import ClientSession
from secfed.secagg.config import SessionConfig

__all__ = ["session_entry"]


def session_entry(config: SessionConfig, session: ClientSession) -> dict[str, Any]:
    """The ``session`` entry, written after the institution's unmask response: the session's public
    parameters and what share of its input the encoder clipped."""
    report = session.encode_report
    return {
        "round": config.round,
        "label": config.label,
        "session_id": session.session_id.hex(),
        "n": len(config.roster),
        "threshold": config.threshold,
        "colluding": config.n_colluding,
        "min_cohort": config.min_cohort,
        "ring_bits": config.spec.ring_bits,
        "segments": {s.name: {"length": s.length, "frac_bits": s.frac_bits} for s in config.spec.segments},
        "clipped_fraction": report.clipped_fraction if report is not None else None,
    }
