"""``secfed simulate --config``: the TOML description of a federation (the Dolly example ships with us)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secfed.harness.simconfig import load_simulation
from secfed.tomlconfig import ConfigFileError

ROOT = Path(__file__).resolve().parents[2]
DOLLY = ROOT.parent / "shared" / "data" / "dolly15k-shepherd10"


def test_dolly_example_gives_each_client_its_own_file() -> None:
    assert DOLLY.is_dir(), f"the shared Dolly split is missing at {DOLLY}"
    preset = load_simulation(ROOT / "examples" / "fedit-shared-10.toml")
    assert (preset.clients, preset.rounds, preset.task) == (10, 2, "fedit-lora")
    for i in (0, 9):
        options = preset.options_for(i, preset.clients)
        assert Path(options["data"]) == (DOLLY / f"client_{i}.json").resolve()
        assert Path(options["data"]).is_file()
        assert options["client_index"] == i and options["n_clients"] == 10
    assert preset.eval_data is not None and Path(preset.eval_data) == (DOLLY / "test.json").resolve()
    assert preset.task_options["model"] == "smollm2-135m-instruct"  # a model id, not a path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[simulate]\nclients = 2\n", r"simulate\.clients: must be in"),
        ("[simulate]\nclientz = 4\n", r"simulate: unknown key"),
        ('[evaluation]\ndata = "nope.json"\n', r"evaluation\.data: no such file"),
    ],
)
def test_bad_simulation_config_names_the_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=match):
        load_simulation(path)
