"""Gmail API: `users.messages.send` with the raw message, `users.messages.list` with
`q=rfc822msgid:` to settle. Gmail files what it sends in Sent itself, and keeps our Message-ID."""

from __future__ import annotations

import base64

import requests

from numail.providers.credentials import Credentials, RefreshTokenCredentials
from numail_workers.failpoints import failpoint
from numail_workers.mailboxes import MailboxProfile
from numail_workers.message import OutgoingMessage
from numail_workers.senders import SenderEndpoints, SendResult, SettleUnavailable
from numail_workers.senders.web import BearerSession, error_code, failure_kind


def gmail_access_token(
    endpoints: SenderEndpoints,
    mailbox: MailboxProfile,
    credentials: Credentials,
    client_secret: str,
) -> str:
    """Refresh the grant for an access token (gmail.send and gmail.readonly)."""
    from numail.providers.google import GoogleOAuth

    if not isinstance(credentials, RefreshTokenCredentials) or not mailbox.oauth_client_id:
        raise ValueError(f"mailbox {mailbox.ref}: Gmail needs a refresh token and a client id")
    p = endpoints.providers
    oauth = GoogleOAuth(
        p.google_token_uri, p.google_revoke_uri, ca_file=p.https_ca_file, timeout=p.timeout
    )
    return oauth.refresh(
        mailbox.oauth_client_id, client_secret, credentials.refresh_token
    ).access_token


class GmailSession:
    def __init__(self, api_url: str, token: str, ca_file: str | None, timeout: float) -> None:
        self._base = api_url.rstrip("/") + "/gmail/v1/users/me/messages"
        self._http = BearerSession(ca_file, timeout, token)

    def send(self, message: OutgoingMessage) -> SendResult:
        raw = base64.urlsafe_b64encode(message.raw).decode()
        try:
            response = self._http.post(self._base + "/send", json={"raw": raw})
        except requests.RequestException as err:
            kind = failure_kind(err)
            return SendResult(kind, f"Gmail API: {type(err).__name__}")
        status = response.status_code
        if status == 200:
            try:
                provider_id = str(response.json()["id"])
            except (ValueError, KeyError, TypeError):
                provider_id = None
            failpoint("send.after-data")
            return SendResult("sent", "Gmail accepted the message", status, provider_id)
        code = error_code(response)
        detail = f"Gmail API answered {status} ({code})"
        if status in (401, 403, 429):
            # An expired token, a rate limit: Gmail decided before sending anything.
            return SendResult("transient", detail, status)
        if status >= 500:
            return SendResult("unknown", detail, status)
        return SendResult("permanent", detail, status)

    def was_sent(self, message_id: str) -> bool:
        try:
            response = self._http.get(
                self._base, params={"q": f"rfc822msgid:{message_id.strip('<>')}", "maxResults": "1"}
            )
        except requests.RequestException as err:
            raise SettleUnavailable(f"Gmail API unreachable ({type(err).__name__})") from None
        if response.status_code != 200:
            raise SettleUnavailable(
                f"Gmail API answered {response.status_code} ({error_code(response)})"
            )
        try:
            return bool(response.json().get("messages"))
        except (ValueError, AttributeError):
            raise SettleUnavailable("Gmail API answered with something else than JSON") from None

    def close(self) -> None:
        self._http.close()  # drops the token


def open_gmail_session(
    endpoints: SenderEndpoints,
    mailbox: MailboxProfile,
    credentials: Credentials,
    client_secret: str | None,
    token: str | None = None,
) -> GmailSession:
    if token is None:
        if client_secret is None:
            raise ValueError(f"mailbox {mailbox.ref}: Gmail needs the OAuth client secret")
        token = gmail_access_token(endpoints, mailbox, credentials, client_secret)
    p = endpoints.providers
    return GmailSession(endpoints.gmail_api_url, token, p.https_ca_file, p.timeout)
