"""Microsoft Graph: create a draft from the MIME message, then send that draft, and settle with
`$filter=internetMessageId eq '...'` on Sent Items.

Creating a draft first is what makes an unknown outcome settleable: the draft carries our
Message-ID (Graph keeps it from the MIME headers, with List-Unsubscribe), and a retry after a
failed send finds that draft and sends it rather than making a second one.
"""

from __future__ import annotations

import base64
from typing import Any

import requests

from numail.providers.credentials import Credentials, RefreshTokenCredentials
from numail_workers.failpoints import failpoint
from numail_workers.mailboxes import MailboxProfile
from numail_workers.message import OutgoingMessage
from numail_workers.senders import SenderEndpoints, SendResult, SettleUnavailable
from numail_workers.senders.web import BearerSession, error_code, failure_kind


def graph_access_token(
    endpoints: SenderEndpoints,
    mailbox: MailboxProfile,
    credentials: Credentials,
    client_secret: str,
) -> str:
    """Refresh the grant for a Graph access token (Mail.Send and Mail.Read)."""
    from numail.providers.microsoft import MicrosoftOAuth

    if not isinstance(credentials, RefreshTokenCredentials) or not mailbox.oauth_client_id:
        raise ValueError(f"mailbox {mailbox.ref}: Graph needs a refresh token and a client id")
    p = endpoints.providers
    oauth = MicrosoftOAuth(
        p.microsoft_authority_host, p.graph_url, ca_file=p.https_ca_file, timeout=p.timeout
    )
    grant = oauth.refresh(
        mailbox.oauth_tenant or "common",
        mailbox.oauth_client_id,
        client_secret,
        credentials.refresh_token,
    )
    return grant.access_token


def _odata_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class GraphSession:
    def __init__(self, graph_url: str, token: str, ca_file: str | None, timeout: float) -> None:
        self._me = graph_url.rstrip("/") + "/v1.0/me"
        self._http = BearerSession(ca_file, timeout, token)

    def _find(self, folder: str, message_id: str) -> list[dict[str, Any]]:
        response = self._http.get(
            f"{self._me}/mailFolders/{folder}/messages",
            params={
                "$filter": f"internetMessageId eq {_odata_literal(message_id)}",
                "$select": "id,internetMessageId",
            },
        )
        if response.status_code != 200:
            raise SettleUnavailable(
                f"Graph answered {response.status_code} ({error_code(response)}) searching {folder}"
            )
        try:
            found = response.json().get("value") or []
        except (ValueError, AttributeError):
            raise SettleUnavailable("Graph answered with something else than JSON") from None
        return [m for m in found if isinstance(m, dict)]

    def send(self, message: OutgoingMessage) -> SendResult:
        draft_id: str | None = None
        try:
            if message.attempt > 1:
                # An earlier attempt may have left its draft: send that one.
                drafts = self._find("drafts", message.message_id)
                draft_id = str(drafts[0]["id"]) if drafts else None
            if draft_id is None:
                created = self._http.post(
                    f"{self._me}/messages",
                    data=base64.b64encode(message.raw),
                    headers={"Content-Type": "text/plain"},
                )
                if created.status_code != 201:
                    return self._refused(created, "creating the draft", before_send=True)
                draft_id = str(created.json()["id"])
        except SettleUnavailable as err:
            return SendResult("transient", f"Graph: {err}")
        except requests.RequestException as err:
            # Only a draft can have been made so far; the next attempt looks for it.
            return SendResult(
                "transient", f"Graph: creating the draft failed ({type(err).__name__})"
            )
        except (ValueError, KeyError, TypeError):
            return SendResult("transient", "Graph answered the draft creation without an id")
        try:
            sent = self._http.post(f"{self._me}/messages/{draft_id}/send")
        except requests.RequestException as err:
            kind = failure_kind(err)
            return SendResult(kind, f"Graph: sending the draft failed ({type(err).__name__})")
        if sent.status_code == 202:
            failpoint("send.after-data")
            return SendResult("sent", "Graph accepted the draft for sending", 202, draft_id)
        return self._refused(sent, "sending the draft", before_send=False)

    @staticmethod
    def _refused(response: requests.Response, what: str, *, before_send: bool) -> SendResult:
        status = response.status_code
        detail = f"Graph answered {status} ({error_code(response)}) {what}"
        if status in (401, 404, 429) or (before_send and status >= 500):
            return SendResult("transient", detail, status)
        if status >= 500:
            return SendResult("unknown", detail, status)
        return SendResult("permanent", detail, status)

    def was_sent(self, message_id: str) -> bool:
        try:
            return bool(self._find("sentitems", message_id))
        except requests.RequestException as err:
            raise SettleUnavailable(f"Graph unreachable ({type(err).__name__})") from None

    def close(self) -> None:
        self._http.close()  # drops the token


def open_graph_session(
    endpoints: SenderEndpoints,
    mailbox: MailboxProfile,
    credentials: Credentials,
    client_secret: str | None,
    token: str | None = None,
) -> GraphSession:
    if token is None:
        if client_secret is None:
            raise ValueError(f"mailbox {mailbox.ref}: Graph needs the OAuth client secret")
        token = graph_access_token(endpoints, mailbox, credentials, client_secret)
    p = endpoints.providers
    return GraphSession(p.graph_url, token, p.https_ca_file, p.timeout)
