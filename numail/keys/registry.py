"""Picks a KeyProvider by the name used in the KeyProvider CR (`spec.type`) or in settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from numail.keys.base import KeyProvider, KeyProviderError


def _local(config: Mapping[str, Any]) -> KeyProvider:
    from numail.keys.local import LocalKeyProvider

    return LocalKeyProvider.from_config(config)


def _aws(config: Mapping[str, Any]) -> KeyProvider:
    from numail.keys.awskms import AwsKmsKeyProvider

    return AwsKmsKeyProvider.from_config(config)


def _pkcs11(config: Mapping[str, Any]) -> KeyProvider:
    from numail.keys.pkcs11 import Pkcs11KeyProvider

    return Pkcs11KeyProvider.from_config(config)


_FACTORIES: dict[str, Callable[[Mapping[str, Any]], KeyProvider]] = {
    "local": _local,
    "awsKms": _aws,
    "pkcs11": _pkcs11,
}

# Named in the CRD so users see them, but not built: no backend to test them against here.
PLANNED = ("gcpKms", "azureKeyVault", "vaultTransit")


def provider_names() -> tuple[str, ...]:
    return tuple(_FACTORIES)


def build_provider(name: str, config: Mapping[str, Any]) -> KeyProvider:
    factory = _FACTORIES.get(name)
    if factory is None:
        if name in PLANNED:
            raise KeyProviderError(
                f"key provider type {name!r} is planned but not available in this release; "
                f"use one of {', '.join(_FACTORIES)}"
            )
        raise KeyProviderError(
            f"unknown key provider type {name!r}; use one of {', '.join(_FACTORIES)}"
        )
    return factory(config)
