"""HTTPS sessions for the OAuth and Graph endpoints, with a CA choice the environment can't undo.

requests lets REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) override a session's `verify`; a CA file
given in the operator's settings must win over that, so it is passed with every request.
"""

from __future__ import annotations

from typing import Any

import requests


class PinnedSession(requests.Session):
    """A requests session that sends `verify` and a default timeout with every request."""

    def __init__(self, ca_file: str | None, timeout: float) -> None:
        super().__init__()
        self._ca_file = ca_file
        self._timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> Any:
        """Session.request's parameters; `verify` and `timeout` are always keywords there."""
        if self._ca_file and kwargs.get("verify") is None:
            kwargs["verify"] = self._ca_file
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().request(*args, **kwargs)
