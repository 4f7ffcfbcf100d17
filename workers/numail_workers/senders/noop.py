"""A sender that sends nothing: bench/send.py measures the engine itself with it."""

from __future__ import annotations

from numail.providers.credentials import Credentials
from numail_workers.mailboxes import MailboxProfile
from numail_workers.message import OutgoingMessage
from numail_workers.senders import SendResult

_SENT = SendResult("sent")


class NoopSession:
    def send(self, message: OutgoingMessage) -> SendResult:
        return _SENT

    def was_sent(self, message_id: str) -> bool:
        return False

    def close(self) -> None:
        pass


def open_noop_session(
    mailbox: MailboxProfile, credentials: Credentials, client_secret: str | None
) -> NoopSession:
    return NoopSession()
