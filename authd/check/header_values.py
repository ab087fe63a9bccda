"""What authd may put in a header: RFC 9110 field names and values, one encoding for the rest.

Every header authd sends (the verified caller and subject, the decision id, the policy's
headers, the names it asks Envoy to remove) passes here once, in the pipeline, before the
decision is logged, so both transports send the same bytes and the log says what was sent:

- a value of visible ASCII with single spaces or tabs inside goes as it is;
- a value with non-ASCII characters, leading or trailing whitespace, or that itself begins
  with ``UTF-8''`` goes as an RFC 8187 ext-value: ``UTF-8''`` and its UTF-8 bytes, each byte
  outside RFC 8187's attr-char set percent-encoded (``josé`` → ``UTF-8''jos%C3%A9``);
- a value holding a control character (CR, LF, NUL, any other C0 control but tab inside,
  DEL), or longer than ``MAX_VALUE_LENGTH`` once encoded, cannot be sent: the check is
  denied with reason ``invalid_header_value`` (403), never a forged header line or a 5xx;
- a name that is not an RFC 9110 token is refused the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from authd.check.model import Decision, EnvoyResponse, Outcome, Reason

# Encoded values longer than this are refused: Envoy's default header limit is 60 KiB for the
# whole block, and upstreams commonly cap one line at 8 KiB.
MAX_VALUE_LENGTH = 8192
EXT_VALUE_PREFIX = "UTF-8''"
_PREFIX_UPPER = EXT_VALUE_PREFIX.upper()

# field-value (RFC 9110 5.5) without obs-text, and no whitespace at either end.
_PLAIN = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")
# token (RFC 9110 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# C0 controls except HTAB, and DEL: never sendable, whatever the encoding.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# attr-char (RFC 8187 3.2.1): what an ext-value carries unencoded.
_ATTR_CHAR = frozenset(
    b"!#$&+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


class InvalidHeader(ValueError):
    """A header name or value authd cannot send; ``name`` says which header."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"header {name[:64]!r}: {problem}")
        self.name = name


# Names seen valid (the same few on every check), so most checks skip the regex.
_TOKENS_KEPT = 1024
_tokens: set[str] = set()


def is_token(name: str) -> bool:
    if name in _tokens:
        return True
    if _TOKEN.fullmatch(name) is None:
        return False
    if len(_tokens) < _TOKENS_KEPT:
        _tokens.add(name)
    return True


def is_field_value(value: str) -> bool:
    """True when ``value`` may go on the wire: visible ASCII, inner spaces, bounded."""
    if value.isascii() and value.isprintable():  # fast path: no controls at all
        plain = value[:1] != " " and value[-1:] != " "
    else:
        plain = _PLAIN.fullmatch(value) is not None
    return plain and len(value) <= MAX_VALUE_LENGTH


def is_sendable(value: str) -> bool:
    """True when ``value`` is already a field value authd sends as it is."""
    if value[5:7] == "''" and value[:7].upper() == _PREFIX_UPPER:
        return False
    return is_field_value(value)


def field_value(name: str, value: str) -> str:
    """``value`` as authd sends it in header ``name`` (see the module docstring)."""
    if is_sendable(value):
        encoded = value
    elif _CONTROL.search(value) is not None:
        raise InvalidHeader(name, "control character in the value")
    else:
        data = value.encode("utf-8", "surrogatepass")
        encoded = EXT_VALUE_PREFIX + "".join(
            chr(b) if b in _ATTR_CHAR else f"%{b:02X}" for b in data
        )
    if len(encoded) > MAX_VALUE_LENGTH:
        raise InvalidHeader(name, f"value longer than {MAX_VALUE_LENGTH} bytes")
    return encoded


def field_values(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with every name checked and every value encoded (raises InvalidHeader)."""
    for name, value in headers.items():
        # is_token and is_sendable inlined for names seen before and plain visible ASCII (no
        # call per header); anything else takes the full check below.
        if (
            name not in _tokens
            or not (value.isascii() and value.isprintable())
            or value[:1] == " "
            or value[-1:] == " "
            or len(value) > MAX_VALUE_LENGTH
            or (value[5:7] == "''" and value[:7].upper() == _PREFIX_UPPER)
        ):
            break
    else:
        return headers  # the common case: nothing to encode, nothing to refuse
    for name, value in headers.items():
        if not (is_token(name) and is_sendable(value)):
            break
    else:
        return headers
    out = {}
    for name, value in headers.items():
        if not is_token(name):
            raise InvalidHeader(name, "the name is not an RFC 9110 token")
        out[name] = value if is_sendable(value) else field_value(name, value)
    return out


def check_names(names: Iterable[str]) -> None:
    """Raise InvalidHeader for a name that is not an RFC 9110 token."""
    for name in names:
        if not is_token(name):
            raise InvalidHeader(name, "the name is not an RFC 9110 token")


def sendable_outcome(outcome: Outcome, decision_id_header: str) -> Outcome:
    """``outcome`` with every header it sends made sendable, or, when one cannot be, a deny.

    The deny is 403 with reason ``invalid_header_value`` and the offending header's name as
    its rule; it carries none of the original headers, and dry-run does not turn it into an
    allow (the header could not be sent either way).
    """
    decision = outcome.decision
    try:
        if outcome.upstream_headers:
            outcome.upstream_headers = field_values(outcome.upstream_headers)
        if outcome.deny_headers:
            outcome.deny_headers = field_values(outcome.deny_headers)
        added = decision.response_headers_to_add
        if added and (checked := field_values(added)) is not added:
            # A copy: a policy may hand out the same Decision for many checks.
            outcome.decision = replace(decision, response_headers_to_add=checked)
        # The configured names to remove were checked once (Authorizer); the policy's here.
        if decision.request_headers_to_remove:
            check_names(decision.request_headers_to_remove)
    except InvalidHeader as exc:
        return _refused(outcome, exc.name, decision_id_header)
    return outcome


def _refused(outcome: Outcome, name: str, decision_id_header: str) -> Outcome:
    # The name may itself be the problem: only a valid one goes into the log.
    decision = Decision(
        allowed=False,
        reason=Reason.INVALID_HEADER_VALUE,
        rule="header:" + (name if is_token(name) else "(invalid name)"),
        http_status=403,
    )
    metadata = {
        key: value
        for key, value in outcome.dynamic_metadata.items()
        if key in ("decision_id", "caller")
    }
    metadata["reason"] = str(decision.reason)
    metadata["rule"] = decision.rule
    decision_id = outcome.decision_id
    return Outcome(
        decision=decision,
        identities=outcome.identities,
        decision_id=decision_id,
        status=403,
        allowed=False,
        deny_headers={"content-type": "application/json", decision_id_header: decision_id},
        deny_body='{"error":"%s","decision_id":"%s"}' % (decision.reason, decision_id),  # noqa: UP031
        dynamic_metadata=metadata,
    )


def _pairs(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    for name, value in pairs:
        if not (is_token(name) and is_sendable(value)):
            break
    else:
        return pairs
    checked = []
    for name, value in pairs:
        if not is_token(name):
            raise InvalidHeader(name, "the name is not an RFC 9110 token")
        checked.append((name, field_value(name, value)))
    return tuple(checked)


def sendable_opa_envoy_outcome(outcome: Outcome) -> Outcome:
    """``sendable_outcome`` for an OPA-Envoy answer: the same encoding of every header, and a
    header that cannot be sent denies with what the plugin's answer to a deny is (403)."""
    envoy = outcome.envoy
    if envoy is None:
        return outcome
    try:
        headers = _pairs(envoy.headers)
        added = _pairs(envoy.response_headers_to_add)
        checked = (
            envoy
            if headers is envoy.headers and added is envoy.response_headers_to_add
            else replace(envoy, headers=headers, response_headers_to_add=added)
        )
        check_names(envoy.request_headers_to_remove)
        outcome.upstream_headers = field_values(outcome.upstream_headers)
        outcome.deny_headers = field_values(outcome.deny_headers)
        check_names(outcome.remove_headers)
    except InvalidHeader as exc:
        refused = _refused(outcome, exc.name, "")
        refused.deny_headers = {}
        refused.deny_body = ""
        refused.envoy = EnvoyResponse()
        return refused
    if checked is not envoy:
        outcome.envoy = checked
    return outcome
