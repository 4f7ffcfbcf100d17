"""A mailbox as the send worker sees it: provider, servers and OAuth client, never secrets.

The operator copies these from the Mailbox's spec into mailboxes.settings (camelCase, as in the
spec), so a worker needs no read access to Mailbox resources. Parsing is strict about types, so
a malformed row fails the jobs of that mailbox with a message naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast
from uuid import UUID

from numail.db.jobs import MailboxRow
from numail.providers.credentials import PasswordCredentials
from numail.providers.smtp_imap import MailServer, Security

Transport = Literal["api", "smtp"]
DEFAULT_SENT_FOLDER = "Sent"
# Where Gmail and Microsoft 365 take SMTP with XOAUTH2, when a mailbox sends over SMTP.
DEFAULT_OAUTH_SMTP = {
    "gmail": ("smtp.gmail.com", 587),
    "microsoft365": ("smtp.office365.com", 587),
}


class MailboxSettingsError(ValueError):
    """mailboxes.settings does not describe a mailbox this worker can send from."""


@dataclass(frozen=True)
class ClientSecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class MailboxProfile:
    id: UUID
    namespace: str
    name: str
    provider: Literal["gmail", "microsoft365", "smtp"]
    address: str
    display_name: str | None
    transport: Transport
    smtp: MailServer | None
    imap: MailServer | None
    sent_folder: str
    # True where the SMTP server keeps no copy in Sent itself (most plain SMTP relays); Gmail
    # and Microsoft 365 file what they relay, so their default is False.
    append_to_sent: bool
    oauth_client_id: str | None
    oauth_tenant: str | None
    client_secret_ref: ClientSecretRef | None

    @property
    def ref(self) -> str:
        """`namespace/name`: what sealed credentials of this mailbox are bound to."""
        return f"{self.namespace}/{self.name}"

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def imap_login(self, credentials: PasswordCredentials) -> tuple[MailServer, str]:
        """The IMAP server and password of a password mailbox: the credentials' IMAP-specific
        login where it has one, else the shared one (the server's own username last)."""
        if self.imap is None:
            raise ValueError(f"mailbox {self.ref} has no IMAP server")
        server = MailServer(
            self.imap.host,
            self.imap.port,
            self.imap.security,
            credentials.imap_username or credentials.username or self.imap.username,
        )
        return server, credentials.imap_password or credentials.password


def _server(raw: Any, field: str, default_user: str, default_port: int) -> MailServer:
    if not isinstance(raw, dict) or not isinstance(raw.get("host"), str) or not raw["host"]:
        raise MailboxSettingsError(f"settings.{field}.host must be a host name")
    port = raw.get("port", default_port)
    security = raw.get("security", "starttls" if default_port == 587 else "tls")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise MailboxSettingsError(f"settings.{field}.port must be a port number")
    if security not in ("tls", "starttls"):
        raise MailboxSettingsError(f"settings.{field}.security must be tls or starttls")
    username = raw.get("username") or default_user
    if not isinstance(username, str):
        raise MailboxSettingsError(f"settings.{field}.username must be a string")
    return MailServer(raw["host"], port, cast(Security, security), username)


def profile_from_row(row: MailboxRow) -> MailboxProfile:
    s = row.settings
    if row.provider not in ("gmail", "microsoft365", "smtp"):
        raise MailboxSettingsError(f"provider {row.provider!r} is not one the worker knows")
    if not row.address or "@" not in row.address:
        raise MailboxSettingsError("the mailbox has no address")
    transport = s.get("transport", "smtp" if row.provider == "smtp" else "api")
    if transport not in ("api", "smtp") or (row.provider == "smtp" and transport != "smtp"):
        raise MailboxSettingsError(f"settings.transport {transport!r} does not fit {row.provider}")
    smtp: MailServer | None = None
    imap: MailServer | None = None
    if transport == "smtp":
        default = DEFAULT_OAUTH_SMTP.get(row.provider)
        raw_smtp = s.get("smtp") or ({"host": default[0], "port": default[1]} if default else None)
        smtp = _server(raw_smtp, "smtp", row.address, 587)
    if row.provider == "smtp":
        imap = _server(s.get("imap"), "imap", row.address, 993)
    raw_imap = s.get("imap")
    if not isinstance(raw_imap, dict):
        raw_imap = {}
    sent_folder = raw_imap.get("sentFolder", DEFAULT_SENT_FOLDER)
    append = s.get("appendToSent", row.provider == "smtp")
    oauth = s.get("oauth") or {}
    if (
        not isinstance(oauth, dict)
        or not isinstance(sent_folder, str)
        or not isinstance(append, bool)
    ):
        raise MailboxSettingsError("settings.oauth, imap.sentFolder or appendToSent is malformed")
    ref = oauth.get("clientSecretRef")
    secret_ref = (
        ClientSecretRef(str(ref["name"]), str(ref.get("key", "clientSecret")))
        if isinstance(ref, dict) and ref.get("name")
        else None
    )
    if row.provider != "smtp" and (not oauth.get("clientId") or secret_ref is None):
        raise MailboxSettingsError(
            f"a {row.provider} mailbox needs settings.oauth.clientId and clientSecretRef"
        )
    display = s.get("displayName")
    return MailboxProfile(
        id=row.id,
        namespace=row.namespace,
        name=row.name,
        provider=cast(Literal["gmail", "microsoft365", "smtp"], row.provider),
        address=row.address,
        display_name=display if isinstance(display, str) else None,
        transport=cast(Transport, transport),
        smtp=smtp,
        imap=imap,
        sent_folder=sent_folder,
        append_to_sent=append,
        oauth_client_id=str(oauth["clientId"]) if oauth.get("clientId") else None,
        oauth_tenant=str(oauth["tenant"]) if oauth.get("tenant") else None,
        client_secret_ref=secret_ref,
    )
