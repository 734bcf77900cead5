"""Every attack of the adversarial catalogue (``secfed bench attacks``) against the real institutions.

Each case is one lying server (its docstring in :mod:`secfed.bench.attacks` says what it tries); the
test fails if the server obtains what the round-binding property forbids, or if the defence that
should stop it no longer does (an attack expected to be *refused* that is merely contained means a
check stopped firing and something downstream happened to catch it).
"""

from __future__ import annotations

import pytest

from secfed.bench.attacks import ATTACKS, Attack, World

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_defeated(world: World, attack: Attack) -> None:
    outcome, detail = attack.run(world)
    assert outcome != "succeeded", detail
    assert outcome == attack.expect, detail


def test_the_catalogue_covers_every_attack_class() -> None:
    classes = {a.cls for a in ATTACKS}
    assert {
        "split-view",
        "chosen-records",
        "unverified-plan",
        "differencing",
        "train-floor",
        "colluder-floor",
    } <= classes
    assert len(ATTACKS) >= 30
