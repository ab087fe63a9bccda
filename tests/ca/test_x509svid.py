"""X509-SVID.md conformance, both directions.

(a) What the CA issues from a CSR satisfies every MUST, for each CA key type and CSR key type.
(b) What breaks a MUST is refused by ``verify_x509_svid``, naming the rule: the bad leaves are
    forged here with pyca's builder and signed by the CA's real authority key, so the only
    thing wrong with each is the one property under test (a forged leaf with nothing wrong
    verifies, see ``test_forged_leaf_with_nothing_wrong_verifies``).
(c) Bad CSRs and bad requests get ``InvalidRequest`` with a message saying what is wrong.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import templates
from ca.certificate_authority import CASettings, CertificateAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest, VerificationError
from ca.keys import KeyType, signature_hash
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.x509svid import MAX_DNS_NAMES, X509Svid, verify_x509_svid

WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
CA_KEY_TYPES = [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048]
CSR_KEY_TYPES = ["P-256", "P-384", "RSA-2048", "RSA-3072"]
CALLER_DNS = ["web.example.org", "*.web.example.org"]


def utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(timestamp), tz=dt.UTC)


# --- (a) what we issue --------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    ca: CertificateAuthority
    svid: X509Svid
    key: Any  # the CSR's private key
    now: float
    ttl: int

    @property
    def leaf(self) -> x509.Certificate:
        return self.svid.leaf


@pytest.fixture(scope="module", params=CA_KEY_TYPES, ids=lambda k: f"ca-{k.value}")
def matrix_ca(request: pytest.FixtureRequest, open_module_ca: Any, tmp_path_factory: Any) -> Any:
    key_type = request.param
    directory = tmp_path_factory.mktemp(f"ca-{key_type.value}")
    return open_module_ca(directory, clock=FakeClock(), settings=CASettings(key_type=key_type))


@pytest.fixture(params=CSR_KEY_TYPES, ids=lambda k: f"csr-{k}")
def issued(request: pytest.FixtureRequest, matrix_ca: Any, key: Any, make_csr: Any) -> Issued:
    """An SVID issued from a CSR that asks for other names than the caller grants."""
    csr_key = key(request.param)
    csr = make_csr(
        csr_key,
        common_name="evil.example.com",
        dns_names=["evil.example.com"],
        uris=["spiffe://example.org/admin"],
    )
    ttl = 1800
    svid = matrix_ca.issue_x509_svid(
        csr, spiffe_id=WORKLOAD, dns_names=CALLER_DNS, ttl=ttl, requester="test"
    )
    return Issued(matrix_ca, svid, csr_key, matrix_ca.clock.now(), ttl)


def test_issued_leaf_has_exactly_one_uri_san_equal_to_the_requested_id(issued: Issued) -> None:
    san = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(WORKLOAD)]
    assert issued.svid.spiffe_id == WORKLOAD


def test_issued_leaf_carries_the_callers_dns_names_not_the_csrs(issued: Issued) -> None:
    san = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == CALLER_DNS
    assert len(list(san)) == 1 + len(CALLER_DNS)


def test_issued_leaf_subject_ignores_the_csr_subject(issued: Issued) -> None:
    subject = issued.leaf.subject
    assert "evil" not in subject.rfc4514_string()
    common_names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in common_names] == [CALLER_DNS[0]]


def test_issued_leaf_certifies_the_csr_public_key(issued: Issued) -> None:
    assert issued.leaf.public_key() == issued.key.public_key()


def test_issued_leaf_key_usage_is_critical_with_what_the_key_type_needs(issued: Issued) -> None:
    extension = issued.leaf.extensions.get_extension_for_class(x509.KeyUsage)
    usage = extension.value
    assert extension.critical
    assert usage.digital_signature
    is_ec = isinstance(issued.key, ec.EllipticCurvePrivateKey)
    assert usage.key_agreement is is_ec
    assert usage.key_encipherment is not is_ec
    assert not usage.content_commitment
    assert not usage.data_encipherment


def test_issued_leaf_key_usage_never_has_key_cert_sign_or_crl_sign(issued: Issued) -> None:
    usage = issued.leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not usage.key_cert_sign
    assert not usage.crl_sign


def test_issued_leaf_basic_constraints_is_critical_with_ca_false(issued: Issued) -> None:
    extension = issued.leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert extension.critical
    assert extension.value.ca is False
    assert extension.value.path_length is None


def test_issued_leaf_extended_key_usage_is_server_and_client_auth(issued: Issued) -> None:
    eku = issued.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_issued_leaf_subject_key_identifier_is_that_of_the_csr_key(issued: Issued) -> None:
    ski = issued.leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(issued.key.public_key())


def test_issued_leaf_authority_key_identifier_is_the_issuers_ski(issued: Issued) -> None:
    aki = issued.leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer = issued.ca.x509_authority.certificate
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest
    assert aki.authority_cert_issuer is None


def test_issued_leaf_serial_is_positive_and_at_most_20_bytes(issued: Issued) -> None:
    serial = issued.leaf.serial_number
    assert serial > 0
    assert (serial.bit_length() + 8) // 8 <= 20  # DER length including any sign octet


def test_issued_leaf_validity_is_now_plus_ttl_with_backdated_not_before(issued: Issued) -> None:
    assert issued.leaf.not_valid_after_utc == utc(issued.now + issued.ttl)
    assert issued.leaf.not_valid_before_utc == utc(issued.now - templates.BACKDATE_SECONDS)


def test_issued_leaf_is_a_v3_certificate_signed_by_the_authority(issued: Issued) -> None:
    authority = issued.ca.x509_authority.certificate
    assert issued.leaf.version is x509.Version.v3
    assert issued.leaf.issuer == authority.subject
    issued.leaf.verify_directly_issued_by(authority)
    expected_hash = signature_hash(issued.ca.x509_authority.key)
    assert issued.leaf.signature_hash_algorithm is not None
    assert issued.leaf.signature_hash_algorithm.name == expected_hash.name


def test_issued_svid_chain_is_the_leaf_alone_under_a_self_signed_authority(
    issued: Issued,
) -> None:
    # The authority is a root in the bundle; roots do not travel in the chain.
    assert issued.svid.chain == (issued.leaf,)
    assert issued.ca.x509_authority.certificate in issued.ca.bundle.x509_authorities
    pem = x509.load_pem_x509_certificates(issued.svid.chain_pem())
    assert pem == list(issued.svid.chain)
    assert [x509.load_der_x509_certificate(d) for d in issued.svid.chain_der()] == pem


def test_issued_svid_verifies_against_the_ca_bundle(issued: Issued) -> None:
    assert issued.ca.verify_x509_svid(issued.svid.chain) == WORKLOAD
    # and with the leaf alone: the authority is a root in the bundle
    assert issued.ca.verify_x509_svid([issued.leaf]) == WORKLOAD


def test_signing_certificate_is_a_ca_for_the_trust_domain_id_without_path(
    matrix_ca: CertificateAuthority,
) -> None:
    certificate = matrix_ca.x509_authority.certificate
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert not SpiffeId.parse("spiffe://example.org").is_workload


def test_signing_certificate_is_self_signed_with_matching_key_identifiers(
    matrix_ca: CertificateAuthority,
) -> None:
    certificate = matrix_ca.x509_authority.certificate
    certificate.verify_directly_issued_by(certificate)
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert ski == x509.SubjectKeyIdentifier.from_public_key(
        matrix_ca.x509_authority.key.public_key()
    )


def test_serials_are_distinct_across_issuances(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    csr = make_csr(key("P-256"))
    serials = {
        ca.issue_x509_svid(csr, spiffe_id=WORKLOAD, requester="t").leaf.serial_number
        for _ in range(64)
    }
    assert len(serials) == 64


def test_leaf_not_after_is_capped_by_the_authority_not_after(
    ca: CertificateAuthority, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    authority = ca.x509_authority
    life = authority.not_after - authority.record.not_before
    clock.advance(life * 0.8)  # past prepare, before activation: the old authority still signs
    ca.rotate()
    assert ca.x509_authority.authority_id == authority.authority_id
    svid = ca.issue_x509_svid(
        make_csr(key("P-256")),
        spiffe_id=WORKLOAD,
        ttl=ca.settings.max_svid_ttl,
        requester="t",
    )
    assert clock.now() + ca.settings.max_svid_ttl > authority.not_after
    assert svid.leaf.not_valid_after_utc == utc(authority.not_after)
    assert svid.leaf.not_valid_after_utc == authority.certificate.not_valid_after_utc


def test_leaf_issued_just_before_the_authority_expires_ends_with_the_authority(
    ca: CertificateAuthority, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    authority = ca.x509_authority
    clock.set(authority.not_after - 100)  # no rotate(): the same authority still signs
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    assert svid.leaf.not_valid_after_utc == utc(authority.not_after)
    assert ca.verify_x509_svid(svid.chain) == WORKLOAD
    clock.set(authority.not_after)
    with pytest.raises(InvalidRequest, match="has expired"):
        ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")


def test_leaf_default_ttl_is_the_configured_x509_svid_ttl(
    open_ca: Any, tmp_path: Path, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    ca = open_ca(tmp_path, clock=clock, settings=CASettings(x509_svid_ttl=600))
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    assert svid.leaf.not_valid_after_utc == utc(clock.now() + 600)


def test_der_encoded_csr_is_accepted(ca: CertificateAuthority, key: Any, make_csr: Any) -> None:
    csr = make_csr(key("P-256"), encoding=serialization.Encoding.DER)
    assert ca.issue_x509_svid(csr, spiffe_id=WORKLOAD, requester="t").spiffe_id == WORKLOAD


def test_leaf_without_dns_names_has_no_dns_san_and_a_non_empty_subject(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    csr = make_csr(key("P-256"), dns_names=["evil.example.com"])
    leaf = ca.issue_x509_svid(csr, spiffe_id=WORKLOAD, requester="t").leaf
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier(str(WORKLOAD))]
    assert len(leaf.subject) > 0
    assert not san.critical


def test_leaf_template_with_empty_subject_makes_the_san_critical(
    ca: CertificateAuthority, key: Any
) -> None:
    from ca import templates

    authority = ca.x509_authority
    empty = x509.Name([])
    tbs = templates.leaf_svid_tbs(
        spiffe_id=WORKLOAD,
        dns_names=(),
        public_key=key("P-256").public_key(),
        issuer=empty,
        issuer_der=empty.public_bytes(),
        authority_key_id=authority.leaf_key_id,
        signature_algorithm=authority.signature_algorithm,
        serial=7,
        not_before=1_790_000_000,
        not_after=1_790_003_600,
    )
    der = templates.certificate(tbs, authority.signature_algorithm, authority.sign(tbs))
    leaf = x509.load_der_x509_certificate(der)
    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_ca_refuses_an_empty_subject(open_ca: Any, tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(InvalidRequest, match="subject must not be empty"):
        open_ca(tmp_path, clock=clock, settings=CASettings(subject=x509.Name([])))


def test_issued_svids_are_recorded_in_the_issuance_log(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="agent-7")
    ca.issuance_log.flush()
    record = ca.store.get_issuance(svid.serial)
    assert record.spiffe_id == str(WORKLOAD)
    assert record.kind == "x509"
    assert record.requester == "agent-7"
    assert record.authority_id == ca.x509_authority.authority_id
    assert record.not_after == svid.expires_at
    assert int(svid.serial, 16) == svid.leaf.serial_number


# --- (b) what violates a MUST is refused, naming the rule -------------------------------

_LEAF_USAGE: dict[str, bool] = {
    "digital_signature": True,
    "content_commitment": False,
    "key_encipherment": False,
    "data_encipherment": False,
    "key_agreement": True,
    "key_cert_sign": False,
    "crl_sign": False,
    "encipher_only": False,
    "decipher_only": False,
}
_LEAF_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_GARBAGE_PEM = (
    b"-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n"
)


def forge_leaf(
    ca: CertificateAuthority,
    public_key: Any,
    *,
    uris: Sequence[str] = (str(WORKLOAD),),
    dns_names: Sequence[str] = (),
    include_san: bool = True,
    san_critical: bool = False,
    subject: x509.Name | None = None,
    basic_constraints: x509.BasicConstraints | None = _LEAF_CONSTRAINTS,
    key_usage: dict[str, bool] | None = _LEAF_USAGE,
    key_usage_critical: bool = True,
    not_before: float | None = None,
    not_after: float | None = None,
    issuer: tuple[x509.Certificate, Any] | None = None,
) -> x509.Certificate:
    """A leaf signed by the CA's real authority key (or ``issuer``), as the arguments say."""
    issuer_cert, issuer_key = issuer or (ca.x509_authority.certificate, ca.x509_authority.key)
    now = ca.clock.now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject if subject is not None else x509.Name.from_rfc4514_string("O=forged"))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(now - 60 if not_before is None else not_before))
        .not_valid_after(utc(now + 3600 if not_after is None else not_after))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if include_san:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns_names]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
    if basic_constraints is not None:
        builder = builder.add_extension(basic_constraints, critical=True)
    if key_usage is not None:
        builder = builder.add_extension(x509.KeyUsage(**key_usage), critical=key_usage_critical)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def forge_intermediate(
    ca: CertificateAuthority, intermediate_key: Any, *, spiffe_id: str
) -> x509.Certificate:
    """An intermediate CA under the CA's authority, carrying ``spiffe_id`` as its URI SAN."""
    authority = ca.x509_authority
    now = ca.clock.now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=intermediate"))
        .issuer_name(authority.certificate.subject)
        .public_key(intermediate_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(now - 60))
        .not_valid_after(utc(now + 7200))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(**{**_LEAF_USAGE, "key_agreement": False, "key_cert_sign": True}),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(intermediate_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, signature_hash(authority.key))
    )


def rule_of(ca: CertificateAuthority, chain: Sequence[x509.Certificate]) -> str:
    with pytest.raises(VerificationError) as caught:
        ca.verify_x509_svid(chain)
    return caught.value.rule


@pytest.fixture
def leaf_key(key: Any) -> Any:
    return key("P-256").public_key()


def test_forged_leaf_with_nothing_wrong_verifies(ca: CertificateAuthority, leaf_key: Any) -> None:
    assert ca.verify_x509_svid([forge_leaf(ca, leaf_key)]) == WORKLOAD


def test_leaf_svid_rejects_second_uri_san(ca: CertificateAuthority, leaf_key: Any) -> None:
    leaf = forge_leaf(ca, leaf_key, uris=[str(WORKLOAD), "spiffe://example.org/other"])
    assert rule_of(ca, [leaf]) == "x509-svid/one-uri-san"


def test_leaf_svid_rejects_second_uri_san_even_if_not_spiffe(
    ca: CertificateAuthority, leaf_key: Any
) -> None:
    leaf = forge_leaf(ca, leaf_key, uris=[str(WORKLOAD), "https://example.org/"])
    assert rule_of(ca, [leaf]) == "x509-svid/one-uri-san"


def test_leaf_svid_rejects_san_without_uri(ca: CertificateAuthority, leaf_key: Any) -> None:
    leaf = forge_leaf(ca, leaf_key, uris=[], dns_names=["web.example.org"])
    assert rule_of(ca, [leaf]) == "x509-svid/one-uri-san"


def test_leaf_svid_rejects_missing_san_extension(ca: CertificateAuthority, leaf_key: Any) -> None:
    assert rule_of(ca, [forge_leaf(ca, leaf_key, include_san=False)]) == "x509-svid/one-uri-san"


def test_leaf_svid_rejects_uri_san_that_is_not_a_spiffe_id(
    ca: CertificateAuthority, leaf_key: Any
) -> None:
    leaf = forge_leaf(ca, leaf_key, uris=["spiffe://example.org/bad path"])
    assert rule_of(ca, [leaf]) == "x509-svid/spiffe-id"


def test_leaf_svid_rejects_trust_domain_id_without_path(
    ca: CertificateAuthority, leaf_key: Any
) -> None:
    leaf = forge_leaf(ca, leaf_key, uris=["spiffe://example.org"])
    assert rule_of(ca, [leaf]) == "x509-svid/leaf-path"


def test_leaf_svid_rejects_ca_true(ca: CertificateAuthority, leaf_key: Any) -> None:
    leaf = forge_leaf(ca, leaf_key, basic_constraints=x509.BasicConstraints(True, None))
    assert rule_of(ca, [leaf]) == "x509-svid/basic-constraints"


@pytest.mark.parametrize("usage", ["key_cert_sign", "crl_sign"])
def test_leaf_svid_rejects_signing_key_usages(
    ca: CertificateAuthority, leaf_key: Any, usage: str
) -> None:
    leaf = forge_leaf(ca, leaf_key, key_usage={**_LEAF_USAGE, usage: True})
    assert rule_of(ca, [leaf]) == "x509-svid/key-usage"


def test_leaf_svid_rejects_non_critical_key_usage(ca: CertificateAuthority, leaf_key: Any) -> None:
    leaf = forge_leaf(ca, leaf_key, key_usage_critical=False)
    assert rule_of(ca, [leaf]) == "x509-svid/key-usage"


def test_leaf_svid_rejects_missing_key_usage(ca: CertificateAuthority, leaf_key: Any) -> None:
    assert rule_of(ca, [forge_leaf(ca, leaf_key, key_usage=None)]) == "x509-svid/key-usage"


def test_leaf_svid_rejects_key_usage_without_digital_signature(
    ca: CertificateAuthority, leaf_key: Any
) -> None:
    leaf = forge_leaf(ca, leaf_key, key_usage={**_LEAF_USAGE, "digital_signature": False})
    assert rule_of(ca, [leaf]) == "x509-svid/key-usage"


def test_leaf_svid_rejects_empty_subject_with_non_critical_san(
    ca: CertificateAuthority, leaf_key: Any
) -> None:
    leaf = forge_leaf(ca, leaf_key, subject=x509.Name([]), san_critical=False)
    assert rule_of(ca, [leaf]) == "x509-svid/san-critical"


def test_leaf_svid_with_empty_subject_and_critical_san_verifies(
    ca: CertificateAuthority, leaf_key: Any
) -> None:
    leaf = forge_leaf(ca, leaf_key, subject=x509.Name([]), san_critical=True)
    assert ca.verify_x509_svid([leaf]) == WORKLOAD


def test_leaf_svid_rejects_expired_leaf(
    ca: CertificateAuthority, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, ttl=600, requester="t")
    clock.advance(600)
    assert ca.verify_x509_svid(svid.chain) == WORKLOAD  # notAfter itself is still valid
    clock.advance(1)
    assert rule_of(ca, svid.chain) == "x509-svid/path-validation"


def test_leaf_svid_rejects_not_yet_valid_leaf(ca: CertificateAuthority, leaf_key: Any) -> None:
    now = ca.clock.now()
    leaf = forge_leaf(ca, leaf_key, not_before=now + 60, not_after=now + 3600)
    assert rule_of(ca, [leaf]) == "x509-svid/path-validation"


def test_leaf_svid_rejects_tampered_signature(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    der = bytearray(svid.leaf.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    tampered = x509.load_der_x509_certificate(bytes(der))
    assert rule_of(ca, [tampered]) == "x509-svid/path-validation"


def test_leaf_svid_rejects_leaf_signed_by_foreign_ca(
    ca: CertificateAuthority,
    open_ca: Any,
    tmp_path: Path,
    clock: FakeClock,
    key: Any,
    make_csr: Any,
) -> None:
    foreign = open_ca(tmp_path / "foreign", clock=clock)  # same trust domain name, other keys
    svid = foreign.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    assert foreign.verify_x509_svid(svid.chain) == WORKLOAD
    assert rule_of(ca, svid.chain) == "x509-svid/path-validation"
    assert rule_of(ca, [svid.leaf]) == "x509-svid/path-validation"


def test_leaf_svid_rejects_other_trust_domain(ca: CertificateAuthority, leaf_key: Any) -> None:
    leaf = forge_leaf(ca, leaf_key, uris=["spiffe://example.com/ns/prod/sa/web"])
    assert rule_of(ca, [leaf]) == "x509-svid/trust-domain"


def test_verify_rejects_intermediate_carrying_a_workload_id(
    ca: CertificateAuthority, key: Any, leaf_key: Any
) -> None:
    intermediate_key = key("P-384")
    bad = forge_intermediate(ca, intermediate_key, spiffe_id="spiffe://example.org/intermediate")
    leaf = forge_leaf(ca, leaf_key, issuer=(bad, intermediate_key))
    assert rule_of(ca, [leaf, bad]) == "x509-svid/signing-cert-path"


def test_verify_accepts_intermediate_carrying_the_trust_domain_id(
    ca: CertificateAuthority, key: Any, leaf_key: Any
) -> None:
    intermediate_key = key("P-384")
    good = forge_intermediate(ca, intermediate_key, spiffe_id="spiffe://example.org")
    leaf = forge_leaf(ca, leaf_key, issuer=(good, intermediate_key))
    assert ca.verify_x509_svid([leaf, good]) == WORKLOAD
    assert rule_of(ca, [leaf]) == "x509-svid/path-validation"  # the intermediate is needed


def test_verify_rejects_signing_certificate_presented_as_leaf(ca: CertificateAuthority) -> None:
    authority = ca.x509_authority.certificate
    assert rule_of(ca, [authority]) == "x509-svid/leaf-path"


def test_verify_rejects_empty_chain(ca: CertificateAuthority) -> None:
    assert rule_of(ca, []) == "x509-svid/chain"


def test_verify_rejects_when_bundle_has_no_roots(ca: CertificateAuthority, leaf_key: Any) -> None:
    with pytest.raises(VerificationError) as caught:
        verify_x509_svid(
            [forge_leaf(ca, leaf_key)],
            trust_domain=ca.trust_domain,
            roots=[],
            now=ca.clock.now(),
        )
    assert caught.value.rule == "x509-svid/bundle"


def test_verify_checks_against_the_roots_of_the_given_trust_domain_only(
    ca: CertificateAuthority, leaf_key: Any
) -> None:
    leaf = forge_leaf(ca, leaf_key)
    with pytest.raises(VerificationError) as caught:
        verify_x509_svid(
            [leaf],
            trust_domain=TrustDomain("example.com"),
            roots=ca.bundle.x509_authorities,
            now=ca.clock.now(),
        )
    assert caught.value.rule == "x509-svid/trust-domain"


# --- (c) bad requests -------------------------------------------------------------------


def _issue(ca: CertificateAuthority, csr: bytes, **kwargs: Any) -> X509Svid:
    kwargs.setdefault("spiffe_id", WORKLOAD)
    return ca.issue_x509_svid(csr, requester="t", **kwargs)


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"", "CSR is empty"),
        (b"\x00\x01\x02garbage that is not DER", "not a valid PKCS#10"),
        (_GARBAGE_PEM, "not a valid PKCS#10"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n", "not a valid PKCS#10"),
    ],
    ids=["empty", "garbage", "pem-with-garbage", "pem-unterminated"],
)
def test_unparseable_csr_is_rejected(ca: CertificateAuthority, csr: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        _issue(ca, csr)


def test_truncated_der_csr_is_rejected(ca: CertificateAuthority, key: Any, make_csr: Any) -> None:
    der = make_csr(key("P-256"), encoding=serialization.Encoding.DER)
    with pytest.raises(InvalidRequest, match="not a valid PKCS#10"):
        _issue(ca, der[:-12])


def test_certificate_instead_of_csr_is_rejected(ca: CertificateAuthority) -> None:
    pem = ca.x509_authority.certificate.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidRequest, match="not a valid PKCS#10"):
        _issue(ca, pem)


@pytest.mark.parametrize("key_name", ["P-256", "RSA-2048"])
def test_csr_with_tampered_signature_fails_proof_of_possession(
    ca: CertificateAuthority, key: Any, make_csr: Any, key_name: str
) -> None:
    der = bytearray(make_csr(key(key_name), encoding=serialization.Encoding.DER))
    der[-1] ^= 0x01  # inside the signature value
    with pytest.raises(InvalidRequest, match="proof of possession failed"):
        _issue(ca, bytes(der))


def test_csr_for_another_key_fails_proof_of_possession(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    # A CSR whose public key is swapped for someone else's: the signature no longer matches.
    victim = make_csr(key("P-256"), encoding=serialization.Encoding.DER)
    attacker = make_csr(key.fresh("P-256"), encoding=serialization.Encoding.DER)
    victim_spki = (
        key("P-256")
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    attacker_key = x509.load_der_x509_csr(attacker).public_key()
    attacker_spki = attacker_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert victim.count(victim_spki) == 1
    swapped = victim.replace(victim_spki, attacker_spki)
    with pytest.raises(InvalidRequest, match="proof of possession failed"):
        _issue(ca, swapped)


@pytest.mark.parametrize(
    ("key_name", "message"),
    [
        ("RSA-1024", "RSA key of 1024 bits is too weak"),
        ("secp256k1", "curve secp256k1 is not supported"),
        ("Ed25519", "Ed25519.* not supported"),
    ],
)
def test_csr_with_unacceptable_key_is_rejected(
    ca: CertificateAuthority, key: Any, make_csr: Any, key_name: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        _issue(ca, make_csr(key(key_name)))


@pytest.mark.parametrize(
    "name",
    ["-bad", "bad-.example.org", "a..b", "with space", "under_score.example.org", "", "é.org"],
)
def test_invalid_dns_name_is_rejected(
    ca: CertificateAuthority, key: Any, make_csr: Any, name: str
) -> None:
    with pytest.raises(InvalidRequest, match="invalid DNS name"):
        _issue(ca, make_csr(key("P-256")), dns_names=[name])


def test_label_longer_than_63_characters_is_rejected(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    with pytest.raises(InvalidRequest, match="invalid DNS name"):
        _issue(ca, make_csr(key("P-256")), dns_names=["a" * 64 + ".example.org"])


@pytest.mark.parametrize("length", [64, 65, 200, 253])
def test_valid_dns_name_up_to_253_characters_is_issued_in_the_san(
    ca: CertificateAuthority, key: Any, make_csr: Any, length: int
) -> None:
    # Labels of at most 63 characters: a valid hostname, but longer than a CN may be (64).
    name = (("a" * 62 + ".") * 5)[:length]
    name = name[:-1] + "b" if name.endswith(".") else name
    assert len(name) == length
    leaf = _issue(ca, make_csr(key("P-256")), dns_names=[name]).leaf
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [name]


def test_too_many_dns_names_are_rejected(ca: CertificateAuthority, key: Any, make_csr: Any) -> None:
    names = [f"h{i}.example.org" for i in range(MAX_DNS_NAMES + 1)]
    with pytest.raises(InvalidRequest, match=f"at most {MAX_DNS_NAMES} DNS names"):
        _issue(ca, make_csr(key("P-256")), dns_names=names)


def test_ttl_above_the_ca_limit_is_rejected(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    limit = ca.settings.max_svid_ttl
    assert _issue(ca, make_csr(key("P-256")), ttl=limit).leaf  # the limit itself is fine
    with pytest.raises(InvalidRequest, match=f"exceeds the CA's limit of {limit}s"):
        _issue(ca, make_csr(key("P-256")), ttl=limit + 1)


def test_negative_ttl_is_rejected(ca: CertificateAuthority, key: Any, make_csr: Any) -> None:
    with pytest.raises(InvalidRequest, match="TTL must be positive"):
        _issue(ca, make_csr(key("P-256")), ttl=-5)


def test_spiffe_id_of_another_trust_domain_is_rejected(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    other = SpiffeId.parse("spiffe://example.com/w")
    with pytest.raises(InvalidRequest, match=r"not in this CA's trust domain example\.org"):
        _issue(ca, make_csr(key("P-256")), spiffe_id=other)


def test_trust_domain_id_without_path_is_rejected(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    with pytest.raises(InvalidRequest, match="has no path"):
        _issue(ca, make_csr(key("P-256")), spiffe_id=SpiffeId.parse("spiffe://example.org"))


def test_rejected_requests_leave_no_issuance_record(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    good_csr = make_csr(key("P-256"))
    for bad in (
        lambda: _issue(ca, b""),
        lambda: _issue(ca, make_csr(key("RSA-1024"))),
        lambda: _issue(ca, good_csr, dns_names=["-bad"]),
        lambda: _issue(ca, good_csr, ttl=10**9),
    ):
        with pytest.raises(InvalidRequest):
            bad()
    svid = _issue(ca, good_csr)
    ca.issuance_log.flush()
    assert [r.serial for r in ca.store.list_issuances()] == [svid.serial]


def test_rsa_leaf_key_usage_has_key_encipherment_not_key_agreement(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    leaf = _issue(ca, make_csr(key("RSA-2048"))).leaf
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment
    assert not usage.key_agreement
