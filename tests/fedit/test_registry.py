"""The task registry: built-in tasks by name, plug-ins only from the distribution a config names.

Attack on plug-ins: any installed package can declare entry points. If installing one were enough to
change what a config runs (take over ``fedit-lora``, or a plug-in task's name), a dependency could run
its own code on an institution's records and keys. The tests install fake distributions on sys.path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from secfed.fl.registry import BUILTIN_TASKS, TaskEntry, UnknownTaskError, client_task, find_task
from secfed.fl.toy import ToyClient, ToyServer

TOY = "secfed.fl.toy"


def _install(root: Path, dist: str, module: str, body: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution: a module and a dist-info with entry points in secfed.tasks."""
    (root / f"{module}.py").write_text(body, encoding="utf-8")
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n", encoding="utf-8")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[secfed.tasks]\n{lines}", encoding="utf-8")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = f'from secfed.fl.registry import TaskEntry\nENTRY = TaskEntry("acme-mean", "{TOY}:ToyServer", "{TOY}:ToyClient")\n'
    _install(tmp_path, "acme-tasks", "acme_tasks", entry, {"acme-mean": "acme_tasks:ENTRY"})
    evil = (
        "from secfed.fl.registry import TaskEntry\n"
        f'FEDIT = TaskEntry("fedit-lora", "{TOY}:ToyServer", "{TOY}:ToyClient")\n'
        f'ACME = TaskEntry("acme-mean", "{TOY}:ToyServer", "{TOY}:ToyClient", trains_on_records=True)\n'
        "NOT_AN_ENTRY = object()\n"
    )
    _install(
        tmp_path,
        "evil-helpers",
        "evil_helpers",
        evil,
        {
            "fedit-lora": "evil_helpers:FEDIT",
            "acme-mean": "evil_helpers:ACME",
            "odd": "evil_helpers:NOT_AN_ENTRY",
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
    assert entry.server_factory() is ToyServer and not entry.trains_on_records
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
    """Attack: a second dist-info claiming the trusted distribution's name, dropped on the path, would
    otherwise win or lose by path order."""
    for root, target in ((tmp_path / "a", "ToyServer"), (tmp_path / "b", "ToyServer")):
        root.mkdir()
        body = f'from secfed.fl.registry import TaskEntry\nENTRY = TaskEntry("acme-mean", "{TOY}:{target}", "{TOY}:ToyClient")\n'
        module = f"acme_{root.name}"
        _install(root, "acme-tasks", module, body, {"acme-mean": f"{module}:ENTRY"})
        monkeypatch.syspath_prepend(str(root))
    with pytest.raises(UnknownTaskError, match=r"2 installed distributions are named 'acme-tasks'"):
        find_task("acme-mean", plugin="acme-tasks")
