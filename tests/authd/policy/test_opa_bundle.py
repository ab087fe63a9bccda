"""Reading OPA bundles: layout, manifest roots (OPA's rules), bounds, and hostile archives."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.policy.opa_bundle import (
    BundleError,
    BundleLimits,
    read_bundle,
    root_paths_contain,
    root_paths_overlap,
)
from authd.policy.rego import RegoPolicy
from tests.support.opa_bundles import POLICY, policy_files, tar_gz, tar_gz_with_link


def test_a_bundle_as_opa_build_writes_it_loads_with_data_at_its_directory() -> None:
    bundle = read_bundle(tar_gz(policy_files(["/public"], revision="v7")))
    assert bundle.revision == "v7"
    assert bundle.roots == ("envoy",)
    assert bundle.data == {"envoy": {"authz": {"open_paths": ["/public"]}}}
    assert list(bundle.modules) == ["/envoy/authz/policy.rego"]
    assert not bundle.signed


def test_the_loaded_bundle_decides_with_its_data() -> None:
    bundle = read_bundle(tar_gz(policy_files(["/public"])))
    policy = RegoPolicy.from_sources(bundle.modules, data=bundle.data)
    allowed = {"attributes": {"request": {"http": {"path": "/public"}}}}
    denied = {"attributes": {"request": {"http": {"path": "/admin"}}}}
    assert policy.evaluate_document(allowed).allowed
    assert not policy.evaluate_document(denied).allowed


def test_yaml_data_and_relative_names_and_no_manifest_mean_every_root() -> None:
    bundle = read_bundle(
        tar_gz({"./a/b/data.yaml": "x: 1\n", "data.json": '{"top": true}', "p.rego": POLICY})
    )
    assert bundle.roots == ("",)
    assert bundle.data == {"a": {"b": {"x": 1}}, "top": True}


def test_data_documents_merge_and_a_conflict_is_refused() -> None:
    merged = read_bundle(tar_gz({"/a/data.json": '{"b": {"x": 1}}', "/a/b/data.json": '{"y": 2}'}))
    assert merged.data == {"a": {"b": {"x": 1, "y": 2}}}
    with pytest.raises(BundleError, match="conflicts"):
        read_bundle(tar_gz({"/a/data.json": '{"b": 1}', "/a/b/data.json": '{"y": 2}'}))


@pytest.mark.parametrize(
    ("roots", "message"),
    [
        (["envoy", "envoy/authz"], "overlapped roots: 'envoy' and 'envoy/authz'"),
        (["other"], "do not permit 'package envoy.authz'"),
        (["envoy/authz/x"], "do not permit"),
    ],
)
def test_manifest_roots_follow_opa(roots: list[str], message: str) -> None:
    files = {**policy_files([]), "/.manifest": json.dumps({"roots": roots})}
    with pytest.raises(BundleError, match=message):
        read_bundle(tar_gz(files))


def test_data_outside_the_roots_is_refused_as_opa_refuses_it() -> None:
    files = {
        "/.manifest": json.dumps({"roots": ["envoy"]}),
        "/other/data.json": '{"x": 1}',
    }
    with pytest.raises(BundleError, match=r"do not permit data at path '/other"):
        read_bundle(tar_gz(files))
    # Root data that is an object above a root is fine as long as its leaves are inside.
    ok = read_bundle(
        tar_gz({"/.manifest": json.dumps({"roots": ["a/b"]}), "/data.json": '{"a": {"b": 1}}'})
    )
    assert ok.data == {"a": {"b": 1}}


def test_root_path_rules() -> None:
    assert root_paths_overlap("a", "a/b") and root_paths_overlap("", "x")
    assert not root_paths_overlap("a/b", "a/c") and not root_paths_overlap("ab", "a")
    assert root_paths_contain(("a",), "a/b/c") and not root_paths_contain(("a/b",), "a")


@pytest.mark.parametrize(
    "name", ["../evil.rego", "a/../../evil.rego", "//etc/passwd", "a//b.rego", "a\\b.rego"]
)
def test_unsafe_entry_names_are_refused(name: str) -> None:
    with pytest.raises(BundleError, match="bundle entry"):
        read_bundle(tar_gz({name: POLICY}))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_links_and_special_files_are_refused(kind: bytes) -> None:
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(tar_gz_with_link("/data.json", "/etc/passwd", kind))


def test_a_sparse_file_is_refused() -> None:
    """Its holes would inflate to any size from a few bytes of archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("/data.json")
        info.type, info.size = tarfile.GNUTYPE_SPARSE, 2
        archive.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(BundleError, match="sparse"):
        read_bundle(buffer.getvalue())


def test_directory_entries_count_towards_the_file_bound() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for index in range(5):
            info = tarfile.TarInfo(f"d{index}")
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
    with pytest.raises(BundleError, match="bundle_max_files 4"):
        read_bundle(buffer.getvalue(), BundleLimits(max_files=4))


def test_a_duplicate_entry_is_refused_even_when_spelled_differently() -> None:
    with pytest.raises(BundleError, match="appears twice"):
        read_bundle(tar_gz([("/p.rego", POLICY), ("./p.rego", POLICY)]))


def test_the_three_bounds() -> None:
    blob = tar_gz(policy_files(["/x"]))
    with pytest.raises(BundleError, match="bundle_max_size"):
        read_bundle(blob, BundleLimits(max_size=len(blob) - 1))
    with pytest.raises(BundleError, match="bundle_max_uncompressed_size"):
        read_bundle(blob, BundleLimits(max_uncompressed_size=4096))
    with pytest.raises(BundleError, match="bundle_max_files 2"):
        read_bundle(blob, BundleLimits(max_files=2))


def test_a_gzip_bomb_is_cut_off_while_inflating() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 100_000
    with pytest.raises(BundleError, match="bundle_max_uncompressed_size 1048576"):
        read_bundle(bomb, BundleLimits(max_uncompressed_size=1024 * 1024))


def test_yaml_aliases_are_refused() -> None:
    laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    with pytest.raises(BundleError, match="aliases"):
        read_bundle(tar_gz({"/data.yaml": laughs}))


@pytest.mark.parametrize("name", ["/patch.json", "/policy.wasm", "/x/plan.json"])
def test_delta_wasm_and_plan_bundles_are_refused(name: str) -> None:
    with pytest.raises(BundleError, match="not supported"):
        read_bundle(tar_gz({name: "{}"}))


@pytest.mark.parametrize(
    "manifest", ["[]", "not json", '{"roots": "envoy"}', '{"revision": 7}', '{"roots": [1]}']
)
def test_a_malformed_manifest_is_refused(manifest: str) -> None:
    with pytest.raises(BundleError, match=r"\.manifest"):
        read_bundle(tar_gz({"/.manifest": manifest}))


def _members() -> st.SearchStrategy[list[tuple[str, bytes]]]:
    names = st.sampled_from(
        ["/.manifest", "/data.json", "/a/data.yaml", "/p.rego", "../x", "/a/../b", "/x.txt"]
    ) | st.text(max_size=20)
    return st.lists(st.tuples(names, st.binary(max_size=200)), max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_members())
def test_any_archive_reads_or_is_refused_with_a_bundle_error(
    members: list[tuple[str, bytes]],
) -> None:
    try:
        blob = tar_gz(members)
    except (ValueError, UnicodeError):
        return  # names tarfile itself cannot write
    with contextlib.suppress(BundleError):
        read_bundle(blob, BundleLimits(max_uncompressed_size=1024 * 1024))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_read_or_are_refused_with_a_bundle_error(blob: bytes) -> None:
    with contextlib.suppress(BundleError):
        read_bundle(blob, BundleLimits(max_uncompressed_size=64 * 1024))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.integers(min_value=0, max_value=2000))
def test_a_corrupted_bundle_is_refused_cleanly(noise: bytes, at: int) -> None:
    """Bytes of a real bundle overwritten anywhere (headers, sizes, checksums, data)."""
    good = gzip.decompress(tar_gz(policy_files(["/x"])))
    at = at % len(good)
    bad = good[:at] + noise + good[at + len(noise) :]
    with contextlib.suppress(BundleError):
        read_bundle(gzip.compress(bad))


def test_a_truncated_gzip_is_refused() -> None:
    blob = tar_gz(policy_files(["/x"]))
    with pytest.raises(BundleError, match="gzip"):
        read_bundle(blob[: len(blob) // 2])


def test_an_uncompressed_tar_is_refused() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        archive.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    with pytest.raises(BundleError, match="not gzip"):
        read_bundle(buffer.getvalue())


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["revision", "roots", "metadata", "wasm", "rego_version", "x"]),
        _json_values | st.lists(st.sampled_from(["", "a", "a/b", "/a/", "envoy", "b"])),
        max_size=4,
    )
)
def test_any_manifest_loads_or_is_refused_with_a_bundle_error(manifest: dict[str, object]) -> None:
    files = {"/.manifest": json.dumps(manifest), "/a/b/data.json": '{"x": 1}'}
    try:
        bundle = read_bundle(tar_gz(files))
    except BundleError:
        return
    assert all(root_paths_contain(bundle.roots, r) for r in bundle.roots)
    assert root_paths_contain(bundle.roots, "a/b/x")
