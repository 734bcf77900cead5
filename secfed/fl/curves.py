"""Secure learning curves: each institution's losses summed with the cohort's, never alone.

When a FedIT federation sets ``report_loss``, every update carries three more segments: the loss of the
institution's first and last local step of the round, each clipped to ``[0, LOSS_CLIP]`` nats (the
public bound the fixed-point encoding needs), and a 1. Secure aggregation sums them with the cohort's,
so the server learns the cohort's mean first and last loss (the sums divided by the count), which is
what an operator's progress line and a data scientist's curve need, and never one institution's loss.

With ``report_eval`` it carries two more (:data:`EVAL_SPEC`): the mean loss of the global adapter the
institution received, before it trains, on records it holds out of training (its own policy's
``eval_holdout``), clipped the same way, and a 1. Training losses fall as an adapter memorises; a loss
on records no round ever trained on does not, so the eval curve is the one that shows overfitting.

Both are releases computed from private records: an institution sends them only if its policy says
``share_loss = true`` (otherwise it refuses the round: the sum must hold every contributor), it ledgers
them as non-DP releases ("loss"), and a federation under DP-SGD cannot ask for them (the guarantee
would not cover them; distributed noise for them is future work).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from secfed.secagg.spec import Segment

__all__ = [
    "EVAL_SPEC",
    "LOSS_CLIP",
    "LOSS_SPEC",
    "cohort_eval",
    "cohort_loss",
    "eval_segments",
    "loss_segments",
]

LOSS_CLIP = 20.0
LOSS_SPEC = (
    Segment("loss_first", 1, clip=LOSS_CLIP, frac_bits=16),
    Segment("loss_last", 1, clip=LOSS_CLIP, frac_bits=16),
    Segment("loss_n", 1, clip=1.0, frac_bits=0),
)
EVAL_SPEC = (
    Segment("eval_loss", 1, clip=LOSS_CLIP, frac_bits=16),
    Segment("eval_n", 1, clip=1.0, frac_bits=0),
)


def _clipped(loss: float) -> NDArray[np.float64]:
    """A loss inside the public bound the fixed-point encoding needs."""
    return np.array([min(max(loss, 0.0), LOSS_CLIP)])


def loss_segments(first: float, last: float) -> dict[str, NDArray[np.float64]]:
    """One institution's contribution: its first and last step loss, clipped, and a 1."""
    return {"loss_first": _clipped(first), "loss_last": _clipped(last), "loss_n": np.array([1.0])}


def eval_segments(loss: float) -> dict[str, NDArray[np.float64]]:
    """One institution's contribution: the received adapter's loss on its held-out records, clipped, and a 1."""
    return {"eval_loss": _clipped(loss), "eval_n": np.array([1.0])}


def _count(values: Mapping[str, NDArray[np.float64]], spec: tuple[Segment, ...], count: str) -> float | None:
    """How many institutions a decoded sum holds ``spec``'s segments of, or None when it holds none."""
    if not {s.name for s in spec} <= set(values) or not float(values[count][0]) > 0:
        return None
    return float(values[count][0])


def cohort_loss(values: Mapping[str, NDArray[np.float64]]) -> tuple[float, float] | None:
    """The cohort's mean (first, last) training loss from a decoded sum that carries one, else None."""
    n = _count(values, LOSS_SPEC, "loss_n")
    if n is None:
        return None
    return float(values["loss_first"][0]) / n, float(values["loss_last"][0]) / n


def cohort_eval(values: Mapping[str, NDArray[np.float64]]) -> float | None:
    """The cohort's mean evaluation loss from a decoded sum that carries one, else None.

    Measured before the round's training: round r's sum evaluates the adapter round r - 1 produced
    (round 0's, the initial adapter)."""
    n = _count(values, EVAL_SPEC, "eval_n")
    return None if n is None else float(values["eval_loss"][0]) / n
