"""Fixtures of the adversarial tests: one tiny model and one model pool for the whole directory."""

from __future__ import annotations

import pytest

from secfed.bench.attacks import World


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The catalogue's shared material: a tiny random Llama (built once) and a model pool."""
    return World(tmp_path_factory.mktemp("adversarial"))
