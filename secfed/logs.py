"""Structured logging: one line per event, ``key=value`` (readable, greppable) or JSON (for log shippers).

Call sites log an event name and pass fields through ``extra={"fields": {...}}``; the formatters
render them in a stable order after the timestamp, level, logger and event. Either format escapes
control characters, so a client-supplied string can never break a line or forge another entry.
:func:`configure` sends the lines to stderr and, with ``file``, also to a size-rotated log file.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any, Literal

#: The line formats :func:`configure` offers.
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``event``, then the event's fields
    (values JSON cannot hold are written as strings), and ``exc`` for a logged exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        for key, value in getattr(record, "fields", {}).items():
            line.setdefault(str(key), value)  # a field never overwrites the keys above
        try:
            return json.dumps(line, ensure_ascii=False, allow_nan=False, default=str)
        except (TypeError, ValueError):  # a value JSON cannot hold as is (NaN, non-string keys): as text
            return json.dumps(
                {k: v if isinstance(v, str) else str(v) for k, v in line.items()}, ensure_ascii=False
            )


class _CurrentStderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is *now* (test runners and daemons swap it out)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging must never raise into the code that logs
            self.handleError(record)


def shown(value: object) -> str:
    """A value as text for a terminal or a one-line message: as is when every character is printable,
    else a JSON string (control characters escaped: text that came from a peer cannot move the cursor,
    retitle the window or forge a line)."""
    text = str(value)
    return text if text.isprintable() else json.dumps(text)


def _quote(value: object) -> str:
    """A value as one token: bare when safe, else a JSON string (control characters escaped, so a
    client-supplied string can never break the line or forge another entry)."""
    text = str(value)
    if text and not any(c in text for c in ' "=\\') and all(c.isprintable() for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def configure(
    level: str = "INFO",
    *,
    line_format: LogFormat = "text",
    file: Path | None = None,
    max_bytes: int = 50 * 2**20,
    backups: int = 5,
) -> None:
    """Route secfed's loggers to stderr, and to ``file`` when given, in ``line_format`` (replacing what an
    earlier call set up). The file rotates at ``max_bytes``, keeping ``backups`` old files
    (``secfed.log.1`` ...); it is opened (and its directory created) here, so a path that cannot be
    written fails at once with an ``OSError`` naming it, not at the first event."""
    if line_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {line_format!r}")
    if max_bytes < 1024 or backups < 0:
        raise ValueError("a log file rotates at 1 KiB or more, keeping 0 or more old files")
    formatter: logging.Formatter = JsonFormatter() if line_format == "json" else KeyValueFormatter()
    handlers: list[logging.Handler] = [_CurrentStderrHandler()]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
        )
    root = logging.getLogger("secfed")
    root.setLevel(level.upper())
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.propagate = False


_OURS = "_secfed_configured"


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, name, extra={"fields": fields})
