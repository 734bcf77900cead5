"""Local work for an abandoned session stops at once instead of running to its end.

Attack on availability rather than privacy, and the deployment failure that motivated it: a client
kept training for attempts the coordinator had long abandoned, and started the next attempt late.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from client.config import RetryPolicy
from client.runtime import ClientRuntime
from secfed import cancel
from secfed.fl.policy import InstitutionPolicy
from secfed.fl.toy import ToyClient
from secfed.pki.kit import load_kit
from tests.federation.support import TOY, ClientThread, rounds_log, start_federation

pytestmark = pytest.mark.timeout(120)


class SlowToy(ToyClient):
    """Computes for up to a minute in round 0 (a long training run), checking for cancellation."""

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id, TOY)
        self.cancelled_after: float | None = None
        self.started = threading.Event()

    def compute(self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]) -> Any:
        if round_ == 0:
            self.started.set()
            began = time.monotonic()
            while time.monotonic() - began < 60:
                try:
                    cancel.check()
                except cancel.ComputeCancelled:
                    self.cancelled_after = time.monotonic() - began
                    raise
                time.sleep(0.02)
        return super().compute(round_, model, task_config)


def test_work_for_a_session_that_went_on_without_it_is_stopped(tmp_path: Path) -> None:
    fed = start_federation(tmp_path, 4, rounds=2, phase_timeout_s=5.0, compute_timeout_s=2.0)
    slow = SlowToy("inst03")
    for cid in ("inst00", "inst01", "inst02"):
        fed.start_client(cid)
    runtime = ClientRuntime(
        load_kit(fed.pki / "clients" / "inst03"),
        slow,
        address=fed.address,
        retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=30),
        policy=InstitutionPolicy(),
    )
    runtime.heartbeat_s = 0.2
    holder = ClientThread("inst03", threading.Thread(target=lambda: None))

    def body() -> None:
        holder.report = runtime.run()

    holder.thread = threading.Thread(target=body, daemon=True)
    holder.thread.start()
    fed.clients["inst03"] = holder
    assert fed.finish() == "completed 2 rounds"
    # The compute phase closed after 2 s without it; its work stopped within a few heartbeats, not
    # after the minute it would have run.
    assert slow.cancelled_after is not None and slow.cancelled_after < 10
    r0, r1 = rounds_log(fed)
    assert "inst03" not in r0["contributors"] and "inst03" in r1["contributors"]
    assert holder.report is not None and holder.report.violations == []
