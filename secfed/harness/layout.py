"""The run directory of ``secfed simulate``: a throwaway consortium, and one config file per process.

Everything a run needs is written under one directory with *relative* paths, so a run can be
inspected, re-run by hand (``secfed server --config OUT/server.toml``) or moved as a whole::

    OUT/pki/            CA, server kit, clients/<id> kits (secfed.pki.consortium.provision)
    OUT/server.toml     the coordinator's config (state in OUT/state/)
    OUT/clients/<id>.toml
    OUT/clients/<id>.audit.jsonl, <id>.privacy.jsonl   each institution's own hash-chained ledgers
    OUT/clients/<id>.releases.jsonl                     every input it released (no-differencing rule)
    OUT/logs/           one log per process (written by the harness)
    OUT/result.json     what happened (written by the harness)
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secfed.pki.consortium import loopback_consortium, provision

__all__ = ["HARNESS_ENTRIES", "RunLayout", "client_ids", "prepare_out_dir", "toml_value", "write_run"]

# What a run writes directly under OUT: --force removes exactly these, never anything else there.
HARNESS_ENTRIES = (
    "pki",
    "clients",
    "logs",
    "state",
    "server.toml",
    "server.port",
    "result.json",
)
_HOST = "127.0.0.1"


@dataclass(frozen=True)
class RunLayout:
    """Where every file of one run lives (all under ``out``)."""

    out: Path

    @property
    def pki(self) -> Path:
        return self.out / "pki"

    @property
    def server_config(self) -> Path:
        return self.out / "server.toml"

    @property
    def port_file(self) -> Path:
        return self.out / "server.port"

    @property
    def state_db(self) -> Path:
        return self.out / "state" / "state.sqlite"

    @property
    def rounds_log(self) -> Path:
        # server.runtime writes it beside the state database.
        return self.state_db.parent / "rounds.jsonl"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def result(self) -> Path:
        return self.out / "result.json"

    def client_config(self, client_id: str) -> Path:
        return self.out / "clients" / f"{client_id}.toml"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def client_ids(n: int) -> tuple[str, ...]:
    """``inst00, inst01, ...``: zero-padded so they sort in creation order (the server sorts its roster)."""
    width = max(2, len(str(n - 1)))
    return tuple(f"inst{i:0{width}d}" for i in range(n))


def prepare_out_dir(out: Path, *, force: bool) -> None:
    """Make ``out`` ready for a fresh run: refuse a non-empty directory unless ``force``.

    With ``force`` only the harness's own entries (:data:`HARNESS_ENTRIES`) are removed, so pointing
    ``--out`` at a directory holding other things by mistake cannot delete them; a previous run's
    state database must go, or the new server would resume the old run instead of starting one.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ValueError(f"--out {out}: directory is not empty; choose another or pass --force")
        for name in HARNESS_ENTRIES:
            target = out / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)


def toml_value(value: Any) -> str:
    """One TOML value (string, bool, int, float, list, inline table); tomllib only reads TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write a {type(value).__name__} to TOML")


def _toml_string(text: str) -> str:
    escaped = []
    for ch in text:
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _toml_string(key)


def _table(name: str, entries: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{_toml_key(k)} = {toml_value(v)}" for k, v in entries.items()]
    return "\n".join(lines) + "\n"


def write_run(
    layout: RunLayout,
    *,
    name: str,
    clients: Sequence[str],
    rounds: Mapping[str, Any],
    task: str,
    task_options: Mapping[str, Any],
    client_options: Mapping[str, Mapping[str, Any]],
    retry: Mapping[str, Any],
    privacy: Mapping[str, Any] | None = None,
) -> None:
    """Provision a fresh consortium and write the server's and every client's config file.

    The server certificate names 127.0.0.1 (host and IP SAN) because every process of a simulation
    dials loopback; the port in the kits is a placeholder, since the server binds any free port and
    the harness passes the real one to each client with ``--server``.
    """
    provision(loopback_consortium(name, clients), layout.pki)
    header = "# Written by `secfed simulate`; paths are relative to this file.\n\n"
    server_doc = "\n".join(
        [
            _table(
                "server",
                {
                    "listen": f"{_HOST}:0",
                    "kit": "pki/server",
                    "state_db": "state/state.sqlite",
                    "roster": list(clients),
                    "federation_name": name,
                },
            ),
            _table("rounds", rounds),
            _table("task", {"name": task, "options": dict(task_options)}),
        ]
    )
    layout.server_config.write_text(header + server_doc, encoding="utf-8")
    (layout.out / "clients").mkdir(exist_ok=True)
    for cid in clients:
        doc = "\n".join(
            [
                # The run's institutions are throwaway identities of its own CA: their release logs and
                # privacy ledgers live in the run directory, not in an institution's $SECFED_HOME.
                _table(
                    "client",
                    {
                        "kit": f"../pki/clients/{cid}",
                        "audit_ledger": f"{cid}.audit.jsonl",
                        "release_log": f"{cid}.releases.jsonl",
                    },
                ),
                _table("task", {"name": task, "options": dict(client_options[cid])}),
                _table("privacy", {"ledger": f"{cid}.privacy.jsonl", **(privacy or {})}),
                _table("retry", retry),
            ]
        )
        layout.client_config(cid).write_text(header + doc, encoding="utf-8")
    layout.logs.mkdir(exist_ok=True)
