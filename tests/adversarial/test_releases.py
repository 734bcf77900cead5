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
    log.unmasked(S2, {"a", "b"})
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


S3 = b"\x03" * 32
U3 = frozenset({"a", "b", "c", "e"})  # the survivors this institution signed in S1 ("e" is the dealer)


def _retry(
    log: ReleaseLog,
    sid: bytes,
    ready: set[str],
    proven: set[str],
    attested: dict[bytes, set[str]] | None = None,
) -> None:
    log.release(
        b"input",
        sid,
        round_=3,
        u2=U2,
        threshold=4,
        colluders=1,
        attested=attested,
        ready=ready,
        proven=proven,
    )


def test_a_retry_after_a_proven_dealer_takes_exactly_the_survivors_minus_it(tmp_path: Path) -> None:
    """After S1's unmasking failed on dealer "e" (proven), its sum over U3 may exist for a server
    colluding with "e". The input goes again only into a session ready with U3 minus "e": with one
    honest member fewer (or more) the two sums would isolate it."""
    log = ReleaseLog(tmp_path / "r.jsonl")
    _release(log, S1)
    log.unmasked(S1, U3)
    for ready in ({"a", "b"}, {"a", "b", "c", "d"}, set(U3)):
        with pytest.raises(Refused):
            _retry(log, S2, ready, {"e"})
    with pytest.raises(Refused):
        _retry(log, S2, {"a", "b", "c"}, set())  # the right cohort, but no one proven
    _retry(log, S2, {"a", "b", "c"}, {"e"})
    assert log.bound(b"input", S2) == frozenset({"a", "b", "c"})
    assert ReleaseLog(tmp_path / "r.jsonl").bound(b"input", S2) == frozenset({"a", "b", "c"})  # durable
    assert log.bound(b"input", S1) is None


def test_an_input_never_unmasked_by_this_institution_has_no_retry_by_proof(tmp_path: Path) -> None:
    """Without its own record of the survivors it signed, an institution cannot tell the retry's cohort."""
    log = ReleaseLog(tmp_path / "r.jsonl")
    _release(log, S1)
    with pytest.raises(Refused):
        _retry(log, S2, {"a", "b", "c"}, {"e"})


def test_the_bound_holds_through_a_later_voided_session(tmp_path: Path) -> None:
    """S2 (the retry) is then abandoned before unmasking and proven void: S1's sum may still exist, so
    a third session must still be ready with exactly the bound, however many attest S2 void."""
    log = ReleaseLog(tmp_path / "r.jsonl")
    _release(log, S1)
    log.unmasked(S1, U3)
    _retry(log, S2, {"a", "b", "c"}, {"e"})
    void = {S2: set(U2)}
    with pytest.raises(Refused, match="bound"):
        _retry(log, S3, {"a", "b", "c", "d"}, set(), void)
    _retry(log, S3, {"a", "b", "c"}, set(), void)
    assert log.bound(b"input", S3) == frozenset({"a", "b", "c"})


def test_a_release_log_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    """Found by an attacker review: ``[1]`` (valid JSON, not an object) raised an AttributeError."""
    path = tmp_path / "r.jsonl"
    path.write_text('{"kind": "joined", "session": "00", "round": 1}\n[1]\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not a release record \(not a JSON object\)"):
        ReleaseLog(path)
