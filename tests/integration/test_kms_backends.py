"""Backend-specific behaviour of the awsKms (against moto's server) and pkcs11 (SoftHSM2) providers.

The contract every provider shares is in test_key_providers.py; this file covers what only one
backend does: KMS key state and endpoints, HSM key attributes, versions, PINs and sessions.
"""

from __future__ import annotations

import base64
import os
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11err

from numail.keys.awskms import AwsKmsKeyProvider
from numail.keys.base import KeyContext, KeyProviderError, ProviderUnavailable, UnwrapRefused
from numail.keys.pkcs11 import Pkcs11KeyProvider
from tests.support.kms import MotoServer, SoftHsmToken
from tests.support.postgres import free_port

CTX = KeyContext(
    workspace_uid="5f0c6f1e-0000-4000-8000-000000000001", workspace="acme", key_version=1
)
OTHER_CONTEXTS = [
    KeyContext(
        workspace_uid="5f0c6f1e-0000-4000-8000-000000000002", workspace="acme", key_version=1
    ),
    KeyContext(workspace_uid=CTX.workspace_uid, workspace="acme-2", key_version=1),
    KeyContext(workspace_uid=CTX.workspace_uid, workspace="acme", key_version=2),
]


def raises_without_dek(
    kind: type[KeyProviderError], call: Callable[[], object], dek: bytes
) -> KeyProviderError:
    """Run `call`, expect `kind`, and check the whole printed error never shows the DEK."""
    with pytest.raises(kind) as info:
        call()
    err = info.value
    text = "".join(traceback.format_exception(err)) + repr(err.args)
    for shape in (dek.hex(), dek.hex().upper(), base64.b64encode(dek).decode(), repr(dek)):
        assert shape not in text
    assert dek.decode("latin-1") not in text
    return err


# AWS KMS, against moto's server.


@pytest.fixture
def aws_key(moto_kms: MotoServer) -> str:
    return moto_kms.create_key()


def test_aws_round_trip_binds_the_context(moto_kms: MotoServer, aws_key: str) -> None:
    provider = moto_kms.provider(aws_key)
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, CTX)
    assert dek not in wrapped
    assert provider.unwrap(wrapped, CTX) == dek
    status = provider.status()
    assert status.healthy and status.key_id == aws_key
    for other in OTHER_CONTEXTS:
        err = raises_without_dek(UnwrapRefused, partial(provider.unwrap, wrapped, other), dek)
        assert aws_key in str(err)


def test_aws_alias_and_region_from_arn(
    moto_kms: MotoServer, aws_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(KeyProviderError, match="no region"):
        AwsKmsKeyProvider.from_config({"keyId": "alias/numail-test"})
    moto_kms.client().create_alias(AliasName="alias/numail-test", TargetKeyId=aws_key)
    by_alias = moto_kms.provider("alias/numail-test")  # region from the config
    by_arn = AwsKmsKeyProvider.from_config({"keyId": aws_key, "endpointUrl": moto_kms.endpoint})
    dek = os.urandom(32)
    assert by_arn.unwrap(by_alias.wrap(dek, CTX), CTX) == dek
    assert by_alias.status().key_id == aws_key


def test_aws_blob_under_another_key_is_refused(moto_kms: MotoServer, aws_key: str) -> None:
    dek = os.urandom(32)
    wrapped = moto_kms.provider(aws_key).wrap(dek, CTX)
    other = moto_kms.provider(moto_kms.create_key("another KEK"))
    raises_without_dek(UnwrapRefused, lambda: other.unwrap(wrapped, CTX), dek)


def test_aws_refuses_foreign_envelopes_before_calling_kms(moto_kms: MotoServer) -> None:
    # An unreachable endpoint proves the refusal comes before any call.
    provider = AwsKmsKeyProvider.from_config(
        {
            "keyId": "alias/x",
            "region": "us-east-1",
            "endpointUrl": f"http://127.0.0.1:{free_port()}",
        }
    )
    for blob in (b"", b"NMAK", b"NMPK\x01" + bytes(40), b"NMAK\x02" + bytes(40)):
        with pytest.raises(UnwrapRefused, match="not a DEK wrapped by the awsKms"):
            provider.unwrap(blob, CTX)


def test_aws_disabled_key_is_unhealthy_and_unusable(moto_kms: MotoServer, aws_key: str) -> None:
    provider = moto_kms.provider(aws_key)
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, CTX)
    moto_kms.set_enabled(aws_key, False)
    try:
        status = provider.status()
        assert not status.healthy
        assert status.key_id == aws_key
        assert "Disabled" in status.message and "enable-key" in status.message
        err = raises_without_dek(ProviderUnavailable, lambda: provider.wrap(dek, CTX), dek)
        assert aws_key in str(err) and "DisabledException" in str(err)
        raises_without_dek(ProviderUnavailable, lambda: provider.unwrap(wrapped, CTX), dek)
    finally:
        moto_kms.set_enabled(aws_key, True)
    assert provider.status().healthy
    assert provider.unwrap(wrapped, CTX) == dek


def test_aws_unreachable_endpoint_is_unavailable(moto_kms: MotoServer, aws_key: str) -> None:
    dek = os.urandom(32)
    wrapped = moto_kms.provider(aws_key).wrap(dek, CTX)
    endpoint = f"http://127.0.0.1:{free_port()}"
    provider = AwsKmsKeyProvider.from_config(
        {"keyId": aws_key, "region": "us-east-1", "endpointUrl": endpoint}
    )
    for call in (
        lambda: provider.wrap(dek, CTX),
        lambda: provider.unwrap(wrapped, CTX),
        provider.status,
    ):
        err = raises_without_dek(ProviderUnavailable, call, dek)
        assert aws_key in str(err)
        assert "cannot reach KMS" in str(err) and endpoint in str(err)
        assert "endpointUrl" in str(err)


def test_aws_unknown_key_is_unavailable(moto_kms: MotoServer) -> None:
    provider = moto_kms.provider("alias/does-not-exist")
    dek = os.urandom(32)
    err = raises_without_dek(ProviderUnavailable, lambda: provider.wrap(dek, CTX), dek)
    assert "alias/does-not-exist" in str(err) and "spec.awsKms.keyId" in str(err)
    with pytest.raises(ProviderUnavailable, match="NotFoundException"):
        provider.status()


def test_aws_config_and_rotation(moto_kms: MotoServer, aws_key: str) -> None:
    with pytest.raises(KeyProviderError, match="keyId"):
        AwsKmsKeyProvider.from_config({"region": "us-east-1"})
    with pytest.raises(NotImplementedError, match="enable-key-rotation"):
        moto_kms.provider(aws_key).rotate()


# PKCS#11, against a SoftHSM2 token.


def envelope_version(wrapped: bytes) -> int:
    return int.from_bytes(wrapped[5:9], "big")


def test_pkcs11_round_trip_binds_the_context(softhsm: SoftHsmToken) -> None:
    provider = softhsm.provider()
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, CTX)
    assert dek not in wrapped
    assert provider.unwrap(wrapped, CTX) == dek
    assert provider.wrap(dek, CTX) != wrapped  # a fresh nonce each time
    status = provider.status()
    assert status.healthy
    assert status.key_id == f"pkcs11:token={softhsm.token_label};object={softhsm.key_label}"
    for other in OTHER_CONTEXTS:
        raises_without_dek(UnwrapRefused, partial(provider.unwrap, wrapped, other), dek)


def test_pkcs11_tampered_blobs_are_refused(softhsm: SoftHsmToken) -> None:
    provider = softhsm.provider()
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, CTX)
    tampered = [
        wrapped[:i] + bytes([wrapped[i] ^ 1]) + wrapped[i + 1 :] for i in range(len(wrapped))
    ]
    for blob in [*tampered, wrapped[:-1], wrapped + b"\0", wrapped[:20], b""]:
        raises_without_dek(UnwrapRefused, partial(provider.unwrap, blob, CTX), dek)


def test_pkcs11_key_never_leaves_the_hsm(softhsm: SoftHsmToken) -> None:
    provider = softhsm.provider()
    with provider.session() as session:
        key = session.get_key(
            object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=softhsm.key_label
        )
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.TOKEN] is True
        assert key[Attribute.VALUE_LEN] == 32
        with pytest.raises(p11err.AttributeSensitive):
            key[Attribute.VALUE]


def test_pkcs11_extractable_key_is_unhealthy(softhsm: SoftHsmToken) -> None:
    """A KEK imported or made extractable elsewhere could leave the HSM: status says so."""
    provider = softhsm.provider(keyLabel="weak-kek")
    with provider.session() as session:
        session.generate_key(
            KeyType.AES,
            256,
            label="weak-kek",
            store=True,
            template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False},
        )
    status = provider.status()
    assert not status.healthy
    assert "extractable" in status.message and "not sensitive" in status.message


def test_pkcs11_rotate_keeps_old_versions(softhsm: SoftHsmToken) -> None:
    provider = softhsm.provider(keyLabel="rotating-kek")
    assert provider.ensure_key() == f"pkcs11:token={softhsm.token_label};object=rotating-kek"
    assert provider.ensure_key().endswith("object=rotating-kek")  # idempotent
    dek1, dek2 = os.urandom(32), os.urandom(32)
    old = provider.wrap(dek1, CTX)
    assert envelope_version(old) == 1

    assert provider.rotate() == f"pkcs11:token={softhsm.token_label};object=rotating-kek.v2"
    new = provider.wrap(dek2, CTX)
    assert envelope_version(new) == 2
    assert provider.unwrap(old, CTX) == dek1
    assert provider.unwrap(new, CTX) == dek2
    assert provider.status().key_id.endswith("object=rotating-kek.v2")

    # Another process (a fresh provider) finds v2 current and still opens v1.
    fresh = softhsm.provider(keyLabel="rotating-kek")
    assert envelope_version(fresh.wrap(dek1, CTX)) == 2
    assert fresh.unwrap(old, CTX) == dek1
    with provider.session() as session:
        v2 = session.get_key(object_class=ObjectClass.SECRET_KEY, label="rotating-kek.v2")
        assert v2[Attribute.EXTRACTABLE] is False and v2[Attribute.SENSITIVE] is True

    # A blob naming a version the token does not hold is refused, not retried.
    missing = old[:5] + (9).to_bytes(4, "big") + old[9:]
    with pytest.raises(UnwrapRefused, match=r"rotating-kek\.v9"):
        provider.unwrap(missing, CTX)


def test_pkcs11_wrong_pin_is_unavailable(softhsm: SoftHsmToken) -> None:
    good = softhsm.provider()
    dek = os.urandom(32)
    wrapped = good.wrap(dek, CTX)
    wrong = softhsm.provider(pinEnv=None, pin="not-the-pin")
    for call in (wrong.status, lambda: wrong.unwrap(wrapped, CTX)):
        err = raises_without_dek(ProviderUnavailable, call, dek)
        assert "refused the user PIN" in str(err) and softhsm.token_label in str(err)
        assert "not-the-pin" not in str(err)
    # The provider with the right PIN logs in again and carries on.
    assert good.unwrap(wrapped, CTX) == dek


def test_pkcs11_misconfiguration_is_named(softhsm: SoftHsmToken) -> None:
    with pytest.raises(ProviderUnavailable, match="NUMAIL_TEST_UNSET_PIN"):
        softhsm.provider(pinEnv="NUMAIL_TEST_UNSET_PIN").status()
    with pytest.raises(ProviderUnavailable, match="no token labelled 'nope'"):
        softhsm.provider(tokenLabel="nope").status()
    with pytest.raises(ProviderUnavailable, match="cannot load PKCS#11 module"):
        softhsm.provider(module="/nonexistent/libpkcs11.so").status()
    absent = softhsm.provider(keyLabel="absent-kek")
    status = absent.status()
    assert not status.healthy and "absent-kek" in status.message
    with pytest.raises(ProviderUnavailable, match="absent-kek"):
        absent.wrap(os.urandom(32), CTX)
    with pytest.raises(KeyProviderError, match="exactly one PIN source"):
        Pkcs11KeyProvider.from_config(softhsm.config(pin="x"))
    with pytest.raises(KeyProviderError, match="keyLabel"):
        Pkcs11KeyProvider.from_config(softhsm.config(keyLabel=None))


def test_pkcs11_concurrent_wraps_and_unwraps(softhsm: SoftHsmToken) -> None:
    providers = [softhsm.provider(), softhsm.provider()]  # two providers share one login
    start = threading.Barrier(16)

    def work(n: int) -> int:
        provider = providers[n % 2]
        ctx = KeyContext(workspace_uid=f"uid-{n}", workspace=f"ws-{n}", key_version=1)
        start.wait()
        for _ in range(25):
            dek = os.urandom(32)
            assert provider.unwrap(provider.wrap(dek, ctx), ctx) == dek
            assert provider.status().healthy
        return n

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert sorted(pool.map(work, range(16))) == list(range(16))
