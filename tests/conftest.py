"""Fixtures shared across test packages."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from secfed.home import HOME_ENV
from tests.secagg.support import Consortium, make_consortium

# Institutions keep their privacy ledger and release log in $SECFED_HOME (secfed.home); no test may
# touch the real one, so the whole session (and every process it starts) gets a fresh directory.
os.environ[HOME_ENV] = tempfile.mkdtemp(prefix="secfed-test-home-")


@pytest.fixture(scope="session")
def consortium() -> Consortium:
    return make_consortium(30)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its byte tokenizer saved as a model directory (as institutions load one)."""
    from secfed.model.tiny import tiny_llama

    path = tmp_path_factory.mktemp("tiny-model")
    loaded = tiny_llama(seed=1)
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path
