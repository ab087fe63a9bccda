"""What reached a service of the local topology past its sidecar, for the demo to show: which
end-user credential headers arrived (none should: the gateway keeps them) and the claims of
the Txn-Token that arrived. The claims are decoded, not verified: the sidecar's authd has
verified the token before the request got here; a service that acts on them should verify
them itself against authd's bundle.
"""

from __future__ import annotations

import base64
import json
from email.message import Message
from typing import Any

CREDENTIALS = ("authorization", "x-api-key")
TXN_TOKEN = "txn-token"  # noqa: S105 (a header name)


def arrived(headers: Message) -> dict[str, Any]:
    token = headers.get(TXN_TOKEN)
    return {
        "credentials": [name for name in CREDENTIALS if headers.get(name) is not None],
        "txn_token": claims(token) if token else None,
    }


def claims(token: str) -> dict[str, Any] | str:
    try:
        payload = token.split(".")[1]
        doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return "unreadable"
    return doc if isinstance(doc, dict) else "unreadable"
