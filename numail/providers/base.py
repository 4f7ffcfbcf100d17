"""Typed results and errors shared by the provider clients, and where the providers are reached.

Every error carries a `reason` (one CamelCase word for a condition) and whether retrying can
help. Messages are written by this package only: a provider's own error text is never copied
into one, because an OAuth server or a mail server may echo what it was sent.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

DEFAULT_GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
DEFAULT_GOOGLE_REVOKE_URI = "https://oauth2.googleapis.com/revoke"
DEFAULT_MICROSOFT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com"


@dataclass(frozen=True)
class ProviderEndpoints:
    """Where the providers are, and whom to trust; tests point these at local servers.

    `https_ca_file` replaces the CA bundle for the OAuth and Graph endpoints; `mail_ca_file` adds
    CAs to the system store for SMTP and IMAP servers (a relay with a private CA).
    """

    google_token_uri: str = DEFAULT_GOOGLE_TOKEN_URI
    google_revoke_uri: str = DEFAULT_GOOGLE_REVOKE_URI
    microsoft_authority_host: str = DEFAULT_MICROSOFT_AUTHORITY_HOST
    graph_url: str = DEFAULT_GRAPH_URL
    https_ca_file: str | None = None
    mail_ca_file: str | None = None
    timeout: float = 10.0


class ProviderError(Exception):
    """Base of every failure to verify or revoke. `reason` goes into a condition as is."""

    reason: ClassVar[str] = "ProviderError"
    transient: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedCredentials(ProviderError):
    """The credentials document is not the JSON this provider takes; names fields, never values."""

    reason = "InvalidCredentials"


class InvalidGrant(ProviderError):
    """The refresh token was revoked, expired, or issued to another client."""

    reason = "InvalidGrant"


class InvalidClient(ProviderError):
    """The OAuth client id or secret is wrong, or the client may not use this grant."""

    reason = "InvalidClient"


class InvalidTenant(ProviderError):
    """The identity platform does not know the tenant (OpenID discovery refused it)."""

    reason = "InvalidTenant"


class ScopeTooBroad(ProviderError):
    """The grant holds more than the mailbox needs; least privilege says refuse it."""

    reason = "ScopeTooBroad"


class ScopeMissing(ProviderError):
    """The grant lacks a scope the workers need."""

    reason = "ScopeMissing"


class AuthFailed(ProviderError):
    """The mail server refused the username and password."""

    reason = "AuthFailed"


class TLSFailed(ProviderError):
    """No trusted TLS: an untrusted or mismatched certificate, a failed handshake, no STARTTLS."""

    reason = "TLSFailed"


class Forbidden(ProviderError):
    """The provider understood the call and refused it (HTTP 403)."""

    reason = "Forbidden"


class Unreachable(ProviderError):
    """No answer: refused connection, DNS failure or timeout. Retrying may help."""

    reason = "Unreachable"
    transient = True


class ProviderUnavailable(ProviderError):
    """The provider answered that it can't serve now (5xx, 429, temporarily_unavailable)."""

    reason = "ProviderUnavailable"
    transient = True


class ProtocolError(ProviderError):
    """An answer this code does not understand; often a proxy in the way, so retry."""

    reason = "ProtocolError"
    transient = True


@dataclass(frozen=True)
class TokenGrant:
    """A fresh access token and the scopes the provider says the grant holds."""

    access_token: str = field(repr=False)
    scopes: frozenset[str]


@dataclass(frozen=True)
class Revocation:
    """What revoking did: `already-invalid` means the provider no longer honours the grant."""

    outcome: Literal["revoked", "already-invalid", "not-applicable"]
    detail: str


_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def safe_error_code(value: object) -> str:
    """An OAuth `error` value fit to quote: a short token, or '?' for anything else."""
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else "?"


def check_exact_scopes(
    granted: Iterable[str],
    allowed: Collection[str],
    *,
    provider: str,
    tolerated: Collection[str] = (),
) -> None:
    """Refuse a grant that holds more than `allowed` (plus `tolerated`) or lacks one of them.

    Scope names are public identifiers, so the message may list them: it tells the user which
    consent to withdraw or add.
    """
    granted_set = set(granted)
    extra = sorted(granted_set - set(allowed) - set(tolerated))
    missing = sorted(set(allowed) - granted_set)
    wanted = ", ".join(sorted(allowed))
    if extra:
        raise ScopeTooBroad(
            f"the {provider} grant also holds {', '.join(extra)}; a mailbox may hold only "
            f"{wanted}: grant consent again with only those scopes, then rotate the credentials"
        )
    if missing:
        raise ScopeMissing(
            f"the {provider} grant lacks {', '.join(missing)}; the workers need {wanted}: "
            "grant consent again with those scopes, then rotate the credentials"
        )
