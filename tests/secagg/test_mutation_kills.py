"""Tests that each pin one check of the secure-aggregation modules (found by scripts/mutation --scored-only).

Each sets up a case where every other check passes, so that only the check under test decides, and
asserts the exact outcome: the error type and a fragment of its message, or the value. Boundary
values are tested on both sides: the last accepted value and the first refused one.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from secfed.crypto import aead, agreement, shamir
from secfed.crypto.kdf import encode_fields
from secfed.secagg import derive, fixedpoint, local
from secfed.secagg.client import ClientSession
from secfed.secagg.config import ClientPolicy, SessionConfig
from secfed.secagg.errors import (
    ConfigError,
    DealerFaultError,
    InconsistentViewError,
    MalformedInputError,
    MemberFaultError,
    Phase,
    PhaseOrderError,
    ReplayError,
    SecAggError,
    ShareDecryptionError,
    SignatureError,
    UnmaskError,
)
from secfed.secagg.faultproof import InvalidFaultProofError, check_fault_proof
from secfed.secagg.fixedpoint import EncodeReport, decode, encode, to_signed
from secfed.secagg.graph import CompleteGraph
from secfed.secagg.local import LocalRouter, LocalRun
from secfed.secagg.messages import (
    ComputeReady,
    ConsistencySignature,
    DealingFaultProof,
    RevealedShare,
    ShareCommitment,
    SumEvidence,
    UnmaskRequest,
    UnmaskResponse,
    share_commitment_payload,
)
from secfed.secagg.server import ServerSession
from secfed.secagg.shares import open_dealt_shares
from secfed.secagg.spec import Segment, VectorSpec
from secfed.secagg.unmask import remove_masks
from tests.secagg.support import Consortium, Session, corrupt_dealing, make_session

IDS = tuple(f"c{i:02d}" for i in range(10))


def _config(n: int = 6, **changes: object) -> SessionConfig:
    """A valid configuration of ``n`` members (threshold n, no colluders, min_cohort 3), then ``changes``."""
    base = SessionConfig(
        round=1,
        roster=IDS[:n],
        threshold=n,
        n_colluding=0,
        min_cohort=3,
        spec=VectorSpec((Segment("delta", 4),)),
        model_hash=bytes(32),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _refused(config: SessionConfig, fragment: str, *, exact: bool = False) -> None:
    with pytest.raises(ConfigError) as ei:
        config.validate()
    assert ei.value.phase is Phase.CONFIGURE
    assert (ei.value.detail == fragment) if exact else (fragment in ei.value.detail), ei.value.detail


# -- SessionConfig.validate: what a client checks before taking part -----------------------------------


def test_round_zero_is_valid_and_a_negative_round_is_refused() -> None:
    """A server replaying a session under a negative round number is refused; round 0 is the first."""
    _config(round=0).validate()
    _refused(_config(round=-1), "round must be >= 0, got -1")


def test_a_roster_listing_a_member_twice_is_refused() -> None:
    """A server listing one member twice (to count it twice towards the threshold) is refused."""
    _refused(_config(roster=(*IDS[:5], IDS[0])), "roster has duplicate client ids", exact=True)


def test_a_roster_with_a_malformed_id_is_refused_naming_it() -> None:
    """An id outside the id alphabet (one that could collide in encodings or logs) is refused by name."""
    _refused(_config(roster=(*IDS[:5], "c 05")), "invalid client id(s) in roster: ['c 05']")


def test_a_malformed_session_label_is_refused() -> None:
    """The label separates sessions in one round: one outside the id alphabet is refused."""
    _config(label="coreset.v1").validate()
    _refused(_config(label="fed avg"), "invalid session label 'fed avg'")


def test_min_cohort_three_is_accepted_and_two_refused() -> None:
    """A server lowering the minimum cohort to two (so a sum reveals one peer's input to the other)
    is refused; three is the floor."""
    _config(min_cohort=3).validate()
    _refused(_config(min_cohort=2), "min_cohort must be >= 3, got 2")


def test_a_roster_as_large_as_min_cohort_is_accepted_and_a_smaller_one_refused() -> None:
    """A roster smaller than the minimum cohort can never release a sum safely: refused up front."""
    _config(n=4, min_cohort=4).validate()
    _refused(_config(n=4, min_cohort=5, threshold=4), "roster of 4 is smaller than min_cohort 5")


def test_the_colluder_bound_must_lie_in_zero_to_n_minus_one() -> None:
    """A server claiming a negative number of colluders (to lower the threshold) or as many colluders
    as members is refused; zero and n - 1 are the extremes accepted."""
    _config(n=6, n_colluding=0, threshold=6).validate()
    _config(n=6, n_colluding=5, threshold=6).validate()
    _refused(_config(n=6, n_colluding=-1, threshold=6), "n_colluding must be in [0, 6), got -1")
    _refused(_config(n=6, n_colluding=6, threshold=6), "n_colluding must be in [0, 6), got 6")


def test_the_threshold_must_lie_between_the_required_one_and_n() -> None:
    """A threshold below (n + c)/2 lets the server and colluders recover both secrets of a peer; one
    above n can never be met. Both ends are accepted exactly and refused one step beyond."""
    # n = 6, c = 2: required threshold 5.
    _config(n=6, n_colluding=2, threshold=5).validate()
    _config(n=6, n_colluding=2, threshold=6).validate()
    _refused(
        _config(n=6, n_colluding=2, threshold=4), "threshold 4 must satisfy (n + n_colluding)/2 < t <= n"
    )
    _refused(_config(n=6, n_colluding=2, threshold=7), "i.e. 5 <= t <= 6")


def test_a_threshold_below_min_cohort_is_refused() -> None:
    """Unmasking needs ``threshold`` survivors: a threshold below the minimum cohort would release a
    sum of fewer members than promised. Equal is accepted."""
    _config(n=6, threshold=5, min_cohort=5).validate()
    _refused(_config(n=6, threshold=4, min_cohort=5), "threshold 4 is below min_cohort 5")


@pytest.mark.parametrize("field", ["model_hash", "instruction_hash", "consortium"])
def test_each_hash_field_must_be_32_bytes(field: str) -> None:
    """A truncated hash would weaken the binding the advert signatures give; each is checked."""
    for size in (31, 33):
        changes: dict[str, Any] = {field: bytes(size)}
        what = "SHA-256 of the consortium CA certificate" if field == "consortium" else "SHA-256"
        _refused(dataclasses.replace(_config(), **changes), f"{field} must be 32 bytes ({what})", exact=True)


def test_an_overflowing_spec_is_refused_as_a_config_error() -> None:
    """A spec whose sum could wrap around the ring (the sum would decode to garbage) is refused as a
    configuration error naming the segment."""
    wide = VectorSpec((Segment("big", 2, clip=2.0**29 - 1, frac_bits=0),))
    _config(n=3, spec=wide).validate()  # worst case 3 * 2^29 < 2^31
    _refused(_config(n=4, spec=wide), "segment 'big': 4 contributors")  # 4 * 2^29 = 2^31


# -- ClientPolicy.check: the client's own floor ---------------------------------------------------------


def test_a_roster_that_cannot_hold_the_assumed_colluders_and_two_honest_members_is_refused() -> None:
    """With c assumed colluders a sum must still hold two honest members: n = c + 2 is accepted,
    n = c + 1 refused."""
    ClientPolicy(colluding_fraction=Fraction(1, 2)).check(_config(n=4, n_colluding=1, threshold=4))
    with pytest.raises(ConfigError, match=r"a roster of 3 cannot hold 2 colluders and two honest"):
        ClientPolicy(colluding_fraction=Fraction(2, 3)).check(_config(n=3, n_colluding=0, threshold=3))


def test_a_threshold_below_the_clients_own_floor_is_refused() -> None:
    """The server states no colluders, the client assumes two: the threshold must meet the client's
    floor (exactly meeting it is fine)."""
    policy = ClientPolicy(colluding_fraction=Fraction(1, 3))  # 6 members: 2 assumed, floor 5
    policy.check(_config(n=6, n_colluding=0, threshold=5))
    with pytest.raises(ConfigError, match=r"threshold 4 is below this client's floor 5"):
        policy.check(_config(n=6, n_colluding=0, threshold=4))


def test_a_min_cohort_below_the_clients_own_floor_is_refused() -> None:
    """A client demanding cohorts of at least 4 refuses a server's 3, and accepts 4."""
    ClientPolicy(min_cohort=4).check(_config(n=6, min_cohort=4))
    with pytest.raises(ConfigError, match=r"min_cohort 3 is below this client's floor 4"):
        ClientPolicy(min_cohort=4).check(_config(n=6, min_cohort=3))


# -- VectorSpec / Segment ------------------------------------------------------------------------------


def test_a_segment_is_looked_up_by_its_own_name_only() -> None:
    """Decoding reads each segment's clip and scale by name: asking for one name must return that
    segment (never the first one that is not it), and an unknown name is a KeyError naming it."""
    spec = VectorSpec((Segment("delta", 4), Segment("weight", 1, clip=8.0, frac_bits=8)))
    assert spec.segment("weight") is spec.segments[1]
    assert spec.segment("delta") is spec.segments[0]
    with pytest.raises(KeyError) as ei:
        spec.segment("histogram")
    assert ei.value.args == ("histogram",)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "bad name"}, "segment name 'bad name' must match"),
        ({"length": 0}, "length must be a positive int, got 0"),
        ({"length": 2.0}, "length must be a positive int, got 2.0"),
        ({"clip": 0.0}, "clip must be finite and > 0, got 0.0"),
        ({"clip": float("inf")}, "clip must be finite and > 0, got inf"),
        ({"frac_bits": -1}, "frac_bits must be an int in [0, 52]"),
        ({"frac_bits": 53}, "frac_bits must be an int in [0, 52]"),
        ({"frac_bits": 4.0}, "frac_bits must be an int in [0, 52]"),
    ],
)
def test_a_malformed_segment_is_refused(kwargs: dict[str, object], fragment: str) -> None:
    """Each field of a segment is checked on its own (the others valid), with a message naming it."""
    args: dict[str, object] = {"name": "delta", "length": 1, "clip": 1.0, "frac_bits": 16, **kwargs}
    with pytest.raises(ValueError) as ei:
        Segment(**args)  # type: ignore[arg-type]
    assert fragment in str(ei.value)


def test_segment_extremes_are_accepted() -> None:
    """The smallest and largest accepted values of each field."""
    assert Segment("a", 1, clip=1e-300, frac_bits=0).length == 1
    assert Segment("a" * 128, 1, frac_bits=52).frac_bits == 52


def test_a_spec_needs_segments_with_distinct_names_and_a_known_ring() -> None:
    """An empty spec, two segments of one name (which coordinate means what?) or an unknown ring
    size are refused, each with its own message."""
    with pytest.raises(ValueError, match="at least one segment"):
        VectorSpec(())
    with pytest.raises(ValueError, match=r"duplicate segment names in spec: \['a', 'a'\]"):
        VectorSpec((Segment("a", 1), Segment("a", 2)))
    with pytest.raises(ValueError, match="ring_bits must be 32 or 64, got 16"):
        VectorSpec((Segment("a", 1),), ring_bits=16)  # type: ignore[arg-type]


def test_a_segment_whose_clip_fills_half_the_ring_is_refused() -> None:
    """One coordinate at clip * 2^f = 2^(bits-1) would already wrap to negative: refused at exactly
    that value, accepted one unit below."""
    VectorSpec((Segment("a", 1, clip=2.0**31 - 1, frac_bits=0),))
    with pytest.raises(
        ValueError, match=r"segment 'a': clip \* 2\^frac_bits does not fit a signed 32-bit ring"
    ):
        VectorSpec((Segment("a", 1, clip=2.0**30, frac_bits=1),))
    VectorSpec((Segment("a", 1, clip=2.0**30, frac_bits=1),), ring_bits=64)


def test_the_dtype_follows_the_ring_size() -> None:
    assert VectorSpec((Segment("a", 1),), ring_bits=32).dtype is np.uint32
    assert VectorSpec((Segment("a", 1),), ring_bits=64).dtype is np.uint64


def test_the_overflow_check_refuses_a_worst_case_sum_reaching_half_the_ring() -> None:
    """n contributors at clip (plus one rounding unit each) must stay below 2^(bits-1): refused when
    the worst case reaches it exactly, accepted one unit below."""
    fits = VectorSpec((Segment("a", 1, clip=2.0**30 - 2, frac_bits=0),))
    fits.check_overflow(2)  # 2 * (2^30 - 1) = 2^31 - 2
    reaches = VectorSpec((Segment("a", 1, clip=2.0**30 - 1, frac_bits=0),))
    with pytest.raises(ValueError, match=r"segment 'a': 2 contributors x clip"):
        reaches.check_overflow(2)  # 2 * 2^30 = 2^31


# -- fixed-point encoding ------------------------------------------------------------------------------


def test_the_clipped_fraction_of_an_empty_report_is_zero() -> None:
    assert EncodeReport(clipped={}, total={}).clipped_fraction == 0.0
    assert EncodeReport(clipped={"a": 1}, total={"a": 4}).clipped_fraction == 0.25


def test_a_value_exactly_at_the_clip_bound_is_not_counted_as_clipped() -> None:
    """The clip report tells an operator how much of an update was cut: a value at the bound is kept
    as is and must not be counted."""
    spec = VectorSpec((Segment("a", 3, clip=2.0, frac_bits=4),))
    ring, report = encode({"a": [2.0, -2.0, 2.5]}, spec)
    assert report.clipped == {"a": 1}
    assert decode(ring, spec)["a"].tolist() == [2.0, -2.0, 2.0]


def test_exact_values_are_never_rounded_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stochastic rounding rounds up with probability equal to the fractional part: an exactly
    representable value (fraction 0) must never move, even when the random word is 0."""

    def zero_words(seed: bytes, *, salt: bytes, label: bytes, length: int, bits: int) -> np.ndarray:
        return np.zeros(length, dtype=np.uint32)

    monkeypatch.setattr(fixedpoint, "mask_vector", zero_words)
    spec = VectorSpec((Segment("a", 2, clip=4.0, frac_bits=2),))
    ring, _ = encode({"a": [1.25, -0.5]}, spec)
    assert decode(ring, spec)["a"].tolist() == [1.25, -0.5]


def test_negative_values_round_trip_in_a_64_bit_ring() -> None:
    """Two's complement in the 64-bit ring: the signed view must be 64 bits wide too."""
    spec = VectorSpec((Segment("a", 3, clip=8.0, frac_bits=4),), ring_bits=64)
    ring, _ = encode({"a": [-3.0, 0.0, 7.5]}, spec)
    assert ring.dtype == np.uint64 and ring.shape == (3,)
    assert decode(ring, spec)["a"].tolist() == [-3.0, 0.0, 7.5]
    assert to_signed(ring, 64).tolist() == [-48, 0, 120]


def test_decode_refuses_a_vector_of_the_wrong_length_or_width() -> None:
    """A sum of the right width but wrong length, or right length but wrong width, is refused (either
    alone is enough)."""
    spec = VectorSpec((Segment("a", 3),))
    with pytest.raises(ValueError, match=r"ring vector must be shape \(3,\) uint32, got \(4,\) uint32"):
        decode(np.zeros(4, dtype=np.uint32), spec)
    with pytest.raises(ValueError, match=r"ring vector must be shape \(3,\) uint32, got \(3,\) uint64"):
        decode(np.zeros(3, dtype=np.uint64), spec)


# -- derive.parse_fields -------------------------------------------------------------------------------


def test_parse_fields_reads_an_empty_field_at_the_very_end() -> None:
    """A length prefix that ends exactly at the end of the blob (an empty last field) is complete."""
    assert derive.parse_fields(encode_fields(b"ab", b""), 2) == [b"ab", b""]
    assert derive.parse_fields(encode_fields(b""), 1) == [b""]


def test_parse_fields_refuses_a_cut_length_prefix_or_a_cut_field() -> None:
    """A blob cut inside a length prefix or inside a field is refused, not read short."""
    blob = encode_fields(b"abc", b"de")
    with pytest.raises(ValueError, match=r"^truncated field length$"):
        derive.parse_fields(blob[:-5], 2)  # 7 + 3 bytes: the second prefix is cut
    with pytest.raises(ValueError, match=r"^truncated field$"):
        derive.parse_fields(blob[:-1], 2)
    with pytest.raises(ValueError, match=r"^expected 3 fields, got 2$"):
        derive.parse_fields(blob, 3)


def test_the_complete_graph_pairs_everyone_but_oneself() -> None:
    assert CompleteGraph().neighbours("b", ["a", "b", "c"]) == frozenset({"a", "c"})


# -- local router: the upload accounting behind `secfed bench secagg` ----------------------------------


@dataclasses.dataclass
class _Inner:
    signature: bytes


@dataclasses.dataclass
class _Upload:
    client_id: str
    key: bytes
    names: tuple[object, ...]
    vectors: dict[str, object]
    round: int


def test_upload_bytes_count_every_payload_field_once() -> None:
    """The bench reports bytes per client from these counts: strings and bytes by length, tuples by
    their bytes/str members, mappings by key plus value (arrays by nbytes, nested messages by their
    own payload); numbers and other objects add nothing."""
    msg = _Upload(
        client_id="c01",  # 3
        key=b"k" * 32,  # 32
        names=(b"ab", "cde", 7, None),  # 2 + 3
        vectors={
            "v": np.zeros(4, dtype=np.uint32),  # 1 + 16
            "sig": b"s" * 64,  # 3 + 64
            "nested": _Inner(signature=b"x" * 10),  # 6 + 10
        },
        round=5,
    )
    assert local._message_bytes(msg) == 3 + 32 + 5 + 17 + 67 + 16


# -- unmasking -----------------------------------------------------------------------------------------


def test_a_low_order_mask_key_of_a_survivor_fails_unmasking_naming_that_survivor() -> None:
    """A survivor whose advertised mask key is a low-order point makes the pair seed with a dropped
    client everyone-known: unmasking stops with an UnmaskError in the unmask phase naming the survivor
    whose key is at fault, instead of removing a known mask."""
    config = _config(n=3)
    a, b, c = config.roster
    total = np.zeros(config.spec.total_length, dtype=np.uint32)
    with pytest.raises(UnmaskError) as ei:
        remove_masks(
            total,
            config,
            bytes(32),
            survivors=[a, b],
            b_seeds={a: bytes(32), b: bytes(range(32))},
            mask_keys={c: agreement.private_to_bytes(agreement.generate_keypair().private)},
            pk_mask={a: bytes(32), b: agreement.generate_keypair().public},
            graph=CompleteGraph(),
        )
    assert ei.value.phase is Phase.UNMASK
    assert ei.value.client_id == a
    assert ei.value.detail.startswith("pair key agreement failed: ")


# -- opening dealt shares (the holder's check and the server's arbitration) -----------------------------

_SID, _AGREED, _DEALER, _HOLDER, _X = bytes(range(32)), bytes(range(32, 64)), "c00", "c01", 2


def _dealt(
    *,
    frm: str = _DEALER,
    to: str = _HOLDER,
    s_x: int = _X,
    b_x: int = _X,
    bad_s_hash: bool = False,
    bad_b_hash: bool = False,
) -> tuple[bytes, ShareCommitment]:
    """A share ciphertext from the dealer to the holder and the dealer's commitment, with one defect."""
    s_raw = shamir.Share(x=s_x, value=11).to_bytes()
    b_raw = shamir.Share(x=b_x, value=22).to_bytes()
    key = derive.share_key(_AGREED, _SID, _DEALER, _HOLDER)
    sealed = aead.seal(
        key, derive.share_plaintext(frm, to, s_raw, b_raw), derive.share_ad(_SID, _DEALER, _HOLDER)
    )
    s_hash = derive.share_hash(_SID, _DEALER, _HOLDER, b"s", s_raw)
    b_hash = derive.share_hash(_SID, _DEALER, _HOLDER, b"b", b_raw)
    commitment = ShareCommitment(
        s=bytes(32) if bad_s_hash else s_hash,
        b=bytes(32) if bad_b_hash else b_hash,
        seed_commitment=bytes(32),
        signature=b"",
    )
    return sealed, commitment


def _open(sealed: bytes, commitment: ShareCommitment) -> tuple[bytes, bytes]:
    return open_dealt_shares(_AGREED, _SID, _DEALER, _HOLDER, _X, sealed, commitment)


def _dealer_blamed(sealed: bytes, commitment: ShareCommitment) -> str:
    with pytest.raises(ShareDecryptionError) as ei:
        _open(sealed, commitment)
    assert ei.value.phase is Phase.SHARE_KEYS and ei.value.client_id == _DEALER
    return ei.value.detail


def test_well_dealt_shares_open() -> None:
    s_raw, b_raw = _open(*_dealt())
    assert shamir.Share.from_bytes(s_raw) == shamir.Share(x=_X, value=11)
    assert shamir.Share.from_bytes(b_raw) == shamir.Share(x=_X, value=22)


@pytest.mark.parametrize(("frm", "to"), [(_HOLDER, _DEALER), (_DEALER, "c02"), ("c03", _HOLDER)])
def test_shares_naming_other_parties_are_the_dealers_fault(frm: str, to: str) -> None:
    """A dealer (or a server replaying another pair's plaintext under this key) whose plaintext names
    another sender or recipient, even just one of the two, is blamed."""
    assert _dealer_blamed(*_dealt(frm=frm, to=to)) == "share plaintext names other parties"


@pytest.mark.parametrize("side", ["sender", "recipient"])
def test_shares_naming_a_party_in_bytes_that_are_not_utf8_are_the_dealers_fault(side: str) -> None:
    """A plaintext whose sender or recipient field is not UTF-8 (no roster id is) is refused as naming
    other parties, the dealer blamed; it must never crash the holder with a decoding error."""
    s_raw = shamir.Share(x=_X, value=11).to_bytes()
    b_raw = shamir.Share(x=_X, value=22).to_bytes()
    names = [_DEALER.encode(), _HOLDER.encode()]
    names[0 if side == "sender" else 1] = b"c0\xff"
    key = derive.share_key(_AGREED, _SID, _DEALER, _HOLDER)
    sealed = aead.seal(key, encode_fields(*names, s_raw, b_raw), derive.share_ad(_SID, _DEALER, _HOLDER))
    _, commitment = _dealt()
    assert _dealer_blamed(sealed, commitment) == "share plaintext names other parties"


@pytest.mark.parametrize(("s_x", "b_x"), [(3, _X), (_X, 3)])
def test_a_share_for_another_roster_position_is_the_dealers_fault(s_x: int, b_x: int) -> None:
    """Either share evaluated at another holder's point (useless for reconstruction) is caught."""
    assert _dealer_blamed(*_dealt(s_x=s_x, b_x=b_x)) == "share is for another roster position"


@pytest.mark.parametrize(
    ("bad_s", "bad_b", "named"),
    [(True, False, "s-share"), (False, True, "b-share"), (True, True, "s-share and b-share")],
)
def test_shares_off_the_signed_commitment_are_the_dealers_fault_naming_which(
    bad_s: bool, bad_b: bool, named: str
) -> None:
    """A dealer whose shares do not hash to what it signed is blamed, naming exactly the shares that
    differ (so a complaint can be checked share by share)."""
    detail = _dealer_blamed(*_dealt(bad_s_hash=bad_s, bad_b_hash=bad_b))
    assert detail == f"{named} do not match the dealer's signed commitment"


def test_a_ciphertext_that_does_not_open_is_the_dealers_fault() -> None:
    sealed, commitment = _dealt()
    assert _dealer_blamed(sealed[:-1] + bytes([sealed[-1] ^ 1]), commitment).startswith(
        "share ciphertext does not open: "
    )


# -- errors --------------------------------------------------------------------------------------------


def test_an_error_names_its_phase_and_the_client_when_there_is_one() -> None:
    """Log lines and RPC statuses are built from str(error): the phase always, the client only when
    one is concerned (an empty id is still named, it is not "no client")."""
    assert str(ConfigError(Phase.CONFIGURE, "bad")) == "[configure]: bad"
    assert str(UnmaskError(Phase.UNMASK, "gone", client_id="c07")) == "[unmask] client 'c07': gone"
    assert str(UnmaskError(Phase.UNMASK, "gone", client_id="")) == "[unmask] client '': gone"
    error = UnmaskError(Phase.UNMASK, "gone", client_id="c07")
    assert (error.phase, error.client_id, error.detail) == (Phase.UNMASK, "c07", "gone")


# -- verified sums: a member recomputing a session's sum from the server's evidence --------------------


@dataclasses.dataclass
class _Verified:
    session: Session
    run: LocalRun
    evidence: SumEvidence
    checker: ClientSession  # a survivor, done with its unmask response
    u3: tuple[str, ...]
    dropped: str


@pytest.fixture(scope="module")
def verified(consortium: Consortium) -> _Verified:
    """A five-member session in which the fourth member drops before its masked input."""
    s = make_session(consortium, 5, seed=3)
    s.server = ServerSession(s.config, trust=consortium.trust, keep_inputs=True)
    dropped = s.config.roster[3]
    run = LocalRouter(s.server, s.clients).run(drop={dropped: Phase.MASKED_INPUT})
    evidence = s.server.evidence()
    assert run.result is not None and evidence is not None
    u3 = tuple(c for c in s.config.roster if c != dropped)
    return _Verified(s, run, evidence, s.clients[u3[0]], u3, dropped)


def _refuses(v: _Verified, evidence: SumEvidence, error: type[SecAggError], detail: str) -> SecAggError:
    with pytest.raises(error) as ei:
        v.checker.verify_sum(evidence)
    assert ei.value.phase is Phase.DONE
    assert ei.value.detail == detail
    return ei.value


def test_honest_evidence_reproduces_the_servers_sum(verified: _Verified) -> None:
    """The control: from honest evidence a member recomputes exactly the released sum, with the
    contributors and the dropped member (in roster order) the session had."""
    result = verified.checker.verify_sum(verified.evidence)
    assert verified.run.result is not None
    assert result.contributors == verified.run.result.contributors
    assert result.dropped == (verified.dropped,)
    assert np.array_equal(result.ring_sum, verified.run.result.ring_sum)
    expected = verified.session.expected_sum(verified.u3)
    for name, values in result.values.items():
        assert np.allclose(values, expected[name])


def test_a_sum_is_verified_only_after_the_unmask_response(verified: _Verified) -> None:
    """A member that has not finished the session (here: the one that dropped) cannot check a sum
    with secrets it may still hold."""
    with pytest.raises(PhaseOrderError) as ei:
        verified.session.clients[verified.dropped].verify_sum(verified.evidence)
    assert ei.value.detail == "a sum is verified only after this client's unmask response"


def test_evidence_of_another_session_is_a_replay(verified: _Verified) -> None:
    evidence = dataclasses.replace(verified.evidence, session_id=bytes(32))
    with pytest.raises(ReplayError, match="message belongs to another session"):
        verified.checker.verify_sum(evidence)


@pytest.mark.parametrize("field", ["inputs", "b_seeds", "b_commitments"])
def test_evidence_leaving_out_a_survivor_is_refused(verified: _Verified, field: str) -> None:
    """A server dropping one survivor from any single part of the evidence (to pass off a sum of
    fewer members) is caught: each part must name exactly the U3 the member signed."""
    part = dict(getattr(verified.evidence, field))
    del part[verified.u3[-1]]
    changes: dict[str, Any] = {field: part}
    evidence = dataclasses.replace(verified.evidence, **changes)
    _refuses(
        verified,
        evidence,
        InconsistentViewError,
        "the evidence's survivors are not the U3 this client signed",
    )


def test_evidence_with_another_dropped_set_is_refused(verified: _Verified) -> None:
    evidence = dataclasses.replace(verified.evidence, mask_keys={})
    _refuses(verified, evidence, InconsistentViewError, "the evidence's dropped set differs from U2 minus U3")


@pytest.mark.parametrize("field", ["sender", "session_id", "spec_hash"])
def test_a_masked_input_for_another_sender_session_or_spec_is_refused(
    verified: _Verified, field: str
) -> None:
    """A server presenting one member's input under another's name, or an input of another session or
    spec, is caught on that field alone, naming the member it is shown for."""
    who = verified.u3[1]
    msg = verified.evidence.inputs[who]
    changes: dict[str, Any] = {
        field: {"sender": verified.u3[2], "session_id": bytes(32), "spec_hash": bytes(32)}[field]
    }
    inputs = {**verified.evidence.inputs, who: dataclasses.replace(msg, **changes)}
    error = _refuses(
        verified,
        dataclasses.replace(verified.evidence, inputs=inputs),
        InconsistentViewError,
        "a masked input is for another sender or session",
    )
    assert error.client_id == who


def test_a_masked_input_with_a_forged_signature_is_refused(verified: _Verified) -> None:
    who = verified.u3[1]
    msg = verified.evidence.inputs[who]
    forged = dataclasses.replace(msg, signature=verified.evidence.inputs[verified.u3[2]].signature)
    inputs = {**verified.evidence.inputs, who: forged}
    error = _refuses(
        verified,
        dataclasses.replace(verified.evidence, inputs=inputs),
        SignatureError,
        "masked input signature does not verify",
    )
    assert error.client_id == who


def test_a_self_mask_seed_off_its_commitment_is_refused(verified: _Verified) -> None:
    who = verified.u3[2]
    b_seeds = {**verified.evidence.b_seeds, who: bytes(32)}
    error = _refuses(
        verified,
        dataclasses.replace(verified.evidence, b_seeds=b_seeds),
        SignatureError,
        "revealed self-mask seed does not match its commitment",
    )
    assert error.client_id == who


@pytest.mark.parametrize("reshape", ["big-endian", "two-dimensional"])
def test_a_signed_segment_of_the_wrong_width_or_shape_is_refused(verified: _Verified, reshape: str) -> None:
    """The signature covers the values, not the array's layout: a big-endian or 2-D array with the
    very same values still verifies, and the segment check itself must refuse it."""
    who = verified.u3[1]
    msg = verified.evidence.inputs[who]
    name = verified.session.config.spec.segments[0].name
    values = np.asarray(msg.segments[name])
    odd = values.astype(values.dtype.newbyteorder(">")) if reshape == "big-endian" else values.reshape(1, -1)
    inputs = {**verified.evidence.inputs, who: dataclasses.replace(msg, segments={**msg.segments, name: odd})}
    error = _refuses(
        verified,
        dataclasses.replace(verified.evidence, inputs=inputs),
        InconsistentViewError,
        f"segment {name!r} is malformed",
    )
    assert error.client_id == who


@pytest.mark.parametrize("key", ["another key", "not a key"])
def test_a_dropped_members_mask_key_must_be_the_advertised_one(verified: _Verified, key: str) -> None:
    """A server revealing a key other than the dropped member's advertised mask key (to unmask with
    pair masks of its choice) is caught, for a valid other key and for bytes that are no key."""
    raw = agreement.private_to_bytes(agreement.generate_keypair().private) if key == "another key" else b"x"
    evidence = dataclasses.replace(verified.evidence, mask_keys={verified.dropped: raw})
    error = _refuses(verified, evidence, SignatureError, "revealed mask key is not the advertised one")
    assert error.client_id == verified.dropped


# -- dealer-fault proofs -------------------------------------------------------------------------------


def _signed_proof(
    consortium: Consortium, kind: bytes, shares: dict[str, bytes], pk_mask: bytes
) -> DealingFaultProof:
    """A proof of ``kind`` shares, each signed by dealer c00 for its holder (the seed commitment
    signed along is all zeros)."""
    dealer = consortium.identities["c00"]
    sid, digest, seed_commitment = bytes(range(32)), bytes(32), bytes(32)
    revealed = {}
    for holder, raw in shares.items():
        share_hash = derive.share_hash(sid, "c00", holder, kind, raw)
        unsigned = ShareCommitment(
            s=share_hash if kind == b"s" else bytes(32),
            b=share_hash if kind == b"b" else bytes(32),
            seed_commitment=seed_commitment,
            signature=b"",
        )
        payload = share_commitment_payload(sid, "c00", holder, digest, unsigned, pk_mask)
        signed = dataclasses.replace(unsigned, signature=dealer.sign(payload))
        revealed[holder] = RevealedShare(share=raw, ciphertext_digest=digest, commitment=signed)
    return DealingFaultProof(
        session_id=sid,
        dealer="c00",
        kind=kind,
        cert_chain=dealer.chain_der(),
        pk_mask=pk_mask,
        seed_commitment=seed_commitment,
        shares=revealed,
    )


def _mask_key_shares(secret: bytes, holders: tuple[str, ...]) -> dict[str, bytes]:
    dealt = shamir.split(secret, 2, range(1, len(holders) + 1))
    return {h: dealt[i + 1].to_bytes() for i, h in enumerate(holders)}


def test_mask_key_shares_off_the_advertised_key_prove_the_dealers_fault(consortium: Consortium) -> None:
    """A dealer whose signed mask-key shares reconstruct a key other than the one it advertised is
    proven at fault: the s-shares are checked against the s-hashes it signed, and the key against
    the advertised public key."""
    key = agreement.generate_keypair()
    other = agreement.generate_keypair().public
    proof = _signed_proof(
        consortium,
        b"s",
        _mask_key_shares(agreement.private_to_bytes(key.private), ("c01", "c02", "c03")),
        other,
    )
    assert check_fault_proof(proof, consortium.trust, 2) == (
        "the shares it signed reconstruct a secret that does not match its own commitment"
    )


def test_mask_key_shares_of_the_advertised_key_prove_nothing(consortium: Consortium) -> None:
    """The same proof against the key the dealer did advertise shows a sound dealing: refused, at the
    session's smallest possible threshold of 2; a threshold of 1 proves nothing at all."""
    key = agreement.generate_keypair()
    shares = _mask_key_shares(agreement.private_to_bytes(key.private), ("c01", "c02"))
    proof = _signed_proof(consortium, b"s", shares, key.public)
    with pytest.raises(
        InvalidFaultProofError,
        match=r"^the signed shares reconstruct the committed secret: the dealing is sound$",
    ):
        check_fault_proof(proof, consortium.trust, 2)
    with pytest.raises(InvalidFaultProofError, match=r"^a threshold of 1 proves nothing"):
        check_fault_proof(proof, consortium.trust, 1)


def test_a_signed_share_that_does_not_parse_is_named_as_malformed(consortium: Consortium) -> None:
    """A share the dealer signed but that is not a share at all (wrong width) makes the proof
    unusable, and the refusal names the holder and why."""
    shares = {"c01": bytes(67), "c02": shamir.Share(x=2, value=5).to_bytes()}
    proof = _signed_proof(consortium, b"b", shares, agreement.generate_keypair().public)
    with pytest.raises(InvalidFaultProofError) as ei:
        check_fault_proof(proof, consortium.trust, 2)
    assert str(ei.value) == "the share of 'c01' is malformed: serialized share must be 68 bytes, got 67"


def test_a_complaint_with_a_cipher_key_other_than_the_advertised_one_is_the_complainers_fault(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The framing attack with a made-up key: a member complains about an honest dealer and reveals a
    cipher key that is not the one it advertised (so the dealer's ciphertext cannot be opened with
    it). The server names the complainer, saying its key does not check, and releases nothing."""
    s = make_session(consortium, 5, seed=4)
    liar, target = s.config.roster[-1], s.config.roster[0]
    original = ClientSession.ready

    def ready(self: ClientSession, inputs: Any = None) -> ComputeReady:
        msg = original(self, inputs)
        if self.client_id != liar:
            return msg
        made_up = agreement.private_to_bytes(agreement.generate_keypair().private)
        return dataclasses.replace(msg, complaints=(target,), cipher_key=made_up)

    monkeypatch.setattr(ClientSession, "ready", ready)
    run = LocalRouter(s.server, s.clients).run()
    assert run.result is None and isinstance(run.error, MemberFaultError) and run.error.client_id == liar
    assert s.server.faults == {
        liar: "complained with a cipher key that does not check (it is not the key the holder advertised)"
    }


def test_a_request_replayed_after_the_session_does_not_undo_a_finished_client(consortium: Consortium) -> None:
    """A server replaying the unmask request to a client that already answered it is refused, but the
    refusal must not abort the finished session: the client stays DONE and can still verify the sum.
    (A refusal before DONE aborts and erases the secrets, see the protocol tests.)"""
    s = make_session(consortium, 4, seed=5)
    s.server = ServerSession(s.config, trust=consortium.trust, keep_inputs=True)
    requests: list[UnmaskRequest] = []

    class Recording(LocalRouter):
        def route_unmask(self, recipient: str, msg: UnmaskRequest) -> UnmaskRequest:
            requests.append(msg)
            return msg

    run = Recording(s.server, s.clients).run()
    evidence = s.server.evidence()
    assert run.result is not None and evidence is not None
    client = s.clients[s.config.roster[0]]
    with pytest.raises(PhaseOrderError):
        client.on_unmask_request(requests[0])
    assert client.phase is Phase.DONE
    assert client.verify_sum(evidence).contributors == run.result.contributors


def test_an_inconsistent_signed_dealing_is_reported_with_what_is_wrong_with_it(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dealer signing shares that are not one sharing of its seed is named at unmask, and the error
    says what the shares fail (the reason a member re-checking the proof will find too)."""
    s = make_session(consortium, 5, seed=6)
    dealer = s.config.roster[-2]
    with corrupt_dealing(monkeypatch, s.config, dealer, kind="b", victims=1, signed=True):
        run = LocalRouter(s.server, s.clients).run()
    assert isinstance(run.error, DealerFaultError) and run.error.client_id == dealer
    assert run.error.phase is Phase.UNMASK
    assert run.error.detail.startswith("the shares it signed do not form one sharing of a secret (")


def _tampered_unmask_responses(msg: UnmaskResponse) -> list[tuple[UnmaskResponse, str]]:
    """Each defect a holder (or a server replaying for it) can put in an unmask response, alone."""
    dealer, raw = sorted(msg.b_shares.items())[0]
    share = shamir.Share.from_bytes(raw)
    shifted = shamir.Share(x=share.x % 65535 + 1, value=share.value).to_bytes()
    fewer = {d: r for d, r in msg.b_shares.items() if d != dealer}
    return [
        (
            dataclasses.replace(msg, b_shares=fewer),
            "b-shares must cover exactly the sender's surviving neighbours",
        ),
        (
            dataclasses.replace(msg, s_shares={**msg.s_shares, dealer: raw}),
            "s-shares must cover exactly the sender's dropped neighbours",
        ),
        (
            dataclasses.replace(msg, b_shares={**msg.b_shares, dealer: b"x"}),
            "malformed share: serialized share must be 68 bytes, got 1",
        ),
        (
            dataclasses.replace(msg, b_shares={**msg.b_shares, dealer: shifted}),
            "share evaluation point does not match the sender's roster position",
        ),
    ]


def test_each_defect_of_an_unmask_response_is_refused_by_name_and_the_session_still_completes(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder's unmask response missing a survivor's share, carrying a share of a member that did
    not drop (a mask key the server must never learn), a malformed share, a share at another point,
    or the same response twice (to count one holder twice): each is refused, naming the holder and
    the defect, and the holder's good response still counts."""
    s = make_session(consortium, 4, seed=7)
    original = ServerSession.receive_unmask
    refusals: list[tuple[str, str | None, Phase]] = []
    expected: list[str] = []

    def checked(self: ServerSession, msg: UnmaskResponse) -> None:
        if refusals:
            original(self, msg)
            return
        attempts = _tampered_unmask_responses(msg)
        for bad, detail in attempts:
            expected.append(detail)
            with pytest.raises(MalformedInputError) as ei:
                original(self, bad)
            refusals.append((ei.value.detail, ei.value.client_id, ei.value.phase))
        original(self, msg)
        expected.append("duplicate unmask response")
        with pytest.raises(MalformedInputError) as ei:
            original(self, msg)
        refusals.append((ei.value.detail, ei.value.client_id, ei.value.phase))

    monkeypatch.setattr(ServerSession, "receive_unmask", checked)
    run = LocalRouter(s.server, s.clients).run()
    assert run.result is not None
    assert refusals == [(detail, s.config.roster[0], Phase.UNMASK) for detail in expected]
    assert len(refusals) == 5


def test_a_holder_revealing_a_share_other_than_the_signed_one_is_named(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder revealing, at unmask, another value than the share the dealer signed for it (to skew
    a reconstruction) is refused and recorded as at fault, with the dealer named in the reason."""
    s = make_session(consortium, 4, seed=8)
    holder = s.config.roster[0]
    original = ServerSession.receive_unmask

    def forged(self: ServerSession, msg: UnmaskResponse) -> None:
        if msg.sender == holder:
            dealer, raw = sorted(msg.b_shares.items())[0]
            share = shamir.Share.from_bytes(raw)
            other = shamir.Share(x=share.x, value=(share.value + 1) % shamir.PRIME).to_bytes()
            msg = dataclasses.replace(msg, b_shares={**msg.b_shares, dealer: other})
        original(self, msg)

    monkeypatch.setattr(ServerSession, "receive_unmask", forged)
    run = LocalRouter(s.server, s.clients).run()
    dealer = sorted(s.config.roster)[0]
    reason = f"revealed a share of {dealer!r} that is not the one {dealer!r} signed for it"
    assert isinstance(run.error, MalformedInputError) and run.error.client_id == holder
    assert run.error.detail == reason
    assert s.server.faults == {holder: reason}


def test_a_consistency_signature_is_checked_once_and_must_verify(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consistency signatures are what the unmask request shows every member: one that does not
    verify (a server padding the list with a dropped member's name) is refused, and a member's
    signature sent twice is refused as a duplicate; each names the member and the phase."""
    s = make_session(consortium, 4, seed=9)
    original = ServerSession.receive_consistency
    refusals: list[tuple[str, str | None, Phase]] = []

    def checked(self: ServerSession, msg: ConsistencySignature) -> None:
        if not refusals:
            for attempt in (dataclasses.replace(msg, signature=bytes(64)), None):
                with pytest.raises(MalformedInputError) as ei:
                    if attempt is None:
                        original(self, msg)
                        original(self, msg)
                    else:
                        original(self, attempt)
                refusals.append((ei.value.detail, ei.value.client_id, ei.value.phase))
            return
        original(self, msg)

    monkeypatch.setattr(ServerSession, "receive_consistency", checked)
    run = LocalRouter(s.server, s.clients).run()
    assert run.result is not None
    first = s.config.roster[0]
    assert refusals == [
        ("signature does not verify", first, Phase.CONSISTENCY),
        ("duplicate consistency signature", first, Phase.CONSISTENCY),
    ]


def test_a_wrong_mask_key_dealing_of_a_dropped_member_is_proven_as_a_mask_key_fault(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dealer that signed inconsistent mask-key shares and then dropped: reconstructing its key at
    unmask exposes it, and the proof handed to the members is about its mask key (kind s), which is
    what they re-check."""
    s = make_session(consortium, 6, seed=10)
    dealer = s.config.roster[-1]
    with corrupt_dealing(monkeypatch, s.config, dealer, kind="s", victims=1, signed=True):
        run = LocalRouter(s.server, s.clients).run(drop={dealer: Phase.MASKED_INPUT})
    assert isinstance(run.error, DealerFaultError) and run.error.client_id == dealer
    assert run.error.proof is not None and run.error.proof.kind == b"s"
    assert set(run.error.proof.shares) == set(run.error.evidence["holders"])
