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
