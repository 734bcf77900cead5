"""``secfed simulate --backend ray``: hundreds of virtual institutions over Ray workers.

What runs where:

* **The driver** (this process) runs the real coordinator of the run directory
  (:class:`~secfed.harness.virtual.VirtualServer`: round plan, cohort sampling, the SecAgg server state
  machine, the state database) and the one in-process loop, :class:`~secfed.harness.inprocess.Driver`.
  Each sweep it polls every institution as a client would; only the round's cohort has instructions,
  so only the cohort is sent any work.
* **Ray workers** (actors, one per CPU of the cluster, or one per GPU) host the virtual institutions
  (:class:`~secfed.harness.virtual.VirtualInstitution`). An institution is placed on the least busy
  worker the first time it is asked anything and stays there: its SecAgg keys, its task state and
  its open session live in that worker's memory only, read from its own kit by that worker, never sent
  anywhere. A worker loads the base model once and shares it between its institutions, swapping in
  the global adapter before each one trains (the FedIT model pool). All of a sweep's asks for one
  worker go in one call, and the workers answer at the same time.
* **Ledgers** are each institution's own files, where its configuration names them
  (``clients/<id>.audit.jsonl``, ``.privacy.jsonl``, ``.releases.jsonl``), so ``secfed audit report``
  reads a Ray run exactly like a process run; worker logs go to ``logs/ray-worker-<n>.log``.

The cluster is a local single node that listens on 127.0.0.1 only, without dashboard or usage
statistics: the environment below is set before Ray is imported (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
keeps Ray from swapping 127.0.0.1 for this machine's routable address, so its GCS, raylet and workers
bind loopback), and a cluster found listening anywhere else is refused.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from secfed import logs
from secfed.harness.inprocess import Answer, Ask, Clock, Driver
from secfed.harness.layout import RunLayout
from secfed.harness.simulate import RAY_INSTALL_HINT, BackendRun, SimulationOptions
from secfed.harness.virtual import VirtualInstitution, VirtualServer

if TYPE_CHECKING:
    from secfed.fl.fedit import ModelPool

__all__ = [
    "LOOPBACK",
    "RayInstitutions",
    "check_loopback",
    "import_ray",
    "run_on_ray",
    "start_loopback_cluster",
]

log = logging.getLogger("secfed.harness.ray")

LOOPBACK = "127.0.0.1"
#: Read by Ray when it is imported: no usage statistics; node address 127.0.0.1 taken as given.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def import_ray() -> ModuleType:
    """Ray, imported with :data:`RAY_ENV` in place; a clear error when the extra is not installed."""
    os.environ.update(RAY_ENV)
    try:
        import ray
    except ImportError as exc:
        raise ValueError(f"--backend ray: Ray is not installed; {RAY_INSTALL_HINT}") from exc
    return ray


def start_loopback_cluster(num_cpus: int | None = None) -> ModuleType:
    """Start a single-node Ray cluster in this process, bound to 127.0.0.1, and return ``ray``.

    ``address="local"`` always starts a new cluster (never one that ``RAY_ADDRESS`` names)."""
    ray = import_ray()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        check_loopback(ray)
    except RuntimeError:
        ray.shutdown()
        raise
    return ray


def check_loopback(ray: ModuleType) -> None:
    """Refuse a cluster with any node or GCS address other than 127.0.0.1."""
    addresses = {str(n.get("NodeManagerAddress")) for n in ray.nodes() if n.get("Alive")}
    gcs = str(ray.get_runtime_context().gcs_address).rsplit(":", 1)[0]
    if addresses | {gcs} != {LOOPBACK}:
        raise RuntimeError(
            f"the Ray cluster listens on {sorted(addresses | {gcs})}, not only on {LOOPBACK}; virtual "
            "institutions' secrets must stay on this machine's loopback (was Ray imported or started "
            "before secfed could configure it?)"
        )


class _Worker:
    """One Ray worker: hosts the virtual institutions placed on it, sharing one base model."""

    def __init__(self, out: str, index: int, threads: int, log_level: str) -> None:
        import torch

        torch.set_num_threads(threads)
        self.layout = RunLayout(Path(out))
        logs.configure(log_level, file=self.layout.log(f"ray-worker-{index}"))
        self.pool: ModelPool = {}
        self.institutions: dict[str, VirtualInstitution] = {}

    def answer(self, asks: list[Ask]) -> list[Answer]:
        return [self._institution(ask.cid).answer(ask.message) for ask in asks]

    def _institution(self, cid: str) -> VirtualInstitution:
        institution = self.institutions.get(cid)
        if institution is None:
            institution = VirtualInstitution(self.layout.client_config(cid), self.pool)
            self.institutions[cid] = institution
        return institution


class RayInstitutions:
    """The :class:`~secfed.harness.inprocess.Institutions` backend of Ray workers (see the module docstring)."""

    parallel = True

    def __init__(self, ray: ModuleType, workers: Sequence[Any], deadline: float) -> None:
        self.ray = ray
        self.workers = list(workers)
        self.deadline = deadline  # time.monotonic() by which every call must have been answered
        self.home: dict[str, int] = {}

    def answer(self, asks: Sequence[Ask]) -> list[Answer]:
        batches: dict[int, list[int]] = {}
        for i, ask in enumerate(asks):
            batches.setdefault(self._place(ask.cid, batches), []).append(i)
        calls = [
            (indices, self.workers[w].answer.remote([asks[i] for i in indices]))
            for w, indices in batches.items()
        ]
        timeout = max(0.0, self.deadline - time.monotonic())
        results = self.ray.get([ref for _, ref in calls], timeout=timeout)
        replies: list[Answer] = [None] * len(asks)
        for (indices, _), got in zip(calls, results, strict=True):
            for i, reply in zip(indices, got, strict=True):
                replies[i] = reply
        return replies

    def _place(self, cid: str, batches: dict[int, list[int]]) -> int:
        """The worker hosting ``cid``: from its first ask on, the one with the least work in this sweep
        (then the fewest institutions)."""
        home = self.home.get(cid)
        if home is None:
            hosted = Counter(self.home.values())
            home = min(range(len(self.workers)), key=lambda w: (len(batches.get(w, ())), hosted[w], w))
            self.home[cid] = home
        return home


def _worker_shape(ray: ModuleType, cohort: int) -> tuple[int, int, int]:
    """``(workers, cpus, gpus)`` per worker: one per GPU if the cluster has any, else one per CPU,
    never more than a round's cohort (each worker holds a base model)."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if cpus < 1:
        raise RuntimeError(f"the Ray cluster offers no CPU ({resources})")
    if gpus:
        return min(gpus, cohort), max(1, cpus // gpus), 1
    return min(cpus, cohort), 1, 0


def run_on_ray(opts: SimulationOptions, layout: RunLayout) -> BackendRun:
    """Run the federation of ``layout`` with virtual institutions in Ray workers (see the module
    docstring); uses the cluster this process has already started, else starts (and stops) its own."""
    started = time.monotonic()
    timeline: list[dict[str, Any]] = []

    def note(event: str, **fields: Any) -> None:
        timeline.append({"t": round(time.monotonic() - started, 3), "event": event, **fields})
        logs.event(log, event, **fields)

    ray = import_ray()
    owned = not ray.is_initialized()
    warnings: list[str] = []
    if owned:
        start_loopback_cluster(opts.ray_cpus)
    else:
        check_loopback(ray)
        if opts.ray_cpus is not None:
            warnings.append("--ray-cpus ignored: this process had already started its Ray cluster")
    problems: list[str] = []
    workers: list[Any] = []
    fields: dict[str, Any] = {}
    try:
        clock = Clock(wall=True)
        server = VirtualServer.open(layout.server_config, clock)
        try:
            plan = server.coordinator.plan
            count, cpus, gpus = _worker_shape(ray, plan.cohort_size(len(server.coordinator.roster)))
            actor = ray.remote(num_cpus=cpus, num_gpus=gpus)(_Worker)
            level = logging.getLevelName(logging.getLogger("secfed").getEffectiveLevel())
            workers = [actor.remote(str(layout.out), i, cpus, level) for i in range(count)]
            note("ray-started", address=LOOPBACK, workers=count, cpus_per_worker=cpus, gpus_per_worker=gpus)
            institutions = RayInstitutions(ray, workers, started + opts.deadline_s)
            driver = Driver(server.coordinator, institutions, clock)
            try:
                reason = driver.run()
            except ray.exceptions.GetTimeoutError:
                reason = f"stopped: the run did not finish within {opts.deadline_s:.0f} s"
            except (
                ray.exceptions.RayError
            ) as exc:  # its traceback goes to the log, its last line to the result
                logs.event(log, "ray-worker-failed", logging.ERROR, error=str(exc))
                reason = f"stopped: a Ray worker failed: {str(exc).strip().splitlines()[-1]}"
            note("coordinator-finished", reason=reason)
            if not reason.startswith("completed"):
                problems.append(f"the coordinator finished with: {reason}")
            warnings += [
                f"{cid} caught a protocol violation: {error}"
                for cid, errors in driver.violations.items()
                for error in errors
            ]
            fields = {
                "ray": {
                    "address": LOOPBACK,
                    "version": ray.__version__,
                    "workers": count,
                    "cpus_per_worker": cpus,
                    "gpus_per_worker": gpus,
                    "institutions": len(institutions.home),
                    "institutions_per_worker": sorted(Counter(institutions.home.values()).values()),
                },
                "finished_reason": reason,
                "timeline": timeline,
            }
        finally:
            server.close()
    finally:
        for worker in workers:
            ray.kill(worker)
        if owned:
            ray.shutdown()
    return BackendRun(time.monotonic() - started, fields, problems, warnings)
