"""End to end: operator-driven authority rotation through `authd authority ...`.

The timeline is SPIRE's: a prepared authority is in the bundle before it signs anything;
activating it retires the old one; only a retired authority can be tainted, and only a
tainted one revoked, which takes it out of the bundle.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from authd.cli.errors import Exit
from ca.bundle import TrustBundle
from ca.errors import VerificationError
from ca.jwtsvid import verify_jwt_svid
from ca.spiffe_id import TrustDomain
from ca.x509svid import verify_x509_svid
from tests.support.cli_exit import expected_exit
from tests.support.daemon import NOBODY, Daemon, as_uid, authd

EXAMPLE = TrustDomain("example.org")
WEB = "spiffe://example.org/web"


@pytest.fixture
def daemon(workdir: Path) -> Iterator[Daemon]:
    # Only the operator rotates here: no timed rotation step (which also prunes revoked
    # authorities) may land between two commands of a test.
    running = Daemon(workdir / "data", '[ca]\nrotation_check_interval = "1h"\n')
    running.start()
    yield running
    if running.process and running.process.poll() is None:
        running.stop()


def show(daemon: Daemon) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        authd("authority", "show", "--json", data_dir=daemon.data_dir).stdout
    )
    return result


def states(daemon: Daemon, kind: str) -> dict[str, tuple[str, bool, bool]]:
    """authority id -> (state, tainted, revoked) for the authorities of ``kind``."""
    return {
        a["authority_id"]: (a["state"], a["tainted"], a["revoked"])
        for a in show(daemon)["authorities"]
        if a["kind"] == kind
    }


def only(daemon: Daemon, kind: str, state: str) -> str:
    [authority_id] = [i for i, s in states(daemon, kind).items() if s[0] == state]
    return authority_id


def bundle(daemon: Daemon) -> TrustBundle:
    return TrustBundle.parse(authd("bundle", "show", data_dir=daemon.data_dir).stdout, EXAMPLE)


def key_id(certificate: x509.Certificate) -> str:
    return certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value.digest.hex()


def bundle_key_ids(daemon: Daemon) -> set[str]:
    return {key_id(c) for c in bundle(daemon).x509_authorities}


def mint(daemon: Daemon, out: Path) -> list[x509.Certificate]:
    authd("x509", "mint", "--spiffe-id", WEB, "--out", str(out), data_dir=daemon.data_dir)
    return x509.load_pem_x509_certificates((out / "svid.pem").read_bytes())


def issuer_of(chain: list[x509.Certificate], daemon: Daemon) -> str:
    """The id of the authority in the bundle whose key signed the leaf (the chain holds only
    the leaf: a self-signed authority is a root, and roots come from the bundle)."""
    leaf = chain[0]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    [signer] = [c for c in bundle(daemon).x509_authorities if key_id(c) == aki.key_identifier.hex()]
    leaf.verify_directly_issued_by(signer)
    return key_id(signer)


def step(daemon: Daemon, *args: str) -> str:
    return authd("authority", *args, data_dir=daemon.data_dir).stdout


def refused(daemon: Daemon, *args: str) -> str:
    result = authd("authority", *args, data_dir=daemon.data_dir, check=False)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == expected_exit(lines[0]), (args, result.stdout)
    return lines[0]


def test_x509_rotation_prepare_activate_taint_revoke(daemon: Daemon, workdir: Path) -> None:
    old = only(daemon, "x509", "active")
    sequence = show(daemon)["bundle_sequence"]
    before = mint(daemon, workdir / "before")
    assert issuer_of(before, daemon) == old

    out = step(daemon, "prepare", "--kind", "x509")
    new = only(daemon, "x509", "prepared")
    assert new in out
    assert states(daemon, "x509") == {
        old: ("active", False, False),
        new: ("prepared", False, False),
    }
    assert show(daemon)["bundle_sequence"] > sequence
    sequence = show(daemon)["bundle_sequence"]
    # In the bundle before it signs anything: relying parties learn it first.
    assert bundle_key_ids(daemon) == {old, new}
    assert issuer_of(mint(daemon, workdir / "prepared"), daemon) == old

    step(daemon, "activate", "--kind", "x509")
    assert states(daemon, "x509") == {
        old: ("retired", False, False),
        new: ("active", False, False),
    }
    after = mint(daemon, workdir / "after")
    assert issuer_of(after, daemon) == new
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(workdir / "after" / "bundle.pem"),
         str(workdir / "after" / "svid.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    # The retired authority stays in the bundle: what it signed is still valid.
    assert bundle_key_ids(daemon) == {old, new}
    roots = bundle(daemon).x509_authorities
    verify_x509_svid(before, trust_domain=EXAMPLE, roots=roots, now=time.time())

    step(daemon, "taint", "--kind", "x509", "--id", old)
    assert states(daemon, "x509")[old] == ("retired", True, False)
    assert bundle_key_ids(daemon) == {old, new}

    step(daemon, "revoke", "--kind", "x509", "--id", old)
    assert old not in bundle_key_ids(daemon)
    assert bundle_key_ids(daemon) == {new}
    assert old not in authd("bundle", "show", data_dir=daemon.data_dir).stdout
    assert show(daemon)["bundle_sequence"] > sequence
    roots = bundle(daemon).x509_authorities
    with pytest.raises(VerificationError):
        verify_x509_svid(before, trust_domain=EXAMPLE, roots=roots, now=time.time())
    verify_x509_svid(after, trust_domain=EXAMPLE, roots=roots, now=time.time())


def kid_of(token: str) -> str:
    header = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return kid


def test_jwt_rotation_prepare_activate_taint_revoke(daemon: Daemon) -> None:
    def token() -> str:
        return authd(
            "jwt", "mint", "--spiffe-id", WEB, "--audience", "orders", data_dir=daemon.data_dir
        ).stdout.strip()

    old = only(daemon, "jwt", "active")
    signed_by_old = token()
    assert kid_of(signed_by_old) == old

    step(daemon, "prepare", "--kind", "jwt")
    new = only(daemon, "jwt", "prepared")
    assert set(bundle(daemon).jwt_authorities) == {old, new}
    assert kid_of(token()) == old

    step(daemon, "activate", "--kind", "jwt")
    signed_by_new = token()
    assert kid_of(signed_by_new) == new
    assert states(daemon, "jwt") == {old: ("retired", False, False), new: ("active", False, False)}

    step(daemon, "taint", "--kind", "jwt", "--id", old)
    step(daemon, "revoke", "--kind", "jwt", "--id", old)
    keys = bundle(daemon).jwt_authorities
    assert set(keys) == {new}
    with pytest.raises(VerificationError):
        verify_jwt_svid(
            signed_by_old, trust_domain=EXAMPLE, keys=keys, audience=["orders"], now=time.time()
        )
    verify_jwt_svid(
        signed_by_new, trust_domain=EXAMPLE, keys=keys, audience=["orders"], now=time.time()
    )


def test_rotation_steps_out_of_order_are_refused_with_the_reason(daemon: Daemon) -> None:
    active = only(daemon, "x509", "active")
    jwt_active = only(daemon, "jwt", "active")
    before = show(daemon)

    assert refused(daemon, "activate", "--kind", "x509") == (
        "authd: failed precondition: no prepared x509 authority to activate; prepare one first"
    )
    assert refused(daemon, "taint", "--kind", "x509", "--id", active) == (
        f"authd: failed precondition: only a retired authority can be tainted; {active} is "
        "active (activate another one first)"
    )
    assert refused(daemon, "revoke", "--kind", "x509", "--id", active).startswith(
        f"authd: failed precondition: authority {active} must be tainted before it is revoked"
    )
    assert refused(daemon, "taint", "--kind", "jwt", "--id", active) == (
        f"authd: invalid argument: authority {active} is of kind x509, not jwt"
    )
    assert refused(daemon, "revoke", "--kind", "x509", "--id", jwt_active) == (
        f"authd: invalid argument: authority {jwt_active} is of kind jwt, not x509"
    )
    assert refused(daemon, "taint", "--kind", "x509", "--id", "0123") == (
        "authd: not found: no authority '0123'"
    )
    assert show(daemon) == before  # nothing changed

    step(daemon, "prepare", "--kind", "x509")
    assert refused(daemon, "prepare", "--kind", "x509") == (
        "authd: failed precondition: a prepared x509 authority already exists"
    )
    step(daemon, "activate", "--kind", "x509")
    # Retired but not tainted: it cannot be revoked yet.
    assert "must be tainted before it is revoked" in refused(
        daemon, "revoke", "--kind", "x509", "--id", active
    )
    step(daemon, "taint", "--kind", "x509", "--id", active)
    assert refused(daemon, "taint", "--kind", "x509", "--id", active) == (
        f"authd: failed precondition: authority {active} is already tainted"
    )
    step(daemon, "revoke", "--kind", "x509", "--id", active)
    assert refused(daemon, "revoke", "--kind", "x509", "--id", active) == (
        f"authd: failed precondition: authority {active} is already revoked"
    )


def test_authority_commands_refuse_a_non_admin_uid(daemon: Daemon) -> None:
    active = only(daemon, "x509", "active")
    before = show(daemon)
    for args in (
        ["authority", "show"],
        ["authority", "prepare", "--kind", "x509"],
        ["authority", "activate", "--kind", "jwt"],
        ["authority", "taint", "--kind", "x509", "--id", active],
        ["authority", "revoke", "--kind", "x509", "--id", active],
    ):
        result = as_uid(NOBODY, args, daemon.data_dir)
        assert result.returncode == Exit.PERMISSION, (args, result.stdout)
        assert f"permission denied: uid {NOBODY} is not an authd admin" in result.stderr, args
    assert show(daemon) == before


def test_authority_show_prints_both_kinds(daemon: Daemon) -> None:
    step(daemon, "prepare", "--kind", "jwt")
    text = step(daemon, "show")
    assert text.startswith(f"Bundle sequence: {show(daemon)['bundle_sequence']}\n")
    x509_part, jwt_part = text.split("JWT authorities:")
    assert "X.509 authorities:" in x509_part
    assert f"{only(daemon, 'x509', 'active')}  active" in x509_part
    assert f"{only(daemon, 'jwt', 'active')}  active" in jwt_part
    assert f"{only(daemon, 'jwt', 'prepared')}  prepared" in jwt_part
