"""Decisions from an OPA server, over OPA's REST Data API, with OPA-Envoy's input and results.

Each check POSTs ``{"input": <the OPA-Envoy input document>}`` to ``/v1/data/<path>`` through
``opa_client``'s ``AsyncOpaClient`` (aiohttp, one keep-alive session per event loop) and maps
``result`` exactly as the embedded Rego engine does (``authd.policy.result``); a response
without ``result`` means the rule is undefined and denies. Anything else going wrong —
connection refused, a non-200 answer, a body that is not JSON, no answer within ``timeout`` —
is a ``PolicyError``, which the pipeline reports as an error, not as a deny.

The default timeout stays under Envoy's 200 ms ext_authz timeout, and retries are off by
default: a retry with back-off would outlive the check it is for.

Checks run on an eager task (``authd.transport.eager``), so ``asyncio.timeout`` has the task
it needs on every transport.

No OPA binary can be installed in this project's build environment, so this path is tested
against an in-test stand-in that speaks the same Data API (``tests/support/opa.py``), alone
and through Envoy on every transport (``tests/envoy/test_policy_engines_envoy.py``); run it
against a real ``opa run --server`` before relying on it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from opa_client import AsyncOpaClient

from authd.check.model import CheckContext, Decision, Identities
from authd.policy.base import InputDocument, PolicyError
from authd.policy.rego_source import DEFAULT_ENTRYPOINT, normalize_entrypoint
from authd.policy.result import UNDEFINED, ResultMapping, decision_from_result

DEFAULT_URL: Final = "http://127.0.0.1:8181"
DEFAULT_TIMEOUT: Final = 0.15  # seconds; below Envoy's default ext_authz timeout of 200 ms


class OpaPolicy:
    """Ask an OPA server's Data API for each decision."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        path: str = DEFAULT_ENTRYPOINT,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        token: str | None = None,
        retries: int = 0,
        results: ResultMapping = decision_from_result,
    ) -> None:
        self._results = results
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PolicyError(f"bad OPA URL {url!r}: expected http(s)://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise PolicyError(
                f"bad OPA URL {url!r}: give only scheme, host and port; the policy path is "
                "configured separately"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise PolicyError(f"bad OPA URL {url!r}: {exc}") from exc
        if timeout <= 0:
            raise PolicyError(f"OPA timeout must be positive, not {timeout}")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.path = normalize_entrypoint(path)
        self.timeout = timeout
        self.name = f"opa:{self.url}/v1/data/{self.path}"
        self._client_options: dict[str, Any] = {
            "host": parts.hostname,
            "port": port or (443 if parts.scheme == "https" else 8181),
            "ssl": parts.scheme == "https",
            "timeout": timeout,
            "retries": retries,
            "token": token,
        }
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    async def _session(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            client = AsyncOpaClient(**self._client_options)
            # Opens the aiohttp session without yielding to the loop, so two concurrent
            # first checks cannot both get here before one of them stores the client.
            await client.__aenter__()
            self._client, self._client_loop = client, loop
        return self._client

    async def query(self, document: Any) -> Decision:
        """POST the input document to OPA and map the result."""
        return self._results(await self.result(document), self.path)

    async def result(self, document: Any) -> Any:
        """POST the input document to OPA: its ``result``, or ``UNDEFINED``."""
        where = f"OPA at {self.url} ({self.path})"
        try:
            async with asyncio.timeout(self.timeout):
                client = await self._session()
                answer = await client.query_rule(input_data=document, package_path=self.path)
        except TimeoutError as exc:
            raise PolicyError(f"{where} did not answer within {self.timeout:g}s") from exc
        except aiohttp.ContentTypeError as exc:
            content_type = exc.headers.get("Content-Type") if exc.headers is not None else None
            raise PolicyError(
                f"{where} answered {content_type or 'untyped content'}, not JSON"
            ) from exc
        except aiohttp.ClientResponseError as exc:
            raise PolicyError(f"{where} answered HTTP {exc.status} {exc.message}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise PolicyError(f"cannot reach {where}: {exc or type(exc).__name__}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{where} answered with invalid JSON: {exc}") from exc
        if not isinstance(answer, dict):
            raise PolicyError(f"{where} answered {type(answer).__name__}, not a JSON object")
        return answer.get("result", UNDEFINED)

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        return await self.query(input_document())

    async def aclose(self) -> None:
        """Close the HTTP session (call from the loop that used it)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close_connection()
