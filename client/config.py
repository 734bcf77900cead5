"""An institution's client configuration file (``secfed client --config client.toml``).

Relative paths are resolved against the configuration file's directory. See
``client/client.example.toml`` for every option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secfed import tomlconfig
from secfed.dp.policy import DEFAULT_DELTA, PrivacyPolicy, require_dp_by_default
from secfed.fl.policy import InstitutionPolicy
from secfed.fl.tasks import resolve_task_paths


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter for transient transport failures (server restarting, network)."""

    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    give_up_after_s: float = 600.0


@dataclass(frozen=True)
class ClientConfig:
    kit: Path
    server: str | None = None
    audit_ledger: Path = Path("audit-ledger.jsonl")
    # Every input this institution has released (durable): none is summed twice (no differencing).
    # None: the institution's own, $SECFED_HOME/<institution>/releases.jsonl, shared by all its
    # federations (secfed.home): a second federation must not sum the same input over another cohort.
    release_log: Path | None = None
    # CPU threads for local training (0 = torch's default, every core): several clients sharing one
    # machine each set a share, or they oversubscribe the CPU and all run slower.
    torch_threads: int = 0
    # This institution's copy of the federation's result (see ClientRuntime): final/ at the end.
    model_dir: Path = Path("global-model")
    checkpoint_every: int = 0
    task: str = "toy-mean"
    task_options: dict[str, Any] = field(default_factory=dict)
    # The distribution providing a plug-in task (secfed.fl.registry); None for secfed's own tasks.
    task_plugin: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    policy: InstitutionPolicy = field(default_factory=InstitutionPolicy)


def _optional_path(base: Path, value: str) -> Path | None:
    """A configured file, relative to the configuration's directory; None (unset) for the default."""
    return base / value if value else None


def load_client_config(path: Path) -> ClientConfig:
    doc = tomlconfig.load(path)
    cli = doc.table("client")
    kit = path.parent / cli.get("kit", str, required=True)
    server = cli.get("server", str, "") or None
    audit_ledger = path.parent / cli.get("audit_ledger", str, "audit-ledger.jsonl")
    release_log = _optional_path(path.parent, cli.get("release_log", str, ""))
    torch_threads = cli.number("torch_threads", int, 0, low=0, high=1024)
    model_dir = path.parent / cli.get("model_dir", str, "global-model")
    checkpoint_every = cli.number("checkpoint_every", int, 0, low=0)
    cli.finish()
    task = doc.table("task")
    name = task.get("name", str, "toy-mean")
    plugin = task.get("plugin", str, "") or None
    options = resolve_task_paths(path.parent, task.get("options", dict, {}))
    task.finish()
    r = doc.table("retry")
    retry = RetryPolicy(
        initial_backoff_s=r.number("initial_backoff_s", float, RetryPolicy.initial_backoff_s, low=0.01),
        max_backoff_s=r.number("max_backoff_s", float, RetryPolicy.max_backoff_s, low=0.01),
        give_up_after_s=r.number("give_up_after_s", float, RetryPolicy.give_up_after_s, low=1.0),
    )
    r.finish()
    priv = doc.table("privacy")
    budget = priv.number("budget_epsilon", float, 0.0, low=0.0)
    try:
        privacy = PrivacyPolicy(
            ledger=_optional_path(path.parent, priv.get("ledger", str, "")),
            delta=priv.number("delta", float, DEFAULT_DELTA, low=0.0, high=1.0),
            budget_epsilon=budget or None,
            require_dp=priv.get("require_dp", bool, require_dp_by_default(budget or None)),
            require_selection_dp=priv.get("require_selection_dp", bool, False),
        )
    except ValueError as exc:
        raise tomlconfig.ConfigFileError(f"{path}: {exc}") from exc
    priv.finish()
    pol = doc.table("policy")
    try:
        policy = InstitutionPolicy.from_mapping(pol.everything())
    except (TypeError, ValueError) as exc:
        raise tomlconfig.ConfigFileError(f"{path}: {exc}") from exc
    pol.finish()
    doc.finish()
    return ClientConfig(
        kit=kit,
        server=server,
        audit_ledger=audit_ledger,
        release_log=release_log,
        torch_threads=torch_threads,
        model_dir=model_dir,
        checkpoint_every=checkpoint_every,
        task=name,
        task_options=options,
        task_plugin=plugin,
        retry=retry,
        privacy=privacy,
        policy=policy,
    )
