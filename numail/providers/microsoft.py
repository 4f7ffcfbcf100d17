"""Microsoft 365's OAuth grant: refresh it with msal, insist on exactly Mail.Send and Mail.Read,
and end it through Microsoft Graph's revokeSignInSessions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import msal
import requests

from numail import redact
from numail.providers.base import (
    DEFAULT_GRAPH_URL,
    DEFAULT_MICROSOFT_AUTHORITY_HOST,
    Forbidden,
    InvalidClient,
    InvalidGrant,
    InvalidTenant,
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

GRAPH_RESOURCE = "https://graph.microsoft.com/"
MAIL_SEND = GRAPH_RESOURCE + "Mail.Send"
MAIL_READ = GRAPH_RESOURCE + "Mail.Read"
MAIL_SCOPES = (MAIL_SEND, MAIL_READ)
# msal always asks for these; they let the app sign the user in and keep a refresh token, and
# grant no access to mail. offline_access is what makes a refresh token at all.
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000/"


def normalize_scope(scope: str) -> str:
    """Graph scopes come back as `https://graph.microsoft.com/Mail.Read`, `Mail.Read` or with
    Graph's app id as prefix; they compare case-insensitively."""
    lowered = scope.lower()
    for prefix in (GRAPH_RESOURCE, _GRAPH_APP_ID):
        if lowered.startswith(prefix):
            return scope[len(prefix) :]
    return scope


def check_mail_scopes(granted: Iterable[str]) -> None:
    canon = {"mail.send": "Mail.Send", "mail.read": "Mail.Read"}
    names = set()
    for scope in granted:
        short = normalize_scope(scope)
        names.add(
            canon.get(short.lower(), short.lower() if short.lower() in OIDC_SCOPES else short)
        )
    check_exact_scopes(
        names, ("Mail.Send", "Mail.Read"), provider="Microsoft 365", tolerated=OIDC_SCOPES
    )


class MicrosoftOAuth:
    """One Microsoft identity platform (authority host) and one Graph endpoint."""

    def __init__(
        self,
        authority_host: str = DEFAULT_MICROSOFT_AUTHORITY_HOST,
        graph_url: str = DEFAULT_GRAPH_URL,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.authority_host = authority_host.rstrip("/")
        self.graph_url = graph_url.rstrip("/")
        self._ca_file = ca_file
        self._timeout = timeout

    def _app(self, tenant: str, client_id: str, client_secret: str, session: PinnedSession) -> Any:
        """A fresh application per call: no token cache outlives the call that needed it.

        Building one runs OpenID discovery against `{authority}/v2.0/.well-known/...`.
        Instance discovery (a call to login.microsoftonline.com that vouches for the host) is
        off, so a sovereign cloud or a test server can be the authority by configuration alone.
        """
        redact.register(client_secret)
        try:
            return msal.ConfidentialClientApplication(
                client_id,
                client_credential=client_secret,
                authority=f"{self.authority_host}/{tenant}",
                instance_discovery=False,
                http_client=session,
                token_cache=msal.TokenCache(),
            )
        except requests.RequestException as err:
            raise _transport_error(err, "identity platform") from None
        except ValueError:
            # msal's message quotes the discovery response; say what it means instead.
            raise InvalidTenant(
                f"the identity platform at {self.authority_host} does not know tenant "
                f"{tenant!r} (OpenID discovery failed): check spec.oauth.tenant"
            ) from None

    def refresh(
        self, tenant: str, client_id: str, client_secret: str, refresh_token: str
    ) -> TokenGrant:
        """Trade the refresh token for a Graph access token for Mail.Send and Mail.Read."""
        redact.register(refresh_token)
        with PinnedSession(self._ca_file, self._timeout) as session:
            app = self._app(tenant, client_id, client_secret, session)
            try:
                result = app.acquire_token_by_refresh_token(refresh_token, scopes=list(MAIL_SCOPES))
            except requests.RequestException as err:
                raise _transport_error(err, "token endpoint") from None
        if not isinstance(result, dict):
            raise ProtocolError("the token endpoint gave no answer msal could read")
        for key in ("access_token", "refresh_token", "id_token"):
            value = result.get(key)
            if isinstance(value, str):
                redact.register(value)
        if "error" in result:
            raise _token_error(result)
        token = result.get("access_token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("the token endpoint answered without an access token")
        scope = result.get("scope")
        if isinstance(scope, str):
            scopes = scope.split()
        elif isinstance(scope, list):
            scopes = [str(s) for s in scope]
        else:
            raise ScopeMissing(
                "the token endpoint did not say which scopes the grant holds, so they can't be "
                "checked"
            )
        return TokenGrant(access_token=token, scopes=frozenset(scopes))

    def verify(
        self, tenant: str, client_id: str, client_secret: str, refresh_token: str
    ) -> TokenGrant:
        grant = self.refresh(tenant, client_id, client_secret, refresh_token)
        check_mail_scopes(grant.scopes)
        return grant

    def revoke(
        self, tenant: str, client_id: str, client_secret: str, refresh_token: str
    ) -> Revocation:
        """Microsoft has no endpoint that revokes one refresh token: get an access token with it
        and call revokeSignInSessions, which invalidates every refresh token of the user.
        A refresh token that no longer works means the grant is already gone."""
        try:
            grant = self.refresh(tenant, client_id, client_secret, refresh_token)
        except InvalidGrant:
            return Revocation(
                "already-invalid", "the identity platform no longer honours the refresh token"
            )
        url = f"{self.graph_url}/v1.0/me/revokeSignInSessions"
        try:
            with PinnedSession(self._ca_file, self._timeout) as session:
                response = session.post(
                    url,
                    headers={
                        "Authorization": f"Bearer {grant.access_token}",
                        "Content-Type": "application/json",
                    },
                    data=b"{}",
                )
        except requests.RequestException as err:
            raise _transport_error(err, "Graph endpoint") from None
        status = response.status_code
        if status in (200, 204):
            return Revocation("revoked", "Microsoft Graph revoked the user's sign-in sessions")
        code = _graph_error_code(response)
        if status == 401:
            return Revocation("already-invalid", f"Graph refused the access token ({code})")
        if status == 403:
            raise Forbidden(
                f"Graph refused revokeSignInSessions ({code}): the grant may not revoke "
                "sessions; revoke the app's access in the Microsoft 365 admin centre"
            )
        if status == 429 or status >= 500:
            raise ProviderUnavailable(f"Graph answered HTTP {status}; retrying")
        raise ProtocolError(f"Graph answered revokeSignInSessions with HTTP {status} ({code})")


def _graph_error_code(response: requests.Response) -> str:
    try:
        body: Any = json.loads(response.content or b"null")
    except ValueError:
        return "?"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return safe_error_code(body["error"].get("code"))
    return "?"


def _token_error(result: dict[str, Any]) -> ProviderError:
    """msal passes the token endpoint's error through; keep the code, drop the description
    (an AADSTS text can quote request parameters)."""
    code = safe_error_code(result.get("error"))
    codes = result.get("error_codes") or []
    if code == "invalid_grant" and (result.get("suberror") == "consent_required" or 65001 in codes):
        return ScopeMissing(
            "the user has not consented to Mail.Send and Mail.Read for this client "
            "(consent_required); grant consent again with both"
        )
    if code == "invalid_grant":
        return InvalidGrant(
            "the identity platform refused the refresh token (invalid_grant): it was revoked "
            "or has expired, or was issued to another client; grant consent again and rotate "
            "the credentials"
        )
    if code in ("invalid_client", "unauthorized_client"):
        return InvalidClient(
            f"the identity platform refused the OAuth client ({code}): check spec.oauth."
            "clientId, spec.oauth.tenant and the secret in spec.oauth.clientSecretRef"
        )
    if code in ("invalid_scope", "consent_required", "interaction_required"):
        return ScopeMissing(
            f"the identity platform refused the scopes ({code}): the grant does not hold "
            "Mail.Send and Mail.Read; grant consent again with both"
        )
    if code in ("temporarily_unavailable", "server_error"):
        return ProviderUnavailable(f"the identity platform is unavailable ({code}); retrying")
    return ProtocolError(f"the identity platform refused the refresh ({code})")


def _transport_error(err: BaseException, what: str) -> ProviderError:
    # msal raises HTTPError for a 5xx from the identity platform; the rest is on the wire.
    if isinstance(err, requests.exceptions.HTTPError):
        return ProviderUnavailable(f"Microsoft's {what} answered with a server error; retrying")
    return transport_error(err, "Microsoft", what)
