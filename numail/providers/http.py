"""HTTPS sessions for the OAuth and Graph endpoints, with a CA choice the environment can't undo.

requests lets REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) override a session's `verify`; a CA file
given in the operator's settings must win over that, so it is passed with every request.
"""

from __future__ import annotations

from typing import Any

import requests

from numail.providers.base import ProviderError, TLSFailed, Unreachable


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


def transport_error(err: BaseException, provider: str, what: str) -> ProviderError:
    """What a failed HTTP exchange with `provider`'s `what` means for a mailbox: an untrusted
    certificate is TLSFailed (wait for a fix), anything else on the wire is Unreachable (retry)."""
    if isinstance(err, requests.exceptions.SSLError):
        return TLSFailed(
            f"TLS to {provider}'s {what} failed: its certificate is not trusted (check "
            "NUMAIL_PROVIDER_CA_FILE) or the handshake failed"
        )
    if isinstance(err, requests.exceptions.Timeout):
        return Unreachable(f"{provider}'s {what} did not answer in time")
    return Unreachable(f"cannot reach {provider}'s {what} ({type(err).__name__})")
