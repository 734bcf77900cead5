"""Where an institution keeps what outlives one federation: its privacy ledger and its release log.

Both are about the institution's *records*, not about one deployment: a second federation over the same
records must compose with the first (privacy ledger) and must never get the same input summed over
another cohort (release log). So their default home is per institution on the machine,
``$SECFED_HOME/<institution>/`` (``SECFED_HOME`` defaults to ``~/.secfed``), never a path relative to
one federation's configuration file, which a second deployment directory would silently start afresh.
A configuration may still name other files (a shared volume, say); all its federations must then name
the same ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from secfed.crypto.identity import is_valid_client_id

__all__ = ["HOME_ENV", "default_privacy_ledger", "default_release_log", "institution_home"]

HOME_ENV = "SECFED_HOME"


def institution_home(institution: str) -> Path:
    """``$SECFED_HOME/<institution>`` (``~/.secfed/<institution>`` when the variable is unset)."""
    if not is_valid_client_id(institution) or not institution.strip("."):
        raise ValueError(f"not an institution id: {institution!r}")
    root = Path(os.environ.get(HOME_ENV) or str(Path.home() / ".secfed")).expanduser()
    if not root.is_absolute():
        # Relative to wherever a process happens to start, two federations would keep two ledgers.
        raise ValueError(f"{HOME_ENV}={root} must be an absolute path (the institution's ledgers live there)")
    return root / institution


def default_privacy_ledger(institution: str) -> Path:
    return institution_home(institution) / "privacy-ledger.jsonl"


def default_release_log(institution: str) -> Path:
    return institution_home(institution) / "releases.jsonl"
