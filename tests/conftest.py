"""Fixtures shared across test packages."""

from __future__ import annotations

import pytest

from tests.secagg.support import Consortium, make_consortium


@pytest.fixture(scope="session")
def consortium() -> Consortium:
    return make_consortium(30)
