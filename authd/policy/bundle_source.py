"""From the config to a bundle-served policy: where the bundle is, its bounds, its signing
keys (the OPA config's ``keys``), its polling, and how a bundle becomes a ``RegoPolicy``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from authd.config.model import Config
from authd.policy.base import Policy
from authd.policy.bundle_download import BundleServer, Polling
from authd.policy.bundle_policy import BundleSettings, DownloadedBundle, load_bundle_file
from authd.policy.opa_bundle import Bundle, BundleLimits
from authd.policy.opa_bundle_signing import BundleVerification, VerificationKey
from authd.policy.result import ResultMapping

__all__ = ["bundle_policy_source", "bundle_settings"]

Background = Callable[[], Coroutine[Any, Any, None]]


def bundle_settings(config: Config) -> BundleSettings:
    """The bundle ``authz.rego_bundle`` names, with the OPA config's signing and polling."""
    authz = config.authz
    opa = config.opa
    limits = BundleLimits(
        max_size=authz.bundle_max_size,
        max_uncompressed_size=authz.bundle_max_uncompressed_size,
        max_files=authz.bundle_max_files,
    )
    opa_bundle = opa.bundle
    verification = None
    polling = Polling()
    name = "authz"
    if opa_bundle is not None:
        name = opa_bundle.name
        polling = Polling(opa_bundle.min_delay, opa_bundle.max_delay)
        if opa_bundle.signing:
            keys = {
                key_id: VerificationKey.parse(key_id, k.algorithm, k.key, k.scope)
                for key_id, k in opa.keys.items()
            }
            verification = BundleVerification(
                keys=keys,
                key_id=opa_bundle.signing_keyid,
                scope=opa_bundle.signing_scope,
                exclude_files=opa_bundle.exclude_files,
            )
    location = authz.rego_bundle
    server = None
    if location.startswith(("http://", "https://")):
        service = opa.services.get(opa_bundle.service) if opa_bundle is not None else None
        ca_cert = service.ca_cert if service else ""
        server = BundleServer(
            url=location,
            headers=service.request_headers() if service else {},
            timeout=service.timeout if service else 10.0,
            ca_file=str(config.resolve_path(ca_cert)) if ca_cert else "",
            insecure_tls=service.allow_insecure_tls if service else False,
        )
    else:
        location = str(config.resolve_path(location.removeprefix("file://")))
    return BundleSettings(name, location, limits, verification, polling, server)


def bundle_policy_source(
    config: Config, results: ResultMapping
) -> tuple[Callable[[], Policy], tuple[Any, ...], Background | None]:
    """(loader, files to watch, background task) for the configured bundle."""
    from authd.policy.rego import RegoPolicy
    from authd.policy.rego_offload import configured_off_loop

    authz = config.authz

    def compile_bundle(bundle: Bundle, source: str) -> Policy:
        revision = f"@{bundle.revision}" if bundle.revision else ""
        policy = RegoPolicy.from_sources(
            bundle.modules,
            entrypoint=authz.rego_entrypoint,
            data=bundle.data,
            name=f"bundle:{source}{revision}",
            decision_cache=authz.rego_decision_cache,
            results=results,
        )
        return configured_off_loop(policy, authz)

    location = authz.rego_bundle
    if not location.startswith(("http://", "https://")):
        path = config.resolve_path(location.removeprefix("file://"))
        # Settings are built at the first load, so a bad key is a startup error like others.
        return lambda: load_bundle_file(bundle_settings(config), compile_bundle), (path,), None
    downloaded: list[DownloadedBundle] = []

    def load() -> Policy:
        if not downloaded:
            downloaded.append(DownloadedBundle(bundle_settings(config), compile_bundle))
        downloaded[0].poll_now()
        return downloaded[0]

    async def run() -> None:
        if downloaded:
            await downloaded[0].run()

    return load, (), run
