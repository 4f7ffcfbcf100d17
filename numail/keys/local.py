"""The embedded `local` key provider: a master keyring from a file or a Kubernetes Secret.

What it protects against: a copy of etcd, a backup, or a Secret read by someone without the
keyring yields wrapped DEKs that are useless alone; a DEK moved to another workspace fails to
unwrap, because the workspace UID is bound as associated data.

What it does not: anyone who can read the keyring (the file, or the Secret in the operator's
namespace, or the operator's memory) can unwrap every DEK. It is only as safe as the operator's
namespace. Use awsKms or pkcs11 where the KEK must never be in the cluster.

Keyring text: one `<key id> <base64 of 32 bytes>` per line; the last line is current. Older
lines stay so that DEKs wrapped under them still unwrap until they are rewrapped.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from numail.keys.base import (
    KeyContext,
    KeyProviderError,
    KeyStatus,
    ProviderUnavailable,
    UnwrapRefused,
)

_MAGIC = b"NMLK"
_VERSION = 1
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def generate_keyring(key_id: str = "k1") -> str:
    return f"{key_id} {base64.b64encode(os.urandom(32)).decode()}\n"


def parse_keyring(text: str, source: str) -> dict[str, bytes]:
    """Parse keyring text, naming the line and the fix on error, never echoing key material."""
    keys: dict[str, bytes] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not _KEY_ID.match(parts[0]):
            raise ProviderUnavailable(
                f"{source}: line {lineno} must be '<key id> <base64 32-byte key>'; "
                "make one with `numail keys generate-local`"
            )
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != 32:
            raise ProviderUnavailable(
                f"{source}: key {parts[0]!r} on line {lineno} is not 32 bytes of base64"
            )
        keys[parts[0]] = raw
    if not keys:
        raise ProviderUnavailable(
            f"{source}: the keyring is empty; make one with `numail keys generate-local`"
        )
    return keys


class LocalKeyProvider:
    """AES-256-GCM key wrapping with the workspace context as associated data."""

    name = "local"

    def __init__(
        self,
        keys: Mapping[str, bytes],
        *,
        source: str = "keyring",
        persist: Callable[[str], None] | None = None,
    ) -> None:
        if not keys:
            raise ProviderUnavailable(f"{source}: the keyring is empty")
        self._keys = dict(keys)
        self._current = list(self._keys)[-1]
        self._source = source
        self._persist = persist
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalKeyProvider:
        """`keyFile`: a path to keyring text. `keyring`: the text itself, read by the operator
        from the Secret named in the KeyProvider's `secretRef` (this package never calls the
        Kubernetes API)."""
        if config.get("keyring"):
            return cls(
                parse_keyring(str(config["keyring"]), "secret keyring"), source="secret keyring"
            )
        path = config.get("keyFile")
        if not path:
            raise KeyProviderError(
                "local key provider needs spec.local.secretRef or spec.local.keyFile "
                "(or NUMAIL_LOCAL_KEYRING_FILE)"
            )
        return cls.from_file(Path(str(path)))

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyProvider:
        try:
            text = path.read_text()
        except OSError as err:
            raise ProviderUnavailable(f"cannot read keyring file {path}: {err.strerror}") from err
        return cls(
            parse_keyring(text, str(path)),
            source=str(path),
            persist=lambda t: _write_private(path, t),
        )

    def wrap(self, dek: bytes, context: KeyContext) -> bytes:
        with self._lock:
            key_id = self._current
            kek = self._keys[key_id]
        kid = key_id.encode()
        nonce = os.urandom(12)
        header = _MAGIC + struct.pack(">BB", _VERSION, len(kid)) + kid + nonce
        return header + AESGCM(kek).encrypt(nonce, dek, header + context.aad())

    def unwrap(self, wrapped: bytes, context: KeyContext) -> bytes:
        if len(wrapped) < 6 or wrapped[:4] != _MAGIC or wrapped[4] != _VERSION:
            raise UnwrapRefused("not a DEK wrapped by the local key provider")
        kid_len = wrapped[5]
        header_len = 6 + kid_len + 12
        if len(wrapped) < header_len + 16:
            raise UnwrapRefused("wrapped DEK is truncated")
        key_id = wrapped[6 : 6 + kid_len].decode(errors="replace")
        with self._lock:
            kek = self._keys.get(key_id)
        if kek is None:
            raise UnwrapRefused(
                f"wrapped under master key {key_id!r}, which is not in {self._source}"
            )
        header = wrapped[:header_len]
        try:
            return AESGCM(kek).decrypt(header[-12:], wrapped[header_len:], header + context.aad())
        except InvalidTag:
            raise UnwrapRefused(
                f"wrapped DEK does not unwrap for workspace {context.workspace!r} "
                f"version {context.key_version}: another workspace's key, or altered"
            ) from None

    def status(self) -> KeyStatus:
        with self._lock:
            return KeyStatus(healthy=True, key_id=f"local:{self._current}")

    def rotate(self) -> str:
        """Append a new master key and make it current. The keyring is persisted before the
        new key is used, so a crash never leaves a DEK wrapped under a key that was lost."""
        with self._lock:
            n = len(self._keys) + 1
            key_id = f"k{n}"
            while key_id in self._keys:
                n += 1
                key_id = f"k{n}"
            keys = {**self._keys, key_id: os.urandom(32)}
            if self._persist is not None:
                self._persist(render_keyring(keys))
            self._keys = keys
            self._current = key_id
            return f"local:{key_id}"

    def keyring_text(self) -> str:
        """For the operator to write back to the Secret after `rotate`."""
        with self._lock:
            return render_keyring(self._keys)


def render_keyring(keys: Mapping[str, bytes]) -> str:
    return "".join(f"{k} {base64.b64encode(v).decode()}\n" for k, v in keys.items())


def _write_private(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keyring-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
