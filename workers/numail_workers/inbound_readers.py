"""Reading a mailbox's new inbound mail: IMAP INBOX, the Gmail API, Microsoft Graph.

A reader belongs to one mailbox and one poll: it is opened with that mailbox's credentials just
before reading and closed (dropping them) right after, like a send session. It yields each new
message's raw bytes, oldest first, and says where the next poll must start:

* IMAP: UID SEARCH above the last UID seen, under the same UIDVALIDITY (RFC 3501 section
  2.3.1.1: a new UIDVALIDITY means every UID may have changed, so the cursor starts over).
  The mailbox is EXAMINEd (read-only) and bodies are fetched with BODY.PEEK, so reading never
  marks a message as seen: the person who owns the mailbox still finds replies unread.
* Gmail: `users.history.list` from the stored historyId; with no history id, or one Gmail no
  longer keeps (it answers 404), `users.messages.list` with `in:inbox after:<time>`.
* Graph: the inbox's delta link; with none, or one Graph expired (410), a new delta round
  filtered on receivedDateTime.

With no cursor, reading starts `lookback` ago rather than at the beginning of the mailbox, so a
detector started late still sees recent replies without reading years of mail. Every failure
on the provider's side becomes PollUnavailable, whose message holds no provider text (a server
may echo what it was sent): the caller keeps its cursor and tries again later.
"""

from __future__ import annotations

import base64
import imaplib
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

from numail.db.replies import Cursor
from numail.providers.credentials import Credentials, PasswordCredentials
from numail.providers.smtp_imap import MailServer, tls_context
from numail_workers.mailboxes import MailboxProfile
from numail_workers.senders import SenderEndpoints
from numail_workers.senders.web import BearerSession, error_code

_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_STATUS_ITEM = re.compile(rb"\b(UIDVALIDITY|UIDNEXT) (\d+)")
_FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 section 2.2: printable, no colon


class PollUnavailable(Exception):
    """The provider could not be read now; the cursor stays where it was."""


@dataclass(frozen=True)
class InboundMessage:
    """One new message. `cursor`, when set, is where reading may resume once this message is
    recorded (IMAP, where each message moves the cursor)."""

    ref: str
    raw: bytes = field(repr=False)
    received_at: datetime | None
    cursor: Cursor | None = None


@dataclass(frozen=True)
class ReaderSettings:
    lookback: timedelta = timedelta(days=14)
    # Messages read per mailbox per poll: the rest wait for the next poll.
    limit: int = 200
    # Larger messages are read by their header only: enough to tell a reply, and a DSN is
    # never this large.
    max_message_bytes: int = 10 * 1024 * 1024


class InboxReader(Protocol):
    provider: str

    def messages(self, cursor: Cursor | None) -> Iterator[InboundMessage]:
        """New messages, oldest first. Raises PollUnavailable."""
        ...

    @property
    def next_cursor(self) -> Cursor | None:
        """Where the next poll starts, once messages() is exhausted; None until then."""
        ...

    @property
    def more(self) -> bool:
        """True when the limit left messages for the next poll."""
        ...

    def close(self) -> None: ...


# --- IMAP ------------------------------------------------------------------------------------


class ImapInbox:
    provider = "imap"

    def __init__(
        self,
        server: MailServer,
        password: str,
        context: ssl.SSLContext,
        timeout: float,
        settings: ReaderSettings,
    ) -> None:
        self._server = server
        self._password: str | None = password
        self._context = context
        self._timeout = timeout
        self._settings = settings
        self._client: imaplib.IMAP4 | None = None
        self._next: Cursor | None = None
        self._more = False

    @property
    def next_cursor(self) -> Cursor | None:
        return self._next

    @property
    def more(self) -> bool:
        return self._more

    def _connect(self) -> imaplib.IMAP4:
        s = self._server
        if self._password is None:
            raise PollUnavailable("the reader is closed")
        client: imaplib.IMAP4
        if s.security == "tls":
            client = imaplib.IMAP4_SSL(
                s.host, s.port, ssl_context=self._context, timeout=self._timeout
            )
        else:
            client = imaplib.IMAP4(s.host, s.port, timeout=self._timeout)
            if "STARTTLS" not in client.capabilities:
                client.shutdown()
                raise PollUnavailable(f"IMAP server {s} does not offer STARTTLS")
            client.starttls(ssl_context=self._context)
        try:
            client.login(s.username, self._password)
        except BaseException:
            client.shutdown()
            raise
        self._client = client
        return client

    def messages(self, cursor: Cursor | None) -> Iterator[InboundMessage]:
        try:
            yield from self._messages(cursor)
        except PollUnavailable:
            raise
        except (imaplib.IMAP4.error, OSError, ValueError) as err:
            raise PollUnavailable(
                f"IMAP server {self._server} could not be read ({type(err).__name__})"
            ) from None

    def _messages(self, cursor: Cursor | None) -> Iterator[InboundMessage]:
        client = self._connect()
        status, data = client.status("INBOX", "(UIDVALIDITY UIDNEXT)")
        if status != "OK" or not data or not isinstance(data[0], bytes):
            raise PollUnavailable(f"IMAP server {self._server} would not report INBOX's status")
        items = {k.decode(): int(v) for k, v in _STATUS_ITEM.findall(data[0])}
        validity = items.get("UIDVALIDITY")
        if validity is None:
            raise PollUnavailable(f"IMAP server {self._server} reported no UIDVALIDITY")
        status, _ = client.select("INBOX", readonly=True)
        if status != "OK":
            raise PollUnavailable(f"IMAP server {self._server} would not open INBOX")
        last = 0
        # Where reading ends when every UID found is read: with a cursor, the last one read.
        # Without one, everything below UIDNEXT that the SINCE search did not find is older
        # than the lookback: the cursor goes to UIDNEXT - 1, so the next poll's `UID n:*`
        # never reads the mailbox's history (it would, from a cursor left at 0).
        floor = 0
        if cursor is not None and cursor.uidvalidity == validity and cursor.last_uid is not None:
            last = cursor.last_uid
            status, data = client.uid("SEARCH", f"UID {last + 1}:*")
        else:
            floor = max(0, items.get("UIDNEXT", 1) - 1)
            since = datetime.now(UTC) - self._settings.lookback
            status, data = client.uid("SEARCH", "SINCE", since.strftime("%d-%b-%Y"))
        if status != "OK":
            raise PollUnavailable(f"IMAP server {self._server} refused the SEARCH")
        found = data[0].split() if data and isinstance(data[0], bytes) else []
        # `n:*` always matches the highest UID, even below n (RFC 3501 section 6.4.8).
        uids = sorted(u for u in (int(x) for x in found) if u > last)
        self._more = len(uids) > self._settings.limit
        uids = uids[: self._settings.limit]
        end = last if self._more else max(last, floor, *uids)
        self._next = Cursor(uidvalidity=validity, last_uid=last if uids else end)
        if not uids:
            return
        sizes = self._sizes(client, uids)
        for uid in uids:
            whole = sizes.get(uid, 0) <= self._settings.max_message_bytes
            raw, received = self._fetch(client, uid, whole)
            position = Cursor(uidvalidity=validity, last_uid=uid)
            self._next = position
            if raw is not None:
                yield InboundMessage(f"uid {uid}", raw, received, position)
        self._next = Cursor(uidvalidity=validity, last_uid=max(end, uids[-1]))

    @staticmethod
    def _sizes(client: imaplib.IMAP4, uids: list[int]) -> dict[int, int]:
        status, data = client.uid("FETCH", ",".join(map(str, uids)), "(RFC822.SIZE)")
        if status != "OK":
            raise PollUnavailable("the IMAP server refused FETCH RFC822.SIZE")
        sizes: dict[int, int] = {}
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if isinstance(line, bytes):
                uid, size = _UID.search(line), _SIZE.search(line)
                if uid and size:
                    sizes[int(uid.group(1))] = int(size.group(1))
        return sizes

    @staticmethod
    def _fetch(
        client: imaplib.IMAP4, uid: int, whole: bool
    ) -> tuple[bytes | None, datetime | None]:
        section = "BODY.PEEK[]" if whole else "BODY.PEEK[HEADER]"
        status, data = client.uid("FETCH", str(uid), f"(INTERNALDATE {section})")
        if status != "OK":
            raise PollUnavailable("the IMAP server refused FETCH")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                head = item[0]
                stamp = imaplib.Internaldate2tuple(head) if isinstance(head, bytes) else None
                received = (
                    datetime.fromtimestamp(time.mktime(stamp), UTC) if stamp is not None else None
                )
                return item[1], received
        return None, None  # expunged since the SEARCH

    def close(self) -> None:
        self._password = None
        client, self._client = self._client, None
        if client is not None:
            try:
                client.logout()
            except (imaplib.IMAP4.error, OSError):
                client.shutdown()


# --- Gmail -----------------------------------------------------------------------------------


def _json(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PollUnavailable(f"{what} answered with something else than a JSON object")
    return body


class GmailInbox:
    provider = "gmail"

    def __init__(
        self,
        api_url: str,
        token: str,
        ca_file: str | None,
        timeout: float,
        settings: ReaderSettings,
    ) -> None:
        self._base = api_url.rstrip("/") + "/gmail/v1/users/me"
        self._http = BearerSession(ca_file, timeout, token)
        self._settings = settings
        self._next: Cursor | None = None
        self._more = False

    @property
    def next_cursor(self) -> Cursor | None:
        return self._next

    @property
    def more(self) -> bool:
        return self._more

    def _get(self, path: str, params: dict[str, str]) -> requests.Response:
        try:
            return self._http.get(self._base + path, params=params)
        except requests.RequestException as err:
            raise PollUnavailable(f"Gmail API unreachable ({type(err).__name__})") from None

    def _ok(self, response: requests.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise PollUnavailable(
                f"Gmail API answered {response.status_code} ({error_code(response)}) to {what}"
            )
        return _json(response, f"Gmail API ({what})")

    def _history(self, start: str) -> tuple[list[str], str] | None:
        """Ids added to INBOX since `start`, and the mailbox's current history id; None when
        Gmail no longer has history that old (404)."""
        ids: list[str] = []
        params = {"startHistoryId": start, "historyTypes": "messageAdded", "labelId": "INBOX"}
        latest = start
        while True:
            response = self._get("/history", params)
            if response.status_code == 404:
                return None
            body = self._ok(response, "history.list")
            latest = str(body.get("historyId") or latest)
            for record in body.get("history") or []:
                for added in (record or {}).get("messagesAdded") or []:
                    message = (added or {}).get("message") or {}
                    labels = message.get("labelIds") or []
                    if message.get("id") and "INBOX" in labels and "DRAFT" not in labels:
                        ids.append(str(message["id"]))
            token = body.get("nextPageToken")
            if not token:
                return ids, latest
            params = {**params, "pageToken": str(token)}

    def _recent(self) -> tuple[list[str], str]:
        """Ids of INBOX messages of the lookback window, oldest first, and the history id to
        continue from. The history id is taken first, so nothing that arrives while listing
        is lost: it comes again through history, and recording it twice changes nothing."""
        latest = str(self._ok(self._get("/profile", {}), "getProfile").get("historyId") or "")
        if not latest:
            raise PollUnavailable("Gmail API answered getProfile without a historyId")
        since = int((datetime.now(UTC) - self._settings.lookback).timestamp())
        params = {"q": f"in:inbox after:{since}", "maxResults": "100"}
        ids: list[str] = []
        while True:
            body = self._ok(self._get("/messages", params), "messages.list")
            ids += [str(m["id"]) for m in body.get("messages") or [] if m.get("id")]
            token = body.get("nextPageToken")
            if not token:
                break
            params = {**params, "pageToken": str(token)}
        ids.reverse()  # Gmail lists newest first
        return ids, latest

    def messages(self, cursor: Cursor | None) -> Iterator[InboundMessage]:
        found = self._history(cursor.history_id) if cursor and cursor.history_id else None
        ids, latest = found if found is not None else self._recent()
        # No per-poll limit here: a history id can't stop halfway through what it lists. Only
        # ids are held, and a crash before the cursor is saved re-reads duplicates only.
        for gmail_id in dict.fromkeys(ids):
            message = self._message(gmail_id)
            if message is not None:
                yield message
        self._next = Cursor(history_id=latest)

    def _message(self, gmail_id: str) -> InboundMessage | None:
        """The message's bytes, or only its header when Gmail's sizeEstimate is above
        max_message_bytes: `format=metadata` first (all the header fields and the size),
        `format=raw` only for a message under the limit. None when it was deleted since."""
        response = self._get(f"/messages/{gmail_id}", {"format": "metadata"})
        if response.status_code == 404:
            return None
        meta = self._ok(response, "messages.get")
        received = _epoch_ms(meta.get("internalDate"))
        ref = f"gmail {gmail_id}"
        size = _int(meta.get("sizeEstimate"))
        if size is not None and size <= self._settings.max_message_bytes:
            response = self._get(f"/messages/{gmail_id}", {"format": "raw"})
            if response.status_code == 404:
                return None
            raw_text = self._ok(response, "messages.get").get("raw")
            if not isinstance(raw_text, str):
                return None
            raw = base64.urlsafe_b64decode(raw_text + "=" * (-len(raw_text) % 4))
            return InboundMessage(ref, raw, received)
        payload = meta.get("payload")
        fields = payload.get("headers") if isinstance(payload, dict) else None
        return InboundMessage(ref, _header_block(fields), received)

    def close(self) -> None:
        self._http.close()  # drops the token


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _header_block(fields: object) -> bytes:
    """A header-only message from an API's list of `{"name": ..., "value": ...}` header fields
    (Gmail's payload.headers, Graph's internetMessageHeaders), as IMAP's BODY[HEADER] is."""
    lines: list[str] = []
    for item in fields if isinstance(fields, list) else []:
        if not isinstance(item, dict):
            continue
        name, value = item.get("name"), item.get("value")
        if isinstance(name, str) and isinstance(value, str) and _FIELD_NAME.match(name):
            lines.append(f"{name}: {' '.join(value.splitlines())}\r\n")
    return ("".join(lines) + "\r\n").encode("utf-8", errors="replace")


def _epoch_ms(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(str(value)) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# --- Microsoft Graph -------------------------------------------------------------------------


class GraphInbox:
    provider = "graph"
    page_size = 50

    def __init__(
        self,
        graph_url: str,
        token: str,
        ca_file: str | None,
        timeout: float,
        settings: ReaderSettings,
    ) -> None:
        self._root = graph_url.rstrip("/")
        self._me = self._root + "/v1.0/me"
        self._http = BearerSession(ca_file, timeout, token)
        self._http.headers["Prefer"] = f"odata.maxpagesize={self.page_size}"
        self._settings = settings
        self._next: Cursor | None = None
        self._more = False

    @property
    def next_cursor(self) -> Cursor | None:
        return self._next

    @property
    def more(self) -> bool:
        return self._more

    def _ours(self, link: str) -> bool:
        """Only follow links to the configured Graph host: the bearer token goes with them."""
        mine, theirs = urlsplit(self._root), urlsplit(link)
        return (theirs.scheme, theirs.netloc) == (mine.scheme, mine.netloc)

    def _get(self, url: str, params: dict[str, str] | None = None) -> requests.Response:
        try:
            return self._http.get(url, params=params)
        except requests.RequestException as err:
            raise PollUnavailable(f"Graph unreachable ({type(err).__name__})") from None

    def _round(self, delta_link: str | None) -> tuple[list[tuple[str, str | None]], str] | None:
        """Messages created since `delta_link` (or in the lookback window without one) and
        the next delta link; None when Graph expired the link (410)."""
        url: str
        params: dict[str, str] | None
        if delta_link:
            url, params = delta_link, None
        else:
            since = (datetime.now(UTC) - self._settings.lookback).strftime("%Y-%m-%dT%H:%M:%SZ")
            url = f"{self._me}/mailFolders/inbox/messages/delta"
            params = {
                "changeType": "created",
                "$select": "id,receivedDateTime,internetMessageId",
                "$filter": f"receivedDateTime ge {since}",
            }
        found: list[tuple[str, str | None]] = []
        while True:
            if not self._ours(url):
                raise PollUnavailable("Graph returned a link to another host; not following it")
            response = self._get(url, params)
            if response.status_code == 410:
                return None
            if response.status_code != 200:
                raise PollUnavailable(
                    f"Graph answered {response.status_code} ({error_code(response)}) to delta"
                )
            body = _json(response, "Graph (delta)")
            for item in body.get("value") or []:
                if isinstance(item, dict) and item.get("id") and "@removed" not in item:
                    found.append((str(item["id"]), item.get("receivedDateTime")))
            next_link, delta = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
            if isinstance(delta, str):
                return found, delta
            if not isinstance(next_link, str):
                raise PollUnavailable("Graph ended a delta page without nextLink or deltaLink")
            url, params = next_link, None

    def messages(self, cursor: Cursor | None) -> Iterator[InboundMessage]:
        stored = cursor.delta_link if cursor else None
        if stored and not self._ours(stored):
            stored = None  # configured for another Graph host since: start over
        result = self._round(stored) if stored else None
        if result is None:
            result = self._round(None)
            if result is None:
                raise PollUnavailable("Graph refused a new delta round (410)")
        items, delta = result
        # As for Gmail, no per-poll limit: a delta link can't stop halfway through a round.
        for graph_id, received in dict.fromkeys(items):
            raw = self._mime(graph_id)
            if raw is not None:
                yield InboundMessage(f"graph {graph_id[:16]}", raw, _iso(received))
        self._next = Cursor(delta_link=delta)

    def _mime(self, graph_id: str) -> bytes | None:
        """The message's MIME content, streamed and never more than max_message_bytes of it;
        above that, only its header (`internetMessageHeaders`), as IMAP reads a large message.
        Graph's v1.0 message resource has no size property, so the cap is applied while
        reading. None when the message was deleted since the delta listed it."""
        url = f"{self._me}/messages/{graph_id}/$value"
        try:
            with self._http.get(url, stream=True) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise PollUnavailable(
                        f"Graph answered {response.status_code} ({error_code(response)}) to $value"
                    )
                limit = self._settings.max_message_bytes
                data = bytearray()
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    data += chunk
                    if len(data) > limit:
                        break
                else:
                    return bytes(data)
        except requests.RequestException as err:
            raise PollUnavailable(f"Graph unreachable ({type(err).__name__})") from None
        response = self._get(
            f"{self._me}/messages/{graph_id}", {"$select": "internetMessageHeaders"}
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PollUnavailable(
                f"Graph answered {response.status_code} ({error_code(response)}) to "
                "internetMessageHeaders"
            )
        return _header_block(_json(response, "Graph (message)").get("internetMessageHeaders"))

    def close(self) -> None:
        self._http.close()  # drops the token


def _iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# --- opening ---------------------------------------------------------------------------------


def open_reader(
    endpoints: SenderEndpoints,
    settings: ReaderSettings,
    mailbox: MailboxProfile,
    credentials: Credentials,
    client_secret: str | None,
) -> InboxReader:
    """The reader for this mailbox's provider. Gmail and Microsoft 365 mailboxes are read
    through their APIs whatever transport they send with: the grant holds gmail.readonly or
    Mail.Read for exactly this."""
    p = endpoints.providers
    if mailbox.provider == "smtp":
        if not isinstance(credentials, PasswordCredentials) or mailbox.imap is None:
            raise ValueError(f"mailbox {mailbox.ref}: reading needs an IMAP server and a password")
        server, password = mailbox.imap_login(credentials)
        return ImapInbox(server, password, tls_context(p.mail_ca_file), p.timeout, settings)
    if client_secret is None:
        raise ValueError(f"mailbox {mailbox.ref}: reading needs the OAuth client secret")
    if mailbox.provider == "gmail":
        from numail_workers.senders.gmail import gmail_access_token

        token = gmail_access_token(endpoints, mailbox, credentials, client_secret)
        return GmailInbox(endpoints.gmail_api_url, token, p.https_ca_file, p.timeout, settings)
    from numail_workers.senders.graph import graph_access_token

    token = graph_access_token(endpoints, mailbox, credentials, client_secret)
    return GraphInbox(p.graph_url, token, p.https_ca_file, p.timeout, settings)
