"""The federation's result and the model bytes a server serves: checked before they are kept or used.

Attacks (each found by playing the server): a ``Finished`` claiming a huge number of rounds, so that
the per-round bound on how far an adapter may move multiplies up and a crafted adapter is saved as
the institution's result; a ``Finished`` for an institution that never trained (nothing to compare
with); model bytes that are not a whole number of float32 values, which crashed the client.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from client.config import RetryPolicy
from client.runtime import ClientReport, ClientRuntime
from secfed.bench.attacks import VICTIM, World, fedit_world
from secfed.bench.inprocess import drive
from secfed.proto.v1 import federation_pb2 as pb
from secfed.secagg.messages import ShareKeysRelay

pytestmark = pytest.mark.timeout(120)


def _runtime(task: Any, model_dir: Path, served: np.ndarray | None = None) -> ClientRuntime:
    """A client runtime around ``task`` whose downloads return ``served`` (what the server names)."""
    rt = ClientRuntime.__new__(ClientRuntime)
    rt.kit = SimpleNamespace(client_id=VICTIM)  # type: ignore[assignment]
    rt.task = task
    rt.model_dir = model_dir
    rt.retry = RetryPolicy()
    rt._sleep = lambda s: None
    rt._model = None
    rt.report = ClientReport(VICTIM)
    if served is not None:
        rt._download = lambda stub, ref: served  # type: ignore[method-assign]
    return rt


def _finished(model: np.ndarray, rounds: int) -> pb.Finished:
    ref = pb.ModelRef(hash=b"x" * 32, size_bytes=model.nbytes, dtype=pb.TENSOR_DTYPE_FLOAT32)
    return pb.Finished(reason=f"completed {rounds} rounds", rounds_completed=rounds, final_model=ref)


def test_an_honest_result_is_saved_and_a_crafted_one_is_not(tmp_path: Path) -> None:
    world = World(tmp_path)
    server, clients, consortium = fedit_world(world)
    run = drive(server, clients, consortium, rounds=1, max_attempts=1)
    victim = clients[VICTIM]
    honest = np.asarray(run.model, dtype=np.float32)
    rt = _runtime(victim, tmp_path / "honest", honest)
    rt._save_final(None, _finished(honest, 1))  # type: ignore[arg-type]
    assert rt.report.model_saved == tmp_path / "honest" / "final"
    # The same adapter moved by +500, claimed to come after 10^9 rounds.
    crafted = honest + 500.0
    rt = _runtime(victim, tmp_path / "crafted", crafted)
    rt._save_final(None, _finished(crafted, 10**9))  # type: ignore[arg-type]
    assert rt.report.model_saved is None and not (tmp_path / "crafted" / "final").exists()
    # ... or after one round: beyond the clip bound.
    rt._save_final(None, _finished(crafted, 1))  # type: ignore[arg-type]
    assert rt.report.model_saved is None and not (tmp_path / "crafted" / "final").exists()


def test_an_institution_that_never_trained_saves_no_result(tmp_path: Path) -> None:
    world = World(tmp_path)
    server, clients, consortium = fedit_world(world)
    # Round 0 is admitted by everyone, then the server withholds the key shares: nobody computes.
    drive(
        server,
        clients,
        consortium,
        rounds=1,
        max_attempts=1,
        drop=lambda cid, r, st, msg: isinstance(msg, ShareKeysRelay),
    )
    victim = clients[VICTIM]
    crafted = np.full_like(np.asarray(server.initial_model()), 123.0)
    rt = _runtime(victim, tmp_path / "inst", crafted)
    rt._save_final(None, _finished(crafted, 1))  # type: ignore[arg-type]
    assert rt.report.model_saved is None


class _Stub:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def Download(self, request: Any, timeout: float | None = None) -> Any:
        header = pb.DownloadHeader(
            total_bytes=len(self.data), sha256=hashlib.sha256(self.data).digest(), offset=0
        )
        yield pb.DownloadChunk(header=header, data=self.data)


def test_model_bytes_that_are_no_whole_vector_are_refused_not_a_crash(tmp_path: Path) -> None:
    data = b"\x00" * 5
    ref = pb.ModelRef(hash=hashlib.sha256(data).digest(), size_bytes=5, dtype=pb.TENSOR_DTYPE_FLOAT32)
    saved: list[Any] = []
    rt = _runtime(SimpleNamespace(save_model=lambda *a: saved.append(a)), tmp_path)
    finished = pb.Finished(reason="completed 1 rounds", rounds_completed=1, final_model=ref)
    rt._save_final(_Stub(data), finished)  # type: ignore[arg-type]
    assert saved == [] and rt.report.model_saved is None
