"""A bundle file on disk: watched like a policy file; a bad replacement keeps the old one."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from authd.policy.base import Policy
from authd.policy.bundle_policy import BundleSettings, load_bundle_file
from authd.policy.opa_bundle import Bundle
from authd.policy.opa_bundle_signing import BundleVerification, VerificationKey
from authd.policy.rego import RegoPolicy
from authd.policy.reload import PolicyHolder
from tests.support.opa_bundles import SigningKey, policy_files, signatures, signed_bundle, tar_gz

ADMIN = {"attributes": {"request": {"http": {"path": "/admin"}}}}


def _compile(bundle: Bundle, source: str) -> Policy:
    return RegoPolicy.from_sources(
        bundle.modules, data=bundle.data, name=f"bundle:{source}@{bundle.revision}"
    )


def _replace(path: Path, blob: bytes) -> None:
    """Atomically, by rename, as a deployment should."""
    staged = path.with_suffix(".new")
    staged.write_bytes(blob)
    os.replace(staged, path)


def test_a_tampered_replacement_is_refused_once_and_a_good_one_activates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = SigningKey.generate("global_key", "ES256")
    verification = BundleVerification(
        {key.key_id: VerificationKey.parse(key.key_id, key.algorithm, key.public_pem)},
        key_id="global_key",
    )
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(signed_bundle(policy_files(["/public"], revision="r1"), key))
    settings = BundleSettings("authz", str(path), verification=verification)
    holder = PolicyHolder(lambda: load_bundle_file(settings, _compile), [path])
    assert holder.current.name.endswith("@r1")

    def allows_admin() -> bool:
        current = holder.current
        assert isinstance(current, RegoPolicy)
        return current.evaluate_document(ADMIN).allowed

    opened = policy_files(["/public", "/admin"], revision="r2")
    honest = policy_files(["/public"], revision="r2")
    _replace(path, tar_gz({**opened, "/.signatures.json": signatures(honest, key)}))
    caplog.set_level(logging.ERROR)
    assert asyncio.run(holder.reload_if_changed()) is False
    assert asyncio.run(holder.reload_if_changed()) is None  # same file: not retried, not logged
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith(f"policy reload failed, keeping bundle:{path}@r1: bundle {path}: ")
    assert "envoy/authz/data.json: digest mismatch" in errors[0]
    assert not allows_admin()
    _replace(path, signed_bundle(opened, key))
    assert asyncio.run(holder.reload_if_changed()) is True
    assert holder.current.name.endswith("@r2") and allows_admin()


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from authd.policy.opa_bundle import BundleError, BundleLimits

    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(b"\0" * 2048)
    settings = BundleSettings("authz", str(path), limits=BundleLimits(max_size=1024))
    with pytest.raises(BundleError, match="over bundle_max_size 1024"):
        load_bundle_file(settings, _compile)
