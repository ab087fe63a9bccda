"""The one exception that says "the caller sent something we cannot read"."""

from __future__ import annotations


class MalformedRequest(Exception):
    """Caller-controlled input that cannot be parsed or judged: the check is denied.

    ``rule`` names what could not be read (``path``, ``input``, ``peer_certificate``, ...);
    it becomes the decision's rule. The message never quotes the input (it may be a token).
    The pipeline turns this, wherever it is raised during a check, into a deny with reason
    ``malformed_request``; any other exception is a failure of authd itself.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
