"""Where a worker gets a mailbox's sealed credential and the DEK to open it, and the opening.

Two seams keep the send engine testable without Kubernetes: a CredentialSource hands over the
sealed frame (plus the wrapped DEK and the context it is bound to), and a KeySource turns a
wrapped DEK into a DataKey. In production they are the Secrets the worker's Role may `get`, read
with its own ServiceAccount token, and the key service client. A directory of files laid out as
Kubernetes mounts Secrets, and a KeySource backed by the local KEK provider, serve tests and
`make dev`; the worker uses them only when told to by NUMAIL_CREDENTIAL_SOURCE and
NUMAIL_KEY_SOURCE.

Plaintext exists only inside open_credentials and the Credentials it returns: the caller holds
that for one batch of one mailbox and then drops it. Every secret value is registered with the
redactor before anything else can see it.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from numail import crypto, redact
from numail.api import DEK_SECRET
from numail.api.sealing import CREDENTIALS_PURPOSE
from numail.crypto import DataKey, SealContext
from numail.keys import KeyContext, KeyProvider
from numail.providers.credentials import Credentials, parse_credentials
from numail_workers.mailboxes import ClientSecretRef, MailboxProfile

# Names the operator gives the objects it writes (numail_operator.build); the workers may not
# import the operator, so they are spelled here too and tests/integration/test_send_keyservice.py
# reads Secrets the way the operator writes them.
MAILBOX_SECRET_PREFIX = "numail-mailbox-"  # noqa: S105 - a name prefix
SEALED_DATA_KEY = "sealed"
SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
SA_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
WRAPPED_DEK_TTL = 300.0


class CredentialError(Exception):
    """The sealed credential or the OAuth client secret could not be fetched. `transient`
    says whether waiting can help (a Secret not written yet, an API server not answering)."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, repr=False)
class SealedCredential:
    """A mailbox's sealed frame, the wrapped DEK of the version that sealed it, and the
    context (workspace UID, `namespace/name`, purpose) that opening must present."""

    frame: bytes
    key_version: int
    wrapped_dek: bytes
    context: SealContext

    def __repr__(self) -> str:
        return f"SealedCredential(key_version={self.key_version}, mailbox={self.context.mailbox})"


class CredentialSource(Protocol):
    def sealed(self, mailbox: MailboxProfile) -> SealedCredential: ...

    def oauth_client_secret(self, mailbox: MailboxProfile) -> str: ...


class KeySource(Protocol):
    """numail.keys.client.KeyServiceClient satisfies this."""

    def dek(self, wrapped: bytes, key_version: int) -> DataKey: ...


def seal_context(workspace_uid: str, mailbox: MailboxProfile) -> SealContext:
    return SealContext(workspace_uid, mailbox.ref, CREDENTIALS_PURPOSE)


def open_credentials(
    mailbox: MailboxProfile, source: CredentialSource, keys: KeySource
) -> Credentials:
    """Fetch, unwrap and open one mailbox's credentials, in memory, for the job at hand."""
    sealed = source.sealed(mailbox)
    dek = keys.dek(sealed.wrapped_dek, sealed.key_version)
    plaintext = crypto.open(dek, sealed.frame, sealed.context)
    try:
        # parse_credentials registers the document and every secret field with the redactor
        # before it looks at them.
        return parse_credentials(mailbox.provider, plaintext)
    finally:
        del plaintext


_Opened = TypeVar("_Opened")


def open_for_use(
    mailbox: MailboxProfile,
    source: CredentialSource,
    keys: KeySource,
    use: Callable[[MailboxProfile, Credentials, str | None], _Opened],
) -> _Opened:
    """Open a mailbox's credentials (and its OAuth client secret) right before `use` turns them
    into a session or a reader; this frame drops the credentials when `use` returns, so they
    live on only inside what it built, for the batch or poll at hand."""
    credentials = open_credentials(mailbox, source, keys)
    try:
        secret = source.oauth_client_secret(mailbox) if mailbox.provider != "smtp" else None
        return use(mailbox, credentials, secret)
    finally:
        del credentials


class _WrappedDeks:
    """Wrapped DEKs by version, kept a few minutes: they are useless without the KEK, and
    reading the Secret for every batch would cost an API call each time."""

    def __init__(self, read: Callable[[], Mapping[str, bytes]], ttl: float = WRAPPED_DEK_TTL):
        self._read = read
        self._ttl = ttl
        self._lock = threading.Lock()
        self._data: Mapping[str, bytes] = {}
        self._expires = 0.0

    def get(self, version: int) -> bytes:
        key = f"v{version}"
        with self._lock:
            if key not in self._data or time.monotonic() >= self._expires:
                self._data = self._read()
                self._expires = time.monotonic() + self._ttl
            found = self._data.get(key)
        if found is None:
            raise CredentialError(
                f"the workspace's DEK Secret has no key version {version}; the credential was "
                "sealed under a version that is gone (re-seal it) or not written yet",
                transient=True,
            )
        return found


@dataclass
class DirectoryCredentialSource:
    """Secrets as files, the way a Secret volume lays them out: `<dir>/<secret>/<key>` holding
    the decoded bytes. For tests and `make dev`."""

    directory: Path
    namespace: str
    workspace_uid: str
    _deks: _WrappedDeks = field(init=False)

    def __post_init__(self) -> None:
        self._deks = _WrappedDeks(lambda: self._secret(DEK_SECRET))

    def _secret(self, name: str) -> dict[str, bytes]:
        folder = self.directory / name
        if not folder.is_dir():
            raise CredentialError(f"Secret {self.namespace}/{name} does not exist", transient=True)
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    def sealed(self, mailbox: MailboxProfile) -> SealedCredential:
        _check_namespace(mailbox, self.namespace)
        data = self._secret(MAILBOX_SECRET_PREFIX + mailbox.name)
        return _sealed_from(data, mailbox, self.workspace_uid, self._deks)

    def oauth_client_secret(self, mailbox: MailboxProfile) -> str:
        ref = _client_secret_ref(mailbox)
        value = self._secret(ref.name).get(ref.key)
        return _client_secret_value(value, mailbox, ref.name, ref.key)


class KubernetesCredentialSource:
    """Reads the mailbox's Secret `numail-mailbox-<name>`, the workspace's `numail-dek` and the
    OAuth client secret with the worker's own ServiceAccount token: the Role the operator makes
    grants `get` on exactly those names. The kubernetes client is imported on first use, so a
    worker that never needs it never loads it.

    The token file is read again on every request, because the kubelet rotates it.
    """

    def __init__(
        self,
        namespace: str,
        workspace_uid: str,
        *,
        kubeconfig: str | None = None,
        host: str | None = None,
        token_file: str = SA_TOKEN_FILE,
        ca_file: str = SA_CA_FILE,
    ) -> None:
        self.namespace = namespace
        self.workspace_uid = workspace_uid
        self._kubeconfig = kubeconfig
        self._host = host
        self._token_file = Path(token_file)
        self._ca_file = ca_file
        self._core: Any = None
        self._lock = threading.Lock()
        self._deks = _WrappedDeks(lambda: self._secret(DEK_SECRET))

    def _api(self) -> Any:
        with self._lock:
            if self._core is None:
                from kubernetes import client, config

                if self._kubeconfig:
                    api_client = config.new_client_from_config(config_file=self._kubeconfig)
                else:
                    cfg = client.Configuration()
                    cfg.host = self._host or _in_cluster_host()
                    cfg.ssl_ca_cert = self._ca_file
                    # kubernetes>=36 looks the token up as BearerToken (authorization is its
                    # alias) and sends none unless a key is already set when it builds the
                    # request; so both names, with the prefix for each, and a first read now.
                    cfg.api_key_prefix = {"BearerToken": "Bearer", "authorization": "Bearer"}

                    def refresh(conf: Any) -> None:
                        token = self._token_file.read_text().strip()
                        redact.register(token)
                        conf.api_key = {"BearerToken": token, "authorization": token}

                    refresh(cfg)
                    cfg.refresh_api_key_hook = refresh
                    api_client = client.ApiClient(cfg)
                self._core = client.CoreV1Api(api_client)
            return self._core

    def _secret(self, name: str) -> dict[str, bytes]:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self._api().read_namespaced_secret(name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                raise CredentialError(
                    f"Secret {self.namespace}/{name} does not exist (yet)", transient=True
                ) from None
            if err.status in (401, 403):
                raise CredentialError(
                    f"the worker may not read Secret {self.namespace}/{name} ({err.status}): "
                    "check its Role and ServiceAccount token",
                    transient=True,
                ) from None
            raise CredentialError(
                f"reading Secret {self.namespace}/{name} failed ({err.status})", transient=True
            ) from None
        except OSError as err:
            raise CredentialError(
                f"the API server did not answer for Secret {self.namespace}/{name} "
                f"({type(err).__name__})",
                transient=True,
            ) from None
        data = secret.data or {}
        return {k: base64.b64decode(v) for k, v in data.items()}

    def sealed(self, mailbox: MailboxProfile) -> SealedCredential:
        _check_namespace(mailbox, self.namespace)
        data = self._secret(MAILBOX_SECRET_PREFIX + mailbox.name)
        return _sealed_from(data, mailbox, self.workspace_uid, self._deks)

    def oauth_client_secret(self, mailbox: MailboxProfile) -> str:
        ref = _client_secret_ref(mailbox)
        value = self._secret(ref.name).get(ref.key)
        return _client_secret_value(value, mailbox, ref.name, ref.key)


def _in_cluster_host() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise CredentialError(
            "not in a cluster (KUBERNETES_SERVICE_HOST unset): set NUMAIL_KUBECONFIG",
            transient=False,
        )
    return f"https://{host}:{port}"


def _check_namespace(mailbox: MailboxProfile, namespace: str) -> None:
    if mailbox.namespace != namespace:
        # The DB row says another namespace: never read or open another workspace's Secret.
        raise CredentialError(
            f"mailbox {mailbox.ref} is not in this worker's namespace {namespace}",
            transient=False,
        )


def _sealed_from(
    data: Mapping[str, bytes], mailbox: MailboxProfile, workspace_uid: str, deks: _WrappedDeks
) -> SealedCredential:
    frame = data.get(SEALED_DATA_KEY)
    if not frame:
        raise CredentialError(
            f"Secret {mailbox.namespace}/{MAILBOX_SECRET_PREFIX}{mailbox.name} has no "
            f"{SEALED_DATA_KEY!r} key",
            transient=True,
        )
    try:
        version = crypto.frame_key_version(frame)
    except crypto.MalformedFrame as err:
        raise CredentialError(str(err), transient=False) from None
    return SealedCredential(frame, version, deks.get(version), seal_context(workspace_uid, mailbox))


def _client_secret_ref(mailbox: MailboxProfile) -> ClientSecretRef:
    if mailbox.client_secret_ref is None:
        raise CredentialError(
            f"mailbox {mailbox.ref} names no OAuth client secret", transient=False
        )
    return mailbox.client_secret_ref


def _client_secret_value(value: bytes | None, mailbox: MailboxProfile, name: str, key: str) -> str:
    if not value:
        raise CredentialError(
            f"Secret {mailbox.namespace}/{name} has no key {key!r} for the OAuth client secret",
            transient=True,
        )
    text = value.decode().strip()
    redact.register(text)
    return text


class LocalKeySource:
    """Unwraps DEKs with a KEK provider in this process. Workers in a cluster never do this
    (they hold no KEK: see docs/security-model.md); it stands in for the key service in tests
    and `make dev`."""

    def __init__(self, provider: KeyProvider, workspace: str, workspace_uid: str) -> None:
        self._provider = provider
        self._workspace = workspace
        self._uid = workspace_uid
        self._lock = threading.Lock()
        self._cache: dict[tuple[bytes, int], DataKey] = {}
        self.calls = 0

    def dek(self, wrapped: bytes, key_version: int) -> DataKey:
        with self._lock:
            found = self._cache.get((wrapped, key_version))
            if found is None:
                self.calls += 1
                context = KeyContext(self._uid, self._workspace, key_version)
                found = DataKey(key_version, self._provider.unwrap(wrapped, context))
                self._cache[(wrapped, key_version)] = found
            return found
