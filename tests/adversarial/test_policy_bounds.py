"""Each institution polices every server-chosen value with its own policy, before any work.

Attack: a server picks values that make one institution's contribution reveal its data (a huge
learning rate or rank that memorises, a weight cap with no room, a shared space of as many
dimensions as the projection, clusters of one record, a colluder bound that leaves one honest
institution in a cell). Each bound is tested on both sides: at the bound the instruction passes, one
step beyond it is refused with a typed error naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from fractions import Fraction
from typing import Any

import pytest

from secfed.bench.attacks import toy_world
from secfed.bench.inprocess import drive
from secfed.coreset.config import CoresetConfig
from secfed.dp.policy import DpOptions
from secfed.fl.fedhds import FedhdsClient, FedhdsInstruction, SelectionSettings
from secfed.fl.fedit import FeditInstruction
from secfed.fl.policy import InstitutionPolicy, RefusalCategory, Refused
from secfed.model.settings import LoraSettings, TrainSettings
from secfed.secagg.config import SessionConfig
from secfed.secagg.spec import Segment, VectorSpec

POLICY = InstitutionPolicy()
DATA = {"data": "builtin", "n_clients": 2, "client_index": 0, "train_per_category": 2}


def _fedit(**changes: Any) -> FeditInstruction:
    base = FeditInstruction(
        stage="update",
        base_hash="b" * 64,
        lora=LoraSettings(),
        train=TrainSettings(),
        max_weight=8,
        clip=1.0,
        init_seed=0,
        dp=None,
        report_loss=False,
        report_eval=False,
        quantization=None,
    )
    return base.model_copy(update=changes)


def _fedhds(coreset: CoresetConfig | None = None, **selection: Any) -> FedhdsInstruction:
    settings = SelectionSettings(
        selection="fedhds",
        random_fraction=0.05,
        feature_model="base",
        feature_layers=(-1,),
        feature_max_length=96,
        selected_epochs=1.0,
    ).model_copy(update=selection)
    return FedhdsInstruction(
        **{k: getattr(_fedit(stage="coreset-pca"), k) for k in FeditInstruction.model_fields},
        fedhds=settings,
        coreset=coreset or CoresetConfig(min_cohort=3),
        round_seed=1,
        plan=None,
    )


def _session(n: int = 4) -> SessionConfig:
    roster = tuple(f"inst{i:02d}" for i in range(n))
    spec = VectorSpec((Segment("x", 1, clip=1.0, frac_bits=0),))
    return SessionConfig(1, roster, n, n // 3, 3, spec, bytes(32))


@pytest.fixture(scope="module")
def client() -> FedhdsClient:
    return FedhdsClient("inst00", DATA)


P = POLICY
FEDIT_BOUNDS = [
    ("max_weight", {"max_weight": P.max_weight}, {"max_weight": P.max_weight + 1}),
    ("max_weight", {"max_weight": 1}, {"max_weight": 0}),
    ("clip", {"clip": P.max_clip}, {"clip": P.max_clip * 1.01}),
    ("lora.r", {"lora": LoraSettings(r=P.max_lora_rank)}, {"lora": LoraSettings(r=P.max_lora_rank + 1)}),
    ("train.lr", {"train": TrainSettings(lr=P.max_lr)}, {"train": TrainSettings(lr=P.max_lr * 1.5)}),
    ("train.lr", {"train": TrainSettings(lr=P.min_lr)}, {"train": TrainSettings(lr=P.min_lr / 2)}),
    (
        "train.local_steps",
        {"train": TrainSettings(local_steps=P.max_local_steps)},
        {"train": TrainSettings(local_steps=P.max_local_steps + 1)},
    ),
    (
        "train.epochs",
        {"train": TrainSettings(epochs=P.max_epochs)},
        {"train": TrainSettings(epochs=P.max_epochs + 1)},
    ),
    (
        "train.batch_size",
        {"train": TrainSettings(batch_size=P.max_batch_size)},
        {"train": TrainSettings(batch_size=P.max_batch_size, grad_accum=2)},
    ),
    (
        "train.max_length",
        {"train": TrainSettings(max_length=P.max_length)},
        {"train": TrainSettings(max_length=P.max_length + 1)},
    ),
]


@pytest.mark.parametrize(
    ("field", "ok", "bad"), FEDIT_BOUNDS, ids=[f"{b[0]}-{i}" for i, b in enumerate(FEDIT_BOUNDS)]
)
def test_training_bounds_both_sides(
    client: FedhdsClient, field: str, ok: dict[str, Any], bad: dict[str, Any]
) -> None:
    client.check_instruction(_fedit(**ok), POLICY)
    with pytest.raises(Refused) as err:
        client.check_instruction(_fedit(**bad), POLICY)
    assert err.value.category is RefusalCategory.BOUNDS and err.value.field == field


C = CoresetConfig(min_cohort=3)
CORESET_BOUNDS = [
    ("coreset.k0", replace(C, k0=P.max_k0), replace(C, k0=P.max_k0 + 1)),
    ("coreset.dims", replace(C, dims=P.max_dims), replace(C, dims=P.max_dims + 1)),
    ("coreset.bins", replace(C, bins=P.max_bins), replace(C, bins=P.max_bins + 1)),
    (
        "coreset.local_min_cluster_size",
        replace(C, local_min_cluster_size=P.max_local_min_cluster_size),
        replace(C, local_min_cluster_size=P.max_local_min_cluster_size + 1),
    ),
    (
        "coreset.global_min_cluster_size",
        replace(C, global_min_cluster_size=P.max_global_min_cluster_size),
        replace(C, global_min_cluster_size=P.max_global_min_cluster_size + 1),
    ),
    (
        "coreset.max_fraction",
        replace(C, max_fraction=P.max_selected_fraction),
        replace(C, max_fraction=min(1.0, P.max_selected_fraction + 0.1)),
    ),
    (
        "coreset.slot_buckets",
        replace(C, slot_buckets=P.max_slot_buckets),
        replace(C, slot_buckets=P.max_slot_buckets + 1),
    ),
    (
        "coreset.slots_per_bucket",
        replace(C, slots_per_bucket=P.max_slots_per_bucket),
        replace(C, slots_per_bucket=P.max_slots_per_bucket + 1),
    ),
    (
        "coreset.max_election_attempts",
        replace(C, max_election_attempts=P.max_election_attempts),
        replace(C, max_election_attempts=P.max_election_attempts + 1),
    ),
    ("coreset.min_cohort", replace(C, min_cohort=3), replace(C, min_cohort=2)),  # c = 1 of 4: c + 2 = 3
]


@pytest.mark.parametrize(("field", "ok", "bad"), CORESET_BOUNDS, ids=[b[0] for b in CORESET_BOUNDS])
def test_coreset_bounds_both_sides(
    client: FedhdsClient, field: str, ok: CoresetConfig, bad: CoresetConfig
) -> None:
    client.check_selection(_fedhds(ok), _session(), POLICY)
    with pytest.raises(Refused) as err:
        client.check_selection(_fedhds(bad), _session(), POLICY)
    assert err.value.field == field


def test_the_cell_floor_follows_the_institutions_own_colluder_bound(client: FedhdsClient) -> None:
    """The server claims no colluders; the institution assumes half the roster may collude."""
    wary = replace(POLICY, colluding_fraction=Fraction(1, 2))
    session = replace(_session(8), n_colluding=0, threshold=8)
    client.check_selection(_fedhds(replace(C, min_cohort=6)), session, wary)  # c = 4: c + 2 = 6
    with pytest.raises(Refused, match="c \\+ 2"):
        client.check_selection(_fedhds(replace(C, min_cohort=5)), session, wary)


@pytest.mark.parametrize(
    ("field", "ok", "bad"),
    [
        (
            "fedhds.feature_max_length",
            {"feature_max_length": P.max_feature_length},
            {"feature_max_length": P.max_feature_length + 1},
        ),
        ("fedhds.random_fraction", {"random_fraction": P.max_selected_fraction}, {"random_fraction": 0.9}),
        ("fedhds.selected_epochs", {"selected_epochs": P.max_epochs}, {"selected_epochs": P.max_epochs + 1}),
    ],
)
def test_selection_bounds_both_sides(
    client: FedhdsClient, field: str, ok: dict[str, Any], bad: dict[str, Any]
) -> None:
    client.check_selection(_fedhds(None, **ok), _session(), POLICY)
    with pytest.raises(Refused) as err:
        client.check_selection(_fedhds(None, **bad), _session(), POLICY)
    assert err.value.field == field


def test_policy_file_values_are_validated() -> None:
    with pytest.raises(ValueError, match="min_cohort"):
        InstitutionPolicy(min_cohort=2)
    with pytest.raises(ValueError, match="unknown key"):
        InstitutionPolicy.from_mapping({"max_wieght": 3})
    with pytest.raises(ValueError, match="initial_adapter_sha256"):
        InstitutionPolicy(initial_adapter_sha256="xyz")


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        (InstitutionPolicy(min_cohort=5), "min_cohort 3 is below this client's floor 5"),
        (InstitutionPolicy(colluding_fraction=Fraction(1, 2)), "threshold 3 is below this client's floor 4"),
    ],
)
def test_the_institutions_own_floor_reaches_the_secure_aggregation_session(
    policy: InstitutionPolicy, why: str
) -> None:
    """A server whose cohort parameters satisfy its own settings but not an institution's floor (its
    own cohort size, its own colluder bound) gets no input from it: the policy from the client's
    configuration, not a default, is the one every session is checked against."""
    server, clients, consortium = toy_world(4)
    run = drive(server, clients, consortium, rounds=1, policy=policy, max_attempts=1)
    assert run.finished_reason != "completed 1 rounds" and not run.stages
    for member in run.members.values():
        assert any(why in v for v in member.violations) or any(why in r for _, r in member.refusals), member
    # The default policy takes part in the very same federation.
    server, clients, consortium = toy_world(4)
    assert (
        drive(server, clients, consortium, rounds=1, max_attempts=1).finished_reason == "completed 1 rounds"
    )


def test_training_losses_leave_only_by_the_institutions_own_policy_and_never_under_dp(
    client: FedhdsClient,
) -> None:
    """A server that asks for learning curves gets them only from institutions that opted in, and
    never from one training under DP-SGD (a release its guarantee would not cover)."""
    asking = _fedit(report_loss=True)
    with pytest.raises(Refused) as err:
        client.check_instruction(asking, POLICY)
    assert err.value.category is RefusalCategory.POLICY and err.value.field == "report_loss"
    sharing = dataclasses.replace(POLICY, share_loss=True)
    client.check_instruction(asking, sharing)
    dp = DpOptions.from_mapping({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 4})
    with pytest.raises(Refused, match="DP-SGD"):
        client.check_instruction(_fedit(report_loss=True, dp=dp), sharing)


def test_a_quoted_boolean_in_the_policy_is_refused() -> None:
    """Found by an attacker review: ``share_loss = "false"`` (a string) is truthy and switched sharing on."""
    with pytest.raises(ValueError, match="share_loss must be true or false"):
        InstitutionPolicy.from_mapping({"share_loss": "false"})
    assert InstitutionPolicy.from_mapping({"share_loss": False}).share_loss is False
