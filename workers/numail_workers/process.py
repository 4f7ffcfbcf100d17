"""What the workspace's worker processes share: their common settings, read from the
environment the operator's Deployments set, their command line, logging and stop signals.

Environment common to `python -m numail_workers.send` and `python -m numail_workers.reply`
(flags override the first four):

    NUMAIL_WORKSPACE, NUMAIL_WORKSPACE_UID   the workspace (its name; its UID is the DB id)
    NUMAIL_DATABASE_URL                      libpq URL or DSN of a numail_worker login
    NUMAIL_METRICS_PORT                      /metrics (default 9102; 0 turns it off)
    NUMAIL_KEYSERVICE_URL, NUMAIL_KEYSERVICE_TOKEN (token file), NUMAIL_KEYSERVICE_CA_FILE
    NUMAIL_KEY_SOURCE                        keyservice (default) | local (tests, make dev:
                                             NUMAIL_LOCAL_KEYRING_FILE)
    NUMAIL_CREDENTIAL_SOURCE                 kubernetes (default) | directory:<path> (tests)
    NUMAIL_NAMESPACE                         default ws-<workspace>
    NUMAIL_KUBECONFIG, NUMAIL_KUBE_TOKEN_FILE, NUMAIL_KUBE_CA_FILE   how to reach the API server
    NUMAIL_GOOGLE_TOKEN_URI, NUMAIL_MICROSOFT_AUTHORITY_HOST, NUMAIL_GRAPH_URL,
    NUMAIL_GMAIL_API_URL, NUMAIL_PROVIDER_CA_FILE, NUMAIL_MAIL_CA_FILE, NUMAIL_PROVIDER_TIMEOUT
    NUMAIL_LOG_LEVEL                         default INFO

A setting that is malformed is refused with its name (ConfigError), and the process exits 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from uuid import UUID

from numail import redact
from numail.providers.base import ProviderEndpoints
from numail_workers.credentials import (
    CredentialSource,
    DirectoryCredentialSource,
    KeySource,
    KubernetesCredentialSource,
    LocalKeySource,
)
from numail_workers.senders import SenderEndpoints

DEFAULT_METRICS_PORT = 9102


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env_float(env, name, default)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number")
    return int(value)


def sender_endpoints(env: Mapping[str, str]) -> SenderEndpoints:
    """The same NUMAIL_* names the operator reads for verification, plus the Gmail API."""
    default = ProviderEndpoints()
    providers = ProviderEndpoints(
        google_token_uri=env.get("NUMAIL_GOOGLE_TOKEN_URI") or default.google_token_uri,
        google_revoke_uri=env.get("NUMAIL_GOOGLE_REVOKE_URI") or default.google_revoke_uri,
        microsoft_authority_host=env.get("NUMAIL_MICROSOFT_AUTHORITY_HOST")
        or default.microsoft_authority_host,
        graph_url=env.get("NUMAIL_GRAPH_URL") or default.graph_url,
        https_ca_file=env.get("NUMAIL_PROVIDER_CA_FILE") or None,
        mail_ca_file=env.get("NUMAIL_MAIL_CA_FILE") or None,
        timeout=env_float(env, "NUMAIL_PROVIDER_TIMEOUT", 20.0),
    )
    return SenderEndpoints(
        providers=providers,
        gmail_api_url=env.get("NUMAIL_GMAIL_API_URL") or SenderEndpoints.gmail_api_url,
    )


def credential_source(env: Mapping[str, str], workspace: str, uid: str) -> CredentialSource:
    namespace = env.get("NUMAIL_NAMESPACE") or f"ws-{workspace}"
    kind = env.get("NUMAIL_CREDENTIAL_SOURCE", "kubernetes")
    if kind.startswith("directory:"):
        return DirectoryCredentialSource(Path(kind.removeprefix("directory:")), namespace, uid)
    if kind != "kubernetes":
        raise ConfigError("NUMAIL_CREDENTIAL_SOURCE is kubernetes or directory:<path>")
    options: dict[str, str] = {}
    for name, key in (("NUMAIL_KUBE_TOKEN_FILE", "token_file"), ("NUMAIL_KUBE_CA_FILE", "ca_file")):
        if env.get(name):
            options[key] = env[name]
    return KubernetesCredentialSource(
        namespace, uid, kubeconfig=env.get("NUMAIL_KUBECONFIG") or None, **options
    )


def key_source(env: Mapping[str, str], workspace: str, uid: str) -> KeySource:
    kind = env.get("NUMAIL_KEY_SOURCE", "keyservice")
    if kind == "local":
        from numail.keys.local import LocalKeyProvider

        keyring = env.get("NUMAIL_LOCAL_KEYRING_FILE")
        if not keyring:
            raise ConfigError("NUMAIL_KEY_SOURCE=local needs NUMAIL_LOCAL_KEYRING_FILE")
        return LocalKeySource(LocalKeyProvider.from_file(Path(keyring)), workspace, uid)
    if kind != "keyservice":
        raise ConfigError("NUMAIL_KEY_SOURCE is keyservice or local")
    from numail.keys.client import KeyServiceClient

    url = env.get("NUMAIL_KEYSERVICE_URL")
    if not url:
        raise ConfigError("NUMAIL_KEYSERVICE_URL is not set")
    token_path = env.get("NUMAIL_KEYSERVICE_TOKEN") or "/var/run/secrets/numail/keyservice/token"
    return KeyServiceClient(
        url,
        token_path=token_path,
        ca_file=env.get("NUMAIL_KEYSERVICE_CA_FILE") or None,
        ttl=env_float(env, "NUMAIL_KEYSERVICE_DEK_TTL", 300.0),
    )


def parse_args(
    prog: str, description: str | None, argv: list[str] | None, env: Mapping[str, str]
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--workspace", default=env.get("NUMAIL_WORKSPACE"))
    parser.add_argument("--workspace-uid", default=env.get("NUMAIL_WORKSPACE_UID"))
    parser.add_argument("--database-url", default=env.get("NUMAIL_DATABASE_URL"))
    try:
        metrics_port = env_int(env, "NUMAIL_METRICS_PORT", DEFAULT_METRICS_PORT)
    except ConfigError as err:
        parser.error(str(err))
    parser.add_argument("--metrics-port", type=int, default=metrics_port)
    args = parser.parse_args(argv)
    for flag in ("workspace", "workspace_uid", "database_url"):
        if not getattr(args, flag):
            parser.error(f"--{flag.replace('_', '-')} (or NUMAIL_{flag.upper()}) is required")
    try:
        UUID(args.workspace_uid)
    except ValueError:
        parser.error("the workspace UID must be a UUID (the Workspace's metadata.uid)")
    return args


def configure_logging(env: Mapping[str, str]) -> None:
    logging.basicConfig(
        level=env.get("NUMAIL_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    redact.install_redaction()


def install_stop_signals(log: logging.Logger, what: str) -> threading.Event:
    """SIGTERM (the kubelet) and SIGINT set the returned event; `what` says what the process
    does before it stops."""
    stop = threading.Event()

    def request_stop(signum: int, _: object) -> None:
        log.info("%s received: %s", signal.Signals(signum).name, what)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


@dataclass(frozen=True)
class Worker:
    """A worker process once its common configuration is read: who it serves, where its
    credentials and keys come from, and the event that SIGTERM sets."""

    args: argparse.Namespace
    env: Mapping[str, str]
    credentials: CredentialSource
    keys: KeySource
    endpoints: SenderEndpoints
    stop: threading.Event

    @property
    def workspace_id(self) -> UUID:
        return UUID(self.args.workspace_uid)

    def serve_metrics(self) -> None:
        if self.args.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.args.metrics_port)


_Settings = TypeVar("_Settings")


def start_worker(
    prog: str,
    description: str | None,
    argv: list[str] | None,
    log: logging.Logger,
    stopping: str,
    read_settings: Callable[[Mapping[str, str]], _Settings],
) -> tuple[Worker, _Settings]:
    """Redaction first, before anything can log; then flags, logging, the database URL
    registered as a secret, stop signals, the process's own settings (`read_settings`) and the
    common sources. Raises ConfigError (or ValueError) naming a malformed setting; the caller
    exits 2."""
    redact.install_redaction()
    env = os.environ
    args = parse_args(prog, description, argv, env)
    configure_logging(env)
    redact.register(args.database_url)
    stop = install_stop_signals(log, stopping)
    settings = read_settings(env)
    return Worker(
        args=args,
        env=env,
        credentials=credential_source(env, args.workspace, args.workspace_uid),
        keys=key_source(env, args.workspace, args.workspace_uid),
        endpoints=sender_endpoints(env),
        stop=stop,
    ), settings
