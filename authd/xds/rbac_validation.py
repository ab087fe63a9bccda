"""What must never reach Envoy: the checks run on an RBAC config before every push (pure).

Envoy refuses most bad configs with a NACK and keeps the last good one, but some abort the
whole process instead: an invalid ``uri_template`` inside RBAC makes Envoy 1.40 SIGABRT,
also when pushed live. So every config is walked before it is sent, and one that fails is
never pushed (the previous one stays in force and the reason is logged). Checked: every
regex compiles and uses nothing RE2 lacks (look-around, back-references), every
``uri_template`` follows Envoy's grammar, exact-match keys and action names are not empty,
and the tree is not deeper than Envoy's recursion limits allow.
"""

from __future__ import annotations

import re
from typing import Any, Final

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from google.protobuf.message import Message

__all__ = ["InvalidRbacConfig", "validate_rbac", "validate_uri_template"]

MAX_DEPTH: Final = 32
MAX_REGEX_CHARS: Final = 1024
_UNSUPPORTED_RE2: Final = re.compile(r"\(\?[=!<]|\\[1-9]|\(\?P=")
_URI_TEMPLATE_TYPE: Final = "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
_LITERAL: Final = re.compile(r"[A-Za-z0-9._~!$&'()+,;:@=-]+")
_VARIABLE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:=([^{}]*))?\}")
_MAX_VARIABLES: Final = 5


class InvalidRbacConfig(ValueError):
    """A config that must not be pushed; the message says where and why."""


def validate_uri_template(template: str) -> None:
    """Raise ``InvalidRbacConfig`` unless ``template`` is one Envoy's uri_template accepts."""
    if not template.startswith("/") or len(template) > 256:
        raise InvalidRbacConfig(f"uri_template {template!r}: must start with '/' (≤ 256 chars)")
    names: set[str] = set()
    segments = template[1:].split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        variable = _VARIABLE.fullmatch(segment)
        if variable is not None:
            name, pattern = variable.group(1), variable.group(2)
            if name in names:
                raise InvalidRbacConfig(f"uri_template {template!r}: variable {name} twice")
            names.add(name)
            if pattern is not None and pattern not in ("*", "**"):
                raise InvalidRbacConfig(f"uri_template {template!r}: bad pattern {pattern!r}")
            if pattern == "**" and not last:
                raise InvalidRbacConfig(f"uri_template {template!r}: '**' only at the end")
        elif segment == "**":
            if not last:
                raise InvalidRbacConfig(f"uri_template {template!r}: '**' only at the end")
        elif segment != "*" and not (segment == "" and last) and not _LITERAL.fullmatch(segment):
            raise InvalidRbacConfig(f"uri_template {template!r}: bad segment {segment!r}")
    if len(names) > _MAX_VARIABLES:
        raise InvalidRbacConfig(f"uri_template {template!r}: more than 5 variables")


def _check_regex(regex: str, where: str) -> None:
    if len(regex) > MAX_REGEX_CHARS:
        raise InvalidRbacConfig(f"{where}: regex longer than {MAX_REGEX_CHARS} characters")
    if _UNSUPPORTED_RE2.search(regex):
        raise InvalidRbacConfig(f"{where}: regex {regex!r} uses what RE2 lacks")
    try:
        re.compile(regex)
    except re.error as exc:
        raise InvalidRbacConfig(f"{where}: regex {regex!r} does not compile: {exc}") from None


def _walk(message: Message, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidRbacConfig(f"{where}: nested deeper than {MAX_DEPTH}")
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Any":
        any_message: Any = message
        if any_message.type_url.endswith("/" + _URI_TEMPLATE_TYPE):
            config = uri_template_match_pb2.UriTemplateMatchConfig()
            any_message.Unpack(config)
            validate_uri_template(config.path_template)
            return
        inner = _unpack_known(any_message)
        if inner is not None:
            _walk(inner, where, depth + 1)
        return
    if name.endswith("RegexMatcher") and getattr(message, "regex", None) is not None:
        _check_regex(str(message.regex), where)  # type: ignore[attr-defined]
    if name == "envoy.config.rbac.v3.Action" and not message.name:  # type: ignore[attr-defined]
        raise InvalidRbacConfig(f"{where}: an action without a name")
    for field, value in message.ListFields():
        here = f"{where}.{field.name}"
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if not key:
                    raise InvalidRbacConfig(f"{here}: an empty key")
                if isinstance(item, Message):
                    _walk(item, f"{here}[{key!r}]", depth + 1)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _walk(item, f"{here}[{index}]", depth + 1)
        else:
            _walk(value, here, depth + 1)


def _unpack_known(packed: Any) -> Message | None:
    """Inner messages worth walking: RBAC actions, matcher inputs, nested RBAC configs."""
    from google.protobuf import symbol_database

    full_name = packed.type_url.rpartition("/")[2]
    try:
        cls = symbol_database.Default().GetSymbol(full_name)
    except KeyError:
        return None
    inner = cls()
    packed.Unpack(inner)
    return inner


def validate_rbac(config: Any) -> None:
    """Raise ``InvalidRbacConfig`` if the RBAC filter config (or its TypedExtensionConfig)
    holds anything that would abort Envoy or that Envoy's own checks certainly refuse."""
    if config.DESCRIPTOR.full_name == "envoy.config.core.v3.TypedExtensionConfig":
        if not config.name:
            raise InvalidRbacConfig("the filter config has no name")
        rbac = rbac_pb2.RBAC()
        if not config.typed_config.Unpack(rbac):
            raise InvalidRbacConfig(f"typed_config is {config.typed_config.type_url}, not RBAC")
        config = rbac
    if not (config.HasField("matcher") or config.HasField("rules")):
        raise InvalidRbacConfig("neither matcher nor rules: Envoy would allow everything")
    _walk(config, "rbac", 0)


# Referenced so the symbol database knows the action type when a config is only unpacked.
_ = rbac_config_pb2.Action
