"""``secfed bench deploy``: run an ``examples/deploy/`` federation the way a consortium would, and time it.

Every party gets its own directory holding only what it would hold on its own machine: its kit, a
copy of the example's TOML with the paths and the address edited (nothing else), and, for an
institution, its own data, in a different format each (JSONL, CSV, a ``datasets`` directory). The
coordinator and the institutions run as separate ``secfed server`` / ``secfed client`` processes on
127.0.0.1, each started from the deployment's root (so every relative path must resolve against its
configuration file). The deployment tests use the same layout with a tiny model.

The benchmark reports the wall time from starting the coordinator to every process having exited,
the seconds of each round and of each phase (from the coordinator's ``rounds.jsonl``), and whether
every institution saved the final adapter.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import secfed
from secfed.bench.stats import add_output_arguments, emit
from secfed.data.formats import Record, load_records
from secfed.harness.procs import child_env, secfed_command
from secfed.home import HOME_ENV
from secfed.pki.consortium import loopback_consortium, provision

__all__ = ["EXAMPLES", "Deployment", "Party", "lay_out", "register", "start", "write_records"]

EXAMPLES = Path(secfed.__file__).resolve().parent.parent / "examples" / "deploy"
INSTITUTIONS = ("hospital-a", "hospital-b", "university-c")
FORMATS = ("jsonl", "csv", "dataset")  # each institution keeps its data in another format
_FIELDS = ("instruction", "context", "response", "category")


def write_records(records: Sequence[Record], directory: Path, fmt: str) -> str:
    """Write ``records`` under ``directory`` in ``fmt``; return the path relative to the party's directory."""
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
    elif fmt == "dataset":
        from datasets import Dataset

        path = directory / "records"
        Dataset.from_list(rows).save_to_disk(str(path))
    else:
        raise ValueError(f"unknown data format {fmt!r}; one of {FORMATS}")
    return f"{directory.name}/{path.name}"


def edit_toml(text: str, key: str, value: str) -> str:
    """Set the first ``key = "..."`` line of a TOML text to ``value`` (a path or an address)."""
    edited, count = re.subn(rf'^{key} = ".*"$', f"{key} = {json.dumps(value)}", text, count=1, flags=re.M)
    if count != 1:
        raise ValueError(f"no {key} = line to edit")
    return edited


#: The parties' ``$SECFED_HOME``, inside the deployment's directory: a benchmark must not spend the
#: operator's real privacy budget.
HOME_DIR = "secfed-home"


@dataclass
class Party:
    name: str
    directory: Path
    config: Path
    torch_threads: int = 1
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / f"{self.name}.log"

    def start(self, *args: str) -> None:
        with self.log.open("ab") as fh:
            self.process = subprocess.Popen(
                secfed_command(*args, "--config", str(self.config)),
                # Not the party's directory: every relative path must resolve against the config file.
                cwd=self.directory.parent,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={
                    **child_env(torch_threads=self.torch_threads),
                    HOME_ENV: str((self.directory.parent / HOME_DIR).resolve()),
                },
            )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


@dataclass
class Deployment:
    root: Path
    coordinator: Party
    institutions: dict[str, Party]

    @property
    def home(self) -> Path:
        """The institutions' ``$SECFED_HOME`` in this deployment (privacy ledgers, release logs)."""
        return self.root / HOME_DIR

    @property
    def parties(self) -> list[Party]:
        return [self.coordinator, *self.institutions.values()]

    def wait(self, timeout_s: float) -> dict[str, int | None]:
        """Wait for every process to exit (killing what is left at the deadline); exit codes by party."""
        deadline = time.monotonic() + timeout_s
        for party in self.parties:
            if party.process is None:
                continue
            try:
                party.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        codes = {p.name: (p.process.poll() if p.process else None) for p in self.parties}
        self.stop()
        return codes

    def stop(self) -> None:
        for party in self.parties:
            if party.process is not None and party.process.poll() is None:
                party.process.kill()
                party.process.wait()

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-tail:]}" for p in self.parties)

    def rounds(self) -> list[dict[str, Any]]:
        path = self.coordinator.directory / "state" / "rounds.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def lay_out(
    root: Path,
    example: str,
    *,
    model: str,
    data: Mapping[str, Sequence[Record]],
    torch_threads: int = 1,
) -> Deployment:
    """Provision a loopback consortium for the institutions of ``data`` and give every party its own
    directory, with the example's configuration (paths and address edited). Starts nobody."""
    source = EXAMPLES / example
    if not (source / "server.toml").exists():
        known = sorted(p.name for p in EXAMPLES.iterdir()) if EXAMPLES.exists() else []
        raise ValueError(f"no deploy example {example!r} in {EXAMPLES} (known: {known})")
    ids = list(data)
    kits = root / "ca-operator" / "kits"
    provision(loopback_consortium("secfed deploy", ids), kits)
    coordinator_dir = root / "coordinator"
    shutil.copytree(kits / "server", coordinator_dir / "kits" / "server")
    text = (source / "server.toml").read_text(encoding="utf-8")
    text = edit_toml(text, "listen", "127.0.0.1:0")
    text = edit_toml(text, "model", model)
    text = re.sub(r"^roster = \[.*\]$", f"roster = {json.dumps(ids)}", text, count=1, flags=re.M)
    server_config = coordinator_dir / "server.toml"
    server_config.write_text(text, encoding="utf-8")
    institutions = {}
    for i, (cid, records) in enumerate(data.items()):
        directory = root / cid
        shutil.copytree(kits / "clients" / cid, directory / "kit")
        data_path = write_records(records, directory / "data", FORMATS[i % len(FORMATS)])
        text = (source / "client.toml").read_text(encoding="utf-8")
        text = edit_toml(text, "model", model)
        text = edit_toml(text, "data", data_path)
        config = directory / "client.toml"
        config.write_text(text, encoding="utf-8")
        institutions[cid] = Party(cid, directory, config, torch_threads=torch_threads)
    coordinator = Party("coordinator", coordinator_dir, server_config, torch_threads=torch_threads)
    return Deployment(root, coordinator, institutions)


def start(deployment: Deployment, *, client_args: Mapping[str, Sequence[str]] | None = None) -> None:
    """Start the coordinator, then point every institution at the port it bound and start them."""
    coordinator = deployment.coordinator
    port_file = coordinator.directory / "port"
    coordinator.start("server", "--port-file", str(port_file))
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text().strip():
        if coordinator.process is not None and coordinator.process.poll() is not None:
            raise RuntimeError(f"the coordinator exited at start:\n{coordinator.output()[-4000:]}")
        if time.monotonic() > deadline:
            deployment.stop()
            raise RuntimeError("the coordinator never bound its port")
        time.sleep(0.2)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    for party in deployment.institutions.values():
        party.config.write_text(edit_toml(party.config.read_text(encoding="utf-8"), "server", address))
        party.start("client", *(client_args or {}).get(party.name, ()))


# ------------------------------------------------------------------------------------------ benchmark


def _institution_data(data_dir: Path, records: int) -> dict[str, list[Record]]:
    """Client i of the split gets institution i's place; the first ``records`` of each file."""
    return {
        cid: load_records(data_dir / f"client_{i}.json", max_records=records)
        for i, cid in enumerate(INSTITUTIONS)
    }


def run_deploy(
    example: str,
    *,
    data_dir: Path,
    records: int,
    model: str,
    workdir: Path,
    timeout_s: float,
    torch_threads: int,
) -> dict[str, Any]:
    deployment = lay_out(
        workdir, example, model=model, data=_institution_data(data_dir, records), torch_threads=torch_threads
    )
    began = time.monotonic()
    start(deployment)
    codes = deployment.wait(timeout_s)
    wall = time.monotonic() - began
    rounds = deployment.rounds()
    saved = {
        cid: (party.directory / "global-model" / "final" / "adapter_config.json").is_file()
        for cid, party in deployment.institutions.items()
    }
    return {
        "benchmark": "deploy",
        "example": example,
        "model": model,
        "institutions": list(INSTITUTIONS),
        "records_per_institution": records,
        "data": str(data_dir),
        "data_formats": dict(zip(INSTITUTIONS, FORMATS, strict=True)),
        "torch_threads_per_process": torch_threads,
        "wall_s": wall,
        "exit_codes": codes,
        "ok": all(code == 0 for code in codes.values()) and len(rounds) > 0 and all(saved.values()),
        "rounds_completed": len(rounds),
        "round_s": [r.get("seconds") for r in rounds],
        "phase_s": [r.get("phase_seconds") for r in rounds],
        "final_adapter_saved": saved,
        "workdir": str(workdir),
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "deploy",
        help="run an examples/deploy federation as separate processes, one directory per party, and time it",
    )
    p.add_argument("--example", default="fedit", help="fedit, fedhds or fedit-dp (default fedit)")
    p.add_argument(
        "--data", type=Path, required=True, help="a split with client_0.json ... (Dolly shepherd10)"
    )
    p.add_argument("--records", type=int, default=200, help="records per institution (default 200)")
    p.add_argument(
        "--model", default="smollm2-135m-instruct", help="base model (default: the bundled SmolLM2)"
    )
    p.add_argument("--torch-threads", type=int, default=1, help="CPU threads per process (default 1)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds")
    p.add_argument(
        "--workdir", type=Path, help="keep the parties' directories here (default: a temporary one)"
    )
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.records < 1:
        raise ValueError("--records must be >= 1")
    with tempfile.TemporaryDirectory(prefix="secfed-deploy-") as tmp:
        workdir = args.workdir or Path(tmp)
        result = run_deploy(
            args.example,
            data_dir=args.data,
            records=args.records,
            model=args.model,
            workdir=workdir,
            timeout_s=args.timeout,
            torch_threads=args.torch_threads,
        )
    if not emit(result, args.out, args.json):
        rounds = ", ".join(f"{s:.0f}" for s in result["round_s"] if s is not None)
        print(
            f"secfed bench deploy {args.example}: {'ok' if result['ok'] else 'FAILED'} in {result['wall_s']:.0f} s; "
            f"{result['rounds_completed']} rounds ({rounds} s); final adapter saved: {result['final_adapter_saved']}"
        )
    return 0 if result["ok"] else 1
