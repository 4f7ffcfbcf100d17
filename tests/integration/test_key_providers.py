"""One contract, three backends: local, awsKms (moto's server) and pkcs11 (SoftHSM2).

Each provider is built through the registry, by name and config, as the operator builds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from numail.keys import KeyContext, KeyProvider, UnwrapRefused, build_provider
from numail.keys.local import generate_keyring
from tests.support.kms import MotoServer, SoftHsmToken

CTX = KeyContext(
    workspace_uid="6f1d9a8e-0000-4000-8000-00000000000a", workspace="acme", key_version=1
)
OTHERS = {
    "another workspace UID": KeyContext("6f1d9a8e-0000-4000-8000-00000000000b", "acme", 1),
    "another workspace name": KeyContext(CTX.workspace_uid, "acme-2", 1),
    "another key version": KeyContext(CTX.workspace_uid, "acme", 2),
}


@pytest.fixture(params=["local", "awsKms", "pkcs11"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> KeyProvider:
    name = request.param
    if name == "local":
        keyring = tmp_path / "keyring"
        keyring.write_text(generate_keyring())
        return build_provider("local", {"keyFile": str(keyring)})
    if name == "awsKms":
        moto: MotoServer = request.getfixturevalue("moto_kms")
        return build_provider("awsKms", moto.provider_config(moto.create_key()))
    hsm: SoftHsmToken = request.getfixturevalue("softhsm")
    return build_provider("pkcs11", hsm.config())


def test_wrap_then_unwrap_returns_the_dek(provider: KeyProvider) -> None:
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, CTX)
    assert dek not in wrapped and dek.hex().encode() not in wrapped
    assert provider.unwrap(wrapped, CTX) == dek
    assert provider.wrap(dek, CTX) != wrapped, "wrapping must be randomised"


@pytest.mark.parametrize("other", list(OTHERS), ids=list(OTHERS))
def test_the_wrong_context_is_refused(provider: KeyProvider, other: str) -> None:
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, CTX)
    with pytest.raises(UnwrapRefused) as err:
        provider.unwrap(wrapped, OTHERS[other])
    assert dek.hex() not in str(err.value) and repr(dek) not in str(err.value)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),
        lambda b: b[:10],
        lambda b: b"",
        lambda b: b"NMXX" + b[4:],
    ],
    ids=["flipped last byte", "truncated", "empty", "foreign magic"],
)
def test_a_tampered_or_foreign_blob_is_refused(
    provider: KeyProvider, tamper: Callable[[bytes], bytes]
) -> None:
    wrapped = provider.wrap(os.urandom(32), CTX)
    with pytest.raises(UnwrapRefused):
        provider.unwrap(tamper(wrapped), CTX)


def test_status_reports_healthy_with_a_key_id(provider: KeyProvider) -> None:
    status = provider.status()
    assert status.healthy is True
    assert status.key_id and status.key_id.split(":")[0] in ("local", "arn", "pkcs11")


def test_concurrent_wraps_and_unwraps(provider: KeyProvider) -> None:
    def round_trip(_: int) -> bool:
        dek = os.urandom(32)
        return provider.unwrap(provider.wrap(dek, CTX), CTX) == dek

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(round_trip, range(32)))


def test_a_blob_from_one_backend_is_refused_by_another(
    tmp_path: Path, moto_kms: MotoServer, softhsm: SoftHsmToken
) -> None:
    keyring = tmp_path / "keyring"
    keyring.write_text(generate_keyring())
    backends = {
        "local": build_provider("local", {"keyFile": str(keyring)}),
        "awsKms": build_provider("awsKms", moto_kms.provider_config(moto_kms.create_key())),
        "pkcs11": build_provider("pkcs11", softhsm.config()),
    }
    for name, source in backends.items():
        wrapped = source.wrap(os.urandom(32), CTX)
        for other, target in backends.items():
            if other != name:
                with pytest.raises(UnwrapRefused):
                    target.unwrap(wrapped, CTX)


def test_local_rotation_keeps_old_dek_unwrappable_and_persists_the_keyring(tmp_path: Path) -> None:
    keyring = tmp_path / "keyring"
    keyring.write_text(generate_keyring())
    provider = build_provider("local", {"keyFile": str(keyring)})
    dek = os.urandom(32)
    old = provider.wrap(dek, CTX)
    assert provider.rotate() == "local:k2"
    assert provider.status().key_id == "local:k2"
    reloaded = build_provider("local", {"keyFile": str(keyring)})  # as after a restart
    assert reloaded.unwrap(old, CTX) == dek
    assert reloaded.unwrap(reloaded.wrap(dek, CTX), CTX) == dek
    assert oct(keyring.stat().st_mode & 0o777) == "0o600"


def test_planned_and_unknown_providers_are_refused_by_name() -> None:
    from numail.keys import KeyProviderError

    for name in ("gcpKms", "azureKeyVault", "vaultTransit"):
        with pytest.raises(KeyProviderError, match="planned"):
            build_provider(name, {})
    with pytest.raises(KeyProviderError, match="unknown key provider type 'nope'"):
        build_provider("nope", {})
