"""Fault injection for the local harness and the reliability tests: die or hang at a chosen point.

``kill@ROUND:PHASE`` makes the process SIGKILL itself just before sending its upload for PHASE in
ROUND (so the server sees a client vanish mid-round); ``hang@ROUND:PHASE`` makes it stop answering
there while keeping its connections open (so the server's phase deadline has to fire).
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Literal

from secfed.secagg.errors import UPLOAD_PHASES, Phase

_UPLOAD_PHASES = {p.value: p for p in UPLOAD_PHASES}
_SPEC = re.compile(r"^(kill|hang)@(\d+):([a-z-]+)$")


@dataclass(frozen=True)
class Fault:
    action: Literal["kill", "hang"]
    round: int
    phase: Phase

    @classmethod
    def parse(cls, text: str) -> Fault:
        m = _SPEC.match(text.strip())
        if m is None or m.group(3) not in _UPLOAD_PHASES:
            raise ValueError(
                f"fault {text!r} must look like kill@ROUND:PHASE or hang@ROUND:PHASE with PHASE one of "
                f"{sorted(_UPLOAD_PHASES)}"
            )
        action: Literal["kill", "hang"] = "kill" if m.group(1) == "kill" else "hang"
        return cls(action, int(m.group(2)), _UPLOAD_PHASES[m.group(3)])

    def maybe_trigger(self, round_: int, phase: Phase) -> None:
        if (round_, phase) != (self.round, self.phase):
            return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # hang: never answer again; the harness or the operator ends the process
            time.sleep(3600)
