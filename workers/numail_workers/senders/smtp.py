"""SMTP submission (STARTTLS or implicit TLS; AUTH with a password, or XOAUTH2 for Gmail and
Microsoft 365) with IMAP APPEND to Sent and IMAP `SEARCH HEADER Message-ID` to settle.

The transaction is driven command by command (MAIL, RCPT, DATA, then the message) rather than
with smtplib's sendmail, because the outcome depends on where a failure happens: anything up to
and including the reply to the DATA command means the server did not take the message
(`transient` for 4xx and dropped connections, `permanent` for 5xx); once the message itself
has been written, a dropped connection or a timeout means nobody knows (`unknown`).

One session holds one connection for one batch of one mailbox: connecting, TLS and AUTH are
paid once per batch, and the password is dropped when the session closes.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import imaplib
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from numail import redact
from numail.providers.credentials import Credentials, PasswordCredentials, RefreshTokenCredentials
from numail.providers.smtp_imap import MailServer, tls_context
from numail_workers.bounces import is_hard_bounce as is_hard_bounce
from numail_workers.failpoints import failpoint
from numail_workers.mailboxes import MailboxProfile
from numail_workers.message import OutgoingMessage
from numail_workers.senders import SenderEndpoints, SendResult, SettleUnavailable, short

# is_hard_bounce is re-exported: the send path and the reply detector share one rule.
log = logging.getLogger("numail.send.smtp")

_EOL = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


class Settler(Protocol):
    def was_sent(self, message_id: str) -> bool: ...

    def close(self) -> None: ...


def dot_stuffed(raw: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, leading dots doubled, then CRLF.CRLF."""
    data = _LEADING_DOT.sub(b"..", _EOL.sub(b"\r\n", raw))
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _refused(code: int, reply: bytes | str, phase: str) -> SendResult:
    text = _text(reply)
    detail = short(f"{code} {text}")
    if 400 <= code < 500:
        return SendResult("transient", f"{phase}: {detail}", code)
    return SendResult(
        "permanent", f"{phase}: {detail}", code, hard_bounce=is_hard_bounce(code, text)
    )


class ImapFolder:
    """One IMAP login, opened on first use: SEARCH in the Sent folder, APPEND to it."""

    def __init__(
        self,
        server: MailServer,
        password: str,
        folder: str,
        context: ssl.SSLContext,
        timeout: float,
    ) -> None:
        self._server = server
        self._password = password
        self._folder = folder
        self._context = context
        self._timeout = timeout
        self._client: imaplib.IMAP4 | None = None
        self._selected = False

    def _connect(self) -> imaplib.IMAP4:
        if self._client is None:
            s = self._server
            client: imaplib.IMAP4
            if s.security == "tls":
                client = imaplib.IMAP4_SSL(
                    s.host, s.port, ssl_context=self._context, timeout=self._timeout
                )
            else:
                client = imaplib.IMAP4(s.host, s.port, timeout=self._timeout)
                client.starttls(ssl_context=self._context)
            try:
                client.login(s.username, self._password)
            except BaseException:
                client.shutdown()
                raise
            self._client = client
        return self._client

    def _quoted_folder(self) -> str:
        return '"' + self._folder.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def was_sent(self, message_id: str) -> bool:
        try:
            client = self._connect()
            if not self._selected:
                status, _ = client.select(self._quoted_folder(), readonly=True)
                if status != "OK":
                    # A missing folder is not "not sent": the copy may be filed elsewhere.
                    raise SettleUnavailable(
                        f"IMAP server {self._server} has no folder {self._folder!r} to search; "
                        "set the mailbox's imap.sentFolder"
                    )
                self._selected = True
            quoted = '"' + message_id.replace("\\", "\\\\").replace('"', '\\"') + '"'
            status, data = client.search(None, "HEADER", "Message-ID", quoted)
            if status != "OK":
                raise SettleUnavailable(f"IMAP server {self._server} refused the SEARCH")
            return bool(data and data[0] and data[0].split())
        except SettleUnavailable:
            self.close()
            raise
        except (imaplib.IMAP4.error, OSError) as err:
            self.close()
            raise SettleUnavailable(
                f"IMAP server {self._server} could not be searched ({type(err).__name__})"
            ) from None

    def append(self, raw: bytes) -> None:
        client = self._connect()
        folder = self._quoted_folder()
        stamp = imaplib.Time2Internaldate(time.time())
        status, _ = client.append(folder, r"(\Seen)", stamp, raw)
        if status != "OK":
            client.create(folder)
            status, _ = client.append(folder, r"(\Seen)", stamp, raw)
            if status != "OK":
                raise imaplib.IMAP4.error(f"APPEND to {self._folder!r} refused")

    def close(self) -> None:
        client, self._client, self._selected = self._client, None, False
        if client is not None:
            try:
                client.logout()
            except (imaplib.IMAP4.error, OSError):
                client.shutdown()


Authenticate = Callable[[smtplib.SMTP], None]


class SmtpSession:
    def __init__(
        self,
        mailbox: MailboxProfile,
        server: MailServer,
        authenticate: Authenticate,
        settler: Settler,
        sent_copy: ImapFolder | None,
        *,
        context: ssl.SSLContext,
        timeout: float,
        local_hostname: str | None,
    ) -> None:
        self._mailbox = mailbox
        self._server = server
        self._authenticate: Authenticate | None = authenticate
        self._settler = settler
        self._sent_copy = sent_copy
        self._context = context
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        s = self._server
        smtp: smtplib.SMTP
        if s.security == "tls":
            smtp = smtplib.SMTP_SSL(
                s.host,
                s.port,
                local_hostname=self._local_hostname,
                timeout=self._timeout,
                context=self._context,
            )
        else:
            smtp = smtplib.SMTP(
                s.host, s.port, local_hostname=self._local_hostname, timeout=self._timeout
            )
        try:
            smtp.ehlo()
            if s.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
                smtp.starttls(context=self._context)
                smtp.ehlo()
            if self._authenticate is None:
                raise smtplib.SMTPException("session closed")
            self._authenticate(smtp)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def send(self, message: OutgoingMessage) -> SendResult:
        phase = "connect"
        try:
            if self._smtp is None:
                self._smtp = self._connect()
            smtp = self._smtp
            phase = "MAIL FROM"
            code, reply = smtp.mail(message.sender)
            if code != 250:
                return self._reset(_refused(code, reply, phase))
            phase = "RCPT TO"
            code, reply = smtp.rcpt(message.recipient)
            if code not in (250, 251):
                return self._reset(_refused(code, reply, phase))
            phase = "DATA"
            code, reply = smtp.docmd("DATA")
            if code != 354:
                return self._reset(_refused(code, reply, phase))
            # From here on the server has (part of) the message: a failure is `unknown`.
            phase = "message"
            smtp.send(dot_stuffed(message.raw))
            code, reply = smtp.getreply()
        except smtplib.SMTPAuthenticationError as err:
            self._drop()
            return SendResult("transient", f"AUTH refused ({err.smtp_code})", err.smtp_code)
        except (smtplib.SMTPException, OSError) as err:
            self._drop()
            what = f"{phase}: {type(err).__name__}"
            if phase == "message":
                return SendResult("unknown", f"no reply after the message was written ({what})")
            return SendResult("transient", f"failed before the message was handed over ({what})")
        if 200 <= code < 300:
            failpoint("send.after-data")
            self._file_copy(message)
            return SendResult("sent", short(f"{code} {_text(reply)}"), code)
        result = _refused(code, reply, "end of DATA")
        if code == 421:
            self._drop()
        return result

    def _reset(self, result: SendResult) -> SendResult:
        if result.reply_code == 421 or self._smtp is None:
            self._drop()
            return result
        try:
            self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()
        return result

    def _file_copy(self, message: OutgoingMessage) -> None:
        """APPEND the sent message to Sent where the server keeps no copy, so an unknown outcome
        of a later crash can be settled. A failure here never changes the outcome: the message
        was sent."""
        if self._sent_copy is None:
            return
        try:
            self._sent_copy.append(message.raw)
        except (imaplib.IMAP4.error, OSError) as err:
            log.warning(
                "sent %s from %s but could not file a copy in Sent (%s)",
                message.message_id,
                self._mailbox.ref,
                type(err).__name__,
            )
            self._sent_copy.close()
            return
        failpoint("send.after-append")

    def was_sent(self, message_id: str) -> bool:
        return self._settler.was_sent(message_id)

    def close(self) -> None:
        self._authenticate = None
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._drop()
        self._settler.close()
        if self._sent_copy is not None:
            self._sent_copy.close()


def password_auth(username: str, password: str) -> Authenticate:
    redact.register(password)

    def authenticate(smtp: smtplib.SMTP) -> None:
        smtp.login(username, password)

    return authenticate


def xoauth2_auth(username: str, access_token: str) -> Authenticate:
    """SASL XOAUTH2, as Gmail and Microsoft 365 take it: user, then the bearer token."""
    blob = f"user={username}\x01auth=Bearer {access_token}\x01\x01"
    redact.register(access_token, blob, base64.b64encode(blob.encode()).decode())

    def authenticate(smtp: smtplib.SMTP) -> None:
        answered = [False]

        def respond(challenge: bytes | None = None) -> str:
            # On failure the server sends an error challenge that takes an empty answer.
            if answered[0]:
                return ""
            answered[0] = True
            return blob

        smtp.auth("XOAUTH2", respond, initial_response_ok=True)

    return authenticate


def open_smtp_session(
    endpoints: SenderEndpoints,
    mailbox: MailboxProfile,
    credentials: Credentials,
    client_secret: str | None,
) -> SmtpSession:
    if mailbox.smtp is None:
        raise ValueError(f"mailbox {mailbox.ref} has no SMTP server")
    context = tls_context(endpoints.providers.mail_ca_file)
    timeout = endpoints.providers.timeout
    settler: Settler
    sent_copy: ImapFolder | None = None
    if isinstance(credentials, PasswordCredentials):
        smtp_user = credentials.username or mailbox.smtp.username
        authenticate = password_auth(smtp_user, credentials.password)
        if mailbox.imap is None:
            raise ValueError(f"mailbox {mailbox.ref} has no IMAP server to settle with")
        imap, imap_password = mailbox.imap_login(credentials)
        settler = ImapFolder(imap, imap_password, mailbox.sent_folder, context, timeout)
        if mailbox.append_to_sent:
            sent_copy = ImapFolder(imap, imap_password, mailbox.sent_folder, context, timeout)
    elif isinstance(credentials, RefreshTokenCredentials) and client_secret is not None:
        # Gmail and Microsoft 365 over SMTP: the same access token signs in to SMTP and settles
        # through the provider's API; both providers file what they relay in Sent.
        if mailbox.provider == "gmail":
            from numail_workers.senders.gmail import gmail_access_token, open_gmail_session

            token = gmail_access_token(endpoints, mailbox, credentials, client_secret)
            settler = open_gmail_session(endpoints, mailbox, credentials, client_secret, token)
        else:
            from numail_workers.senders.graph import graph_access_token, open_graph_session

            token = graph_access_token(endpoints, mailbox, credentials, client_secret)
            settler = open_graph_session(endpoints, mailbox, credentials, client_secret, token)
        authenticate = xoauth2_auth(mailbox.smtp.username, token)
    else:
        raise ValueError(f"mailbox {mailbox.ref}: SMTP needs a password or an OAuth grant")
    return SmtpSession(
        mailbox,
        mailbox.smtp,
        authenticate,
        settler,
        sent_copy,
        context=context,
        timeout=timeout,
        local_hostname=endpoints.local_hostname or _fqdn(),
    )


@functools.cache
def _fqdn() -> str:
    """The EHLO name; smtplib would look it up again (a DNS query) for every connection."""
    return socket.getfqdn()
