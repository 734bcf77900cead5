"""Tests that each pin one check of the crypto primitives (found by scripts/mutation --scored-only).

Each sets up a case where every other check passes, so that only the check under test decides, and
asserts the exact outcome: the error type and reason code, a fragment of the message, or the value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes as PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secfed.crypto import aead, agreement, identity, kdf, prg, shamir
from secfed.crypto.identity import CLIENT_URI_PREFIX, Identity, IdentityError, TrustAnchor
from secfed.pki import CertificateAuthority, create_ca, generate_key, issue_client, issue_server, revoke
from secfed.pki.files import cert_pem, crl_pem

# A validation time with whole seconds: certificate dates have second resolution.
T = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("mutation-kills CA")


def _dated_ca(start: datetime, end: datetime, *, path_length: int | None = 0) -> CertificateAuthority:
    """A consortium CA valid exactly from ``start`` to ``end``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dated CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=cert, private_key=key)


def _leaf(
    ca: CertificateAuthority,
    *,
    eku: x509.ObjectIdentifier,
    san: list[x509.GeneralName],
    start: datetime,
    end: datetime,
) -> bytes:
    """DER of a leaf issued by ``ca`` with the given usage, SANs and validity."""
    key = generate_key()
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _via_intermediate(
    intermediate_key: PrivateKeyTypes,
    sign: Callable[[x509.CertificateBuilder, PrivateKeyTypes], x509.Certificate],
) -> tuple[TrustAnchor, list[bytes]]:
    """A root, an intermediate CA holding ``intermediate_key``, and a client leaf it signs with ``sign``."""
    now = datetime.now(UTC)
    root = _dated_ca(now - timedelta(days=1), now + timedelta(days=30), path_length=None)
    inter_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")])
    inter_public = intermediate_key.public_key()
    assert isinstance(inter_public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey)
    root_ski = root.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    inter = (
        x509.CertificateBuilder()
        .subject_name(inter_name)
        .issuer_name(root.certificate.subject)
        .public_key(inter_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False
        )
        .sign(root.private_key, hashes.SHA256())
    )
    leaf_key = generate_key()
    leaf = sign(
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(inter_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_client_uri("alice")), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_public), critical=False),
        intermediate_key,
    )
    chain = [c.public_bytes(serialization.Encoding.DER) for c in (leaf, inter)]
    return TrustAnchor(root.certificate), chain


def _client_uri(client_id: str) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + client_id)]


# -- TrustAnchor.from_pem --------------------------------------------------------------------------


def test_a_ca_file_holding_no_certificate_is_refused_as_malformed() -> None:
    """A corrupted or wrong ca.pem (say, a key file copied in its place) is refused with a reason code
    callers branch on, and a message naming the CA file's problem."""
    with pytest.raises(IdentityError) as ei:
        TrustAnchor.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert ei.value.reason == "malformed"
    assert "CA PEM does not hold a certificate" in str(ei.value)


def test_a_ca_file_with_two_roots_is_refused_naming_the_count(ca: CertificateAuthority) -> None:
    """Two roots in ca.pem would turn "the consortium CA" into "any of these": refused, saying how many."""
    other = create_ca("second root")
    with pytest.raises(IdentityError) as ei:
        TrustAnchor.from_pem(cert_pem(ca.certificate, other.certificate))
    assert ei.value.reason == "malformed"
    assert "exactly one certificate, found 2" in str(ei.value)


def test_an_unreadable_crl_is_refused_naming_which_one(ca: CertificateAuthority) -> None:
    """A garbled CRL (half copied, or not a CRL) must not be skipped: revocations would be lost. The
    error names the CRL's index among those given."""
    with pytest.raises(IdentityError) as ei:
        TrustAnchor.from_pem(cert_pem(ca.certificate), [crl_pem(revoke(ca, [])), b"not a CRL"])
    assert ei.value.reason == "malformed"
    assert "CRL #1 is not a PEM X.509 CRL" in str(ei.value)


# -- TrustAnchor._classify, through verify_client / verify_server ----------------------------------


def test_a_server_certificate_used_as_a_client_is_reported_as_wrong_client_usage(
    ca: CertificateAuthority,
) -> None:
    """A stolen server certificate presented on the client side: the refusal says which usage is
    missing (clientAuth), so the operator knows what was presented where."""
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(ca.certificate).verify_client(issue_server(ca).chain_der())
    assert ei.value.reason == "bad-eku"
    assert "not valid for clientAuth" in str(ei.value)


def test_a_client_certificate_used_as_the_server_is_reported_as_wrong_server_usage(
    ca: CertificateAuthority,
) -> None:
    """A member impersonating the coordinator with its client certificate (carrying the right host
    name): refused for the missing serverAuth usage, and the message says so."""
    now = datetime.now(UTC)
    der = _leaf(
        ca,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=[x509.DNSName("coordinator.example")],
        start=now - timedelta(minutes=5),
        end=now + timedelta(days=1),
    )
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(ca.certificate).verify_server([der], hostname="coordinator.example")
    assert ei.value.reason == "bad-eku"
    assert "not valid for serverAuth" in str(ei.value)


def test_a_leaf_expiring_exactly_at_validation_time_is_not_blamed_for_a_future_ca() -> None:
    """A leaf is valid up to and including its notAfter: when the chain fails because the CA is not
    yet valid, the reason is the CA's "not-yet-valid", not an "expired" pinned on the leaf."""
    dated = _dated_ca(T + timedelta(days=1), T + timedelta(days=400))
    der = _leaf(
        dated,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=_client_uri("alice"),
        start=T - timedelta(days=1),
        end=T,
    )
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(dated.certificate).verify_client([der], at=T)
    assert ei.value.reason == "not-yet-valid"
    assert "'CN=dated CA'" in str(ei.value)


def test_a_leaf_starting_exactly_at_validation_time_is_not_blamed_for_an_expired_ca() -> None:
    """A leaf is valid from its notBefore on: when the chain fails because the CA has expired, the
    reason is the CA's "expired", not a "not-yet-valid" pinned on the leaf."""
    dated = _dated_ca(T - timedelta(days=400), T - timedelta(days=1))
    der = _leaf(
        dated,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=_client_uri("alice"),
        start=T,
        end=T + timedelta(days=1),
    )
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(dated.certificate).verify_client([der], at=T)
    assert ei.value.reason == "expired"
    assert "'CN=dated CA'" in str(ei.value)


def test_an_unrecognised_verifier_failure_is_not_reported_as_a_foreign_ca(ca: CertificateAuthority) -> None:
    """A leaf missing its authorityKeyIdentifier chains to our CA by name and signature but is refused
    for the missing extension: that is "invalid-certificate" with the verifier's text, not
    "foreign-ca" (which would send the operator hunting for the wrong CA)."""
    key = generate_key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no-aki")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_client_uri("alice")), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(ca.certificate).verify_client([cert.public_bytes(serialization.Encoding.DER)])
    assert ei.value.reason == "invalid-certificate"
    assert "2.5.29.35" in str(ei.value)


def test_an_intermediate_with_a_key_the_verifier_forbids_is_reported_as_unsupported() -> None:
    """A chain through an intermediate CA with an Ed25519 key (which the WebPKI profile forbids) is
    refused as "unsupported-key", not as a foreign CA: the CA is ours, its algorithm is the problem."""

    def sign(builder: x509.CertificateBuilder, key: PrivateKeyTypes) -> x509.Certificate:
        return builder.sign(key, None)

    anchor, chain = _via_intermediate(ed25519.Ed25519PrivateKey.generate(), sign)
    with pytest.raises(IdentityError) as ei:
        anchor.verify_client(chain)
    assert ei.value.reason == "unsupported-key"
    assert "Forbidden public key algorithm" in str(ei.value)


def test_a_leaf_signed_with_a_forbidden_signature_algorithm_is_reported_as_unsupported() -> None:
    """A leaf signed with RSA/SHA-224 (a signature algorithm the WebPKI profile forbids) by an
    otherwise fine intermediate is refused as "unsupported-key", not as a foreign CA."""

    def sign(builder: x509.CertificateBuilder, key: PrivateKeyTypes) -> x509.Certificate:
        return builder.sign(key, hashes.SHA224(), rsa_padding=padding.PKCS1v15())

    anchor, chain = _via_intermediate(rsa.generate_private_key(65537, 2048), sign)
    with pytest.raises(IdentityError) as ei:
        anchor.verify_client(chain)
    assert ei.value.reason == "unsupported-key"
    assert "Forbidden signature algorithm" in str(ei.value)


def test_valid_client_still_verifies(ca: CertificateAuthority) -> None:
    """Control for the cases above: the same CA and builder give an accepted client."""
    peer = TrustAnchor(ca.certificate).verify_client(issue_client(ca, "alice").chain_der())
    assert peer.client_id == "alice"


# -- AEAD ------------------------------------------------------------------------------------------


def test_a_sealed_message_of_exactly_nonce_plus_tag_opens() -> None:
    """The shortest valid sealed message (empty plaintext: nonce and tag only) opens; one byte less is
    "truncated" before any decryption is tried."""
    key = bytes(range(32))
    sealed = aead.seal(key, b"", b"ad")
    assert len(sealed) == aead.NONCE_BYTES + aead.TAG_BYTES
    assert aead.open_sealed(key, sealed, b"ad") == b""
    with pytest.raises(aead.DecryptionError, match=r"^sealed message is truncated$"):
        aead.open_sealed(key, sealed[:-1], b"ad")


def test_a_tampered_ciphertext_fails_as_authentication_not_as_a_library_error() -> None:
    """A server flipping a bit of a relayed share ciphertext gets the one DecryptionError."""
    key = bytes(32)
    sealed = bytearray(aead.seal(key, b"share", b"ad"))
    sealed[-1] ^= 1
    with pytest.raises(aead.DecryptionError, match=r"^authentication failed$"):
        aead.open_sealed(key, bytes(sealed), b"ad")


@pytest.mark.parametrize("bad", [bytes(31), bytes(33), "k" * 32])
def test_a_key_of_the_wrong_length_or_type_is_a_programming_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^AES-256-GCM key must be 32 bytes$"):
        aead.seal(bad, b"x", b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^AES-256-GCM key must be 32 bytes$"):
        aead.open_sealed(bad, bytes(40), b"")  # type: ignore[arg-type]


def test_a_known_answer_nonce_must_be_twelve_bytes() -> None:
    """The known-answer helper refuses any nonce but a 12-byte one (GCM with other nonce sizes is a
    different construction)."""
    key = bytes(32)
    assert aead._seal_with_nonce(key, bytes(12), b"", b"")[:12] == bytes(12)
    with pytest.raises(ValueError, match=r"^nonce must be 12 bytes$"):
        aead._seal_with_nonce(key, bytes(11), b"", b"")
    with pytest.raises(ValueError, match=r"^nonce must be 12 bytes$"):
        aead._seal_with_nonce(key, bytes(13), b"", b"")


# -- X25519 agreement ------------------------------------------------------------------------------


class _ZeroBackend:
    """A private key whose backend no longer refuses low-order points: every exchange yields zeros."""

    def exchange(self, peer: object) -> bytes:
        return bytes(32)


def test_an_all_zero_shared_secret_is_refused_even_if_the_backend_lets_it_through() -> None:
    """Defence in depth against a low-order peer key (a server substituting keys): should the backend
    stop refusing it, the all-zero "secret" everyone knows is still refused."""
    peer = agreement.generate_keypair().public
    with pytest.raises(agreement.AgreementError, match=r"^X25519 shared secret is all zeros"):
        agreement.agree(_ZeroBackend(), peer)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [bytes(31), bytes(33), bytearray(32)])
def test_a_peer_public_key_must_be_32_bytes(bad: object) -> None:
    """A peer key of the wrong length or type is refused before it reaches the backend."""
    own = agreement.generate_keypair()
    with pytest.raises(agreement.AgreementError, match=r"^X25519 public key must be 32 bytes$"):
        agreement.agree(own.private, bad)  # type: ignore[arg-type]


def test_a_low_order_peer_key_is_refused_as_an_agreement_error() -> None:
    own = agreement.generate_keypair()
    with pytest.raises(
        agreement.AgreementError, match=r"^X25519 agreement failed \(low-order peer public key\)$"
    ):
        agreement.agree(own.private, bytes(32))


@pytest.mark.parametrize("bad", [bytes(31), bytes(33), bytearray(32)])
def test_a_raw_private_key_must_be_32_bytes(bad: object) -> None:
    with pytest.raises(agreement.AgreementError, match=r"^X25519 private key must be 32 bytes$"):
        agreement.private_from_bytes(bad)  # type: ignore[arg-type]


def test_a_raw_private_key_round_trips() -> None:
    own = agreement.generate_keypair()
    again = agreement.private_from_bytes(agreement.private_to_bytes(own.private))
    assert agreement.public_of(again) == own.public


# -- KDF -------------------------------------------------------------------------------------------


def test_hkdf_output_length_is_bounded_on_both_sides() -> None:
    """RFC 5869 allows 1 to 255 * 32 bytes: both ends work, one beyond either end is refused."""
    assert len(kdf.hkdf_sha256(b"k", salt=b"", info=b"", length=1)) == 1
    assert len(kdf.hkdf_sha256(b"k", salt=b"", info=b"", length=255 * 32)) == 255 * 32
    for bad in (0, 255 * 32 + 1):
        with pytest.raises(ValueError, match=rf"output length must be in \[1, 8160\], got {bad}$"):
            kdf.hkdf_sha256(b"k", salt=b"", info=b"", length=bad)


def test_integer_fields_are_bounded_on_both_sides() -> None:
    """Integers encode as 8 bytes: 0 and 2^64 - 1 encode, -1 and 2^64 are refused (they would wrap
    or need a ninth byte and break injectivity)."""
    assert kdf.encode_fields(0) == bytes([0, 0, 0, 8]) + bytes(8)
    assert kdf.encode_fields(2**64 - 1) == bytes([0, 0, 0, 8]) + b"\xff" * 8
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match=rf"^integer field must be in \[0, 2\*\*64\), got {bad}$"):
            kdf.encode_fields(bad)


def test_fields_of_other_types_are_refused() -> None:
    """A bool (True silently becoming 1) and any non-bytes/str/int value are refused by type."""
    with pytest.raises(TypeError, match=r"^bool is not an allowed field type"):
        kdf.encode_fields(True)
    with pytest.raises(TypeError, match=r"^unsupported field type float$"):
        kdf.encode_fields(1.0)  # type: ignore[arg-type]
    mixed = kdf.encode_fields(bytearray(b"ab"), memoryview(b"c"), "d")  # type: ignore[arg-type]
    assert mixed == kdf.encode_fields(b"ab", b"c", b"d")


# -- PRG -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [bytes(31), bytes(33), "s" * 32])
def test_a_prg_seed_must_be_32_bytes(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^PRG seed must be exactly 32 bytes$"):
        prg.mask_vector(bad, salt=b"", label=b"", length=1, bits=32)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"^PRG seed must be exactly 32 bytes$"):
        prg.MaskAccumulator(np.zeros(1, dtype=np.uint32)).add(bad, salt=b"", label=b"")  # type: ignore[arg-type]


def test_the_ring_size_must_be_32_or_64() -> None:
    with pytest.raises(ValueError, match=r"^ring size must be 32 or 64 bits, got 16$"):
        prg.mask_vector(bytes(32), salt=b"", label=b"", length=1, bits=16)  # type: ignore[call-overload]


def test_mask_length_zero_is_empty_and_negative_is_refused() -> None:
    empty = prg.mask_vector(bytes(32), salt=b"", label=b"", length=0, bits=64)
    assert empty.shape == (0,) and empty.dtype == np.uint64
    with pytest.raises(ValueError, match=r"^length must be non-negative, got -1$"):
        prg.mask_vector(bytes(32), salt=b"", label=b"", length=-1, bits=32)


def test_a_64_bit_stream_is_the_32_bit_stream_read_in_wider_words() -> None:
    """Documented: bits is not part of the derivation; the words are little-endian."""
    narrow = prg.mask_vector(bytes(32), salt=b"s", label=b"l", length=4, bits=32)
    wide = prg.mask_vector(bytes(32), salt=b"s", label=b"l", length=2, bits=64)
    assert narrow.dtype == np.uint32 and wide.dtype == np.uint64
    assert narrow.astype("<u4").tobytes() == wide.astype("<u8").tobytes()


def test_the_accumulator_adds_and_subtracts_exactly_the_mask() -> None:
    """sign=+1 adds the stream, sign=-1 subtracts it (mod 2^bits), for both ring sizes."""
    for bits, dtype in ((32, np.uint32), (64, np.uint64)):
        mask = prg.mask_vector(bytes(32), salt=b"s", label=b"l", length=5, bits=bits)  # type: ignore[call-overload]
        out = cast(npt.NDArray[np.unsignedinteger[Any]], np.arange(5).astype(dtype))
        acc = prg.MaskAccumulator(out)
        assert acc.bits == bits
        acc.add(bytes(32), salt=b"s", label=b"l", sign=1)
        assert (out == np.arange(5, dtype=dtype) + mask).all()
        acc.add(bytes(32), salt=b"s", label=b"l", sign=-1)
        acc.add(bytes(32), salt=b"s", label=b"l", sign=-1)
        assert (out == np.arange(5, dtype=dtype) - mask).all()


@pytest.mark.parametrize("sign", [0, 2, True, -2])
def test_the_accumulator_sign_must_be_plus_or_minus_one(sign: int) -> None:
    acc = prg.MaskAccumulator(np.zeros(2, dtype=np.uint32))
    with pytest.raises(ValueError, match=r"^sign must be \+1 or -1, got "):
        acc.add(bytes(32), salt=b"", label=b"", sign=sign)


def test_the_accumulator_masks_a_single_word_vector() -> None:
    """Only an empty vector is skipped: a one-word vector gets its mask like any other."""
    out = np.zeros(1, dtype=np.uint32)
    prg.MaskAccumulator(out).add(bytes(32), salt=b"s", label=b"l")
    assert out.tolist() == prg.mask_vector(bytes(32), salt=b"s", label=b"l", length=1, bits=32).tolist()
    assert out[0] != 0


def test_a_keystream_shorter_than_its_buffer_is_an_error() -> None:
    """Should the backend ever write fewer keystream bytes than asked, the rest of the buffer would
    hold stale bytes (or zeros: an unmasked input): that is an error, never a silent short mask."""
    key, icb = prg.keystream_params(bytes(32), salt=b"", label=b"")
    out = bytearray(32)
    with pytest.raises(RuntimeError, match=r"^AES-CTR produced a short keystream$"):
        prg._keystream_into(key, icb, memoryview(bytes(16)), memoryview(out))
    full = bytearray(32)
    prg._keystream_into(key, icb, memoryview(bytes(32)), memoryview(full))
    assert out[:16] == full[:16] and any(full)


def test_the_accumulator_accepts_an_empty_vector() -> None:
    out = np.zeros(0, dtype=np.uint64)
    prg.MaskAccumulator(out).add(bytes(32), salt=b"", label=b"", sign=-1)
    assert out.shape == (0,)


def test_the_accumulator_refuses_unusable_output_arrays() -> None:
    """The output must be a 1-D, contiguous, writeable uint32/uint64 numpy array: anything else is
    refused with a message naming what is wrong."""
    with pytest.raises(TypeError, match=r"^out must be a numpy array$"):
        prg.MaskAccumulator([0, 0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^out must have dtype uint32 or uint64, got int64$"):
        prg.MaskAccumulator(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match=r"^out must be a 1-D, C-contiguous, writeable array$"):
        prg.MaskAccumulator(np.zeros((2, 2), dtype=np.uint32))
    with pytest.raises(ValueError, match=r"^out must be a 1-D, C-contiguous, writeable array$"):
        prg.MaskAccumulator(np.zeros(4, dtype=np.uint32)[::2])
    frozen = np.zeros(2, dtype=np.uint32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out must be a 1-D, C-contiguous, writeable array$"):
        prg.MaskAccumulator(frozen)


# -- Shamir ----------------------------------------------------------------------------------------


def test_share_x_is_bounded_on_both_sides() -> None:
    """x = 0 would be the secret itself; x must fit two bytes. 1 and 65535 are the accepted extremes."""
    assert shamir.Share(x=1, value=0).x == 1
    assert shamir.Share(x=65535, value=0).x == 65535
    for bad in (0, 65536, True):
        with pytest.raises(shamir.ShamirError, match=r"^share x must be an int in \[1, 65535\]"):
            shamir.Share(x=bad, value=0)


def test_share_value_is_bounded_on_both_sides() -> None:
    assert shamir.Share(x=1, value=shamir.PRIME - 1).value == shamir.PRIME - 1
    for bad in (-1, shamir.PRIME, False):
        with pytest.raises(shamir.ShamirError, match=r"^share value must be an int in \[0, PRIME\)$"):
            shamir.Share(x=1, value=bad)


def test_a_serialized_share_must_have_the_exact_width() -> None:
    raw = shamir.Share(x=3, value=7).to_bytes()
    assert shamir.Share.from_bytes(raw) == shamir.Share(x=3, value=7)
    for bad in (raw[:-1], raw + b"\x00"):
        with pytest.raises(shamir.ShamirError, match=rf"^serialized share must be 68 bytes, got {len(bad)}$"):
            shamir.Share.from_bytes(bad)


def test_split_refuses_bad_secrets_positions_and_thresholds() -> None:
    """Each argument of split is checked on its own, the others valid."""
    secret = bytes(range(32))
    with pytest.raises(shamir.ShamirError, match=r"^secret must be exactly 32 bytes$"):
        shamir.split(secret[:31], 1, [0])
    with pytest.raises(shamir.ShamirError, match=r"^positions must be integers$"):
        shamir.split(secret, 1, [0.0])  # type: ignore[list-item]
    with pytest.raises(shamir.ShamirError, match=r"^positions must be distinct$"):
        shamir.split(secret, 1, [0, 1, 0])
    for bad in (-1, 65535):
        with pytest.raises(shamir.ShamirError, match=rf"^position must be in \[0, 65535\), got {bad}$"):
            shamir.split(secret, 1, [0, bad])
    for threshold in (0, 3, True):
        with pytest.raises(shamir.ShamirError, match=r"^threshold must be in \[1, 2\], got "):
            shamir.split(secret, threshold, [0, 1])


def test_split_accepts_the_extreme_positions_and_thresholds() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 2, [0, 65534])
    assert sorted(s.x for s in shares.values()) == [1, 65535]
    assert shamir.reconstruct(list(shares.values()), 2) == secret
    assert shamir.reconstruct([shamir.split(secret, 1, [5])[5]], 1) == secret


def test_reconstruct_refuses_bad_thresholds_and_non_shares() -> None:
    share = shamir.Share(x=1, value=1)
    for bad in (0, True):
        with pytest.raises(shamir.ShamirError, match=r"^threshold must be a positive int, got "):
            shamir.reconstruct([share], bad)
    with pytest.raises(shamir.ShamirError, match=r"^expected Share, got tuple$"):
        shamir.reconstruct([(1, 1)], 1)  # type: ignore[list-item]


def test_reconstruct_needs_threshold_distinct_shares_and_no_conflicts() -> None:
    """A share delivered twice counts once (so two copies do not meet a threshold of two); the same x
    with another value is a conflict; exactly threshold distinct shares suffice."""
    secret = bytes(range(1, 33))
    shares = shamir.split(secret, 2, [0, 1, 2])
    a, b = shares[0], shares[1]
    with pytest.raises(shamir.ShamirError, match=r"^need 2 distinct shares, got 1$"):
        shamir.reconstruct([a, a], 2)
    assert shamir.reconstruct([a, a, b], 2) == secret
    forged = shamir.Share(x=a.x, value=(a.value + 1) % shamir.PRIME)
    with pytest.raises(shamir.ShamirError, match=r"^conflicting shares for x=1$"):
        shamir.reconstruct([a, forged, b], 2)


def test_a_reconstruction_of_two_to_the_256_is_out_of_range() -> None:
    """The largest secret, 2^256 - 1, reconstructs; 2^256 cannot be a secret and is refused."""
    assert shamir.reconstruct([shamir.Share(x=1, value=2**256 - 1)], 1) == b"\xff" * 32
    with pytest.raises(shamir.ShamirError, match=r"^reconstruction out of range"):
        shamir.reconstruct([shamir.Share(x=1, value=2**256)], 1)


def test_a_share_off_the_dealers_polynomial_proves_an_inconsistent_dealing() -> None:
    """reconstruct_verified checks every extra share against the polynomial of the first threshold:
    all on it is fine, one off it is an inconsistent dealing, named by its x."""
    secret = bytes(range(32))
    shares = shamir.split(secret, 2, [0, 1, 2, 3])
    good = [shares[p] for p in range(4)]
    assert shamir.reconstruct_verified(good, 2) == secret
    off = shamir.Share(x=4, value=(shares[3].value + 1) % shamir.PRIME)
    with pytest.raises(shamir.ShamirError, match=r"^share x=4 does not lie on the polynomial"):
        shamir.reconstruct_verified([*good[:3], off], 2)


def test_interpolation_weights_exclude_only_the_point_itself() -> None:
    """The barycentric weight of x_i is 1 / prod over the *other* points: for xs = (1, 2, 4),
    w_1 = 1/((1-2)(1-4)) = 1/3."""
    weights = shamir._barycentric_weights((1, 2, 4))
    assert weights[0] * 3 % shamir.PRIME == 1
    assert weights[1] * (2 - 1) * (2 - 4) % shamir.PRIME == 1
    assert weights[2] * (4 - 1) * (4 - 2) % shamir.PRIME == 1


def test_a_host_name_that_is_neither_ip_nor_dns_is_refused_as_malformed(ca: CertificateAuthority) -> None:
    """A client configured with a garbled coordinator address gets "malformed" naming the address, not
    a verifier crash or a misleading hostname mismatch."""
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(ca.certificate).verify_server(issue_server(ca).chain_der(), hostname="bad host!")
    assert ei.value.reason == "malformed"
    assert "'bad host!' is neither an IP address nor a valid DNS name" in str(ei.value)


def test_an_expired_server_certificate_is_reported_as_an_expired_server_certificate(
    ca: CertificateAuthority,
) -> None:
    """A coordinator still serving an expired certificate: the client's refusal says "expired" and
    that it is the server certificate, judged at the validation time asked for."""
    server = issue_server(ca, not_before=T - timedelta(days=30), not_after=T - timedelta(days=1))
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(ca.certificate).verify_server(server.chain_der(), hostname="localhost", at=T)
    assert ei.value.reason == "expired"
    assert str(ei.value).startswith("[expired] server certificate 'CN=localhost'")


def _crl(ca: CertificateAuthority, next_update: datetime) -> x509.CertificateRevocationList:
    """An empty CRL of ``ca`` whose nextUpdate is exactly ``next_update``."""
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(next_update - timedelta(days=7))
        .next_update(next_update)
        .sign(ca.private_key, hashes.SHA256())
    )


def test_a_crl_is_fresh_up_to_and_including_its_next_update(ca: CertificateAuthority) -> None:
    """A CRL is trusted until its nextUpdate: at that very second it still counts, one second later
    it is stale and verification fails closed (withholding CRL updates must not resurrect revoked
    members)."""
    anchor = TrustAnchor(ca.certificate, [_crl(ca, T)])
    anchor.check_crls(at=T)
    with pytest.raises(IdentityError) as ei:
        anchor.check_crls(at=T + timedelta(seconds=1))
    assert ei.value.reason == "stale-crl"
    assert "is stale (its nextUpdate was 2030-06-01 12:00Z, validation time 2030-06-01 12:00Z); " in str(
        ei.value
    )
    assert str(ei.value).endswith("; publish a fresh CRL with `secfed certs revoke`")


def test_a_crl_signed_by_another_ca_is_refused_naming_its_issuer(ca: CertificateAuthority) -> None:
    """A CRL slipped in from another CA (which could "un-revoke" nobody but could hide our own CRL)
    is refused as "bad-crl", naming the issuer it claims."""
    other = create_ca("impostor CA")
    anchor = TrustAnchor(ca.certificate, [_crl(other, datetime.now(UTC) + timedelta(days=1))])
    with pytest.raises(IdentityError) as ei:
        anchor.check_crls()
    assert ei.value.reason == "bad-crl"
    assert "CRL issued by 'CN=impostor CA' is not signed by the consortium CA 'CN=mutation-kills CA'" in str(
        ei.value
    )


class _NoNextUpdate:
    """A CRL as a verifier sees one that carries no nextUpdate (RFC 5280 makes it optional)."""

    def __init__(self, crl: x509.CertificateRevocationList) -> None:
        self._crl = crl
        self.issuer = crl.issuer
        self.next_update_utc = None

    def is_signature_valid(self, key: object) -> bool:
        return self._crl.is_signature_valid(key)  # type: ignore[arg-type]


def test_a_crl_without_next_update_is_stale(ca: CertificateAuthority) -> None:
    """A CRL with no nextUpdate could be replayed forever to hide later revocations: it is refused
    as stale, saying it has none."""
    crl = cast(x509.CertificateRevocationList, _NoNextUpdate(_crl(ca, T)))
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(ca.certificate, [crl]).check_crls(at=T - timedelta(days=1))
    assert ei.value.reason == "stale-crl"
    assert "is stale (it has no nextUpdate, validation time 2030-05-31 12:00Z)" in str(ei.value)


class _KeylessCertificate:
    """A CA certificate whose public key cannot be loaded (an algorithm the library does not know)."""

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyless CA")])
    serial_number = 0x2A

    def public_key(self) -> object:
        raise ValueError("unsupported key")


def test_a_ca_certificate_whose_key_cannot_be_loaded_is_malformed() -> None:
    """A ca.pem whose key the library cannot load is refused up front as "malformed", naming the
    certificate, rather than failing on the first peer."""
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(cast(x509.Certificate, _KeylessCertificate()))
    assert ei.value.reason == "malformed"
    assert str(ei.value) == "[malformed] CA certificate 'CN=keyless CA' (serial 2a): unsupported key"


def test_an_ed25519_ca_is_refused_saying_which_keys_are_supported() -> None:
    """The verifier refuses Ed25519 issuers; the anchor says so once, naming the key type and what to
    use instead."""
    ed_ca = create_ca("ed CA", key_type="ed25519")
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(ed_ca.certificate)
    assert ei.value.reason == "unsupported-key"
    assert "has a Ed25519PublicKey; the consortium CA must use an ECDSA (or RSA) key" in str(ei.value)


def test_an_identity_needs_a_certificate_chain() -> None:
    """An identity loaded from an empty certificate file is refused at once, not at the first signature."""
    with pytest.raises(IdentityError) as ei:
        Identity(client_id="", private_key=generate_key(), cert_chain=())
    assert ei.value.reason == "malformed"
    assert str(ei.value) == "[malformed] identity has an empty certificate chain"


def test_an_identity_with_another_certificates_key_is_refused_naming_the_leaf(
    ca: CertificateAuthority,
) -> None:
    """A kit whose key file and certificate do not belong together (a mixed-up copy) is refused,
    naming the certificate."""
    alice = issue_client(ca, "alice")
    with pytest.raises(IdentityError) as ei:
        Identity(client_id="alice", private_key=generate_key(), cert_chain=alice.cert_chain)
    assert ei.value.reason == "key-mismatch"
    assert "private key does not belong to the leaf certificate 'CN=alice'" in str(ei.value)


def test_an_identity_claiming_another_client_id_is_refused_naming_both(ca: CertificateAuthority) -> None:
    """A kit claiming to be "bob" with alice's certificate is refused, naming both ids."""
    alice = issue_client(ca, "alice")
    with pytest.raises(IdentityError) as ei:
        Identity(client_id="bob", private_key=alice.private_key, cert_chain=alice.cert_chain)
    assert ei.value.reason == "id-mismatch"
    assert "identity claims client id 'bob' but certificate 'CN=alice'" in str(ei.value)
    assert str(ei.value).endswith(" says 'alice'")


class _LazilyFailingVerifier:
    """A verifier meeting a certificate field that only parses (and fails) when it is read."""

    def verify(self, leaf: object, intermediates: object) -> object:
        raise ValueError("error parsing asn1 value")


class _Builder:
    def store(self, store: object) -> _Builder:
        return self

    def time(self, when: object) -> _Builder:
        return self

    def build_client_verifier(self) -> _LazilyFailingVerifier:
        return _LazilyFailingVerifier()

    def build_server_verifier(self, subject: object) -> _LazilyFailingVerifier:
        return _LazilyFailingVerifier()


def test_a_field_that_fails_to_parse_during_verification_is_a_clean_malformed_refusal(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer (or a lying server) presenting a certificate whose field only fails to parse when the
    verifier reads it must get an IdentityError("malformed"), never a stray ValueError that escapes
    the handlers around verification, on the client and on the server side alike."""
    monkeypatch.setattr(identity, "PolicyBuilder", _Builder)
    anchor = TrustAnchor(ca.certificate)
    for verify in (
        lambda: anchor.verify_client(issue_client(ca, "alice").chain_der()),
        lambda: anchor.verify_server(issue_server(ca).chain_der(), hostname="localhost"),
    ):
        with pytest.raises(IdentityError) as ei:
            verify()
        assert ei.value.reason == "malformed"
        assert str(ei.value) == "[malformed] the presented chain is malformed: error parsing asn1 value"


# -- client ids, signatures and presented chains -------------------------------------------------------


def _cert(ca: CertificateAuthority, san: list[x509.GeneralName] | None) -> x509.Certificate:
    """A clientAuth leaf with exactly the SAN entries given (no SAN extension for None)."""
    now = datetime.now(UTC)
    key = generate_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(0x1234)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca.private_key, hashes.SHA256())


def _no_client_id(cert: x509.Certificate) -> str:
    with pytest.raises(IdentityError) as ei:
        identity.client_id_of(cert)
    assert ei.value.reason == "no-client-uri"
    return str(ei.value)


def test_the_client_id_is_read_from_the_one_client_uri_among_other_sans(ca: CertificateAuthority) -> None:
    """Other URIs and DNS names may sit next to the client URI; only the client URI names the member."""
    cert = _cert(
        ca,
        [
            x509.DNSName("host.example"),
            x509.UniformResourceIdentifier("https://example.org/c07"),
            x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + "c07"),
        ],
    )
    assert identity.client_id_of(cert) == "c07"


def test_a_certificate_without_san_carries_no_client_id(ca: CertificateAuthority) -> None:
    message = _no_client_id(_cert(ca, None))
    assert (
        message == "[no-client-uri] certificate 'CN=odd' (serial 1234) has no subjectAltName, so no client id"
    )


def test_a_certificate_without_a_client_uri_carries_no_client_id(ca: CertificateAuthority) -> None:
    message = _no_client_id(_cert(ca, [x509.UniformResourceIdentifier("urn:other:c07")]))
    assert message.endswith("has no SAN URI starting with 'urn:secfed:client:'")


def test_a_certificate_with_two_client_uris_is_ambiguous(ca: CertificateAuthority) -> None:
    """Two components could pick different URIs and disagree on who the peer is: refused."""
    uris: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + c) for c in ("c07", "c08")
    ]
    message = _no_client_id(_cert(ca, uris))
    assert message.endswith(
        "has 2 client URIs ['urn:secfed:client:c07', 'urn:secfed:client:c08']; exactly one is required"
    )


def test_a_client_uri_with_an_invalid_id_is_refused_naming_it(ca: CertificateAuthority) -> None:
    message = _no_client_id(_cert(ca, [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + "c 07")]))
    assert "carries client id 'c 07', which is not a valid client id ([A-Za-z0-9._-]{1,64})" in message


@pytest.mark.parametrize(
    ("client_id", "valid"), [("a" * 64, True), ("a" * 65, False), ("", False), ("a.b_c-1", True)]
)
def test_client_ids_are_one_to_64_characters_of_the_id_alphabet(client_id: str, valid: bool) -> None:
    assert identity.is_valid_client_id(client_id) is valid


def test_a_signature_from_another_key_is_refused_naming_the_certificate(ca: CertificateAuthority) -> None:
    """A relayed message signed by someone else than the certificate's owner is refused as
    "bad-signature", for EC and Ed25519 signers alike; the owner's own signature verifies."""
    for key_type in ("ec", "ed25519"):
        alice = issue_client(ca, "alice", key_type=key_type)
        identity.verify_signature(alice.certificate, alice.sign(b"payload"), b"payload")
        mallory = issue_client(ca, "mallory", key_type=key_type)
        with pytest.raises(IdentityError) as ei:
            identity.verify_signature(alice.certificate, mallory.sign(b"payload"), b"payload")
        assert ei.value.reason == "bad-signature"
        assert str(ei.value).startswith(
            "[bad-signature] signature does not verify under the key of certificate 'CN=alice'"
        )


def test_a_certificate_with_a_key_that_cannot_sign_is_unsupported(ca: CertificateAuthority) -> None:
    """A certificate carrying an X25519 key (key agreement only) cannot have made any signature."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kex")]))
        .issuer_name(ca.certificate.subject)
        .public_key(x25519.X25519PrivateKey.generate().public_key())
        .serial_number(0x99)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(ca.private_key, hashes.SHA256())
    )
    with pytest.raises(IdentityError) as ei:
        identity.verify_signature(cert, b"sig", b"payload")
    assert ei.value.reason == "unsupported-key"
    assert "has a X25519PublicKey; only EC and Ed25519 keys can sign" in str(ei.value)


def test_an_empty_or_undecodable_chain_is_malformed_naming_the_bad_certificate(
    ca: CertificateAuthority,
) -> None:
    anchor = TrustAnchor(ca.certificate)
    with pytest.raises(IdentityError) as ei:
        anchor.verify_client([])
    assert str(ei.value) == "[malformed] peer presented no certificate"
    with pytest.raises(IdentityError) as ei:
        anchor.verify_client([issue_client(ca, "alice").chain_der()[0], b"\x30\x03junk"])
    assert ei.value.reason == "malformed"
    assert "certificate #1 of the presented chain is not DER X.509: " in str(ei.value)


def test_a_signers_certificate_whose_key_cannot_be_loaded_is_malformed() -> None:
    """A signature is checked against the signer's certificate: one whose key cannot even be loaded
    is "malformed", naming the certificate, not a crash of the verifier."""
    with pytest.raises(IdentityError) as ei:
        identity.verify_signature(cast(x509.Certificate, _KeylessCertificate()), b"sig", b"payload")
    assert ei.value.reason == "malformed"
    assert str(ei.value) == (
        "[malformed] public key of certificate 'CN=keyless CA' (serial 2a) cannot be loaded: unsupported key"
    )


def test_a_field_longer_than_its_length_prefix_can_say_is_refused_and_the_longest_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 4-byte length prefix bounds a field (else two encodings could collide); the bound is
    lowered here so that both sides of it can be tried without a 4 GiB field."""
    monkeypatch.setattr(kdf, "_MAX_FIELD", 8)
    assert kdf.encode_fields(b"12345678") == (8).to_bytes(4, "big") + b"12345678"
    with pytest.raises(ValueError) as err:
        kdf.encode_fields(b"123456789")
    assert str(err.value) == "field too long for a 4-byte length prefix"


def test_a_naive_validation_time_is_utc_whatever_the_machines_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A naive time given to the verifier means UTC, not the host's local time (else a certificate
    could pass or fail by the machine's time zone)."""
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert identity._utc(datetime(2026, 1, 1, 12, 0)) == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_vector_spec_without_segments_is_refused_saying_so() -> None:
    from secfed.secagg.spec import VectorSpec

    with pytest.raises(ValueError) as err:
        VectorSpec(())
    assert str(err.value) == "a vector spec needs at least one segment"
