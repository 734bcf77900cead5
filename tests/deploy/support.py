"""A deployment laid out as a consortium would: one directory per party, each holding only its kit, its
copy of an ``examples/deploy/`` configuration (paths and address edited, nothing else) and its own data.
The parties run as separate ``secfed`` processes on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from secfed.data.builtin import builtin_splits
from secfed.data.formats import Record
from secfed.harness.procs import child_env, secfed_command
from secfed.pki.consortium import loopback_consortium, provision

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "deploy"
INSTITUTIONS = ("hospital-a", "hospital-b", "university-c")
FORMATS = ("jsonl", "csv", "dataset")  # each institution keeps its data in another format
_FIELDS = ("instruction", "context", "response", "category")


def write_records(records: Sequence[Record], directory: Path, fmt: str) -> str:
    """Write ``records`` under ``directory`` in ``fmt``; return the path relative to the party's dir."""
    rows = [{f: getattr(r, f) for f in _FIELDS} for r in records]
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path = directory / "records.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif fmt == "csv":
        path = directory / "records.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        from datasets import Dataset

        path = directory / "records"
        Dataset.from_list(rows).save_to_disk(str(path))
    return f"data/{path.name}"


def _edit(text: str, key: str, value: str) -> str:
    """Set the first ``key = ...`` line of a TOML text to ``value`` (a path or an address)."""
    edited, count = re.subn(rf'^{key} = ".*"$', f"{key} = {json.dumps(value)}", text, count=1, flags=re.M)
    assert count == 1, f"no {key} line to edit"
    return edited


@dataclass
class Party:
    name: str
    directory: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / f"{self.name}.log"

    def start(self, *args: str) -> None:
        with self.log.open("ab") as fh:
            self.process = subprocess.Popen(
                secfed_command(*args, "--config", str(self.config)),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=child_env(torch_threads=1),
            )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclass
class Deployment:
    root: Path
    coordinator: Party
    institutions: dict[str, Party]

    def wait(self, timeout_s: float) -> dict[str, int | None]:
        deadline = time.monotonic() + timeout_s
        parties = [self.coordinator, *self.institutions.values()]
        for party in parties:
            assert party.process is not None
            try:
                party.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        codes = {p.name: (p.process.poll() if p.process else None) for p in parties}
        for p in parties:
            if p.process is not None and p.process.poll() is None:
                p.process.kill()
                p.process.wait()
        return codes

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.output()[-4000:]}" for p in (self.coordinator, *self.institutions.values())
        )


def lay_out(
    root: Path, example: str, model_dir: Path, *, ids: Sequence[str] = INSTITUTIONS, per_category: int = 2
) -> Deployment:
    """Provision a loopback consortium and give every party its own directory; start nobody yet."""
    kits = root / "ca-operator" / "kits"
    provision(loopback_consortium("deploy test", list(ids)), kits)
    coordinator_dir = root / "coordinator"
    shutil.copytree(kits / "server", coordinator_dir / "kits" / "server")
    text = (EXAMPLES / example / "server.toml").read_text(encoding="utf-8")
    text = _edit(text, "listen", "127.0.0.1:0")
    text = _edit(text, "model", str(model_dir))
    server_config = coordinator_dir / "server.toml"
    server_config.write_text(text, encoding="utf-8")
    splits, _test = builtin_splits(
        len(ids), train_per_category=per_category, test_per_category=1, partition="iid"
    )
    institutions = {}
    for i, cid in enumerate(ids):
        directory = root / cid
        shutil.copytree(kits / "clients" / cid, directory / "kit")
        data = write_records(splits[i], directory / "data", FORMATS[i % len(FORMATS)])
        config = directory / "client.toml"
        config.write_text((EXAMPLES / example / "client.toml").read_text(encoding="utf-8"), encoding="utf-8")
        text = config.read_text(encoding="utf-8")
        text = _edit(text, "model", str(model_dir))
        text = _edit(text, "data", data)
        config.write_text(text, encoding="utf-8")
        institutions[cid] = Party(cid, directory, config)
    return Deployment(root, Party("coordinator", coordinator_dir, server_config), institutions)


def start(
    deployment: Deployment,
    *,
    roster: Sequence[str] | None = None,
    client_args: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Start the coordinator, then point every institution at the port it bound and start them."""
    coordinator = deployment.coordinator
    if roster is not None:
        text = coordinator.config.read_text(encoding="utf-8")
        text = re.sub(r"^roster = \[.*\]$", f"roster = {json.dumps(list(roster))}", text, flags=re.M)
        coordinator.config.write_text(text, encoding="utf-8")
    port_file = coordinator.directory / "port"
    coordinator.start("server", "--port-file", str(port_file))
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text().strip():
        assert coordinator.process is not None and coordinator.process.poll() is None, coordinator.output()
        assert time.monotonic() < deadline, "the coordinator never bound its port"
        time.sleep(0.2)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    for party in deployment.institutions.values():
        party.config.write_text(
            _edit(party.config.read_text(encoding="utf-8"), "server", address), encoding="utf-8"
        )
        party.start("client", *(client_args or {}).get(party.name, ()))
