"""The tasks a federation can run, by name: secfed's own, and third-party plug-ins an operator names.

Why a table and not self-registration: a registry that task modules fill by importing it (and that
imports them to get filled) is an import cycle, and whatever happened to be imported decides what
exists. Here the built-in tasks are a static table of import paths, loaded only when a config names one,
and the registry imports no task module at import time.

Plug-ins: a third-party package adds a task without editing secfed by declaring an entry point in the
``secfed.tasks`` group whose object is a :class:`TaskEntry`::

    [project.entry-points."secfed.tasks"]
    my-task = "my_package.tasks:ENTRY"

A task runs code on an institution's records and keys, so installing a package must never be enough to
change what a config runs. A plug-in is therefore used only when the config names both the task and the
distribution that provides it (``[task] plugin = "my-package"``): a built-in name can never be taken over
(an entry point claiming one is refused), and another installed package declaring the same task name is
not the named distribution and is ignored.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secfed.dp.policy import PrivacyPolicy
    from secfed.fl.tasks import ClientTask, ServerTask

__all__ = [
    "BUILTIN_TASKS",
    "ENTRY_POINT_GROUP",
    "TaskEntry",
    "UnknownTaskError",
    "client_task",
    "find_task",
    "server_task",
]

ENTRY_POINT_GROUP = "secfed.tasks"


class UnknownTaskError(ValueError):
    """The config names a task that is neither built in nor provided by the plug-in it names."""


@dataclass(frozen=True)
class TaskEntry:
    """One task: its name, where its two halves are (``"package.module:Class"``), and whether its client
    half trains on the institution's records.

    A task that ``trains_on_records`` receives the institution's privacy policy (``privacy=`` keyword of
    its client factory) and must enforce it; the others compute nothing from records and never see it.
    """

    name: str
    server: str
    client: str
    trains_on_records: bool = False

    def __post_init__(self) -> None:
        for what, path in (("server", self.server), ("client", self.client)):
            if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", path):
                raise ValueError(f"task {self.name!r}: {what} must be 'package.module:Name', got {path!r}")

    def server_factory(self) -> Callable[[Mapping[str, Any]], ServerTask]:
        factory: Callable[[Mapping[str, Any]], ServerTask] = _load(self.server)
        return factory

    def client_factory(self) -> Callable[..., ClientTask]:
        factory: Callable[..., ClientTask] = _load(self.client)
        return factory


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


BUILTIN_TASKS: Mapping[str, TaskEntry] = {
    entry.name: entry
    for entry in (
        TaskEntry("toy-mean", "secfed.fl.toy:ToyServer", "secfed.fl.toy:ToyClient"),
        TaskEntry("bench-vector", "secfed.fl.benchtask:BenchServer", "secfed.fl.benchtask:BenchClient"),
        TaskEntry("fedit-lora", "secfed.fl.fedit:FeditServer", "secfed.fl.fedit:FeditClient", True),
        TaskEntry("fedhds-lora", "secfed.fl.fedhds:FedhdsServer", "secfed.fl.fedhds:FedhdsClient", True),
    )
}


def _normalized(distribution: str) -> str:
    """A distribution name as packaging compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def find_task(name: str, plugin: str | None = None) -> TaskEntry:
    """The task ``name``: a built-in one (``plugin`` must then be None), or the entry point of that name
    in the ``secfed.tasks`` group of the installed distribution ``plugin``."""
    if name in BUILTIN_TASKS:
        if plugin is not None:
            raise UnknownTaskError(
                f"task {name!r} is built into secfed; a plug-in cannot provide it (remove plugin = {plugin!r})"
            )
        return BUILTIN_TASKS[name]
    if plugin is None:
        raise UnknownTaskError(
            f"unknown task {name!r}; built-in tasks: {sorted(BUILTIN_TASKS)}. A task from a plug-in package "
            'also needs the distribution that provides it: [task] plugin = "<distribution>"'
        )
    wanted = _normalized(plugin)
    # Every installed copy, not metadata.entry_points(): that one keeps the first distribution of a name
    # on sys.path and silently drops the others, so a second copy placed earlier would win unseen.
    matches = [
        ep
        for dist in metadata.distributions()
        if _normalized(dist.metadata["Name"] or "") == wanted
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP, name=name)
    ]
    if len(matches) > 1:  # two installed copies claiming the name: which one runs must not be luck
        values = sorted(ep.value for ep in matches)
        raise UnknownTaskError(
            f"task {name!r}: {len(matches)} installed distributions are named {plugin!r} ({values}); "
            "remove all but one"
        )
    if matches:
        return _checked_plugin(matches[0], name, plugin)
    offered = sorted(
        ep.dist.name if ep.dist is not None else "?"
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    )
    found = f"; provided by {offered} instead" if offered else ""
    raise UnknownTaskError(
        f"task {name!r}: the installed distribution {plugin!r} provides no such entry point in the "
        f"{ENTRY_POINT_GROUP!r} group{found} (is it installed in this environment?)"
    )


def _checked_plugin(ep: metadata.EntryPoint, name: str, plugin: str) -> TaskEntry:
    try:
        entry = ep.load()
    except Exception as exc:
        raise UnknownTaskError(f"task {name!r} from {plugin!r}: loading {ep.value} failed: {exc}") from exc
    if not isinstance(entry, TaskEntry):
        raise UnknownTaskError(
            f"task {name!r} from {plugin!r}: {ep.value} is a {type(entry).__name__}, not a "
            "secfed.fl.registry.TaskEntry"
        )
    if entry.name != name:
        raise UnknownTaskError(
            f"task {name!r} from {plugin!r}: its entry point loads a task named {entry.name!r}"
        )
    return entry


def server_task(name: str, options: Mapping[str, Any], *, plugin: str | None = None) -> ServerTask:
    """The server half of the task ``name``, built from the server config's ``[task.options]``."""
    return find_task(name, plugin).server_factory()(options)


def client_task(
    name: str,
    client_id: str,
    options: Mapping[str, Any],
    privacy: PrivacyPolicy | None = None,
    *,
    plugin: str | None = None,
    **extra: Any,
) -> ClientTask:
    """The client half of the task ``name``; ``privacy`` (the institution's policy) goes to the tasks that
    train on records, and ``extra`` keywords (e.g. a shared ``model_pool``) to the factory as they are."""
    entry = find_task(name, plugin)
    factory = entry.client_factory()
    if entry.trains_on_records:
        return factory(client_id, options, privacy=privacy, **extra)
    return factory(client_id, options, **extra)
