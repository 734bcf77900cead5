"""The eval curve: each institution's loss of the global adapter it receives, on records it holds out of
training by its own policy, summed with the cohort's (``report_eval``).

The holdout is the institution's alone (a hash of each record's content below its own fraction), the
same every round and after a restart, and never trained on; a federation that asks for the curve is
refused by an institution that holds nothing out or shares no losses, and under DP-SGD; the server's
cohort mean is the mean of what the institutions measured, before training, and each ledgers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed.bench.inprocess import run_inprocess
from secfed.dp.policy import DpOptions, PrivacyPolicy
from secfed.fl.curves import EVAL_SPEC, LOSS_CLIP, cohort_eval, cohort_loss, eval_segments
from secfed.fl.fedit import (
    EVAL_MAX_RECORDS,
    EVAL_RELEASE,
    FeditClient,
    FeditInstruction,
    FeditOptions,
    FeditServer,
    ModelPool,
    split_holdout,
)
from secfed.fl.policy import InstitutionPolicy, RefusalCategory, Refused
from secfed.model.lora import vector_to_adapter
from secfed.model.train import evaluate_loss
from secfed.secagg.config import SessionConfig
from tests.adversarial.test_policy_bounds import _fedit

pytestmark = pytest.mark.timeout(300)

TRAIN = {"local_steps": 2, "batch_size": 2, "max_length": 64, "lr": 5e-3, "style": "chat"}
SHARING = InstitutionPolicy(share_loss=True, eval_holdout=0.3)


def _data(i: int, n: int, per_category: int) -> dict[str, Any]:
    return {
        "data": "builtin",
        "client_index": i,
        "n_clients": n,
        "train_per_category": per_category,
        "test_per_category": 1,
    }


def _instruction(**changes: Any) -> FeditInstruction:
    """An honest FedIT instruction that asks for the eval curve (the policy-bounds tests' baseline)."""
    return _fedit(**{"report_eval": True, **changes})


def _admitted(client: FeditClient, server: FeditServer, policy: InstitutionPolicy) -> Any:
    """Admit round 0 of ``server``'s federation at ``client`` and return the plan it made."""
    model = server.initial_model()
    roster = ("inst00", "inst01", "inst02")
    session = SessionConfig(0, roster, 3, 1, 3, server.spec(model), bytes(32))
    client.admit(0, model, server.instruction("update").wire(), session, policy)
    return client.admitted_plan(0)


def test_the_holdout_is_fixed_by_content_about_the_fraction_capped_and_disjoint_from_training() -> None:
    options = _data(0, 1, 40)
    first, second = FeditClient("inst00", options), FeditClient("inst00", options)
    records = first.records
    train, evaluate = split_holdout(records, 0.3)
    # The same split for a second construction (a restart), and in any order the records load.
    assert split_holdout(second.records, 0.3) == (train, evaluate)
    shuffled = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    assert split_holdout(shuffled, 0.3)[1] == evaluate
    assert sorted(map(repr, split_holdout(shuffled, 0.3)[0])) == sorted(map(repr, train))
    held = len(records) - len(train)
    assert abs(held / len(records) - 0.3) < 0.08, held
    assert held > EVAL_MAX_RECORDS and len(evaluate) == EVAL_MAX_RECORDS  # capped for speed
    assert not set(train) & set(evaluate)
    assert train == [r for r in records if r in set(train)]  # training keeps the records' order
    # A larger fraction only adds records to the holdout: those held out at 0.1 stay held out at 0.3.
    assert set(split_holdout(records, 0.1)[0]) >= set(train)
    assert split_holdout(records, 0.0) == (records, [])


def test_held_out_records_never_train_whether_or_not_the_round_asks_for_an_evaluation(
    tiny_model_dir: Path,
) -> None:
    options = {"model": str(tiny_model_dir), "device": "cpu", **_data(0, 1, 10)}
    client = FeditClient("inst00", options)
    train, evaluate = split_holdout(client.records, SHARING.eval_holdout)
    assert evaluate and train

    quiet = FeditServer({"model": str(tiny_model_dir), "train": TRAIN})
    plan = _admitted(client, quiet, SHARING)
    assert plan.records == train and plan.evaluate == ()
    plan = _admitted(client, quiet, InstitutionPolicy())
    assert plan.records == client.records  # no holdout: every record trains, as before

    asking = FeditServer({"model": str(tiny_model_dir), "train": TRAIN, "report_eval": True})
    plan = _admitted(client, asking, SHARING)
    assert plan.records == train and plan.evaluate == tuple(evaluate)

    # None of these 8 records falls in a 0.3 holdout: asked for a curve, the institution has no
    # evaluation to send and says so before any work (it still trains when not asked).
    small = FeditClient("inst02", {**options, **_data(2, 3, 4)})
    assert split_holdout(small.records, SHARING.eval_holdout)[1] == []
    with pytest.raises(Refused, match="none of this institution's 8 records") as err:
        _admitted(small, asking, SHARING)
    assert err.value.category is RefusalCategory.DATA and err.value.field == "report_eval"
    assert _admitted(small, quiet, SHARING).records == small.records


def test_an_eval_curve_is_refused_without_a_holdout_without_sharing_and_under_dp() -> None:
    client = FeditClient("inst00", _data(0, 2, 2))
    asking = _instruction()
    client.check_instruction(asking, SHARING)
    for policy, reason in (
        (InstitutionPolicy(share_loss=True), "eval_holdout = 0"),
        (InstitutionPolicy(eval_holdout=0.3), "share_loss = false"),
    ):
        with pytest.raises(Refused, match=reason) as err:
            client.check_instruction(asking, policy)
        assert err.value.category is RefusalCategory.POLICY and err.value.field == "report_eval"
    client.check_instruction(_instruction(report_eval=False), InstitutionPolicy())
    dp = DpOptions.from_mapping({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 4})
    with pytest.raises(Refused, match="DP-SGD") as err:
        client.check_instruction(_instruction(dp=dp), SHARING)
    assert err.value.field == "report_eval"
    mechanism = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 4}
    with pytest.raises(ValueError, match="report_eval with dp"):
        FeditOptions.from_mapping({"report_eval": True, "dp": mechanism})
    with pytest.raises(ValueError, match="report_loss and report_eval with dp"):
        FeditOptions.from_mapping({"report_loss": True, "report_eval": True, "dp": mechanism})


@pytest.mark.parametrize("value", [-0.1, 0.51, float("nan"), True, "0.1"])
def test_the_holdout_fraction_is_checked_where_the_policy_is_read(value: Any) -> None:
    with pytest.raises(ValueError, match=r"eval_holdout must be a fraction in \[0, 0.5\]"):
        InstitutionPolicy.from_mapping({"eval_holdout": value})
    assert InstitutionPolicy.from_mapping({"eval_holdout": 0.5}).eval_holdout == 0.5


def test_eval_segments_are_clipped_and_the_cohort_mean_is_their_sum_over_the_count() -> None:
    assert [s.name for s in EVAL_SPEC] == ["eval_loss", "eval_n"]
    parts = [eval_segments(x) for x in (1.5, -2.0, 99.0)]
    assert [float(p["eval_loss"][0]) for p in parts] == [1.5, 0.0, LOSS_CLIP]
    summed = {k: np.sum([p[k] for p in parts], axis=0) for k in parts[0]}
    assert cohort_eval(summed) == pytest.approx((1.5 + LOSS_CLIP) / 3)
    assert cohort_loss(summed) is None
    assert cohort_eval({"weight": np.array([3.0])}) is None
    assert cohort_eval({"eval_loss": np.array([0.0]), "eval_n": np.array([0.0])}) is None


class RecordingClient(FeditClient):
    """Test double: measures the received adapter's loss on the planned holdout itself, then keeps the
    institution's own recorded loss and the contribution it hands to secure aggregation."""

    seen: dict[tuple[str, int], tuple[float, float, dict[str, np.ndarray]]]

    def compute(self, round_: int, model: np.ndarray, task_config: Any) -> dict[str, np.ndarray]:
        plan = self.admitted_plan(round_)
        vector_to_adapter(self._peft, model)
        before = evaluate_loss(self._peft, self._base.tokenizer, plan.evaluate, plan.settings)
        out = super().compute(round_, model, task_config)
        self.seen[(self.client_id, round_)] = (before, self.last_stats.eval_loss, dict(out))
        return out


def test_the_server_learns_the_cohort_mean_eval_loss_of_the_received_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    n, rounds = 3, 2
    server = FeditServer({"model": str(tiny_model_dir), "train": TRAIN, "max_weight": 8, "report_eval": True})
    pool: ModelPool = {}
    seen: dict[tuple[str, int], tuple[float, float, dict[str, np.ndarray]]] = {}
    clients: dict[str, FeditClient] = {}
    for i in range(n):
        cid = f"inst{i:02d}"
        options = {
            "model": str(tiny_model_dir),
            "device": "cpu",
            **_data(i, n, 8),
        }
        privacy = PrivacyPolicy(ledger=tmp_path / f"{cid}-ledger.jsonl")
        client = RecordingClient(cid, options, privacy=privacy, model_pool=pool)
        client.seen = seen
        clients[cid] = client
    run = run_inprocess(server, clients, rounds=rounds, policy=SHARING)
    assert run.finished_reason == f"completed {rounds} rounds", (run.aborted, run.refusals)
    means = []
    for round_, stages in enumerate(run.stage_results):
        values = stages[-1].result.values
        assert float(values["eval_n"][0]) == n
        own = []
        for cid in clients:
            before, recorded, out = seen[(cid, round_)]
            # the institution's loss is of the adapter it received, measured before it trained
            assert recorded == pytest.approx(before, rel=1e-6)
            assert 0 < recorded < LOSS_CLIP and float(out["eval_loss"][0]) == recorded
            own.append(recorded)
        mean = cohort_eval(values)
        assert mean is not None and abs(mean - sum(own) / n) <= n * 2.0**-16
        means.append(mean)
        assert cohort_loss(values) is None  # the training curve was not asked for
    assert means[0] != means[1]  # round 1 evaluates the adapter round 0 trained
    for cid, member in clients.items():
        ledger = member.privacy.ledger
        assert ledger is not None
        evals = [e.body for e in ledger.non_dp_releases("loss") if e.body["what"] == EVAL_RELEASE]
        assert [e["round"] for e in evals] == list(range(rounds)), cid
