"""Structured logging: one ``key=value`` line per event, machine-greppable and human-readable.

Call sites log an event name and pass fields through ``extra={"fields": {...}}``; the formatter
renders them in a stable order after the timestamp, level, logger and event.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


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


class _CurrentStderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is *now* (test runners and daemons swap it out)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except (OSError, ValueError):
            self.handleError(record)


def _quote(value: object) -> str:
    """A value as one token: bare when safe, else a JSON string (control characters escaped, so a
    client-supplied string can never break the line or forge another entry)."""
    text = str(value)
    if text and not any(c in text for c in ' "=\\') and all(c.isprintable() for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def configure(level: str = "INFO") -> None:
    """Route secfed's loggers to stderr with the key=value formatter (idempotent)."""
    root = logging.getLogger("secfed")
    root.setLevel(level.upper())
    if not any(isinstance(h.formatter, KeyValueFormatter) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(KeyValueFormatter())
        root.addHandler(handler)
    root.propagate = False


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, name, extra={"fields": fields})
