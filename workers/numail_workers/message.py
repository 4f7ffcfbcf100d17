"""The outgoing email: RFC 5322 bytes with the job's fixed Message-ID and a List-Unsubscribe.

The bytes are built on first use and kept, so a sender that never needs them (the no-op sender
of bench/send.py) pays nothing, and a sender that needs them twice (SMTP, then an APPEND to
Sent) builds them once.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from functools import cached_property
from urllib.parse import quote
from uuid import UUID

# CRLF line ends, as the wire and IMAP APPEND want; headers are folded only past SMTP's 998
# octets, so List-Unsubscribe (two URLs) reaches receivers on one line.
_POLICY = email.policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class OutgoingMessage:
    job_id: UUID
    message_id: str
    sender: str
    recipient: str = field(repr=False)
    subject: str = field(repr=False)
    body: str = field(repr=False)
    sender_name: str | None = None
    attempt: int = 1
    # An https one-click endpoint (RFC 8058) with {token} in it; mailto alone otherwise.
    unsubscribe_url: str | None = None

    @property
    def list_unsubscribe(self) -> str:
        """mailto: to the sending mailbox, whose replies the reply detector reads, and the
        one-click URL when the platform has one."""
        token = self.job_id.hex
        mailto = f"<mailto:{self.sender}?subject={quote('unsubscribe ' + token)}>"
        if self.unsubscribe_url:
            return f"{mailto}, <{self.unsubscribe_url.format(token=token)}>"
        return mailto

    @cached_property
    def raw(self) -> bytes:
        msg = EmailMessage(policy=_POLICY)
        msg["From"] = formataddr((self.sender_name or "", self.sender))
        msg["To"] = self.recipient
        msg["Subject"] = self.subject
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = self.message_id
        msg["List-Unsubscribe"] = self.list_unsubscribe
        if self.unsubscribe_url:
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(self.body)
        return msg.as_bytes()


def render(template: str, fields: dict[str, str | None]) -> str:
    """`{{first_name}}` and friends, nothing more: a template can't run code or read attributes."""
    out = template
    for name, value in fields.items():
        out = out.replace("{{" + name + "}}", value or "")
    return out
