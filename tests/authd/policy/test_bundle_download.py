"""Bundles from a bundle server: ETag polling, and the active bundle kept through server
failures, outages and bad bundles (against a real in-test HTTP server)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authd.authz.assembly import policy_source
from authd.config import load_config
from authd.policy.base import Policy, PolicyError
from authd.policy.bundle_download import (
    MIN_RETRY_DELAY,
    BundleFetchError,
    BundleServer,
    Polling,
    fetch_bundle,
)
from authd.policy.bundle_policy import BundleSettings, DownloadedBundle
from authd.policy.opa_bundle import Bundle, BundleLimits
from authd.policy.opa_bundle_signing import BundleVerification, VerificationKey
from authd.policy.rego import RegoPolicy
from authd.policy.rego_offload import OffLoopRego
from tests.support.opa_bundles import BundleServer as HttpBundleServer
from tests.support.opa_bundles import SigningKey, policy_files, signed_bundle, tar_gz

PUBLIC = {"attributes": {"request": {"http": {"path": "/public"}}}}
ADMIN = {"attributes": {"request": {"http": {"path": "/admin"}}}}


@pytest.fixture
def server() -> Iterator[HttpBundleServer]:
    server = HttpBundleServer()
    yield server
    server.stop()


def _compile(bundle: Bundle, source: str) -> Policy:
    return RegoPolicy.from_sources(bundle.modules, data=bundle.data, name=f"bundle:{source}")


def _downloaded(server: HttpBundleServer, **kwargs: Any) -> DownloadedBundle:
    settings = BundleSettings(
        name="authz",
        location=server.url + "/bundles/authz.tar.gz",
        server=BundleServer(url=server.url + "/bundles/authz.tar.gz", timeout=2.0),
        **kwargs,
    )
    return DownloadedBundle(settings, _compile, random_fraction=lambda: 0.5)


def _allows(downloaded: DownloadedBundle, document: dict[str, Any]) -> bool:
    assert isinstance(downloaded.current, RegoPolicy)
    return downloaded.current.evaluate_document(document).allowed


def test_nothing_decides_before_the_first_bundle_activates(server: HttpBundleServer) -> None:
    server.status = 404
    downloaded = _downloaded(server)
    assert downloaded.poll_now() is False
    with pytest.raises(PolicyError, match="not activated yet"):
        asyncio.run(downloaded.evaluate(None, None, lambda: PUBLIC))  # type: ignore[arg-type]


def test_a_bundle_activates_and_its_etag_is_sent_back(server: HttpBundleServer) -> None:
    server.publish(tar_gz(policy_files(["/public"], revision="r1")), '"r1"')
    downloaded = _downloaded(server)
    assert downloaded.poll_now() is True
    assert downloaded.revision == "r1" and downloaded.etag == '"r1"'
    assert _allows(downloaded, PUBLIC) and not _allows(downloaded, ADMIN)
    assert "if-none-match" not in server.requests[0]
    assert downloaded.poll_now() is None  # 304
    assert server.requests[1]["if-none-match"] == '"r1"'
    server.publish(tar_gz(policy_files(["/public", "/admin"], revision="r2")), '"r2"')
    assert downloaded.poll_now() is True
    assert downloaded.revision == "r2" and _allows(downloaded, ADMIN)


def test_a_server_error_or_outage_changes_nothing_until_it_returns(
    server: HttpBundleServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.publish(tar_gz(policy_files(["/public"])), '"r1"')
    downloaded = _downloaded(server)
    assert downloaded.poll_now() is True
    active = downloaded.current
    caplog.set_level(logging.INFO, logger="authd.policy.bundle_policy")
    server.status = 500
    assert downloaded.poll_now() is False
    assert "HTTP 500" in (downloaded.last_error or "")
    server.stop()
    for _ in range(3):
        assert downloaded.poll_now() is False
    assert downloaded.current is active and _allows(downloaded, PUBLIC)
    assert downloaded.consecutive_failures == 4
    failures = [r for r in caplog.records if "download failed" in r.getMessage()]
    assert len(failures) == 1  # one line for the whole outage
    server.status = None
    server.restart()
    assert downloaded.poll_now() is None  # same ETag: 304, still the same bundle
    assert downloaded.current is active and downloaded.consecutive_failures == 0
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_a_tampered_update_is_refused_once_and_the_old_bundle_keeps_serving(
    server: HttpBundleServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = SigningKey.generate("global_key", "ES256")
    verification = BundleVerification(
        {key.key_id: VerificationKey.parse(key.key_id, key.algorithm, key.public_pem)},
        key_id="global_key",
    )
    server.publish(signed_bundle(policy_files(["/public"]), key), '"r1"')
    downloaded = _downloaded(server, verification=verification)
    assert downloaded.poll_now() is True
    good = signed_bundle(policy_files(["/public"], revision="r2"), key)
    # Swap the signed data for data that opens /admin, keeping the signature.
    evil = tar_gz(
        {
            **policy_files(["/public", "/admin"], revision="r2"),
            "/.signatures.json": _signatures_of(good),
        }
    )
    server.publish(evil, '"r2"')
    caplog.set_level(logging.INFO, logger="authd.policy.bundle_policy")
    for _ in range(3):
        assert downloaded.poll_now() is False
    refused = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refused) == 1
    assert "digest mismatch" in refused[0].getMessage()
    assert "keeping revision 'r1'" in refused[0].getMessage()
    assert downloaded.revision == "r1" and not _allows(downloaded, ADMIN)
    server.publish(tar_gz(policy_files(["/public", "/admin"], revision="r3")), '"r3"')
    assert downloaded.poll_now() is False  # unsigned while a keyid is configured
    assert "missing .signatures.json" in (downloaded.last_error or "")
    server.publish(good, '"r2-good"')
    assert downloaded.poll_now() is True and downloaded.revision == "r2"


def _signatures_of(blob: bytes) -> bytes:
    import gzip
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as archive:
        member = archive.extractfile("/.signatures.json")
        assert member is not None
        return member.read()


def test_an_oversized_bundle_is_refused_before_it_is_read(server: HttpBundleServer) -> None:
    server.publish(b"x" * 10_000, '"big"')
    target = BundleServer(url=server.url + "/b", timeout=2.0)
    with pytest.raises(BundleFetchError, match="over bundle_max_size 1000"):
        fetch_bundle(target, "", 1000)
    downloaded = _downloaded(server, limits=BundleLimits(max_size=1000))
    assert downloaded.poll_now() is False


def test_garbage_from_the_server_is_refused(server: HttpBundleServer) -> None:
    server.publish(b"<html>not a bundle</html>", '"g"')
    downloaded = _downloaded(server)
    assert downloaded.poll_now() is False
    assert "not gzip" in (downloaded.last_error or "")


def test_polling_delays_follow_opa() -> None:
    polling = Polling(min_delay=10, max_delay=20)
    assert [polling.after_success(lambda f=f: f) for f in (0.0, 0.5, 1.0)] == [10, 15, 20]
    backoff = [polling.after_failures(n, lambda: 0.5) for n in range(0, 20)]
    assert backoff[0] == MIN_RETRY_DELAY
    assert backoff == sorted(backoff) and backoff[-1] == 20
    assert polling.after_failures(3, lambda: 0.0) == pytest.approx(0.1 * 1.6**3 * 0.8)


def test_the_poll_loop_uses_the_delays(
    server: HttpBundleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.publish(tar_gz(policy_files(["/public"])), '"r1"')
    downloaded = _downloaded(server, polling=Polling(min_delay=30, max_delay=50))
    delays: list[float] = []

    async def no_sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 3:
            raise _Stop

    monkeypatch.setattr("authd.policy.bundle_policy.asyncio.sleep", no_sleep)
    with pytest.raises(_Stop):
        asyncio.run(downloaded.run())
    assert delays == [40, 40, 40] and downloaded.activations == 1
    assert len(server.requests) == 2


class _Stop(Exception):
    pass


def test_from_the_opa_config_the_service_credentials_and_a_late_server(
    server: HttpBundleServer, tmp_path: Path
) -> None:
    """authd starts while the bundle server is down, denies, and activates once it is up."""
    (tmp_path / "opa.yaml").write_text(
        f"""\
services:
  acme:
    url: {server.url}/v1
    headers: {{x-tenant: shop}}
    credentials: {{bearer: {{token: "${{TOKEN}}"}}}}
bundles:
  authz:
    resource: bundles/authz.tar.gz
"""
    )
    (tmp_path / "authd.toml").write_text('[authz]\nopa_config = "opa.yaml"\n')
    config = load_config(
        tmp_path / "authd.toml", env={"TOKEN": "s3cret"}, overrides={"data_dir": str(tmp_path)}
    )
    server.status = 503
    source = policy_source(config)
    assert source.files == () and source.background is not None
    downloaded = source.load()
    assert isinstance(downloaded, DownloadedBundle) and downloaded.current is None
    server.status = None
    server.publish(tar_gz(policy_files(["/public"])), '"r1"')
    assert downloaded.poll_now() is True
    assert _allows_through(downloaded, PUBLIC)
    sent = server.requests[-1]
    assert sent["authorization"] == "Bearer s3cret" and sent["x-tenant"] == "shop"
    assert len(server.requests) == 2


def _allows_through(downloaded: DownloadedBundle, document: dict[str, Any]) -> bool:
    current = downloaded.current
    assert isinstance(current, OffLoopRego)
    return current.policy.evaluate_document(document).allowed
