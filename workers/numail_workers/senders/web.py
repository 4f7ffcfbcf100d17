"""HTTP plumbing shared by the Gmail and Graph senders: where a failure happened decides whether
the request may have been acted on."""

from __future__ import annotations

import json
from typing import Any, Literal

import requests
import urllib3.exceptions

from numail.providers.base import safe_error_code
from numail.providers.http import PinnedSession


class BearerSession(PinnedSession):
    """A requests session for one mailbox and one batch, with the bearer token on every call.
    Closing it drops the token, so it lives no longer than the batch or poll at hand."""

    def __init__(self, ca_file: str | None, timeout: float, token: str) -> None:
        super().__init__(ca_file, timeout)
        self.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.headers.pop("Authorization", None)
        super().close()


def failure_kind(err: requests.RequestException) -> Literal["transient", "unknown"]:
    """`transient` when the request certainly never reached the server (no connection, a failed
    TLS handshake); `unknown` when it may have (a timeout or a drop while waiting for the
    answer)."""
    if isinstance(err, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return "transient"
    if isinstance(err, requests.exceptions.ConnectionError):
        reason: Any = err.args[0] if err.args else None
        inner = getattr(reason, "reason", reason)
        if isinstance(inner, urllib3.exceptions.ConnectTimeoutError):
            return "transient"  # NewConnectionError is one: refused, unresolvable, unreachable
    return "unknown"


def error_code(response: requests.Response) -> str:
    """The `error` code of a Google or Graph error body, safe to store; never its message."""
    try:
        body: Any = json.loads(response.content or b"null")
    except ValueError:
        return "?"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return safe_error_code(error.get("code") if "code" in error else error.get("status"))
        return safe_error_code(error)
    return "?"
