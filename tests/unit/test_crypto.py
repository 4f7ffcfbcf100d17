"""Sealed frames and HPKE: round trips, a fail-closed table and known-answer vectors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numail import crypto
from numail.crypto import (
    DataKey,
    MalformedFrame,
    SealContext,
    TamperedCiphertext,
    UnknownKeyVersion,
    WrongContext,
    WrongKey,
)

KAT = Path(__file__).parents[1] / "data" / "crypto" / "seal_kat.json"
names = st.text(min_size=1, max_size=40)
contexts = st.builds(SealContext, names, names, names)


@given(plaintext=st.binary(max_size=4096), context=contexts, version=st.integers(1, 2**32 - 1))
def test_seal_then_open_round_trips(plaintext: bytes, context: SealContext, version: int) -> None:
    dek = crypto.generate_dek(version)
    frame = crypto.seal(dek, plaintext, context)
    assert crypto.open(dek, frame, context) == plaintext
    assert crypto.frame_key_version(frame) == version


@settings(max_examples=50)
@given(plaintext=st.binary(max_size=2048), mailbox=names, purpose=names)
def test_hpke_seal_then_open_round_trips(plaintext: bytes, mailbox: str, purpose: str) -> None:
    key = crypto.generate_sealing_key()
    info = SealContext("ws", mailbox, purpose).encode()
    blob = crypto.hpke_seal(key.public_key(), plaintext, info)
    assert blob.startswith("nm1.") and blob.isascii() and "\n" not in blob
    assert crypto.hpke_open(key, blob, info) == plaintext


@given(a=contexts, b=contexts)
def test_distinct_contexts_never_share_an_encoding(a: SealContext, b: SealContext) -> None:
    assert (a.encode() == b.encode()) == (a == b)


DEK = DataKey(1, bytes(range(32)))
OTHER_DEK = DataKey(1, bytes(range(1, 33)))
CTX = SealContext("0b7e-ws-a", "ws-a/sales", "mailbox-credentials")
SECRET = b'{"password": "hunter2-canary"}'
FRAME = crypto.seal(DEK, SECRET, CTX)


def flip(offset: int) -> bytes:
    b = bytearray(FRAME)
    b[offset] ^= 0x01
    return bytes(b)


# Each case: a sentence, a way to open, and the error it must raise.
FAIL_CLOSED: list[tuple[str, Callable[[], bytes], type[Exception]]] = [
    (
        "a flipped bit in the nonce is tampering",
        lambda: crypto.open(DEK, flip(25), CTX),
        TamperedCiphertext,
    ),
    (
        "a flipped bit in the ciphertext is tampering",
        lambda: crypto.open(DEK, flip(crypto.HEADER_BYTES + 2), CTX),
        TamperedCiphertext,
    ),
    (
        "a flipped bit in the tag is tampering",
        lambda: crypto.open(DEK, flip(len(FRAME) - 1), CTX),
        TamperedCiphertext,
    ),
    (
        "a flipped bit in the context check still fails closed, as a context mismatch",
        lambda: crypto.open(DEK, flip(17), CTX),
        WrongContext,
    ),
    (
        "a truncated frame is malformed",
        lambda: crypto.open(DEK, FRAME[: crypto.HEADER_BYTES + 3], CTX),
        MalformedFrame,
    ),
    ("an empty frame is malformed", lambda: crypto.open(DEK, b"", CTX), MalformedFrame),
    (
        "a frame with another magic is malformed",
        lambda: crypto.open(DEK, b"XXXX" + FRAME[4:], CTX),
        MalformedFrame,
    ),
    (
        "a frame of a future format is malformed",
        lambda: crypto.open(DEK, FRAME[:4] + b"\x02" + FRAME[5:], CTX),
        MalformedFrame,
    ),
    (
        "the wrong workspace UID is the wrong context",
        lambda: crypto.open(DEK, FRAME, SealContext("other-ws", CTX.mailbox, CTX.purpose)),
        WrongContext,
    ),
    (
        "the wrong mailbox is the wrong context",
        lambda: crypto.open(
            DEK, FRAME, SealContext(CTX.workspace_uid, "ws-a/support", CTX.purpose)
        ),
        WrongContext,
    ),
    (
        "the wrong purpose is the wrong context",
        lambda: crypto.open(DEK, FRAME, SealContext(CTX.workspace_uid, CTX.mailbox, "api-key")),
        WrongContext,
    ),
    (
        "an unknown key version is named as such",
        lambda: crypto.open(DataKey(2, DEK.key), FRAME, CTX),
        UnknownKeyVersion,
    ),
    (
        "a keyring without the frame's version is an unknown key version",
        lambda: crypto.open([DataKey(2, DEK.key), DataKey(3, DEK.key)], FRAME, CTX),
        UnknownKeyVersion,
    ),
    (
        "another workspace's DEK is the wrong key",
        lambda: crypto.open(OTHER_DEK, FRAME, CTX),
        WrongKey,
    ),
    (
        "a key version swapped in the header fails",
        lambda: crypto.open(
            {2: DataKey(2, DEK.key)}, FRAME[:5] + b"\x00\x00\x00\x02" + FRAME[9:], CTX
        ),
        TamperedCiphertext,
    ),
]


@pytest.mark.parametrize(("case", "attempt", "error"), FAIL_CLOSED, ids=[c[0] for c in FAIL_CLOSED])
def test_opening_fails_closed(
    case: str, attempt: Callable[[], bytes], error: type[Exception]
) -> None:
    with pytest.raises(error) as raised:
        attempt()
    assert type(raised.value) is error, case
    message = str(raised.value)
    for forbidden in (DEK.key.hex(), SECRET.decode(), "hunter2", repr(DEK.key)):
        assert forbidden not in message


def test_opening_picks_the_frame_version_from_a_keyring() -> None:
    v2 = crypto.generate_dek(2)
    frame2 = crypto.seal(v2, b"two", CTX)
    ring = {1: DEK, 2: v2}
    assert crypto.open(ring, FRAME, CTX) == SECRET
    assert crypto.open(ring, frame2, CTX) == b"two"
    assert crypto.open([DEK, v2], frame2, CTX) == b"two"


def test_a_data_key_never_shows_its_bytes() -> None:
    assert DEK.key.hex() not in repr(DEK) and str(list(DEK.key)) not in str(DEK)
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(1, b"short")


@pytest.mark.parametrize(
    ("case", "mutate", "error"),
    [
        ("another workspace's key pair", "other_key", WrongKey),
        ("another mailbox's info", "other_info", WrongContext),
        ("a flipped payload bit", "flip", WrongContext),
        ("no nm1 prefix", "prefix", MalformedFrame),
        ("a payload that isn't base64url", "garbage", MalformedFrame),
        ("a truncated payload", "truncate", MalformedFrame),
    ],
)
def test_hpke_open_fails_closed(case: str, mutate: str, error: type[Exception]) -> None:
    key = crypto.generate_sealing_key()
    info = SealContext("ws", "ws-a/sales", "mailbox-credentials").encode()
    blob = crypto.hpke_seal(key.public_key(), SECRET, info)
    prefix, kid, payload = blob.split(".")
    opener, use_info = key, info
    if mutate == "other_key":
        opener = crypto.generate_sealing_key()
    elif mutate == "other_info":
        use_info = SealContext("ws", "ws-a/support", "mailbox-credentials").encode()
    elif mutate == "flip":
        payload = payload[:-3] + ("A" if payload[-3] != "A" else "B") + payload[-2:]
    elif mutate == "prefix":
        prefix = "nm0"
    elif mutate == "garbage":
        payload = "!!!not base64!!!"
    elif mutate == "truncate":
        payload = payload[:10]
    with pytest.raises(error) as raised:
        crypto.hpke_open(opener, f"{prefix}.{kid}.{payload}", use_info)
    assert "hunter2" not in str(raised.value), case


def test_known_answer_vectors_pin_the_frame_format() -> None:
    vectors = json.loads(KAT.read_text())
    assert len(vectors) >= 3
    for v in vectors:
        dek = DataKey(v["keyVersion"], bytes.fromhex(v["dek"]))
        ctx = SealContext(v["workspaceUid"], v["mailbox"], v["purpose"])
        frame = crypto.seal(
            dek, bytes.fromhex(v["plaintext"]), ctx, nonce=bytes.fromhex(v["nonce"])
        )
        assert frame.hex() == v["frame"], v["name"]
        assert crypto.open(dek, bytes.fromhex(v["frame"]), ctx) == bytes.fromhex(v["plaintext"])


def test_known_answer_frame_decrypts_with_raw_aes_gcm() -> None:
    """An independent reading of the format: header prefix and context as AAD, DEK used directly."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    v = json.loads(KAT.read_text())[0]
    frame = bytes.fromhex(v["frame"])
    header = frame[:37]
    assert header[:4] == b"NMSF" and header[4] == 1
    assert int.from_bytes(header[5:9], "big") == v["keyVersion"]
    assert header[25:37] == bytes.fromhex(v["nonce"])
    ctx = SealContext(v["workspaceUid"], v["mailbox"], v["purpose"]).encode()
    plain = AESGCM(bytes.fromhex(v["dek"])).decrypt(header[25:37], frame[37:], header[:25] + ctx)
    assert plain == bytes.fromhex(v["plaintext"])
