"""Gmail's OAuth grant: refresh it with google-auth, insist on exactly gmail.send and
gmail.readonly, and revoke it at Google's revoke endpoint."""

from __future__ import annotations

import functools
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
import requests

from numail import redact
from numail.providers.base import (
    DEFAULT_GOOGLE_REVOKE_URI,
    DEFAULT_GOOGLE_TOKEN_URI,
    InvalidClient,
    InvalidGrant,
    ProtocolError,
    ProviderError,
    ProviderUnavailable,
    Revocation,
    ScopeMissing,
    TokenGrant,
    check_exact_scopes,
    safe_error_code,
)
from numail.providers.http import PinnedSession, transport_error

GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_SCOPES = (GMAIL_SEND, GMAIL_READONLY)


class GoogleOAuth:
    """One Google token endpoint and revoke endpoint, with the CA bundle to trust for them."""

    def __init__(
        self,
        token_uri: str = DEFAULT_GOOGLE_TOKEN_URI,
        revoke_uri: str = DEFAULT_GOOGLE_REVOKE_URI,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.token_uri = token_uri
        self.revoke_uri = revoke_uri
        self._ca_file = ca_file
        self._timeout = timeout

    def _session(self) -> PinnedSession:
        return PinnedSession(self._ca_file, self._timeout)

    def refresh(self, client_id: str, client_secret: str, refresh_token: str) -> TokenGrant:
        """Trade the refresh token for an access token, requesting exactly the Gmail scopes.

        Google answers with the scopes the whole grant holds, so the caller can tell a grant
        broader than it asked for.
        """
        redact.register(client_secret, refresh_token)
        credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=refresh_token,
            client_id=client_id,
            client_secret=client_secret,
            token_uri=self.token_uri,
            scopes=list(GMAIL_SCOPES),
        )
        with self._session() as session:
            request = functools.partial(
                google.auth.transport.requests.Request(session),
                timeout=self._timeout,
            )
            try:
                credentials.refresh(request)  # type: ignore[no-untyped-call]
            except google.auth.exceptions.RefreshError as err:
                raise _refresh_error(err) from None
            except google.auth.exceptions.TransportError as err:
                raise _transport_error(err.__cause__ or err, "token endpoint") from None
        token = credentials.token
        if not isinstance(token, str) or not token:
            raise ProtocolError("Google's token endpoint answered without an access token")
        redact.register(token)
        granted = credentials.granted_scopes
        if not granted:
            raise ScopeMissing(
                "Google's token endpoint did not say which scopes the grant holds, so they "
                "can't be checked"
            )
        return TokenGrant(access_token=token, scopes=frozenset(str(s) for s in granted))

    def verify(self, client_id: str, client_secret: str, refresh_token: str) -> TokenGrant:
        """Refresh, then refuse any grant that is not exactly gmail.send and gmail.readonly."""
        grant = self.refresh(client_id, client_secret, refresh_token)
        check_exact_scopes(grant.scopes, GMAIL_SCOPES, provider="Gmail")
        return grant

    def revoke(self, token: str) -> Revocation:
        """Revoke a refresh token, which ends the whole grant (RFC 7009).

        The token travels in the form body rather than the query string, so it can't end up in
        an access log; Google's endpoint takes either.
        """
        redact.register(token)
        try:
            with self._session() as session:
                response = session.post(
                    self.revoke_uri,
                    data={"token": token},
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                    timeout=self._timeout,
                )
        except requests.RequestException as err:
            raise _transport_error(err, "revoke endpoint") from None
        if response.status_code == 200:
            return Revocation("revoked", "Google revoked the grant")
        code = _error_code(response)
        if response.status_code == 400 and code in ("invalid_token", "invalid_grant"):
            return Revocation("already-invalid", f"Google no longer honours the token ({code})")
        if response.status_code == 429 or response.status_code >= 500:
            raise ProviderUnavailable(
                f"Google's revoke endpoint answered HTTP {response.status_code}; retrying"
            )
        raise ProtocolError(
            f"Google's revoke endpoint answered HTTP {response.status_code} ({code})"
        )


def _error_code(response: requests.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return "?"
    return safe_error_code(body.get("error")) if isinstance(body, dict) else "?"


def _refresh_error(err: google.auth.exceptions.RefreshError) -> ProviderError:
    """google-auth's message quotes the server's error_description; keep only the error code."""
    data = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], dict) else {}
    code = safe_error_code(data.get("error"))
    if code == "invalid_grant":
        return InvalidGrant(
            "Google refused the refresh token (invalid_grant): it was revoked or has expired, "
            "or was issued to another OAuth client; grant consent again and rotate the "
            "credentials"
        )
    if code in ("invalid_client", "unauthorized_client"):
        return InvalidClient(
            f"Google refused the OAuth client ({code}): check spec.oauth.clientId and the "
            "client secret in spec.oauth.clientSecretRef"
        )
    if code == "invalid_scope":
        return ScopeMissing(
            "Google refused the requested scopes (invalid_scope): the grant does not hold "
            "gmail.send and gmail.readonly; grant consent again with both"
        )
    if getattr(err, "retryable", False):
        return ProviderUnavailable(f"Google's token endpoint is unavailable ({code}); retrying")
    return ProtocolError(f"Google's token endpoint refused the refresh ({code})")


def _transport_error(err: BaseException, what: str) -> ProviderError:
    return transport_error(err, "Google", what)
