"""Mailbox e2e fixtures: local Google, Microsoft, SMTP and IMAP servers, a restartable operator
pointed at them, workspaces, and helpers that read what the operator sealed.

The servers are session-scoped (cheap to share, slow-ish to start); the operator and the
workspaces belong to one test module, so a module can restart or kill its operator.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from numail import crypto
from numail.keys import KeyContext
from numail.keys.local import LocalKeyProvider
from tests.conftest import K8s
from tests.support.controlplane import ControlPlane
from tests.support.mail import (
    DovecotServer,
    SmtpServer,
    start_dovecot,
)
from tests.support.oauth import GoogleOAuthServer, MicrosoftIdentityServer
from tests.support.operator import OperatorProcess, start_operator
from tests.support.tls import ServingCert, make_self_signed_cert, make_serving_cert
from tests.support.waiting import absent, condition, wait_for

G, V = "numail.ai", "v1alpha1"
GOOGLE_CLIENT_ID = "numail-e2e.apps.googleusercontent.com"
MICROSOFT_CLIENT_ID = "6731de76-14a6-49ae-97bc-6eba6914391e"
MICROSOFT_TENANT = "contoso"
GOOGLE_CLIENT_SECRET_NAME = "google-oauth-client"
MICROSOFT_CLIENT_SECRET_NAME = "microsoft-oauth-client"


def canary(label: str) -> str:
    """A distinctive secret value: shaped like no known token, so only registration with the
    redactor (not a pattern) keeps it out of logs, and a leak is unmistakable."""
    return f"canary-{label}-{secrets.token_hex(8)}"


@dataclass
class ProviderStubs:
    """Every server the operator talks to for mailboxes, and the secrets they know."""

    cert: ServingCert
    google: GoogleOAuthServer
    microsoft: MicrosoftIdentityServer
    smtp_starttls: SmtpServer
    smtp_tls: SmtpServer
    smtp_untrusted: SmtpServer
    dovecot: DovecotServer
    google_client_secret: str
    microsoft_client_secret: str
    canaries: set[str] = field(default_factory=set)

    def operator_env(self) -> dict[str, str]:
        return {
            "NUMAIL_GOOGLE_TOKEN_URI": self.google.token_uri,
            "NUMAIL_GOOGLE_REVOKE_URI": self.google.revoke_uri,
            "NUMAIL_MICROSOFT_AUTHORITY_HOST": self.microsoft.authority_host,
            "NUMAIL_GRAPH_URL": self.microsoft.graph_url,
            "NUMAIL_PROVIDER_CA_FILE": str(self.cert.ca),
            "NUMAIL_MAIL_CA_FILE": str(self.cert.ca),
            "NUMAIL_PROVIDER_TIMEOUT": "5",
        }

    def set_mail_passwords(self, passwords: dict[str, str]) -> None:
        """Accept these logins on every SMTP server and on Dovecot (old passwords stop working)."""
        self.canaries.update(passwords.values())
        for server in (self.smtp_starttls, self.smtp_tls, self.smtp_untrusted):
            for user, password in passwords.items():
                server.set_password(user, password)
        self.dovecot.set_passwords(passwords)

    def all_canaries(self) -> set[str]:
        """Every secret handed out, and every access token the stubs issued."""
        return (
            self.canaries
            | set(self.google.issued_tokens())
            | set(self.microsoft.issued_tokens())
            | {self.google_client_secret, self.microsoft_client_secret}
        )


@pytest.fixture(scope="session")
def provider_stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderStubs]:
    root = tmp_path_factory.mktemp("mail-stubs")
    cert = make_serving_cert(root / "trusted", hostname="localhost")
    untrusted = make_self_signed_cert(root / "self-signed", hostname="localhost")
    started: list[Any] = []
    try:
        google = GoogleOAuthServer(cert).start()
        started.append(google)
        microsoft = MicrosoftIdentityServer(cert, tenants=(MICROSOFT_TENANT,)).start()
        started.append(microsoft)
        smtps = [
            SmtpServer(cert, "starttls").start(),
            SmtpServer(cert, "tls").start(),
            SmtpServer(untrusted, "starttls").start(),
        ]
        started.extend(smtps)
        dovecot = start_dovecot(cert, {})
        started.append(dovecot)
        yield ProviderStubs(
            cert=cert,
            google=google,
            microsoft=microsoft,
            smtp_starttls=smtps[0],
            smtp_tls=smtps[1],
            smtp_untrusted=smtps[2],
            dovecot=dovecot,
            google_client_secret=canary("google-client-secret"),
            microsoft_client_secret=canary("ms-client-secret"),
        )
    finally:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop()


class OperatorHandle:
    """The module's operator process, restartable with other settings (a failpoint) while
    keeping its keyring, as a restarted Pod keeps its mounted key."""

    def __init__(self, kubeconfig: Path, workdir: Path, env: dict[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.env = env
        self.process: OperatorProcess = start_operator(kubeconfig, workdir, dict(env))

    @property
    def keyring(self) -> Path:
        return self.workdir / "keyring"

    @property
    def log(self) -> Path:
        return self.workdir / "operator.log"

    def restart(self, extra: dict[str, str] | None = None) -> OperatorProcess:
        self.process.stop()
        self.process = start_operator(self.kubeconfig, self.workdir, {**self.env, **(extra or {})})
        return self.process

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def mailbox_operator(
    controlplane: ControlPlane,
    k8s: K8s,
    numail_crds: list[str],
    provider_stubs: ProviderStubs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorHandle]:
    handle = OperatorHandle(
        controlplane.kubeconfig,
        tmp_path_factory.mktemp("mailbox-operator"),
        provider_stubs.operator_env(),
    )
    try:
        yield handle
    finally:
        handle.stop()


# --- helpers --------------------------------------------------------------------------------


def ensure_namespace(k8s: K8s, name: str) -> None:
    try:
        k8s.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as err:
        if err.status != 409:
            raise


def create_workspaces(
    k8s: K8s, names: list[str], stubs: ProviderStubs, timeout: float = 90
) -> dict[str, dict[str, Any]]:
    """Ready workspaces whose namespaces hold the OAuth client secrets the mailboxes name."""
    for name in names:
        k8s.custom.create_cluster_custom_object(
            G,
            V,
            "workspaces",
            {"apiVersion": f"{G}/{V}", "kind": "Workspace", "metadata": {"name": name}, "spec": {}},
        )

    def ready(name: str) -> dict[str, Any] | None:
        ws = k8s.custom.get_cluster_custom_object(G, V, "workspaces", name)
        c = condition(ws, "Ready")
        return dict(ws) if c and c["status"] == "True" else None

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        found = wait_for(functools.partial(ready, name), timeout, f"workspace {name} Ready")
        assert found is not None
        out[name] = found
    for name in names:
        for secret_name, value in (
            (GOOGLE_CLIENT_SECRET_NAME, stubs.google_client_secret),
            (MICROSOFT_CLIENT_SECRET_NAME, stubs.microsoft_client_secret),
        ):
            k8s.core.create_namespaced_secret(
                f"ws-{name}",
                client.V1Secret(
                    metadata=client.V1ObjectMeta(name=secret_name),
                    string_data={"clientSecret": value},
                ),
            )
    return out


def delete_workspaces(k8s: K8s, names: list[str], timeout: float = 120) -> None:
    """Mailboxes first, while the operator still runs their finalizers; then the workspaces."""
    for name in names:
        with contextlib.suppress(ApiException):
            for mbx in k8s.custom.list_namespaced_custom_object(G, V, f"ws-{name}", "mailboxes")[
                "items"
            ]:
                with contextlib.suppress(ApiException):
                    k8s.custom.delete_namespaced_custom_object(
                        G, V, f"ws-{name}", "mailboxes", mbx["metadata"]["name"]
                    )

    def no_mailboxes(name: str) -> bool:
        found = k8s.custom.list_namespaced_custom_object(G, V, f"ws-{name}", "mailboxes")
        return not found["items"]

    def workspace_gone(name: str) -> bool:
        return absent(
            functools.partial(k8s.custom.get_cluster_custom_object, G, V, "workspaces", name)
        )

    for name in names:
        wait_for(functools.partial(no_mailboxes, name), timeout, f"mailboxes of {name} gone")
    for name in names:
        with contextlib.suppress(ApiException):
            k8s.custom.delete_cluster_custom_object(G, V, "workspaces", name)
    for name in names:
        wait_for(functools.partial(workspace_gone, name), timeout, f"workspace {name} gone")


def create_intake(k8s: K8s, namespace: str, name: str, document: str, label: bool = True) -> None:
    """The intake Secret a user writes: the whole credentials JSON under `credentials`."""
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=name, labels={"numail.ai/intake": "true"} if label else None
        ),
        string_data={"credentials": document},
    )
    k8s.core.create_namespaced_secret(namespace, body)


def smtp_spec(
    smtp: SmtpServer, imap_port: int, imap_security: str = "tls", username: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": "smtp",
        "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": smtp.security},
        "imap": {"host": "127.0.0.1", "port": imap_port, "security": imap_security},
    }
    if username:
        spec["smtp"]["username"] = username
    return spec


def oauth_spec(provider: str) -> dict[str, Any]:
    if provider == "gmail":
        return {
            "provider": "gmail",
            "oauth": {
                "clientId": GOOGLE_CLIENT_ID,
                "clientSecretRef": {"name": GOOGLE_CLIENT_SECRET_NAME},
            },
        }
    return {
        "provider": "microsoft365",
        "oauth": {
            "clientId": MICROSOFT_CLIENT_ID,
            "tenant": MICROSOFT_TENANT,
            "clientSecretRef": {"name": MICROSOFT_CLIENT_SECRET_NAME},
        },
    }


def create_mailbox(
    k8s: K8s, namespace: str, name: str, spec: dict[str, Any], credentials: dict[str, Any]
) -> dict[str, Any]:
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": "Mailbox",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"address": f"{name}@client.example", **spec, "credentials": credentials},
    }
    return dict(k8s.custom.create_namespaced_custom_object(G, V, namespace, "mailboxes", body))


def get_mailbox(k8s: K8s, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(k8s.custom.get_namespaced_custom_object(G, V, namespace, "mailboxes", name))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def wait_condition(
    k8s: K8s,
    namespace: str,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """The Mailbox once its `type_` condition has this status (and reason), at its generation."""

    def check() -> dict[str, Any] | None:
        mbx = get_mailbox(k8s, namespace, name)
        c = condition(mbx, type_)
        if not mbx or not c or c["status"] != status or (reason and c["reason"] != reason):
            return None
        if c.get("observedGeneration") != mbx["metadata"]["generation"]:
            return None
        return mbx

    def last() -> str:
        mbx = get_mailbox(k8s, namespace, name)
        return str((mbx or {}).get("status"))

    try:
        found = wait_for(check, timeout, f"{namespace}/{name} {type_}={status} {reason or ''}")
    except AssertionError as err:
        raise AssertionError(f"{err}; status: {last()}") from None
    assert found is not None
    return found


def secret_exists(k8s: K8s, namespace: str, name: str) -> bool:
    return not absent(lambda: k8s.core.read_namespaced_secret(name, namespace))


def sealed_frame(k8s: K8s, namespace: str, mailbox: str) -> bytes:
    secret = k8s.core.read_namespaced_secret(f"numail-mailbox-{mailbox}", namespace)
    return base64.b64decode(secret.data["sealed"])


def workspace_dek(k8s: K8s, keyring: Path, workspace: dict[str, Any]) -> crypto.DataKey:
    """Unwrap the workspace's DEK with the operator's local keyring, as the key service would."""
    name, uid = workspace["metadata"]["name"], workspace["metadata"]["uid"]
    secret = k8s.core.read_namespaced_secret("numail-dek", f"ws-{name}")
    version = int(secret.metadata.annotations["numail.ai/current-key-version"])
    wrapped = base64.b64decode(secret.data[f"v{version}"])
    raw = LocalKeyProvider.from_file(keyring).unwrap(wrapped, KeyContext(uid, name, version))
    return crypto.DataKey(version, raw)


def open_frame(
    dek: crypto.DataKey, workspace: dict[str, Any], namespace: str, mailbox: str, frame: bytes
) -> bytes:
    context = crypto.SealContext(
        workspace["metadata"]["uid"], f"{namespace}/{mailbox}", "mailbox-credentials"
    )
    return crypto.open(dek, frame, context)


def events_in(k8s: K8s, namespace: str) -> list[Any]:
    return list(k8s.core.list_namespaced_event(namespace).items)


def mailbox_events(k8s: K8s, namespace: str, name: str) -> list[Any]:
    return [
        e
        for e in events_in(k8s, namespace)
        if e.involved_object.kind == "Mailbox" and e.involved_object.name == name
    ]
