"""SMTP and IMAP logins for provider smtp: connect over TLS or STARTTLS, authenticate, and leave
without sending or changing anything."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
from dataclasses import dataclass
from typing import Literal

from numail import redact
from numail.providers.base import (
    AuthFailed,
    ProtocolError,
    ProviderError,
    TLSFailed,
    Unreachable,
)

Security = Literal["tls", "starttls"]


@dataclass(frozen=True)
class MailServer:
    """One server and the login to use on it."""

    host: str
    port: int
    security: Security
    username: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.security})"


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The system's trust store, plus `ca_file` if given; hostnames are always checked.

    There is no switch to turn verification off: a mailbox behind a self-signed certificate
    needs its CA in NUMAIL_MAIL_CA_FILE.
    """
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def verify_smtp(
    server: MailServer, password: str, *, context: ssl.SSLContext, timeout: float = 10.0
) -> None:
    """EHLO, TLS, AUTH and QUIT: no MAIL FROM, so nothing can be sent."""
    redact.register(password)
    phase = "connect"
    try:
        client: smtplib.SMTP
        if server.security == "tls":
            client = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(server.host, server.port, timeout=timeout)
        try:
            if server.security == "starttls":
                phase = "starttls"
                client.ehlo()
                if not client.has_extn("starttls"):
                    raise TLSFailed(
                        f"SMTP server {server} does not offer STARTTLS; the workers never send "
                        "a password in clear: use security tls, or a server that offers it"
                    )
                client.starttls(context=context)
            phase = "auth"
            client.ehlo()
            client.login(server.username, password)
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    except ProviderError:
        raise
    except smtplib.SMTPAuthenticationError as err:
        raise AuthFailed(
            f"SMTP server {server} refused the login (code {err.smtp_code}): check the username "
            "and the password or app password"
        ) from None
    except smtplib.SMTPNotSupportedError:
        raise ProtocolError(
            f"SMTP server {server} offers no AUTH method this client speaks (PLAIN, LOGIN, "
            "CRAM-MD5)"
        ) from None
    except smtplib.SMTPException as err:
        raise _mail_error(err, "SMTP", server, phase) from None
    except OSError as err:
        raise _mail_error(err, "SMTP", server, phase) from None


def verify_imap(
    server: MailServer, password: str, *, context: ssl.SSLContext, timeout: float = 10.0
) -> None:
    """LOGIN, then SELECT INBOX read-only, then LOGOUT: the reply detector's first steps."""
    redact.register(password)
    phase = "connect"
    try:
        client: imaplib.IMAP4
        if server.security == "tls":
            client = imaplib.IMAP4_SSL(
                server.host, server.port, ssl_context=context, timeout=timeout
            )
        else:
            client = imaplib.IMAP4(server.host, server.port, timeout=timeout)
        try:
            if server.security == "starttls":
                phase = "starttls"
                if "STARTTLS" not in client.capabilities:
                    raise TLSFailed(
                        f"IMAP server {server} does not offer STARTTLS; use security tls, or a "
                        "server that offers it"
                    )
                client.starttls(ssl_context=context)
            phase = "auth"
            client.login(server.username, password)
            phase = "select"
            status, _ = client.select("INBOX", readonly=True)
            if status != "OK":
                raise ProtocolError(f"IMAP server {server} would not open INBOX")
        finally:
            try:
                client.logout()
            except (imaplib.IMAP4.error, OSError):
                client.shutdown()
    except ProviderError:
        raise
    except imaplib.IMAP4.error as err:
        if phase == "auth" and not isinstance(err, imaplib.IMAP4.abort):
            raise AuthFailed(
                f"IMAP server {server} refused the login: check the username and the password "
                "or app password (imapUsername and imapPassword if they differ from SMTP's)"
            ) from None
        raise _mail_error(err, "IMAP", server, phase) from None
    except OSError as err:
        raise _mail_error(err, "IMAP", server, phase) from None


def _mail_error(err: BaseException, protocol: str, server: MailServer, phase: str) -> ProviderError:
    """Name the failure by its kind only: a server's own text may echo what it was sent."""
    if isinstance(err, ssl.SSLCertVerificationError):
        why = err.verify_message or "not trusted"
        return TLSFailed(
            f"{protocol} server {server} presented a certificate that is not trusted ({why}); "
            "use a certificate from a public CA, or add its CA to NUMAIL_MAIL_CA_FILE"
        )
    if isinstance(err, ssl.SSLError):
        return TLSFailed(
            f"the TLS handshake with {protocol} server {server} failed ({err.reason or 'error'})"
        )
    if isinstance(err, socket.gaierror):
        return Unreachable(f"{protocol} server host {server.host!r} does not resolve")
    if isinstance(err, TimeoutError | socket.timeout):
        return Unreachable(f"{protocol} server {server} did not answer in time ({phase})")
    if isinstance(err, ConnectionRefusedError):
        return Unreachable(f"{protocol} server {server} refused the connection")
    if isinstance(err, OSError):
        return Unreachable(
            f"{protocol} server {server} failed during {phase} ({type(err).__name__})"
        )
    if isinstance(err, smtplib.SMTPServerDisconnected | imaplib.IMAP4.abort):
        return Unreachable(f"{protocol} server {server} closed the connection during {phase}")
    return ProtocolError(f"{protocol} server {server} answered unexpectedly during {phase}")
