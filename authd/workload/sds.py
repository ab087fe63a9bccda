"""Envoy SDS (``envoy.service.secret.v3.SecretDiscoveryService``) for the attested caller.

Envoy connects over authd's workload socket; the kernel's credentials of that connection
are attested into selectors, and the selectors pick the registration entries whose SVIDs
this Envoy may have. Resource names, as SPIRE's agent spells them:

- ``default``, or one of the caller's SPIFFE IDs: a ``tls_certificate`` (chain PEM, leaf
  first, and its key PEM). ``default`` is the caller's oldest entry.
- ``ROOTCA``, or the trust domain's ID (``spiffe://example.org``): a ``validation_context``
  whose ``trusted_ca`` is the bundle PEM and, when the service has the daemon's
  ``Revoker``, whose ``crl`` holds one CRL per live X.509 authority, checked for the
  leaf only (``only_verify_leaf_cert_crl``: an upstream root we hold no CRL for must not fail
  every chain). Envoy then refuses a revoked SVID at the handshake of a new connection.
- ``ALL``: a ``validation_context`` with Envoy's SPIFFE certificate validator holding our
  bundle and the bundle of every foreign trust domain the caller's entries federate with
  (``federates_with``, as SPIRE's agent does).
- ``spiffe://<foreign-td>``, a trust domain the caller's entries federate with: a
  ``validation_context`` whose ``trusted_ca`` is that trust domain's bundle (no CRL: we
  hold none of a foreign trust domain). It carries **no CRL**: Envoy's
  SPIFFE validator (1.40) ignores the ``crl`` field of the context that configures it (a
  revoked SVID still gets in), so setting it would only pretend. Use ``ROOTCA`` where
  revoked SVIDs must be refused at the handshake; behind ``ALL``, only ext_authz (where it
  runs) refuses them, request by request.

A caller with no matching entry that asks for a certificate is denied (PERMISSION_DENIED);
other names authd does not know are left out of the response, which Envoy reads as
"not there yet".

The protocol is state-of-the-world xDS as Envoy speaks it. :class:`SdsStream` holds one
stream's protocol state and decides, from plain values, when Envoy gets a response: the
first request and any change of ``resource_names`` are answered at once; an ACK (the last
nonce, no ``error_detail``) is not answered; a NACK is logged and not answered until
something changes; a request carrying an older nonce is ignored. A change of the SVIDs,
the bundle or the CRLs is pushed only when the secrets of *this* stream differ, which the
response's ``version_info`` (a digest of the secrets' public content) makes a string
comparison. :class:`SecretDiscoveryService` is the thin gRPC adapter around that.

CRLs change on every revocation (pushed at once) and are re-signed before their nextUpdate
(:class:`CrlFeed` notices within a quarter of ``crl_refresh``). Envoy treats a CRL past its
nextUpdate as a failed check, so a sidecar on ``ROOTCA`` that hears nothing from authd for
longer than ``crl_refresh`` refuses every new mTLS connection: size ``crl_refresh`` for the
outage you want to ride out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import (
    common_pb2,
    secret_pb2,
    tls_spiffe_validator_config_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from authd.ports.identity_source import IdentitySource, WorkloadX509Svid
from authd.transport.peercred import PeerCredentials, PeerCredGateway
from authd.workload.caller import AttestCredentials, Caller, abort, attested_caller
from authd.workload.change_signal import ChangeSignal
from authd.workload.sds_stream import SdsStream, SdsStreamStatus
from ca.bundle import TrustBundle
from ca.crl import crl_pem
from ca.errors import InvalidSpiffeId
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId
from ca.store import RegistrationEntry

__all__ = [
    "ALL_BUNDLES",
    "DEFAULT_SVID",
    "ROOT_BUNDLE",
    "SECRET_TYPE_URL",
    "CrlFeed",
    "NoIdentity",
    "SdsStream",
    "SdsStreamStatus",
    "SecretDiscoveryService",
    "requested_secrets",
    "secrets_version",
]

log = logging.getLogger(__name__)

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105
DEFAULT_SVID = "default"
ROOT_BUNDLE = "ROOTCA"
ALL_BUNDLES = "ALL"
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"

Context = grpc.aio.ServicerContext[Any, Any]


class NoIdentity(Exception):
    """The caller asked for a certificate, but no registration entry matches it."""


# --- what a name resolves to (pure) --------------------------------------------------------


def tls_certificate_secret(name: str, svid: WorkloadX509Svid) -> Any:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=svid.chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=svid.key_pem),
        ),
    )


def trusted_ca_secret(name: str, bundle: TrustBundle, crls: bytes = b"") -> Any:
    """The bundle as trusted CAs; with ``crls`` (PEM), leaves are also checked against them."""
    context = common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_bytes=bundle.to_pem())
    )
    if crls:
        context.crl.inline_bytes = crls
        context.only_verify_leaf_cert_crl = True
    return secret_pb2.Secret(name=name, validation_context=context)


def spiffe_validator_secret(name: str, bundles: Iterable[TrustBundle]) -> Any:
    config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig(
        trust_domains=[
            tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig.TrustDomain(
                name=bundle.trust_domain.name,
                trust_bundle=base_pb2.DataSource(inline_bytes=bundle.to_pem()),
            )
            for bundle in bundles
        ]
    )
    typed_config = any_pb2.Any()
    typed_config.Pack(config)
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            custom_validator_config=extension_pb2.TypedExtensionConfig(
                name=SPIFFE_VALIDATOR, typed_config=typed_config
            )
        ),
    )


def _workload_id(name: str) -> SpiffeId | None:
    if not name.startswith("spiffe://"):
        return None
    try:
        return SpiffeId.parse(name)
    except InvalidSpiffeId:
        return None


def _is_trusted_ca(name: str, spiffe_id: SpiffeId | None, bundle: TrustBundle) -> bool:
    return name == ROOT_BUNDLE or spiffe_id == bundle.trust_domain.id


def wants_crls(names: Iterable[str], bundle: TrustBundle) -> bool:
    """Whether any of ``names`` is a trusted-CA validation context (the ones with CRLs)."""
    return any(_is_trusted_ca(name, _workload_id(name), bundle) for name in names)


def requested_secrets(
    names: Iterable[str],
    *,
    entries: Sequence[RegistrationEntry],
    svid_for: Callable[[RegistrationEntry], WorkloadX509Svid],
    bundle: TrustBundle,
    crls: bytes = b"",
    federated: Mapping[str, TrustBundle] | None = None,
) -> list[Any]:
    """The secrets among ``names`` the caller may have, in the order asked, each once.

    ``entries`` are the caller's registration entries, oldest first; ``svid_for`` gives an
    entry's current SVID; ``crls`` the current CRLs as PEM, for the trusted-CA contexts
    (empty: no CRL); ``federated`` the foreign bundles the caller's entries federate with, by
    trust domain name. Raises :class:`NoIdentity` when a certificate is asked for and
    ``entries`` is empty; leaves out every other name it does not know.
    """
    secrets: list[Any] = []
    foreign = federated or {}
    for name in dict.fromkeys(names):
        spiffe_id = _workload_id(name)
        wants_certificate = name == DEFAULT_SVID or (
            spiffe_id is not None and spiffe_id.is_workload
        )
        if wants_certificate and not entries:
            raise NoIdentity(f"no registration entry matches the caller, so no {name!r}")
        if name == DEFAULT_SVID:
            secrets.append(tls_certificate_secret(name, svid_for(entries[0])))
        elif _is_trusted_ca(name, spiffe_id, bundle):
            secrets.append(trusted_ca_secret(name, bundle, crls))
        elif name == ALL_BUNDLES:
            secrets.append(spiffe_validator_secret(name, [bundle, *foreign.values()]))
        elif (
            spiffe_id is not None and not spiffe_id.path and spiffe_id.trust_domain.name in foreign
        ):
            secrets.append(trusted_ca_secret(name, foreign[spiffe_id.trust_domain.name]))
        elif wants_certificate:
            entry = next((e for e in entries if e.spiffe_id == name), None)
            if entry is not None:
                secrets.append(tls_certificate_secret(name, svid_for(entry)))
    return secrets


def secrets_version(secrets: Iterable[Any]) -> str:
    """A digest of what the secrets say in public: equal secrets, equal version.

    Private keys are left out (a key never changes without its certificate), so the
    version Envoy shows in its config dump is not derived from key material.
    """
    digest = hashlib.sha256()
    for secret in secrets:
        public = secret_pb2.Secret()
        public.CopyFrom(secret)
        if public.HasField("tls_certificate"):
            public.tls_certificate.ClearField("private_key")
        encoded = public.SerializeToString(deterministic=True)
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()[:16]


def discovery_response(secrets: Sequence[Any], version: str, nonce: str = "") -> Any:
    resources = []
    for secret in secrets:
        resource = any_pb2.Any()
        resource.Pack(secret)
        resources.append(resource)
    return discovery_pb2.DiscoveryResponse(
        version_info=version, resources=resources, type_url=SECRET_TYPE_URL, nonce=nonce
    )


# --- the CRLs and when they change ----------------------------------------------------------


class CrlFeed:
    """The CRLs that go into validation contexts, and a wake-up for the streams that carry them.

    ``version`` grows on every revocation change (``Revoker`` calls us, from any
    thread) and whenever ``Revoker.crls()`` hands out new CRLs, which it does before
    their nextUpdate; the streams poll for that every ``check_interval`` seconds, a quarter of
    ``crl_refresh`` unless told, so a re-signed CRL reaches Envoy at most three quarters of
    ``crl_refresh`` after the one it replaces was signed. Building CRLs reads the store and
    signs, so it runs in a worker thread, never on the loop that serves the streams.
    """

    def __init__(self, revocations: Revoker, *, check_interval: float | None = None) -> None:
        self._revocations = revocations
        self.check_interval = (
            check_interval if check_interval is not None else revocations.crl_refresh / 4
        )
        self._signal = ChangeSignal()
        self._noticed: object = None  # the crls() list streams last heard of
        self._pem_of: object = None  # the crls() list ``_pem`` was made from
        self._pem = b""
        revocations.add_listener(self._signal.bump)

    @property
    def version(self) -> int:
        return self._signal.version

    async def pem(self) -> bytes:
        """The current CRLs, concatenated PEM (the last good ones if they cannot be built)."""
        try:
            crls = await asyncio.to_thread(self._revocations.crls)
            if crls is not self._pem_of:
                self._pem_of, self._pem = crls, await asyncio.to_thread(crl_pem, crls)
        except Exception:
            log.exception("SDS: cannot build the CRLs; serving the last ones")
            return self._pem
        self._noticed = crls
        return self._pem

    async def wait_for_change(self, version: int) -> int:
        """Return the new version once it differs from ``version`` (on the serving loop)."""
        while not await self._signal.wait(version, self.check_interval):
            await self._poll()
        return self.version

    async def _poll(self) -> None:
        try:
            crls = await asyncio.to_thread(self._revocations.crls)
        except Exception:
            log.exception("SDS: cannot build the CRLs; will retry")
            return
        if crls is not self._noticed:
            self._noticed = crls
            self._signal.bump()


# --- the gRPC adapter ---------------------------------------------------------------------


class SecretDiscoveryService(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """SDS over the peer-credential gateway: each Envoy gets the secrets of its own entries.

    With ``revocations``, trusted-CA validation contexts carry its CRLs (see the module
    docstring); ``crl_check_interval`` overrides how often streams look for re-signed ones.
    Call :meth:`close` before stopping the server: open streams then end with OK at once
    instead of holding the server's grace period.
    """

    def __init__(
        self,
        identities: IdentitySource,
        gateway: PeerCredGateway,
        attest: AttestCredentials,
        *,
        revocations: Revoker | None = None,
        crl_check_interval: float | None = None,
    ) -> None:
        self._identities = identities
        self._gateway = gateway
        self._attest = attest
        self.crls = (
            CrlFeed(revocations, check_interval=crl_check_interval)
            if revocations is not None
            else None
        )
        self._closing = asyncio.Event()
        self.streams: list[SdsStream] = []
        self._callers: dict[SdsStream, tuple[PeerCredentials, float]] = {}

    @property
    def active_streams(self) -> int:
        return len(self.streams)

    def status(self) -> list[SdsStreamStatus]:
        """The open streams: each Envoy's node, the versions it was sent and accepted, and
        its last refusal; oldest stream first."""
        found = []
        for stream in self.streams:
            creds, opened_at = self._callers[stream]
            found.append(stream.status(pid=creds.pid, uid=creds.uid, opened_at=opened_at))
        return found

    def close(self) -> None:
        """End every open stream (cleanly, status OK) and refuse new ones."""
        self._closing.set()

    async def _secrets(self, names: Sequence[str], caller: Caller, context: Context) -> list[Any]:
        identities, feed = self._identities, self.crls
        creds = caller.credentials
        try:
            bundle = identities.bundle
            crls = await feed.pem() if feed is not None and wants_crls(names, bundle) else b""
            entries = identities.entries_for(caller.selectors)
            secrets = requested_secrets(
                names,
                entries=entries,
                svid_for=identities.x509_svid,
                bundle=bundle,
                crls=crls,
                federated=identities.federated_bundles(entries),
            )
            if any(secret.HasField("tls_certificate") for secret in secrets):
                await identities.commit()  # no SVID leaves before it can be revoked
            return secrets
        except NoIdentity as exc:
            log.info("SDS: pid %d (uid %d) denied: %s", creds.pid, creds.uid, exc)
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except Exception:
            log.exception("SDS: cannot build secrets for pid %d (uid %d)", creds.pid, creds.uid)
            await abort(context, grpc.StatusCode.INTERNAL, "cannot build the secrets")

    @staticmethod
    def _check_type(request: Any) -> bool:
        return request.type_url in ("", SECRET_TYPE_URL)

    async def FetchSecrets(self, request: Any, context: Context) -> Any:
        caller = await attested_caller(context, self._gateway, self._attest)
        creds = caller.credentials
        if not self._check_type(request):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"type_url must be {SECRET_TYPE_URL}"
            )
        secrets = await self._secrets(list(request.resource_names), caller, context)
        self._log_left_out(request.resource_names, secrets, creds)
        return discovery_response(secrets, secrets_version(secrets))

    async def StreamSecrets(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        caller = await attested_caller(context, self._gateway, self._attest)
        creds = caller.credentials
        identities, feed = self._identities, self.crls
        stream = SdsStream(
            provider_version=identities.version, crl_version=feed.version if feed else 0
        )
        requests = aiter(request_iterator)
        reader: asyncio.Future[Any] = asyncio.ensure_future(anext(requests, None))
        change: asyncio.Future[int] = asyncio.ensure_future(
            identities.wait_for_change(stream.provider_version)
        )
        # Without a feed, a future that never completes keeps the loop below uniform.
        crl_change: asyncio.Future[int] = (
            asyncio.ensure_future(feed.wait_for_change(stream.crl_version))
            if feed is not None
            else asyncio.get_running_loop().create_future()
        )
        closing = asyncio.ensure_future(self._closing.wait())
        self.streams.append(stream)
        self._callers[stream] = (creds, time.time())
        log.info("SDS: stream opened by pid %d (uid %d)", creds.pid, creds.uid)
        try:
            while not self._closing.is_set():
                await asyncio.wait(
                    {reader, change, crl_change, closing}, return_when=asyncio.FIRST_COMPLETED
                )
                must_answer = look_again = False
                if reader.done():
                    request = reader.result()
                    if request is None:
                        return  # Envoy half-closed: it will ask nothing more
                    reader = asyncio.ensure_future(anext(requests, None))
                    if not self._check_type(request):
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"type_url must be {SECRET_TYPE_URL}, not {request.type_url!r}",
                        )
                    must_answer = stream.on_request(request)
                    self._log_request(request, stream, creds)
                if change.done():
                    stream.provider_version = change.result()
                    change = asyncio.ensure_future(
                        identities.wait_for_change(stream.provider_version)
                    )
                    look_again = stream.names is not None
                if crl_change.done():
                    assert feed is not None
                    stream.crl_version = crl_change.result()
                    crl_change = asyncio.ensure_future(feed.wait_for_change(stream.crl_version))
                    look_again = stream.names is not None
                if not (must_answer or look_again):
                    continue
                assert stream.names is not None
                secrets = await self._secrets(stream.names, caller, context)
                version = secrets_version(secrets)
                if must_answer:
                    self._log_left_out(stream.names, secrets, creds)
                elif not stream.needs_push(version):
                    continue
                nonce = stream.sent(version)
                log.debug(
                    "SDS: pid %d gets %s, version %s, nonce %s",
                    creds.pid,
                    [secret.name for secret in secrets],
                    version,
                    nonce,
                )
                yield discovery_response(secrets, version, nonce)
        finally:
            for task in (reader, change, crl_change, closing):
                task.cancel()
            await asyncio.gather(reader, change, crl_change, closing, return_exceptions=True)
            self.streams.remove(stream)
            del self._callers[stream]
            log.info(
                "SDS: stream of pid %d (uid %d) ended after %d responses, %d ACKs, %d NACKs",
                creds.pid,
                creds.uid,
                stream.responses,
                stream.acks,
                stream.nacks,
            )

    @staticmethod
    def _log_left_out(names: Iterable[str], secrets: Sequence[Any], creds: PeerCredentials) -> None:
        # Envoy waits for a missing secret (initial_fetch_timeout), then serves without it.
        left_out = set(names) - {secret.name for secret in secrets}
        if left_out:
            log.info(
                "SDS: pid %d (uid %d) asked for %s: unknown, or not among its entries",
                creds.pid,
                creds.uid,
                sorted(left_out),
            )

    @staticmethod
    def _log_request(request: Any, stream: SdsStream, creds: PeerCredentials) -> None:
        if request.response_nonce != stream.nonce:
            log.debug("SDS: pid %d answered nonce %s late", creds.pid, request.response_nonce)
        elif request.HasField("error_detail"):
            log.warning(
                "SDS: pid %d (uid %d) rejected version %s of %s: %s",
                creds.pid,
                creds.uid,
                stream.version,
                list(request.resource_names),
                request.error_detail.message,
            )
        elif request.response_nonce:
            log.debug("SDS: pid %d accepted version %s", creds.pid, request.version_info)
