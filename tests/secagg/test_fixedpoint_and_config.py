"""Fixed-point encoding, vector specs and session-configuration rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfed.secagg.config import ClientPolicy, default_colluding, required_threshold
from secfed.secagg.errors import ConfigError
from secfed.secagg.fixedpoint import decode, encode
from secfed.secagg.spec import Segment, VectorSpec
from tests.secagg.support import make_config, small_spec

ROSTER = tuple(f"c{i:02d}" for i in range(10))


@given(st.lists(st.integers(-(2**16), 2**16), min_size=1, max_size=50))
@settings(max_examples=50, deadline=None)
def test_representable_values_round_trip_exactly(ints: list[int]) -> None:
    spec = VectorSpec((Segment("x", len(ints), clip=1.0, frac_bits=16),))
    x = np.array(ints, dtype=np.float64) / 2**16
    ring, report = encode({"x": x}, spec)
    assert report.clipped_fraction == 0.0
    np.testing.assert_array_equal(decode(ring, spec)["x"], x)


def test_negative_values_are_twos_complement() -> None:
    spec = VectorSpec((Segment("x", 2, clip=4.0, frac_bits=0),))
    ring, _ = encode({"x": [-1.0, -3.0]}, spec)
    assert ring.tolist() == [2**32 - 1, 2**32 - 3]


def test_stochastic_rounding_is_unbiased() -> None:
    spec = VectorSpec((Segment("x", 200_000, clip=1.0, frac_bits=0),))
    ring, _ = encode({"x": np.full(200_000, 0.3)}, spec)
    mean = decode(ring, spec)["x"].mean()
    assert abs(mean - 0.3) < 0.006  # binomial std is ~0.001: six sigma
    assert set(np.unique(decode(ring, spec)["x"])) == {0.0, 1.0}


def test_clipping_is_reported_not_silent() -> None:
    spec = VectorSpec((Segment("a", 4, clip=1.0), Segment("b", 4, clip=1.0)))
    ring, report = encode({"a": [0.5, 2.0, -3.0, 0.0], "b": [0.0] * 4}, spec)
    assert report.clipped == {"a": 2, "b": 0}
    assert report.clipped_fraction == pytest.approx(2 / 8)
    assert decode(ring, spec)["a"].tolist()[1:3] == [1.0, -1.0]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"a": [0.0] * 3}, "shape"),
        ({"a": [np.nan] * 4}, "NaN"),
        ({"a": [0.0] * 4, "zz": [1.0]}, "unknown"),
        ({}, "missing"),
    ],
)
def test_encode_rejects_bad_input(values: dict[str, list[float]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode(values, VectorSpec((Segment("a", 4),)))


def test_spec_hash_binds_layout() -> None:
    a = VectorSpec((Segment("x", 4), Segment("y", 2)))
    assert a.spec_hash() == VectorSpec((Segment("x", 4), Segment("y", 2))).spec_hash()
    assert a.spec_hash() != VectorSpec((Segment("y", 2), Segment("x", 4))).spec_hash()
    assert a.spec_hash() != VectorSpec((Segment("x", 4), Segment("y", 2)), ring_bits=64).spec_hash()
    assert a.spec_hash() != VectorSpec((Segment("x", 4, clip=0.5), Segment("y", 2))).spec_hash()


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        VectorSpec((Segment("x", 1), Segment("x", 2)))
    with pytest.raises(ValueError, match="length"):
        Segment("x", 0)
    with pytest.raises(ValueError, match="ring"):
        VectorSpec((Segment("x", 1, clip=1.0, frac_bits=31),))


def test_overflow_check_when_session_configured() -> None:
    spec = VectorSpec((Segment("x", 8, clip=1000.0, frac_bits=20),))  # 1000 * 2^20 ~ 2^30: 3 clients overflow
    with pytest.raises(ConfigError, match="overflow"):
        make_config(ROSTER[:3], spec).validate()
    make_config(ROSTER[:3], VectorSpec(spec.segments, ring_bits=64)).validate()


def test_threshold_rules() -> None:
    assert required_threshold(10, 3) == 7
    assert required_threshold(3, 1) == 3
    assert default_colluding(10) == 3
    cfg = make_config(ROSTER, small_spec())
    cfg.validate()
    from dataclasses import replace

    with pytest.raises(ConfigError, match="threshold"):
        replace(cfg, threshold=6).validate()
    with pytest.raises(ConfigError, match="min_cohort"):
        replace(cfg, min_cohort=2).validate()
    with pytest.raises(ConfigError, match="duplicate"):
        replace(cfg, roster=(*ROSTER[:9], ROSTER[0])).validate()
    with pytest.raises(ConfigError, match="floor"):
        ClientPolicy(min_cohort=5).check(cfg)


def test_config_digest_covers_every_field() -> None:
    from dataclasses import replace

    cfg = make_config(ROSTER, small_spec())
    variants = [
        replace(cfg, round=2),
        replace(cfg, roster=tuple(reversed(ROSTER))),
        replace(cfg, threshold=8),
        replace(cfg, n_colluding=2),
        replace(cfg, min_cohort=4),
        replace(cfg, spec=small_spec(17)),
        replace(cfg, model_hash=bytes(32)),
        replace(cfg, label="coreset"),
    ]
    digests = {v.digest() for v in variants}
    assert cfg.digest() not in digests and len(digests) == len(variants)


def test_encoding_in_chunks_is_the_same_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 coordinates (segments of 50 and 3 straddle them): exactly representable values encode
    to the same ring, every clip is counted once, and a non-finite value in a later chunk is refused."""
    from secfed.secagg import fixedpoint

    spec = VectorSpec((Segment("a", 50, clip=2.0, frac_bits=8), Segment("b", 3, clip=1.0, frac_bits=0)), 32)
    gen = np.random.default_rng(5)
    values = {"a": np.round(gen.uniform(-3, 3, 50) * 256) / 256, "b": np.array([2.0, -1.0, 0.0])}
    whole, whole_report = encode(values, spec)
    monkeypatch.setattr(fixedpoint, "ENCODE_CHUNK", 7)
    chunked, chunked_report = encode(values, spec)
    np.testing.assert_array_equal(chunked, whole)
    assert chunked_report == whole_report
    assert chunked_report.clipped["a"] == int(np.count_nonzero(np.abs(values["a"]) > 2.0)) > 0
    bad = dict(values, a=np.where(np.arange(50) == 45, np.nan, values["a"]))
    with pytest.raises(ValueError, match=r"'a'.*NaN"):
        encode(bad, spec)
