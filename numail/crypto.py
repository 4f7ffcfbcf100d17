"""Sealed frames (AES-256-GCM under a workspace DEK), client-side HPKE sealing, DEK generation.

The API is `generate_dek`, `seal`, `open`, `hpke_seal`, `hpke_open` and `generate_sealing_key`.
The operator, the workers and the CLI share it: one code path opens a credential.

Sealed frame, version 1 (all integers big-endian)::

    magic        4  b"NMSF"
    format       1  0x01
    key_version  4  the DEK version that sealed it
    key_check    8  HMAC-SHA256(DEK, "numail/key-check/v1")[:8]
    ctx_check    8  HMAC-SHA256(DEK, "numail/ctx-check/v1" || context)[:8]
    nonce       12  random
    ciphertext   n  AES-256-GCM(DEK, nonce, plaintext, aad = header[:25] || context), tag included

Every header field before the nonce is associated data, and GCM authenticates the nonce itself,
so no field can be swapped. That prefix depends only on the DEK and the context, so a DataKey
caches it per context and the hot path of `open` is one comparison and one decrypt.

The two checks name a failure without weakening it: a frame whose prefix differs from the
expected one is never decrypted, and the checks then tell "another workspace's key" and
"another mailbox or purpose" apart from corruption. Each is a PRF output, so it reveals
nothing about the key or the context to someone without the DEK.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"NMSF"
FORMAT_VERSION = 1
DEK_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER = struct.Struct(">4sBI8s8s12s")
HEADER_BYTES = _HEADER.size
_PREFIX = struct.Struct(">4sBI8s8s")
_PREFIX_BYTES = _PREFIX.size
_MAGIC_V1 = MAGIC + bytes([FORMAT_VERSION])
HPKE_PREFIX = "nm1."
_HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_KEM_ENC_BYTES = 32


class CryptoError(Exception):
    """Base of every failure to open. Messages never carry key, nonce or plaintext bytes."""


class MalformedFrame(CryptoError):
    """Not a sealed frame of a version this code reads: truncated, wrong magic or encoding."""


class UnknownKeyVersion(CryptoError):
    """Sealed under a DEK version the caller did not supply (destroyed, or not yet unwrapped)."""


class WrongKey(CryptoError):
    """Sealed under another DEK: another workspace's key, or a DEK replaced by mistake."""


class WrongContext(CryptoError):
    """The DEK is right but the blob was sealed for another workspace, mailbox or purpose."""


class TamperedCiphertext(CryptoError):
    """Key and context match, yet the tag fails: the bytes were altered."""


@dataclass(frozen=True)
class SealContext:
    """What a sealed credential is bound to; moving it anywhere else makes it fail to open."""

    workspace_uid: str
    mailbox: str
    purpose: str

    def __post_init__(self) -> None:
        for name in ("workspace_uid", "mailbox", "purpose"):
            if not getattr(self, name):
                raise ValueError(f"SealContext.{name} must not be empty")

    def encode(self) -> bytes:
        """Length-prefixed fields after a label: no two distinct contexts share an encoding."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        out = bytearray(b"numail-seal-ctx-v1")
        for value in (self.workspace_uid, self.mailbox, self.purpose):
            raw = value.encode()
            out += struct.pack(">I", len(raw)) + raw
        return bytes(out)


@dataclass(frozen=True, repr=False)
class DataKey:
    """One version of a workspace DEK. Its repr never shows the key."""

    version: int
    key: bytes
    _aead: AESGCM = field(init=False, compare=False)
    _key_check: bytes = field(init=False, compare=False)
    _bound: dict[bytes, tuple[bytes, bytes]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.key) != DEK_BYTES:
            raise ValueError(f"a DEK is {DEK_BYTES} bytes, got {len(self.key)}")
        if not 0 < self.version < 2**32:
            raise ValueError("DEK version must be between 1 and 2**32-1")
        object.__setattr__(self, "_aead", AESGCM(self.key))
        object.__setattr__(self, "_key_check", _mac(self.key, b"numail/key-check/v1"))
        object.__setattr__(self, "_bound", {})

    def __repr__(self) -> str:
        return f"DataKey(version={self.version}, key=<redacted>)"

    def context_check(self, context: SealContext) -> bytes:
        return _mac(self.key, b"numail/ctx-check/v1" + context.encode())

    def _binding(self, context: SealContext) -> tuple[bytes, bytes]:
        """(header prefix, associated data) for this key and context, computed once."""
        encoded = context._encoded
        found = self._bound.get(encoded)
        if found is None:
            prefix = _PREFIX.pack(
                MAGIC, FORMAT_VERSION, self.version, self._key_check, self.context_check(context)
            )
            if len(self._bound) >= 4096:  # a worker sees few mailboxes; bound it anyway
                self._bound.clear()
            found = self._bound[encoded] = (prefix, prefix + encoded)
        return found


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()[:8]


def generate_dek(version: int = 1) -> DataKey:
    return DataKey(version=version, key=os.urandom(DEK_BYTES))


def seal(
    dek: DataKey, plaintext: bytes, context: SealContext, *, nonce: bytes | None = None
) -> bytes:
    """Seal under `dek`. `nonce` exists for known-answer tests only; never pass it otherwise."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    prefix, aad = dek._binding(context)
    return prefix + nonce + dek._aead.encrypt(nonce, plaintext, aad)


def open(
    keys: DataKey | Iterable[DataKey] | Mapping[int, DataKey],
    frame: bytes,
    context: SealContext,
) -> bytes:
    """Open a frame with whichever of `keys` has its version; fail closed with a typed error."""
    if type(keys) is DataKey:
        # Hot path (every send): the cached prefix says key and context match, so a failed
        # tag can only mean tampering. bench/crypto.py measures it against bare AES-GCM.
        prefix, aad = keys._binding(context)
        if frame[:_PREFIX_BYTES] == prefix and len(frame) >= HEADER_BYTES + TAG_BYTES:
            try:
                return keys._aead.decrypt(
                    frame[_PREFIX_BYTES:HEADER_BYTES], frame[HEADER_BYTES:], aad
                )
            except InvalidTag:
                raise TamperedCiphertext(
                    "sealed frame failed authentication: it was altered"
                ) from None
    if len(frame) < HEADER_BYTES + TAG_BYTES or frame[:5] != _MAGIC_V1:
        _raise_malformed(frame)
    version = int.from_bytes(frame[5:9], "big")
    dek = _pick(keys, version)
    prefix, aad = dek._binding(context)
    if frame[:_PREFIX_BYTES] == prefix:
        try:
            return dek._aead.decrypt(frame[_PREFIX_BYTES:HEADER_BYTES], frame[HEADER_BYTES:], aad)
        except InvalidTag:
            raise TamperedCiphertext("sealed frame failed authentication: it was altered") from None
    key_check, ctx_check = frame[9:17], frame[17:25]
    # Diagnose only after failing closed: the checks name the cause, they never admit anything.
    if not hmac.compare_digest(key_check, dek._key_check):
        raise WrongKey(f"sealed under a different DEK (key version {version})") from None
    if not hmac.compare_digest(ctx_check, dek.context_check(context)):
        raise WrongContext(
            "sealed for a different workspace, mailbox or purpose than "
            f"mailbox={context.mailbox!r} purpose={context.purpose!r}"
        ) from None
    raise TamperedCiphertext("sealed frame failed authentication: it was altered") from None


def _raise_malformed(frame: bytes) -> NoReturn:
    if len(frame) < HEADER_BYTES + TAG_BYTES:
        raise MalformedFrame(f"sealed frame too short ({len(frame)} bytes)")
    if frame[:4] != MAGIC:
        raise MalformedFrame("not a numail sealed frame (bad magic)")
    raise MalformedFrame(
        f"sealed frame format {frame[4]} is not supported (reads {FORMAT_VERSION})"
    )


def _pick(keys: DataKey | Iterable[DataKey] | Mapping[int, DataKey], version: int) -> DataKey:
    if isinstance(keys, DataKey):
        if keys.version == version:
            return keys
    elif isinstance(keys, Mapping):
        found = keys.get(version)
        if found is not None:
            return found
    else:
        for k in keys:
            if k.version == version:
                return k
    raise UnknownKeyVersion(f"no DEK of version {version} is available to open this frame")


def frame_key_version(frame: bytes) -> int:
    """The DEK version a frame needs, so a caller can fetch just that key before `open`."""
    if len(frame) < HEADER_BYTES or frame[:4] != MAGIC:
        raise MalformedFrame("not a numail sealed frame")
    return int(_HEADER.unpack_from(frame)[2])


# --- client-side sealing (HPKE, RFC 9180) ---------------------------------------------------


def generate_sealing_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_key_text(public_key: X25519PublicKey) -> str:
    """The text form published in a Workspace's status: base64url of the raw 32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(raw)


def public_key_from_text(text: str) -> X25519PublicKey:
    try:
        raw = _unb64(text.strip())
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError as err:
        raise MalformedFrame(
            "public key must be the base64url X25519 key from a Workspace's status.sealingPublicKey"
        ) from err


def key_id(public_key: X25519PublicKey) -> str:
    """Short fingerprint of a sealing key, carried in the blob to name the intended recipient."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(hashlib.sha256(b"numail-sealing-key" + raw).digest()[:8])


def hpke_seal(public_key: X25519PublicKey, plaintext: bytes, info: bytes) -> str:
    """Seal to a workspace's public key; the text `nm1.<key id>.<enc||ct>` is safe in Git."""
    blob = _HPKE_SUITE.encrypt(plaintext, public_key, info=info)
    return f"{HPKE_PREFIX}{key_id(public_key)}.{_b64(blob)}"


def hpke_open(private_key: X25519PrivateKey, blob: str, info: bytes) -> bytes:
    text = blob.strip()
    if not text.startswith(HPKE_PREFIX):
        raise MalformedFrame(
            f"sealed credential must start with {HPKE_PREFIX!r}; make it with `numail seal`"
        )
    parts = text[len(HPKE_PREFIX) :].split(".")
    if len(parts) != 2:
        raise MalformedFrame("sealed credential must look like nm1.<key id>.<payload>")
    kid, payload = parts
    try:
        raw = _unb64(payload)
    except ValueError as err:
        raise MalformedFrame("sealed credential payload is not base64url") from err
    if len(raw) < _KEM_ENC_BYTES + TAG_BYTES:
        raise MalformedFrame("sealed credential payload is too short")
    if not hmac.compare_digest(kid, key_id(private_key.public_key())):
        raise WrongKey(
            "sealed to another workspace's public key (or an older one): seal it again with "
            "`numail seal --workspace <name>`"
        )
    try:
        return _HPKE_SUITE.decrypt(raw, private_key, info=info)
    except InvalidTag:
        raise WrongContext(
            "sealed credential does not open for this mailbox: it was sealed for another "
            "mailbox or altered"
        ) from None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or any(c not in _B64_ALPHABET for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
