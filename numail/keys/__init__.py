"""KMS key providers behind one Protocol, picked by name, and the key-service client."""

from numail.keys.base import (
    KeyContext,
    KeyProvider,
    KeyProviderError,
    KeyStatus,
    ProviderUnavailable,
    UnwrapRefused,
)
from numail.keys.registry import build_provider, provider_names

__all__ = [
    "KeyContext",
    "KeyProvider",
    "KeyProviderError",
    "KeyStatus",
    "ProviderUnavailable",
    "UnwrapRefused",
    "build_provider",
    "provider_names",
]
