"""FedHDS with DP selection end to end (tiny random Llama, real coordinator and SecAgg state machines in
process): the three release stages run once per federation, later rounds train on the public release,
and every institution derives each plan itself from the sums it verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed.bench.inprocess import run_inprocess
from secfed.coreset.dp_config import DP_STAGES
from secfed.dp.policy import PrivacyPolicy
from secfed.fl.fedhds import FedhdsClient, FedhdsServer
from secfed.fl.fedit import ModelPool

pytestmark = pytest.mark.timeout(300)
N = 5


def _options(model: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(model),
        "train": {"batch_size": 2, "max_length": 64, "lr": 5e-3, "style": "chat"},
        "max_weight": 8,
        "coreset": {"max_fraction": 0.1},
        "feature_layers": [-1, 1],
        "feature_max_length": 48,
        "selection_dp": {"epsilon": 2.0, "bins": 4},
        **extra,
    }


def _clients(model: Path, pool: ModelPool) -> dict[str, FedhdsClient]:
    data = {
        "data": "builtin",
        "n_clients": N,
        "train_per_category": 6,
        "test_per_category": 1,
        "partition": "iid",
    }
    return {
        f"inst{i:02d}": FedhdsClient(
            f"inst{i:02d}", {"model": str(model), **data, "client_index": i}, model_pool=pool
        )
        for i in range(N)
    }


def test_release_runs_once_and_later_rounds_train_on_it(tiny_model_dir: Path) -> None:
    server = FedhdsServer(_options(tiny_model_dir, coreset={"max_fraction": 0.5}))
    clients = _clients(tiny_model_dir, {})
    run = run_inprocess(server, clients, rounds=2, seed=3)
    assert run.finished_reason == "completed 2 rounds", run.aborted
    assert [s.name for s in run.stage_results[0]] == [*DP_STAGES, "train"]
    assert [s.name for s in run.stage_results[1]] == ["train"]
    for round_ in (0, 1):
        summary = server.summaries[round_]
        assert summary["mode"] == "fedhds-dp" and summary["selected"] is None
        assert summary["selection_epsilon"] == 2.0
        train = run.stage_results[round_][-1].result
        assert len(train.contributors) == N and float(train.values["weight"][0]) == 8.0 * N
    for client in clients.values():  # the same work for everyone, whatever each one accepted
        assert len(client.records) >= 6 and client.last_accepted <= len(client.last_selected)
        assert len(client.last_selected) == max(1, int(0.5 * len(client.records)))
        assert len(set(client.last_selected.tolist())) == len(client.last_selected)
    assert not np.array_equal(run.model, server.initial_model())


def _ledgered_clients(model: Path, tmp: Path, pool: ModelPool, **privacy: Any) -> dict[str, FedhdsClient]:
    data = {
        "data": "builtin",
        "n_clients": N,
        "train_per_category": 6,
        "test_per_category": 1,
        "partition": "iid",
    }
    return {
        f"inst{i:02d}": FedhdsClient(
            f"inst{i:02d}",
            {
                "model": str(model),
                **data,
                "client_index": i,
            },
            privacy=PrivacyPolicy.from_mapping(
                {"ledger": str(tmp / f"inst{i:02d}.jsonl"), "require_selection_dp": True, **privacy}
            ),
            model_pool=pool,
        )
        for i in range(N)
    }


def test_selection_is_ledgered_and_a_restarted_institution_trains_on_its_kept_release(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """require_selection_dp is satisfied by DP selection; each stage's Skellam event is in the ledger
    before it leaves; the verified sums survive a restart (kept beside the ledger), so a restarted
    institution checks the next round's release against them and trains."""
    from secfed.bench.inprocess import drive, make_consortium
    from secfed.coreset.dp_config import DpSelection, selection_events
    from secfed.dp.ledger import PrivacyLedger

    server = FedhdsServer(_options(tiny_model_dir))
    pool: ModelPool = {}
    clients = _ledgered_clients(tiny_model_dir, tmp_path, pool, require_dp=False)
    first = run_inprocess(server, clients, rounds=1, seed=3)
    assert first.finished_reason == "completed 1 rounds", first.aborted
    expected = selection_events(DpSelection(epsilon=2.0, bins=4))
    for cid in clients:
        ledger = PrivacyLedger.open_existing(tmp_path / f"{cid}.jsonl")
        events = ledger.selection_events()
        assert [e.what for e in events] == list(DP_STAGES)
        assert [(e.lam, e.l1, e.l2) for e in events] == [(x.lam, x.l1, x.l2) for x in expected.values()]
        assert (tmp_path / f"{cid}.jsonl.selection-release.json").exists()
    restarted = _ledgered_clients(tiny_model_dir, tmp_path, pool, require_dp=False)
    again = drive(
        server,
        restarted,
        make_consortium(tuple(restarted)),
        rounds=1,
        first_round=1,
        initial_model=first.model,
        max_attempts=1,
    )
    assert [s.name for s in again.stages] == ["train"], again.finished_reason
    assert all(len(c.last_selected) >= 1 for c in restarted.values())


def test_an_institution_whose_budget_cannot_hold_the_selection_refuses_before_any_release(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from secfed.dp.ledger import PrivacyLedger

    server = FedhdsServer(_options(tiny_model_dir))
    clients = _ledgered_clients(tiny_model_dir, tmp_path, {}, budget_epsilon=1.5)
    run = run_inprocess(server, clients, rounds=1, seed=3)
    assert run.finished_reason != "completed 1 rounds"
    assert not run.stage_results or not run.stage_results[0]
    categories = {category for _round, _client, category in run.refusals}
    assert categories == {"budget"}, run.refusals
    assert {client for _round, client, _category in run.refusals} == set(clients)
    for cid in clients:  # refused and ledgered as such; nothing about the records was released
        ledger = PrivacyLedger.open_existing(tmp_path / f"{cid}.jsonl")
        assert ledger.selection_events() == [] and len(ledger.refusals()) == 1


def test_dp_shapes_beyond_the_institutions_bounds_are_refused(tiny_model_dir: Path) -> None:
    """Attack: the server picks DP selection shapes that make every institution's check of its plan
    expensive or its statistics finer (k0 = 64 here): bounded by each institution's own policy."""
    from secfed.fl.policy import InstitutionPolicy

    server = FedhdsServer(_options(tiny_model_dir, selection_dp={"epsilon": 2.0, "k0": 64}))
    run = run_inprocess(
        server, _clients(tiny_model_dir, {}), rounds=1, seed=3, policy=InstitutionPolicy(max_k0=32)
    )
    assert not run.stage_results or not run.stage_results[0]
    assert {category for _round, _client, category in run.refusals} == {"bounds"}, run.refusals


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epsilon": 1.0, "model_bins": 100}, "model_bins"),
        ({"epsilon": 1.0, "density": "histogram", "bins": 70}, r"\(bins \+ 2\) \*\* dims"),
        ({"epsilon": 1.0, "max_centres": 10_000}, "max_centres"),
        ({"epsilon": 1.0, "density": "kde"}, "density"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"k0": 8}, "needs epsilon"),
    ],
)
def test_dp_settings_that_would_stall_every_institutions_check_are_refused(
    tiny_model_dir: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FedhdsServer(_options(tiny_model_dir, selection_dp=settings))


def test_a_computed_share_is_not_reused_in_a_session_with_fewer_honest_contributors(
    tiny_model_dir: Path,
) -> None:
    """Attack (found by review): the participant reuses an input computed for the same instruction.
    The server opens session A for a release stage with t - c = 6 (small shares), lets the input be
    computed, aborts before it is sent, and opens session B with the same instruction and t - c = 2: B
    would carry A's vector, a third of the noise B's sum needs. The institution refuses B."""
    from secfed.bench.inprocess import make_consortium
    from secfed.fl.instruction import instruction_hash
    from secfed.fl.participant import Participant, StageStart
    from secfed.fl.policy import Refusal
    from secfed.fl.vectors import model_hash
    from secfed.secagg.config import SessionConfig

    ids = [f"inst{i:02d}" for i in range(9)]
    server = FedhdsServer(_options(tiny_model_dir))
    data = {
        "data": "builtin",
        "n_clients": 9,
        "train_per_category": 6,
        "test_per_category": 1,
        "partition": "iid",
    }
    victim = FedhdsClient(ids[0], {"model": str(tiny_model_dir), **data, "client_index": 0})
    consortium = make_consortium(ids)
    model = np.asarray(server.initial_model(), np.float32)
    plan = server.next_stage(0, model, [], colluders=3, attempt=1)
    assert plan is not None and plan.name == DP_STAGES[0]
    refusals: list[str] = []
    member = Participant(
        consortium.identities[ids[0]],
        consortium.trust,
        victim,
        on_refusal=lambda r, c, e: refusals.append(str(c)),
    )

    def start(roster: list[str], t: int, c: int) -> StageStart:
        config = SessionConfig(
            round=0,
            roster=tuple(roster),
            threshold=t,
            n_colluding=c,
            min_cohort=3,
            spec=plan.spec,
            model_hash=model_hash(model),
            label=plan.name,
            instruction_hash=instruction_hash("fedhds-lora", plan.config),
            consortium=consortium.trust.consortium_id,
        )
        return StageStart(config, "fedhds-lora", plan.config, model)

    first = start(ids, 9, 3)
    assert not isinstance(member.start(first), Refusal)
    member._compute(first)
    assert isinstance(member.start(start(ids[:3], 3, 1)), Refusal)
    assert refusals == ["bounds"]


def test_the_offers_never_follow_the_servers_round_seed(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack (found by review): the server grinds the train stage's round_seed until the public offers
    give a centre to the institution it likes. The institution draws the offers from its own seed
    (release seed and round), so a rewritten round_seed changes nothing."""
    from secfed.bench.inprocess import drive, make_consortium
    from secfed.bench.lying import Lie, resign
    from secfed.coreset import dp_choice
    from secfed.fl.fedhds_dp import release_seed
    from secfed.fl.participant import StageStart

    seen: list[int] = []
    original = dp_choice.local_choice

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(int(kwargs["round_seed"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(dp_choice, "local_choice", spy)

    class Grind(Lie):
        accept_any_advert = True

        def start(self, cid: str, start: StageStart) -> StageStart:
            if start.task_config.get("stage") != "train":
                return start
            return resign(start, {**start.task_config, "round_seed": 199})

    server = FedhdsServer(_options(tiny_model_dir))
    clients = _clients(tiny_model_dir, {})
    drive(server, clients, make_consortium(tuple(clients)), rounds=1, lie=Grind(), max_attempts=1)
    assert seen and set(seen) == {dp_choice.offer_seed(release_seed(0), 0)}


def test_a_post_processing_setting_does_not_rename_the_release(tiny_model_dir: Path) -> None:
    """Attack (found by review): a release named by settings that do not shape its statistics
    (max_fraction, max_records, post-processing and choice settings) could be released again, with
    fresh noise, under each new value; a setting that does shape them (k0) names a new release."""
    from secfed.fl.fedhds import FedhdsInstruction

    client = _clients(tiny_model_dir, {})["inst00"]

    def key(**coreset: Any) -> str:
        server = FedhdsServer(_options(tiny_model_dir, coreset=coreset))
        return client._dp_key(FedhdsInstruction.parse(server.stage_instruction(DP_STAGES[0], 0, None).wire()))

    assert key(max_fraction=0.1) == key(max_fraction=0.3) == key(max_fraction=0.1, max_records=500)
    post = {"epsilon": 2.0, "bins": 4, "oversample": 9.0, "centres_per_budget": 2.0, "model_bins": 20}
    server = FedhdsServer(_options(tiny_model_dir, selection_dp=post))
    assert (
        client._dp_key(FedhdsInstruction.parse(server.stage_instruction(DP_STAGES[0], 0, None).wire()))
        == key()
    )
    server = FedhdsServer(_options(tiny_model_dir, selection_dp={"epsilon": 2.0, "bins": 4, "k0": 6}))
    assert (
        client._dp_key(FedhdsInstruction.parse(server.stage_instruction(DP_STAGES[0], 0, None).wire()))
        != key()
    )
    server = FedhdsServer(_options(tiny_model_dir, seed=7))
    other_seed = client._dp_key(
        FedhdsInstruction.parse(server.stage_instruction(DP_STAGES[0], 0, None).wire())
    )
    assert other_seed != key(max_fraction=0.1)
