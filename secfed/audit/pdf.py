"""Print an audit report to PDF (and take screenshots, and read a page's console) with headless Chromium.

Why Chromium: the HTML page is the one rendering we design and test; printing that same page keeps the
PDF identical to it (same CSS, same inline SVG, ``@media print`` rules, A4 via ``@page``) without a
second layout engine or a Python PDF dependency. Debian's ``chromium`` package is enough; nothing is
downloaded.

Every launch uses a fresh temporary profile (no state shared with a desktop browser or another
process, no profile-lock clashes), runs in its own process group and is killed as a group on timeout,
so a hung renderer never outlives the call.

:func:`inspect_page` loads a page over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
file descriptors 3 and 4, no TCP port, no websocket library) and returns every console message,
uncaught exception and browser log entry with its level, plus every URL the page requested. That is
how the tests prove a rendered report has no console errors and loads nothing: the
``--enable-logging=stderr`` alternative prints console calls without their level and misses failed
resource loads entirely.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ConsoleEntry",
    "PageInspection",
    "ReportRenderError",
    "find_chromium",
    "inspect_page",
    "render_pdf",
    "screenshot",
]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "install Debian's chromium package (apt-get install chromium)"
DEFAULT_TIMEOUT = 120.0

# Noise Chromium prints on every start in containers (no D-Bus, no GPU); left out of error messages.
_NOISE = (
    "dbus/",
    "vaapi_wrapper",
    "sandbox_linux",
    "idle_linux",
    "bluez_dbus",
    "dbus/property",
    "unexpected operator",
)


class ReportRenderError(ValueError):
    """Chromium is missing, failed, or timed out while rendering a report."""


def find_chromium() -> str | None:
    """The first Chromium-family browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _browser(chromium: str | None) -> str:
    if chromium is None:
        found = find_chromium()
        if found is None:
            raise ReportRenderError(
                f"no Chromium found on PATH (looked for {', '.join(CHROMIUM_NAMES)}): {INSTALL_HINT}"
            )
        return found
    resolved = shutil.which(chromium)
    if resolved is None:
        raise ReportRenderError(f"Chromium executable {chromium!r} not found: {INSTALL_HINT}")
    return resolved


def _base_flags(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",  # containers and CI run as root or without user namespaces
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
        "--mute-audio",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.splitlines() if line.strip() and not any(n in line for n in _NOISE)]
    return "\n".join(kept[-lines:]) or "(no diagnostic output)"


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill the browser and its helper processes (they share the process group we created)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _run(browser: str, args: Sequence[str], *, timeout: float, what: str) -> str:
    """Run one headless Chromium command in a fresh profile; returns its stderr, raises on failure."""
    with tempfile.TemporaryDirectory(prefix="secfed-chromium-") as profile:
        cmd = [browser, *_base_flags(Path(profile)), *args]
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            raise ReportRenderError(f"cannot start {browser}: {exc}; {INSTALL_HINT}") from exc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise ReportRenderError(f"Chromium timed out after {timeout:.0f} s while {what}") from exc
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        if proc.returncode != 0:
            raise ReportRenderError(
                f"Chromium failed (exit code {proc.returncode}) while {what}:\n{_tail(err + out)}"
            )
        return err + out


def render_pdf(
    html_text: str, out: Path, *, chromium: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Print ``html_text`` to the PDF file ``out`` (A4 from the page's ``@page`` rule, no header/footer)."""
    browser = _browser(chromium)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="secfed-report-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html_text, encoding="utf-8")
        target = Path(tmp) / "report.pdf"
        log = _run(
            browser,
            [
                "--no-pdf-header-footer",  # current name of the flag ...
                "--print-to-pdf-no-header",  # ... and its name before Chromium 111 (unknown flags are ignored)
                f"--print-to-pdf={target}",
                page.resolve().as_uri(),
            ],
            timeout=timeout,
            what=f"printing {out}",
        )
        if not target.exists() or target.stat().st_size == 0:
            raise ReportRenderError(f"Chromium wrote no PDF for {out}:\n{_tail(log)}")
        with target.open("rb") as fh:
            if fh.read(5) != b"%PDF-":
                raise ReportRenderError(f"Chromium's output for {out} is not a PDF:\n{_tail(log)}")
        # Move into place only once complete: a failed run never leaves a truncated PDF behind.
        shutil.move(str(target), out)


def screenshot(
    html_path: Path,
    png: Path,
    *,
    width: int = 1200,
    height: int = 2400,
    chromium: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """A PNG of the top ``width`` x ``height`` CSS pixels of a page (for review and tests)."""
    browser = _browser(chromium)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    log = _run(
        browser,
        [
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            Path(html_path).resolve().as_uri(),
        ],
        timeout=timeout,
        what=f"taking a screenshot of {html_path}",
    )
    if not png.exists() or png.stat().st_size == 0:
        raise ReportRenderError(f"Chromium wrote no screenshot for {html_path}:\n{_tail(log)}")


# --------------------------------------------------------------------------- DevTools over a pipe


@dataclass(frozen=True)
class ConsoleEntry:
    """One thing a page reported: ``source`` is console-api, exception, network, rendering, security..."""

    source: str
    level: str  # Chromium's level names: verbose/info/log/debug, warning, error
    text: str
    url: str = ""

    @property
    def is_problem(self) -> bool:
        return self.level in ("error", "warning", "assert")


@dataclass(frozen=True)
class PageInspection:
    """What loading a page produced: console output and every URL it requested (the page included)."""

    entries: tuple[ConsoleEntry, ...]
    requests: tuple[str, ...]

    @property
    def problems(self) -> tuple[ConsoleEntry, ...]:
        return tuple(e for e in self.entries if e.is_problem)


_CONSOLE_LEVELS = {"warning": "warning", "error": "error", "assert": "error", "trace": "log"}


class _DevTools:
    """A minimal DevTools-protocol client: NUL-separated JSON messages on a pair of pipes."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self._write_fd, self._read_fd = write_fd, read_fd
        self._buffer = b""
        self._next_id = 0
        self.events: list[Mapping[str, Any]] = []

    def send(self, method: str, params: Mapping[str, Any] | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": dict(params or {})}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            written = os.write(self._write_fd, data)
            data = data[written:]
        return self._next_id

    def _messages(self, deadline: float) -> Mapping[str, Any] | None:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._read_fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._read_fd, 1 << 16)
            if not chunk:
                raise ReportRenderError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        return message if isinstance(message, Mapping) else {}

    def wait(self, predicate: Any, deadline: float, what: str) -> Mapping[str, Any]:
        """Read until ``predicate(message)``; every event read on the way is kept in ``events``."""
        while True:
            message = self._messages(deadline)
            if message is None:
                raise ReportRenderError(f"Chromium did not answer in time while {what}")
            if "method" in message:
                self.events.append(message)
            if "error" in message and "id" in message:
                raise ReportRenderError(f"DevTools error while {what}: {message['error']}")
            if predicate(message):
                return message

    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, session: str | None, deadline: float
    ) -> Mapping[str, Any]:
        call_id = self.send(method, params, session)
        reply = self.wait(lambda m: m.get("id") == call_id, deadline, method)
        result = reply.get("result")
        return result if isinstance(result, Mapping) else {}

    def drain_into_events(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            message = self._messages(deadline)
            if message is None:
                return
            if "method" in message:
                self.events.append(message)


def _entries(events: Sequence[Mapping[str, Any]]) -> tuple[tuple[ConsoleEntry, ...], tuple[str, ...]]:
    entries: list[ConsoleEntry] = []
    requests: list[str] = []
    for event in events:
        method, params = event.get("method"), event.get("params") or {}
        if method == "Runtime.consoleAPICalled":
            args = params.get("args") or []
            text = " ".join(
                str(a.get("value", a.get("description", ""))) for a in args if isinstance(a, Mapping)
            )
            kind = str(params.get("type", "log"))
            entries.append(ConsoleEntry("console-api", _CONSOLE_LEVELS.get(kind, kind), text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            exception = details.get("exception") or {}
            text = f"{details.get('text', 'Uncaught')} {exception.get('description', '')}".strip()
            entries.append(ConsoleEntry("exception", "error", text, str(details.get("url", ""))))
        elif method == "Log.entryAdded":
            entry = params.get("entry") or {}
            entries.append(
                ConsoleEntry(
                    str(entry.get("source", "other")),
                    str(entry.get("level", "info")),
                    str(entry.get("text", "")),
                    str(entry.get("url", "")),
                )
            )
        elif method == "Network.requestWillBeSent":
            request = params.get("request") or {}
            requests.append(str(request.get("url", "")))
    return tuple(entries), tuple(requests)


def inspect_page(
    html_path: Path, *, chromium: str | None = None, timeout: float = 60.0, settle: float = 0.5
) -> PageInspection:
    """Load a page in headless Chromium and report its console messages, errors and requests.

    Uses the DevTools protocol on ``--remote-debugging-pipe``: ``Runtime`` (console calls with their
    level, uncaught exceptions), ``Log`` (network failures, CSP violations, SVG/CSS parse errors) and
    ``Network`` (every URL requested) are enabled before navigating, then events are collected until
    the load event plus ``settle`` seconds.
    """
    browser = _browser(chromium)
    url = Path(html_path).resolve().as_uri()
    deadline = time.monotonic() + timeout
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds() -> None:
        """In the child before exec: Chromium reads commands on fd 3 and writes replies on fd 4.

        Both ends are first copied above fd 10 so that placing one cannot clobber the other.
        """
        read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)

    # Chromium's stderr goes to a file: its start-up noise could fill a pipe nobody reads during the load.
    with tempfile.TemporaryDirectory(prefix="secfed-chromium-") as profile, tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(
                [browser, *_base_flags(Path(profile)), "--remote-debugging-pipe", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=child_fds,  # the only way to place the pipe ends on fds 3 and 4
                pass_fds=(3, 4),
                start_new_session=True,
            )
        except OSError as exc:
            for fd in (to_browser_r, to_browser_w, from_browser_r, from_browser_w):
                os.close(fd)
            raise ReportRenderError(f"cannot start {browser}: {exc}; {INSTALL_HINT}") from exc
        os.close(to_browser_r)
        os.close(from_browser_w)
        tools = _DevTools(to_browser_w, from_browser_r)
        try:
            targets = tools.call("Target.getTargets", session=None, deadline=deadline)
            pages = [
                t
                for t in targets.get("targetInfos", [])
                if isinstance(t, Mapping) and t.get("type") == "page"
            ]
            if pages:
                target_id = str(pages[0]["targetId"])
            else:
                target_id = str(
                    tools.call(
                        "Target.createTarget", {"url": "about:blank"}, session=None, deadline=deadline
                    )["targetId"]
                )
            attached = tools.call(
                "Target.attachToTarget",
                {"targetId": target_id, "flatten": True},
                session=None,
                deadline=deadline,
            )
            session = str(attached["sessionId"])
            for domain in ("Runtime", "Log", "Network", "Page"):
                tools.call(f"{domain}.enable", session=session, deadline=deadline)
            before = len(tools.events)
            navigated = tools.call("Page.navigate", {"url": url}, session=session, deadline=deadline)
            if navigated.get("errorText"):
                raise ReportRenderError(f"Chromium could not open {html_path}: {navigated['errorText']}")
            # The load event may already have been read while waiting for the navigate reply.
            if not any(e.get("method") == "Page.loadEventFired" for e in tools.events[before:]):
                tools.wait(
                    lambda m: m.get("method") == "Page.loadEventFired", deadline, f"loading {html_path}"
                )
            tools.drain_into_events(min(settle, max(0.0, deadline - time.monotonic())))
            try:
                tools.send("Browser.close")
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        except (OSError, ValueError, KeyError) as exc:
            log.seek(0)
            stderr = log.read().decode(errors="replace")
            if isinstance(exc, ReportRenderError):
                raise ReportRenderError(f"{exc}\n{_tail(stderr)}") from exc
            raise ReportRenderError(f"DevTools session with Chromium failed: {exc}\n{_tail(stderr)}") from exc
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            os.close(to_browser_w)
            os.close(from_browser_r)
    entries, requests = _entries(tools.events)
    return PageInspection(entries, requests)
