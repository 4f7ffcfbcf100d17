"""Senders, one per provider, behind one small interface: open a session, send, settle.

A session belongs to one mailbox and one batch: it is opened with that mailbox's credentials
just before sending, and closed (dropping them) right after. `send` reports one of four
outcomes. The line between `transient` and `unknown` is the line the whole engine rests on:
`transient` means the provider certainly did not take the message (nothing, or a 4xx, before
the message was handed over), so it is safe to send again; `unknown` means it was handed over
and no answer came, so it must be settled by `was_sent` before anything else happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from numail.providers.base import ProviderEndpoints
from numail.providers.credentials import Credentials
from numail_workers.mailboxes import MailboxProfile
from numail_workers.message import OutgoingMessage

SendKind = Literal["sent", "transient", "permanent", "unknown"]
DETAIL_MAX = 500


@dataclass(frozen=True)
class SendResult:
    kind: SendKind
    detail: str = ""
    reply_code: int | None = None
    provider_message_id: str | None = None
    # A permanent failure that says the address does not exist (SMTP 5.1.x): suppress it.
    hard_bounce: bool = False


class SettleUnavailable(Exception):
    """The provider could not be asked whether a Message-ID was sent; ask again later."""


class MailboxSession(Protocol):
    def send(self, message: OutgoingMessage) -> SendResult: ...

    def was_sent(self, message_id: str) -> bool:
        """Whether the provider has a sent message with this Message-ID; raises
        SettleUnavailable when it can't be asked."""
        ...

    def close(self) -> None: ...


class SessionOpener(Protocol):
    def __call__(
        self, mailbox: MailboxProfile, credentials: Credentials, client_secret: str | None
    ) -> MailboxSession: ...


@dataclass(frozen=True)
class SenderEndpoints:
    """Where the providers are: the operator's ProviderEndpoints plus the two mail APIs."""

    providers: ProviderEndpoints = field(default_factory=ProviderEndpoints)
    gmail_api_url: str = "https://gmail.googleapis.com"
    local_hostname: str | None = None


def short(text: str) -> str:
    """A provider's reply, trimmed for storage; logged and stored only after redaction."""
    from numail.redact import redact

    cleaned = redact(" ".join(text.split()))
    return cleaned if len(cleaned) <= DETAIL_MAX else cleaned[: DETAIL_MAX - 3] + "..."


def open_provider_session(
    endpoints: SenderEndpoints,
    mailbox: MailboxProfile,
    credentials: Credentials,
    client_secret: str | None,
) -> MailboxSession:
    """The session for this mailbox's provider and transport. Imports a provider's module only
    when it is needed, so an SMTP-only worker never loads google-auth or msal."""
    if mailbox.transport == "smtp":
        from numail_workers.senders.smtp import open_smtp_session

        return open_smtp_session(endpoints, mailbox, credentials, client_secret)
    if mailbox.provider == "gmail":
        from numail_workers.senders.gmail import open_gmail_session

        return open_gmail_session(endpoints, mailbox, credentials, client_secret)
    from numail_workers.senders.graph import open_graph_session

    return open_graph_session(endpoints, mailbox, credentials, client_secret)
