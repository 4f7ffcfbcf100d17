"""Crypto figures: open() against raw AES-GCM, and KMS calls per 10,000 opens with the DEK cache.

Run: python bench/crypto.py   (prints figures; the ratios are measured side by side in one run)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from numail import crypto
from numail.keys import KeyContext
from numail.keys.client import KeyServiceClient
from numail.keys.local import LocalKeyProvider


def bench_open(rounds: int = 15, n: int = 20_000) -> None:
    dek = crypto.generate_dek(1)
    ctx = crypto.SealContext(
        "7d1c9a1e-2f3b-4c5d-8e9f-0a1b2c3d4e5f", "ws-acme/sales", "mailbox-credentials"
    )
    plaintext = bytes(1024)
    frame = crypto.seal(dek, plaintext, ctx)
    body, nonce = frame[crypto.HEADER_BYTES :], frame[25:37]
    aad = frame[:25] + ctx.encode()
    raw = AESGCM(dek.key)

    def run_open() -> float:
        t = time.perf_counter()
        for _ in range(n):
            crypto.open(dek, frame, ctx)
        return time.perf_counter() - t

    def run_raw_frame() -> float:
        # What any caller holding the frame must do at least: take nonce and body out of it.
        t = time.perf_counter()
        for _ in range(n):
            raw.decrypt(frame[25:37], frame[37:], aad)
        return time.perf_counter() - t

    def run_raw_presliced() -> float:
        t = time.perf_counter()
        for _ in range(n):
            raw.decrypt(nonce, body, aad)
        return time.perf_counter() - t

    opens, raws, bare = [], [], []
    for _ in range(rounds):  # interleaved, so all see the same machine load
        bare.append(run_raw_presliced())
        raws.append(run_raw_frame())
        opens.append(run_open())
    o, r, b = statistics.median(opens), statistics.median(raws), statistics.median(bare)
    print(f"open() 1 KiB, cached DEK:              {n / o:,.0f}/s ({o / n * 1e6:.2f} us)")
    print(f"raw AESGCM.decrypt of the same frame:  {n / r:,.0f}/s ({r / n * 1e6:.2f} us)")
    print(f"raw AESGCM.decrypt, inputs pre-sliced: {n / b:,.0f}/s ({b / n * 1e6:.2f} us)")
    print(f"ratio open/raw (same frame): {r / o:.2f}x (goal >= 0.7x)")
    print(f"ratio open/raw (pre-sliced): {b / o:.2f}x")


class CountingClient(KeyServiceClient):
    """The real client and cache, with the HTTP hop replaced by a direct KMS unwrap."""

    def __init__(self, provider: LocalKeyProvider, contexts: dict[bytes, KeyContext]) -> None:
        super().__init__("https://keyservice.invalid", token=lambda: "t", ttl=300)
        self.provider, self.contexts = provider, contexts

    def _fetch(self, wrapped: bytes, key_version: int) -> bytes:
        self.calls += 1
        return self.provider.unwrap(wrapped, self.contexts[wrapped])


def bench_kms_calls(workspaces: int = 10, opens: int = 10_000) -> None:
    provider = LocalKeyProvider({"k1": bytes(32)})
    contexts, frames = {}, []
    for i in range(workspaces):
        kc = KeyContext(workspace_uid=f"uid-{i}", workspace=f"ws{i}", key_version=1)
        dek = crypto.generate_dek(1)
        wrapped = provider.wrap(dek.key, kc)
        contexts[wrapped] = kc
        sc = crypto.SealContext(f"uid-{i}", f"ws-ws{i}/m", "mailbox-credentials")
        frames.append((wrapped, crypto.seal(dek, b"x" * 256, sc), sc))
    client = CountingClient(provider, contexts)
    t = time.perf_counter()
    for j in range(opens):
        wrapped, frame, sc = frames[j % workspaces]
        crypto.open(client.dek(wrapped, 1), frame, sc)
    elapsed = time.perf_counter() - t
    print(
        f"KMS unwrap calls for {opens:,} opens across {workspaces} workspaces in one TTL: "
        f"{client.calls} (goal <= {workspaces}); {opens / elapsed:,.0f} opens/s including cache"
    )


if __name__ == "__main__":
    bench_open()
    bench_kms_calls()
