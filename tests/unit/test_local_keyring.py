"""The local provider's keyring: bad files are refused with the line and the fix, never the key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from numail.keys import ProviderUnavailable
from numail.keys.local import LocalKeyProvider, parse_keyring

SECRETISH = base64.b64encode(b"k" * 31).decode()  # 31 bytes: wrong length


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the keyring is empty"),
        ("# only a comment\n", "the keyring is empty"),
        ("k1\n", "line 1 must be '<key id> <base64 32-byte key>'"),
        (f"k1 {SECRETISH}\n", "key 'k1' on line 1 is not 32 bytes of base64"),
        ("k1 !!!notbase64!!!\n", "key 'k1' on line 1 is not 32 bytes of base64"),
        ("bad/id " + base64.b64encode(bytes(32)).decode(), "line 1 must be"),
    ],
)
def test_bad_keyrings_name_the_line_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(ProviderUnavailable) as err:
        parse_keyring(text, "keyring.txt")
    assert message in str(err.value)
    assert SECRETISH not in str(err.value)


def test_a_missing_file_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ProviderUnavailable, match="cannot read keyring file"):
        LocalKeyProvider.from_file(tmp_path / "absent")


def test_the_last_key_is_current_and_older_ones_stay() -> None:
    ring = parse_keyring(
        "k1 "
        + base64.b64encode(bytes(32)).decode()
        + "\nk2 "
        + base64.b64encode(b"\x01" * 32).decode(),
        "t",
    )
    provider = LocalKeyProvider(ring)
    assert provider.status().key_id == "local:k2"
    assert list(ring) == ["k1", "k2"]
