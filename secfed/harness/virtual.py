"""A run directory's parties without their processes: the coordinator and virtual institutions.

``secfed simulate`` writes one configuration per party (``server.toml``, ``clients/<id>.toml``; see
:mod:`secfed.harness.layout`). The process backend starts ``secfed server`` and ``secfed client`` on
them; a virtual backend builds the same parties from the same files in memory, so the run leaves the
same evidence for ``secfed audit report`` and the harness's checks:

* :class:`VirtualServer`: the coordinator of ``server.toml`` as ``secfed server`` builds it (task,
  round plan, the kit's trust anchor, the state database with its hash-chained ledger and
  ``rounds.jsonl``, the final model exported beside it), minus the gRPC service.
* :class:`VirtualInstitution`: one institution of ``clients/<id>.toml`` as ``secfed client`` builds it
  (its kit's identity, its policy, its task, its release log), keeping its own ledgers where its
  configuration names them: the privacy ledger (written by the task), the release log, and the audit
  ledger with one entry per session it finished, refusal or violation, as the client runtime records
  them. Its SecAgg secrets live in its own :class:`~secfed.fl.participant.Participant`, never shared.

Tasks that train a base model (FedIT, FedHDS) take a ``ModelPool``: the virtual institutions of one
worker share one loaded base model and LoRA adapter. That is safe because every round's training
starts by loading the global adapter into it (nothing of one institution's training reaches the
next), and it is what lets one worker host many institutions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from secfed import logs
from secfed.audit.entries import session_entry
from secfed.chain import HashChain
from secfed.dp.policy import PrivacyPolicy
from secfed.fl.participant import Participant, Relay, StageStart
from secfed.fl.registry import client_task, server_task
from secfed.fl.releases import ReleaseLog
from secfed.fl.tasks import ClientTask
from secfed.harness.inprocess import Answer, Clock, Violation, answer
from secfed.home import default_release_log
from secfed.pki.kit import load_kit
from secfed.secagg.client import ClientSession
from secfed.secagg.config import SessionConfig
from secfed.secagg.messages import UnmaskResponse

if TYPE_CHECKING:
    from secfed.fl.fedit import ModelPool
    from server.config import ServerConfig
    from server.coordinator import Coordinator
    from server.state import StateStore

__all__ = ["VirtualInstitution", "VirtualServer", "pooled_client_task"]

log = logging.getLogger("secfed.harness.virtual")


class VirtualServer:
    """The coordinator of a fresh run directory, persisting to its state database as ``secfed server`` does."""

    def __init__(self, config: ServerConfig, coordinator: Coordinator, store: StateStore) -> None:
        self.config = config
        self.coordinator = coordinator
        self.store = store

    @classmethod
    def open(cls, server_config: Path, clock: Clock) -> VirtualServer:
        from server.config import load_server_config
        from server.coordinator import Coordinator
        from server.runtime import StoreObserver, log_dropout_tolerance
        from server.state import StateStore

        config = load_server_config(server_config)
        kit = load_kit(config.kit)
        if kit.role != "server":
            raise ValueError(f"{config.kit}: this kit is for a {kit.role}, not the server")
        task = server_task(config.task, config.task_options, plugin=config.task_plugin)
        config.state_db.parent.mkdir(parents=True, exist_ok=True)
        store = StateStore(config.state_db, keep_models=config.keep_models)
        if store.has_initial_model():
            store.close()
            raise ValueError(f"{config.state_db}: holds a run already; a virtual run starts afresh")
        initial = np.asarray(task.initial_model(), dtype=np.float32)
        store.save_initial_model(initial)
        coordinator = Coordinator(
            roster=config.roster,
            plan=config.plan,
            task=task,
            initial_model=initial,
            trust=kit.trust,
            clock=clock,
            observer=StoreObserver(store, config.state_db.parent / "rounds.jsonl", config),
            first_round=0,
            first_attempt=store.next_attempt(0),
        )
        log_dropout_tolerance(config)
        return cls(config, coordinator, store)

    def close(self) -> None:
        """Export the model of the last completed round beside the state database (as ``secfed server``
        does, also for a run that stopped early) and close the database."""
        try:
            coordinator = self.coordinator
            if coordinator.round > 0:
                coordinator.task.export(coordinator.model, self.config.state_db.parent)
        finally:
            self.store.close()


#: The tasks whose client half takes a shared base-model pool (``model_pool=``).
_POOLED_TASKS = frozenset({"fedit-lora", "fedhds-lora"})


def pooled_client_task(
    name: str,
    client_id: str,
    options: Mapping[str, Any],
    privacy: PrivacyPolicy,
    pool: ModelPool,
    plugin: str | None = None,
) -> ClientTask:
    """The institution's task as :func:`~secfed.fl.registry.client_task` makes it, sharing ``pool``'s base
    model where the task trains one (FedIT, FedHDS)."""
    extra = {"model_pool": pool} if plugin is None and name in _POOLED_TASKS else {}
    return client_task(name, client_id, options, privacy, plugin=plugin, **extra)


class VirtualInstitution:
    """One institution of a run directory, answering the coordinator's instructions by function call."""

    def __init__(self, config_path: Path, pool: ModelPool) -> None:
        from client.config import load_client_config

        config = load_client_config(config_path)
        kit = load_kit(config.kit)
        if kit.role != "client":
            raise ValueError(f"{config.kit}: this kit is for a {kit.role}, not a client")
        self.client_id = kit.client_id
        self.audit = HashChain(config.audit_ledger)
        task = pooled_client_task(
            config.task, kit.client_id, config.task_options, config.privacy, pool, config.task_plugin
        )
        self.participant = Participant(
            kit.identity,
            kit.trust,
            task,
            policy=config.policy,
            releases=ReleaseLog(config.release_log or default_release_log(kit.client_id)),
            on_refusal=self._refused,
        )
        self._config: SessionConfig | None = None  # the last stage start's session configuration

    def answer(self, message: StageStart | Relay) -> Answer:
        """The institution's reply to ``message``, with the audit ledger entry the client runtime makes."""
        if isinstance(message, StageStart):
            self._config = message.config
        session = self.participant.session
        reply = answer(self.participant, message)
        if isinstance(reply, Violation):
            self._ledger("session-refused", round=self._round(), error=reply.error)
            logs.event(log, "session-refused", logging.WARNING, client=self.client_id, error=reply.error)
        elif isinstance(reply, UnmaskResponse) and session is not None:
            self._record_session(session)
        return reply

    def _round(self) -> int:
        return self._config.round if self._config is not None else -1

    def _refused(self, round_: int, category: str, exc: ValueError) -> None:
        """The full reason of a refusal stays with the institution (its ledger and log); the server
        hears the category only."""
        self._ledger("round-refused", round=round_, category=category, reason=str(exc))
        logs.event(
            log,
            "round-refused",
            logging.WARNING,
            client=self.client_id,
            round=round_,
            category=category,
            reason=str(exc),
        )

    def _record_session(self, session: ClientSession) -> None:
        """After the unmask response: the session's public parameters and what encoding clipped."""
        config = self._config
        if config is not None:
            self._ledger("session", **session_entry(config, session))

    def _ledger(self, kind: str, **body: Any) -> None:
        self.audit.append(kind, body)
