"""The in-process federation driver used by method-comparison benchmarks runs the real protocol."""

from __future__ import annotations

import numpy as np

from secfed.bench.inprocess import run_inprocess
from secfed.fl import toy
from secfed.fl.registry import client_task, server_task

OPTIONS = {"dim": 8}


def _clients(n: int) -> dict[str, toy.ToyClient]:
    return {f"inst{i:02d}": client_task("toy-mean", f"inst{i:02d}", OPTIONS) for i in range(n)}  # type: ignore[misc]


def test_secure_and_plaintext_in_process_runs_agree_with_the_plaintext_sum() -> None:
    secure = run_inprocess(server_task("toy-mean", OPTIONS), _clients(4), rounds=2)
    plain = run_inprocess(server_task("toy-mean", OPTIONS), _clients(4), rounds=2, secure=False)
    assert secure.finished_reason == plain.finished_reason == "completed 2 rounds"
    np.testing.assert_allclose(secure.model, plain.model, atol=4 * 2.0**-16)
    # every round was one SecAgg session with fresh session ids, and nobody refused or aborted
    ids = [stages[0].result.session_id for stages in secure.stage_results]
    assert len(set(ids)) == 2 and secure.refusals == [] and secure.aborted == []
    assert secure.upload_values == 4 * 2 * (OPTIONS["dim"] + 1)
