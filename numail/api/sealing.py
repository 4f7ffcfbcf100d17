"""Client-side sealing of mailbox credentials, shared by `numail seal` and the operator.

The HPKE `info` binds the recipient workspace key, the mailbox (`namespace/name`) and the
purpose, so a blob committed for one mailbox can't be replayed into another Mailbox, even in
the same workspace.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from numail import crypto

CREDENTIALS_PURPOSE = "mailbox-credentials"


def hpke_info(
    public_key: X25519PublicKey, mailbox: str, purpose: str = CREDENTIALS_PURPOSE
) -> bytes:
    if mailbox.count("/") != 1 or not all(mailbox.split("/")):
        raise ValueError(f"mailbox must be NAMESPACE/NAME, got {mailbox!r}")
    return crypto.SealContext(crypto.key_id(public_key), mailbox, purpose).encode()


def seal_credentials(public_key: X25519PublicKey, plaintext: bytes, mailbox: str) -> str:
    return crypto.hpke_seal(public_key, plaintext, hpke_info(public_key, mailbox))


def open_credentials(private_key: X25519PrivateKey, blob: str, mailbox: str) -> bytes:
    return crypto.hpke_open(private_key, blob, hpke_info(private_key.public_key(), mailbox))
