"""Small, real implementations of the pipeline's interfaces for transport tests."""

from __future__ import annotations

from authd.check.model import CheckContext, Decision, Identities, Reason
from authd.policy.base import InputDocument


class FixedIdentities:
    """A resolver that knows the identities in advance (the resolver has its own tests)."""

    def __init__(self, identities: Identities) -> None:
        self.identities = identities
        self.seen: list[CheckContext] = []

    async def resolve(self, ctx: CheckContext) -> Identities:
        self.seen.append(ctx)
        return self.identities


class PathPolicy:
    """Allows paths under /public and callers on /internal; remembers the input it built."""

    name = "test:path"

    def __init__(self) -> None:
        self.inputs: list[dict[str, object]] = []

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        if ctx.path_only.startswith("/rego"):
            self.inputs.append(input_document())
            return Decision(
                allowed=True,
                reason=Reason.ALLOWED,
                rule="rego",
                headers={"x-from-policy": "yes"},
                query_parameters_to_set={"tenant": "acme"},
                response_headers_to_add={"x-served-by": "authd"},
            )
        if ctx.path_only.startswith("/public"):
            return Decision(allowed=True, reason=Reason.ALLOWED, rule="public")
        if ctx.path_only.startswith("/internal") and identities.caller is not None:
            return Decision(allowed=True, reason=Reason.ALLOWED, rule="internal")
        if ctx.path_only.startswith("/teapot"):
            return Decision(
                allowed=False,
                reason=Reason.POLICY_DENIED,
                rule="teapot",
                http_status=418,
                body="short and stout",
            )
        return Decision(allowed=False, reason=Reason.NO_MATCHING_RULE)
