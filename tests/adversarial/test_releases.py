"""The release log: an input is never summed into a second session, unless the first provably cannot
be unmasked (attack: differencing two sums of the same input over cohorts with and without a member)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secfed.fl.policy import RefusalCategory, Refused
from secfed.fl.releases import ReleaseLog, release_identity

U2 = frozenset({"a", "b", "c", "d", "e"})  # 5 shareholders, threshold 4, 1 colluder: quorum 5 - 4 + 1 + 1 = 3
S1, S2 = b"\x01" * 32, b"\x02" * 32


def _release(log: ReleaseLog, sid: bytes, attested: dict[bytes, set[str]] | None = None) -> None:
    log.release(b"input", sid, round_=3, u2=U2, threshold=4, colluders=1, attested=attested)


def test_a_second_session_is_refused_and_the_refusal_says_released(tmp_path: Path) -> None:
    log = ReleaseLog(tmp_path / "r.jsonl")
    _release(log, S1)
    _release(log, S1)  # the same session again (an upload retried) is fine
    with pytest.raises(Refused) as err:
        _release(log, S2)
    assert err.value.category is RefusalCategory.RELEASED


def test_the_log_survives_a_restart(tmp_path: Path) -> None:
    _release(ReleaseLog(tmp_path / "r.jsonl"), S1)
    with pytest.raises(Refused):
        _release(ReleaseLog(tmp_path / "r.jsonl"), S2)


@pytest.mark.parametrize(("attesters", "allowed"), [({"a", "b"}, False), ({"a", "b", "c"}, True)])
def test_abandonment_quorum_is_exactly_u2_minus_t_plus_c_plus_one(
    tmp_path: Path, attesters: set[str], allowed: bool
) -> None:
    """With 3 attestations (one may be a colluder's lie) at most 5 - 2 = 3 < t = 4 shares can ever be
    revealed: the first session can never be unmasked. With 2, four shares might be."""
    log = ReleaseLog(tmp_path / "r.jsonl")
    _release(log, S1)
    if allowed:
        _release(log, S2, {S1: attesters})
        assert log.session_of(b"input") == S2.hex()
        assert log.session_of(b"input") == ReleaseLog(tmp_path / "r.jsonl").session_of(b"input")
    else:
        with pytest.raises(Refused):
            _release(log, S2, {S1: attesters})


def test_attestations_of_non_members_do_not_count(tmp_path: Path) -> None:
    log = ReleaseLog(tmp_path / "r.jsonl")
    _release(log, S1)
    with pytest.raises(Refused):
        _release(log, S2, {S1: {"a", "x", "y", "z"}})  # x, y, z held no share of S1


def test_an_unmasked_session_is_never_listed_as_abandoned(tmp_path: Path) -> None:
    log = ReleaseLog(tmp_path / "r.jsonl")
    log.joined(S1, 3)
    log.joined(S2, 3)
    log.joined(b"\x03" * 32, 4)
    log.unmasked(S2)
    assert log.abandoned(3) == (S1,)
    assert ReleaseLog(tmp_path / "r.jsonl").abandoned(3) == (S1,)  # durable too


def test_identities_are_domain_separated() -> None:
    assert release_identity("a", b"x") != release_identity("b", b"x")
    assert release_identity("a", b"x", b"y") != release_identity("a", b"xy")


def test_a_corrupt_log_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:1"):
        ReleaseLog(path)
