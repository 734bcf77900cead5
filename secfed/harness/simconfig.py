"""``secfed simulate --config FILE``: a federation described in TOML instead of a named preset.

This is how the main job runs on real data (Dolly-15k as split for 10 clients, or an institution's
own files) without code changes. Paths are relative to the file. A client option whose value contains
``{client_index}`` is filled in per client, so ``data = "dolly/client_{client_index}.json"`` gives
every institution its own file. See ``examples/fedit-shared-10.toml``.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from secfed import tomlconfig
from secfed.fl.tasks import resolve_task_paths
from secfed.harness.presets import Preset


def load_simulation(path: Path) -> Preset:
    doc = tomlconfig.load(path)
    base = path.parent
    sim = doc.table("simulate")
    name = sim.get("name", str, path.stem)
    clients = sim.number("clients", int, 4, low=3)
    rounds = sim.number("rounds", int, 1, low=1)
    phase_timeout = sim.number("phase_timeout_s", float, 1800.0, low=0.1)
    torch_threads = sim.number("torch_threads", int, 1, low=1)
    sim.finish()
    task = doc.table("task")
    task_name = task.get("name", str, "fedit-lora")
    server_options = resolve_task_paths(base, task.get("options", dict, {}))
    task.finish()
    client = doc.table("client")
    client_options = resolve_task_paths(base, client.get("options", dict, {}))
    client.finish()
    evaluation = doc.table("evaluation")
    eval_data = evaluation.get("data", str, "")
    eval_tokens = evaluation.number("max_new_tokens", int, 64, low=1)
    eval_max = evaluation.number("max_records", int, 0, low=0)
    evaluation.finish()
    priv = doc.table("privacy")
    privacy: dict[str, Any] = {}
    if "budget_epsilon" in priv.data:
        privacy["budget_epsilon"] = priv.number("budget_epsilon", float, 0.0, low=0.0)
    if "delta" in priv.data:
        privacy["delta"] = priv.number("delta", float, 1e-5, low=0.0, high=1.0)
    if "require_dp" in priv.data:
        privacy["require_dp"] = priv.get("require_dp", bool, False)
    priv.finish()
    doc.finish()
    if eval_data and not (base / eval_data).exists() and not Path(eval_data).exists():
        raise tomlconfig.ConfigFileError(f"{path}: evaluation.data: no such file {eval_data!r}")
    return Preset(
        name=name,
        description=f"from {path}",
        clients=clients,
        rounds=rounds,
        task=task_name,
        task_options=MappingProxyType(server_options),
        client_options=MappingProxyType(client_options),
        partition_data=True,
        evaluate=bool(eval_data) or client_options.get("data") == "builtin",
        eval_data=str((base / eval_data).resolve()) if eval_data else None,
        eval_max_new_tokens=eval_tokens,
        eval_max_records=eval_max or None,
        torch_threads=torch_threads,
        phase_timeout_s=phase_timeout,
        privacy=MappingProxyType(privacy),
    )
