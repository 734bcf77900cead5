"""The task registry: built-in tasks by name, plug-ins only from the distribution a config names.

Attack on plug-ins: any installed package can declare entry points. If installing one were enough to
change what a config runs (take over ``fedit-lora``, or a plug-in task's name), a dependency could run
its own code on an institution's records and keys. The tests install fake distributions on sys.path.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secfed.fl.registry import BUILTIN_TASKS, TaskEntry, UnknownTaskError, client_task, find_task
from secfed.fl.toy import ToyClient, ToyServer

TOY = "secfed.fl.toy"


def _install(
    root: Path, dist: str, files: dict[str, str], entry_points: dict[str, str], *, record: bool = True
) -> None:
    """A minimal installed distribution under ``root``: its files, and a dist-info with entry points in
    secfed.tasks and (``record``) a RECORD listing the files as pip writes it."""
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body, encoding="utf-8")
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n", encoding="utf-8")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[secfed.tasks]\n{lines}", encoding="utf-8")
    if record:
        listed = [*files, f"{info.name}/METADATA", f"{info.name}/entry_points.txt", f"{info.name}/RECORD"]
        (info / "RECORD").write_text("".join(f"{f},,\n" for f in listed), encoding="utf-8")


def _plugin_module(task: str, *, trains: bool = False, calls_itself: str | None = None) -> str:
    """A plug-in module: its own task halves (the toy task's, renamed) and the entry naming them."""
    module = "{module}"
    return (
        "from secfed.fl.registry import TaskEntry\n"
        "from secfed.fl.toy import ToyClient, ToyServer\n"
        f"class Server(ToyServer):\n    name = {calls_itself or task!r}\n"
        f"class Client(ToyClient):\n    name = {calls_itself or task!r}\n"
        f"ENTRY = TaskEntry({task!r}, '{module}:Server', '{module}:Client', trains_on_records={trains})\n"
    )


def _module_source(module: str, task: str, **kwargs: Any) -> str:
    return _plugin_module(task, **kwargs).replace("{module}", module)


@pytest.fixture(autouse=True)
def _forget_fake_modules() -> Iterator[None]:
    """Each test installs its own fake distributions; modules a test imported must not outlive it."""
    yield
    for name in [m for m in sys.modules if m.split(".")[0] in ("acme_tasks", "evil_helpers")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(
        tmp_path,
        "acme-tasks",
        {"acme_tasks.py": _module_source("acme_tasks", "acme-mean")},
        {"acme-mean": "acme_tasks:ENTRY"},
    )
    evil = (
        _module_source("evil_helpers", "acme-mean", trains=True)
        + f'FEDIT = TaskEntry("fedit-lora", "{TOY}:ToyServer", "{TOY}:ToyClient")\n'
        + "NOT_AN_ENTRY = object()\n"
        + _module_source("evil_helpers", "liar", calls_itself="fedit-lora").replace("ENTRY =", "LIAR =")
    )
    _install(
        tmp_path,
        "evil-helpers",
        {"evil_helpers.py": evil},
        {
            "fedit-lora": "evil_helpers:FEDIT",
            "acme-mean": "evil_helpers:ENTRY",
            "odd": "evil_helpers:NOT_AN_ENTRY",
            "liar": "evil_helpers:LIAR",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_every_builtin_task_loads_with_its_own_name_and_one_interface() -> None:
    for name, entry in BUILTIN_TASKS.items():
        server, client = entry.server_factory(), entry.client_factory()
        assert getattr(server, "name", None) == name and getattr(client, "name", None) == name
        assert callable(getattr(server, "next_stage", None)), f"{name}: every server half plans its stages"
    assert {n for n, e in BUILTIN_TASKS.items() if e.trains_on_records} == {"fedit-lora", "fedhds-lora"}


def test_the_registry_imports_no_task_module() -> None:
    """No import cycle and no import-order dependence: the table names tasks, loading one is lazy."""
    code = (
        "import sys, secfed.fl.registry\n"
        "loaded = [m for m in ('secfed.fl.toy', 'secfed.fl.fedit', 'secfed.fl.fedhds', 'secfed.fl.benchtask')"
        " if m in sys.modules]\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_and_misnamed_tasks_are_clear_errors() -> None:
    with pytest.raises(
        UnknownTaskError, match=r"unknown task 'nope'.*built-in tasks: \['bench-vector'.*plugin ="
    ):
        find_task("nope")
    with pytest.raises(UnknownTaskError, match="built into secfed; a plug-in cannot provide it"):
        find_task("toy-mean", plugin="acme-tasks")
    with pytest.raises(ValueError, match=r"must be 'package\.module:Name'"):
        TaskEntry("x", "no-colon", f"{TOY}:ToyClient")


@pytest.mark.usefixtures("plugins")
def test_a_plugin_task_runs_only_from_the_distribution_the_config_names() -> None:
    entry = find_task("acme-mean", plugin="acme-tasks")
    assert issubclass(entry.server_factory(), ToyServer) and not entry.trains_on_records  # type: ignore[arg-type]
    assert find_task("acme-mean", plugin="Acme_Tasks") == entry  # names compare as packaging does
    task = client_task("acme-mean", "inst00", {"dim": 4}, plugin="acme-tasks")
    assert isinstance(task, ToyClient)
    with pytest.raises(UnknownTaskError, match=r"needs the distribution that provides it"):
        find_task("acme-mean")
    with pytest.raises(
        UnknownTaskError, match=r"'absent' provides no such entry point.*\['acme-tasks', 'evil-helpers'\]"
    ):
        find_task("acme-mean", plugin="absent")


@pytest.mark.usefixtures("plugins")
def test_an_installed_package_cannot_take_over_a_task() -> None:
    assert find_task("fedit-lora") is BUILTIN_TASKS["fedit-lora"]
    with pytest.raises(UnknownTaskError, match="built into secfed"):
        find_task("fedit-lora", plugin="evil-helpers")
    assert not find_task("acme-mean", plugin="acme-tasks").trains_on_records  # not evil-helpers' entry
    with pytest.raises(UnknownTaskError, match=r"is a object, not a secfed\.fl\.registry\.TaskEntry"):
        find_task("odd", plugin="evil-helpers")
    with pytest.raises(UnknownTaskError, match=r"task 'liar': its Client calls itself 'fedit-lora'"):
        client_task("liar", "inst00", {"dim": 4}, plugin="evil-helpers")


def test_the_configs_name_the_plugin(tmp_path: Path) -> None:
    from client.config import load_client_config

    path = tmp_path / "client.toml"
    path.write_text(
        '[client]\nkit = "kit"\n[task]\nname = "acme-mean"\nplugin = "acme-tasks"\n[task.options]\ndim = 4\n',
        encoding="utf-8",
    )
    config = load_client_config(path)
    assert (config.task, config.task_plugin) == ("acme-mean", "acme-tasks")


def test_two_installed_copies_of_the_named_distribution_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a second dist-info claiming the trusted distribution's name (even one declaring no entry
    point) would otherwise decide, by path order, which copy's files run."""
    real, copy = tmp_path / "real", tmp_path / "copy"
    real.mkdir()
    copy.mkdir()
    _install(
        real,
        "acme-tasks",
        {"acme_tasks.py": _module_source("acme_tasks", "acme-mean")},
        {"acme-mean": "acme_tasks:ENTRY"},
    )
    _install(copy, "acme-tasks", {}, {})
    monkeypatch.syspath_prepend(str(real))
    monkeypatch.syspath_prepend(str(copy))
    with pytest.raises(UnknownTaskError, match=r"2 installed distributions are named 'acme-tasks'"):
        find_task("acme-mean", plugin="acme-tasks")


def test_a_same_named_module_from_another_package_is_refused_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: another package ships a package ``acme_tasks/`` (no entry point, no file clash with the
    real ``acme_tasks.py``); Python prefers the package, so loading the named plug-in's entry point would
    run the other package's code on the institution's records. Refused, and nothing of it is imported."""
    marker = tmp_path / "ran"
    shadow = f"open({str(marker)!r}, 'w').close()\n" + _module_source("acme_tasks", "acme-mean")
    _install(
        tmp_path,
        "acme-tasks",
        {"acme_tasks.py": _module_source("acme_tasks", "acme-mean")},
        {"acme-mean": "acme_tasks:ENTRY"},
    )
    _install(tmp_path, "pretty-logs", {"acme_tasks/__init__.py": shadow}, {})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        UnknownTaskError,
        match=r"module 'acme_tasks' would run .*acme_tasks/__init__\.py, which is not a file",
    ):
        find_task("acme-mean", plugin="acme-tasks")
    assert not marker.exists()
