"""The round coordinator driven in process by honest, hung and late clients, with a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed.fl.tasks import SingleStage, StagePlan, StageResult
from secfed.fl.vectors import model_hash
from secfed.secagg.client import ClientSession
from secfed.secagg.errors import SecAggError
from secfed.secagg.messages import (
    AdvertBroadcast,
    AggregateResult,
    ConsistencyRequest,
    MaskedInputRequest,
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


class MeanTask(SingleStage):
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


class TwoStageTask(MeanTask):
    """Stage "count" sums ones (the cohort size); stage "update" sums contributions scaled by the
    public factor 1/count that the server broadcast, so the new model is the cohort mean."""

    name = "two-stage"

    def __init__(self, fail_at: str | None = None) -> None:
        self.fail_at = fail_at
        self.calls: list[tuple[int, tuple[str, ...]]] = []

    def next_stage(
        self, round_: int, model: np.ndarray, done: Sequence[StageResult], *, colluders: int, attempt: int
    ) -> StagePlan | None:
        self.calls.append((round_, tuple(d.name for d in done)))
        if self.fail_at is not None and [d.name for d in done] == [self.fail_at]:
            raise ValueError("inconsistent statistics")
        if not done:
            return StagePlan("count", VectorSpec((Segment("n", 1, clip=1.0, frac_bits=0),)), {})
        if len(done) == 1:
            count = float(done[0].result.values["n"][0])
            return StagePlan("update", self.spec(model), {"factor": 1.0 / count})
        return None

    def apply(self, model: np.ndarray, result: AggregateResult) -> np.ndarray:
        return np.asarray(result.values["x"])


def stage_inputs(cid: str, ins: RoundStart) -> dict[str, Any]:
    stage = ins.task_config["stage"]
    if stage == "count":
        return {"n": [1.0]}
    factor = float(ins.task_config.get("factor", 1.0))
    return {"x": contribution(cid, ins.config.round) * factor, "n": [1.0]}


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
    last_start: int = -1
    rounds_started: list[int] = field(default_factory=list)
    stages_seen: list[tuple[int, str]] = field(default_factory=list)
    hang_at_stage: str | None = None

    def step(self) -> bool:
        pending = self.coordinator.poll(self.cid)
        ins = pending.instruction
        if isinstance(ins, Finished):
            return False
        if isinstance(ins, Wait):
            return True
        if isinstance(ins, RoundStart):
            if self.hang_from_round is not None and ins.config.round >= self.hang_from_round:
                return True
            if pending.instruction_id == self.last_start:  # re-sent until answered: already handled
                return True
            if self.hang_at_stage is not None:
                if (ins.config.round, ins.task_config["stage"]) not in self.stages_seen:
                    self.stages_seen.append((ins.config.round, ins.task_config["stage"]))
                if ins.task_config["stage"] == self.hang_at_stage:
                    return True
            if self.session is not None:
                self.session.abandon()
            self.last_start = pending.instruction_id
            self.rounds_started.append(ins.config.round)
            if self.hang_at_stage is None:
                self.stages_seen.append((ins.config.round, ins.task_config["stage"]))
            self.session = ClientSession(
                identity=self.consortium.identities[self.cid],
                trust=self.consortium.trust,
                config=ins.config,
                model_hash=model_hash(self.coordinator.model),
                inputs=stage_inputs(self.cid, ins),
            )
            self.coordinator.upload(self.cid, self.session.advertise())
            return True
        assert isinstance(ins, Relay) and self.session is not None
        msg = ins.message
        if isinstance(msg, AdvertBroadcast):
            self.coordinator.upload(self.cid, self.session.on_advert_broadcast(msg))
        elif isinstance(msg, ShareKeysRelay):
            self.session.on_share_relay(msg)
            self.coordinator.upload(self.cid, self.session.ready())
        elif isinstance(msg, MaskedInputRequest):
            self.coordinator.upload(self.cid, self.session.on_masked_input_request(msg))
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
        stages: Sequence[StageResult],
    ) -> None:
        self.results.append((round_, result))


def build(
    consortium: Consortium,
    n: int,
    plan: RoundPlan,
    hang: dict[str, int] | None = None,
    task: MeanTask | None = None,
):
    clock = Clock()
    results: list[tuple[int, AggregateResult]] = []
    coord = Coordinator(
        roster=consortium.ids(n),
        plan=plan,
        task=task or MeanTask(),
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
    coord.refuse(refuser.cid, 0, "budget")
    others = [c for c in clients if c is not refuser]
    for _ in range(20):  # the clock never moves: only completeness can close the phases
        if not any([c.step() for c in others]):  # step every client each sweep
            break
    assert coord.finished_reason == "completed 1 rounds"
    assert refuser.cid not in results[0][1].contributors
    assert coord.refusals == [(0, refuser.cid, "budget")]


def test_two_stage_round_sums_each_stage_and_applies_the_last(consortium: Consortium) -> None:
    task = TwoStageTask()
    coord, clients, clock, _ = build(consortium, 5, RoundPlan(rounds=2, phase_timeout_s=10), task=task)
    run(coord, clients, clock)
    assert coord.finished_reason == "completed 2 rounds"
    for r, stages in enumerate(coord.stage_results):
        assert [s.name for s in stages] == ["count", "update"]
        assert stages[0].result.values["n"][0] == 5
        mean = np.mean([contribution(c.cid, r) for c in clients], axis=0)
        np.testing.assert_allclose(stages[1].result.values["x"], mean, atol=1e-4)
        # each stage is its own session: fresh keys, fresh session id
        assert stages[0].result.session_id != stages[1].result.session_id
    assert all(c.stages_seen == [(0, "count"), (0, "update"), (1, "count"), (1, "update")] for c in clients)
    facts = coord.stage_results[0][1].audit_facts()  # what the server's round record keeps
    assert facts["broadcast"] == {"factor": 0.2, "stage": "update"}
    assert (facts["n"], facts["threshold"], facts["ring_bits"], facts["sums"]) == (
        5,
        4,
        32,
        {"x": [8], "n": [1]},
    )
    np.testing.assert_allclose(
        coord.model, np.mean([contribution(c.cid, 1) for c in clients], axis=0), atol=1e-4
    )


def test_client_that_drops_in_a_stage_is_not_asked_again_that_round(consortium: Consortium) -> None:
    task = TwoStageTask()
    coord, clients, clock, _results = build(consortium, 6, RoundPlan(rounds=1, phase_timeout_s=5), task=task)
    dropper = clients[4]
    dropper.hang_at_stage = "count"
    run(coord, clients, clock)
    assert coord.finished_reason == "completed 1 rounds"
    count, update = coord.stage_results[0]
    assert count.result.values["n"][0] == 5 and dropper.cid not in count.result.contributors
    assert dropper.cid not in update.result.contributors + update.result.dropped
    assert dropper.stages_seen == [(0, "count")]
    mean = np.mean([contribution(c.cid, 0) for c in clients if c is not dropper], axis=0)
    np.testing.assert_allclose(coord.model, mean, atol=1e-4)


def test_task_rejecting_a_stage_sum_aborts_the_attempt(consortium: Consortium) -> None:
    task = TwoStageTask(fail_at="count")
    coord, clients, clock, _results = build(
        consortium, 4, RoundPlan(rounds=1, phase_timeout_s=5, max_attempts=2), task=task
    )
    run(coord, clients, clock)
    assert [(r, a) for r, a, _ in coord.aborted_attempts] == [(0, 1), (0, 2)]
    assert all("stage count: inconsistent statistics" in reason for _, _, reason in coord.aborted_attempts)
    # every attempt restarts the round from its first stage (the task is told: done is empty)
    assert [done for _, done in task.calls].count(()) == 2


def _stale_advert(consortium: Consortium, n: int, plan: RoundPlan) -> tuple[str, Any]:
    """What a client built in a server incarnation that then died: its advert for attempt 1."""
    dead, _clients, _clock, _ = build(consortium, n, plan)
    cid = consortium.ids(n)[0]
    ins = dead.poll(cid).instruction
    assert isinstance(ins, RoundStart)
    session = ClientSession(
        identity=consortium.identities[cid],
        trust=consortium.trust,
        config=ins.config,
        model_hash=ins.config.model_hash,
        inputs=stage_inputs(cid, ins),
    )
    return cid, session.advertise()


def restarted(
    consortium: Consortium, n: int, plan: RoundPlan, first_attempt: int
) -> tuple[Coordinator, Clock]:
    clock = Clock()
    coord = Coordinator(
        roster=consortium.ids(n),
        plan=plan,
        task=MeanTask(),
        initial_model=np.zeros(DIM),
        trust=consortium.trust,
        clock=clock,
        first_attempt=first_attempt,
    )
    return coord, clock


def test_a_restarted_coordinator_refuses_the_dead_incarnations_adverts(consortium: Consortium) -> None:
    """After a restart the round resumes at the next attempt number (the server passes the state
    database's), so the signed configuration differs and an advert from before the crash is refused,
    even though round, roster and model are the same."""
    plan = RoundPlan(rounds=1, phase_timeout_s=5)
    cid, advert = _stale_advert(consortium, 4, plan)
    coord, _clock = restarted(consortium, 4, plan, first_attempt=2)
    with pytest.raises(SecAggError, match="another round or configuration"):
        coord.upload(cid, advert)
    ins = coord.poll(cid).instruction
    assert isinstance(ins, RoundStart) and ins.config.label.endswith(".a2")
    with pytest.raises(ValueError, match="first_attempt"):
        restarted(consortium, 4, plan, first_attempt=0)


def test_an_accepted_upload_starts_the_deadline_like_a_poll(consortium: Consortium) -> None:
    """An attempt's first deadline starts when a client hears of it. An upload the session accepts
    proves that as well as a poll does: the harness caught a restarted server whose clients answered
    with adverts before polling, then waited at Advertise forever for a hung client."""
    plan = RoundPlan(rounds=1, phase_timeout_s=5, max_attempts=1)
    cid, advert = _stale_advert(consortium, 4, plan)
    coord, clock = restarted(consortium, 4, plan, first_attempt=1)  # the same configuration: accepted
    coord.upload(cid, advert)
    clock.now += 6.0
    coord.tick()  # nobody else answers: the advertise phase closes below threshold
    assert [(r, a) for r, a, _ in coord.aborted_attempts] == [(0, 1)]


def test_max_attempts_counts_this_process_tries_not_attempt_numbers(consortium: Consortium) -> None:
    """A server restarted twice in round 0 resumes at attempt 3; with max_attempts=2 it still gets
    two tries of its own (attempts 3 and 4) before giving up."""
    ids = consortium.ids(6)
    coord, clock = restarted(consortium, 6, RoundPlan(rounds=1, phase_timeout_s=3, max_attempts=2), 3)
    clients = [FakeClient(c, consortium, coord, hang_from_round=0 if c in ids[:2] else None) for c in ids]
    run(coord, clients, clock)
    assert [(r, a) for r, a, _ in coord.aborted_attempts] == [(0, 3), (0, 4)]
    assert coord.finished_reason is not None and coord.finished_reason.startswith("round 0 failed 2 attempts")


def test_first_phase_waits_for_the_cohort_to_join_then_runs_on_its_phase_deadline(
    consortium: Consortium,
) -> None:
    """A slow-starting institution is not dropped by the short phase deadline while the run starts up.

    Without a join wait, the advertise phase would close 5 s after the first client polled, before the
    late institution (starting its client by hand) ever heard of the round.
    """
    plan = RoundPlan(rounds=1, phase_timeout_s=5, join_timeout_s=100)
    coord, clients, clock, results = build(consortium, 4, plan)
    early, late = clients[:3], clients[3]
    for _ in range(30):  # 30 s: far past the phase deadline, well within the join timeout
        for c in early:
            c.step()
        clock.now += 1.0
    assert coord.aborted_attempts == [] and results == []
    run(coord, clients, clock)
    assert coord.finished_reason == "completed 1 rounds"
    assert late.cid in results[0][1].contributors and coord.aborted_attempts == []


def test_a_member_that_never_joins_is_dropped_when_the_join_timeout_runs_out(consortium: Consortium) -> None:
    plan = RoundPlan(rounds=1, phase_timeout_s=5, join_timeout_s=40)
    coord, clients, clock, results = build(consortium, 5, plan)
    run(coord, clients[:4], clock)
    assert coord.finished_reason == "completed 1 rounds"
    assert clients[4].cid not in results[0][1].contributors
    assert 40 <= coord.phase_seconds[0]["advertise"] <= 42


@pytest.mark.parametrize(
    ("roster", "cohort", "threshold", "survives"),
    [(3, 3, 3, 0), (4, 4, 3, 1), (6, 6, 5, 1), (10, 10, 7, 3)],
)
def test_dropout_tolerance_is_what_the_release_rules_allow(
    roster: int, cohort: int, threshold: int, survives: int
) -> None:
    """Three institutions with a third colluding survive no dropout (the case a deployment must be told of)."""
    assert RoundPlan().dropout_tolerance(roster) == (cohort, threshold, survives)


def test_a_late_advert_for_an_abandoned_attempt_is_told_what_happened(consortium: Consortium) -> None:
    """Not "advert is for another round or configuration": the attempt expired and the round went on."""
    ids = consortium.ids(4)
    plan = RoundPlan(rounds=1, phase_timeout_s=3, max_attempts=3, join_timeout_s=3)
    coord, _clients, clock, _ = build(consortium, 4, plan)
    first = coord.poll(ids[0])
    assert isinstance(first.instruction, RoundStart)
    session = ClientSession(
        identity=consortium.identities[ids[0]],
        trust=consortium.trust,
        config=first.instruction.config,
        model_hash=first.instruction.config.model_hash,
        inputs=stage_inputs(ids[0], first.instruction),
    )
    clock.now += 10  # nobody adverts: attempt 1 expires
    coord.tick()
    assert coord.aborted_attempts and coord.aborted_attempts[0][:2] == (0, 1)
    with pytest.raises(SecAggError, match=r"attempt 1 of round 0 was abandoned .*continues with attempt 2"):
        coord.upload(ids[0], session.advertise())
