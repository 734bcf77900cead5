"""Stopping local work that nobody will use any more.

Local training or feature extraction can take minutes. When the coordinator abandons the attempt it
belongs to (a phase expired, too many dropouts), an institution should stop at once rather than
finish work whose result can never be sent. The stop point is deep inside torch loops, several calls
below the transport that learns of the abandonment; threading a callback through every task's
``compute`` would widen the task protocol for a transport concern, so the transport opens a
*cancellable scope* around the computation and long loops call :func:`check` between steps.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

__all__ = ["ComputeCancelled", "cancellable", "check"]

_scope: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("secfed_cancel", default=None)


class ComputeCancelled(Exception):  # noqa: N818 - an outcome, not a fault: the work was abandoned
    """The local computation was stopped because its session was abandoned."""


@contextlib.contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Within this scope, :func:`check` raises :class:`ComputeCancelled` once ``event`` is set."""
    token = _scope.set(event)
    try:
        yield
    finally:
        _scope.reset(token)


def check() -> None:
    """Raise :class:`ComputeCancelled` if the enclosing scope's work was abandoned (cheap; call often)."""
    event = _scope.get()
    if event is not None and event.is_set():
        raise ComputeCancelled("the session this computation belongs to was abandoned")
