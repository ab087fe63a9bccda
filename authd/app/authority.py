"""The CA's side of start-up: the data directory, the upstream CA, and the authority itself.

A data directory (or shared store) belongs to one trust domain: its authorities' certificates
name it. Starting with another ``trust_domain`` would serve that name with the old
authorities, so it is refused with a line that says how to move.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authd.app.errors import StartupError
from authd.app.loop_dispatch import Notify
from authd.config.model import Config
from ca.certificate_authority import CASettings, CertificateAuthority, UpstreamAuthority
from ca.clock import Clock
from ca.key_wrap import KeyUnwrapError
from ca.keys import KeyStore, KeyType
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import Store

__all__ = [
    "ca_settings",
    "check_trust_domain",
    "load_upstream",
    "open_authority",
    "prepare_data_dir",
]


def prepare_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` (0711) or fix its mode."""
    try:
        # 0711: others may reach the admin socket by name (the API checks their uid) but
        # not list the directory; keys/ and private/ are 0700, the store files 0600.
        data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(data_dir, 0o711)  # noqa: S103 - deliberate, see above
    except OSError as exc:
        raise StartupError(f"cannot use data directory {data_dir}: {exc}") from None


def ca_settings(config: Config) -> CASettings:
    ca = config.ca
    return CASettings(
        key_type=KeyType.parse(ca.key_type),
        jwt_key_type=KeyType.parse(ca.jwt_key_type),
        ca_ttl=ca.ca_ttl,
        x509_svid_ttl=ca.x509_svid_ttl,
        jwt_svid_ttl=ca.jwt_svid_ttl,
        subject=ca.subject_name,
        refresh_hint=ca.bundle_refresh_hint,
    )


def load_upstream(config: Config) -> UpstreamAuthority | None:
    """The upstream CA from ``ca.upstream_cert``/``upstream_key``/``upstream_bundle``, if set."""
    cert_path, key_path = config.upstream_cert_path, config.upstream_key_path
    if cert_path is None or key_path is None:
        return None
    bundle_path = config.upstream_bundle_path or cert_path
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        roots = tuple(x509.load_pem_x509_certificates(bundle_path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot load the upstream CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise StartupError("ca.upstream_key must be an EC or RSA private key")
    if key.public_key() != certificate.public_key():
        raise StartupError("ca.upstream_key does not match ca.upstream_cert")
    return UpstreamAuthority(certificate, key, roots)


def stored_trust_domain(store: Store) -> str | None:
    """The trust domain the store's X.509 authorities were made for; None if it has none."""
    for record in store.list_authorities("x509"):
        try:
            certificate = x509.load_der_x509_certificate(record.certificate_der)
            sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
            return SpiffeId.parse(uris[0]).trust_domain.name
        except (ValueError, IndexError, x509.ExtensionNotFound):
            continue
    return None


def check_trust_domain(config: Config, store: Store) -> None:
    """Refuse to serve ``config.trust_domain`` from a store made for another trust domain."""
    stored = stored_trust_domain(store)
    if stored is None or stored == config.trust_domain:
        return
    where = (
        f"data directory {config.data_dir}"
        if config.store.url.startswith("sqlite://")
        else "the shared store"
    )
    raise StartupError(
        f"{where} holds the authorities of trust domain {stored}, not {config.trust_domain}: "
        f'keep trust_domain = "{stored}", or serve {config.trust_domain} from a new data '
        f"directory and store, re-create the entries there, and federate with {stored} "
        f"while workloads move"
    )


def open_authority(
    config: Config,
    store: Store,
    clock: Clock,
    upstream: UpstreamAuthority | None,
    notify: Notify | None = None,
    store_trusted: Callable[[], bool] = lambda: True,
    keystore: KeyStore | None = None,
    fence: Callable[[], int | None] | None = None,
) -> CertificateAuthority:
    """The CA on ``store``, creating its first authorities if the store has none.

    ``notify`` says how the CA calls its listeners (see ``authd.app.loop_dispatch``);
    while ``store_trusted()`` is false (the store went backwards) no authority is made.
    ``keystore`` and ``fence`` come from ``authd.app.high_availability`` when replicas share
    the keys.
    """
    check_trust_domain(config, store)
    try:
        return _certificate_authority(
            config, store, clock, upstream, notify, store_trusted, keystore, fence
        )
    except KeyUnwrapError as exc:  # another replica's KEK: one line, not a traceback
        raise StartupError(str(exc)) from None


def _certificate_authority(
    config: Config,
    store: Store,
    clock: Clock,
    upstream: UpstreamAuthority | None,
    notify: Notify | None,
    store_trusted: Callable[[], bool],
    keystore: KeyStore | None,
    fence: Callable[[], int | None] | None,
) -> CertificateAuthority:
    return CertificateAuthority(
        trust_domain=TrustDomain.parse(config.trust_domain),
        store=store,
        keystore=keystore or KeyStore(config.data_dir / "keys"),
        clock=clock,
        settings=ca_settings(config),
        upstream=upstream,
        rotates=config.ca.rotates,
        notify=notify,
        store_trusted=store_trusted,
        fence=fence,
    )
