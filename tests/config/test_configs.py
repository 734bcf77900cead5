"""The role configuration files: the shipped examples load, and bad files name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.config import load_client_config
from secfed.tomlconfig import ConfigFileError
from server.config import load_server_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_configs_load() -> None:
    server = load_server_config(ROOT / "server" / "server.example.toml")
    assert server.roster == ("hospital-a", "hospital-b", "university-c")
    assert server.kit == ROOT / "server" / "kits" / "server"
    assert server.plan.rounds == 3 and server.limits.chunk_bytes == 1048576
    assert server.task == "fedit-lora"
    client = load_client_config(ROOT / "client" / "client.example.toml")
    assert client.server is None and client.task == "fedit-lora"
    # A data path is resolved against the configuration file, wherever the client is started from.
    assert client.task_options["data"] == str(ROOT / "client" / "data" / "records.jsonl")
    assert client.task_options["model"] == "smollm2-135m-instruct"  # a registry name stays a name
    assert client.model_dir == ROOT / "client" / "global-model"


@pytest.mark.parametrize("example", ["fedit", "fedhds", "fedit-dp"])
def test_deploy_examples_load_and_pair_up(example: str) -> None:
    directory = ROOT / "examples" / "deploy" / example
    server = load_server_config(directory / "server.toml")
    client = load_client_config(directory / "client.toml")
    assert server.task == client.task
    assert client.task_options["data"] == str(directory / "data" / "records.jsonl")
    # Local training has its own deadline, far longer than the SecAgg phases'.
    assert server.plan.compute_timeout_s >= 10 * server.plan.phase_timeout_s
    assert (server.task_options.get("dp") is not None) == client.privacy.require_dp


def test_a_misspelt_required_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('[client]\nkitt = "kits/a"\n')
    with pytest.raises(ConfigFileError, match=r"client\.kit: is required \(the file has 'kitt'"):
        load_client_config(path)


def test_client_torch_threads_and_model_dir(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('[client]\nkit = "k"\ntorch_threads = 2\nmodel_dir = "out/model"\ncheckpoint_every = 5\n')
    client = load_client_config(path)
    assert (client.torch_threads, client.model_dir, client.checkpoint_every) == (2, tmp_path / "out/model", 5)
    path.write_text('[client]\nkit = "k"\ntorch_threads = -1\n')
    with pytest.raises(ConfigFileError, match=r"client\.torch_threads: must be in"):
        load_client_config(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[server]\nkit = "k"\nroster = ["a","b","c"]\nlisten = 5\n', r"server\.listen: must be a str"),
        ('[server]\nkit = "k"\n', r"server\.roster: is required"),
        (
            '[server]\nkit = "k"\nroster = ["a","b","c"]\n[rounds]\nrounds = 0\n',
            r"rounds\.rounds: must be in",
        ),
        (
            '[server]\nkit = "k"\nroster = ["a","b","c"]\n[rounds]\nroundz = 2\n',
            r"rounds: unknown key\(s\) \['roundz'\]",
        ),
        ('[server]\nkit = "k"\nroster = ["a","b","c"]\n[limits]\nchunk_bytes = 10\n', r"limits\.chunk_bytes"),
        ('[server]\nkit = "k"\nroster = ["a","b","c"]\nkeep_models = -1\n', r"server\.keep_models: must be"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_server_config_names_file_and_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=match) as err:
        load_server_config(path)
    assert str(path) in str(err.value)


def test_keep_models_bounds_the_state_database(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[server]\nkit = "k"\nroster = ["a","b","c"]\nkeep_models = 3\n')
    assert load_server_config(path).keep_models == 3
    path.write_text('[server]\nkit = "k"\nroster = ["a","b","c"]\n')
    assert load_server_config(path).keep_models is None  # every round's model, as before


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such configuration file"):
        load_client_config(tmp_path / "nope.toml")


def test_client_privacy_policy_and_ledgers(tmp_path: Path) -> None:
    client = load_client_config(ROOT / "client" / "client.example.toml")
    assert client.privacy.budget_epsilon == 8.0 and client.privacy.delta == 1e-5
    # Unset: the institution's own ledger and release log (secfed.home), not the config's directory.
    assert client.privacy.ledger is None and client.release_log is None
    assert client.audit_ledger == ROOT / "client" / "audit-ledger.jsonl"
    path = tmp_path / "client.toml"
    path.write_text('[client]\nkit = "k"\nrelease_log = "r.jsonl"\n[privacy]\nledger = "p.jsonl"\n')
    named = load_client_config(path)
    assert (named.privacy.ledger, named.release_log) == (tmp_path / "p.jsonl", tmp_path / "r.jsonl")
    path.write_text('[client]\nkit = "k"\n[privacy]\nbudget_epsilon = 0\n')
    assert load_client_config(path).privacy.budget_epsilon is None  # 0 = no cap (still ledgered)
    path.write_text('[client]\nkit = "k"\n[privacy]\ndelta = 0.0\n')
    with pytest.raises(ConfigFileError, match=r"delta must be in \(0, 1\)"):
        load_client_config(path)
    path.write_text('[client]\nkit = "k"\n[privacy]\nbudget = 3\n')
    with pytest.raises(ConfigFileError, match=r"privacy: unknown key\(s\) \['budget'\]"):
        load_client_config(path)


def test_server_target_epsilon_is_spread_over_the_planned_rounds(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        '[server]\nkit = "k"\nroster = ["a","b","c"]\n[rounds]\nrounds = 7\n'
        '[task]\nname = "fedit-lora"\n[task.options]\ndp = { target_epsilon = 8.0 }\n'
    )
    assert load_server_config(path).task_options["dp"] == {"target_epsilon": 8.0, "rounds": 7}


def test_a_budget_requires_dp_unless_the_institution_says_otherwise(tmp_path: Path) -> None:
    """A budget beside rounds trained without noise would be a promise the ledger cannot keep."""
    from secfed.dp.policy import PrivacyPolicy

    path = tmp_path / "client.toml"
    path.write_text('[client]\nkit = "k"\n[privacy]\nbudget_epsilon = 8.0\n')
    assert load_client_config(path).privacy.require_dp is True
    path.write_text('[client]\nkit = "k"\n[privacy]\nbudget_epsilon = 8.0\nrequire_dp = false\n')
    with pytest.raises(ConfigFileError, match="budget could not hold"):  # contradictory: say so
        load_client_config(path)
    path.write_text('[client]\nkit = "k"\n')
    assert load_client_config(path).privacy.require_dp is False
    assert PrivacyPolicy.from_mapping({"ledger": "l", "budget_epsilon": 2.0}).require_dp is True
    assert PrivacyPolicy.from_mapping({"ledger": "l"}).require_dp is False
