"""Node agents as admin operations: join tokens, the agent list, eviction and banning.

Thin over ``authd.nodes.agents.NodeAuthority``; without it (``[agent]`` not configured) each
operation is refused with a ``FailedPrecondition`` that says how to enable it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from authd.admin.callers import AdminCaller
from authd.admin.errors import AdminError, FailedPrecondition, InvalidArgument, store_refusal
from authd.nodes.agents import NodeAuthority
from ca.errors import InvalidRequest
from ca.store import AgentRecord, StoreError

__all__ = ["AgentOperations"]

T = TypeVar("T")

NOT_CONFIGURED = "node agents are not enabled: set agent.attestation_address and node_api_address"


class AgentOperations:
    def __init__(self, nodes: NodeAuthority | None) -> None:
        self._nodes = nodes

    def create_join_token(self, caller: AdminCaller, spiffe_id: str, ttl: int) -> tuple[str, int]:
        return self._run(lambda nodes: nodes.create_join_token(spiffe_id, ttl))

    def list(self) -> list[AgentRecord]:
        return self._run(lambda nodes: nodes.list_agents())

    def evict(self, caller: AdminCaller, agent_id: str) -> int:
        return self._run(lambda nodes: nodes.evict(agent_id, actor=caller.actor))

    def ban(self, caller: AdminCaller, agent_id: str) -> int:
        return self._run(lambda nodes: nodes.ban(agent_id, actor=caller.actor))

    def _run(self, operation: Callable[[NodeAuthority], T]) -> T:
        if self._nodes is None:
            raise FailedPrecondition(NOT_CONFIGURED)
        try:
            return operation(self._nodes)
        except InvalidRequest as exc:
            raise InvalidArgument(str(exc)) from None
        except StoreError as exc:
            refusal: AdminError = store_refusal(exc)
            raise refusal from None
