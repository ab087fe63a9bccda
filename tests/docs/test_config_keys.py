"""The config documentation cannot drift: every key the code knows is in the README's
configuration table and in deploy/authd.toml, and neither lists a key the code does not know."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

from authd.config.keys import PARSERS

REPO = Path(__file__).resolve().parents[2]


def readme_table_keys() -> set[str]:
    """The keys named in the first cell of each row of the README's configuration table."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            keys |= {k.strip("[]") for k in re.findall(r"`([^`]+)`", first_cell)}
    return keys


def _flat(table: Mapping[str, object], prefix: str = "") -> Iterator[str]:
    for name, value in table.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def sample_config_keys() -> set[str]:
    """The keys deploy/authd.toml sets, and those it shows commented out (a machine-dependent
    default such as ``# data_dir = ...``, or a ``# [[authz.issuers]]`` table)."""
    path = REPO / "deploy" / "authd.toml"
    keys = set(_flat(tomllib.loads(path.read_text())))
    section, in_commented_table = "", False
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"\[([a-z_]+)\]", line.strip()):
            section, in_commented_table = f"{match[1]}.", False
        elif match := re.fullmatch(r"# \[\[([a-z_.]+)\]\]", line.strip()):
            keys.add(match[1])
            in_commented_table = True
        elif not line.strip():
            in_commented_table = False
        elif (match := re.fullmatch(r"# ([a-z_]+) = .*", line.strip())) and not in_commented_table:
            keys.add(f"{section}{match[1]}")
    return keys


def test_every_config_key_is_in_the_readme_table_and_nothing_else_is() -> None:
    documented = readme_table_keys()
    assert sorted(set(PARSERS) - documented) == [], "keys missing from the README's table"
    assert sorted(documented - set(PARSERS)) == [], "README documents keys the code lacks"


def test_every_config_key_is_in_the_sample_config_and_nothing_else_is() -> None:
    listed = sample_config_keys()
    assert sorted(set(PARSERS) - listed) == [], "keys missing from deploy/authd.toml"
    assert sorted(listed - set(PARSERS)) == [], "deploy/authd.toml lists keys the code lacks"
