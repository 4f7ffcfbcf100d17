"""Verify and revoke one mailbox's credentials, whichever provider it uses; one entry point for
the operator (and later the workers), so each provider is spoken to in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from numail.providers.base import MalformedCredentials, ProviderEndpoints, Revocation
from numail.providers.credentials import (
    Credentials,
    PasswordCredentials,
    ProviderName,
    RefreshTokenCredentials,
)
from numail.providers.google import GoogleOAuth
from numail.providers.microsoft import MicrosoftOAuth
from numail.providers.smtp_imap import MailServer, tls_context, verify_imap, verify_smtp

DEFAULT_TENANT = "common"


@dataclass(frozen=True)
class OAuthClient:
    """The OAuth client a grant was made with; the secret comes from a Secret, never the spec."""

    client_id: str
    client_secret: str = field(repr=False)
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True)
class MailboxTarget:
    """What the spec says about where the mailbox lives. Logins in the credentials document
    override the usernames here, which default to the mailbox's address."""

    provider: ProviderName
    smtp: MailServer | None = None
    imap: MailServer | None = None
    oauth: OAuthClient | None = None


class ProviderClients:
    """Clients for every provider, built once from the endpoints in the operator's settings."""

    def __init__(self, endpoints: ProviderEndpoints) -> None:
        self.endpoints = endpoints
        self.google = GoogleOAuth(
            endpoints.google_token_uri,
            endpoints.google_revoke_uri,
            ca_file=endpoints.https_ca_file,
            timeout=endpoints.timeout,
        )
        self.microsoft = MicrosoftOAuth(
            endpoints.microsoft_authority_host,
            endpoints.graph_url,
            ca_file=endpoints.https_ca_file,
            timeout=endpoints.timeout,
        )

    def verify(self, target: MailboxTarget, credentials: Credentials) -> str:
        """Log in as the workers will, without sending; return what was checked, for people.

        Raises a ProviderError naming the reason.
        """
        if target.provider == "smtp":
            smtp, imap, creds = _password_target(target, credentials)
            context = tls_context(self.endpoints.mail_ca_file)
            smtp_server = _with_login(smtp, creds.username)
            imap_server = _with_login(imap, creds.imap_username or creds.username)
            verify_smtp(
                smtp_server, creds.password, context=context, timeout=self.endpoints.timeout
            )
            verify_imap(
                imap_server,
                creds.imap_password or creds.password,
                context=context,
                timeout=self.endpoints.timeout,
            )
            return (
                f"SMTP login at {smtp_server} and IMAP login with INBOX at {imap_server} succeeded"
            )
        oauth, token = _oauth_target(target, credentials)
        if target.provider == "gmail":
            grant = self.google.verify(oauth.client_id, oauth.client_secret, token)
        else:
            grant = self.microsoft.verify(oauth.tenant, oauth.client_id, oauth.client_secret, token)
        return (
            f"refreshed an access token; the grant holds exactly {', '.join(sorted(grant.scopes))}"
        )

    def revoke(self, target: MailboxTarget, credentials: Credentials) -> Revocation:
        """End the grant at the provider. A password can't be revoked from here."""
        if target.provider == "smtp":
            return Revocation(
                "not-applicable",
                "an SMTP password can't be revoked by the operator; change or delete the app "
                "password at the mail provider if it should stop working",
            )
        oauth, token = _oauth_target(target, credentials)
        if target.provider == "gmail":
            return self.google.revoke(token)
        return self.microsoft.revoke(oauth.tenant, oauth.client_id, oauth.client_secret, token)


def _with_login(server: MailServer, username: str | None) -> MailServer:
    if not username:
        return server
    return MailServer(server.host, server.port, server.security, username)


def _password_target(
    target: MailboxTarget, credentials: Credentials
) -> tuple[MailServer, MailServer, PasswordCredentials]:
    if not isinstance(credentials, PasswordCredentials):
        raise MalformedCredentials("provider smtp takes a password, not a refresh token")
    if target.smtp is None or target.imap is None:
        raise MalformedCredentials("provider smtp needs spec.smtp and spec.imap")
    return target.smtp, target.imap, credentials


def _oauth_target(target: MailboxTarget, credentials: Credentials) -> tuple[OAuthClient, str]:
    if not isinstance(credentials, RefreshTokenCredentials):
        raise MalformedCredentials(f"provider {target.provider} takes a refresh token")
    if target.oauth is None:
        raise MalformedCredentials(f"provider {target.provider} needs spec.oauth")
    return target.oauth, credentials.refresh_token
