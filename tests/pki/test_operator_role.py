"""Operator certificates and kits: one certificate, one role.

An operator reads a running coordinator's status; it must never pass for an institution (it would
join rounds and see what members see), and an institution must never pass for an operator (it would
see who else is slow, refused or excluded). The role lives in the SAN URI, read in one place each
(:func:`client_id_of`, :func:`operator_name_of`); a certificate naming both roles is refused by both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from secfed import cli
from secfed.crypto.identity import (
    CLIENT_URI_PREFIX,
    OPERATOR_URI_PREFIX,
    IdentityError,
    TrustAnchor,
    client_id_of,
    operator_name_of,
)
from secfed.pki import (
    CertificateAuthority,
    check_kit,
    create_ca,
    issue_client,
    issue_operator,
    issue_server,
    load_kit,
)
from secfed.pki.kit import KitError
from tests.pki.test_identity import _leaf_with_san


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("operator test CA")


def test_an_operator_certificate_verifies_as_an_operator_and_never_as_a_client(
    ca: CertificateAuthority,
) -> None:
    ops = issue_operator(ca, "night-shift")
    anchor = TrustAnchor(ca.certificate)
    assert anchor.verify_operator(ops.chain_der()) == "night-shift"
    assert operator_name_of(ops.certificate) == "night-shift"
    with pytest.raises(IdentityError) as err:
        anchor.verify_client(ops.chain_der())
    assert err.value.reason == "no-client-uri"
    validity = ops.certificate.not_valid_after_utc - ops.certificate.not_valid_before_utc
    assert validity.days == 90  # a person's access: shorter than an institution's year


def test_an_institution_certificate_is_no_operator(ca: CertificateAuthority) -> None:
    alice = issue_client(ca, "alice")
    with pytest.raises(IdentityError) as err:
        TrustAnchor(ca.certificate).verify_operator(alice.chain_der())
    assert err.value.reason == "no-operator-uri"
    assert f"no SAN URI starting with {OPERATOR_URI_PREFIX!r}" in str(err.value)


def test_a_certificate_naming_both_roles_is_refused_by_both(ca: CertificateAuthority) -> None:
    both = _leaf_with_san(
        ca,
        [
            x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + "alice"),
            x509.UniformResourceIdentifier(OPERATOR_URI_PREFIX + "alice"),
        ],
    )
    for read in (client_id_of, operator_name_of):
        with pytest.raises(IdentityError) as err:
            read(both.certificate)
        assert err.value.reason == "role-mismatch"


@pytest.mark.parametrize(
    ("client_uri", "operator_uri"),
    [
        ("URN:SECFED:CLIENT:alice", OPERATOR_URI_PREFIX + "ops"),
        (CLIENT_URI_PREFIX + "alice", "urn:SecFed:Operator:ops"),
    ],
)
def test_the_role_of_a_urn_does_not_depend_on_its_case(
    ca: CertificateAuthority, client_uri: str, operator_uri: str
) -> None:
    """A URN's scheme and namespace are case-insensitive (RFC 8141): an upper-case client URI beside an
    operator URI is still two roles, which another tool comparing URNs properly would see."""
    both = _leaf_with_san(
        ca, [x509.UniformResourceIdentifier(client_uri), x509.UniformResourceIdentifier(operator_uri)]
    )
    for read in (client_id_of, operator_name_of):
        with pytest.raises(IdentityError) as err:
            read(both.certificate)
        assert err.value.reason == "role-mismatch"
    upper = _leaf_with_san(ca, [x509.UniformResourceIdentifier("URN:SECFED:OPERATOR:Ops")])
    assert operator_name_of(upper.certificate) == "Ops"  # the id keeps its case


def test_an_operator_certificate_refused_by_the_verifier_is_explained_as_an_operator(
    ca: CertificateAuthority,
) -> None:
    anchor = TrustAnchor(ca.certificate)
    with pytest.raises(IdentityError) as err:
        anchor.verify_operator(_leaf_with_san(ca, None).chain_der())
    assert err.value.reason == "no-operator-uri" and "operator certificate" in str(err.value)
    with pytest.raises(IdentityError) as err:
        anchor.verify_operator(issue_server(ca).chain_der())
    assert err.value.reason == "bad-eku" and "not valid for clientAuth" in str(err.value)


@pytest.mark.parametrize(
    ("uris", "detail"),
    [
        ([OPERATOR_URI_PREFIX + "a", OPERATOR_URI_PREFIX + "b"], "has 2 operator URIs"),
        ([OPERATOR_URI_PREFIX + "bad name"], "carries operator id 'bad name'"),
    ],
)
def test_an_operator_name_must_be_one_valid_name(
    ca: CertificateAuthority, uris: list[str], detail: str
) -> None:
    odd = _leaf_with_san(ca, [x509.UniformResourceIdentifier(u) for u in uris])
    with pytest.raises(IdentityError) as err:
        operator_name_of(odd.certificate)
    assert err.value.reason == "no-operator-uri" and detail in str(err.value)
    with pytest.raises(IdentityError, match="no subjectAltName, so no operator id"):
        operator_name_of(_leaf_with_san(ca, None).certificate)


def test_operator_names_use_the_id_alphabet(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="not a valid operator name"):
        issue_operator(ca, "a/b")


def test_an_operator_kit_from_the_cli_loads_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "ca"
    assert cli.main(["certs", "init-ca", "--out", str(pki)]) == 0
    out = tmp_path / "ops"
    args = ["certs", "issue", "--ca", str(pki), "--operator", "ops", "--name", "Ops desk"]
    assert cli.main([*args, "--server-address", "127.0.0.1:8443", "--out", str(out)]) == 0
    assert "secfed status --operator" in capsys.readouterr().out
    kit = load_kit(out)
    assert (kit.role, kit.operator_name, kit.client_id, kit.server_address) == (
        "operator",
        "ops",
        "",
        "127.0.0.1:8443",
    )
    report = check_kit(out)
    assert report.ok, report.problems
    assert report.summary.startswith("operator kit 'ops'")
    # kit.toml naming another operator than the certificate: refused on load, explained by check.
    toml = (out / "kit.toml").read_text()
    (out / "kit.toml").write_text(toml.replace('id = "ops"', 'id = "someone"'))
    with pytest.raises(KitError, match="the certificate is for operator 'ops'"):
        load_kit(out)
    assert any("certificate is for operator 'ops'" in p for p in check_kit(out).problems)


def test_a_client_certificate_copied_into_an_operator_kit_is_refused(tmp_path: Path) -> None:
    pki = tmp_path / "ca"
    assert cli.main(["certs", "init-ca", "--out", str(pki)]) == 0
    assert (
        cli.main(["certs", "issue", "--ca", str(pki), "--operator", "ops", "--out", str(tmp_path / "ops")])
        == 0
    )
    assert (
        cli.main(["certs", "issue", "--ca", str(pki), "--client", "ops", "--out", str(tmp_path / "c")]) == 0
    )
    for name in ("cert.pem", "key.pem"):
        (tmp_path / "ops" / name).write_bytes((tmp_path / "c" / name).read_bytes())
    with pytest.raises(KitError, match="no-operator-uri"):
        load_kit(tmp_path / "ops")
    assert any("no usable operator id" in p for p in check_kit(tmp_path / "ops").problems)


def test_each_refusal_of_a_role_id_says_exactly_what_is_wrong(ca: CertificateAuthority) -> None:
    """The reason code is what callers branch and count on, the message what an operator reads."""
    from secfed.crypto.identity import describe

    cases: list[tuple[list[str] | None, str, str]] = [
        (None, "no-operator-uri", "has no subjectAltName, so no operator id"),
        (["https://example.org"], "no-operator-uri", f"has no SAN URI starting with {OPERATOR_URI_PREFIX!r}"),
        (
            [OPERATOR_URI_PREFIX + "a", OPERATOR_URI_PREFIX + "b"],
            "no-operator-uri",
            f"has 2 operator URIs {[OPERATOR_URI_PREFIX + 'a', OPERATOR_URI_PREFIX + 'b']!r}; exactly one is required",
        ),
        (
            [OPERATOR_URI_PREFIX + "a", CLIENT_URI_PREFIX + "b"],
            "role-mismatch",
            "names the operator role and another one; a certificate has one role",
        ),
        (
            [OPERATOR_URI_PREFIX + "a b"],
            "no-operator-uri",
            "carries operator id 'a b', which is not a valid operator id ([A-Za-z0-9._-]{1,64})",
        ),
    ]
    for uris, reason, detail in cases:
        leaf = _leaf_with_san(ca, None if uris is None else [x509.UniformResourceIdentifier(u) for u in uris])
        with pytest.raises(IdentityError) as err:
            operator_name_of(leaf.certificate)
        assert (err.value.reason, str(err.value)) == (
            reason,
            f"[{reason}] certificate {describe(leaf.certificate)} {detail}",
        )


@pytest.mark.parametrize(
    ("uri", "normalised"),
    [
        ("URN:SECFED:OPERATOR:Ops", "urn:secfed:operator:Ops"),
        ("URN:SecFed:Client:A:B", "urn:secfed:client:A:B"),  # only scheme, namespace and role
        ("HTTPS://Example.org", "HTTPS://Example.org"),  # not a URN of three parts and an id: kept
        ("URN:SECFED:CLIENT", "URN:SECFED:CLIENT"),
    ],
)
def test_only_the_case_insensitive_parts_of_a_role_urn_are_folded(uri: str, normalised: str) -> None:
    from secfed.crypto.identity import _urn_case

    assert _urn_case(uri) == normalised
