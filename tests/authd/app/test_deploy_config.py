"""The sample config in deploy/ is a real config: it loads and names every key."""

from __future__ import annotations

from pathlib import Path

from authd.config import load_config
from authd.config.keys import PARSERS

SAMPLE = Path(__file__).parents[3] / "deploy" / "authd.toml"


def test_sample_config_loads() -> None:
    config = load_config(SAMPLE, env={})
    assert config.trust_domain == "example.org"


def test_sample_config_mentions_every_key() -> None:
    text = SAMPLE.read_text()
    missing = [key for key in PARSERS if key.rsplit(".", 1)[-1] not in text]
    assert missing == []
