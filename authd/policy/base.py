"""What every policy engine (declarative rules, Rego, an OPA server) offers the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from authd.check.model import CheckContext, Decision, Identities

InputDocument = Callable[[], dict[str, Any]]


class PolicyError(Exception):
    """A policy cannot be loaded or evaluated; the message names the file, line and rule."""


class Policy(Protocol):
    name: str  # shown in decision logs, e.g. "rules:/etc/authd/policy.yaml"

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        """Decide. ``input_document()`` builds (once, then cached) the OPA-Envoy input."""
        ...
