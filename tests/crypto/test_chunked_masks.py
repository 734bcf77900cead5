"""Masks generated and added in chunks equal the whole-vector masks bit for bit.

Chunking bounds a client's extra memory to one chunk (``MaskAccumulator``), at adapter sizes where a
second copy of the vector per stream would not fit; it must not change a single bit of any mask, or the
server's unmasking (which may use another chunk size, or none) would leave noise in the sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfed.crypto import prg


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(min_value=0, max_value=3000),
    words_per_chunk=st.integers(min_value=1, max_value=700),
    bits=st.sampled_from([32, 64]),
    signs=st.lists(st.sampled_from([1, -1]), min_size=1, max_size=4),
)
def test_chunked_accumulation_equals_whole_masks(
    length: int, words_per_chunk: int, bits: int, signs: list[int]
) -> None:
    dtype: type[np.unsignedinteger[Any]] = np.uint32 if bits == 32 else np.uint64
    start: npt.NDArray[np.unsignedinteger[Any]] = (
        np.random.default_rng(length).integers(0, 2**32, size=length).astype(dtype)
    )
    chunked = start.copy()
    acc = prg.MaskAccumulator(chunked, chunk_bytes=words_per_chunk * 8)
    expected = start.copy()
    for i, sign in enumerate(signs):
        seed = bytes([i + 1]) * 32
        acc.add(seed, salt=b"round", label=b"stream %d" % i, sign=sign)
        whole = prg.mask_vector(seed, salt=b"round", label=b"stream %d" % i, length=length, bits=bits)  # type: ignore[call-overload]
        expected = expected + whole if sign == 1 else expected - whole
    np.testing.assert_array_equal(chunked, expected)
    together = start.copy()  # every stream per chunk, as the client and the server add them
    streams = [
        prg.Stream(bytes([i + 1]) * 32, b"round", b"stream %d" % i, sign) for i, sign in enumerate(signs)
    ]
    prg.MaskAccumulator(together, chunk_bytes=words_per_chunk * 8).add_all(streams)
    np.testing.assert_array_equal(together, expected)


def test_the_scratch_is_one_chunk_however_long_the_vector() -> None:
    out = np.zeros(1_000_000, dtype=np.uint64)
    acc = prg.MaskAccumulator(out, chunk_bytes=64 * 1024)
    assert acc._scratch.nbytes == 64 * 1024 and len(acc._zeros) == 64 * 1024
    small = prg.MaskAccumulator(np.zeros(3, dtype=np.uint32))
    assert small._scratch.nbytes == 12  # never more than the vector itself


@pytest.mark.parametrize("chunk_bytes", [0, 4, 12, -8, True])
def test_a_chunk_must_be_a_positive_multiple_of_eight_bytes(chunk_bytes: int) -> None:
    with pytest.raises(ValueError, match="chunk_bytes must be a positive multiple of 8"):
        prg.MaskAccumulator(np.zeros(4, dtype=np.uint32), chunk_bytes=chunk_bytes)


def test_every_stream_is_checked_before_any_is_added() -> None:
    """A bad stream anywhere in the list leaves the vector untouched (no half-masked input)."""
    out = np.arange(10, dtype=np.uint32)
    good = prg.Stream(bytes(32), b"s", b"l", 1)
    for bad in (prg.Stream(bytes(32), b"s", b"l", 2), prg.Stream(bytes(31), b"s", b"l", 1)):
        with pytest.raises(ValueError):
            prg.MaskAccumulator(out).add_all([good, bad])
        np.testing.assert_array_equal(out, np.arange(10, dtype=np.uint32))
