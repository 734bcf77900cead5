"""The round coordinator driven in process by honest, hung and late clients, with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed.fl.vectors import model_hash
from secfed.secagg.client import ClientSession
from secfed.secagg.messages import (
    AdvertBroadcast,
    AggregateResult,
    ConsistencyRequest,
    ShareKeysRelay,
    UnmaskRequest,
)
from secfed.secagg.spec import Segment, VectorSpec
from server.coordinator import (
    Coordinator,
    CoordinatorObserver,
    Finished,
    Relay,
    RoundPlan,
    RoundStart,
    Wait,
)
from tests.secagg.support import Consortium

DIM = 8


class MeanTask:
    """Toy task: the new model is the mean of the clients' vectors (exact multiples of 2^-16)."""

    name = "mean"

    def initial_model(self) -> np.ndarray:
        return np.zeros(DIM, dtype=np.float32)

    def spec(self, model: np.ndarray) -> VectorSpec:
        return VectorSpec((Segment("x", DIM, clip=4.0, frac_bits=16), Segment("n", 1, clip=1.0, frac_bits=0)))

    def task_config(self, round_: int) -> dict[str, Any]:
        return {"round": round_}

    def export(self, model: np.ndarray, directory: Path) -> None:
        np.save(directory / "model.npy", model)

    def apply(self, model: np.ndarray, result: AggregateResult) -> np.ndarray:
        return np.asarray(result.values["x"] / result.values["n"][0])


def contribution(cid: str, round_: int) -> np.ndarray:
    return np.full(DIM, (int(cid[1:]) + round_) / 64.0)


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeClient:
    """An in-process client runtime: polls, keeps one ClientSession per attempt, answers relays."""

    cid: str
    consortium: Consortium
    coordinator: Coordinator
    hang_from_round: int | None = None
    session: ClientSession | None = None
    digest: bytes = b""
    rounds_started: list[int] = field(default_factory=list)

    def step(self) -> bool:
        ins = self.coordinator.poll(self.cid).instruction
        if isinstance(ins, Finished):
            return False
        if isinstance(ins, Wait):
            return True
        if isinstance(ins, RoundStart):
            if self.hang_from_round is not None and ins.config.round >= self.hang_from_round:
                return True
            if ins.config.digest() == self.digest:
                return True
            if self.session is not None:
                self.session.abandon()
            self.digest = ins.config.digest()
            self.rounds_started.append(ins.config.round)
            self.session = ClientSession(
                identity=self.consortium.identities[self.cid],
                trust=self.consortium.trust,
                config=ins.config,
                model_hash=model_hash(self.coordinator.model),
                inputs={"x": contribution(self.cid, ins.config.round), "n": [1.0]},
            )
            self.coordinator.upload(self.cid, self.session.advertise())
            return True
        assert isinstance(ins, Relay) and self.session is not None
        msg = ins.message
        if isinstance(msg, AdvertBroadcast):
            self.coordinator.upload(self.cid, self.session.on_advert_broadcast(msg))
        elif isinstance(msg, ShareKeysRelay):
            self.coordinator.upload(self.cid, self.session.on_share_relay(msg))
        elif isinstance(msg, ConsistencyRequest):
            self.coordinator.upload(self.cid, self.session.on_consistency_request(msg))
        elif isinstance(msg, UnmaskRequest):
            self.coordinator.upload(self.cid, self.session.on_unmask_request(msg))
        return True


def run(coordinator: Coordinator, clients: list[FakeClient], clock: Clock, max_steps: int = 2000) -> None:
    for _ in range(max_steps):
        alive = [c.step() for c in clients]
        if not any(alive):
            return
        clock.now += 1.0  # one second per sweep: deadlines fire for hung clients
    raise AssertionError("federation did not finish")


class Recorder(CoordinatorObserver):
    def __init__(self, results: list[tuple[int, AggregateResult]]) -> None:
        self.results = results

    def round_completed(
        self,
        round_: int,
        result: AggregateResult,
        model: np.ndarray,
        started: float,
        phases: dict[str, float],
    ) -> None:
        self.results.append((round_, result))


def build(consortium: Consortium, n: int, plan: RoundPlan, hang: dict[str, int] | None = None):
    clock = Clock()
    results: list[tuple[int, AggregateResult]] = []
    coord = Coordinator(
        roster=consortium.ids(n),
        plan=plan,
        task=MeanTask(),
        initial_model=np.zeros(DIM),
        trust=consortium.trust,
        clock=clock,
        observer=Recorder(results),
    )
    hang = hang or {}
    clients = [FakeClient(c, consortium, coord, hang_from_round=hang.get(c)) for c in consortium.ids(n)]
    return coord, clients, clock, results


def test_rounds_complete_with_exact_means(consortium: Consortium) -> None:
    coord, clients, clock, results = build(consortium, 5, RoundPlan(rounds=3, phase_timeout_s=10))
    run(coord, clients, clock)
    assert coord.finished_reason == "completed 3 rounds"
    assert [r for r, _ in results] == [0, 1, 2]
    for r, res in results:
        expected = np.mean([contribution(c, r) for c in res.contributors], axis=0)
        np.testing.assert_array_equal(res.values["x"] / res.values["n"][0], expected)
    np.testing.assert_allclose(coord.model, np.mean([contribution(c.cid, 2) for c in clients], axis=0))


def test_hung_client_hits_deadline_and_round_completes(consortium: Consortium) -> None:
    hang = {consortium.ids(7)[3]: 1}
    coord, clients, clock, results = build(consortium, 7, RoundPlan(rounds=2, phase_timeout_s=5), hang)
    run(coord, clients, clock)
    assert coord.finished_reason == "completed 2 rounds"
    r1 = dict(results)[1]
    assert consortium.ids(7)[3] not in r1.contributors and len(r1.contributors) == 6
    assert coord.aborted_attempts == []


def test_too_many_hung_clients_abort_and_retry_with_fresh_session(consortium: Consortium) -> None:
    ids = consortium.ids(6)
    coord, clients, clock, results = build(
        consortium, 6, RoundPlan(rounds=2, phase_timeout_s=3, max_attempts=2), {ids[0]: 1, ids[1]: 1}
    )
    run(coord, clients, clock)
    assert [r for r, _ in results] == [0]
    assert [(r, a) for r, a, _ in coord.aborted_attempts] == [(1, 1), (1, 2)]
    assert coord.finished_reason is not None and "round 1 failed 2 attempts" in coord.finished_reason


def test_upload_under_another_identity_is_refused(consortium: Consortium) -> None:
    coord, clients, _clock, _ = build(consortium, 4, RoundPlan(rounds=1))
    ins = coord.poll(clients[0].cid).instruction
    assert isinstance(ins, RoundStart)
    session = ClientSession(
        identity=consortium.identities[clients[0].cid],
        trust=consortium.trust,
        config=ins.config,
        model_hash=ins.config.model_hash,
        inputs={"x": np.zeros(DIM), "n": [1.0]},
    )
    with pytest.raises(Exception, match="claims sender"):
        coord.upload(clients[1].cid, session.advertise())


def test_refusing_client_is_not_waited_for(consortium: Consortium) -> None:
    coord, clients, _clock, results = build(consortium, 6, RoundPlan(rounds=1, phase_timeout_s=1000))
    refuser = clients[2]
    assert isinstance(coord.poll(refuser.cid).instruction, RoundStart)
    coord.refuse(refuser.cid, 0, "privacy budget spent")
    others = [c for c in clients if c is not refuser]
    for _ in range(20):  # the clock never moves: only completeness can close the phases
        if not any([c.step() for c in others]):  # step every client each sweep
            break
    assert coord.finished_reason == "completed 1 rounds"
    assert refuser.cid not in results[0][1].contributors
    assert coord.refusals == [(0, refuser.cid, "privacy budget spent")]
