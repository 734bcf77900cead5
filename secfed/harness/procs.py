"""Child processes of the harness: one ``secfed`` server or client each, logging to its own file.

The harness never imports the server or client packages; it runs them exactly as an operator would
(``python -m secfed.cli server ...``), so a simulation exercises the real entry points, TLS, ports
and process deaths. Every wait here is bounded: a stuck child is terminated (SIGTERM, then SIGKILL),
never waited on forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import secfed

__all__ = ["ChildProcess", "secfed_command"]


def secfed_command(*args: str) -> list[str]:
    """``python -m secfed.cli ARGS`` with this interpreter, so children run the same installation."""
    return [sys.executable, "-m", "secfed.cli", "--log-level", "INFO", *args]


def child_env(torch_threads: int | None = None) -> dict[str, str]:
    """The environment of a child: ours, unbuffered, with this checkout importable even if not installed."""
    env = dict(os.environ)
    if torch_threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(torch_threads)
    root = str(Path(secfed.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ChildProcess:
    """A started child and what became of it (for ``result.json``)."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    stopped_by: str | None = None  # "SIGTERM"/"SIGKILL" when the harness ended it, else None

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        log: Path,
        *,
        banner: str | None = None,
        torch_threads: int | None = None,
    ) -> ChildProcess:
        """Start ``argv`` with stdout and stderr appended to ``log`` (a restart appends to the same file)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            if banner:
                fh.write(f"# secfed simulate: {banner}\n".encode())
                fh.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=child_env(torch_threads),
            )
        return cls(name, argv, log, popen)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def alive(self) -> bool:
        if self.popen.poll() is None:
            return True
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        return False

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the child to exit; True if it has."""
        try:
            self.popen.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return False
        return not self.alive()

    def kill(self) -> None:
        """SIGKILL now (a simulated crash); returns once the child is gone."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.stopped_by = "SIGKILL"
        self.popen.wait()
        self.alive()

    def request_stop(self) -> None:
        """SIGTERM without waiting: ask the child to shut down gracefully in its own time."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 3.0) -> None:
        """End the child politely if it is still running: SIGTERM, then SIGKILL after ``grace_s``."""
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        self.stopped_by = "SIGTERM"
        if not self.wait(grace_s):
            self.kill()

    def summary(self) -> dict[str, object]:
        self.alive()
        seconds = None if self.ended_at is None else round(self.ended_at - self.started_at, 3)
        return {
            "pid": self.pid,
            "exit_code": self.returncode,
            "stopped_by_harness": self.stopped_by,
            "seconds": seconds,
            "log": str(self.log),
        }
