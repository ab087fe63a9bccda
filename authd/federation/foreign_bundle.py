"""A foreign trust domain's bundle as its endpoint served it: hostile input until checked.

``parse_foreign_bundle`` accepts a SPIFFE bundle (JWKS) only if it is at most
``MAX_BUNDLE_BYTES``, breaks no MUST of the SPIFFE Trust Domain and Bundle spec (the parser
of ``ca.bundle``), holds at least one X.509 authority, every authority is a CA certificate,
and no authority names another trust domain in its SPIFFE ID (a bundle endpoint serving the
bundle of some other trust domain is refused, not trusted under this name). Every refusal is
one ``ForeignBundleError`` whose message says why, in one line.
"""

from __future__ import annotations

from cryptography import x509

from ca.bundle import TrustBundle
from ca.errors import VerificationError
from ca.spiffe_id import TrustDomain
from ca.x509svid import spiffe_id_of

__all__ = ["MAX_BUNDLE_BYTES", "ForeignBundleError", "parse_bootstrap", "parse_foreign_bundle"]

MAX_BUNDLE_BYTES = 1024 * 1024


class ForeignBundleError(Exception):
    """A foreign bundle (or its endpoint) is refused; the message is one line saying why."""


def parse_foreign_bundle(data: bytes, trust_domain: TrustDomain) -> TrustBundle:
    """The bundle of ``trust_domain`` in ``data``; ``ForeignBundleError`` if it is refused."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise ForeignBundleError(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        bundle = TrustBundle.parse(data, trust_domain)
    except VerificationError as exc:
        raise ForeignBundleError(f"invalid bundle: {exc}") from None
    except (RecursionError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
        raise ForeignBundleError(f"invalid bundle: {type(exc).__name__}") from None
    _check_authorities(bundle, trust_domain)
    if bundle.sequence < 0 or bundle.refresh_hint < 0:
        raise ForeignBundleError(
            "invalid bundle: spiffe_sequence and spiffe_refresh_hint must not be negative"
        )
    return bundle


def parse_bootstrap(data: bytes, trust_domain: TrustDomain) -> TrustBundle:
    """A bootstrap bundle from a file: a SPIFFE bundle (JSON) or PEM roots."""
    if data.lstrip().startswith(b"{"):
        return parse_foreign_bundle(data, trust_domain)
    try:
        roots = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ForeignBundleError(f"neither a SPIFFE bundle nor PEM roots: {exc}") from None
    bundle = TrustBundle(trust_domain, roots, {}, 0, 0)
    _check_authorities(bundle, trust_domain)
    return bundle


def _check_authorities(bundle: TrustBundle, trust_domain: TrustDomain) -> None:
    if not bundle.x509_authorities:
        raise ForeignBundleError("bundle holds no X.509 authority")
    for index, certificate in enumerate(bundle.x509_authorities):
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        except ValueError as exc:
            raise ForeignBundleError(f"authority {index} cannot be read: {exc}") from None
        if not is_ca:
            raise ForeignBundleError(f"authority {index} is not a CA certificate")
        try:
            named = spiffe_id_of(certificate)
        except (ValueError, VerificationError):
            named = None
        if named is not None and named.trust_domain != trust_domain:
            raise ForeignBundleError(
                f"bundle is of trust domain {named.trust_domain}, not {trust_domain}"
            )
