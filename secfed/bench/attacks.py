"""``secfed bench attacks``: the adversarial catalogue against the real state machines and coordinator.

Each attack is a lying server (:mod:`secfed.bench.lying`) trying to learn one institution's private
value beyond what the property allows: *every value the server learns aggregates non-trivial
contributions of at least c + 2 institutions (or is covered by a ledgered DP guarantee); no two
released values are sums of the same non-DP inputs over different cohorts; different instructions
to different institutions end in an abort, never a sum.* Outcomes:

``refused``    the institutions refused or aborted; the server obtained no sum under the lie.
``contained``  the run went on, and the server provably obtained only what the property allows.
``succeeded``  the server obtained a value the property forbids (a finding: the target is 0).

Attack classes follow issue [round-binding]: split views of the task configuration, server-chosen
training records, unverified coreset plans, differencing, the train-stage floor, the colluder floor;
plus the global model (crafted start, jumps), insecure modes and instruction hygiene. Protocol-level
attacks use the numeric toy task; task-level ones FedIT/FedHDS on a tiny random Llama (built here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from secfed.bench.inprocess import Consortium, LyingRun, drive, make_consortium
from secfed.bench.lying import Lie, resign
from secfed.bench.stats import add_output_arguments, emit
from secfed.fl.fedit import ModelPool
from secfed.fl.participant import Relay, StageStart
from secfed.fl.releases import ReleaseLog
from secfed.fl.vectors import model_hash
from secfed.secagg.messages import MaskedInputUpload

__all__ = [
    "ATTACKS",
    "Attack",
    "World",
    "fedhds_world",
    "fedit_world",
    "mutated",
    "run_catalogue",
    "set_path",
    "toy_world",
]

VICTIM = "inst00"


@dataclass(frozen=True)
class Attack:
    """One lying server; ``expect`` is the outcome the defences give (the tests hold them to it)."""

    name: str
    cls: str
    run: Callable[[World], tuple[str, str]]
    expect: str = "refused"


class World:
    """Shared material of the catalogue: a tiny model directory (built once) and model pools."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._model: Path | None = None
        self.pool: ModelPool = {}

    @property
    def model(self) -> Path:
        if self._model is None:
            from secfed.model.tiny import tiny_llama

            path = self.workdir / "tiny-model"
            loaded = tiny_llama(seed=1)
            loaded.model.save_pretrained(path)
            loaded.tokenizer.save_pretrained(path)
            self._model = path
        return self._model

    def path(self, name: str) -> Path:
        out = self.workdir / name
        out.mkdir(parents=True, exist_ok=True)
        return out


def _ids(n: int) -> list[str]:
    return [f"inst{i:02d}" for i in range(n)]


# -- worlds ------------------------------------------------------------------------------------
def toy_world(n: int = 4) -> tuple[Any, dict[str, Any], Consortium]:
    from secfed.fl.toy import ToyClient, ToyServer

    ids = _ids(n)
    return ToyServer({"dim": 4}), {c: ToyClient(c, {"dim": 4}) for c in ids}, make_consortium(ids)


def _data(i: int, n: int) -> dict[str, Any]:
    return {"data": "builtin", "n_clients": n, "client_index": i, "train_per_category": 3, "partition": "iid"}


def fedit_world(
    world: World, n: int = 4, server_class: type[Any] | None = None, **options: Any
) -> tuple[Any, dict[str, Any], Consortium]:
    from secfed.fl.fedit import FeditClient, FeditServer

    ids = _ids(n)
    server = (server_class or FeditServer)(
        {
            "model": str(world.model),
            "train": {"local_steps": 1, "batch_size": 2, "max_length": 48, "lr": 1e-3},
            "max_weight": 8,
            **options,
        }
    )
    clients = {
        c: FeditClient(c, {"model": str(world.model), **_data(i, n)}, model_pool=world.pool)
        for i, c in enumerate(ids)
    }
    return server, clients, make_consortium(ids)


def fedhds_world(world: World, n: int = 5, **options: Any) -> tuple[Any, dict[str, Any], Consortium]:
    from secfed.fl.fedhds import FedhdsClient, FedhdsServer

    ids = _ids(n)
    server = FedhdsServer(
        {
            "model": str(world.model),
            "train": {"batch_size": 2, "max_length": 48, "lr": 1e-3},
            "max_weight": 8,
            "coreset": {"k0": 8, "bins": 3, "max_fraction": 0.3},
            "feature_layers": [-1, 1],
            "feature_max_length": 32,
            **options,
        }
    )
    clients = {
        c: FedhdsClient(c, {"model": str(world.model), **_data(i, n)}, model_pool=world.pool)
        for i, c in enumerate(ids)
    }
    return server, clients, make_consortium(ids)


# -- outcomes ----------------------------------------------------------------------------------
def _reactions(run: LyingRun) -> str:
    refused = sorted({r.split(":")[0] for rs in run.refusals.values() for _, r in rs})
    violated = sorted({v.split(":")[0] for vs in run.violations.values() for v in vs})
    return f"refusals {refused or 'none'}, violations {violated or 'none'}, {run.finished_reason}"


def _split_view(run: LyingRun) -> tuple[str, str]:
    """Succeeded iff some sum holds contributors that were handed different instructions."""
    split = run.split_sums()
    if split:
        return "succeeded", f"{len(split)} sum(s) over members handed different instructions"
    if not run.stages:
        return "refused", _reactions(run)
    return (
        "contained",
        f"{len(run.stages)} sum(s), every one over members handed one instruction; {_reactions(run)}",
    )


def _no_sum_after(run: LyingRun, stage_count: int) -> tuple[str, str]:
    """Succeeded iff the server obtained any sum beyond the first ``stage_count`` (the honest ones)."""
    if len(run.stages) > stage_count:
        return "succeeded", f"the server obtained {len(run.stages) - stage_count} sum(s) under the lie"
    return "refused", _reactions(run)


# -- lies --------------------------------------------------------------------------------------
class _Mutate(Lie):
    """Rewrite one instruction field for some recipients at one stage (and re-sign the hash or not)."""

    def __init__(
        self,
        path: str,
        value: Callable[[Any], Any],
        *,
        to: Callable[[str], bool],
        stage: str | None = None,
        sign: bool = True,
    ) -> None:
        self.path, self.value, self.to, self.stage, self.sign = path, value, to, stage, sign

    def start(self, cid: str, start: StageStart) -> StageStart:
        if not self.to(cid) or (self.stage is not None and start.task_config.get("stage") != self.stage):
            return start
        config = set_path(start.task_config, self.path, self.value)
        return resign(start, config) if self.sign else replace(start, task_config=config)


def set_path(doc: Mapping[str, Any], path: str, value: Callable[[Any], Any]) -> dict[str, Any]:
    """A deep copy of ``doc`` with the value at dotted ``path`` replaced by ``value(old)``."""
    import copy

    out: dict[str, Any] = copy.deepcopy(dict(doc))
    node: Any = out
    keys = path.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value(node.get(keys[-1]))
    return out


def mutated(value: Any) -> Any:
    """A different value of the same JSON type (the generic lie of the field-by-field tests)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1]] if value else [0]
    if value is None:
        return 1
    return {"unexpected": True}


class _Model(Lie):
    """Hand every institution another global model (and the session a matching model hash)."""

    def __init__(self, make: Callable[[np.ndarray, int], np.ndarray | None]) -> None:
        self.make = make

    def start(self, cid: str, start: StageStart) -> StageStart:
        model = self.make(start.model, start.config.round)
        if model is None:
            return start
        model = np.asarray(model, dtype=np.float32)
        return replace(start, model=model, config=replace(start.config, model_hash=model_hash(model)))


class _Evidence(Lie):
    """Tamper with the previous stage's evidence before the institutions verify it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def start(self, cid: str, start: StageStart) -> StageStart:
        ev = start.evidence
        if ev is None:
            return start
        if self.how == "withhold":
            return replace(start, evidence=None)
        sender = sorted(ev.inputs)[0]
        upload = ev.inputs[sender]
        name = sorted(upload.segments)[0]
        forged = {
            **upload.segments,
            name: upload.segments[name] + np.uint64(1).astype(upload.segments[name].dtype),
        }
        inputs: dict[str, MaskedInputUpload] = {**ev.inputs, sender: replace(upload, segments=forged)}
        return replace(start, evidence=replace(ev, inputs=inputs))


# -- the catalogue -----------------------------------------------------------------------------
def _others(cid: str) -> bool:
    return cid != VICTIM


def _everyone(cid: str) -> bool:
    return True


def _victim(cid: str) -> bool:
    return cid == VICTIM


def _toy_split(
    field: str, value: Callable[[Any], Any], sign: bool = True
) -> Callable[[World], tuple[str, str]]:
    def attack(world: World) -> tuple[str, str]:
        server, clients, consortium = toy_world()
        run = drive(server, clients, consortium, rounds=1, lie=_Mutate(field, value, to=_others, sign=sign))
        return _split_view(run)

    return attack


def _fedit_split(field: str, value: Callable[[Any], Any]) -> Callable[[World], tuple[str, str]]:
    def attack(world: World) -> tuple[str, str]:
        server, clients, consortium = fedit_world(world)
        run = drive(
            server, clients, consortium, rounds=1, lie=_Mutate(field, value, to=_others), max_attempts=1
        )
        return _split_view(run)

    return attack


def _fedhds_lie(lie: Lie, *, expect_honest: int | None = 0) -> Callable[[World], tuple[str, str]]:
    """A FedHDS round under ``lie``; the server may keep only sums obtained before the lie took effect
    (``expect_honest`` of them; None: a lie aimed at one member, which may be left out of the round)."""

    def attack(world: World) -> tuple[str, str]:
        server, clients, consortium = fedhds_world(world)
        run = drive(server, clients, consortium, rounds=1, lie=lie, max_attempts=1)
        outcome = _split_view(run)
        if outcome[0] == "succeeded" or expect_honest is None:
            return outcome
        return _no_sum_after(run, expect_honest)

    return attack


class _SplitRelay(Lie):
    """The whole split-view attack: other members get a changed instruction (re-signed), and the
    server relays the victim's advert to them although its own session would refuse it; the members
    must notice at ShareKeys that the victim signed another configuration."""

    accept_any_advert = True

    def __init__(self, field: str, value: Callable[[Any], Any]) -> None:
        self.mutate = _Mutate(field, value, to=_others)

    def start(self, cid: str, start: StageStart) -> StageStart:
        return self.mutate.start(cid, start)


def _fedit_split_relay(world: World) -> tuple[str, str]:
    server, clients, consortium = fedit_world(world)
    lie = _SplitRelay("train.lr", lambda v: v * 10)
    run = drive(server, clients, consortium, rounds=1, lie=lie, max_attempts=1)
    outcome, detail = _split_view(run)
    if outcome == "succeeded":
        return outcome, detail
    return (
        outcome,
        f"{len(run.violations)} of {len(clients)} members aborted at the advert cross-check; {detail}",
    )


def _plan_lie(stage_prefix: str, field: str, value: Callable[[Any], Any]) -> Lie:
    class PlanLie(Lie):
        def start(self, cid: str, start: StageStart) -> StageStart:
            if not str(start.task_config.get("stage", "")).startswith(stage_prefix):
                return start
            if (start.task_config.get("plan") or {}).get(field) is None:
                return start
            return resign(start, set_path(start.task_config, f"plan.{field}", value))

    return PlanLie()


def _swap_allowed(cells: list[int]) -> list[int]:
    """Same number of allowed cells (same vector spec), one swapped for a cell that is not allowed."""
    outside = next(c for c in range(10**6) if c not in set(cells))
    return [*cells[:-1], outside]


def _shift_centres(clusters: dict[str, Any]) -> dict[str, Any]:
    return {**clusters, "centres": [[x + 0.25 for x in row] for row in clusters["centres"]]}


def _shrink_radii(clusters: dict[str, Any]) -> dict[str, Any]:
    return {**clusters, "radii": [r * 0.01 for r in clusters["radii"]]}


def _rotate_basis(space: dict[str, Any]) -> dict[str, Any]:
    basis = np.asarray(space["basis"], dtype=np.float64)
    eye = np.zeros_like(basis)
    for k in range(basis.shape[1]):
        eye[k, k] = 1.0  # axis-aligned: the server's choice, not the cohort's principal axes
    return {**space, "basis": eye.tolist()}


def _differencing_toy(restart: bool) -> Callable[[World], tuple[str, str]]:
    """Round 0 completes; the server re-runs it without the victim (same model, same instruction)."""

    def attack(world: World) -> tuple[str, str]:
        server, clients, consortium = toy_world()
        logs = world.path(f"releases-toy-{restart}")
        releases = {c: ReleaseLog(logs / f"{c}.jsonl") for c in clients}
        first = drive(server, clients, consortium, rounds=1, releases=releases)
        if len(first.stages) != 1:
            return "succeeded", f"the honest round did not complete: {first.finished_reason}"
        others = {c: t for c, t in clients.items() if c != VICTIM}
        if restart:  # the institutions restarted: only their durable release logs remember
            participants = None
            releases = {c: ReleaseLog(logs / f"{c}.jsonl") for c in others}
        else:
            participants = {c: first.members[c].participant for c in others}
        again = drive(
            server,
            others,
            consortium,
            rounds=1,
            releases=releases,
            participants=participants,
            initial_model=server.initial_model(),
        )
        if again.stages:
            return "succeeded", "the re-run without the victim completed: the difference is its input"
        return "refused", _reactions(again)

    return attack


def _crash_before_unmask(world: World) -> tuple[str, str]:
    """Honest: the masked inputs are in, then the coordinator goes silent (a crash) before anyone
    unmasks. The retry re-sums the same inputs, which is safe: every member attests, in its signed
    advert, that it abandoned the first session without unmasking, so it can never be unmasked."""
    server, clients, consortium = toy_world()
    from secfed.secagg.messages import ConsistencyRequest

    silenced: set[str] = set()

    def drop(cid: str, round_: int, stage: str, msg: Any) -> bool:
        # The first consistency request of each member is lost with the crashed coordinator.
        if isinstance(msg, ConsistencyRequest) and cid not in silenced:
            silenced.add(cid)
            return True
        return False

    run = drive(server, clients, consortium, rounds=1, drop=drop, max_attempts=2)
    if not run.finished_reason.startswith("completed"):
        return "refused", f"the retry did not complete: {run.finished_reason}"
    return (
        "contained",
        f"the retry re-summed the inputs over the same cohort after {len(run.aborted)} abort(s)",
    )


def _unmask_then_retry_without_victim(world: World) -> tuple[str, str]:
    """Malicious: two members unmask (with one colluder's shares that is t), the server calls the
    session failed and re-runs the round without the victim. The two cannot attest abandonment, so
    the quorum fails and nobody re-releases: no second sum of the same inputs."""
    server, clients, consortium = toy_world()
    from secfed.secagg.messages import UnmaskRequest

    withheld: set[str] = set()

    def drop(cid: str, round_: int, stage: str, msg: Any) -> bool:
        # In the first session the victim and inst03 are never asked to unmask (only inst01 and
        # inst02 answer); then the victim is left out of the re-run.
        if isinstance(msg, UnmaskRequest) and cid in (VICTIM, "inst03") and cid not in withheld:
            withheld.add(cid)
            return True
        return len(withheld) == 2 and cid == VICTIM

    run = drive(server, clients, consortium, rounds=1, drop=drop, max_attempts=2)
    pairs = [s for s in run.stages if VICTIM not in s.result.contributors]
    if pairs:
        return "succeeded", "the round was summed again without the victim"
    return "refused", _reactions(run)


def _without_victim(
    server: Any,
    clients: Mapping[str, Any],
    consortium: Consortium,
    first: LyingRun,
    start_model: np.ndarray,
    *,
    first_round: int = 0,
) -> LyingRun:
    """Run one round again from ``start_model`` with every member of ``first`` but the victim, each
    keeping what it remembers of ``first`` (its participant: release log, sessions)."""
    others = {c: t for c, t in clients.items() if c != VICTIM}
    return drive(
        server,
        others,
        consortium,
        rounds=1,
        first_round=first_round,
        participants={c: first.members[c].participant for c in others},
        initial_model=start_model,
        max_attempts=1,
    )


def _rerun_fedit(
    change: Callable[[Any], Any], *, round_: int = 0, **options: Any
) -> Callable[[World], tuple[str, str]]:
    """FedIT completes round ``round_``; the server re-runs it without the victim on the same starting
    adapter with the instruction changed by ``change`` (or the server options by ``options``): a
    setting that does not change the update must not rename it, or the difference of the two sums is
    the victim's exact update and record count."""

    def attack(world: World) -> tuple[str, str]:
        server, clients, consortium = fedit_world(world)
        first = drive(server, clients, consortium, rounds=round_ + 1, max_attempts=1)
        if len(first.stages) != round_ + 1:
            return "succeeded", f"the honest run did not complete: {first.finished_reason}"
        from secfed.fl.fedit import FeditInstruction, FeditServer

        class Changed(FeditServer):
            def instruction(self, stage: str) -> FeditInstruction:
                ins: FeditInstruction = change(super().instruction(stage))
                return ins

        changed, _, _ = fedit_world(world, server_class=Changed, **options)
        start_model = server.initial_model()
        for done in first.stages[:round_]:
            start_model = server.apply(start_model, done.result)
        again = _without_victim(changed, clients, consortium, first, start_model, first_round=round_)
        if again.stages:
            return "succeeded", "the re-run without the victim completed"
        return "refused", _reactions(again)

    return attack


def _reseeded(ins: Any) -> Any:
    return ins.model_copy(update={"train": replace(ins.train, seed=ins.train.seed + 7)})


def _zero_sign_decay(ins: Any) -> Any:
    return ins.model_copy(update={"train": replace(ins.train, weight_decay=-0.0)})


def _other_init_seed(ins: Any) -> Any:
    return ins.model_copy(update={"init_seed": ins.init_seed + 1})


def _rerun_toy_clip(world: World) -> tuple[str, str]:
    """Toy: a completed round re-run without the victim with a clip nothing reaches (same inputs)."""
    from secfed.fl.toy import ToyServer

    server, clients, consortium = toy_world()
    releases = {c: ReleaseLog(world.workdir / f"toy-clip-{c}.jsonl") for c in clients}
    first = drive(server, clients, consortium, rounds=1, releases=releases)
    if len(first.stages) != 1:
        return "succeeded", f"the honest round did not complete: {first.finished_reason}"
    others = {c: t for c, t in clients.items() if c != VICTIM}
    again = drive(
        ToyServer({"dim": 4, "clip": 4.5}),
        others,
        consortium,
        rounds=1,
        releases={c: ReleaseLog(world.workdir / f"toy-clip-{c}.jsonl") for c in others},  # restarted
        initial_model=server.initial_model(),
    )
    if again.stages:
        return "succeeded", "the re-run with another clip completed"
    return "refused", _reactions(again)


def _dp_negligible_noise(world: World) -> tuple[str, str]:
    """DP switched on with negligible noise for institutions without a budget, then a re-run without the
    victim: a kept DP update is re-sent only where any input may be (the earlier session proven void)."""
    from secfed.dp.policy import PrivacyPolicy
    from secfed.fl.fedit import FeditClient, FeditServer

    ids = _ids(4)
    server = FeditServer(
        {
            "model": str(world.model),
            "train": {"local_steps": 1, "batch_size": 2, "max_length": 48, "lr": 1e-3},
            "max_weight": 8,
            "dp": {
                "noise_multiplier": 1e-9,
                "max_grad_norm": 1000.0,
                "expected_batch_size": 64,
                "max_physical_batch": 64,
            },
        }
    )
    clients = {
        c: FeditClient(
            c,
            {"model": str(world.model), **_data(i, 4)},
            privacy=PrivacyPolicy(ledger=world.workdir / f"dp-noise-{c}.jsonl"),
            model_pool=world.pool,
        )
        for i, c in enumerate(ids)
    }
    consortium = make_consortium(ids)
    first = drive(server, clients, consortium, rounds=1, max_attempts=1)
    if not first.stages:
        return "refused", _reactions(first)
    again = _without_victim(server, clients, consortium, first, server.initial_model())
    if again.stages:
        return "succeeded", "the near-noiseless DP update was re-submitted without the victim"
    return "refused", _reactions(again)


def _non_finite_model(world: World) -> tuple[str, str]:
    """A global model holding NaN: refused before any work, not a crash of the client."""
    server, clients, consortium = toy_world()
    model = server.initial_model().copy()
    model[0] = np.nan
    run = drive(server, clients, consortium, rounds=1, initial_model=model, max_attempts=1)
    return _no_sum_after(run, 0)


def _round_beyond_bound(world: World) -> tuple[str, str]:
    """A round numbered 10^6 (so the per-round bound on adapter moves multiplies up): refused."""
    server, clients, consortium = fedit_world(world)
    run = drive(server, clients, consortium, rounds=1, first_round=10**6, max_attempts=1)
    return _no_sum_after(run, 0)


#: FedHDS with DP selection (the coreset statistics released once, under distributed Skellam noise).
_DP_SELECTION: dict[str, Any] = {"selection_dp": {"epsilon": 2.0, "bins": 3}}


def _dp_lie(lie: Lie, *, expect_honest: int) -> Callable[[World], tuple[str, str]]:
    """A FedHDS round with DP selection under ``lie``; the server may keep ``expect_honest`` sums.

    The lying server's own session takes the adverts signed for the lie (``accept_any_advert``).
    Refused means the institutions refused the instruction itself; a lie caught only later (by the
    advert cross-check against the in-process server's own session digest) is merely contained."""
    lie.accept_any_advert = True

    def attack(world: World) -> tuple[str, str]:
        server, clients, consortium = fedhds_world(world, **_DP_SELECTION)
        run = drive(server, clients, consortium, rounds=1, lie=lie, max_attempts=1)
        outcome = _split_view(run)
        if outcome[0] == "succeeded":
            return outcome
        return _refused_by_institutions(run, expect_honest)

    return attack


def _refused_by_institutions(run: LyingRun, stage_count: int) -> tuple[str, str]:
    """Like :func:`_no_sum_after`, but "refused" only when institutions refused the instruction."""
    outcome, detail = _no_sum_after(run, stage_count)
    if outcome == "refused" and not any(run.refusals.values()):
        return "contained", detail
    return outcome, detail


def _shift_release(release: dict[str, Any]) -> dict[str, Any]:
    """Centres moved onto points of the server's choosing (to steer which records are trained on)."""
    return {**release, "centres": [[x + 0.25 for x in row] for row in release["centres"]]}


def _shift_mean(plan: dict[str, Any]) -> dict[str, Any]:
    return {**plan, "mean": [x + 0.5 for x in plan["mean"]]}


def _dp_fewer_colluders(world: World) -> tuple[str, str]:
    """DP selection: the server declares no colluders, so that noise shares are sized for t honest
    contributors; with colluders adding no noise, the sum would carry less than the target."""
    server, clients, consortium = fedhds_world(world, **_DP_SELECTION)

    class Lower(Lie):
        accept_any_advert = True

        def start(self, cid: str, start: StageStart) -> StageStart:
            if not str(start.task_config.get("stage", "")).startswith("coreset-dp"):
                return start
            return replace(start, config=replace(start.config, n_colluding=0))

    run = drive(server, clients, consortium, rounds=1, lie=Lower(), max_attempts=1)
    return _refused_by_institutions(run, 0)


def _stage_rerun(
    stage: str, then: str, options: Mapping[str, Any] | None = None, **changed: Any
) -> Callable[[World], tuple[str, str]]:
    """FedHDS: ``stage`` completes and the round then fails (a member is silent at ``then``); a fresh
    server with the same seed (so the same projection), optionally with other options (``changed``)
    that do not shape the statistics, asks the other members for ``stage`` again, without the victim.

    Non-DP: the difference of the two sums would be the victim's statistics, and neither a retry nor a
    setting may rename them. DP selection: a share carries only ``1 / (t - c)`` of the target noise,
    and a server that forgot (or pretends to have forgotten) the release must not sum it twice."""

    def attack(world: World) -> tuple[str, str]:
        base = dict(options or {})
        server, clients, consortium = fedhds_world(world, **base)
        first = drive(
            server,
            clients,
            consortium,
            rounds=1,
            max_attempts=1,
            drop=lambda cid, r, name, msg: name == then and cid == "inst04",
        )
        if not any(s.name == stage for s in first.stages):
            return "succeeded", f"the honest {stage} stage did not complete"
        rerun = fedhds_world(world, **{**base, **changed})[0]
        others = {c: t for c, t in clients.items() if c != VICTIM}
        participants = {c: first.members[c].participant for c in others}
        again = drive(
            rerun, others, consortium, rounds=1, participants=participants, first_attempt=1, max_attempts=1
        )
        if any(s.name == stage for s in again.stages):
            return "succeeded", f"the {stage} statistics were summed again over a cohort without the victim"
        return "refused", _reactions(again)

    return attack


def _honest_retry_fedhds(world: World) -> tuple[str, str]:
    """FedHDS: a member drops in the histogram stage; the coordinator retries the round. The retry must
    not re-sum the PCA statistics of the same projection over the smaller cohort."""
    server, clients, consortium = fedhds_world(world)
    from secfed.secagg.messages import MaskedInputRequest

    dropped = {"done": False}

    def drop(cid: str, round_: int, stage: str, msg: Any) -> bool:
        # inst04 goes silent once, at the histogram stage's masked input, and is back for the retry.
        first = not dropped["done"]
        if first and cid == "inst04" and stage == "coreset-histogram" and isinstance(msg, MaskedInputRequest):
            dropped["done"] = True
            return True
        return False

    run = drive(server, clients, consortium, rounds=1, drop=drop, max_attempts=3)
    seeds = []
    for st in run.stages:
        if st.name == "coreset-pca" and st.broadcast is not None:
            seeds.append((st.broadcast.get("round_seed"), tuple(st.result.contributors)))
    cohorts_per_seed: dict[Any, set[tuple[str, ...]]] = {}
    for seed, cohort in seeds:
        cohorts_per_seed.setdefault(seed, set()).add(cohort)
    if any(len(c) > 1 for c in cohorts_per_seed.values()):
        return "succeeded", "PCA statistics of one projection were summed over two cohorts"
    detail = f"{len(seeds)} PCA sum(s), each projection summed once; {run.finished_reason}"
    if not run.finished_reason.startswith("completed"):
        return "refused", detail
    return "contained", detail


def _train_floor(n: int) -> Callable[[World], tuple[str, str]]:
    """FedHDS train stage with tiny data: every contributor of the train sum must have trained."""

    def attack(world: World) -> tuple[str, str]:
        server, clients, consortium = fedhds_world(world, n=n)
        run = drive(server, clients, consortium, rounds=1, max_attempts=1)
        train = [s for s in run.stages if s.name == "train"]
        if not train:
            return "refused", _reactions(run)
        empty = [c for c in train[0].result.contributors if not len(clients[c].last_selected)]
        if empty:
            return "succeeded", f"{len(empty)} contributor(s) of the train sum trained on no record"
        floor = max(3, int(n // 3) + 2)
        if len(train[0].result.contributors) < floor:
            return (
                "succeeded",
                f"the train sum holds {len(train[0].result.contributors)} < c + 2 institutions",
            )
        return "contained", f"all {len(train[0].result.contributors)} contributors trained on >= 1 record"

    return attack


def _round0_adapter(world: World) -> tuple[str, str]:
    server, clients, consortium = fedit_world(world)
    crafted = _Model(lambda m, r: m + 0.05 if r == 0 else None)
    run = drive(server, clients, consortium, rounds=1, lie=crafted, max_attempts=1)
    return _no_sum_after(run, 0)


def _adapter_jump(world: World) -> tuple[str, str]:
    server, clients, consortium = fedit_world(world, clip=0.5)
    jump = _Model(lambda m, r: m + 10.0 if r == 1 else None)
    run = drive(server, clients, consortium, rounds=2, lie=jump, max_attempts=1)
    return _no_sum_after(run, 1)


def _insecure(world: World) -> tuple[str, str]:
    server, clients, consortium = toy_world()

    class Plaintext(Lie):
        def start(self, cid: str, start: StageStart) -> StageStart:
            return replace(start, secure=False)

    run = drive(server, clients, consortium, rounds=1, lie=Plaintext(), max_attempts=1)
    sent = [m for m in run.members.values() if m.refusals == []]
    if any(s.name for s in run.stages) or len(sent) != 0:
        return "succeeded", "an institution sent its contribution in the clear"
    return "refused", _reactions(run)


def _session_floor(
    field: Literal["n_colluding", "threshold"], value: int
) -> Callable[[World], tuple[str, str]]:
    """The server lowers a SecAgg parameter of the session (threshold, colluder bound, cohort floor)."""

    def attack(world: World) -> tuple[str, str]:
        server, clients, consortium = toy_world(6)

        class Lower(Lie):
            def start(self, cid: str, start: StageStart) -> StageStart:
                if field == "n_colluding":
                    return replace(start, config=replace(start.config, n_colluding=value))
                return replace(start, config=replace(start.config, threshold=value))

        run = drive(server, clients, consortium, rounds=1, lie=Lower(), max_attempts=1)
        return _no_sum_after(run, 0)

    return attack


def _unknown_field(world: World) -> tuple[str, str]:
    server, clients, consortium = toy_world()
    lie = _Mutate("assigned", lambda _: {VICTIM: [0]}, to=_everyone)
    return _no_sum_after(drive(server, clients, consortium, rounds=1, lie=lie, max_attempts=1), 0)


def _missing_field(world: World) -> tuple[str, str]:
    server, clients, consortium = toy_world()

    class Drop(Lie):
        def start(self, cid: str, start: StageStart) -> StageStart:
            return resign(start, {k: v for k, v in start.task_config.items() if k != "clip"})

    return _no_sum_after(drive(server, clients, consortium, rounds=1, lie=Drop(), max_attempts=1), 0)


def _fedhds_assigned(world: World) -> tuple[str, str]:
    lie = _Mutate("assigned", lambda _: {VICTIM: [0]}, to=_everyone, stage="train")
    return _chosen_records(world, lie)


def _chosen_records(world: World, lie: Lie) -> tuple[str, str]:
    server, clients, consortium = fedhds_world(world)
    run = drive(server, clients, consortium, rounds=1, lie=lie, max_attempts=1)
    if any(s.name == "train" for s in run.stages):
        return "succeeded", "a train sum was released under the server's record choice"
    return "refused", _reactions(run)


def _chosen_winners(world: World) -> tuple[str, str]:
    def only_victim(winners: list[list[int]]) -> list[list[int]]:
        return [[w[0], w[1], (w[2] + 1) % 64] for w in winners]

    return _chosen_records(world, _plan_lie("train", "winners", only_victim))


def _relay_lie(world: World) -> tuple[str, str]:
    """A lying relay on top of the instruction checks: the masked-input request names a ready set
    without the victim's peers, so its input would be summed with few others."""
    server, clients, consortium = toy_world(6)

    class Shrink(Lie):
        def relay(self, cid: str, msg: Relay) -> Relay:
            from secfed.secagg.messages import MaskedInputRequest

            if isinstance(msg, MaskedInputRequest) and cid == VICTIM:
                return replace(msg, ready=(VICTIM, "inst01"))
            return msg

    run = drive(server, clients, consortium, rounds=1, lie=Shrink(), max_attempts=1)
    victim_in = any(VICTIM in s.result.contributors for s in run.stages)
    if victim_in and any(len(s.result.contributors) < 4 for s in run.stages):
        return "succeeded", "the victim's input was summed with fewer than c + 2 institutions"
    return ("contained" if run.stages else "refused"), _reactions(run)


ATTACKS: tuple[Attack, ...] = (
    # 1. Split views of the task configuration (the server hands members different settings).
    Attack("toy: other members get dim + 1", "split-view", _toy_split("dim", lambda v: v + 1)),
    Attack("toy: other members get max_weight 1", "split-view", _toy_split("max_weight", lambda v: 1)),
    Attack("toy: other members get clip / 8", "split-view", _toy_split("clip", lambda v: v / 8)),
    Attack("toy: other members get frac_bits - 8", "split-view", _toy_split("frac_bits", lambda v: v - 8)),
    Attack("toy: other members get another stage", "split-view", _toy_split("stage", lambda v: "other")),
    Attack(
        "fedit: other members get lr x 10, the victim's advert relayed to them",
        "split-view",
        _fedit_split_relay,
    ),
    Attack(
        "toy: other members get clip / 8, hash not re-signed",
        "split-view",
        _toy_split("clip", lambda v: v / 8, sign=False),
    ),
    Attack("fedit: other members get max_weight 0", "split-view", _fedit_split("max_weight", lambda v: 0)),
    Attack("fedit: other members get lr x 10", "split-view", _fedit_split("train.lr", lambda v: v * 10)),
    Attack(
        "fedit: other members get local_steps + 1",
        "split-view",
        _fedit_split("train.local_steps", lambda v: v + 1),
    ),
    Attack(
        "fedit: other members get DP switched on",
        "split-view",
        _fedit_split(
            "dp",
            lambda v: {
                "noise_multiplier": 1.0,
                "delta": 1e-5,
                "rounds": None,
                "target_epsilon": None,
                "max_grad_norm": 1.0,
                "expected_batch_size": 2,
                "max_physical_batch": 2,
            },
        ),
    ),
    Attack(
        "fedhds: the victim gets other grid bins",
        "split-view",
        _fedhds_lie(_Mutate("coreset.bins", lambda v: v + 1, to=_victim), expect_honest=None),
        "contained",
    ),
    # 2. Server-chosen training records.
    Attack("fedhds: the server names the victim's record ('assigned')", "chosen-records", _fedhds_assigned),
    Attack("fedhds: the server picks election winners", "chosen-records", _chosen_winners),
    # 3. Unverified coreset plans.
    Attack(
        "fedhds: a cell of too few institutions listed as allowed",
        "unverified-plan",
        _fedhds_lie(_plan_lie("coreset-histogram", "allowed", _swap_allowed), expect_honest=2),
    ),
    Attack(
        "fedhds: a server-chosen (axis-aligned) space",
        "unverified-plan",
        _fedhds_lie(_plan_lie("coreset-occupancy", "space", _rotate_basis), expect_honest=1),
    ),
    Attack(
        "fedhds: election centres moved (distance oracle)",
        "unverified-plan",
        _fedhds_lie(_plan_lie("coreset-election", "clusters", _shift_centres), expect_honest=3),
    ),
    Attack(
        "fedhds: election radii shrunk (distance oracle)",
        "unverified-plan",
        _fedhds_lie(_plan_lie("coreset-election", "clusters", _shrink_radii), expect_honest=3),
    ),
    Attack(
        "fedhds-dp: release centres moved (steering the local choice)",
        "unverified-plan",
        _dp_lie(_plan_lie("train", "release", _shift_release), expect_honest=3),
    ),
    Attack(
        "fedhds-dp: moments planned around a server-chosen mean",
        "unverified-plan",
        _dp_lie(_plan_lie("coreset-dp-moments", "dp", _shift_mean), expect_honest=1),
    ),
    Attack(
        "fedhds: forged masked input in the PCA evidence",
        "unverified-plan",
        _fedhds_lie(_Evidence("forge"), expect_honest=1),
    ),
    Attack(
        "fedhds: PCA evidence withheld (plan on the server's word)",
        "unverified-plan",
        _fedhds_lie(_Evidence("withhold"), expect_honest=1),
    ),
    Attack(
        "fedhds: local_min_cluster_size 10^4 (every record its own centroid)",
        "unverified-plan",
        _fedhds_lie(_Mutate("coreset.local_min_cluster_size", lambda v: 10_000, to=_everyone)),
    ),
    Attack(
        "fedhds: dims = k0 = 256 (a per-record sketch)",
        "unverified-plan",
        _fedhds_lie(_Mutate("coreset", lambda c: {**c, "k0": 256, "dims": 256}, to=_everyone)),
    ),
    # 4. Differencing: the same private input summed over two cohorts.
    Attack("toy: completed round re-run without the victim", "differencing", _differencing_toy(False)),
    Attack(
        "toy: completed round re-run without the victim, institutions restarted",
        "differencing",
        _differencing_toy(True),
    ),
    Attack(
        "fedit: completed round re-run under another public seed", "differencing", _rerun_fedit(_reseeded)
    ),
    Attack(
        "fedit: completed round re-run with a clip nothing reaches",
        "differencing",
        _rerun_fedit(lambda ins: ins, clip=1.25),
    ),
    Attack(
        "fedit: completed round re-run with weight decay -0.0", "differencing", _rerun_fedit(_zero_sign_decay)
    ),
    Attack(
        "fedit: round 1 re-run with another init seed (checked at round 0 only)",
        "differencing",
        _rerun_fedit(_other_init_seed, round_=1),
    ),
    Attack("toy: completed round re-run with a clip nothing reaches", "differencing", _rerun_toy_clip),
    Attack(
        "fedit: DP with negligible noise for institutions without a budget, re-run without the victim",
        "differencing",
        _dp_negligible_noise,
    ),
    Attack(
        "toy: coordinator silent after the masked inputs, then its retry",
        "differencing",
        _crash_before_unmask,
        "contained",
    ),
    Attack(
        "toy: two members unmask, the session is called failed, re-run without the victim",
        "differencing",
        _unmask_then_retry_without_victim,
    ),
    Attack(
        "fedhds: completed PCA re-run without the victim",
        "differencing",
        _stage_rerun("coreset-pca", "coreset-occupancy"),
    ),
    Attack(
        "fedhds: completed PCA re-run without the victim, clip changed",
        "differencing",
        _stage_rerun("coreset-pca", "coreset-occupancy", clip=1.25),
    ),
    Attack(
        "fedhds-dp: released mean stage asked again without the victim",
        "differencing",
        _stage_rerun("coreset-dp-mean", "coreset-dp-moments", _DP_SELECTION),
    ),
    Attack(
        "fedhds: honest dropout in the histogram, then the coordinator's retry",
        "differencing",
        _honest_retry_fedhds,
        "contained",
    ),
    # 5. Data-bearing floor of the train sum.
    Attack("fedhds: train sum of 3 institutions with tiny data", "train-floor", _train_floor(3), "contained"),
    Attack("fedhds: train sum of 6 institutions with tiny data", "train-floor", _train_floor(6), "contained"),
    # 6. Colluder floor.
    Attack(
        "fedhds: cells of 2 institutions allowed (below c + 2)",
        "colluder-floor",
        _fedhds_lie(_Mutate("coreset.min_cohort", lambda v: 2, to=_everyone)),
    ),
    Attack("session: colluder bound claimed 0", "colluder-floor", _session_floor("n_colluding", 0)),
    Attack("fedhds-dp: noise shares sized for no colluders", "colluder-floor", _dp_fewer_colluders),
    Attack("session: threshold lowered to 3 of 6", "colluder-floor", _session_floor("threshold", 3)),
    Attack("relay: masked-input request to a ready set of 2", "colluder-floor", _relay_lie, "contained"),
    # 7. The global model.
    Attack("fedit: crafted round-0 adapter", "global-model", _round0_adapter),
    Attack("fedit: adapter jump beyond the clip bound", "global-model", _adapter_jump),
    Attack("toy: a global model holding NaN", "global-model", _non_finite_model),
    Attack("fedit: round numbered 10^6", "global-model", _round_beyond_bound),
    # 8. Insecure modes and instruction hygiene.
    Attack("toy: insecure plaintext round", "insecure", _insecure),
    Attack("toy: unknown instruction field", "instruction", _unknown_field),
    Attack("toy: instruction field missing", "instruction", _missing_field),
)


def run_catalogue(workdir: Path, *, only: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every attack (or those whose name contains ``only``) and summarise."""
    world = World(workdir)
    rows: list[dict[str, str]] = []
    for attack in ATTACKS:
        if only is not None and only not in attack.name:
            continue
        started = time.perf_counter()
        try:
            outcome, detail = attack.run(world)
        except Exception as exc:  # an attack that crashes the framework is a finding, not a pass
            outcome, detail = "succeeded", f"crashed: {type(exc).__name__}: {exc}"
        rows.append({"name": attack.name, "class": attack.cls, "outcome": outcome, "detail": detail})
        if progress:
            print(f"  {outcome:<10} {time.perf_counter() - started:5.1f} s  {attack.name}", flush=True)
    count = {k: sum(r["outcome"] == k for r in rows) for k in ("refused", "contained", "succeeded")}
    return {"benchmark": "attacks", "tried": len(rows), **count, "attacks": rows}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("attacks", help="the adversarial catalogue: a lying server against real institutions")
    p.add_argument("--only", help="run only the attacks whose name contains this text")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="secfed-attacks-") as tmp:
        result = run_catalogue(Path(tmp), only=args.only, progress=not args.json)
    result["bench_wall_s"] = time.perf_counter() - started
    if not emit(result, args.out, args.json):
        print(
            f"attacks: tried {result['tried']}, refused {result['refused']}, contained {result['contained']}, "
            f"succeeded {result['succeeded']}"
        )
    return 0 if result["succeeded"] == 0 else 1
