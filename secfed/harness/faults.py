"""``--fault CLIENT=kill@ROUND:PHASE`` and ``--fault CLIENT=hang@ROUND:PHASE`` for ``secfed simulate``.

The harness only parses and validates these (so a typo fails before any process starts, naming the
flag); the client process does the injecting, from its own ``--fault ACTION@ROUND:PHASE``. The
phases are those at which a client uploads, the only points where dying or hanging is visible to
the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from secfed.secagg.errors import UPLOAD_PHASES as SECAGG_UPLOAD_PHASES

__all__ = ["UPLOAD_PHASES", "ClientFault", "parse_faults"]

UPLOAD_PHASES: tuple[str, ...] = tuple(p.value for p in SECAGG_UPLOAD_PHASES)
_SYNTAX = re.compile(r"^(?P<client>[^=\s]+)=(?P<action>kill|hang)@(?P<round>\d+):(?P<phase>[a-z-]+)$")


@dataclass(frozen=True)
class ClientFault:
    """One client told to die (SIGKILL itself) or hang just before its upload of ``phase`` in ``round``."""

    client: str
    action: Literal["kill", "hang"]
    round: int
    phase: str

    @property
    def client_arg(self) -> str:
        """The value of the client process's own ``--fault``."""
        return f"{self.action}@{self.round}:{self.phase}"

    def as_dict(self) -> dict[str, object]:
        return {"client": self.client, "action": self.action, "round": self.round, "phase": self.phase}


def parse_fault(text: str) -> ClientFault:
    m = _SYNTAX.match(text.strip())
    if m is None:
        raise ValueError(
            f"--fault {text!r}: expected CLIENT=kill@ROUND:PHASE or CLIENT=hang@ROUND:PHASE "
            f"(e.g. inst01=kill@0:masked-input)"
        )
    phase = m.group("phase")
    if phase not in UPLOAD_PHASES:
        raise ValueError(
            f"--fault {text!r}: unknown phase {phase!r}; choose one of {', '.join(UPLOAD_PHASES)}"
        )
    action: Literal["kill", "hang"] = "kill" if m.group("action") == "kill" else "hang"
    return ClientFault(m.group("client"), action, int(m.group("round")), phase)


def parse_faults(texts: Iterable[str], client_ids: Sequence[str], rounds: int) -> tuple[ClientFault, ...]:
    """Parse every ``--fault``; refuse unknown clients, rounds that never run and two faults for one client.

    A client process takes a single fault, and a fault in a round past the last would silently never
    fire, which would make a run look like it tested something it did not.
    """
    faults: list[ClientFault] = []
    seen: set[str] = set()
    for text in texts:
        fault = parse_fault(text)
        if fault.client not in client_ids:
            known = f"{client_ids[0]}..{client_ids[-1]}" if client_ids else "none"
            raise ValueError(f"--fault {text!r}: unknown client {fault.client!r} (clients are {known})")
        if fault.round >= rounds:
            raise ValueError(f"--fault {text!r}: round {fault.round} never runs (rounds are 0..{rounds - 1})")
        if fault.client in seen:
            raise ValueError(
                f"--fault {text!r}: client {fault.client!r} already has a fault (one per client)"
            )
        seen.add(fault.client)
        faults.append(fault)
    return tuple(faults)
