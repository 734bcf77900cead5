"""A real federation on loopback for tests: provisioned kits, an in-process server, client threads."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from client.config import RetryPolicy
from client.faults import Fault
from client.runtime import ClientReport, ClientRuntime
from secfed.fl import toy
from secfed.fl.policy import InstitutionPolicy
from secfed.fl.registry import client_task
from secfed.pki.consortium import loopback_consortium, provision
from secfed.pki.kit import load_kit
from server.config import ServerConfig
from server.coordinator import RoundPlan
from server.runtime import FederationServer

TOY = {"dim": 8}


def provision_kits(root: Path, n_clients: int) -> Path:
    consortium = loopback_consortium("test federation", [f"inst{i:02d}" for i in range(n_clients)])
    return provision(consortium, root / "pki").out


def _plan(overrides: dict[str, Any]) -> dict[str, Any]:
    """Test federations run toy tasks: the compute phase waits as long as any other phase."""
    values = {"rounds": 2, "phase_timeout_s": 5.0, **overrides}
    values.setdefault("compute_timeout_s", values["phase_timeout_s"])
    values.setdefault("join_timeout_s", values["phase_timeout_s"])
    return values


def server_config(pki: Path, state_dir: Path, roster: tuple[str, ...], **plan: Any) -> ServerConfig:
    return ServerConfig(
        listen="127.0.0.1:0",
        kit=pki / "server",
        state_db=state_dir / "state.sqlite",
        roster=roster,
        plan=RoundPlan(**_plan(plan)),
        task="toy-mean",
        task_options=dict(TOY),
    )


@dataclass
class ClientThread:
    client_id: str
    thread: threading.Thread
    report: ClientReport | None = None
    error: BaseException | None = None


@dataclass
class Federation:
    pki: Path
    server: FederationServer
    clients: dict[str, ClientThread] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def audit_ledger(self, cid: str) -> Path:
        return self.pki.parent / "ledgers" / f"{cid}.jsonl"

    def start_client(
        self, cid: str, fault: Fault | None = None, allow_plaintext: bool = False
    ) -> ClientThread:
        kit = load_kit(self.pki / "clients" / cid)
        runtime = ClientRuntime(
            kit,
            client_task("toy-mean", cid, TOY),
            address=self.address,
            retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=30),
            fault=fault,
            policy=InstitutionPolicy(allow_insecure_baselines=allow_plaintext),
            audit_ledger=self.audit_ledger(cid),
        )
        holder = ClientThread(cid, threading.Thread(name=f"client-{cid}", daemon=True, target=lambda: None))

        def body() -> None:
            try:
                holder.report = runtime.run()
            except BaseException as exc:  # reported to the test, whatever it is
                holder.error = exc

        holder.thread = threading.Thread(name=f"client-{cid}", daemon=True, target=body)
        holder.thread.start()
        self.clients[cid] = holder
        return holder

    def finish(self, timeout_s: float = 60.0) -> str:
        reason = self.server.wait(linger_s=5.0)
        for holder in self.clients.values():
            holder.thread.join(timeout_s)
        self.server.stop()
        return reason


def start_federation(tmp: Path, n_clients: int, **plan: Any) -> Federation:
    pki = provision_kits(tmp, n_clients)
    roster = tuple(f"inst{i:02d}" for i in range(n_clients))
    return Federation(pki, FederationServer.start(server_config(pki, tmp / "run", roster, **plan)))


def rounds_log(fed: Federation) -> list[dict[str, Any]]:
    path = fed.server.config.state_db.parent / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_plaintext_sums(rounds: list[dict[str, Any]], frac_bits: int = 16) -> None:
    """Each round's secure sum equals the plaintext sum of the contributors' toy updates (fixed-point tolerance)."""
    model = toy.initial_model(TOY["dim"])
    opts = toy.ToyOptions(**TOY)
    for rec in rounds:
        contribs = [toy.contribution(c, model, opts) for c in rec["contributors"]]
        expected_x = np.sum([c["x"] for c in contribs], axis=0)
        expected_w = sum(float(c["w"][0]) for c in contribs)
        tolerance = len(contribs) * 2.0**-frac_bits
        np.testing.assert_allclose(rec["sums"]["x"], expected_x, atol=tolerance, rtol=0)
        assert rec["sums"]["w"] == [expected_w]
        model = np.asarray(rec["model"], dtype=np.float32)


def with_plan(config: ServerConfig, **plan: Any) -> ServerConfig:
    return replace(config, plan=replace(config.plan, **plan))
