"""An institution with several GPUs: ``secfed client`` under torchrun, data parallel over its ranks.

``torchrun --nproc-per-node K secfed client --config client.toml`` starts K copies of the client, one
per GPU (or K CPU processes). Only global rank 0 talks to the coordinator: it joins, checks and admits
instructions, evaluates, masks and uploads exactly as a single process does. Ranks 1..K-1 only
:func:`serve`: whenever rank 0 trains (:func:`secfed.model.train.train_local` or
:func:`secfed.dp.sgd.train_local_dp` inside :func:`leading`), it first broadcasts a
:class:`TrainingJob` (the adapter it starts from, which base model and LoRA settings it belongs to, the
records, the settings and the DP mechanism), then every rank trains on its share of each global batch.
The adapter that results is the same on every rank; rank 0 turns it into the round's update and masks
it once. When rank 0's client finishes or fails, it broadcasts a stop and the other ranks return.

How the pieces fit, and why:

* **Process groups**, each with its timeout, which gloo applies per operation and per rank (a wait
  that only gave up, leaving its operation pending, would keep the process from exiting). The default
  group (gloo) carries the jobs: rank 0 waits there at most the collective timeout (``timeout_s``,
  :data:`COLLECTIVE_TIMEOUT_S`) for the others to take one, while the others wait for the next job as
  long as it takes (:data:`_IDLE_TIMEOUT`: rounds can be hours apart, and a rank 0 that exits closes
  its connections, which ends that wait at once). A second gloo group, with the collective timeout on
  every rank, carries a small status exchange before every gradient reduction and the final
  statistics. The gradients go through an NCCL group on CUDA (each rank on ``cuda:LOCAL_RANK``), the
  second gloo group on CPU; the status exchange just before means every rank has reached the step, so
  NCCL's own timeout (which tears the process down) is only a last resort.
* **Batches.** Every rank draws the same global batches from the same seeded generators as a single
  process (batch order from ``(seed, round)``; under DP-SGD the Poisson sampler from the institution's
  secret seed, sent with the job) and keeps a contiguous slice of each (:meth:`Group.share`).
* **Gradients** (DDP done by hand): each rank backpropagates its share of the *global* batch mean and
  the flattened adapter gradients are summed (all-reduce) once per optimizer step, which gives the
  single-process gradient up to the order of float additions. Not torch's DistributedDataParallel
  because: it broadcasts the whole module (frozen base included) when it wraps it; it needs a forward
  pass on every rank at every step, while a rank may hold no sequence of a batch (a batch smaller than
  the group, an empty Poisson share); and DP-SGD must sum gradients after per-sample clipping, which
  Opacus's hooks on the bare model give and DDP's hooks would pre-empt. The adapter is small, so one
  reduction per step costs little next to the forward and backward passes.
* **DP-SGD** (:mod:`secfed.dp.sgd`): each rank clips its own sequences' gradients; only rank 0 holds a
  noise source and adds the step's noise, once, to its sum; the accountant gets the global rate, steps
  and empty batches from rank 0's sampler, the same as a single process's.
* **Failure.** Before each gradient reduction, and at the end of a job, the ranks exchange a status
  (ok, failed, cancelled). A rank whose work raises writes what happened to the group's store and
  reports "failed" at the next exchange, so every rank ends the job there and rank 0 raises
  :class:`RankError` naming the rank, the round and the step. A rank that exits or hangs makes the
  exchange fail (a closed connection at once, a hang after the collective timeout): :class:`RankLostError`,
  naming the ranks whose last progress report (also in the store) is behind. A cancelled computation
  on rank 0 (its session was abandoned) ends the job on every rank, and the group goes on.
* **A quantized (QLoRA) base** is loaded by every rank with the job's scheme (read from rank 0's model),
  so the base identity each rank checks covers it. Each rank loads its base at its first job, not when
  it starts: the scheme is only known then, and a full-precision copy loaded ahead "just in case" is
  what a QLoRA institution's GPUs have no room for.
* **Not here: FSDP.** Each rank holds the whole base model; a base that does not fit one GPU needs
  sharding (FSDP), which this module does not do.

Trust and the network: torchrun's store (``MASTER_ADDR:MASTER_PORT``) listens on every interface of
rank 0's host, whatever ``MASTER_ADDR`` says, and anyone who can reach it can write into it. So a job (the
institution's records, the secret DP sampling seed) never travels in the clear or as a pickle anyone
could forge: rank 0 seals it with AES-GCM under a key every rank derives from the institution's private
key (:func:`job_key`; all ranks read the same kit), numbered so a replayed or reordered job fails, and a
rank unpickles only what authenticated. On one node the gloo connections between ranks are bound to the
loopback interface. What remains reachable from the network: the store (forged progress or failure
reports can stop the client; they are never executed) and, across several nodes, gloo's gradient
exchange (neither encrypted nor authenticated by torch): run a multi-node institution on a private
network or firewall those ports.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray
from torch.distributed.distributed_c10d import PrefixStore, Store
from torch.distributed.rendezvous import rendezvous

from secfed import logs
from secfed.cancel import ComputeCancelled
from secfed.crypto.aead import DecryptionError, open_sealed, seal
from secfed.crypto.kdf import encode_fields, hkdf_sha256
from secfed.data.formats import Record
from secfed.dp.sgd import DpRoundEvent, DpSettings, dp_train_steps
from secfed.model.device import select_device
from secfed.model.loading import LoadedModel, base_hash_of
from secfed.model.lora import LoraSettings, adapter_to_vector, apply_lora, settings_of, vector_to_adapter
from secfed.model.quantization import Quantization, scheme_of
from secfed.model.train import TrainSettings, TrainStats, train_steps

__all__ = [
    "COLLECTIVE_TIMEOUT_S",
    "MAX_JOB_BYTES",
    "BaseLoader",
    "Group",
    "JobAborted",
    "Launch",
    "RankError",
    "RankLostError",
    "TrainingJob",
    "job_key",
    "joined",
    "leader_group",
    "leading",
    "rank_device",
    "serve",
]

log = logging.getLogger("secfed.distributed")
T = TypeVar("T")

#: How long a rank waits for the others at an exchange during training: the spread of one step's
#: compute across the ranks, far below it in practice. Past it, the silent ranks are declared lost.
COLLECTIVE_TIMEOUT_S = 600.0
#: The largest sealed job a rank accepts (checked before it allocates the buffer): a training round's
#: records and an adapter of 10^8 parameters fit many times over.
MAX_JOB_BYTES = 2**31
_JOB_CONTEXT = b"secfed/torchrun-job/v1"
#: How long ranks > 0 wait for rank 0's next job (between rounds, while rank 0 talks to the coordinator).
_IDLE_TIMEOUT = datetime.timedelta(days=30)
# Status codes of an exchange.
_OK, _FAILED, _CANCELLED = 0, 1, 2
_TAB = "\t"


class RankError(RuntimeError):
    """A rank of the institution's group failed during a training job; rank 0 stops the client with it."""


class RankLostError(RankError):
    """A rank stopped answering (exited, crashed, or hung past the collective timeout): the group cannot
    run another job."""


def job_key(private_key_der: bytes, client_id: str) -> bytes:
    """The key rank 0 seals jobs with: HKDF-SHA256 of the institution's private key (DER), which every
    rank of the institution holds and nobody else does."""
    return hkdf_sha256(
        private_key_der, salt=_JOB_CONTEXT, info=encode_fields(b"job-key", client_id), length=32
    )


class JobAborted(Exception):  # noqa: N818 - an outcome for ranks > 0, which go on serving
    """The job ended early on every rank (a rank failed, or rank 0's computation was cancelled); the
    group still works."""


# -- where torchrun put this process ------------------------------------------------------------------


def _env_int(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name)
    if text is None:
        raise ValueError(
            f"{name} is not set, but WORLD_SIZE is: start the client with torchrun, which sets "
            "RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
        )
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None


@dataclass(frozen=True)
class Launch:
    """This process's place in the group torchrun started (from its environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"RANK={self.rank} is outside 0..{self.world_size - 1} (WORLD_SIZE={self.world_size})"
            )
        if not 0 <= self.local_rank < self.local_world_size <= self.world_size:
            raise ValueError(
                f"LOCAL_RANK={self.local_rank}, LOCAL_WORLD_SIZE={self.local_world_size} do not fit "
                f"WORLD_SIZE={self.world_size}"
            )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Launch | None:
        """The place torchrun gave this process, or None without ``WORLD_SIZE`` or with a world of one
        (then the client is the plain single process)."""
        if "WORLD_SIZE" not in environ or _env_int(environ, "WORLD_SIZE") <= 1:
            return None
        return cls(
            rank=_env_int(environ, "RANK"),
            world_size=_env_int(environ, "WORLD_SIZE"),
            local_rank=_env_int(environ, "LOCAL_RANK"),
            local_world_size=_env_int(environ, "LOCAL_WORLD_SIZE"),
        )


def rank_device(preference: str, launch: Launch) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when the institution's device setting allows CUDA and
    CUDA is there (``auto``, ``cuda``), else the CPU (``cpu``, or ``auto`` without CUDA).

    One GPU per rank: NCCL refuses two ranks on one device, so a node with fewer GPUs than processes
    is a configuration error, reported before any rank joins (every rank reaches the same verdict)."""
    choice = preference.strip().lower()
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if choice not in ("auto", "cuda"):
        select_device(preference)  # an unknown setting, or CUDA asked for where there is none
        raise ValueError(
            f"device {preference!r} would put every rank of this node on one GPU; under torchrun use "
            "device 'cuda' or 'auto' (rank r trains on cuda:LOCAL_RANK) or 'cpu'"
        )
    select_device(choice)
    count = torch.cuda.device_count()
    if launch.local_world_size > count:
        raise ValueError(
            f"torchrun started {launch.local_world_size} processes on this node (--nproc-per-node "
            f"{launch.local_world_size}) but it has {count} CUDA device(s), and each rank needs its own: "
            f"use --nproc-per-node {count} or fewer, or device 'cpu'"
        )
    return torch.device("cuda", launch.local_rank)


# -- the job ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingJob:
    """One local training as rank 0 hands it to every rank.

    ``adapter`` is the adapter rank 0 starts from (the round's global one), ``base_hash`` and ``lora``
    say which model it belongs to (each rank loads the base itself and checks the hash). Under DP-SGD,
    ``settings.seed`` is the institution's secret Poisson seed: every rank must draw the same batches,
    and the seed never leaves the institution's processes."""

    round: int
    adapter: NDArray[np.float32]
    base_hash: str
    lora: LoraSettings
    records: tuple[Record, ...]
    settings: TrainSettings
    dp: DpSettings | None
    quantization: Quantization | None


def _job(
    model: torch.nn.Module,
    records: Sequence[Record],
    settings: TrainSettings,
    dp: DpSettings | None,
    round_: int,
) -> TrainingJob:
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError(
            "under torchrun the trained model must be a LoRA (peft) model: the other ranks rebuild it "
            "from the base model and the adapter"
        )
    base_hash = base_hash_of(model.get_base_model())
    if base_hash is None:
        raise ValueError(
            "under torchrun the base model must be loaded through secfed: the other ranks check by its "
            "hash that they train the same one"
        )
    return TrainingJob(
        round_,
        adapter_to_vector(model),
        base_hash,
        settings_of(model),
        tuple(records),
        settings,
        dp,
        scheme_of(model.get_base_model()),
    )


#: How a rank > 0 loads its copy of the base model, with the job's quantization scheme.
BaseLoader = Callable[[Quantization | None], LoadedModel]


class _WorkerModel:
    """A rank's own copy of what rank 0 trains: the same base (checked by hash), LoRA layers of the
    job's settings, and each job's starting adapter. The base is loaded at the first job, with the
    job's quantization scheme, and kept for the following ones (which must use the same)."""

    def __init__(self, load: BaseLoader | None) -> None:
        self._load = load
        self._base: LoadedModel | None = None
        self._scheme: Quantization | None = None
        self._peft: Any = None
        self._lora: LoraSettings | None = None

    def _loaded(self, job: TrainingJob) -> LoadedModel:
        if self._load is None:
            raise RuntimeError(
                "this institution's task names no model, and ranks > 0 only train LoRA adapters"
            )
        if self._base is None:
            try:
                self._base = self._load(job.quantization)
            except Exception as exc:  # reported to rank 0 with this job, which stops the client
                raise RuntimeError(f"loading the base model failed: {type(exc).__name__}: {exc}") from exc
            self._scheme = job.quantization
        elif job.quantization != self._scheme:
            raise RuntimeError(
                f"the base model's quantization changed between jobs ({self._scheme} -> {job.quantization})"
            )
        return self._base

    def prepare(self, job: TrainingJob) -> tuple[Any, Any]:
        """The peft model holding the job's adapter, and the tokenizer."""
        base = self._loaded(job)
        if base.base_hash != job.base_hash:
            raise RuntimeError(
                f"this rank loaded base model {base.source!r} ({base.base_hash[:16]}...) but rank 0 trains "
                f"{job.base_hash[:16]}...: every rank must load the same model (the same client config)"
            )
        if self._peft is None:
            self._peft, self._lora = apply_lora(base.model, job.lora), job.lora
        elif job.lora != self._lora:
            raise RuntimeError(f"the LoRA settings changed between jobs ({self._lora} -> {job.lora})")
        vector_to_adapter(self._peft, job.adapter)
        return self._peft, base.tokenizer


# -- the group ----------------------------------------------------------------------------------------


class Group:
    """This process's membership in the institution's group: the
    :class:`~secfed.model.train.DataParallel` the trainers use, and rank 0's job channel.

    Every rank makes the same sequence of collective calls; ``_position`` counts them and, with the
    phase, is what each rank reports to the store as its progress (to name a silent rank)."""

    def __init__(
        self,
        launch: Launch,
        device: torch.device,
        store: Store,
        training: dist.ProcessGroup,
        grads: dist.ProcessGroup,
        timeout: datetime.timedelta,
        key: bytes,
    ) -> None:
        self.launch = launch
        self._key = key
        self._jobs = 0  # sealed messages so far: every rank counts them, so each is bound to its place
        self.device = device
        self.lost = False
        self._store = store
        self._training = training
        self._grads = grads
        self._timeout = timeout
        self._last_report = ""
        self._position = 0
        self._phase = ""
        self._round = -1
        self._step = 0
        self._in_job = False
        self._report("joined the group", entered=False)

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    # -- DataParallel ---------------------------------------------------------------------------------
    def share(self, batch: Sequence[int]) -> list[int]:
        """A contiguous slice of ``batch``, sizes differing by one at most (rank order = batch order)."""
        n, k = len(batch), self.world_size
        return list(batch[self.rank * n // k : (self.rank + 1) * n // k])

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        self._step += 1
        self._exchange(_OK, f"training step {self._step}")
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
        self._collective(lambda: dist.all_reduce(flat, group=self._grads))
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view(p.shape).to(p.dtype)
            offset += p.numel()
        self._report(f"training step {self._step + 1}", entered=False)

    def reduce_stats(self, values: Sequence[float]) -> list[float]:
        self._exchange(_OK, "finishing")
        totals = torch.tensor(list(values), dtype=torch.float64)
        self._collective(lambda: dist.all_reduce(totals, group=self._training))
        self._in_job = False
        self._report("waiting for a job", entered=False)
        return [float(v) for v in totals.tolist()]

    # -- training, on rank 0 -------------------------------------------------------------------------
    def train(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        records: Sequence[Record],
        settings: TrainSettings,
        *,
        round_: int,
        progress: bool,
        desc: str,
    ) -> TrainStats:
        """:func:`~secfed.model.train.train_local` with every rank of the group."""
        job = _job(model, records, settings, None, round_)
        self._send(job)
        return self._run(
            job,
            lambda: train_steps(
                model,
                tokenizer,
                job.records,
                settings,
                round_=round_,
                parallel=self,
                progress=progress,
                desc=desc,
            ),
        )

    def train_dp(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        records: Sequence[Record],
        settings: TrainSettings,
        dp: DpSettings,
        *,
        round_: int,
        progress: bool,
        desc: str,
        noise_seed: int | None,
    ) -> tuple[TrainStats, DpRoundEvent]:
        """:func:`~secfed.dp.sgd.train_local_dp` with every rank of the group; the noise is drawn here."""
        job = _job(model, records, settings, dp, round_)
        self._send(job)
        return self._run(
            job,
            lambda: dp_train_steps(
                model,
                tokenizer,
                job.records,
                settings,
                dp,
                round_=round_,
                parallel=self,
                progress=progress,
                desc=desc,
                noise_seed=noise_seed,
            ),
        )

    # -- training, on ranks > 0 ----------------------------------------------------------------------
    def _receive(self) -> TrainingJob | None:
        """The next job from rank 0, or None: stop."""
        job = self._broadcast(None)
        if job is not None and not isinstance(job, TrainingJob):
            raise RuntimeError(f"rank 0 sent a {type(job).__name__}, not a training job")
        return job

    def _work_on(self, job: TrainingJob, model: _WorkerModel) -> None:
        def train() -> None:
            peft, tokenizer = model.prepare(job)
            self._report("training step 1", entered=False)
            if job.dp is None:
                train_steps(
                    peft,
                    tokenizer,
                    job.records,
                    job.settings,
                    round_=job.round,
                    parallel=self,
                    progress=False,
                    desc="",
                )
            else:
                dp_train_steps(
                    peft,
                    tokenizer,
                    job.records,
                    job.settings,
                    job.dp,
                    round_=job.round,
                    parallel=self,
                    progress=False,
                    desc="",
                    noise_seed=None,
                )

        self._run(job, train)

    # -- the job protocol ----------------------------------------------------------------------------
    def _send(self, job: TrainingJob | None) -> None:
        if self.lost:
            raise RankLostError("a rank of this group was lost earlier; the client must start again")
        self._broadcast(job)

    def _broadcast(self, job: TrainingJob | None) -> object:
        """Rank 0's ``job`` on every rank: sealed (AES-GCM, the message's number as associated data) and
        sent as raw bytes; the other ranks unpickle only what authenticates (see the module docstring)."""
        self._position += 1
        self._jobs += 1
        self._report("handing out a job", entered=True)
        context = encode_fields(_JOB_CONTEXT, self._jobs)
        sealed = seal(self._key, pickle.dumps(job), context) if self.rank == 0 else b""
        size = torch.tensor([len(sealed)], dtype=torch.int64)
        self._collective(lambda: dist.broadcast(size, src=0))
        length = int(size.item())
        if not 0 < length <= MAX_JOB_BYTES:
            raise RankError(f"rank {self.rank}: a job of {length} bytes announced; refusing it")
        if self.rank == 0:
            buffer = torch.frombuffer(bytearray(sealed), dtype=torch.uint8)
        else:
            buffer = torch.empty(length, dtype=torch.uint8)
        self._collective(lambda: dist.broadcast(buffer, src=0))
        if self.rank == 0:
            return job
        try:
            plain = open_sealed(self._key, buffer.numpy().tobytes(), context)
        except DecryptionError:
            raise RankError(
                f"rank {self.rank}: job {self._jobs} did not authenticate: it was not sealed by this "
                "institution's rank 0 (a different kit, or someone else reached the rendezvous port)"
            ) from None
        return pickle.loads(plain)  # noqa: S301 - authenticated: sealed by this institution's rank 0

    def _run(self, job: TrainingJob, work: Callable[[], T]) -> T:
        """``work`` (this rank's part of ``job``) under the failure protocol: a failure on any rank ends
        the job on every rank at the next exchange."""
        self._round, self._step, self._in_job = job.round, 0, True
        self._report("training step 1" if self.rank == 0 else "preparing the job", entered=False)
        try:
            return work()
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> NoReturn:
        """Tell the other ranks this rank's job failed (or was cancelled), then raise: rank 0 its own
        exception (a refusal stays a refusal), the others :class:`JobAborted`."""
        if isinstance(exc, RankError | JobAborted):
            raise exc  # the group already agreed the job is over (or lost a rank)
        if not self._in_job:  # after the job's last exchange: nobody else is listening any more
            if self.rank == 0:
                raise exc
            raise JobAborted(f"rank {self.rank} failed after its job ended: {exc}") from exc
        what = f"rank {self.rank} failed in {self._where()}: {type(exc).__name__}: {exc}"
        self._store.set(f"failure/{self._position + 1}/{self.rank}", what)
        code = _CANCELLED if isinstance(exc, ComputeCancelled) else _FAILED
        try:
            self._exchange(code, "reporting a failure")
        except RankLostError:
            raise
        except (RankError, JobAborted):
            pass  # every rank knows now
        self._in_job = False
        self._report("waiting for a job", entered=False)
        if self.rank == 0:
            raise exc
        raise JobAborted(what) from exc

    def _exchange(self, code: int, phase: str) -> None:
        """Every rank's status; if any is not ok, the job ends here on every rank."""
        self._position += 1
        self._report(phase, entered=True)
        flags = torch.zeros(self.world_size, dtype=torch.int64)
        flags[self.rank] = code
        self._collective(lambda: dist.all_reduce(flags, group=self._training))
        codes = [int(c) for c in flags.tolist()]
        if not any(codes):
            return
        self._in_job = False
        failures = [self._failure_of(r) for r, c in enumerate(codes) if c == _FAILED]
        if self.rank == 0:
            raise RankError("; ".join(failures))
        raise JobAborted("; ".join(failures) or "rank 0 cancelled the job (its session was abandoned)")

    def _collective(self, operation: Callable[[], object]) -> None:
        """Run a collective; if it fails (a rank's connection closed, or the group's timeout passed),
        the group is lost."""
        try:
            operation()
        except RuntimeError as exc:
            self.lost = True
            self._in_job = False
            raise RankLostError(self._silence(exc)) from exc

    # -- progress reports, in the store --------------------------------------------------------------
    def _where(self) -> str:
        return f"round {self._round}, {self._phase}" if self._round >= 0 else self._phase

    def _report(self, phase: str, *, entered: bool) -> None:
        """Record where this rank is: at exchange ``_position`` (``entered``) or working towards it."""
        self._phase = phase
        self._last_report = _TAB.join((str(self._position), str(int(entered)), self._where()))
        self._store.set(f"progress/{self.rank}", self._last_report)

    def _failure_of(self, rank: int) -> str:
        key = f"failure/{self._position}/{rank}"
        return self._store.get(key).decode() if self._store.check([key]) else f"rank {rank} failed"

    def _silence(self, exc: Exception) -> str:
        """Which ranks did not reach this exchange, and what they last reported doing."""
        try:
            reports = {r: self._progress_of(r) for r in range(self.world_size) if r != self.rank}
        except RuntimeError:  # the store lived in a process that is gone
            reports = None
        if reports is None:
            who = "a rank stopped answering, and so did the group's store (rank 0's or torchrun's process ended)"
        else:
            behind = [
                f"rank {r} (last seen at {report.split(_TAB, 2)[-1]})"
                for r, report in sorted(reports.items())
                if report != self._last_report
            ]
            who = (
                f"{', '.join(behind)} stopped answering: it exited, crashed or hung"
                if behind
                else "the exchange failed although every rank reached it"
            )
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"{who}; rank {self.rank} was at {self._where()} and waited up to "
            f"{self._timeout.total_seconds():.0f} s ({cause})"
        )

    def _progress_of(self, rank: int) -> str:
        key = f"progress/{rank}"
        return self._store.get(key).decode() if self._store.check([key]) else f"{_TAB}{_TAB}nothing reported"

    def close(self) -> None:
        """Rank 0: stop the other ranks, unless the group is lost or a job is half done (their waits
        then end when this process's connections close)."""
        if self.rank == 0 and not self.lost and not self._in_job:
            try:
                self._send(None)
            except RankLostError as exc:
                logs.event(log, "stop-not-delivered", logging.WARNING, error=str(exc))


# -- joining, leading, serving ------------------------------------------------------------------------


@contextlib.contextmanager
def joined(
    launch: Launch, device: torch.device, *, key: bytes, timeout_s: float = COLLECTIVE_TIMEOUT_S
) -> Iterator[Group]:
    """Join the institution's group (torchrun's rendezvous: ``MASTER_ADDR``, ``MASTER_PORT``); ``key``
    (:func:`job_key`) seals the jobs. On leaving, rank 0 stops the other ranks and the group is taken down."""
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a torch.distributed process group")
    timeout = datetime.timedelta(seconds=timeout_s)
    _loopback_on_one_node(launch)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # so "cuda" (as the task's own loading says) means this rank's GPU
    store, _, _ = next(rendezvous("env://", rank=launch.rank, world_size=launch.world_size, timeout=timeout))
    dist.init_process_group(
        "gloo",
        store=store,
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=timeout if launch.rank == 0 else _IDLE_TIMEOUT,
    )
    try:
        training = dist.new_group(backend="gloo", timeout=timeout)
        grads = dist.new_group(backend="nccl", timeout=timeout) if device.type == "cuda" else training
        group = Group(launch, device, PrefixStore("secfed/", store), training, grads, timeout, key)
        logs.event(log, "joined-group", rank=launch.rank, world=launch.world_size, device=str(device))
        try:
            yield group
        finally:
            group.close()
    finally:
        dist.destroy_process_group()


def _loopback_on_one_node(launch: Launch) -> None:
    """When every rank runs on this host, bind gloo's connections to the loopback interface (unless the
    operator chose one): by default gloo listens on the interface of the host name, which the network
    can reach."""
    if launch.world_size != launch.local_world_size or "GLOO_SOCKET_IFNAME" in os.environ:
        return
    loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
    if loopback:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback[0]


_LEADER: Group | None = None


def leader_group() -> Group | None:
    """The group this process leads (rank 0, inside :func:`leading`), or None: training runs alone."""
    return _LEADER


@contextlib.contextmanager
def leading(group: Group) -> Iterator[Group]:
    """Within this scope, rank 0's local training runs on every rank of ``group``."""
    global _LEADER
    if group.rank != 0:
        raise ValueError(f"rank {group.rank} cannot lead; ranks > 0 serve()")
    if _LEADER is not None:
        raise RuntimeError("this process already leads a group")
    _LEADER = group
    try:
        yield group
    finally:
        _LEADER = None


def serve(group: Group, load: BaseLoader | None) -> int:
    """Ranks > 0: take part in every job rank 0 sends until it sends stop; returns how many completed.

    ``load`` loads this rank's copy of the base model onto its device (None: the institution's task has
    no model, so any job fails). A job that fails on some rank is over on every rank and this rank
    waits for the next one (rank 0 then stops the client); :class:`RankLostError` ends serving."""
    if group.rank == 0:
        raise ValueError("rank 0 leads the group (leading()); serve() is for the other ranks")
    model = _WorkerModel(load)
    completed = 0
    while (job := group._receive()) is not None:
        try:
            group._work_on(job, model)
        except JobAborted as exc:
            logs.event(log, "job-aborted", logging.WARNING, rank=group.rank, round=job.round, reason=str(exc))
        else:
            completed += 1
    return completed
