"""The tasks a federation can run, by name: secfed's own, and third-party plug-ins an operator names.

Why a table and not self-registration: a registry that task modules fill by importing it (and that
imports them to get filled) is an import cycle, and whatever happened to be imported decides what
exists. Here the built-in tasks are a static table of import paths, loaded only when a config names one,
and the registry imports no task module at import time.

Plug-ins: a third-party package adds a task without editing secfed by declaring an entry point in the
``secfed.tasks`` group whose object is a :class:`TaskEntry`::

    [project.entry-points."secfed.tasks"]
    my-task = "my_package.tasks:ENTRY"

A task runs code on an institution's records and keys, so declaring an entry point, or installing a
package that ships a module of the same name, must never be enough to change what a config runs. A
plug-in is therefore used only when the config names both the task and the distribution that provides it
(``[task] plugin = "my-package"``): a built-in name can never be taken over; another distribution
declaring the same task name is ignored; two installed distributions of the named one are refused; and
every module the task is loaded from (the entry point's, its server and client halves') must be a file of
the named distribution (or of secfed itself), checked before anything is imported, so a same-named module
shipped by another package, earlier on ``sys.path``, is refused rather than run. What no registry can
guard against is a package that runs code when it is installed or imported at start-up (a ``.pth`` file,
overwritten files): installing software on an institution's host is trusted by definition.

A plug-in's task halves must carry the entry's name (``.name``): the coordinator addresses rounds to a
task by that name, and a plug-in must not answer rounds sent to another task.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from importlib.machinery import PathFinder
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
T = TypeVar("T")


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
    dists = [d for d in metadata.distributions() if _normalized(d.metadata["Name"] or "") == wanted]
    if len(dists) > 1:  # which copy runs must not be decided by path order
        where = sorted(str(d.locate_file("")) for d in dists)
        raise UnknownTaskError(
            f"task {name!r}: {len(dists)} installed distributions are named {plugin!r} ({where}); "
            "remove all but one"
        )
    matches = list(dists[0].entry_points.select(group=ENTRY_POINT_GROUP, name=name)) if dists else []
    if matches:
        return _checked_plugin(matches[0], dists[0], name, plugin)
    offered = sorted(
        ep.dist.name if ep.dist is not None else "?"
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    )
    found = f"; provided by {offered} instead" if offered else ""
    raise UnknownTaskError(
        f"task {name!r}: the installed distribution {plugin!r} provides no such entry point in the "
        f"{ENTRY_POINT_GROUP!r} group{found} (is it installed in this environment?)"
    )


def _module_files(module: str) -> list[Path]:
    """The files importing ``module`` would execute (each package's ``__init__`` on the way, then the
    module), found the way the import system's path finder finds them, without importing anything; a
    module already imported is the one that will be used."""
    files: list[Path] = []
    search: list[str] | None = None
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        if loaded is not None:
            origin = getattr(loaded, "__file__", None)
            search = list(getattr(loaded, "__path__", []) or []) or None
        else:
            spec = PathFinder.find_spec(name, search)
            if spec is None:
                raise UnknownTaskError(f"module {name!r} is not installed")
            origin = spec.origin if spec.has_location else None
            search = list(spec.submodule_search_locations or []) or None
        if origin is not None:
            files.append(Path(origin).resolve())
    return files


def _check_provenance(modules: set[str], dist: metadata.Distribution, name: str, plugin: str) -> None:
    """Every file the task's modules would execute belongs to ``dist`` (or to secfed itself)."""
    owned = {Path(str(dist.locate_file(f))).resolve() for f in dist.files or ()}
    secfed_root = Path(__file__).resolve().parents[1]
    for module in sorted(modules):
        for path in _module_files(module):
            if path not in owned and not path.is_relative_to(secfed_root):
                raise UnknownTaskError(
                    f"task {name!r} from {plugin!r}: module {module!r} would run {path}, which is not a "
                    f"file of the distribution {plugin!r}: another package provides a module of that name"
                )


def _checked_plugin(
    ep: metadata.EntryPoint, dist: metadata.Distribution, name: str, plugin: str
) -> TaskEntry:
    _check_provenance({ep.module}, dist, name, plugin)
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
    _check_provenance({entry.server.partition(":")[0], entry.client.partition(":")[0]}, dist, name, plugin)
    return entry


def _named(task: T, entry: TaskEntry) -> T:
    found = getattr(task, "name", None)
    if found != entry.name:
        raise UnknownTaskError(f"task {entry.name!r}: its {type(task).__name__} calls itself {found!r}")
    return task


def server_task(name: str, options: Mapping[str, Any], *, plugin: str | None = None) -> ServerTask:
    """The server half of the task ``name``, built from the server config's ``[task.options]``."""
    entry = find_task(name, plugin)
    return _named(entry.server_factory()(options), entry)


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
        return _named(factory(client_id, options, privacy=privacy, **extra), entry)
    return _named(factory(client_id, options, **extra), entry)
