"""FedIT over the real mTLS gRPC federation with a tiny random Llama: the global adapter after each
round is exactly the plaintext FedAvg of the clients' updates, up to fixed-point rounding."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.config import RetryPolicy
from client.runtime import ClientRuntime
from secfed.fl.fedit import DELTA_FRAC_BITS, FeditClient
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

    def compute(self, round_: int, model: np.ndarray, task_config: Any) -> dict[str, np.ndarray]:
        out = super().compute(round_, model, task_config)
        self.contributions[(self.client_id, round_)] = {k: np.array(v) for k, v in out.items()}
        return out


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    loaded = tiny_llama(seed=1)
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


def test_global_adapter_is_plaintext_fedavg_of_client_updates(tmp_path: Path, tiny_model_dir: Path) -> None:
    n = 3
    pki = provision_kits(tmp_path, n)
    roster = tuple(f"inst{i:02d}" for i in range(n))
    train = {"local_steps": 2, "batch_size": 2, "max_length": 64, "lr": 5e-3, "style": "chat"}
    config = ServerConfig(
        listen="127.0.0.1:0",
        kit=pki / "server",
        state_db=tmp_path / "run" / "state.sqlite",
        roster=roster,
        plan=RoundPlan(rounds=2, phase_timeout_s=120.0),
        task="fedit-lora",
        task_options={"model": str(tiny_model_dir), "train": train, "max_weight": 8},
    )
    models: list[np.ndarray] = []
    server = FederationServer.start(config)
    models.append(server.coordinator.model.copy())
    contributions: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    def run(i: int, cid: str) -> None:
        task = RecordingClient(
            cid,
            {
                "model": str(tiny_model_dir),
                "data": "builtin",
                "client_index": i,
                "n_clients": n,
                "train_per_category": 3,
                "test_per_category": 1,
            },
        )
        task.contributions = contributions
        try:
            ClientRuntime(
                load_kit(pki / "clients" / cid),
                task,
                address=f"127.0.0.1:{server.port}",
                retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=60),
            ).run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, cid), daemon=True) for i, cid in enumerate(roster)]
    for t in threads:
        t.start()
    try:
        assert server.wait(linger_s=5.0) == "completed 2 rounds"
        final = server.coordinator.model.copy()
        results = list(server.coordinator.results)
    finally:
        server.stop()
    for t in threads:
        t.join(30)
    assert not errors, errors

    model = models[0]
    for round_, result in enumerate(results):
        assert result.contributors == roster
        ups = [contributions[(cid, round_)] for cid in roster]
        total_w = sum(float(u["weight"][0]) for u in ups)
        expected = model + np.sum([u["delta"] for u in ups], axis=0) / total_w
        # each contributor's fixed-point rounding is at most 2^-f, then divided by the total weight
        tolerance = n * 2.0**-DELTA_FRAC_BITS / total_w + 1e-6 * np.abs(expected).max()
        got = model + result.values["delta"] / float(result.values["weight"][0])
        np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0)
        assert float(result.values["weight"][0]) == total_w
        model = got.astype(np.float32)
    np.testing.assert_allclose(final, model, atol=1e-6, rtol=0)
    assert not np.array_equal(final, models[0])  # training moved the adapter
    assert (tmp_path / "run" / "adapter").is_dir()  # exported as a peft directory
