"""FedIT over the real mTLS gRPC federation with a tiny random Llama: the global adapter after each
round is exactly the plaintext FedAvg of the clients' updates, up to fixed-point rounding."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from client.config import RetryPolicy
from client.runtime import ClientRuntime
from secfed.dp.accounting import DpEvent, epsilon_pld
from secfed.dp.ledger import PrivacyLedger
from secfed.dp.policy import PrivacyPolicy
from secfed.dp.sgd import DpSettings
from secfed.fl.fedit import DELTA_FRAC_BITS, FeditClient
from secfed.fl.policy import InstitutionPolicy
from secfed.model.tiny import tiny_llama
from secfed.pki.kit import load_kit
from server.config import ServerConfig
from server.coordinator import RoundPlan
from server.runtime import FederationServer
from tests.federation.support import provision_kits

pytestmark = pytest.mark.timeout(300)


class RecordingClient(FeditClient):
    """Test double: keeps the plaintext contribution it hands to secure aggregation."""

    contributions: dict[tuple[str, int], dict[str, np.ndarray]]
    started: ClassVar[list[tuple[str, int]]] = []  # every (client, round) whose local work began

    def compute(self, round_: int, model: np.ndarray, task_config: Any) -> dict[str, np.ndarray]:
        RecordingClient.started.append((self.client_id, round_))
        out = super().compute(round_, model, task_config)
        self.contributions[(self.client_id, round_)] = {k: np.array(v) for k, v in out.items()}
        return out


def _federate(
    tmp_path: Path,
    server_model: Path,
    client_models: list[Path],
    rounds: int,
    *,
    dp: dict[str, Any] | None = None,
    privacy: dict[int, dict[str, Any]] | None = None,
    report_loss: bool = False,
    report_eval: bool = False,
) -> tuple[
    FederationServer, list[np.ndarray], list[Any], dict[tuple[str, int], dict[str, np.ndarray]], list[Any]
]:
    """Run ``rounds`` FedIT rounds over loopback mTLS gRPC with one client thread per model directory."""
    n = len(client_models)
    pki = provision_kits(tmp_path, n)
    roster = tuple(f"inst{i:02d}" for i in range(n))
    train = {"local_steps": 2, "batch_size": 2, "max_length": 64, "lr": 5e-3, "style": "chat"}
    if dp is not None:
        train["local_steps"] = 3
    config = ServerConfig(
        listen="127.0.0.1:0",
        kit=pki / "server",
        state_db=tmp_path / "run" / "state.sqlite",
        roster=roster,
        plan=RoundPlan(rounds=rounds, phase_timeout_s=120.0),
        task="fedit-lora",
        task_options={
            "model": str(server_model),
            "train": train,
            "max_weight": 8,
            "dp": dp,
            "report_loss": report_loss,
            "report_eval": report_eval,
        },
    )
    server = FederationServer.start(config)
    initial = [server.coordinator.model.copy()]
    contributions: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    reports: list[Any] = []
    errors: list[BaseException] = []

    def run(i: int, cid: str) -> None:
        task = RecordingClient(
            cid,
            {
                "model": str(client_models[i]),
                "data": "builtin",
                "client_index": i,
                "n_clients": n,
                "train_per_category": 3,
                "test_per_category": 1,
            },
            privacy=PrivacyPolicy.from_mapping(privacy[i]) if privacy and i in privacy else None,
        )
        task.contributions = contributions
        try:
            reports.append(
                ClientRuntime(
                    load_kit(pki / "clients" / cid),
                    task,
                    address=f"127.0.0.1:{server.port}",
                    retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=60),
                    policy=InstitutionPolicy(
                        share_loss=report_loss, eval_holdout=0.5 if report_eval else 0.0
                    ),
                ).run()
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, cid), daemon=True) for i, cid in enumerate(roster)]
    for t in threads:
        t.start()
    try:
        reason = server.wait(linger_s=5.0)
    finally:
        server.stop()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert reason == f"completed {rounds} rounds"
    return server, initial, list(server.coordinator.results), contributions, reports


def test_global_adapter_is_plaintext_fedavg_of_client_updates(tmp_path: Path, tiny_model_dir: Path) -> None:
    n = 3
    server, models, results, contributions, _ = _federate(tmp_path, tiny_model_dir, [tiny_model_dir] * n, 2)
    roster = tuple(f"inst{i:02d}" for i in range(n))
    final = server.coordinator.model.copy()

    model = models[0]
    for round_, result in enumerate(results):
        assert result.contributors == roster
        ups = [contributions[(cid, round_)] for cid in roster]
        total_w = sum(float(u["weight"][0]) for u in ups)
        expected = model + np.sum([u["delta"] for u in ups], axis=0) / total_w
        # each contributor's fixed-point rounding is at most 2^-f, then divided by the total weight
        tolerance = n * 2.0**-DELTA_FRAC_BITS / total_w
        got = model + result.values["delta"] / float(result.values["weight"][0])
        np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0)
        assert float(result.values["weight"][0]) == total_w
        model = got.astype(np.float32)
    np.testing.assert_allclose(final, model, atol=1e-6, rtol=0)
    assert not np.array_equal(final, models[0])  # training moved the adapter
    assert (tmp_path / "run" / "adapter").is_dir()  # exported as a peft directory


def test_the_server_learns_the_cohort_mean_training_loss_and_no_institutions_own(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Secure learning curves: the losses ride in the secure sum, so the server's mean equals the mean
    of what the institutions recorded, and no institution's own loss is anywhere on the server side
    (its state database, rounds log, results); each institution ledgers the loss as a release. The
    evaluation curve (the received adapter on held-out records) rides along the same way, and the
    coordinator's progress line shows both means."""
    n = 3
    ledgers = {i: tmp_path / f"ledger-{i}.jsonl" for i in range(n)}
    caplog.set_level(logging.INFO, logger="secfed.server.coordinator")
    _, _, results, contributions, _ = _federate(
        tmp_path,
        tiny_model_dir,
        [tiny_model_dir] * n,
        2,
        report_loss=True,
        report_eval=True,
        privacy={i: {"ledger": str(path)} for i, path in ledgers.items()},
    )
    roster = tuple(f"inst{i:02d}" for i in range(n))
    server_side = (tmp_path / "run" / "rounds.jsonl").read_text() + (
        tmp_path / "run" / "state.sqlite"
    ).read_bytes().decode("latin-1")
    for round_, result in enumerate(results):
        mine = [contributions[(cid, round_)] for cid in roster]
        assert float(result.values["loss_n"][0]) == n
        assert float(result.values["eval_n"][0]) == n
        for key in ("loss_first", "loss_last", "eval_loss"):
            own = [float(c[key][0]) for c in mine]
            assert min(own) > 0 and max(own) <= 20.0
            mean = float(result.values[key][0]) / n
            assert abs(mean - sum(own) / n) <= n * 2.0**-16
            for value in own:
                assert f"{value:.6f}" not in server_side and repr(value) not in server_side
    for path in ledgers.values():
        assert '"release":"loss"' in path.read_text().replace(" ", ""), path
    progress = [r.fields["progress"] for r in caplog.records if r.getMessage() == "round-complete"]  # type: ignore[attr-defined]
    assert len(progress) == 2 and all("mean train loss" in line for line in progress)
    for line, result in zip(progress, results, strict=True):
        assert f"mean eval loss {float(result.values['eval_loss'][0]) / n:.3f} (received adapter)" in line


def test_institution_with_another_base_model_refuses_and_the_round_goes_on(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    other = tmp_path / "other-model"
    loaded = tiny_llama(seed=2)  # same architecture, different weights
    loaded.model.save_pretrained(other)
    loaded.tokenizer.save_pretrained(other)
    server, _, results, _, reports = _federate(tmp_path, tiny_model_dir, [tiny_model_dir] * 3 + [other], 1)
    assert results[0].contributors == ("inst00", "inst01", "inst02")
    assert server.coordinator.refusals and server.coordinator.refusals[0][1] == "inst03"
    # the server is told the category only; the reason stays in the institution's own log
    assert server.coordinator.refusals[0][2] == "policy"
    refused = next(r for r in reports if r.client_id == "inst03")
    assert refused.rounds_completed == [] and "not this institution's" in refused.refusals[0][1]


def test_budget_guard_refuses_the_round_that_would_overshoot_and_the_federation_goes_on(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 2, "max_physical_batch": 2}
    steps = 3
    RecordingClient.started.clear()
    probe = FeditClient("inst03", _data_options(3, 4))
    rate = DpSettings(1.0, 1.0, 2).sample_rate(len(probe.records))
    one, two = (epsilon_pld([DpEvent(1.0, rate, steps)] * k, 1e-5) for k in (1, 2))
    budget = (one + two) / 2  # round 0 fits, round 1 would overshoot
    ledgers = {i: tmp_path / f"privacy-{i}.jsonl" for i in range(4)}
    privacy = {
        i: {"ledger": str(ledgers[i]), "delta": 1e-5, "budget_epsilon": budget if i == 3 else 100.0}
        for i in range(4)
    }
    server, _, results, contributions, _reports = _federate(
        tmp_path, tiny_model_dir, [tiny_model_dir] * 4, 3, dp=dp, privacy=privacy
    )
    assert "inst03" in results[0].contributors
    assert all(r.contributors == ("inst00", "inst01", "inst02") for r in results[1:])
    refusals = [(r, c) for r, c, _ in server.coordinator.refusals]
    assert refusals == [(1, "inst03"), (2, "inst03")]
    # Policy before work: the rounds it refused were refused before any training began.
    assert [r for c, r in RecordingClient.started if c == "inst03"] == [0]
    # the server learns the category only: an epsilon figure would reveal the record count
    assert all(reason == "budget" for _, _, reason in server.coordinator.refusals)
    # DP rounds weigh every institution by the public cap, not by its (private) record count
    assert all(float(c["weight"][0]) == 8.0 for c in contributions.values())

    limited = PrivacyLedger(ledgers[3], institution="inst03", delta=1e-5, budget_epsilon=budget)
    assert limited.rounds_trained() == [0]
    assert [e.body["round"] for e in limited.refusals()] == [1, 2]
    assert limited.spent().pld == pytest.approx(one, rel=1e-9)  # only the round it trained counts
    for i in range(3):
        ledger = PrivacyLedger(ledgers[i], institution=f"inst{i:02d}", delta=1e-5, budget_epsilon=100.0)
        assert ledger.rounds_trained() == [0, 1, 2]
        assert [e.sample_rate for e in ledger.events()] == [
            DpSettings(1.0, 1.0, 2).sample_rate(len(FeditClient(f"inst{i:02d}", _data_options(i, 4)).records))
        ] * 3


def _data_options(i: int, n: int) -> dict[str, Any]:
    return {
        "data": "builtin",
        "client_index": i,
        "n_clients": n,
        "train_per_category": 3,
        "test_per_category": 1,
    }
