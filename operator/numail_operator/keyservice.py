"""The unwrap service: workers trade a projected ServiceAccount token for their workspace's DEK.

Workers never hold the master key. A worker presents a token minted for the audience
`numail-keyservice`; TokenReview proves which ServiceAccount it is, the namespace's
`numail.ai/workspace` label (which only the operator can set) says which Workspace that is, and
the Workspace's UID is what the DEK is unwrapped *for*. The workspace in the context comes from
the token, never from the request, so another workspace's wrapped DEK is refused by the KMS
binding itself (403), not only by a check in this code.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from numail.api import KEYSERVICE_AUDIENCE
from numail.keys import KeyContext, KeyProvider, ProviderUnavailable, UnwrapRefused
from numail.redact import install_redaction
from numail_operator import k8s
from numail_operator.settings import Settings

log = logging.getLogger("numail.keyservice")

REFUSALS = Counter(
    "numail_keyservice_refusals_total", "Unwrap requests refused, by reason", ["reason"]
)
UNWRAPS = Counter("numail_keyservice_unwraps_total", "DEKs unwrapped for workers", ["workspace"])
LATENCY = Histogram("numail_keyservice_unwrap_seconds", "Unwrap request latency")

MAX_BODY = 16 * 1024


@dataclass(frozen=True)
class Caller:
    """Who is asking, as proven by TokenReview and the operator's namespace labels."""

    namespace: str
    service_account: str
    workspace: str
    workspace_uid: str
    key_provider: str


class Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


Authenticate = Callable[[str], Awaitable[Caller]]
ProviderFor = Callable[[str], KeyProvider]


def kubernetes_authenticator(
    clients: k8s.Clients, allowed_accounts: tuple[str, ...]
) -> Authenticate:
    async def authenticate(token: str) -> Caller:
        reviewed = await asyncio.to_thread(k8s.review_token, clients, token, KEYSERVICE_AUDIENCE)
        if reviewed is None:
            raise Refusal(401, "invalid_token", "token is not valid for audience numail-keyservice")
        if reviewed.service_account not in allowed_accounts:
            raise Refusal(
                403,
                "not_a_worker",
                f"service account {reviewed.service_account!r} may not unwrap keys",
            )
        name = await asyncio.to_thread(k8s.namespace_workspace, clients, reviewed.namespace)
        if name is None:
            raise Refusal(
                403, "no_workspace", f"namespace {reviewed.namespace!r} belongs to no workspace"
            )
        ws = await asyncio.to_thread(k8s.get_workspace, clients, name)
        if ws is None:
            raise Refusal(403, "no_workspace", f"workspace {name!r} does not exist")
        expected_ns = (ws.get("status") or {}).get("namespace") or f"ws-{name}"
        if expected_ns != reviewed.namespace:
            raise Refusal(
                403,
                "namespace_mismatch",
                f"namespace {reviewed.namespace!r} is not workspace {name!r}'s",
            )
        spec = ws.get("spec") or {}
        return Caller(
            namespace=reviewed.namespace,
            service_account=reviewed.service_account,
            workspace=name,
            workspace_uid=str(ws["metadata"]["uid"]),
            key_provider=str(spec.get("keyProvider") or "default"),
        )

    return authenticate


def _parse_body(body: Any) -> tuple[bytes, int]:
    if not isinstance(body, dict):
        raise Refusal(
            400, "malformed", "body must be a JSON object with 'wrappedKey' and 'keyVersion'"
        )
    wrapped_text = body.get("wrappedKey")
    version = body.get("keyVersion")
    if not isinstance(wrapped_text, str) or not wrapped_text:
        raise Refusal(
            400,
            "malformed",
            "'wrappedKey' must be the base64 wrapped DEK from the numail-dek Secret",
        )
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version < 2**32:
        raise Refusal(400, "malformed", "'keyVersion' must be a positive integer")
    try:
        wrapped = base64.b64decode(wrapped_text, validate=True)
    except binascii.Error:
        raise Refusal(400, "malformed", "'wrappedKey' is not valid base64") from None
    return wrapped, version


def create_app(
    authenticate: Authenticate, provider_for: ProviderFor, dek_ttl: int = 300
) -> web.Application:
    async def unwrap(request: web.Request) -> web.Response:
        with LATENCY.time():
            try:
                return await _unwrap(request)
            except Refusal as refusal:
                REFUSALS.labels(refusal.reason).inc()
                # The token is never logged: only who we think asked and why we said no.
                log.warning(
                    "unwrap refused: %s (%s) from %s",
                    refusal.reason,
                    refusal.message,
                    request.remote,
                )
                return web.json_response(
                    {"error": refusal.reason, "message": refusal.message}, status=refusal.status
                )

    async def _unwrap(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(
                401,
                "missing_token",
                "send a projected ServiceAccount token as 'Authorization: Bearer'",
            )
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise Refusal(400, "malformed", "body too large")
        try:
            body = await request.json()
        except ValueError:
            raise Refusal(400, "malformed", "body is not JSON") from None
        wrapped, version = _parse_body(body)
        caller = await authenticate(token.strip())
        try:
            provider = provider_for(caller.key_provider)
        except ProviderUnavailable as err:
            raise Refusal(503, "provider_unavailable", str(err)) from None
        context = KeyContext(
            workspace_uid=caller.workspace_uid, workspace=caller.workspace, key_version=version
        )
        try:
            dek = await asyncio.to_thread(provider.unwrap, wrapped, context)
        except UnwrapRefused:
            raise Refusal(
                403,
                "wrong_workspace",
                f"this key does not belong to workspace {caller.workspace!r}",
            ) from None
        except ProviderUnavailable as err:
            raise Refusal(503, "provider_unavailable", str(err)) from None
        UNWRAPS.labels(caller.workspace).inc()
        log.info("unwrapped DEK v%d for %s/%s", version, caller.namespace, caller.service_account)
        return web.json_response(
            {
                "dek": base64.b64encode(dek).decode(),
                "keyVersion": version,
                "ttlSeconds": dek_ttl,
                "workspace": caller.workspace,
            }
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/unwrap", unwrap)
    app.router.add_get("/healthz", healthz)
    return app


def directory_provider_for(clients: k8s.Clients, settings: Settings) -> ProviderFor:
    """The provider the Workspace names, resolved exactly as the operator resolves it (its
    KeyProvider CR, or the settings default for "default"), so both unwrap with one KEK."""
    from numail_operator.reconcile.keys import KeyNotReady, ProviderDirectory

    directory = ProviderDirectory(clients, settings)

    def provider_for(name: str) -> KeyProvider:
        try:
            return directory.get(name)
        except KeyNotReady as err:
            raise ProviderUnavailable(err.message) from None

    return provider_for


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.keyservice_tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.keyservice_tls_cert, settings.keyservice_tls_key)
    return ctx


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="numail-keyservice", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="overrides NUMAIL_KEYSERVICE_PORT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install_redaction()
    settings = Settings.from_env()
    clients = k8s.load_clients(settings.kubeconfig)
    app = create_app(
        kubernetes_authenticator(clients, settings.worker_service_accounts),
        directory_provider_for(clients, settings),
        settings.keyservice_dek_ttl,
    )
    web.run_app(
        app,
        host=settings.keyservice_host,
        port=args.port or settings.keyservice_port,
        ssl_context=ssl_context(settings),
        print=None,
    )


if __name__ == "__main__":
    main()
