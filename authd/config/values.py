"""Value parsers for the config keys: each checks one raw value and converts it.

A raw value is whatever TOML, an environment variable (always a string) or a command-line
override gave; a parser returns the typed value or raises ValueError saying what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from authd.config.cpus import CPU_WORDS, format_cpu_list, parse_cpu_list
from authd.config.durations import parse_duration
from authd.config.model import LOG_LEVELS, IssuerConfig
from authd.transport.sockets import parse_host_port
from ca.errors import InvalidSpiffeId
from ca.spiffe_id import SpiffeId
from ca.store.urls import REDIS_URL_SCHEMES, redact_url

_STORE_SCHEMES = ("sqlite", *REDIS_URL_SCHEMES)


def parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    return value


def parse_cpus(value: object) -> str:
    """``auto``, ``all`` or a CPU list (``0-1,6``), as the canonical list."""
    text = parse_str(value).strip()
    if text in CPU_WORDS:
        return text
    return format_cpu_list(parse_cpu_list(text))


def parse_path(value: object) -> str:
    if isinstance(value, Path):
        return str(value)
    return parse_str(value)


def parse_non_negative_duration(value: object) -> int:
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_positive_duration(value: object) -> int:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def parse_choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = parse_str(value)
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse


def parse_choice_list(choices: tuple[str, ...]) -> Callable[[object], tuple[str, ...]]:
    def parse(value: object) -> tuple[str, ...]:
        items = parse_str_list(value)
        for item in items:
            if item not in choices:
                raise ValueError(f"each must be one of {', '.join(choices)}; got {item!r}")
        return tuple(dict.fromkeys(items))

    return parse


def parse_log_level(value: object) -> str:
    return parse_choice(LOG_LEVELS)(parse_str(value).lower())


def parse_trust_domain(value: object) -> str:
    text = parse_str(value)
    if text.startswith("spiffe://"):
        text = text.removeprefix("spiffe://")
    if not text:
        raise ValueError("must not be empty")
    if len(text) > 255:
        raise ValueError(f"must be at most 255 characters, not {len(text)}")
    if text != text.lower() and re.fullmatch(r"[a-zA-Z0-9._-]+", text):
        raise ValueError(f"must be lowercase: {text!r}")
    if not re.fullmatch(r"[a-z0-9._-]+", text):
        raise ValueError(
            f"must be a bare trust domain of [a-z0-9._-] (no port, path or userinfo), not {text!r}"
        )
    return text


def parse_subject(value: object) -> str:
    text = parse_str(value)
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        why = str(exc) or f"{text!r} is not ATTRIBUTE=value pairs joined by commas"
        raise ValueError(f"must be an RFC 4514 name like 'O=authd,C=US': {why}") from None
    if len(name) == 0:  # RFC 5280: a CA certificate's subject (our issuer name) is non-empty
        raise ValueError("must not be empty")
    return text


def parse_store_url(value: object) -> str:
    text = parse_str(value)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _STORE_SCHEMES or not rest:
        raise ValueError(
            f"must be sqlite://<path> or a Redis URL ({', '.join(REDIS_URL_SCHEMES)}), "
            f"not {redact_url(text)!r}"
        )
    return text


def parse_uids(value: object) -> tuple[int, ...]:
    if isinstance(value, str):  # from the environment: "0,1000"
        items: list[object] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("must be a list of uids")
    uids = []
    for item in items:
        if isinstance(item, str) and item.isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 2**32 - 1:
            raise ValueError(f"must be a list of uids (integers 0..4294967294), not {item!r}")
        uids.append(item)
    return tuple(uids)


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(f"must be true or false, not {value!r}")


def parse_str_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment: "a,b"
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def parse_header_name(value: object) -> str:
    text = parse_str(value).lower()
    if not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", text):
        raise ValueError(f"must be an HTTP header name, not {text!r}")
    return text


def parse_filter_name(value: object) -> str:
    text = parse_str(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", text):
        raise ValueError(f"must be an Envoy filter name like 'authd.rbac', not {text!r}")
    return text


def parse_optional_filter_name(value: object) -> str:
    """An Envoy filter name, or "" (the feature it names is off)."""
    return parse_filter_name(value) if parse_str(value) else ""


def parse_header_list(value: object) -> tuple[str, ...]:
    return tuple(parse_header_name(v) for v in parse_str_list(value))


def parse_address(value: object) -> str:
    """``host:port`` (IPv6 as ``[::1]:port``), or "" to disable the listener."""
    text = parse_str(value)
    if text:
        try:
            parse_host_port(text)
        except ValueError:
            raise ValueError(f"must be host:port (or empty to disable), not {text!r}") from None
    return text


def parse_spiffe_id(value: object) -> str:
    """A SPIFFE ID with a path, or "" for the default."""
    text = parse_str(value)
    if not text:
        return text
    try:
        spiffe_id = SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        raise ValueError(str(exc)) from None
    if not spiffe_id.is_workload:
        raise ValueError(f"{text} has no path; an X.509-SVID needs one")
    return str(spiffe_id)


def parse_int_at_least(minimum: int) -> Callable[[object], int]:
    words = {0: "non-negative", 1: "positive"}

    def parse(value: object) -> int:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            if minimum not in words:
                raise ValueError(f"must be an integer of at least {minimum}, not {value!r}")
            raise ValueError(f"must be a {words[minimum]} integer, not {value!r}")
        return value

    return parse


parse_non_negative_int = parse_int_at_least(0)
parse_positive_int = parse_int_at_least(1)


_ISSUER_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)


def parse_issuers(value: object) -> tuple[IssuerConfig, ...]:
    if not isinstance(value, list):
        raise ValueError("must be an array of tables ([[authz.issuers]])")
    issuers = []
    names: set[str] = set()
    for index, item in enumerate(value):
        where = f"issuer #{index + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a table")
        unknown = set(item) - set(IssuerConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        for required in ("name", "issuer", "jwks_uri"):
            if not isinstance(item.get(required), str) or not item[required]:
                raise ValueError(f"{where}: {required!r} is required")
        if item["name"] in names:
            raise ValueError(f"{where}: duplicate name {item['name']!r}")
        names.add(item["name"])
        if not item["jwks_uri"].startswith(("http://", "https://")):
            raise ValueError(f"{where}: jwks_uri must be an http(s) URL")
        algorithms = parse_str_list(item.get("algorithms", ["RS256", "ES256"]))
        for alg in algorithms:
            if alg not in _ISSUER_ALGORITHMS:
                allowed = ", ".join(_ISSUER_ALGORITHMS)
                raise ValueError(f"{where}: algorithm {alg!r} is not allowed; use {allowed}")
        audiences = parse_str_list(item.get("audiences", []))
        if not audiences:
            raise ValueError(f"{where}: 'audiences' is required (a token for any app would do)")
        leeway = item.get("leeway", 60)
        if isinstance(leeway, bool) or not isinstance(leeway, int) or leeway < 0:
            raise ValueError(f"{where}: leeway must be a non-negative number of seconds")
        issuers.append(
            IssuerConfig(
                name=item["name"],
                issuer=item["issuer"],
                jwks_uri=item["jwks_uri"],
                audiences=audiences,
                algorithms=algorithms,
                header=parse_header_name(item.get("header", "authorization")),
                leeway=leeway,
            )
        )
    return tuple(issuers)
