"""``secfed client`` under torchrun: two gloo ranks on 127.0.0.1 against one process (secfed.model.distributed).

Each scenario starts two processes with the environment torchrun would give them (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); they write what
they saw to a file, and the test compares it with a single-process run computed here. One scenario
covers both the plain and the DP-SGD round (two jobs of one group), another three failures in a row,
to keep the process starts, which dominate the time, to four pairs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import multiprocessing
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.distributed import HashStore  # type: ignore[attr-defined]

from secfed.cancel import ComputeCancelled, cancellable
from secfed.data.builtin import builtin_splits
from secfed.data.formats import Record
from secfed.dp import sgd
from secfed.dp.accounting import DpEvent, epsilon_rdp
from secfed.dp.csprng import AesCtrGaussian
from secfed.dp.sgd import DpSettings, train_local_dp
from secfed.model import distributed, train
from secfed.model.distributed import Group, Launch, joined, leading, rank_device, serve
from secfed.model.loading import LoadedModel
from secfed.model.lora import LoraSettings, adapter_to_vector, apply_lora, vector_to_adapter
from secfed.model.tiny import tiny_llama
from secfed.model.train import TrainSettings, train_local

pytestmark = pytest.mark.timeout(180)

ROUND = 3
# Batch 5 over two ranks: shares of 2 and 3 sequences, so an unweighted mean of the ranks' means
# (what a plain gradient average would give) differs from the batch mean. Two micro-batches per step.
SETTINGS = TrainSettings(local_steps=3, batch_size=5, grad_accum=2, max_length=64, lr=1e-2, seed=5)
# An expected Poisson batch of 2 over two ranks: often one rank's share is empty while the batch is not
# (the ledger counts only empty global batches); physical batches of one sequence.
DP = DpSettings(noise_multiplier=1.0, max_grad_norm=0.5, expected_batch_size=2, max_physical_batch=1)
DP_TRAIN = TrainSettings(local_steps=4, max_length=64, lr=1e-2, seed=11)
NOISE_SEED = 7
KEY = distributed.job_key(b"this institution's private key (DER)", "inst00")
# Why a tolerance: the ranks add float32 numbers in another order than one process (each rank's partial
# sum, then the all-reduce; each rank pads its share to its own longest sequence, so the matrix products
# have other shapes), which changes gradients in their last bits, and AdamW's per-coordinate
# normalisation can magnify that where a gradient is tiny. Observed: 1.6e-7 (plain) and 1.5e-8 (DP) at
# most after 3-4 steps; 1e-5 leaves a wide margin and stays far below one step's change (lr = 1e-2 per
# coordinate, 3e-2 over the round), which any wrong weighting of the shares, a missing reduction or a
# second noise draw would show.
ATOL = 1e-5


def _records() -> list[Record]:
    splits, _ = builtin_splits(1, train_per_category=2, test_per_category=1, partition="iid")
    return splits[0]


def _base() -> LoadedModel:
    return tiny_llama(seed=2)


def _model() -> tuple[Any, Any, np.ndarray]:
    """The adapter rank 0 (or the single process) trains: random A and B, as a global adapter is."""
    base = _base()
    peft = apply_lora(base.model, LoraSettings(dropout=0.0))
    start = np.random.default_rng(0).normal(0.0, 0.05, size=adapter_to_vector(peft).shape).astype(np.float32)
    vector_to_adapter(peft, start)
    return peft, base.tokenizer, start


@contextlib.contextmanager
def _counting_noise() -> Iterator[list[tuple[int, ...]]]:
    """Every draw from any AesCtrGaussian in this process, by shape."""
    draws: list[tuple[int, ...]] = []
    original = AesCtrGaussian.gaussian

    def counted(self: AesCtrGaussian, shape: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        draws.append(tuple(shape))
        return original(self, shape, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AesCtrGaussian, "gaussian", counted)
        yield draws


# -- the ranks (run in their own processes) ---------------------------------------------------------


def _launch() -> Launch:
    launch = Launch.from_environ(os.environ)
    assert launch is not None
    return launch


def _train_rank(rank: int, _arg: str) -> dict[str, Any]:
    """Rank 0: a plain round, then a DP-SGD round, each from the same start. Rank 1: serves them."""
    with joined(_launch(), torch.device("cpu"), key=KEY) as group:
        if rank > 0:
            adapters: list[np.ndarray] = []

            def keeping(fn: Callable[..., Any]) -> Callable[..., Any]:
                def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
                    out = fn(model, *args, **kwargs)
                    adapters.append(adapter_to_vector(model))
                    return out

                return wrapper

            with _counting_noise() as draws, pytest.MonkeyPatch.context() as patch:
                for name in ("train_steps", "dp_train_steps"):
                    patch.setattr(distributed, name, keeping(getattr(distributed, name)))
                jobs = serve(group, lambda _scheme: _base())
            return {"jobs": jobs, "adapters": adapters, "draws": draws}
        peft, tokenizer, start = _model()
        with leading(group):
            stats = train_local(peft, tokenizer, _records(), SETTINGS, round_=ROUND, progress=False)
            plain = adapter_to_vector(peft)
            vector_to_adapter(peft, start)
            with _counting_noise() as draws:
                dp_stats, event = train_local_dp(
                    peft,
                    tokenizer,
                    _records(),
                    DP_TRAIN,
                    DP,
                    round_=ROUND,
                    progress=False,
                    noise_seed=NOISE_SEED,
                )
            noised = adapter_to_vector(peft)
        return {
            "stats": stats,
            "plain": plain,
            "dp_stats": dp_stats,
            "event": event,
            "dp": noised,
            "draws": draws,
        }


def _ready_models() -> tuple[LoadedModel, tuple[Any, Any, np.ndarray]]:
    """Both ranks' models, built before the group forms: with short collective timeouts, a rank still
    building its model when the first job goes out would count as silent."""
    return _base(), _model()


def _failing_rank(rank: int, _arg: str) -> dict[str, Any]:
    """Three jobs, each failing in step 2: rank 0's session is abandoned (its computation cancelled),
    then rank 1 raises, then rank 1 exits. The first two leave the group usable for the next."""
    base, (peft, tokenizer, _start) = _ready_models()
    with joined(_launch(), torch.device("cpu"), key=KEY, timeout_s=10) as group:
        original = train._sequence_losses
        if rank > 0:
            calls = itertools.count()  # rank 1's forward passes: two per job (steps 1 and 2)

            def flaky(*args: Any) -> Any:
                n = next(calls)
                if n == 3:
                    raise RuntimeError("injected failure on rank 1")
                if n == 5:
                    os._exit(17)
                return original(*args)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(train, "_sequence_losses", flaky)
                return {"jobs": serve(group, lambda _scheme: base)}
        settings = TrainSettings(local_steps=3, batch_size=4, max_length=64, seed=1)
        abandoned = threading.Event()

        def abandoning(*args: Any) -> Any:  # the coordinator abandons the session during step 1
            abandoned.set()
            return original(*args)

        errors: list[tuple[str, str]] = []
        with leading(group):
            with pytest.MonkeyPatch.context() as patch, cancellable(abandoned):
                patch.setattr(train, "_sequence_losses", abandoning)
                with pytest.raises(ComputeCancelled):
                    train_local(peft, tokenizer, _records(), settings, round_=ROUND, progress=False)
            for _job in range(2):
                with pytest.raises(distributed.RankError) as caught:
                    train_local(peft, tokenizer, _records(), settings, round_=ROUND, progress=False)
                errors.append((type(caught.value).__name__, str(caught.value)))
        return {"errors": errors, "lost": group.lost}


def _hung_rank(rank: int, _arg: str) -> dict[str, Any]:
    """Rank 1 stops answering in its first forward pass (it sleeps); rank 0 waits 3 s at most."""
    base, (peft, tokenizer, _start) = _ready_models()
    with joined(_launch(), torch.device("cpu"), key=KEY, timeout_s=3) as group:
        if rank > 0:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(train, "_sequence_losses", lambda *_: time.sleep(600))
                return {"jobs": serve(group, lambda _scheme: base)}
        with leading(group), pytest.raises(distributed.RankLostError) as caught:
            train_local(peft, tokenizer, _records(), SETTINGS, round_=ROUND, progress=False)
        return {"error": str(caught.value)}


def _forged_job_rank(rank: int, _arg: str) -> dict[str, Any]:
    """Rank 1 derives its key from another institution's private key, i.e. what it receives is, for it,
    a job sealed by someone else (what an outsider writing to torchrun's port would send)."""
    base, (peft, tokenizer, _start) = _ready_models()
    key = KEY if rank == 0 else distributed.job_key(b"another institution's key", "inst00")
    with joined(_launch(), torch.device("cpu"), key=key, timeout_s=10) as group:
        if rank > 0:
            try:
                return {"jobs": serve(group, lambda _scheme: base)}
            except distributed.RankError as exc:
                return {"refused": str(exc)}
        with leading(group), pytest.raises(distributed.RankError) as caught:
            train_local(peft, tokenizer, _records(), SETTINGS, round_=ROUND, progress=False)
        return {"error": type(caught.value).__name__}


def _client_rank(rank: int, arg: str) -> dict[str, Any]:
    """The client runtime's hook: rank 1's config names a model it cannot load; rank 0's round trains
    (the coordinator part is replaced by one local training of the federation's model)."""
    from client.runtime import ClientRuntime, ClientStopped
    from secfed.fl.fedit import FeditClient
    from secfed.model.loading import load_base_model
    from secfed.pki.kit import load_kit

    pki, model_dir = arg.split("\n")
    model = model_dir if rank == 0 else f"{model_dir}-missing"
    task = FeditClient(
        "inst00", {"model": model, "device": "cpu", "data": "builtin", "train_per_category": 2}
    )

    def one_round(self: ClientRuntime) -> Any:
        base = load_base_model(model_dir, device="cpu")
        train_local(
            apply_lora(base.model, LoraSettings()), base.tokenizer, task.records, SETTINGS, progress=False
        )
        raise AssertionError("rank 1 cannot train, so rank 0's training must fail")

    runtime = ClientRuntime(load_kit(Path(pki) / "clients" / "inst00"), task, address="127.0.0.1:9")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClientRuntime, "_run_linked", one_round)
        try:
            return {"reason": runtime.run().finished_reason}
        except ClientStopped as exc:
            return {"stopped": str(exc)}


_SCENARIOS: dict[str, Callable[[int, str], dict[str, Any]]] = {
    "train": _train_rank,
    "fail": _failing_rank,
    "hang": _hung_rank,
    "client": _client_rank,
    "forged": _forged_job_rank,
}


def _rank_main(rank: int, port: int, scenario: str, arg: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
    )
    torch.set_num_threads(1)  # two ranks on a 2-core machine
    result = _SCENARIOS[scenario](rank, arg)
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


_PRELOAD = ("transformers.models.llama.modeling_llama", "peft", "opacus", "client.runtime", "secfed.fl.fedit")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_ranks(
    tmp_path: Path, scenario: str, arg: str = "", *, linger_s: float = 120
) -> tuple[list[int | None], list[dict[str, Any]]]:
    """Start both ranks, wait for them (bounded; rank 1 at most ``linger_s`` after rank 0), and
    return their exit codes (None: it had to be killed) and results.

    Forked from a fresh server process that imported the heavy libraries once (fork-safe: it never ran
    torch), rather than spawned: each spawned rank spent seconds importing them again."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *_PRELOAD])
    port = _free_port()
    procs = [
        context.Process(target=_rank_main, args=(rank, port, scenario, arg, str(tmp_path)))
        for rank in range(2)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 120  # a hung rank fails the test here (exit code None), not later
    try:
        procs[0].join(timeout=max(0.0, deadline - time.monotonic()))
        procs[1].join(timeout=max(0.0, min(deadline - time.monotonic(), linger_s)))
    finally:
        codes = [proc.exitcode for proc in procs]
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    results = [
        pickle.loads(path.read_bytes()) if (path := tmp_path / f"rank{r}.pkl").exists() else {}
        for r in range(2)
    ]
    return codes, results


# -- single-process references ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    codes, results = _run_ranks(tmp_path_factory.mktemp("train"), "train")
    assert codes == [0, 0]
    return results


@pytest.fixture(scope="module")
def alone() -> dict[str, Any]:
    peft, tokenizer, start = _model()
    stats = train_local(peft, tokenizer, _records(), SETTINGS, round_=ROUND, progress=False)
    plain = adapter_to_vector(peft)
    vector_to_adapter(peft, start)
    with _counting_noise() as draws:
        dp_stats, event = train_local_dp(
            peft, tokenizer, _records(), DP_TRAIN, DP, round_=ROUND, progress=False, noise_seed=NOISE_SEED
        )
    n_tensors = sum(1 for p in peft.parameters() if p.requires_grad)
    return {
        "start": start,
        "stats": stats,
        "plain": plain,
        "dp_stats": dp_stats,
        "event": event,
        "dp": adapter_to_vector(peft),
        "draws": draws,
        "n_tensors": n_tensors,
    }


def test_two_ranks_train_the_single_process_update(
    two_ranks: list[dict[str, Any]], alone: dict[str, Any]
) -> None:
    lead, worker = two_ranks
    np.testing.assert_allclose(lead["plain"], alone["plain"], rtol=0, atol=ATOL)
    assert np.abs(alone["plain"] - alone["start"]).max() > 100 * ATOL  # the round moved the adapter
    # The adapter is the same on every rank (the same summed gradients, the same optimizer), bit for bit.
    assert worker["jobs"] == 2
    np.testing.assert_array_equal(worker["adapters"][0], lead["plain"])
    ours, theirs = lead["stats"], alone["stats"]
    assert (ours.steps, ours.sequences, ours.tokens) == (theirs.steps, theirs.sequences, theirs.tokens)
    assert ours.first_loss == pytest.approx(theirs.first_loss, rel=1e-5)
    assert ours.last_loss == pytest.approx(theirs.last_loss, rel=1e-5)


def test_dp_noise_is_drawn_once_per_step_and_the_ledger_entry_is_the_single_process_one(
    two_ranks: list[dict[str, Any]], alone: dict[str, Any]
) -> None:
    lead, worker = two_ranks
    steps = alone["event"].steps
    # One draw per adapter tensor per logical step, all on rank 0; none on rank 1.
    assert len(alone["draws"]) == steps * alone["n_tensors"] > 0
    assert lead["draws"] == alone["draws"]
    assert worker["draws"] == []
    # The same noise (same test seed) on the same sums: the single-process DP update. Noise drawn
    # twice, or not at all, would move it by ~sigma*C/(qn) * lr-normalised steps, far beyond ATOL.
    np.testing.assert_allclose(lead["dp"], alone["dp"], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(worker["adapters"][1], lead["dp"])
    # The accountant sees the global batch: the event (rate, steps, n, empty global batches) and epsilon.
    assert lead["event"] == alone["event"]
    assert DpEvent.from_release(lead["event"], round=ROUND) == DpEvent.from_release(
        alone["event"], round=ROUND
    )
    assert epsilon_rdp([DpEvent.from_release(lead["event"])], 1e-5) == epsilon_rdp(
        [DpEvent.from_release(alone["event"])], 1e-5
    )
    assert lead["dp_stats"].sequences == alone["dp_stats"].sequences


def test_the_dp_case_has_a_batch_that_one_rank_holds_none_of() -> None:
    """The precondition of the ledger check above: some Poisson batch is non-empty for the group but
    empty for one rank (so counting that rank's empty shares would change the ledger entry)."""
    n = len(_records())
    generator = sgd._sampling_generator(DP_TRAIN.seed, ROUND)
    rate = DP.sample_rate(n)
    sizes = [
        int((torch.rand(n, generator=generator) < rate).sum()) for _ in range(DP_TRAIN.dp_steps_for(n, 2))
    ]
    assert 1 in sizes and 0 in sizes, sizes  # rank 0 holds none of a batch of one; and an empty batch


def test_a_failing_or_exiting_rank_stops_rank_0_with_the_rank_and_the_step(tmp_path: Path) -> None:
    """A cancelled job on rank 0 stays a cancellation there and ends the job on rank 1, which then
    reports its own failure in the next job: rank 0 names it, and rank 1's exit in the last."""
    codes, results = _run_ranks(tmp_path, "fail")
    assert codes == [0, 17]  # rank 1 exited in the last job; rank 0 finished and wrote its result
    (kind1, raised), (kind2, exited) = results[0]["errors"]
    assert kind1 == "RankError"
    assert f"rank 1 failed in round {ROUND}, training step 2" in raised
    assert "RuntimeError: injected failure on rank 1" in raised
    assert kind2 == "RankLostError"
    assert f"rank 1 (last seen at round {ROUND}, training step 2) stopped answering" in exited
    assert results[0]["lost"]


def test_a_silent_rank_stops_rank_0_after_the_collective_timeout(tmp_path: Path) -> None:
    """Rank 1 hangs: rank 0 names it after its timeout and its process ends (no pending operation
    keeps it alive) while rank 1 still hangs."""
    codes, results = _run_ranks(tmp_path, "hang", linger_s=0)
    assert codes == [0, None]
    error = results[0]["error"]
    assert error.startswith(f"rank 1 (last seen at round {ROUND}, training step 1) stopped answering: ")
    assert "waited up to 3 s" in error


def test_a_rank_unpickles_only_a_job_sealed_by_its_institutions_rank_0(tmp_path: Path) -> None:
    """Attack: torchrun's store listens on every interface, so an outsider can reach the ranks' job
    channel; a job is a pickle (code execution) carrying the records and the DP seed. Jobs are sealed
    under a key from the institution's private key: a rank refuses (and never unpickles) one that does
    not authenticate, and rank 0 stops."""
    codes, results = _run_ranks(tmp_path, "forged")
    assert codes == [0, 0]
    assert results[1]["refused"].startswith("rank 1: job 1 did not authenticate")
    assert results[0]["error"] in ("RankLostError", "RankError")


def test_the_client_under_torchrun_stops_with_the_failed_rank(tmp_path: Path, tiny_model_dir: Path) -> None:
    from secfed.pki.consortium import loopback_consortium, provision

    pki = provision(loopback_consortium("torchrun test", ["inst00"]), tmp_path / "pki").out
    codes, results = _run_ranks(tmp_path, "client", f"{pki}\n{tiny_model_dir}")
    assert codes == [0, 0]
    stopped = results[0]["stopped"]
    assert stopped.startswith("rank 0: rank 1 failed in round 0, preparing the job: RuntimeError: ")
    assert "loading the base model failed" in stopped and "-missing" in stopped
    assert results[1] == {"reason": "rank 1: rank 0 stopped; trained 0 jobs"}


# -- without the group --------------------------------------------------------------------------------


def test_outside_torchrun_there_is_no_launch() -> None:
    assert Launch.from_environ({}) is None
    assert Launch.from_environ({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert Launch.from_environ(env) == Launch(rank=3, world_size=4, local_rank=1, local_world_size=2)
    with pytest.raises(ValueError, match="RANK is not set"):
        Launch.from_environ({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        Launch.from_environ({**env, "WORLD_SIZE": "2", "RANK": "2"})


def test_each_rank_needs_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    launch = Launch(rank=1, world_size=4, local_rank=1, local_world_size=4)
    assert rank_device("cpu", launch) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto", launch) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        rank_device("cuda", launch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(
        ValueError, match=r"started 4 processes on this node .* 2 CUDA device\(s\).*--nproc-per-node 2"
    ):
        rank_device("auto", launch)
    with pytest.raises(ValueError, match="every rank of this node on one GPU"):
        rank_device("cuda:0", launch)
    two = Launch(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert rank_device("cuda", two) == torch.device("cuda", 1)


def test_rank_0_refuses_a_model_the_other_ranks_cannot_rebuild() -> None:
    base = _base()
    with pytest.raises(ValueError, match="must be a LoRA"):
        distributed._job(base.model, _records(), SETTINGS, None, ROUND)
    peft = apply_lora(base.model, LoraSettings())
    job = distributed._job(peft, _records(), SETTINGS, None, ROUND)
    assert (job.base_hash, job.lora, len(job.records)) == (base.base_hash, LoraSettings(), len(_records()))
    assert job.quantization is None


def test_the_other_ranks_load_the_base_with_rank_0s_quantization() -> None:
    """QLoRA under torchrun: a rank that loaded the base in full precision would train another function
    than rank 0's 4-bit one. The job carries rank 0's scheme; each rank loads its base with it at its
    first job, and a later job with another scheme is refused."""
    base = _base()
    peft = apply_lora(base.model, LoraSettings())
    vars(base.model)["is_loaded_in_4bit"] = True  # how transformers marks a bitsandbytes 4-bit model
    job = distributed._job(peft, _records(), SETTINGS, None, ROUND)
    assert job.quantization == "nf4"
    asked: list[object] = []

    def load(scheme: object) -> LoadedModel:
        asked.append(scheme)
        return _base()  # this rank's own copy (the same weights)

    worker = distributed._WorkerModel(load)
    worker.prepare(job)
    worker.prepare(job)
    assert asked == ["nf4"]
    with pytest.raises(RuntimeError, match=r"quantization changed between jobs \(nf4 -> None\)"):
        worker.prepare(dataclasses.replace(job, quantization=None))


@pytest.mark.parametrize("world", [2, 3])
def test_the_shares_make_up_the_batch_in_order(world: int) -> None:
    no_group: Any = None  # share() makes no collective call
    timeout = datetime.timedelta(seconds=1)
    groups = [
        Group(
            Launch(rank, world, rank, world),
            torch.device("cpu"),
            HashStore(),
            no_group,
            no_group,
            timeout,
            KEY,
        )
        for rank in range(world)
    ]
    for size in range(8):
        batch = list(range(100, 100 + size))
        shares = [g.share(batch) for g in groups]
        assert [i for share in shares for i in share] == batch
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
