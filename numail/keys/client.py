"""Worker side of the key service: fetch a workspace DEK once per TTL and keep it only in memory.

At most one unwrap call is made per (wrapped key, version) per TTL: concurrent callers for the
same key wait on one in-flight request instead of each calling the service. On expiry the entry
is dropped and its bytearray overwritten; Python can't promise that no other copy of the bytes
exists (AESGCM keeps its own, freed with the object), which is why the TTL is short.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from numail.crypto import DataKey
from numail.keys.base import KeyProviderError, ProviderUnavailable, UnwrapRefused


class KeyServiceError(KeyProviderError):
    """The key service said no, or could not be reached. Status is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Entry:
    secret: bytearray
    dek: DataKey
    expires: float


class KeyServiceClient:
    def __init__(
        self,
        url: str,
        *,
        token: Callable[[], str] | None = None,
        token_path: str | Path = "/var/run/secrets/numail/keyservice/token",  # noqa: S107
        ca_file: str | None = None,
        ttl: float = 300.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url.rstrip("/") + "/v1/unwrap"
        path = Path(token_path)
        # The kubelet rotates projected tokens; read the file on every call, never cache it.
        self._token = token or (lambda: path.read_text().strip())
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[bytes, int], _Entry] = {}
        self._inflight: dict[tuple[bytes, int], threading.Lock] = {}
        self.calls = 0

    def dek(self, wrapped: bytes, key_version: int) -> DataKey:
        cache_key = (hashlib.sha256(wrapped).digest(), key_version)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(cache_key)
            if entry is not None and entry.expires > now:
                return entry.dek
            gate = self._inflight.setdefault(cache_key, threading.Lock())
        with gate:
            with self._lock:
                entry = self._entries.get(cache_key)
                if entry is not None and entry.expires > self._clock():
                    return entry.dek
            raw = bytearray(self._fetch(wrapped, key_version))
            dek = DataKey(version=key_version, key=bytes(raw))
            with self._lock:
                self._expire_locked(self._clock())
                self._entries[cache_key] = _Entry(raw, dek, self._clock() + self._ttl)
                self._inflight.pop(cache_key, None)
            return dek

    def clear(self) -> None:
        with self._lock:
            self._expire_locked(float("inf"))

    def _expire_locked(self, now: float) -> None:
        for k in [k for k, e in self._entries.items() if e.expires <= now]:
            entry = self._entries.pop(k)
            entry.secret[:] = bytes(len(entry.secret))

    def _fetch(self, wrapped: bytes, key_version: int) -> bytes:
        body = json.dumps(
            {"wrappedKey": base64.b64encode(wrapped).decode(), "keyVersion": key_version}
        ).encode()
        request = urllib.request.Request(  # noqa: S310 - URL is the configured https endpoint
            self._url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self._token()}",
                "Content-Type": "application/json",
            },
        )
        self.calls += 1
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._ssl) as resp:  # noqa: S310
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read()).get("message", "")
            except ValueError:
                detail = ""
            if err.code == 403:
                raise UnwrapRefused(f"key service refused: {detail}") from None
            if err.code >= 500:
                raise ProviderUnavailable(
                    f"key service unavailable ({err.code}): {detail}"
                ) from None
            raise KeyServiceError(f"key service answered {err.code}: {detail}", err.code) from None
        except (urllib.error.URLError, OSError) as err:
            raise ProviderUnavailable(f"key service at {self._url} unreachable: {err}") from None
        return base64.b64decode(payload["dek"])
