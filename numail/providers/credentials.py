"""The credentials document each provider takes: strict parsing, one canonical form, redaction.

smtp:          {"username"?, "password", "imapUsername"?, "imapPassword"?}
gmail:         {"refresh_token"}
microsoft365:  {"refresh_token"}

Parsing is strict (unknown fields are refused) so a typo such as `refreshToken` is reported at
intake rather than as a failed login later. Errors name fields, never values. The canonical form
(sorted keys, no whitespace) is what gets sealed, so an unchanged credential seals to the same
plaintext and the operator can tell a rotation from a replay.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from numail import redact
from numail.providers.base import MalformedCredentials

ProviderName = Literal["gmail", "microsoft365", "smtp"]
MAX_DOCUMENT_BYTES = 16384
INTAKE_DOCUMENT_KEY = "credentials"

# field -> required, per provider
_FIELDS: dict[str, dict[str, bool]] = {
    "smtp": {"username": False, "password": True, "imapUsername": False, "imapPassword": False},
    "gmail": {"refresh_token": True},
    "microsoft365": {"refresh_token": True},
}
_SECRET_FIELDS = frozenset({"password", "imapPassword", "refresh_token"})


@dataclass(frozen=True, repr=False)
class PasswordCredentials:
    """SMTP and IMAP logins; IMAP uses the SMTP ones unless its own are given."""

    password: str
    username: str | None = None
    imap_username: str | None = None
    imap_password: str | None = None

    def __repr__(self) -> str:
        return "PasswordCredentials(<redacted>)"


@dataclass(frozen=True, repr=False)
class RefreshTokenCredentials:
    """An OAuth refresh token for Gmail or Microsoft 365."""

    refresh_token: str = field(repr=False)

    def __repr__(self) -> str:
        return "RefreshTokenCredentials(<redacted>)"


Credentials = PasswordCredentials | RefreshTokenCredentials


def parse_credentials(provider: str, document: bytes) -> Credentials:
    """Validate `document` for `provider`. Registers every secret value with the redactor first,
    so nothing that follows (a log line, an exception) can show one."""
    fields = _FIELDS.get(provider)
    if fields is None:
        raise MalformedCredentials(f"unknown provider {provider!r}")
    if len(document) > MAX_DOCUMENT_BYTES:
        raise MalformedCredentials(
            f"the credentials document is larger than {MAX_DOCUMENT_BYTES} bytes"
        )
    redact.register(document)
    try:
        parsed = json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise MalformedCredentials(
            f"the credentials are not a JSON object; {provider} takes "
            f"{_shape(provider)} (see docs/mailboxes.md)"
        ) from None
    if not isinstance(parsed, dict):
        raise MalformedCredentials(
            f"the credentials must be a JSON object; {provider} takes {_shape(provider)}"
        )
    for name, value in parsed.items():
        if name in _SECRET_FIELDS and isinstance(value, str):
            redact.register(value)
    unknown = sorted(str(name) for name in parsed if name not in fields)
    if unknown:
        raise MalformedCredentials(
            f"unknown field(s) {_names(unknown)} in the {provider} credentials; "
            f"{provider} takes {_shape(provider)}"
        )
    for name, required in fields.items():
        value = parsed.get(name)
        if value is None and not required:
            continue
        if not isinstance(value, str) or not value.strip():
            need = "is required and must be" if required else "must be"
            raise MalformedCredentials(
                f"field {name!r} of the {provider} credentials {need} a non-empty string"
            )
    if provider == "smtp":
        return PasswordCredentials(
            password=parsed["password"],
            username=parsed.get("username"),
            imap_username=parsed.get("imapUsername"),
            imap_password=parsed.get("imapPassword"),
        )
    return RefreshTokenCredentials(refresh_token=parsed["refresh_token"])


def canonical_document(credentials: Credentials) -> bytes:
    """The bytes that get sealed: sorted keys, no whitespace, absent optional fields left out."""
    if isinstance(credentials, PasswordCredentials):
        doc = {
            "username": credentials.username,
            "password": credentials.password,
            "imapUsername": credentials.imap_username,
            "imapPassword": credentials.imap_password,
        }
    else:
        doc = {"refresh_token": credentials.refresh_token}
    present = {k: v for k, v in doc.items() if v is not None}
    return json.dumps(present, sort_keys=True, separators=(",", ":")).encode()


def intake_document(data: Mapping[str, str]) -> bytes:
    """The credentials document from an intake Secret's `data` (base64 values, as the API gives).

    Either the whole JSON document under the key `credentials`, or one key per field (so that
    `kubectl create secret generic --from-literal=password=...` works). Every value, and its
    base64 form, is registered with the redactor before anything else happens.
    """
    redact.register(*data.values())
    decoded: dict[str, str] = {}
    for key, value in data.items():
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raise MalformedCredentials(f"intake Secret key {key!r} is not base64") from None
        redact.register(raw)
        try:
            decoded[key] = raw.decode()
        except UnicodeDecodeError:
            raise MalformedCredentials(f"intake Secret key {key!r} is not UTF-8 text") from None
    if INTAKE_DOCUMENT_KEY in decoded:
        if len(decoded) > 1:
            others = ", ".join(sorted(k for k in decoded if k != INTAKE_DOCUMENT_KEY))
            raise MalformedCredentials(
                f"the intake Secret has {INTAKE_DOCUMENT_KEY!r} and also {others}: give either "
                "the whole JSON document under 'credentials' or one key per field, not both"
            )
        return decoded[INTAKE_DOCUMENT_KEY].encode()
    if not decoded:
        raise MalformedCredentials("the intake Secret holds no data")
    return json.dumps(decoded, sort_keys=True).encode()


# Names people put in by mistake. Only these are quoted back: an unrecognised key could be a
# value pasted in the wrong place, and an Event is not redacted.
_QUOTABLE = frozenset(
    {name for fields in _FIELDS.values() for name in fields}
    | {"user", "pass", "token", "access_token", "client_id", "client_secret", "imap_password"}
)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_QUOTABLE_NORM = {_norm(n) for n in _QUOTABLE}


def _names(names: list[str]) -> str:
    """Misspelt field names are quoted; anything else is only counted."""
    quoted = [repr(n) for n in names if len(n) <= 32 and _norm(n) in _QUOTABLE_NORM]
    others = len(names) - len(quoted)
    if others:
        quoted.append(f"{others} unrecognised key(s)")
    return ", ".join(quoted)


def _shape(provider: str) -> str:
    fields = _FIELDS.get(provider, {})
    parts = [f'"{name}"' + ("" if required else "?") for name, required in fields.items()]
    return "{" + ", ".join(parts) + "}"
