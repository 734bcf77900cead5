"""Every field that a derivation or a signed digest binds changes its output (mutation survivors).

The mutation run (scripts/mutation) found that dropping a field from a key derivation, a PRG label, a
commitment or the signed session configuration went unnoticed: nothing would then stop a value made for
one session, pair, owner or instruction from being accepted for another. Each test changes one input at a
time; known answers pin the encodings themselves (a changed domain label is a changed protocol).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from secfed.chain import GENESIS, canonical_json, entry_hash
from secfed.secagg import derive
from secfed.secagg.config import SessionConfig
from secfed.secagg.spec import Segment, VectorSpec

SID = hashlib.sha256(b"session").digest()
OTHER = hashlib.sha256(b"other").digest()


def _each_field_matters(fn: Callable[..., bytes], base: dict[str, Any], changed: dict[str, Any]) -> None:
    reference = fn(**base)
    for name, value in changed.items():
        assert fn(**{**base, name: value}) != reference, f"{fn.__name__} ignores {name}"


def test_share_key_binds_secret_session_sender_and_recipient() -> None:
    _each_field_matters(
        derive.share_key,
        {"shared_secret": b"k" * 32, "sid": SID, "sender": "a", "recipient": "b"},
        {"shared_secret": b"j" * 32, "sid": OTHER, "sender": "c", "recipient": "c"},
    )
    # direction-bound: a's key to b is not b's key to a
    assert derive.share_key(b"k" * 32, SID, "a", "b") != derive.share_key(b"k" * 32, SID, "b", "a")


def test_share_associated_data_binds_session_sender_and_recipient() -> None:
    _each_field_matters(
        derive.share_ad,
        {"sid": SID, "sender": "a", "recipient": "b"},
        {"sid": OTHER, "sender": "c", "recipient": "c"},
    )


def test_mask_labels_bind_every_field() -> None:
    _each_field_matters(
        derive.pair_label,
        {"low": "a", "high": "b", "spec_hash": SID, "length": 10, "ring_bits": 32},
        {"low": "c", "high": "c", "spec_hash": OTHER, "length": 11, "ring_bits": 64},
    )
    _each_field_matters(
        derive.self_label,
        {"owner": "a", "spec_hash": SID, "length": 10, "ring_bits": 32},
        {"owner": "c", "spec_hash": OTHER, "length": 11, "ring_bits": 64},
    )
    assert derive.pair_label("a", "b", SID, 10, 32) != derive.self_label("a", SID, 10, 32)


def test_commitments_bind_session_owner_and_value() -> None:
    _each_field_matters(
        derive.b_commitment,
        {"sid": SID, "owner": "a", "b_seed": b"s" * 32},
        {"sid": OTHER, "owner": "c", "b_seed": b"t" * 32},
    )
    _each_field_matters(
        derive.share_hash,
        {"sid": SID, "dealer": "a", "holder": "b", "kind": b"s", "share": b"x" * 68},
        {"sid": OTHER, "dealer": "c", "holder": "c", "kind": b"b", "share": b"y" * 68},
    )


def test_derivations_known_answers() -> None:
    """The encodings themselves (domain labels included), recomputed independently from their spec."""

    def fields(*parts: bytes) -> bytes:
        return b"".join(len(p).to_bytes(4, "big") + p for p in parts)

    assert (
        derive.b_commitment(SID, "a", b"s" * 32)
        == hashlib.sha256(fields(b"secfed/secagg/b-commit/v1", SID, b"a", b"s" * 32)).digest()
    )
    assert derive.share_ad(SID, "a", "b") == fields(b"secfed/secagg/share-ad/v1", SID, b"a", b"b")


def test_parse_fields_refuses_every_malformed_blob() -> None:
    blob = b"".join(len(p).to_bytes(4, "big") + p for p in (b"ab", b"", b"xyz"))
    assert derive.parse_fields(blob, 3) == [b"ab", b"", b"xyz"]
    for bad, count in ((blob[:-1], 3), (blob[:3], 3), (blob + b"\x00", 3), (blob, 2), (blob, 4)):
        with pytest.raises(ValueError):
            derive.parse_fields(bad, count)


def _config(**changes: Any) -> SessionConfig:
    spec = VectorSpec((Segment("x", 4, clip=1.0, frac_bits=8),))
    base = SessionConfig(
        round=1,
        roster=("a", "b", "c", "d"),
        threshold=3,
        n_colluding=1,
        min_cohort=3,
        spec=spec,
        model_hash=SID,
        label="fedavg",
        instruction_hash=SID,
        consortium=SID,
    )
    return dataclasses.replace(base, **changes)


def test_the_signed_configuration_digest_binds_every_field() -> None:
    """A member handed a configuration that differs in any one field signs another digest (its advert
    is then refused by the others): the instruction, the consortium, the roster, the bounds."""
    reference = _config().digest()
    changes = {
        "round": 2,
        "roster": ("a", "b", "c", "e"),
        "threshold": 4,
        "n_colluding": 0,
        "min_cohort": 4,
        "spec": VectorSpec((Segment("x", 5, clip=1.0, frac_bits=8),)),
        "model_hash": OTHER,
        "label": "coreset",
        "instruction_hash": OTHER,
        "consortium": OTHER,
    }
    for name, value in changes.items():
        assert _config(**{name: value}).digest() != reference, f"the digest ignores {name}"
    # roster order and membership are told apart from a longer roster with the same prefix
    assert _config(roster=("a", "b", "c", "d", "e")).digest() != reference


def test_ledger_entry_hash_known_answer() -> None:
    """The chain's canonical encoding (sorted keys, ASCII escapes, no NaN) and entry hash, pinned."""
    body = {"b": 1, "a": "é", "n": [1.5, None]}
    assert canonical_json(body) == '{"a":"\\u00e9","b":1,"n":[1.5,null]}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    expected = hashlib.sha256(
        canonical_json({"seq": 0, "prev": GENESIS, "kind": "k", "time": "t", "body": body}).encode("ascii")
    ).hexdigest()
    assert entry_hash(0, GENESIS, "k", "t", body) == expected
    assert entry_hash(1, GENESIS, "k", "t", body) != expected
