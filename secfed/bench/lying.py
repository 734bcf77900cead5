"""A lying server: a hook on every message the server sends, for the in-process runner.

The adversarial catalogue (:mod:`secfed.bench.attacks`, ``tests/adversarial``) plays a server that
controls everything it sends: each institution's round start (instruction, session configuration,
global model, the previous stage's evidence) and every relay. The honest
:class:`~server.coordinator.Coordinator` computes what an honest server would send; a :class:`Lie`
rewrites it per recipient before the institution sees it (:func:`secfed.bench.inprocess.drive`
records what the server obtained: every stage sum, and which instruction each contributor had).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from secfed.fl.instruction import instruction_hash
from secfed.fl.participant import Relay, StageStart, Upload

__all__ = ["Lie", "resign"]


class Lie:
    """What the server changes, per recipient; the default changes nothing (an honest server).

    ``accept_any_advert``: the lying server's own session takes every advert, whatever configuration
    it was signed for (an honest session refuses those), so members handed different instructions
    end up in one advert list, as they would behind a server that wants their sum.
    """

    accept_any_advert = False

    def start(self, cid: str, start: StageStart) -> StageStart:
        return start

    def relay(self, cid: str, msg: Relay) -> Relay:
        return msg

    def upload(self, cid: str, msg: Upload) -> None:
        """Sees every upload (including those the honest session then refuses)."""


def resign(start: StageStart, task_config: Mapping[str, Any]) -> StageStart:
    """``start`` with another instruction *and* the matching instruction hash in its configuration:
    the lie a recipient cannot catch alone (only the cross-check of adverts can)."""
    config = replace(start.config, instruction_hash=instruction_hash(start.task, task_config))
    return replace(start, task_config=dict(task_config), config=config)
