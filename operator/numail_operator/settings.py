"""Operator and key-service settings: one frozen dataclass read from NUMAIL_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from numail.providers.base import ProviderEndpoints


class SettingsError(ValueError):
    """A NUMAIL_* variable is malformed; the message names it and the fix."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list; blanks dropped."""
    return tuple(v.strip() for v in env.get(name, "").split(",") if v.strip())


def _port(raw: str, name: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise SettingsError(f"{name} must list port numbers, got {raw!r}")
    return port


@dataclass(frozen=True)
class Settings:
    kubeconfig: str | None = None
    # Key service
    keyservice_host: str = "0.0.0.0"  # noqa: S104 - a Service fronts it in-cluster
    keyservice_port: int = 8443
    keyservice_tls_cert: str | None = None
    keyservice_tls_key: str | None = None
    keyservice_dek_ttl: int = 300
    # Default key provider, used when a Workspace names none or no KeyProvider CR exists.
    key_provider: str = "local"
    local_keyring_file: str | None = None
    worker_service_accounts: tuple[str, ...] = field(
        default=("numail-send-worker", "numail-reply-worker")
    )
    database_url: str | None = None
    audit_spool_dir: str | None = None
    audit_signing_key_file: str | None = None
    audit_interval: int = 60
    # Operator
    system_namespace: str = "numail-system"
    keyservice_url: str = "https://numail-keyservice.numail-system.svc:8443"
    worker_image: str = "ghcr.io/numail/numail-operator:0.1.0"
    worker_resources: Mapping[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        }
    )
    metrics_port: int = 9090
    liveness_port: int = 8080
    reconcile_interval: int = 300
    # The Secret in system_namespace holding the workers' PostgreSQL DSN (a numail_worker login),
    # copied into each workspace namespace as numail-database; None: workers get no database.
    worker_database_secret: str | None = None
    worker_database_secret_key: str = "url"  # noqa: S105 - a data key name
    # The Secret in system_namespace holding the key service's serving certificate; only its
    # ca.crt is published into each workspace namespace (ConfigMap numail-keyservice-ca) for the
    # workers to verify the key service. None: workers use the image's system trust store.
    keyservice_ca_secret: str | None = None
    # Where workers reach the Kubernetes API (for their Secrets): egress CIDRs and ports.
    worker_api_server_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    worker_api_server_ports: tuple[int, ...] = (443, 6443)
    # Mail providers (Mailbox verification and revocation); tests point these at local servers.
    mail_providers: ProviderEndpoints = field(default_factory=ProviderEndpoints)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        accounts = tuple(
            a.strip() for a in e.get("NUMAIL_WORKER_SERVICE_ACCOUNTS", "").split(",") if a.strip()
        )
        return cls(
            kubeconfig=e.get("NUMAIL_KUBECONFIG") or e.get("KUBECONFIG") or None,
            keyservice_host=e.get("NUMAIL_KEYSERVICE_HOST", cls.keyservice_host),
            keyservice_port=_int(e, "NUMAIL_KEYSERVICE_PORT", cls.keyservice_port),
            keyservice_tls_cert=e.get("NUMAIL_KEYSERVICE_TLS_CERT") or None,
            keyservice_tls_key=e.get("NUMAIL_KEYSERVICE_TLS_KEY") or None,
            keyservice_dek_ttl=_int(e, "NUMAIL_KEYSERVICE_DEK_TTL", cls.keyservice_dek_ttl),
            key_provider=e.get("NUMAIL_KEY_PROVIDER", cls.key_provider),
            local_keyring_file=e.get("NUMAIL_LOCAL_KEYRING_FILE") or None,
            worker_service_accounts=accounts or ("numail-send-worker", "numail-reply-worker"),
            database_url=e.get("NUMAIL_DATABASE_URL") or None,
            audit_spool_dir=e.get("NUMAIL_AUDIT_SPOOL_DIR") or None,
            audit_signing_key_file=e.get("NUMAIL_AUDIT_SIGNING_KEY_FILE") or None,
            audit_interval=_int(e, "NUMAIL_AUDIT_INTERVAL", cls.audit_interval),
            system_namespace=e.get("NUMAIL_SYSTEM_NAMESPACE", cls.system_namespace),
            keyservice_url=e.get("NUMAIL_KEYSERVICE_URL", cls.keyservice_url),
            worker_image=e.get("NUMAIL_WORKER_IMAGE", cls.worker_image),
            metrics_port=_int(e, "NUMAIL_METRICS_PORT", cls.metrics_port),
            liveness_port=_int(e, "NUMAIL_LIVENESS_PORT", cls.liveness_port),
            reconcile_interval=_int(e, "NUMAIL_RECONCILE_INTERVAL", cls.reconcile_interval),
            worker_database_secret=e.get("NUMAIL_WORKER_DATABASE_SECRET") or None,
            worker_database_secret_key=e.get("NUMAIL_WORKER_DATABASE_SECRET_KEY")
            or cls.worker_database_secret_key,
            keyservice_ca_secret=e.get("NUMAIL_KEYSERVICE_CA_SECRET") or None,
            worker_api_server_cidrs=_list(e, "NUMAIL_WORKER_API_SERVER_CIDRS")
            or cls.worker_api_server_cidrs,
            worker_api_server_ports=tuple(
                _port(p, "NUMAIL_WORKER_API_SERVER_PORTS")
                for p in _list(e, "NUMAIL_WORKER_API_SERVER_PORTS")
            )
            or cls.worker_api_server_ports,
            mail_providers=_provider_endpoints(e),
        )


# --- mail providers (Mailbox) ------------------------------------------------------------------


def _provider_endpoints(env: Mapping[str, str]) -> ProviderEndpoints:
    """NUMAIL_GOOGLE_TOKEN_URI, NUMAIL_GOOGLE_REVOKE_URI, NUMAIL_MICROSOFT_AUTHORITY_HOST,
    NUMAIL_GRAPH_URL, NUMAIL_PROVIDER_CA_FILE (CA bundle for those HTTPS endpoints, winning over
    REQUESTS_CA_BUNDLE), NUMAIL_MAIL_CA_FILE (extra CAs for SMTP and IMAP servers) and
    NUMAIL_PROVIDER_TIMEOUT (seconds)."""
    default = ProviderEndpoints()
    return ProviderEndpoints(
        google_token_uri=env.get("NUMAIL_GOOGLE_TOKEN_URI") or default.google_token_uri,
        google_revoke_uri=env.get("NUMAIL_GOOGLE_REVOKE_URI") or default.google_revoke_uri,
        microsoft_authority_host=env.get("NUMAIL_MICROSOFT_AUTHORITY_HOST")
        or default.microsoft_authority_host,
        graph_url=env.get("NUMAIL_GRAPH_URL") or default.graph_url,
        https_ca_file=env.get("NUMAIL_PROVIDER_CA_FILE") or None,
        mail_ca_file=env.get("NUMAIL_MAIL_CA_FILE") or None,
        timeout=float(_int(env, "NUMAIL_PROVIDER_TIMEOUT", int(default.timeout))),
    )
