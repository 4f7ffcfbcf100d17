"""Local stand-ins for Google's OAuth endpoints and Microsoft's identity platform and Graph.

They speak the real wire formats (form-encoded token requests, the OAuth error JSON, OpenID
discovery, Graph's error envelope) over HTTPS with a test CA, because msal refuses an authority
that is not https. Each records what it was asked, so tests can assert on revocations.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.postgres import free_port
from tests.support.tls import ServingCert

GMAIL_SCOPES = (
    "https://www.googleapis.com/auth/gmail.send",
    "https://www.googleapis.com/auth/gmail.readonly",
)
GRAPH_MAIL_SCOPES = (
    "https://graph.microsoft.com/Mail.Send",
    "https://graph.microsoft.com/Mail.Read",
)
OIDC = ("openid", "profile", "offline_access", "email")


class ThreadedHttpsServer:
    """An aiohttp application on 127.0.0.1 over TLS, in a thread with its own event loop."""

    def __init__(self, app: web.Application, cert: ServingCert) -> None:
        self.port = free_port()
        self._app = app
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(cert.cert, cert.key)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="https-stub", daemon=True)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(self._app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl)
            self._loop.run_until_complete(site.start())
        except BaseException as err:
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"HTTPS stub did not start: {self._error!r}")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def _oauth_error(status: int, error: str, description: str, **extra: Any) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description, **extra}, status=status
    )


async def _form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    return {k: str(v) for k, v in data.items()}


def _basic_auth(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


# --- Google ---------------------------------------------------------------------------------


@dataclass
class GoogleGrant:
    refresh_token: str
    client_id: str
    client_secret: str
    scopes: tuple[str, ...]
    revoked: bool = False
    access_tokens: list[str] = field(default_factory=list)


class GoogleOAuthServer:
    """`POST /token` (refresh_token grant) and `POST /revoke` (token in query or form body)."""

    def __init__(self, cert: ServingCert) -> None:
        self.lock = threading.Lock()
        self.grants: dict[str, GoogleGrant] = {}
        self.revocations: list[str] = []
        self.token_requests: list[str] = []
        self.requested_scopes: list[str] = []  # the `scope` parameter of each token request
        self.unavailable = 0  # answer the next N token requests with 503
        self.revoke_unavailable = 0  # answer the next N revoke requests with 503
        self.revoke_in_query = 0  # revoke requests that carried the token in the URL
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/revoke", self._revoke)
        self._server = ThreadedHttpsServer(app, cert)

    @property
    def token_uri(self) -> str:
        return self._server.base_url + "/token"

    @property
    def revoke_uri(self) -> str:
        return self._server.base_url + "/revoke"

    def start(self) -> GoogleOAuthServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def add_grant(
        self,
        refresh_token: str,
        client_id: str,
        client_secret: str,
        scopes: tuple[str, ...] = GMAIL_SCOPES,
    ) -> GoogleGrant:
        grant = GoogleGrant(refresh_token, client_id, client_secret, scopes)
        with self.lock:
            self.grants[refresh_token] = grant
        return grant

    def issued_tokens(self) -> list[str]:
        with self.lock:
            return [t for g in self.grants.values() for t in g.access_tokens]

    def requests_for(self, refresh_token: str) -> int:
        with self.lock:
            return self.token_requests.count(refresh_token)

    def revocations_of(self, token: str) -> int:
        with self.lock:
            return self.revocations.count(token)

    async def _token(self, request: web.Request) -> web.Response:
        form = await _form(request)
        client_id, client_secret = _basic_auth(request) or (
            form.get("client_id", ""),
            form.get("client_secret", ""),
        )
        refresh_token = form.get("refresh_token", "")
        with self.lock:
            self.token_requests.append(refresh_token)
            self.requested_scopes.append(form.get("scope", ""))
            if self.unavailable > 0:
                self.unavailable -= 1
                return _oauth_error(503, "temporarily_unavailable", "Try again later.")
            if form.get("grant_type") != "refresh_token":
                return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
            grant = self.grants.get(refresh_token)
            if grant is None or grant.revoked:
                return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            if (client_id, client_secret) != (grant.client_id, grant.client_secret):
                return _oauth_error(401, "invalid_client", "Unauthorized")
            requested = form.get("scope", "").split()
            if not set(requested) <= set(grant.scopes):
                return _oauth_error(400, "invalid_scope", "Bad Request")
            token = "ya29.a0" + secrets.token_urlsafe(32)
            grant.access_tokens.append(token)
        # Google reports every scope the grant holds, whatever the request narrowed it to.
        return web.json_response(
            {
                "access_token": token,
                "expires_in": 3599,
                "scope": " ".join(grant.scopes),
                "token_type": "Bearer",
            }
        )

    async def _revoke(self, request: web.Request) -> web.Response:
        form = await _form(request)
        token = request.query.get("token") or form.get("token", "")
        with self.lock:
            if "token" in request.query:
                self.revoke_in_query += 1
            if self.revoke_unavailable > 0:
                self.revoke_unavailable -= 1
                return _oauth_error(503, "temporarily_unavailable", "Try again later.")
            self.revocations.append(token)
            for grant in self.grants.values():
                if not grant.revoked and (
                    token == grant.refresh_token or token in grant.access_tokens
                ):
                    grant.revoked = True
                    return web.json_response({})
        return _oauth_error(400, "invalid_token", "Token expired or revoked")


# --- Microsoft identity platform and Graph ----------------------------------------------------


@dataclass
class MicrosoftGrant:
    refresh_token: str
    client_id: str
    client_secret: str
    tenant: str
    scopes: tuple[str, ...]
    user_id: str = field(default_factory=lambda: secrets.token_hex(8))
    revoked: bool = False
    access_tokens: list[str] = field(default_factory=list)


class MicrosoftIdentityServer:
    """The authority (`/{tenant}/v2.0/.well-known/openid-configuration`,
    `/{tenant}/oauth2/v2.0/token`) and Graph (`POST /v1.0/me/revokeSignInSessions`), on one host;
    the operator is given the same base URL as authority host and Graph URL."""

    def __init__(self, cert: ServingCert, tenants: tuple[str, ...] = ("contoso",)) -> None:
        self.lock = threading.Lock()
        self.tenants = set(tenants)
        self.grants: dict[str, MicrosoftGrant] = {}
        self.revocations: list[str] = []  # refresh token of the grant each Graph call ended
        self.graph_calls: list[str] = []  # access tokens presented to Graph
        self.token_requests: list[str] = []
        self.discoveries = 0
        self.graph_status: int | None = None  # answer Graph with this status instead
        app = web.Application()
        app.router.add_get(
            "/{tenant}/v2.0/.well-known/openid-configuration", self._openid_configuration
        )
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_post("/v1.0/me/revokeSignInSessions", self._revoke_sessions)
        self._server = ThreadedHttpsServer(app, cert)

    @property
    def authority_host(self) -> str:
        return self._server.base_url

    @property
    def graph_url(self) -> str:
        return self._server.base_url

    def start(self) -> MicrosoftIdentityServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def add_grant(
        self,
        refresh_token: str,
        client_id: str,
        client_secret: str,
        tenant: str = "contoso",
        scopes: tuple[str, ...] = GRAPH_MAIL_SCOPES,
    ) -> MicrosoftGrant:
        grant = MicrosoftGrant(refresh_token, client_id, client_secret, tenant, scopes)
        with self.lock:
            self.grants[refresh_token] = grant
        return grant

    def issued_tokens(self) -> list[str]:
        with self.lock:
            return [t for g in self.grants.values() for t in g.access_tokens]

    def revocations_of(self, refresh_token: str) -> int:
        with self.lock:
            return self.revocations.count(refresh_token)

    async def _openid_configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        with self.lock:
            self.discoveries += 1
            known = tenant in self.tenants or tenant in ("common", "organizations")
        if not known:
            return _oauth_error(
                400,
                "invalid_tenant",
                f"AADSTS90002: Tenant '{tenant}' not found.",
                error_codes=[90002],
            )
        base = f"{self._server.base_url}/{tenant}"
        return web.json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{self._server.base_url}/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "name", "email"],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = await _form(request)
        client_id, client_secret = _basic_auth(request) or (
            form.get("client_id", ""),
            form.get("client_secret", ""),
        )
        refresh_token = form.get("refresh_token", "")
        tenant = request.match_info["tenant"]
        with self.lock:
            self.token_requests.append(refresh_token)
            if form.get("grant_type") != "refresh_token":
                return _oauth_error(
                    400, "unsupported_grant_type", "AADSTS70003", error_codes=[70003]
                )
            grant = self.grants.get(refresh_token)
            if grant is None or grant.revoked:
                return _oauth_error(
                    400,
                    "invalid_grant",
                    "AADSTS70000: The provided grant has expired due to it being revoked.",
                    error_codes=[70000],
                )
            if grant.tenant != tenant and tenant not in ("common", "organizations"):
                return _oauth_error(
                    400, "invalid_grant", "AADSTS9002313: Invalid request.", error_codes=[9002313]
                )
            if (client_id, client_secret) != (grant.client_id, grant.client_secret):
                return _oauth_error(
                    401,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided.",
                    error_codes=[7000215],
                )
            requested = {s for s in form.get("scope", "").split() if s not in OIDC}
            held = {s.lower() for s in grant.scopes}
            if not {s.lower() for s in requested} <= held:
                return _oauth_error(
                    400,
                    "invalid_grant",
                    "AADSTS65001: The user or administrator has not consented to use the "
                    "application.",
                    error_codes=[65001],
                    suberror="consent_required",
                )
            header = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"none"}').rstrip(b"=")
            body = base64.urlsafe_b64encode(
                json.dumps({"oid": grant.user_id, "nonce": secrets.token_hex(16)}).encode()
            ).rstrip(b"=")
            token = f"{header.decode()}.{body.decode()}.{secrets.token_urlsafe(16)}"
            grant.access_tokens.append(token)
            client_info = base64.urlsafe_b64encode(
                json.dumps({"uid": grant.user_id, "utid": grant.tenant}).encode()
            ).rstrip(b"=")
        return web.json_response(
            {
                "token_type": "Bearer",
                # Granted scopes as the v2 endpoint reports them: resource-qualified, OIDC bare.
                "scope": " ".join([*grant.scopes, "openid", "profile", "offline_access"]),
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
                "refresh_token": grant.refresh_token,
                "client_info": client_info.decode(),
            }
        )

    async def _revoke_sessions(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        with self.lock:
            self.graph_calls.append(token)
            if self.graph_status is not None:
                return web.json_response(
                    {"error": {"code": "Stubbed", "message": "stubbed failure"}},
                    status=self.graph_status,
                )
            grant = next(
                (g for g in self.grants.values() if token in g.access_tokens and not g.revoked),
                None,
            )
            if grant is None:
                return web.json_response(
                    {
                        "error": {
                            "code": "InvalidAuthenticationToken",
                            "message": "Access token validation failure.",
                        }
                    },
                    status=401,
                )
            self.revocations.append(grant.refresh_token)
            # Revoking sign-in sessions ends every refresh token of the user.
            for other in self.grants.values():
                if other.user_id == grant.user_id:
                    other.revoked = True
        return web.json_response(
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean",
                "value": True,
            }
        )
