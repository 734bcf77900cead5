"""``secfed simulate --backend ray``: virtual institutions in Ray workers, over the real coordinator.

One federation of 30 institutions, 5 sampled per round, 3 rounds of FedIT on the tiny model, run by
the Ray backend on a single-node cluster of 2 CPUs bound to 127.0.0.1. Each of its rounds is then run
again by the in-process driver (:func:`secfed.bench.inprocess.drive`) from the same global model and
seed, with institutions that record the plaintext update each computes: the Ray round's decoded sum
must be the sum of those updates and its next adapter the in-process one, both within fixed-point
rounding. Round by round, because the encoder rounds stochastically (fresh OS randomness, by design):
two runs' adapters differ by ~2^-32 after one round, and the next round's training (Adam's first
step divides by the gradient's size) amplifies that to ~1e-7, between two in-process runs alike.
Every institution that took part must keep its own ledgers, which the audit reports verify.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]  # (a dependency of peft)
import pytest
import torch
from numpy.typing import NDArray

from secfed.audit.commands import make_reports, verify_reports
from secfed.bench.inprocess import drive, make_consortium
from secfed.chain import HashChain
from secfed.fl.fedit import DELTA_FRAC_BITS, FeditClient, FeditServer, ModelPool
from secfed.harness import simulate
from secfed.harness.layout import client_ids
from secfed.harness.presets import Preset
from secfed.harness.ray_backend import LOOPBACK, check_loopback, start_loopback_cluster
from secfed.harness.simulate import SimulationOptions, run_simulation

N, PER_ROUND, ROUNDS = 30, 5, 3
TRAIN = {"local_steps": 1, "batch_size": 2, "max_length": 48, "lr": 1e-3}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[ModuleType]:
    ray = start_loopback_cluster(num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()


def _preset(model: Path) -> Preset:
    return Preset(
        name="ray-test",
        description="FedIT on the tiny model, 5 of 30 institutions per round",
        clients=N,
        rounds=ROUNDS,
        task="fedit-lora",
        task_options=MappingProxyType({"model": str(model), "train": TRAIN, "max_weight": 8}),
        client_options=MappingProxyType(
            {
                "model": str(model),
                "device": "cpu",
                "data": "builtin",
                "train_per_category": 10,
                "partition": "iid",
            }
        ),
        partition_data=True,
        participation=PER_ROUND / N,
        phase_timeout_s=60.0,
        torch_threads=1,
    )


Updates = dict[int, dict[str, dict[str, NDArray[np.float64]]]]  # round -> institution -> its plaintext update


class RecordingClient(FeditClient):
    """Keeps the plaintext update it computed each round (what its masked input hides)."""

    updates: Updates

    def compute(
        self, round_: int, model: NDArray[np.float32], task_config: Mapping[str, Any]
    ) -> dict[str, NDArray[np.float64]]:
        out = super().compute(round_, model, task_config)
        self.updates.setdefault(round_, {})[self.client_id] = out
        return out


def _recording_clients(preset: Preset) -> tuple[dict[str, FeditClient], Updates]:
    updates: Updates = {}
    pool: ModelPool = {}
    clients: dict[str, FeditClient] = {}
    for i, cid in enumerate(client_ids(N)):
        client = RecordingClient(cid, preset.options_for(i, N), model_pool=pool)
        client.updates = updates
        clients[cid] = client
    return clients, updates


def _listening() -> dict[str, set[str]]:
    """The addresses every process of this tree (the driver and the Ray processes it started) listens on."""
    found: dict[str, set[str]] = {}
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.setdefault(proc.name(), set()).add(conn.laddr.ip)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.timeout(240)
def test_thirty_virtual_institutions_on_ray_sum_exactly_and_match_the_in_process_driver(
    ray_cluster: ModuleType, tiny_model_dir: Path, tmp_path: Path
) -> None:
    check_loopback(ray_cluster)
    preset = _preset(tiny_model_dir)
    out = tmp_path / "run"
    opts = SimulationOptions(
        preset=preset, out=out, clients=N, rounds=ROUNDS, phase_timeout_s=60.0, backend="ray"
    )
    result = run_simulation(opts)
    assert result["ok"], (result["problems"], result["warnings"])
    assert result["backend"] == "ray" and result["ray"]["address"] == LOOPBACK
    assert result["ray"]["workers"] == 2 and result["integrity"]["ok"]
    listening = _listening()
    assert {"gcs_server", "raylet"} <= set(listening), listening
    assert set().union(*listening.values()) <= {LOOPBACK, "::ffff:127.0.0.1"}, listening

    records = [json.loads(line) for line in (out / "state" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(ROUNDS))
    server = FeditServer(preset.task_options)
    clients, updates = _recording_clients(preset)
    consortium = make_consortium(tuple(clients))
    model = server.initial_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each Ray worker (one CPU each)
    try:
        for r in records:
            step = drive(
                server,
                clients,
                consortium,
                rounds=1,
                first_round=r["round"],
                initial_model=model,
                seed=preset.seed,
                participation=PER_ROUND / N,
                max_attempts=1,
            )
            assert step.finished_reason == f"completed {r['round'] + 1} rounds", step.aborted
            # Only the round's cohort worked: five institutions, the ones the in-process driver sampled.
            cohort = r["contributors"]
            assert len(cohort) == PER_ROUND and r["dropped"] == []
            assert sorted(step.stage_results[-1][-1].result.contributors) == cohort
            # The server's decoded sum is the sum of the cohort's plaintext updates (fixed-point rounding).
            plain = updates[r["round"]]
            assert sorted(plain) == cohort
            want = np.sum([plain[cid]["delta"] for cid in cohort], axis=0)
            got = np.asarray(r["sums"]["delta"], dtype=np.float64)
            assert got.shape == want.shape
            assert float(np.max(np.abs(got - want))) < PER_ROUND * 2.0**-DELTA_FRAC_BITS
            assert r["sums"]["weight"] == [sum(float(plain[cid]["weight"][0]) for cid in cohort)]
            # The same seed and model give the same next adapter as the in-process driver: two
            # fixed-point sums of the same updates, then one float32 rounding of the adapter.
            after = np.asarray(r["model"], dtype=np.float32)
            assert step.model is not None
            np.testing.assert_allclose(
                after, step.model, rtol=2.0**-23, atol=2 * PER_ROUND * 2.0**-DELTA_FRAC_BITS
            )
            model = after
    finally:
        torch.set_num_threads(threads)
    assert (out / "state" / "adapter" / "adapter_config.json").exists()

    # Every institution that took part keeps its own ledgers, in the run directory; the others have none.
    took_part = {cid for r in records for cid in r["contributors"]}
    for cid in client_ids(N):
        audit = out / "clients" / f"{cid}.audit.jsonl"
        if cid not in took_part:
            assert not audit.exists()
            continue
        rounds = [r["round"] for r in records if cid in r["contributors"]]
        sessions = [e.body for e in HashChain(audit).entries() if e.kind == "session"]
        assert [s["round"] for s in sessions] == rounds
        assert all(s["n"] == PER_ROUND for s in sessions)
        assert len({s["session_id"] for s in sessions}) == len(rounds)
        log = [
            json.loads(line) for line in (out / "clients" / f"{cid}.releases.jsonl").read_text().splitlines()
        ]
        assert [e["round"] for e in log if e["kind"] == "released"] == rounds
        assert {e["session"] for e in log if e["kind"] == "released"} == {s["session_id"] for s in sessions}
        privacy = HashChain(out / "clients" / f"{cid}.privacy.jsonl").entries()
        assert [e.body["round"] for e in privacy if e.kind == "non-dp-release"] == rounds
    # ...which the audit reports read as they read a process run's.
    reports = make_reports(out, institution=None, fmt="json", out=None)
    assert len(reports) == N + 1
    assert all(not problems for _, _, problems in verify_reports(out))


def _args(**changes: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in changes.items()]
    return parser.parse_args(["--preset", "smoke", *flags])


@pytest.mark.timeout(30)
def test_ray_options_are_validated_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = simulate.options_from_args(_args(backend="ray", clients=200, per_round=10))
    assert (opts.backend, opts.clients, opts.preset.participation) == ("ray", 200, 10 / 200)
    with pytest.raises(ValueError, match="to 256 with --backend process"):
        simulate.options_from_args(_args(clients=300))
    with pytest.raises(ValueError, match="--per-round must be from 3"):
        simulate.options_from_args(_args(backend="ray", clients=20, per_round=21))
    with pytest.raises(ValueError, match="need --backend process"):
        simulate.options_from_args(_args(backend="ray", fault="inst01=kill@0:masked-input"))
    with pytest.raises(ValueError, match="--ray-cpus only applies with --backend ray"):
        simulate.options_from_args(_args(ray_cpus=2))
    with pytest.raises(ValueError, match="--ray-cpus must be at least 1"):
        simulate.options_from_args(_args(backend="ray", ray_cpus=0))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install 'secfed\[ray\]'"):
        simulate.options_from_args(_args(backend="ray"))
