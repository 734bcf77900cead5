"""Each check the server session makes on adverts, share uploads and ready notices, one at a time.

A lying or buggy member's message is refused before the server keeps any of it, with the phase, the
sender and the exact reason (the reason is what the coordinator logs and records as the refusal, so an
operator can tell a member whose clock or software is wrong from one that attacks). Every case starts
from an honest message and changes one field, so that only the check under test decides; boundary
sizes are tried on both sides (the largest accepted, the smallest refused). Found by
``scripts/mutation --scored-only`` on secfed/secagg/server.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from secfed.secagg.errors import (
    BelowThresholdError,
    LateMessageError,
    MalformedInputError,
    Phase,
    PhaseOrderError,
)
from secfed.secagg.messages import (
    AdvertBroadcast,
    AdvertiseKeys,
    ShareKeysUpload,
    ciphertext_digest,
    share_commitment_payload,
)
from secfed.secagg.server import ServerSession
from tests.secagg.support import Consortium, Session, make_session

_MAX_CIPHERTEXT = 1024  # secfed/secagg/server.py: a share ciphertext is ~150 bytes
_MAX_SIGNATURE = 512


def _refused(call: Callable[[], object], phase: Phase, who: str, reason: str) -> None:
    with pytest.raises(MalformedInputError) as err:
        call()
    assert (err.value.phase, err.value.client_id, err.value.detail) == (phase, who, reason)


def _advertised(s: Session) -> AdvertBroadcast:
    for c in s.clients.values():
        s.server.receive_advert(c.advertise())
    return s.server.close_advertise()


# -- adverts ---------------------------------------------------------------------------------------


def test_an_advert_from_outside_the_roster_is_refused(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    outsider = make_session(consortium, 6).clients["c05"]
    _refused(
        lambda: s.server.receive_advert(outsider.advertise()),
        Phase.ADVERTISE,
        "c05",
        "client is not in the round roster",
    )


def test_a_second_advert_from_a_member_is_refused(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    first = s.clients["c00"].advertise()
    s.server.receive_advert(first)
    _refused(lambda: s.server.receive_advert(first), Phase.ADVERTISE, "c00", "duplicate advert")


def test_an_advert_carrying_another_members_certificate_is_refused(consortium: Consortium) -> None:
    """A member signing with its own key but presenting another's certificate (no TLS check here: the
    in-process session) is refused by the certificate's id, before its signature is even checked."""
    s = make_session(consortium, 4)
    advert = replace(s.clients["c01"].advertise(), cert_chain=consortium.identities["c02"].chain_der())
    _refused(lambda: s.server.receive_advert(advert), Phase.ADVERTISE, "c01", "certificate belongs to 'c02'")


def _resigned_advert(consortium: Consortium, advert: AdvertiseKeys, **changes: object) -> AdvertiseKeys:
    """``advert`` changed and signed again by its member: only the check under test can refuse it."""
    changed = replace(advert, **changes)  # type: ignore[arg-type]
    return replace(changed, signature=consortium.identities[advert.client_id].sign(changed.signed_payload()))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"round": 9}, "advert is for another round or configuration"),
        ({"config_digest": bytes(32)}, "advert is for another round or configuration"),
        ({"model_hash": bytes(32)}, "advert names another global model"),
        ({"pk_cipher": bytes(31)}, "malformed keys or empty certificate chain"),
        ({"pk_mask": bytes(31)}, "malformed keys or empty certificate chain"),
        ({"cert_chain": ()}, "malformed keys or empty certificate chain"),
        ({"abandoned": (bytes(32),) * 65}, "malformed list of abandoned sessions"),
        ({"abandoned": (bytes(31),)}, "malformed list of abandoned sessions"),
        ({"abandoned": (bytes(33),)}, "malformed list of abandoned sessions"),
    ],
    ids=[
        "round",
        "configuration",
        "model",
        "short cipher key",
        "short mask key",
        "no certificate",
        "65 abandoned",
        "short session id",
        "long session id",
    ],
)
def test_each_malformed_advert_is_refused_alone_with_its_reason(
    consortium: Consortium, changes: dict[str, object], reason: str
) -> None:
    """Each defect alone, in an advert its member signed: refused by its own check (not by the
    signature check that a server-side edit would also trip)."""
    s = make_session(consortium, 4)
    advert = _resigned_advert(consortium, s.clients["c01"].advertise(), **changes)
    _refused(lambda: s.server.receive_advert(advert), Phase.ADVERTISE, "c01", reason)


def test_an_advert_naming_the_most_abandoned_sessions_allowed_is_accepted(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    s.server.receive_advert(
        _resigned_advert(consortium, s.clients["c01"].advertise(), abandoned=(bytes(32),) * 64)
    )


def test_a_message_too_late_or_too_early_says_which_and_where_the_session_is(consortium: Consortium) -> None:
    s = make_session(consortium, 4)
    with pytest.raises(PhaseOrderError) as err:
        s.server.receive_shares(
            ShareKeysUpload(session_id=bytes(32), sender="c00", ciphertexts={}, b_commitment=b"")
        )
    assert type(err.value) is PhaseOrderError
    assert (err.value.phase, err.value.client_id, err.value.detail) == (
        Phase.SHARE_KEYS,
        "c00",
        "not open yet (now advertise)",
    )
    adverts = {cid: c.advertise() for cid, c in s.clients.items()}
    for advert in adverts.values():
        s.server.receive_advert(advert)
    s.server.close_advertise()
    with pytest.raises(LateMessageError) as late:
        s.server.receive_advert(adverts["c00"])  # a retransmission after the phase closed
    assert (late.value.phase, late.value.client_id, late.value.detail) == (
        Phase.ADVERTISE,
        "c00",
        "phase closed (now share-keys)",
    )


def test_closing_adverts_below_the_threshold_aborts_and_says_how_many(consortium: Consortium) -> None:
    s = make_session(consortium, 4, threshold=3)
    for cid in ("c00", "c01"):
        s.server.receive_advert(s.clients[cid].advertise())
    with pytest.raises(BelowThresholdError) as err:
        s.server.close_advertise()
    assert err.value.phase is Phase.ADVERTISE
    assert err.value.detail == "only 2 adverts, need 3; session aborted"


# -- share uploads ---------------------------------------------------------------------------------


@dataclass
class Uploading:
    """A session in the share-keys phase and member c00's honest share upload."""

    s: Session
    up: ShareKeysUpload
    consortium: Consortium
    pk_mask: bytes

    def resigned(self, holder: str, **changes: object) -> ShareKeysUpload:
        """The upload with ``holder``'s ciphertext or commitment changed and signed again by c00 (unless
        the change is the signature): a well-formed message of a member that deviates, which only the
        check under test can refuse."""
        ciphertexts = dict(self.up.ciphertexts)
        if "ciphertext" in changes:
            ciphertexts[holder] = changes.pop("ciphertext")  # type: ignore[assignment]
        commitment = replace(self.up.commitments[holder], **changes)  # type: ignore[arg-type]
        if "signature" not in changes:
            payload = share_commitment_payload(
                self.s.server.session_id,
                "c00",
                holder,
                ciphertext_digest(ciphertexts[holder]),
                commitment,
                self.pk_mask,
            )
            commitment = replace(commitment, signature=self.consortium.identities["c00"].sign(payload))
        return replace(
            self.up, ciphertexts=ciphertexts, commitments={**self.up.commitments, holder: commitment}
        )


@pytest.fixture
def shares(consortium: Consortium) -> Uploading:
    s = make_session(consortium, 4)
    broadcast = _advertised(s)
    pk_mask = next(a.pk_mask for a in broadcast.adverts if a.client_id == "c00")
    return Uploading(s, s.clients["c00"].on_advert_broadcast(broadcast), consortium, pk_mask)


def test_an_honest_share_upload_is_accepted(shares: Uploading) -> None:
    s, up = shares.s, shares.up
    s.server.receive_shares(up)  # the baseline every other case changes one field of


def test_a_share_upload_from_outside_u1_or_of_another_session_is_refused(
    shares: Uploading,
) -> None:
    s, up = shares.s, shares.up
    phase = Phase.SHARE_KEYS
    _refused(
        lambda: s.server.receive_shares(replace(up, session_id=bytes(32))),
        phase,
        "c00",
        "message belongs to another session",
    )
    _refused(
        lambda: s.server.receive_shares(replace(up, sender="c29")),
        phase,
        "c29",
        "sender is not among this phase's participants",
    )


def test_a_second_share_upload_is_refused(shares: Uploading) -> None:
    s, up = shares.s, shares.up
    s.server.receive_shares(up)
    _refused(lambda: s.server.receive_shares(up), Phase.SHARE_KEYS, "c00", "duplicate share upload")


def test_share_uploads_missing_a_ciphertext_or_commitment_are_refused(
    shares: Uploading,
) -> None:
    s, up = shares.s, shares.up
    fewer = dict(list(up.ciphertexts.items())[:-1])
    _refused(
        lambda: s.server.receive_shares(replace(up, ciphertexts=fewer)),
        Phase.SHARE_KEYS,
        "c00",
        "ciphertexts must be addressed to exactly the sender's neighbours in U1",
    )
    no_own = {h: c for h, c in up.commitments.items() if h != "c00"}
    _refused(
        lambda: s.server.receive_shares(replace(up, commitments=no_own)),
        Phase.SHARE_KEYS,
        "c00",
        "share commitments must cover exactly the sender's neighbours and itself",
    )


def test_a_ciphertext_of_the_largest_size_is_accepted(shares: Uploading) -> None:
    s = shares.s
    s.server.receive_shares(shares.resigned("c01", ciphertext=bytes(_MAX_CIPHERTEXT)))


@pytest.mark.parametrize(
    "change",
    ["oversized ciphertext", "short seed commitment"],
)
def test_an_oversized_ciphertext_or_a_malformed_seed_commitment_is_refused_alone(
    shares: Uploading, change: str
) -> None:
    """Each defect alone (the rest of the upload signed and well-formed) is refused by the size check,
    before any signature work."""
    s, up = shares.s, shares.up
    if change == "oversized ciphertext":
        bad = shares.resigned("c01", ciphertext=bytes(_MAX_CIPHERTEXT + 1))
    else:
        short = up.b_commitment[:31]
        bad = replace(
            up,
            b_commitment=short,
            commitments={h: replace(c, seed_commitment=short) for h, c in up.commitments.items()},
        )
    _refused(
        lambda: s.server.receive_shares(bad),
        Phase.SHARE_KEYS,
        "c00",
        "oversized ciphertext or malformed commitment",
    )


@pytest.mark.parametrize(
    "changes",
    [{"s": bytes(31)}, {"b": bytes(31)}, {"signature": bytes(_MAX_SIGNATURE + 1)}],
    ids=["short s hash", "short b hash", "oversized signature"],
)
def test_a_malformed_share_commitment_is_refused(shares: Uploading, changes: dict[str, bytes]) -> None:
    s = shares.s
    _refused(
        lambda: s.server.receive_shares(shares.resigned("c02", **changes)),
        Phase.SHARE_KEYS,
        "c00",
        "malformed share commitment",
    )


def test_a_signature_of_the_largest_size_is_checked_not_refused_as_malformed(
    shares: Uploading,
) -> None:
    s = shares.s
    _refused(
        lambda: s.server.receive_shares(shares.resigned("c02", signature=bytes(_MAX_SIGNATURE))),
        Phase.SHARE_KEYS,
        "c00",
        "share commitment for 'c02' is not signed by the sender",
    )


def test_a_commitment_naming_another_seed_commitment_is_refused(
    shares: Uploading,
) -> None:
    s = shares.s
    _refused(
        lambda: s.server.receive_shares(shares.resigned("c03", seed_commitment=bytes(32))),
        Phase.SHARE_KEYS,
        "c00",
        "share commitment for 'c03' names another seed commitment",
    )


def test_a_commitment_signed_over_another_ciphertext_is_refused(
    shares: Uploading,
) -> None:
    """A member that signs commitments to one ciphertext and sends another could later have its own
    dealing blamed on the holder; the server checks every signature on arrival (it knows the sender's
    certificate from its advert)."""
    s, up = shares.s, shares.up
    swapped = {**up.ciphertexts, "c01": up.ciphertexts["c02"], "c02": up.ciphertexts["c01"]}
    _refused(
        lambda: s.server.receive_shares(replace(up, ciphertexts=swapped)),
        Phase.SHARE_KEYS,
        "c00",
        "share commitment for 'c01' is not signed by the sender",
    )


def test_without_identities_the_server_session_does_not_check_commitment_signatures(
    consortium: Consortium,
) -> None:
    """A session run without a trust anchor (the in-process simulations) knows no certificates and so
    cannot check signatures; it must still accept well-formed uploads."""
    s = make_session(consortium, 4)
    bare = ServerSession(s.config, trust=None)
    for c in s.clients.values():
        bare.receive_advert(c.advertise())
    broadcast = bare.close_advertise()
    up = s.clients["c00"].on_advert_broadcast(broadcast)
    bare.receive_shares(
        replace(up, commitments={h: replace(c, signature=b"") for h, c in up.commitments.items()})
    )


# -- ready notices ---------------------------------------------------------------------------------


def test_a_complaint_about_oneself_is_refused(consortium: Consortium) -> None:
    """A member may only complain about a neighbour's dealing, never its own (which would let it name
    itself faulty and the server open its own ciphertexts)."""
    s = make_session(consortium, 4)
    broadcast = _advertised(s)
    for c in s.clients.values():
        s.server.receive_shares(c.on_advert_broadcast(broadcast))
    relays = s.server.close_share_keys()
    member = s.clients["c01"]
    member.on_share_relay(relays["c01"])
    honest = member.ready()
    _refused(
        lambda: s.server.receive_ready(replace(honest, complaints=("c01",), cipher_key=bytes(32))),
        Phase.COMPUTE,
        "c01",
        "complaints must name distinct neighbours in U2",
    )
