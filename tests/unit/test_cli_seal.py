"""`numail seal` offline: the blob opens with the operator's code path, for that mailbox only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from numail import crypto
from numail.api.sealing import open_credentials

SECRET = b'{"username": "sales@client1.example", "password": "Canary-app-pass-1"}'


def run_seal(*args: str, stdin: bytes = SECRET) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "numail.cli", "seal", *args],
        input=stdin,
        capture_output=True,
        check=False,
    )


@pytest.mark.parametrize("form", ["status text", "PEM"])
def test_sealed_offline_opens_in_the_operator_for_that_mailbox_only(
    tmp_path: Path, form: str
) -> None:
    key = crypto.generate_sealing_key()
    pub = tmp_path / "ws.pub"
    if form == "PEM":
        pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    else:
        pub.write_text(crypto.public_key_text(key.public_key()) + "\n")
    done = run_seal("--public-key", str(pub), "--mailbox", "ws-acme/sales")
    assert done.returncode == 0, done.stderr
    blob = done.stdout.decode().strip()
    assert blob.startswith("nm1.") and b"Canary" not in done.stdout
    assert open_credentials(key, blob, "ws-acme/sales") == SECRET
    with pytest.raises(crypto.WrongContext):
        open_credentials(key, blob, "ws-acme/support")
    with pytest.raises(crypto.WrongKey):
        open_credentials(crypto.generate_sealing_key(), blob, "ws-acme/sales")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--mailbox", "ns/x"], SECRET, "exactly one of --workspace NAME or --public-key FILE"),
        (["--public-key", "PUB", "--mailbox", "no-slash"], SECRET, "--mailbox"),
        (["--public-key", "PUB", "--mailbox", "ns/x"], b"  \n", "nothing on standard input"),
        (["--public-key", "BADPUB", "--mailbox", "ns/x"], SECRET, "status.sealingPublicKey"),
    ],
)
def test_bad_input_names_the_flag_and_the_fix(
    tmp_path: Path, args: list[str], stdin: bytes, message: str
) -> None:
    (tmp_path / "PUB").write_text(
        crypto.public_key_text(crypto.generate_sealing_key().public_key())
    )
    (tmp_path / "BADPUB").write_text("not a key")
    args = [str(tmp_path / a) if a in ("PUB", "BADPUB") else a for a in args]
    done = run_seal(*args, stdin=stdin)
    assert done.returncode != 0
    assert message in done.stderr.decode()
    assert b"Canary" not in done.stderr + done.stdout
    assert b"Traceback" not in done.stderr


def test_help_lists_the_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "numail.cli", "--help"], capture_output=True, check=True
    )
    out = done.stdout.decode()
    for command in ("seal", "keys"):
        assert command in out
