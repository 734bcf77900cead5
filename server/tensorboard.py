"""Optional TensorBoard event files of the per-round curves (``[tensorboard] logdir`` in the server TOML).

Why: a data scientist follows a federated run the way they follow a local one, with
``tensorboard --logdir <logdir>``: one scalar per completed round (the global step is the round number)
for the cohort-mean training loss of the round's first and last local step and the cohort-mean loss of
the adapter the institutions received on records they hold out of training (``report_eval``), how long the round and each
of its phases took, how many institutions contributed and how many dropped, and running counts of
aborted attempts and refused rounds. The Prometheus endpoint (``server/metrics.py``) answers the
operator's "is it healthy now"; these files keep the whole history of the run for plotting.

What is written is only what the server already learned and logs: counts, phase times and the
cohort's *mean* loss, which ``secfed.fl.curves.cohort_loss`` derives from the secure sum. Nothing
per institution (no client id, no single loss, no update) reaches the files, so they can be shared
with whoever may see the progress line.

Why ``tensorboardX`` (the ``tensorboard`` extra) and not ``torch.utils.tensorboard``: torch's writer
refuses to import without the full ``tensorboard`` package (its web app and its dependencies) just to
write event files, and it lives in torch, which a coordinator need not load to write curves (the toy
task never does). tensorboardX writes the same event format with protobuf and numpy. It does import
torch opportunistically where torch is installed, as in this project's core install; an LLM task's
coordinator has it loaded already. It is imported inside the constructor, so the core install imports
this module without the extra, and the runtime can say which extra is missing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from secfed.fl.curves import cohort_eval, cohort_loss
from secfed.fl.tasks import StageResult
from secfed.secagg.messages import AggregateResult
from server.coordinator import CoordinatorObserver

__all__ = ["TensorBoardCurves"]

#: tensorboardX's writer thread flushes its file only every ``flush_secs``, and ``SummaryWriter.flush``
#: flushes only what that thread has already taken off its queue: a short period bounds how long a
#: round's scalars can wait before a live TensorBoard sees them.
_FLUSH_SECS = 1


class TensorBoardCurves(CoordinatorObserver):
    """Coordinator events as TensorBoard scalars in ``logdir``, one step per round.

    Called with the coordinator's lock held; its own lock only orders :meth:`close` (from the server's
    ``stop``) against a late event, so nothing is written after the file is closed (tensorboardX would
    silently open a new one).
    """

    def __init__(self, logdir: Path) -> None:
        from tensorboardX import SummaryWriter  # the ``tensorboard`` extra; ImportError goes to the caller

        self.logdir = logdir
        self._writer: Any = SummaryWriter(str(logdir), flush_secs=_FLUSH_SECS)  # creates logdir
        self._lock = threading.Lock()
        # Counted by this server process, like the Prometheus counters: a restarted server starts at 0.
        self.aborted = 0
        self.refusals = 0

    def _scalars(self, step: int, scalars: dict[str, float]) -> None:
        with self._lock:
            if self._writer is None:
                return
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the server's ``stop`` closes the file)."""
        return self._writer is None

    def close(self) -> None:
        """Write what is pending and close the event file; later events are dropped. Idempotent."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- observer ------------------------------------------------------------------------------
    def attempt_aborted(self, round_: int, attempt: int, reason: str) -> None:
        self.aborted += 1
        self._scalars(round_, {"attempts/aborted": float(self.aborted)})

    def client_refused(self, round_: int, client_id: str, reason: str) -> None:
        self.refusals += 1  # a count only: who refused stays in the operator's log and state database
        self._scalars(round_, {"refusals": float(self.refusals)})

    def round_completed(
        self,
        round_: int,
        result: AggregateResult,
        model: np.ndarray,
        started: float,
        phases: dict[str, float],
        stages: Sequence[StageResult],
    ) -> None:
        # The round's duration as FederationMetrics reports it: the phases' seconds, measured on the
        # coordinator's own (injectable) clock, which ``started`` also comes from.
        scalars = {
            "round/seconds": float(sum(phases.values())),
            "round/contributors": float(len(result.contributors)),
            "round/dropped": float(len(result.dropped)),
        }
        for phase, seconds in phases.items():
            scalars[f"phase_seconds/{phase}"] = float(seconds)
        loss = cohort_loss(result.values)  # the cohort's mean from the secure sum; None without report_loss
        if loss is not None:
            scalars["loss/train_first"], scalars["loss/train_last"] = loss
        evaluated = cohort_eval(result.values)  # the received adapter on held-out records (report_eval)
        if evaluated is not None:
            scalars["loss/eval"] = evaluated
        self._scalars(round_, scalars)
