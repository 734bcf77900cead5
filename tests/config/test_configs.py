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
    assert server.roster == ("hospital-a", "hospital-b", "bank-c", "lab-d")
    assert server.kit == ROOT / "server" / "kits" / "server"
    assert server.plan.rounds == 3 and server.limits.chunk_bytes == 1048576
    client = load_client_config(ROOT / "client" / "client.example.toml")
    assert client.server is None and client.task == "toy-mean" and client.task_options == {"dim": 16}


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
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_server_config_names_file_and_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=match) as err:
        load_server_config(path)
    assert str(path) in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such configuration file"):
        load_client_config(tmp_path / "nope.toml")


def test_client_privacy_policy_and_ledgers(tmp_path: Path) -> None:
    client = load_client_config(ROOT / "client" / "client.example.toml")
    assert client.privacy.budget_epsilon == 8.0 and client.privacy.delta == 1e-5
    assert client.privacy.ledger == ROOT / "client" / "privacy-ledger.jsonl"
    assert client.audit_ledger == ROOT / "client" / "audit-ledger.jsonl"
    path = tmp_path / "client.toml"
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
