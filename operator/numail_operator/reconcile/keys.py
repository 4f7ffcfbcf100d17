"""Workspace keys: resolve the KeyProvider, create the DEK once, and keep the sealing key pair.

The DEK is create-only. It is generated, wrapped and POSTed as a Secret only when none exists;
a retry, a restart or a racing second operator reads the one that exists. Nothing here ever
replaces a wrapped DEK, because every credential sealed under it would be lost.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from numail import crypto
from numail.api import DEK_SECRET
from numail.keys import KeyContext, KeyProvider, KeyProviderError, build_provider, provider_names
from numail.keys.registry import PLANNED
from numail_operator import k8s
from numail_operator.build.workspace import (
    SEALING_KEY_SECRET,
    WorkspaceInputs,
    build_dek_secret,
    build_sealing_key_secret,
)
from numail_operator.settings import Settings

SEALING_KEY_PURPOSE = "workspace-sealing-key"


class KeyNotReady(Exception):
    """The workspace's keys can't be made or read now; `reason` goes into KeyReady=False."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class WorkspaceKeys:
    dek: crypto.DataKey
    key_id: str
    sealing_key: X25519PrivateKey
    created: bool

    @property
    def public_key(self) -> str:
        return crypto.public_key_text(self.sealing_key.public_key())


class ProviderDirectory:
    """KeyProvider CRs by name, built into providers and cached per resourceVersion."""

    def __init__(self, clients: k8s.Clients, settings: Settings) -> None:
        self._clients = clients
        self._settings = settings
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, KeyProvider]] = {}

    def get(self, name: str, cr: object = ...) -> KeyProvider:
        """`cr` is the KeyProvider object if the caller has it from a watch (None: known
        absent); left out, it is read from the apiserver."""
        if cr is ...:
            cr = k8s.get_key_provider(self._clients, name)
        if not isinstance(cr, dict):
            if name == "default":
                return self._from_settings()
            raise KeyNotReady(
                "KeyProviderNotFound",
                f"KeyProvider {name!r} does not exist; create it or set spec.keyProvider",
            )
        version = str(cr["metadata"].get("resourceVersion", ""))
        with self._lock:
            cached = self._cache.get(name)
            if cached and cached[0] == version:
                return cached[1]
        provider = self.build(cr)
        with self._lock:
            self._cache[name] = (version, provider)
        return provider

    def build(self, cr: dict[str, Any]) -> KeyProvider:
        spec = cr.get("spec") or {}
        kind = str(spec.get("type", ""))
        if kind in PLANNED:
            raise KeyNotReady(
                "NotSupported",
                f"KeyProvider type {kind!r} is planned but not in this release; "
                f"use one of {', '.join(provider_names())}",
            )
        config = dict(spec.get(kind) or {})
        try:
            if kind == "local" and config.get("secretRef"):
                ref = config.pop("secretRef")
                text = k8s.read_secret_value(
                    self._clients, ref["namespace"], ref["name"], ref.get("key", "keyring")
                )
                if text is None:
                    raise KeyNotReady(
                        "KeyProviderMisconfigured",
                        f"Secret {ref['namespace']}/{ref['name']} "
                        f"key {ref.get('key', 'keyring')!r} "
                        "is missing; create it with `numail keys generate-local`",
                    )
                config["keyring"] = text.decode()
            if kind == "pkcs11" and config.get("pinSecretRef"):
                ref = config.pop("pinSecretRef")
                pin = k8s.read_secret_value(
                    self._clients, ref["namespace"], ref["name"], ref.get("key", "pin")
                )
                if pin is None:
                    raise KeyNotReady(
                        "KeyProviderMisconfigured",
                        f"PIN Secret {ref['namespace']}/{ref['name']} is missing",
                    )
                config["pin"] = pin.decode().strip()
            return build_provider(kind, config)
        except KeyProviderError as err:
            raise KeyNotReady("KeyProviderMisconfigured", str(err)) from None

    def _from_settings(self) -> KeyProvider:
        with self._lock:
            cached = self._cache.get("")
            if cached:
                return cached[1]
        try:
            provider = build_provider(
                self._settings.key_provider, {"keyFile": self._settings.local_keyring_file}
            )
        except KeyProviderError as err:
            raise KeyNotReady("KeyProviderMisconfigured", f"default key provider: {err}") from None
        with self._lock:
            self._cache[""] = ("", provider)
        return provider


def _context(inputs: WorkspaceInputs, version: int) -> KeyContext:
    return KeyContext(workspace_uid=inputs.uid, workspace=inputs.name, key_version=version)


def ensure_keys(
    clients: k8s.Clients, provider: KeyProvider, inputs: WorkspaceInputs, likely_new: bool = False
) -> WorkspaceKeys:
    try:
        health = provider.status()
    except KeyProviderError as err:
        raise KeyNotReady("KeyProviderUnhealthy", str(err)) from None
    if not health.healthy:
        raise KeyNotReady("KeyProviderUnhealthy", health.message or f"{provider.name} is unhealthy")
    dek, key_id, created = _ensure_dek(clients, provider, inputs, health.key_id, likely_new)
    sealing = _ensure_sealing_key(clients, inputs, dek, likely_new or created)
    return WorkspaceKeys(dek=dek, key_id=key_id, sealing_key=sealing, created=created)


def _ensure_dek(
    clients: k8s.Clients,
    provider: KeyProvider,
    inputs: WorkspaceInputs,
    key_id: str,
    likely_new: bool,
) -> tuple[crypto.DataKey, str, bool]:
    """Create-only. For a new workspace the POST goes first and a 409 falls back to reading;
    otherwise the read goes first. Either way the apiserver, not this code, decides who wins."""
    created = False
    secret = None if likely_new else k8s.read_secret(clients, inputs.namespace, DEK_SECRET)
    if secret is None:
        dek = crypto.generate_dek(1)
        try:
            wrapped = provider.wrap(dek.key, _context(inputs, 1))
        except KeyProviderError as err:
            raise KeyNotReady("WrapFailed", str(err)) from None
        manifest = build_dek_secret(
            inputs, 1, base64.b64encode(wrapped).decode(), key_id, provider.name
        )
        created = k8s.create_secret_once(clients, manifest)
        if created:
            return dek, key_id, True
        secret = k8s.read_secret(clients, inputs.namespace, DEK_SECRET)
        if secret is None:
            raise KeyNotReady(
                "DataKeyMissing", "the DEK Secret vanished while being created; retrying"
            )
    annotations = secret.metadata.annotations or {}
    if annotations.get("numail.ai/workspace-uid") != inputs.uid:
        raise KeyNotReady(
            "ForeignDataKey",
            f"Secret {inputs.namespace}/{DEK_SECRET} belongs to another Workspace of this name "
            "(retained); delete or restore it by hand: the operator will not overwrite a key",
        )
    version = int(annotations.get("numail.ai/current-key-version", "1"))
    data = secret.data or {}
    wrapped_b64 = data.get(f"v{version}")
    if not wrapped_b64:
        raise KeyNotReady("DataKeyMissing", f"Secret {DEK_SECRET} has no entry v{version}")
    try:
        raw = provider.unwrap(base64.b64decode(wrapped_b64), _context(inputs, version))
    except KeyProviderError as err:
        raise KeyNotReady("UnwrapFailed", str(err)) from None
    return crypto.DataKey(version, raw), annotations.get("numail.ai/key-id", key_id), created


def _sealing_context(inputs: WorkspaceInputs) -> crypto.SealContext:
    return crypto.SealContext(inputs.uid, f"workspace/{inputs.name}", SEALING_KEY_PURPOSE)


def _ensure_sealing_key(
    clients: k8s.Clients, inputs: WorkspaceInputs, dek: crypto.DataKey, likely_new: bool
) -> X25519PrivateKey:
    for attempt in range(2):
        skip_read = likely_new and attempt == 0
        secret = (
            None if skip_read else k8s.read_secret(clients, inputs.namespace, SEALING_KEY_SECRET)
        )
        if secret is not None:
            frame = base64.b64decode((secret.data or {}).get("private.sealed", ""))
            try:
                raw = crypto.open(dek, frame, _sealing_context(inputs))
            except crypto.CryptoError as err:
                raise KeyNotReady("SealingKeyUnreadable", f"sealing key: {err}") from None
            return X25519PrivateKey.from_private_bytes(raw)
        key = crypto.generate_sealing_key()
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        frame = crypto.seal(dek, raw, _sealing_context(inputs))
        manifest = build_sealing_key_secret(
            inputs,
            base64.b64encode(frame).decode(),
            crypto.public_key_text(key.public_key()),
            dek.version,
        )
        if k8s.create_secret_once(clients, manifest):
            return key
    raise KeyNotReady("SealingKeyMissing", "the sealing key Secret could not be created or read")


# --- read-only access for Mailboxes ---------------------------------------------------------


def load_dek(
    clients: k8s.Clients, provider: KeyProvider, workspace: str, workspace_uid: str
) -> tuple[crypto.DataKey, str]:
    """The workspace's current DEK and the id of the master key that wraps it; read, never made.

    A Mailbox must not make keys: only the Workspace reconciler does, once. Anything missing is
    KeyNotReady, which the mailbox reports as WorkspaceNotReady and retries.
    """
    namespace = f"ws-{workspace}"
    secret = k8s.read_secret(clients, namespace, DEK_SECRET)
    if secret is None:
        raise KeyNotReady("DataKeyMissing", f"Secret {namespace}/{DEK_SECRET} does not exist")
    annotations = secret.metadata.annotations or {}
    if annotations.get("numail.ai/workspace-uid") != workspace_uid:
        raise KeyNotReady(
            "ForeignDataKey",
            f"Secret {namespace}/{DEK_SECRET} belongs to another Workspace of this name",
        )
    version = int(annotations.get("numail.ai/current-key-version", "1"))
    wrapped_b64 = (secret.data or {}).get(f"v{version}")
    if not wrapped_b64:
        raise KeyNotReady("DataKeyMissing", f"Secret {DEK_SECRET} has no entry v{version}")
    context = KeyContext(workspace_uid=workspace_uid, workspace=workspace, key_version=version)
    try:
        raw = provider.unwrap(base64.b64decode(wrapped_b64), context)
    except KeyProviderError as err:
        raise KeyNotReady("UnwrapFailed", str(err)) from None
    return crypto.DataKey(version, raw), annotations.get("numail.ai/key-id", "")


def load_keys(
    clients: k8s.Clients, provider: KeyProvider, workspace: str, workspace_uid: str
) -> WorkspaceKeys:
    """The DEK and the sealing key pair, for opening `numail seal` blobs; read, never made."""
    dek, key_id = load_dek(clients, provider, workspace, workspace_uid)
    namespace = f"ws-{workspace}"
    sealed = k8s.read_secret(clients, namespace, SEALING_KEY_SECRET)
    if sealed is None:
        raise KeyNotReady(
            "SealingKeyMissing", f"Secret {namespace}/{SEALING_KEY_SECRET} does not exist"
        )
    frame = base64.b64decode((sealed.data or {}).get("private.sealed", ""))
    context = crypto.SealContext(workspace_uid, f"workspace/{workspace}", SEALING_KEY_PURPOSE)
    try:
        private = crypto.open(dek, frame, context)
    except crypto.CryptoError as err:
        raise KeyNotReady("SealingKeyUnreadable", f"sealing key: {err}") from None
    return WorkspaceKeys(
        dek=dek,
        key_id=key_id,
        sealing_key=X25519PrivateKey.from_private_bytes(private),
        created=False,
    )
