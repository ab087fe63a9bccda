"""X.509-SVIDs: issuance from a CSR, and verification against a bundle (X509-SVID.md).

Issuance trusts the CSR for one thing only, the public key, and only after its signature
proves possession of the private key. The SPIFFE ID and DNS names come from the caller's
authorization. Verification does RFC 5280 path validation (pyca's verifier) and the SPIFFE
leaf rules, and says which rule failed.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from ca import templates
from ca.authorities import X509Authority
from ca.errors import InvalidRequest, InvalidSpiffeId, VerificationError
from ca.keys import PrivateKey, PublicKey, check_public_key
from ca.spiffe_id import SpiffeId, TrustDomain

MAX_DNS_NAMES = 32
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True, slots=True)
class X509Svid:
    """An X.509-SVID: the SPIFFE ID, the chain (leaf first) and, when we hold it, the key."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey | None = None

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")

    @property
    def expires_at(self) -> int:
        return int(self.leaf.not_valid_after_utc.timestamp())

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def chain_der(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.chain]


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PKCS#10 CSR (DER or PEM) and check its self-signature (proof of possession)."""
    if not data:
        raise InvalidRequest("CSR is empty")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise InvalidRequest(f"CSR is not a valid PKCS#10 request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported signature algorithm or key type
        raise InvalidRequest(f"CSR signature cannot be checked: {exc}") from None
    if not valid:
        raise InvalidRequest("CSR signature does not verify: proof of possession failed")
    return csr


def check_dns_names(names: Sequence[str]) -> tuple[str, ...]:
    """Validate DNS SANs: hostnames of letters, digits and '-', optionally one leading '*.'."""
    if len(names) > MAX_DNS_NAMES:
        raise InvalidRequest(f"at most {MAX_DNS_NAMES} DNS names per SVID, got {len(names)}")
    for name in names:
        host = name[2:] if name.startswith("*.") else name
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise InvalidRequest(f"invalid DNS name {name!r}")
    return tuple(names)


def sign_x509_svid(
    authority: X509Authority,
    *,
    public_key: PublicKey,
    spiffe_id: SpiffeId,
    dns_names: Sequence[str],
    now: float,
    ttl: float,
) -> X509Svid:
    """Sign a leaf for ``public_key``; notAfter is capped by the authority's own notAfter."""
    if not spiffe_id.is_workload:
        raise InvalidRequest(f"{spiffe_id} has no path; an X.509-SVID needs a workload ID")
    if ttl <= 0:
        raise InvalidRequest(f"TTL must be positive, got {ttl}")
    if now >= authority.not_after:
        raise InvalidRequest(f"authority {authority.authority_id} has expired")
    tbs = templates.leaf_svid_tbs(
        spiffe_id=spiffe_id,
        dns_names=dns_names,
        public_key=public_key,
        issuer=authority.certificate.subject,
        issuer_der=authority.issuer_der,
        authority_key_id=authority.leaf_key_id,
        signature_algorithm=authority.signature_algorithm,
        serial=random_serial(),
        not_before=now,
        not_after=min(now + ttl, authority.not_after),
    )
    der = templates.certificate(tbs, authority.signature_algorithm, authority.sign(tbs))
    certificate = x509.load_der_x509_certificate(der)
    return X509Svid(spiffe_id, (certificate, *authority.chain))


def public_key_of_csr(csr: bytes) -> PublicKey:
    """The public key of a CSR whose signature proves possession of the private key."""
    request = load_csr(csr)
    try:
        return check_public_key(request.public_key())
    except (ValueError, TypeError) as exc:  # e.g. an unsupported or malformed key
        raise InvalidRequest(f"CSR public key is not usable: {exc}") from None


def random_serial() -> int:
    # 128 random bits with the top bit cleared: positive, at most 16 bytes (RFC 5280 4.1.2.2).
    return secrets.randbits(127) | 1


# --- verification -----------------------------------------------------------------------


def spiffe_id_of(certificate: x509.Certificate) -> SpiffeId | None:
    """The certificate's SPIFFE ID, or None if it has no URI SAN; more than one is an error."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) > 1:
        raise VerificationError(
            "x509-svid/one-uri-san", f"certificate has {len(uris)} URI SANs; exactly one allowed"
        )
    if not uris:
        return None
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise VerificationError("x509-svid/spiffe-id", str(exc)) from None


def check_leaf(certificate: x509.Certificate) -> SpiffeId:
    """The SPIFFE rules for a leaf (X509-SVID.md 2-5, 8); returns its SPIFFE ID."""
    spiffe_id = spiffe_id_of(certificate)
    if spiffe_id is None:
        raise VerificationError("x509-svid/one-uri-san", "leaf has no URI SAN")
    if not spiffe_id.is_workload:
        raise VerificationError(
            "x509-svid/leaf-path", f"leaf SPIFFE ID {spiffe_id} has no path (a signing-cert ID)"
        )
    extensions = certificate.extensions
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise VerificationError(
            "x509-svid/basic-constraints", "leaf has no basicConstraints"
        ) from None
    if constraints.ca:
        raise VerificationError("x509-svid/basic-constraints", "leaf has cA=true")
    try:
        usage_ext = extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise VerificationError("x509-svid/key-usage", "leaf has no keyUsage extension") from None
    usage = usage_ext.value
    if not usage_ext.critical:
        raise VerificationError("x509-svid/key-usage", "leaf keyUsage is not critical")
    if not usage.digital_signature:
        raise VerificationError("x509-svid/key-usage", "leaf keyUsage lacks digitalSignature")
    if usage.key_cert_sign:
        raise VerificationError("x509-svid/key-usage", "leaf keyUsage has keyCertSign")
    if usage.crl_sign:
        raise VerificationError("x509-svid/key-usage", "leaf keyUsage has cRLSign")
    if len(certificate.subject) == 0:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName)
        if not san.critical:
            raise VerificationError(
                "x509-svid/san-critical", "subject is empty but the SAN extension is not critical"
            )
    return spiffe_id


def check_signing_certificate(certificate: x509.Certificate) -> None:
    """A signing certificate's SPIFFE ID, if any, has no path (X509-SVID.md 3)."""
    spiffe_id = spiffe_id_of(certificate)
    if spiffe_id is not None and spiffe_id.is_workload:
        raise VerificationError(
            "x509-svid/signing-cert-path",
            f"signing certificate carries workload ID {spiffe_id}",
        )


def verify_x509_svid(
    chain: Sequence[x509.Certificate],
    *,
    trust_domain: TrustDomain,
    roots: Sequence[x509.Certificate],
    now: float,
) -> SpiffeId:
    """Verify ``chain`` (leaf first) against the X.509 authorities of ``trust_domain``."""
    if not chain:
        raise VerificationError("x509-svid/chain", "no certificate presented")
    leaf, *intermediates = chain
    spiffe_id = check_leaf(leaf)
    if not spiffe_id.member_of(trust_domain):
        raise VerificationError(
            "x509-svid/trust-domain",
            f"{spiffe_id} is not in trust domain {trust_domain} (no bundle for it)",
        )
    for certificate in intermediates:
        check_signing_certificate(certificate)
    if not roots:
        raise VerificationError("x509-svid/bundle", f"bundle for {trust_domain} has no roots")
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(roots)))
        .time(dt.datetime.fromtimestamp(now, tz=dt.UTC))
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        raise VerificationError("x509-svid/path-validation", str(exc)) from None
    return spiffe_id
