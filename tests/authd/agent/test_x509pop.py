"""x509pop node attestation's pure core: the chain to the configured CA and the proof."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from authd.nodes import x509pop
from authd.nodes.x509pop import X509PopError
from tests.support.node_certs import NodePki, node_certificate

DER = serialization.Encoding.DER


def test_a_node_certificate_of_the_ca_verifies_and_names_its_fingerprint() -> None:
    pki = NodePki()
    cert, _ = pki.issue("node-1")
    leaf = x509pop.verify_chain([cert.public_bytes(DER)], [pki.root], time.time())
    assert leaf == cert
    assert x509pop.agent_path(cert) == cert.fingerprint(hashes.SHA1()).hex()


def test_a_chain_through_an_intermediate_verifies() -> None:
    pki = NodePki()
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = node_certificate((pki.root, pki.key), "intermediate", inter_key, ca_flag=True)
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = node_certificate((inter, inter_key), "node", node_key)
    chain = [node.public_bytes(DER), inter.public_bytes(DER)]
    assert x509pop.verify_chain(chain, [pki.root], time.time()) == node


def test_a_certificate_of_another_ca_is_refused() -> None:
    cert, _ = NodePki("other").issue("node-1")
    with pytest.raises(X509PopError, match="does not chain"):
        x509pop.verify_chain([cert.public_bytes(DER)], [NodePki().root], time.time())


def test_a_ca_certificate_is_not_a_node_certificate() -> None:
    pki = NodePki()
    with pytest.raises(X509PopError, match="is a CA certificate"):
        x509pop.verify_chain([pki.root.public_bytes(DER)], [pki.root], time.time())


def test_an_expired_node_certificate_is_refused() -> None:
    pki = NodePki()
    cert, _ = pki.issue("node-1")
    with pytest.raises(X509PopError, match="not valid now"):
        x509pop.verify_chain([cert.public_bytes(DER)], [pki.root], time.time() + 10 * 86400)


def test_the_proof_is_the_node_keys_signature_of_the_nonce() -> None:
    pki = NodePki()
    cert, key = pki.issue("node-1")
    nonce = x509pop.new_nonce()
    x509pop.verify_response(cert, nonce, x509pop.sign_challenge(key, nonce))
    with pytest.raises(X509PopError, match="does not verify"):
        x509pop.verify_response(cert, x509pop.new_nonce(), x509pop.sign_challenge(key, nonce))
    _, other_key = pki.issue("node-2")
    with pytest.raises(X509PopError, match="does not verify"):
        x509pop.verify_response(cert, nonce, x509pop.sign_challenge(other_key, nonce))


@given(st.lists(st.binary(max_size=300), max_size=12))
def test_any_bytes_as_a_chain_are_refused_cleanly(chain: list[bytes]) -> None:
    with pytest.raises(X509PopError):
        x509pop.verify_chain(chain, [ROOT], time.time())


@given(st.binary(max_size=200))
def test_any_bytes_as_a_proof_are_refused_cleanly(signature: bytes) -> None:
    with pytest.raises(X509PopError):
        x509pop.verify_response(NODE, b"n" * 32, signature)


_PKI = NodePki()
ROOT = _PKI.root
NODE, _ = _PKI.issue("fixed")
