"""Every field of every task's round instruction, and of every stage's plan, is bound into the session.

The attack (issue [round-binding], class 1): a server hands one institution an instruction with one
field changed (and the matching hash in its session configuration, so the institution cannot see the
lie alone), and relays that institution's advert to the others. If any field escaped the instruction
hash, the members would sign the same configuration digest and the session would sum contributions
computed under different settings: a sum the server can steer to isolate one institution.

The fields are enumerated from the instruction *types* (``field_paths``), so a field added later is
covered without editing this file. For each field the lie is applied at the first stage whose honest
instruction carries it; the property is that no sum the server obtains mixes instructions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from secfed.bench.attacks import World, fedhds_world, fedit_world, mutated, set_path, toy_world
from secfed.bench.inprocess import drive
from secfed.bench.lying import Lie, resign
from secfed.fl.fedhds import FedhdsInstruction
from secfed.fl.fedit import FeditInstruction
from secfed.fl.instruction import field_paths
from secfed.fl.participant import StageStart
from secfed.fl.toy import ToyInstruction

pytestmark = pytest.mark.timeout(600)
VICTIM = "inst01"


class Recorder(Lie):
    """An honest server that remembers each stage's instruction (to know where a field is set)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}

    def start(self, cid: str, start: StageStart) -> StageStart:
        self.stages.setdefault(str(start.task_config["stage"]), dict(start.task_config))
        return start


class OneField(Lie):
    """Change one field for the victim only (re-signed) and relay its advert to everyone."""

    accept_any_advert = True

    def __init__(self, stage: str, path: str) -> None:
        self.stage, self.path = stage, path

    def start(self, cid: str, start: StageStart) -> StageStart:
        if cid != VICTIM or start.task_config.get("stage") != self.stage:
            return start
        return resign(start, set_path(start.task_config, self.path, mutated))


def _lookup(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def _stage_for(stages: dict[str, dict[str, Any]], path: str) -> str:
    """The first stage whose instruction sets ``path`` (or its nearest present parent)."""
    while True:
        for name, config in stages.items():
            if _lookup(config, path) is not None:
                return name
        if "." not in path:
            return next(iter(stages))
        path = path.rsplit(".", 1)[0]


Make = Callable[[World], tuple[Any, dict[str, Any], Any]]
_STAGES: dict[str, dict[str, dict[str, Any]]] = {}


def _check(world: World, key: str, make: Make, path: str, rounds: int = 1) -> None:
    if key not in _STAGES:
        server, clients, consortium = make(world)
        recorder = Recorder()
        drive(server, clients, consortium, rounds=rounds, lie=recorder)
        _STAGES[key] = recorder.stages
    stage = _stage_for(_STAGES[key], path)
    server, clients, consortium = make(world)
    run = drive(server, clients, consortium, rounds=rounds, lie=OneField(stage, path), max_attempts=1)
    assert run.split_sums() == [], f"{path} at {stage}: a sum over members handed different instructions"
    victim_in = [s.name for s in run.stages if VICTIM in s.result.contributors and s.name == stage]
    assert not victim_in, f"{path} at {stage}: the victim's contribution under the lie entered {victim_in}"


@pytest.mark.parametrize("path", field_paths(ToyInstruction))
def test_toy_instruction_field(world: World, path: str) -> None:
    _check(world, "toy", lambda w: toy_world(), path)


@pytest.mark.parametrize("path", field_paths(FeditInstruction))
def test_fedit_instruction_field(world: World, path: str) -> None:
    _check(world, "fedit", fedit_world, path)


@pytest.mark.parametrize("path", field_paths(FedhdsInstruction))
def test_fedhds_instruction_and_plan_field(world: World, path: str) -> None:
    _check(world, "fedhds", fedhds_world, path)


def test_every_plan_part_is_exercised(world: World) -> None:
    """The FedHDS cases above really reach each plan field at a stage that carries it."""
    _check(world, "fedhds", fedhds_world, "plan.space")
    stages = _STAGES["fedhds"]
    for part in ("space", "allowed", "clusters", "ballot", "winners"):
        assert any(_lookup(c, f"plan.{part}") is not None for c in stages.values()), part
