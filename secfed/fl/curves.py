"""Secure learning curves: each institution's training loss summed with the cohort's, never alone.

When a FedIT federation sets ``report_loss``, every update carries three more segments: the loss of the
institution's first and last local step of the round, each clipped to ``[0, LOSS_CLIP]`` nats (the
public bound the fixed-point encoding needs), and a 1. Secure aggregation sums them with the cohort's,
so the server learns the cohort's mean first and last loss (the sums divided by the count), which is
what an operator's progress line and a data scientist's curve need, and never one institution's loss.

It is still a release computed from private records: an institution sends it only if its policy says
``share_loss = true`` (otherwise it refuses the round: the sum must hold every contributor), it is
ledgered as a non-DP release ("loss"), and a federation under DP-SGD cannot ask for it (the guarantee
would not cover it; distributed noise for it is future work).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from secfed.secagg.spec import Segment

__all__ = ["LOSS_CLIP", "LOSS_SPEC", "cohort_loss", "loss_segments"]

LOSS_CLIP = 20.0
LOSS_SPEC = (
    Segment("loss_first", 1, clip=LOSS_CLIP, frac_bits=16),
    Segment("loss_last", 1, clip=LOSS_CLIP, frac_bits=16),
    Segment("loss_n", 1, clip=1.0, frac_bits=0),
)


def loss_segments(first: float, last: float) -> dict[str, NDArray[np.float64]]:
    """One institution's contribution: its first and last step loss, clipped, and a 1."""
    return {
        "loss_first": np.array([min(max(first, 0.0), LOSS_CLIP)]),
        "loss_last": np.array([min(max(last, 0.0), LOSS_CLIP)]),
        "loss_n": np.array([1.0]),
    }


def cohort_loss(values: Mapping[str, NDArray[np.float64]]) -> tuple[float, float] | None:
    """The cohort's mean (first, last) training loss from a decoded sum that carries one, else None."""
    names = {s.name for s in LOSS_SPEC}
    if not names <= set(values) or not float(values["loss_n"][0]) > 0:
        return None
    n = float(values["loss_n"][0])
    return float(values["loss_first"][0]) / n, float(values["loss_last"][0]) / n
