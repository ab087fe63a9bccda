"""The values that flow through a check: the question, the verified identities, the answer.

``CheckContext`` is transport-neutral: the gRPC adapter builds it from a CheckRequest, the
HTTP-service adapter from Envoy's HTTP request; everything after that sees only this.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload
from urllib.parse import parse_qs

from authd.check.request_path import normalize_path, path_without_query
from ca.spiffe_id import SpiffeId

_EMPTY: Mapping[str, str] = {}
T = TypeVar("T")


class _once(Generic[T]):  # a decorator, lower-case like functools.cached_property
    """An attribute computed on first use and then kept in the instance's ``__dict__``.

    ``functools.cached_property`` without its lock (3.11 takes an RLock on every first use):
    a CheckContext belongs to the one check that reads it. A computation that raises keeps
    nothing, so it raises again on the next use.
    """

    __slots__ = ("_compute", "_name")

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self._compute = compute
        self._name = compute.__name__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _once[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> T | _once[T]:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._compute(instance)
        return value


class CheckContext:
    """One authorization question: the request Envoy is about to let through, or not."""

    def __init__(
        self,
        *,
        method: str,
        host: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        truncated_body: bool = False,
        source_principal: str = "",
        source_certificate: str = "",
        source_address: str = "",
        destination_principal: str = "",
        context_extensions: Mapping[str, str] = _EMPTY,
        protocol: str = "",
        scheme: str = "",
        request_id: str = "",
        transport: str = "grpc",
        check_request: Any = None,
    ) -> None:
        self.method = method
        self.host = host
        # As Envoy gives it: undecoded, with the query string.
        self.path = path
        # Lower-case names (Envoy sends them lower-case over both transports).
        self.headers = headers
        self.body = body
        self.truncated_body = truncated_body
        # Set by Envoy from the downstream connection, never taken from a request header
        # the client could write (see the HTTP adapter for how that is guaranteed there).
        self.source_principal = source_principal
        # URL-encoded PEM of the peer certificate (Envoy's include_peer_certificate).
        self.source_certificate = source_certificate
        self.source_address = source_address
        # The SPIFFE ID of the Envoy asking (its own certificate's URI SAN on an mTLS
        # listener): the hop a call-path rule names with ``at``.
        self.destination_principal = destination_principal
        self.context_extensions = context_extensions
        self.protocol = protocol
        self.scheme = scheme
        self.request_id = request_id
        self.transport = transport  # "grpc" or "http"
        # The raw envoy.service.auth.v3.CheckRequest when the check came over gRPC.
        self.check_request = check_request

    @_once
    def path_only(self) -> str:
        """The path without query string or fragment, as sent."""
        path = self.path
        if "?" in path or "#" in path:
            return path_without_query(path)
        return path

    @_once
    def normalized_path(self) -> str:
        """``path_only`` normalised (``authd.check.request_path``): what policies match.

        Raises ``MalformedRequest`` for a path that has no single meaning (an encoded ``/``).
        """
        return normalize_path(self.path_only)

    @_once
    def query(self) -> dict[str, list[str]]:
        _, _, query = self.path.partition("?")
        return parse_qs(query.split("#", 1)[0], keep_blank_values=True)


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """An end user, from a JWT that an external issuer signed and we verified."""

    issuer: str
    subject: str
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TxnToken:
    """A verified transaction token (draft-ietf-oauth-transaction-tokens): the call's context,
    minted at the front door by authd and carried to every hop behind it."""

    txn: str  # the transaction's id (also the front door's decision id)
    sub: str  # the end user (or API key, or workload) the call is made for
    scope: tuple[str, ...]  # what the transaction may do (space-separated in the token)
    req_wl: str  # the workload that asked for it: the front door's SPIFFE ID
    tctx: Mapping[str, Any]  # the transaction's context: method, path, selected claims
    rctx: Mapping[str, Any]  # the request's context: client IP, authentication method
    iat: int
    exp: int
    aud: str

    def document(self) -> dict[str, Any]:
        """As policies see it (``input.authd.txn_token``)."""
        return {
            "txn": self.txn,
            "sub": self.sub,
            "scope": list(self.scope),
            "req_wl": self.req_wl,
            "tctx": dict(self.tctx),
            "rctx": dict(self.rctx),
            "iat": self.iat,
            "exp": self.exp,
            "aud": self.aud,
        }


@dataclass(frozen=True, slots=True)
class CredentialProblem:
    """A credential that was presented but did not verify: what it was and why."""

    kind: str  # "peer_certificate" | "jwt_svid" | "user_jwt" | "api_key" | "txn_token"
    reason: str  # the verifier's message (safe to log; never the credential itself)
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Identities:
    """Who is calling, as far as verified credentials tell."""

    peer: SpiffeId | None = None  # the mTLS peer's SPIFFE ID
    peer_serial: str | None = None  # its certificate serial (lowercase hex), when sent
    workload: SpiffeId | None = None  # the subject of a verified JWT-SVID
    workload_token_id: str | None = None  # the JWT-SVID's jti, when present
    user: UserIdentity | None = None
    api_key: str | None = None  # the name of the API key that matched
    txn_token: TxnToken | None = None  # a verified incoming transaction token
    problems: tuple[CredentialProblem, ...] = ()

    @property
    def caller(self) -> SpiffeId | None:
        """The calling workload: the JWT-SVID's subject if one was sent, else the mTLS peer."""
        return self.workload or self.peer

    @property
    def authenticated(self) -> bool:
        return bool(self.peer or self.workload or self.user or self.api_key)


class Reason(enum.StrEnum):
    """Why a check was decided as it was: the reason code in logs, metrics and deny bodies."""

    ALLOWED = "allowed"
    DENIED_BY_RULE = "denied_by_rule"
    NO_MATCHING_RULE = "no_matching_rule"
    POLICY_DENIED = "policy_denied"  # Rego/OPA said no
    INVALID_HEADER_VALUE = "invalid_header_value"  # a header authd would send is unsendable
    MISSING_CREDENTIALS = "missing_credentials"
    INVALID_CREDENTIALS = "invalid_credentials"
    REVOKED = "revoked"
    STALE = "revocations_stale"  # this replica lost the shared store too long ago
    STORE_REGRESSED = "store_regressed"  # the store went backwards, past store.max_staleness
    MALFORMED_REQUEST = "malformed_request"  # caller input that cannot be parsed (400)
    CALL_PATH = "call-path"  # an allow rule's `from` did not hold: no Txn-Token, wrong hop
    TXN_SCOPE_WIDENED = "txn_scope_widened"  # the policy asked a wider Txn-Token scope


@dataclass(frozen=True, slots=True)
class EnvoyResponse:
    """What the OPA-Envoy plugin puts in its CheckResponse for a policy result, field by field.

    ``form`` is ``"boolean"`` (no ``ok_response``/``denied_response`` at all) or ``"object"``.
    Headers keep every value in order, each one its own header option without an append
    action, as the plugin sends them (Envoy then adds, never overwrites). Only the fields
    the plugin reads for the decision are set: on allow the request and query mutations, on
    deny ``body`` and ``http_status``; ``headers`` and ``dynamic_metadata`` on both.
    """

    form: str = "object"
    headers: tuple[tuple[str, str], ...] = ()
    response_headers_to_add: tuple[tuple[str, str], ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    query_parameters_to_set: tuple[tuple[str, str], ...] = ()
    query_parameters_to_remove: tuple[str, ...] = ()
    body: str = ""
    http_status: int = 403


@dataclass(frozen=True, slots=True)
class PolicyTrace:
    """What OPA-format decision logs record of an evaluation: the result as the policy
    returned it (``UNDEFINED`` of ``authd.policy.result`` when undefined) and its duration."""

    result: Any
    eval_ns: int = 0


@dataclass(slots=True)
class Decision:
    """The policy's answer, in the vocabulary of OPA-Envoy results.

    On allow, ``headers`` go to the upstream request; on deny, to the client's response.
    ``http_status`` 0 means the default: 200 on allow, 401 or 403 on deny (see Reason).
    """

    allowed: bool
    reason: Reason
    rule: str = ""  # the rule (or policy entrypoint) that decided
    http_status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    response_headers_to_add: dict[str, str] = field(default_factory=dict)
    request_headers_to_remove: list[str] = field(default_factory=list)
    query_parameters_to_set: dict[str, str] = field(default_factory=dict)
    query_parameters_to_remove: list[str] = field(default_factory=list)
    body: str = ""
    dynamic_metadata: dict[str, Any] = field(default_factory=dict)
    # On allow: the scope the Txn-Token sent upstream gets (a narrowing; None: unchanged).
    txn_scope: tuple[str, ...] | None = None
    # Set by the OPA-Envoy result mapping (``authz.policy_compat = "opa-envoy"``).
    envoy: EnvoyResponse | None = None
    # Set when OPA-format decision logs are on (``authd.authz.opa_log_trace``).
    trace: PolicyTrace | None = None


@dataclass(slots=True)
class Outcome:
    """A decided check: what the adapters answer and what the decision log records."""

    decision: Decision
    identities: Identities
    decision_id: str
    status: int  # the HTTP status the client sees on deny (200 on allow)
    allowed: bool  # what Envoy is told (dry-run turns a deny into an allow)
    upstream_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)
    deny_headers: dict[str, str] = field(default_factory=dict)
    deny_body: str = ""
    dynamic_metadata: dict[str, Any] = field(default_factory=dict)
    txn: str = ""  # the transaction this check belongs to (minted or carried), if any
    # In OPA-Envoy compatibility: what the plugin would answer, sent as it would send it;
    # ``upstream_headers``/``deny_headers``/``remove_headers`` then hold only the extras
    # authd was asked to add (``authz.opa_envoy_extras``).
    envoy: EnvoyResponse | None = None
