"""The certificate chain a TLS client presented, read out of a gRPC call's auth context."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cryptography import x509

__all__ = ["client_chain"]


def client_chain(auth_context: Mapping[str, Iterable[bytes]]) -> list[x509.Certificate] | None:
    """The certificate chain (leaf first) a TLS client presented, from a call's auth context.

    None when the call did not come over TLS. Only what the peer sent: it is not yet
    verified, so nothing in it may be believed before the CA has checked the chain.
    """
    if b"ssl" not in list(auth_context.get("transport_security_type", ())):
        return None
    leaves = [cert for pem in auth_context.get("x509_pem_cert", ()) for cert in _certificates(pem)]
    if len(leaves) != 1:
        return []
    leaf = leaves[0]
    # grpc lists the intermediates the client sent; whether the leaf is among them differs
    # between TLS stacks and sides, so it is dropped here and put first.
    intermediates = [
        cert
        for pem in auth_context.get("x509_pem_cert_chain", ())
        for cert in _certificates(pem)
        if cert != leaf
    ]
    return [leaf, *intermediates]


def _certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []
