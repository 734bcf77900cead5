"""Whatever bytes a peer or a lying server presents as a certificate chain, verification ends in a clean
IdentityError, never another exception.

The failure it defeats (found by an attacker review): a certificate whose version field is out of range
made ``cryptography`` raise ``InvalidVersion``, which is not a ``ValueError``; placed in an advert or in
a dealer-fault proof it escaped every handler and killed the honest client's process, secrets in memory.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfed.crypto.identity import IdentityError
from tests.secagg.support import Consortium

_VERSION_3 = bytes.fromhex("a003020102")  # TBSCertificate's explicit [0] version, v3


def test_an_out_of_range_certificate_version_is_a_clean_refusal(consortium: Consortium) -> None:
    chain = consortium.identities["c00"].chain_der()
    leaf = chain[0]
    assert leaf.count(_VERSION_3) == 1
    bad = leaf.replace(_VERSION_3, bytes.fromhex("a003020177"))
    with pytest.raises(IdentityError, match="malformed"):
        consortium.trust.verify_client((bad, *chain[1:]))
    with pytest.raises(IdentityError, match="malformed"):
        consortium.trust.verify_server((bad,), hostname="127.0.0.1")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6))
def test_any_corrupted_leaf_is_refused_with_an_identity_error(
    consortium: Consortium, edits: list[tuple[int, int]]
) -> None:
    chain = consortium.identities["c00"].chain_der()
    leaf = bytearray(chain[0])
    for position, value in edits:
        leaf[position % len(leaf)] = value
    # Refused cleanly, or (an edit the verifier never reads) accepted: never any other exception.
    with contextlib.suppress(IdentityError):
        consortium.trust.verify_client((bytes(leaf), *chain[1:]))
