"""SMTP and IMAP verification against aiosmtpd and Dovecot: logins over TLS and STARTTLS, and
each failure by its reason; nothing is ever sent."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from numail.providers.base import AuthFailed, ProviderEndpoints, TLSFailed, Unreachable
from numail.providers.credentials import PasswordCredentials
from numail.providers.mailbox import MailboxTarget, ProviderClients
from numail.providers.smtp_imap import MailServer, tls_context, verify_imap, verify_smtp
from tests.support.mail import DovecotServer, SmtpServer, start_dovecot
from tests.support.postgres import free_port
from tests.support.tls import ServingCert, make_self_signed_cert, make_serving_cert

USER, PASSWORD = "sales@client.example", "app-password-0451"


@dataclass
class Mail:
    cert: ServingCert
    context: ssl.SSLContext
    starttls: SmtpServer
    tls: SmtpServer
    untrusted: SmtpServer
    cleartext: SmtpServer
    dovecot: DovecotServer


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mail]:
    root = tmp_path_factory.mktemp("mail-tls")
    cert = make_serving_cert(root / "ca")
    self_signed = make_self_signed_cert(root / "self")
    passwords = {USER: PASSWORD, "imap-only": "imap-pass-77"}
    servers = [
        SmtpServer(cert, "starttls", passwords).start(),
        SmtpServer(cert, "tls", passwords).start(),
        SmtpServer(self_signed, "starttls", passwords).start(),
    ]
    servers.append(SmtpServer(cert, "starttls", passwords, offer_starttls=False).start())
    dovecot = start_dovecot(cert, passwords)
    try:
        yield Mail(
            cert=cert,
            context=tls_context(str(cert.ca)),
            starttls=servers[0],
            tls=servers[1],
            untrusted=servers[2],
            cleartext=servers[3],
            dovecot=dovecot,
        )
    finally:
        dovecot.stop()
        for server in servers:
            server.stop()


def smtp(server: SmtpServer, user: str = USER) -> MailServer:
    return MailServer(
        "127.0.0.1", server.port, "tls" if server.security == "tls" else "starttls", user
    )


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_smtp_login_succeeds_and_sends_nothing(mail: Mail, security: str) -> None:
    server = mail.starttls if security == "starttls" else mail.tls
    verify_smtp(smtp(server), PASSWORD, context=mail.context)
    assert server.attempts_by(USER)[-1] is True
    assert server.messages == []


def test_a_wrong_smtp_password_is_auth_failed(mail: Mail) -> None:
    with pytest.raises(AuthFailed) as err:
        verify_smtp(smtp(mail.starttls), "not-the-password", context=mail.context)
    assert "not-the-password" not in str(err.value) and "535" in str(err.value)
    assert not err.value.transient


def test_a_self_signed_smtp_certificate_is_refused(mail: Mail) -> None:
    with pytest.raises(TLSFailed) as err:
        verify_smtp(smtp(mail.untrusted), PASSWORD, context=mail.context)
    assert "self-signed" in str(err.value)
    assert mail.untrusted.attempts_by(USER) == [], "a password went to an untrusted server"


def test_a_server_without_starttls_never_gets_the_password(mail: Mail) -> None:
    with pytest.raises(TLSFailed) as err:
        verify_smtp(smtp(mail.cleartext), PASSWORD, context=mail.context)
    assert "STARTTLS" in str(err.value)
    assert mail.cleartext.attempts_by(USER) == []


def test_a_closed_smtp_port_is_unreachable(mail: Mail) -> None:
    server = MailServer("127.0.0.1", free_port(), "starttls", USER)
    with pytest.raises(Unreachable) as err:
        verify_smtp(server, PASSWORD, context=mail.context, timeout=2)
    assert err.value.transient


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_imap_login_and_select_inbox(mail: Mail, security: str) -> None:
    port = mail.dovecot.imaps_port if security == "tls" else mail.dovecot.imap_port
    verify_imap(MailServer("127.0.0.1", port, security, USER), PASSWORD, context=mail.context)  # type: ignore[arg-type]


def test_a_wrong_imap_password_is_auth_failed(mail: Mail) -> None:
    server = MailServer("127.0.0.1", mail.dovecot.imaps_port, "tls", USER)
    with pytest.raises(AuthFailed):
        verify_imap(server, "wrong-imap-pass", context=mail.context)


def test_an_imap_certificate_from_an_unknown_ca_is_refused(mail: Mail) -> None:
    server = MailServer("127.0.0.1", mail.dovecot.imaps_port, "tls", USER)
    with pytest.raises(TLSFailed):
        verify_imap(server, PASSWORD, context=tls_context())


def test_a_closed_imap_port_is_unreachable(mail: Mail) -> None:
    server = MailServer("127.0.0.1", free_port(), "tls", USER)
    with pytest.raises(Unreachable):
        verify_imap(server, PASSWORD, context=mail.context, timeout=2)


def test_imap_takes_its_own_login_when_given(mail: Mail) -> None:
    clients = ProviderClients(ProviderEndpoints(mail_ca_file=str(mail.cert.ca), timeout=5))
    target = MailboxTarget(
        "smtp",
        smtp=MailServer("127.0.0.1", mail.starttls.port, "starttls", "spec-user"),
        imap=MailServer("127.0.0.1", mail.dovecot.imaps_port, "tls", "spec-user"),
    )
    both = PasswordCredentials(
        password=PASSWORD, username=USER, imap_username="imap-only", imap_password="imap-pass-77"
    )
    summary = clients.verify(target, both)
    assert "SMTP" in summary and "IMAP" in summary
    # Without the IMAP pair, IMAP uses the SMTP login, which Dovecot knows too.
    clients.verify(target, PasswordCredentials(password=PASSWORD, username=USER))
    # And the spec's username when the credentials name none: unknown to both servers.
    with pytest.raises(AuthFailed):
        clients.verify(target, PasswordCredentials(password=PASSWORD))
