"""``authz.rego_worker_cpus`` naming CPUs authd may not use: the daemon does not start, and
says why in one line."""

from __future__ import annotations

import shutil
import subprocess

from tests.support.daemon import AUTHD
from tests.support.envoy import short_tmpdir
from tests.support.ports import free_port

POLICY = "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n"


def test_worker_cpus_authd_may_not_use_stop_the_start_with_one_line() -> None:
    tmp_path = short_tmpdir()  # Unix socket paths are short
    data = tmp_path / "data"
    data.mkdir()
    (data / "authz.rego").write_text(POLICY)
    config = tmp_path / "authd.toml"
    config.write_text(
        "[authz]\n"
        'policy_engine = "rego"\n'
        'rego_files = ["authz.rego"]\n'
        'rego_worker_cpus = "4000-4001"\n'
        + "".join(
            f'{key} = "127.0.0.1:{free_port()}"\n'
            for key in ("grpc_address", "http_address", "metrics_address")
        )
    )
    run = [*AUTHD, "run", "--data-dir", str(data), "--config", str(config)]
    try:
        started = subprocess.run(run, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert started.returncode == 1
    assert started.stderr.splitlines()[-1].startswith(
        "authd: cannot load the policy: authz.rego_worker_cpus = '4000-4001':"
        " authd may not run on any of these CPUs (it may run on "
    )
    assert "Traceback" not in started.stderr
