"""The KeyProvider Protocol every KMS backend implements, and its shared types and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class KeyContext:
    """What a wrapped DEK is bound to. A DEK wrapped for one workspace never unwraps for another.

    It is sent to the KMS as encryption context (AWS), bound as associated data (local, PKCS#11),
    so the binding is enforced by the backend itself and not only by our code.
    """

    workspace_uid: str
    workspace: str
    key_version: int

    def as_dict(self) -> dict[str, str]:
        return {
            "numail.ai/workspace-uid": self.workspace_uid,
            "numail.ai/workspace": self.workspace,
            "numail.ai/key-version": str(self.key_version),
        }

    def aad(self) -> bytes:
        """Canonical bytes: sorted keys, length-prefixed, so no two contexts encode alike."""
        out = bytearray(b"numail-kek-ctx-v1")
        for key, value in sorted(self.as_dict().items()):
            for part in (key.encode(), value.encode()):
                out += len(part).to_bytes(4, "big") + part
        return bytes(out)


@dataclass(frozen=True)
class KeyStatus:
    """Health and current key id, as KMS v2's Status call reports them."""

    healthy: bool
    key_id: str
    message: str = ""


class KeyProviderError(Exception):
    """Base of every provider error. Messages never carry key bytes."""


class UnwrapRefused(KeyProviderError):
    """The backend refused to unwrap: wrong context, tampered blob or wrong key. Fail closed."""


class ProviderUnavailable(KeyProviderError):
    """The backend could not be reached or is misconfigured; retrying may help."""


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps workspace DEKs with a master key (KEK) this process never sees.

    `wrap` output is opaque bytes that only `unwrap` of the same provider, with an equal
    context, turns back into the DEK.
    """

    name: str

    def wrap(self, dek: bytes, context: KeyContext) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: KeyContext) -> bytes: ...

    def status(self) -> KeyStatus: ...

    def rotate(self) -> str:
        """Make a new KEK version current and return its id; old versions still unwrap.

        Raises NotImplementedError where the backend rotates by itself (AWS KMS).
        """
        ...
