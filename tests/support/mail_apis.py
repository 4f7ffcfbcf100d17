"""Local mail providers for the send engine, and a harness that runs real send workers on them.

* SmtpSink: aiosmtpd with STARTTLS or implicit TLS and AUTH (PLAIN, LOGIN, XOAUTH2) that counts
  every accepted message by Message-ID. With `sent_copy`, it files each accepted message in the
  sender's Sent folder of a real Dovecot (a Maildir delivery, before it answers 250), as Gmail
  and Microsoft 365 do for what they relay: the copy exists whenever the client may have seen
  the 250, which is what lets an unknown outcome be settled with IMAP SEARCH.
* GmailApi and GraphApi: the Gmail API (`users.messages.send` with `raw`, `users.messages.list`
  with `q=rfc822msgid:`) and Microsoft Graph (a draft from MIME, `send`, `$filter` on
  `internetMessageId`) in their wire formats, behind bearer tokens issued by the local OAuth
  servers of tests/support/oauth.py.
* TcpGate: a TCP forwarder that can be shut, so a provider becomes unreachable and comes back.
* SendWorld: a workspace in a real PostgreSQL (migrated, with a numail_worker login), sealed
  mailbox credentials laid out as Secret volumes, and `python -m numail_workers.send` processes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime
import itertools
import json
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServerProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from numail import crypto
from numail.api import DEK_SECRET
from numail.audit import hash_identifier
from numail.db import jobs as jobs_db
from numail.db import migrate
from numail.keys import KeyContext
from numail.keys.local import LocalKeyProvider, generate_keyring
from numail.providers.credentials import Credentials, canonical_document
from tests.support.oauth import GoogleOAuthServer, MicrosoftIdentityServer, ThreadedHttpsServer
from tests.support.postgres import free_port
from tests.support.tls import ServingCert

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
WORKER_ROLE_LOGIN = "numail_send_tests"
HASH_KEY = b"numail-send-tests-workspace-key!"


def message_id_of(raw: bytes) -> str | None:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = _MESSAGE_ID.search(head)
    return match.group(1).decode() if match else None


class MessageLog:
    """Accepted messages, counted by Message-ID; thread-safe, shared by every fake provider."""

    def __init__(self, keep: bool = True) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.messages: list[bytes] = []
        self._keep = keep

    def add(self, raw: bytes) -> str | None:
        mid = message_id_of(raw)
        with self._lock:
            self.counts[mid or "<missing>"] += 1
            if self._keep:
                self.messages.append(raw)
        return mid

    def count(self, message_id: str) -> int:
        with self._lock:
            return self.counts[message_id]

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def snapshot(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self.counts)

    def find(self, message_id: str) -> list[bytes]:
        with self._lock:
            return [m for m in self.messages if message_id_of(m) == message_id]


# --- a Sent folder written the way an MDA writes it ------------------------------------------


class MaildirSent:
    """Delivers into `<dovecot root>/mail/<user>/.Sent/new`, which Dovecot serves as "Sent".

    Files are written under tmp/ and renamed into new/, as Maildir requires, so Dovecot never
    sees half a message; they belong to the user Dovecot reads mail as (nobody when run as
    root).
    """

    def __init__(self, dovecot_root: Path) -> None:
        self.root = dovecot_root / "mail"
        self._seq = itertools.count()
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._owner = (nobody.pw_uid, nobody.pw_gid)

    def _dirs(self, user: str) -> Path:
        home = self.root / user
        sent = home / ".Sent"
        for folder in (home, sent):
            for sub in ("", "cur", "new", "tmp"):
                path = folder / sub
                if not path.exists():
                    path.mkdir(parents=True, exist_ok=True)
                    if self._owner:
                        os.chown(path, *self._owner)
        return sent

    def prepare(self, user: str) -> None:
        self._dirs(user)

    def deliver(self, user: str, raw: bytes) -> None:
        sent = self._dirs(user)
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self._seq)}.sink"
        tmp = sent / "tmp" / name
        tmp.write_bytes(raw)
        if self._owner:
            os.chown(tmp, *self._owner)
        tmp.rename(sent / "new" / name)


# --- SMTP ------------------------------------------------------------------------------------


@dataclass
class Reply:
    """A scripted answer at `phase` ("rcpt" or "data"), for `recipient` or anyone, `times` times."""

    phase: str
    reply: str
    recipient: str | None = None
    times: int = 1


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        scripted = self.sink._scripted("rcpt", address)
        if scripted:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        scripted = self.sink._scripted("data", recipient)
        if scripted:
            return scripted
        if self.sink.stall.is_set():
            # The message arrived but is never accepted: the client times out not knowing.
            while self.sink.stall.is_set():  # noqa: ASYNC110 - a threading.Event set by tests
                await asyncio.sleep(0.05)
            return "451 4.3.0 Not accepted"
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        user = session.auth_data if isinstance(session.auth_data, str) else None
        if self.sink.sent_copy is not None and user:
            self.sink.sent_copy.deliver(user, raw)
        self.sink.log.add(raw)
        return "250 2.0.0 OK queued"

    async def auth_XOAUTH2(self, server: SMTPServerProtocol, args: list[str]) -> AuthResult:
        if len(args) < 2:
            return AuthResult(success=False)
        try:
            fields = base64.b64decode(args[1]).decode().split("\x01")
        except ValueError:
            return AuthResult(success=False)
        parts = dict(f.split("=", 1) for f in fields if "=" in f)
        user, auth = parts.get("user", ""), parts.get("auth", "")
        token = auth.removeprefix("Bearer ")
        ok = bool(self.sink.oauth_tokens and token and self.sink.oauth_tokens(token))
        self.sink._record_auth(user, ok, "XOAUTH2")
        return AuthResult(success=ok, auth_data=user if ok else None)


class SmtpSink:
    def __init__(
        self,
        cert: ServingCert,
        *,
        security: str = "starttls",
        passwords: Mapping[str, str] | None = None,
        oauth_tokens: Callable[[str], bool] | None = None,
        sent_copy: MaildirSent | None = None,
        keep_messages: bool = True,
    ) -> None:
        import ssl

        self.port = free_port()
        self.passwords = dict(passwords or {})
        self.oauth_tokens = oauth_tokens
        self.sent_copy = sent_copy
        self.log = MessageLog(keep=keep_messages)
        self.auths: list[tuple[str, bool, str]] = []
        self.scripts: list[Reply] = []
        self.stall = threading.Event()  # set: messages are received but never accepted
        self._lock = threading.Lock()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert, cert.key)
        options: dict[str, Any] = {
            "authenticator": self._authenticate,
            "server_hostname": "mail.test",
            "auth_required": True,
        }
        if security == "tls":
            # TLS from the first byte; aiosmtpd can't tell and warns on every connection
            # ("Requiring AUTH while not requiring TLS"): filter it in the tests that use this.
            options.update(ssl_context=context, auth_require_tls=False)
        else:
            options.update(tls_context=context, require_starttls=True, auth_require_tls=True)
        self._controller = Controller(
            _SinkHandler(self), hostname="127.0.0.1", port=self.port, **options
        )

    def _record_auth(self, user: str, ok: bool, mechanism: str) -> None:
        with self._lock:
            self.auths.append((user, ok, mechanism))

    def _authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = data.login.decode()
        ok = self.passwords.get(login) == data.password.decode()
        self._record_auth(login, ok, mechanism)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def _scripted(self, phase: str, recipient: str | None) -> str | None:
        with self._lock:
            for script in self.scripts:
                if (
                    script.phase == phase
                    and script.times > 0
                    and script.recipient in (None, recipient)
                ):
                    script.times -= 1
                    return script.reply
        return None

    def script(self, phase: str, reply: str, recipient: str | None = None, times: int = 1) -> None:
        with self._lock:
            self.scripts.append(Reply(phase, reply, recipient, times))

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self.stall.clear()
        self._controller.stop()


# --- Gmail API and Microsoft Graph ---------------------------------------------------------


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else ""


def _google_error(status: int, message: str, reason: str) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, "errors": [{"reason": reason}]}},
        status=status,
    )


def _graph_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class _FakeApi:
    def __init__(self, cert: ServingCert, tokens: Callable[[str], bool]) -> None:
        self.tokens = tokens
        self.log = MessageLog()
        self.lock = threading.Lock()
        self.send_failures: list[int] = []  # statuses to answer the next sends with
        self.drop_after_accept = 0  # accept the next N sends, then drop the connection
        self.calls: list[str] = []
        self.app = web.Application()
        self._server = ThreadedHttpsServer(self.app, cert)

    @property
    def url(self) -> str:
        return self._server.base_url

    def start(self) -> _FakeApi:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def _authorized(self, request: web.Request, what: str) -> bool:
        with self.lock:
            self.calls.append(what)
        return self.tokens(_bearer(request))

    def _next_failure(self) -> int | None:
        with self.lock:
            return self.send_failures.pop(0) if self.send_failures else None

    def _should_drop(self) -> bool:
        with self.lock:
            if self.drop_after_accept > 0:
                self.drop_after_accept -= 1
                return True
        return False


def _drop(request: web.Request) -> web.Response:
    """Close the connection without an answer: the client can't know the outcome."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


class GmailApi(_FakeApi):
    """`POST /gmail/v1/users/me/messages/send` and `GET /gmail/v1/users/me/messages?q=`."""

    def __init__(self, cert: ServingCert, tokens: Callable[[str], bool]) -> None:
        super().__init__(cert, tokens)
        self.sent: dict[str, bytes] = {}
        self.app.router.add_post("/gmail/v1/users/me/messages/send", self._send)
        self.app.router.add_get("/gmail/v1/users/me/messages", self._list)
        self._init_inbox()

    async def _send(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "send"):
            return _google_error(
                401, "Request had invalid authentication credentials.", "authError"
            )
        failure = self._next_failure()
        if failure is not None:
            return _google_error(failure, "Backend Error", "backendError")
        body = await request.json()
        raw_text = body.get("raw") if isinstance(body, dict) else None
        if not isinstance(raw_text, str):
            return _google_error(
                400, "'raw' RFC822 payload message string is required.", "invalidArgument"
            )
        raw = base64.urlsafe_b64decode(raw_text + "=" * (-len(raw_text) % 4))
        gmail_id = secrets.token_hex(8)
        with self.lock:
            self.sent[gmail_id] = raw
        self.log.add(raw)
        if self._should_drop():
            return _drop(request)
        return web.json_response({"id": gmail_id, "threadId": gmail_id, "labelIds": ["SENT"]})

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "list"):
            return _google_error(
                401, "Request had invalid authentication credentials.", "authError"
            )
        query = request.query.get("q", "")
        if query and not query.startswith("rfc822msgid:"):
            return self._list_inbox(request)
        wanted = query.removeprefix("rfc822msgid:").strip().strip("<>")
        with self.lock:
            found = [
                {"id": gid, "threadId": gid}
                for gid, raw in self.sent.items()
                if query.startswith("rfc822msgid:")
                and (message_id_of(raw) or "").strip("<>") == wanted
            ]
        if not found:
            return web.json_response({"resultSizeEstimate": 0})
        return web.json_response({"messages": found, "resultSizeEstimate": len(found)})

    # --- inbound: users.getProfile, users.history.list, users.messages.get?format=raw, and
    # users.messages.list with `in:inbox after:<epoch seconds>` (the reply detector) -------

    def _init_inbox(self) -> None:
        self.inbox: dict[str, GmailInboxMessage] = {}
        self.history_id = 1000
        self.history_floor = 0  # startHistoryId below this answers 404, as expired history does
        self.page_size = 100  # at most this many per page, whatever maxResults asks
        self.inbox_failures: list[int] = []  # statuses for the next inbound calls
        self.get_formats: list[str] = []  # the `format` of each users.messages.get
        self.app.router.add_get("/gmail/v1/users/me/profile", self._profile)
        self.app.router.add_get("/gmail/v1/users/me/history", self._history)
        self.app.router.add_get("/gmail/v1/users/me/messages/{id}", self._get_message)

    def deliver(self, raw: bytes, labels: tuple[str, ...] = ("INBOX", "UNREAD")) -> str:
        """A message arrives: a new history record adds it with `labels`."""
        gmail_id = secrets.token_hex(8)
        with self.lock:
            self.history_id += 3  # Gmail's history ids grow, not one by one
            self.inbox[gmail_id] = GmailInboxMessage(
                gmail_id, raw, int(time.time() * 1000), list(labels), self.history_id
            )
        return gmail_id

    def expire_history(self) -> None:
        """Forget all history so far: an older startHistoryId now answers 404."""
        with self.lock:
            self.history_floor = self.history_id + 1

    def _inbound_failure(self) -> web.Response | None:
        with self.lock:
            status = self.inbox_failures.pop(0) if self.inbox_failures else None
        if status is None:
            return None
        return _google_error(status, "Backend Error", "backendError")

    def _page(self, request: web.Request, items: list[Any]) -> tuple[list[Any], str | None]:
        try:
            size = min(int(request.query.get("maxResults", "100")), self.page_size)
            start = int(request.query.get("pageToken") or 0)
        except ValueError:
            return [], None
        chunk = items[start : start + size]
        more = start + size < len(items)
        return chunk, str(start + size) if more else None

    async def _profile(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "profile"):
            return _google_error(
                401, "Request had invalid authentication credentials.", "authError"
            )
        failure = self._inbound_failure()
        if failure is not None:
            return failure
        with self.lock:
            return web.json_response(
                {
                    "emailAddress": "me@gmail.test",
                    "messagesTotal": len(self.inbox),
                    "threadsTotal": len(self.inbox),
                    "historyId": str(self.history_id),
                }
            )

    async def _history(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "history"):
            return _google_error(
                401, "Request had invalid authentication credentials.", "authError"
            )
        failure = self._inbound_failure()
        if failure is not None:
            return failure
        try:
            start = int(request.query["startHistoryId"])
        except (KeyError, ValueError):
            return _google_error(400, "Invalid startHistoryId", "invalidArgument")
        label = request.query.get("labelId")
        with self.lock:
            if start < self.history_floor:
                return _google_error(404, "Requested entity was not found.", "notFound")
            current = self.history_id
            records = [
                {
                    "id": str(m.history_id),
                    "messages": [{"id": m.id, "threadId": m.id}],
                    "messagesAdded": [
                        {"message": {"id": m.id, "threadId": m.id, "labelIds": m.labels}}
                    ],
                }
                for m in sorted(self.inbox.values(), key=lambda m: m.history_id)
                if m.history_id > start and (label is None or label in m.labels)
            ]
        chunk, token = self._page(request, records)
        body: dict[str, Any] = {"historyId": str(current)}
        if chunk:
            body["history"] = chunk
        if token:
            body["nextPageToken"] = token
        return web.json_response(body)

    def _list_inbox(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "")
        after = re.search(r"\bafter:(\d+)\b", query)
        since_ms = int(after.group(1)) * 1000 if after else 0
        in_inbox = "in:inbox" in query
        with self.lock:
            found = [
                {"id": m.id, "threadId": m.id}
                for m in sorted(self.inbox.values(), key=lambda m: -m.history_id)
                if m.internal_date >= since_ms and (not in_inbox or "INBOX" in m.labels)
            ]
        chunk, token = self._page(request, found)
        body: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if chunk:
            body["messages"] = chunk
        if token:
            body["nextPageToken"] = token
        return web.json_response(body)

    async def _get_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "get"):
            return _google_error(
                401, "Request had invalid authentication credentials.", "authError"
            )
        failure = self._inbound_failure()
        if failure is not None:
            return failure
        fmt = request.query.get("format", "full")
        with self.lock:
            m = self.inbox.get(request.match_info["id"])
            self.get_formats.append(fmt)
        if m is None:
            return _google_error(404, "Requested entity was not found.", "notFound")
        body: dict[str, Any] = {
            "id": m.id,
            "threadId": m.id,
            "labelIds": m.labels,
            "snippet": "",
            "sizeEstimate": len(m.raw),
            "historyId": str(m.history_id),
            "internalDate": str(m.internal_date),
        }
        if fmt == "raw":
            body["raw"] = base64.urlsafe_b64encode(m.raw).decode()
        elif fmt == "metadata":
            # The header fields only (all of them, or those named by metadataHeaders), in the
            # order of the message, values unfolded as Gmail returns them.
            wanted = {h.lower() for h in request.query.getall("metadataHeaders", [])}
            parsed = message_from_bytes(m.raw)
            body["payload"] = {
                "partId": "",
                "mimeType": parsed.get_content_type(),
                "filename": "",
                "headers": [
                    {"name": name, "value": " ".join(str(value).split())}
                    for name, value in parsed.items()
                    if not wanted or name.lower() in wanted
                ],
            }
        return web.json_response(body)


@dataclass
class GmailInboxMessage:
    id: str
    raw: bytes
    internal_date: int  # ms since the epoch, as Gmail's internalDate
    labels: list[str]
    history_id: int


@dataclass
class GraphMessage:
    id: str
    raw: bytes
    internet_message_id: str
    folder: str = "drafts"


_FILTER = re.compile(r"^internetMessageId eq '((?:[^']|'')*)'$")


class GraphApi(_FakeApi):
    """Drafts from MIME (`POST /v1.0/me/messages`, text/plain base64), `POST .../{id}/send`,
    and `GET /v1.0/me/mailFolders/{drafts|sentitems}/messages?$filter=internetMessageId eq`."""

    def __init__(self, cert: ServingCert, tokens: Callable[[str], bool]) -> None:
        super().__init__(cert, tokens)
        self.messages: dict[str, GraphMessage] = {}
        self.app.router.add_post("/v1.0/me/messages", self._create)
        self.app.router.add_post("/v1.0/me/messages/{id}/send", self._send)
        self.app.router.add_get("/v1.0/me/mailFolders/{folder}/messages", self._list)
        self._init_inbox()

    def _denied(self) -> web.Response:
        return _graph_error(401, "InvalidAuthenticationToken", "Access token validation failure.")

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "create"):
            return self._denied()
        if request.content_type != "text/plain":
            return _graph_error(400, "ErrorMimeContentInvalid", "MIME content expected")
        try:
            raw = base64.b64decode(await request.read(), validate=True)
        except ValueError:
            return _graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64")
        parsed = message_from_bytes(raw, policy=policy.default)
        mid = str(parsed.get("Message-ID", "")) or f"<{uuid.uuid4()}@graph.invalid>"
        graph_id = "AAMk" + secrets.token_urlsafe(12)
        with self.lock:
            self.messages[graph_id] = GraphMessage(graph_id, raw, mid)
        return web.json_response(
            {
                "id": graph_id,
                "internetMessageId": mid,
                "isDraft": True,
                "subject": parsed["Subject"],
            },
            status=201,
        )

    async def _send(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "send"):
            return self._denied()
        failure = self._next_failure()
        if failure is not None:
            return _graph_error(failure, "ErrorServerBusy", "The server is busy.")
        with self.lock:
            message = self.messages.get(request.match_info["id"])
            if message is None or message.folder != "drafts":
                return _graph_error(404, "ErrorItemNotFound", "The specified object was not found.")
            message.folder = "sentitems"
        self.log.add(message.raw)
        if self._should_drop():
            return _drop(request)
        return web.Response(status=202)

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "list"):
            return self._denied()
        folder = request.match_info["folder"].lower()
        match = _FILTER.match(request.query.get("$filter", ""))
        if match is None:
            return _graph_error(400, "BadRequest", "Invalid filter clause")
        wanted = match.group(1).replace("''", "'")
        with self.lock:
            value = [
                {"id": m.id, "internetMessageId": m.internet_message_id}
                for m in self.messages.values()
                if m.folder == folder and m.internet_message_id == wanted
            ]
        return web.json_response({"value": value})

    def in_folder(self, folder: str) -> list[GraphMessage]:
        with self.lock:
            return [m for m in self.messages.values() if m.folder == folder]

    # --- inbound: the inbox's messages delta (nextLink / deltaLink paging, 410 for an expired
    # link) and the MIME content at /me/messages/{id}/$value (the reply detector) ----------

    def _init_inbox(self) -> None:
        self.inbox: dict[str, GraphInboxMessage] = {}
        self.inbox_seq = 0
        self.delta_floor = 0  # delta tokens below this answer 410, as expired ones do
        self.inbox_failures: list[int] = []
        self.app.router.add_get("/v1.0/me/mailFolders/{folder}/messages/delta", self._delta)
        self.app.router.add_get("/v1.0/me/messages/{id}/$value", self._value)
        self.app.router.add_get("/v1.0/me/messages/{id}", self._get_message)

    def deliver(self, raw: bytes, received: datetime.datetime | None = None) -> str:
        parsed = message_from_bytes(raw, policy=policy.default)
        graph_id = "AAMkAGI2" + secrets.token_urlsafe(24)
        with self.lock:
            self.inbox_seq += 1
            self.inbox[graph_id] = GraphInboxMessage(
                graph_id,
                raw,
                str(parsed.get("Message-ID", "")),
                received or datetime.datetime.now(datetime.UTC),
                self.inbox_seq,
            )
        return graph_id

    def expire_delta_links(self) -> None:
        with self.lock:
            self.delta_floor = self.inbox_seq + 1

    @staticmethod
    def _token(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    @staticmethod
    def _untoken(text: str) -> dict[str, Any]:
        loaded = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(loaded, dict):
            raise ValueError("not a token")
        return loaded

    async def _delta(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "delta"):
            return self._denied()
        with self.lock:
            failure = self.inbox_failures.pop(0) if self.inbox_failures else None
        if failure is not None:
            return _graph_error(failure, "ErrorServerBusy", "The server is busy.")
        if request.match_info["folder"].lower() != "inbox":
            return _graph_error(400, "ErrorInvalidRequest", "Only the inbox is served here")
        prefer = re.search(r"odata\.maxpagesize=(\d+)", request.headers.get("Prefer", ""))
        page = int(prefer.group(1)) if prefer else 10
        query = request.query
        try:
            if "$skiptoken" in query:
                state = self._untoken(query["$skiptoken"])
            elif "$deltatoken" in query:
                state = {**self._untoken(query["$deltatoken"]), "offset": 0}
            else:
                since = 0.0
                match = re.match(r"^receivedDateTime (?:ge|gt) (\S+)$", query.get("$filter", ""))
                if query.get("$filter") and match is None:
                    return _graph_error(400, "BadRequest", "Unsupported filter for delta")
                if match:
                    stamp = match.group(1).replace("Z", "+00:00")
                    since = datetime.datetime.fromisoformat(stamp).timestamp()
                state = {"after": 0, "since": since, "offset": 0}
        except (ValueError, KeyError):
            return _graph_error(400, "BadRequest", "Invalid token")
        with self.lock:
            if state["after"] < self.delta_floor and "$deltatoken" in query:
                return _graph_error(410, "SyncStateNotFound", "The sync state is not found.")
            ordered = [
                m
                for m in sorted(self.inbox.values(), key=lambda m: m.seq)
                if m.seq > state["after"] and m.received.timestamp() >= state["since"]
            ]
            watermark = state.get("watermark", self.inbox_seq)
        ordered = [m for m in ordered if m.seq <= watermark]
        offset = int(state["offset"])
        chunk = ordered[offset : offset + page]
        base = f"{request.url.origin()}/v1.0/me/mailFolders/inbox/messages/delta"
        body: dict[str, Any] = {
            "@odata.context": f"{request.url.origin()}/v1.0/$metadata#Collection(message)",
            "value": [
                {
                    "@odata.type": "#microsoft.graph.message",
                    "@odata.etag": f'W/"{m.seq}"',
                    "id": m.id,
                    "receivedDateTime": m.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "internetMessageId": m.internet_message_id,
                }
                for m in chunk
            ],
        }
        if offset + page < len(ordered):
            body["@odata.nextLink"] = "{}?$skiptoken={}".format(
                base, self._token({**state, "offset": offset + page, "watermark": watermark})
            )
        else:
            body["@odata.deltaLink"] = "{}?$deltatoken={}".format(
                base, self._token({"after": watermark, "since": 0})
            )
        return web.json_response(body)

    async def _value(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "value"):
            return self._denied()
        with self.lock:
            m = self.inbox.get(request.match_info["id"])
        if m is None:
            return _graph_error(404, "ErrorItemNotFound", "The specified object was not found.")
        return web.Response(body=m.raw, content_type="text/plain")

    async def _get_message(self, request: web.Request) -> web.Response:
        """`GET /me/messages/{id}?$select=...`: the inbox message's properties; served are
        id, receivedDateTime, internetMessageId and internetMessageHeaders."""
        if not self._authorized(request, "message"):
            return self._denied()
        with self.lock:
            m = self.inbox.get(request.match_info["id"])
        if m is None:
            return _graph_error(404, "ErrorItemNotFound", "The specified object was not found.")
        selected = [x.strip() for x in request.query.get("$select", "").split(",") if x.strip()]
        parsed = message_from_bytes(m.raw)
        every: dict[str, Any] = {
            "receivedDateTime": m.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "internetMessageId": m.internet_message_id,
            "internetMessageHeaders": [
                {"name": name, "value": " ".join(str(value).split())}
                for name, value in parsed.items()
            ],
        }
        unknown = [x for x in selected if x not in every and x != "id"]
        if unknown:
            return _graph_error(
                400, "RequestBroker--ParseUri", f"Could not find a property named '{unknown[0]}'"
            )
        body: dict[str, Any] = {
            "@odata.context": f"{request.url.origin()}/v1.0/$metadata#users('me')/messages"
            f"({','.join(selected)})/$entity",
            "@odata.etag": f'W/"{m.seq}"',
            "id": m.id,
        }
        body.update({k: v for k, v in every.items() if not selected or k in selected})
        return web.json_response(body)


@dataclass
class GraphInboxMessage:
    id: str
    raw: bytes
    internet_message_id: str
    received: datetime.datetime
    seq: int


# --- a switch for "the provider is unreachable" -----------------------------------------------


class TcpGate:
    """Forwards 127.0.0.1:<port> to a server. `shut()` refuses new connections and cuts the open
    ones; `open()` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def shut(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone leaves the
            # socket listening until that thread lets go of it.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


# --- the harness -----------------------------------------------------------------------------


def ensure_worker_login(admin_dsn: str, login: str = WORKER_ROLE_LOGIN) -> None:
    """Roles are cluster-wide and outlive a test database: create the login once."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login]).fetchone():
            conn.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE numail_worker'.encode())


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics as {'name{labels}': value}."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric(self, sample: str) -> float:
        """One sample, or 0 while the worker is still starting (or gone)."""
        try:
            return self.metrics().get(sample, 0.0)
        except OSError:
            return 0.0

    def wait_for_metrics(self, timeout: float = 20) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.metrics()
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"worker {self.name} has no /metrics:\n{self.output()}"
                    ) from None
                time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> int:
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(10)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)


@dataclass
class SendWorld:
    """One workspace in a migrated database, its DEK under a local KEK, and its mailboxes."""

    root: Path
    admin_dsn: str
    worker_dsn: str
    workspace: str
    workspace_id: UUID
    keyring: Path
    dek: crypto.DataKey
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def namespace(self) -> str:
        return f"ws-{self.workspace}"

    @property
    def credentials_dir(self) -> Path:
        return self.root / "secrets"

    @classmethod
    def create(
        cls,
        admin_dsn: str,
        root: Path,
        *,
        workspace: str | None = None,
        workspace_id: UUID | None = None,
        keyring: Path | None = None,
    ) -> SendWorld:
        root.mkdir(parents=True, exist_ok=True)
        with psycopg.connect(admin_dsn) as conn:
            migrate(conn)
        ensure_worker_login(admin_dsn)
        workspace = workspace or f"send-{uuid.uuid4().hex[:8]}"
        workspace_id = workspace_id or uuid.uuid4()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO workspaces (id, name) VALUES (%s, %s)", [workspace_id, workspace]
            )
        if keyring is None:
            keyring = root / "keyring"
            keyring.write_text(generate_keyring())
        provider = LocalKeyProvider.from_file(keyring)
        dek = crypto.generate_dek(1)
        wrapped = provider.wrap(dek.key, KeyContext(str(workspace_id), workspace, 1))
        world = cls(
            root=root,
            admin_dsn=admin_dsn,
            worker_dsn=admin_dsn.replace("user=postgres", f"user={WORKER_ROLE_LOGIN}"),
            workspace=workspace,
            workspace_id=workspace_id,
            keyring=keyring,
            dek=dek,
        )
        world.write_secret(DEK_SECRET, {"v1": wrapped})
        return world

    def write_secret(self, name: str, data: Mapping[str, bytes]) -> None:
        folder = self.credentials_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (folder / key).write_bytes(value)

    def seal(self, mailbox: str, credentials: Credentials | bytes) -> bytes:
        plaintext = (
            credentials if isinstance(credentials, bytes) else canonical_document(credentials)
        )
        context = crypto.SealContext(
            str(self.workspace_id), f"{self.namespace}/{mailbox}", "mailbox-credentials"
        )
        return crypto.seal(self.dek, plaintext, context)

    def add_mailbox(
        self,
        name: str,
        address: str,
        credentials: Credentials | bytes,
        *,
        provider: str = "smtp",
        settings: Mapping[str, Any] | None = None,
        daily_cap: int = 10_000,
        client_secret: str | None = None,
    ) -> UUID:
        mailbox_id = uuid.uuid4()
        settings = dict(settings or {})
        if client_secret is not None:
            secret_name = f"oauth-client-{name}"
            self.write_secret(secret_name, {"clientSecret": client_secret.encode()})
            oauth = dict(settings.get("oauth") or {})
            oauth["clientSecretRef"] = {"name": secret_name, "key": "clientSecret"}
            settings["oauth"] = oauth
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO mailboxes (id, workspace_id, namespace, name, provider, state, "
                "daily_cap, address, settings) VALUES (%s, %s, %s, %s, %s, 'verified', %s, %s, %s)",
                [
                    mailbox_id,
                    self.workspace_id,
                    self.namespace,
                    name,
                    provider,
                    daily_cap,
                    address,
                    json.dumps(settings),
                ],
            )
        self.write_secret(f"numail-mailbox-{name}", {"sealed": self.seal(name, credentials)})
        return mailbox_id

    def add_leads(self, emails: Iterable[str]) -> list[UUID]:
        rows = [(uuid.uuid4(), e) for e in emails]
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO leads (id, workspace_id, email, email_hash, first_name) "
                "VALUES (%s, %s, %s, %s, 'Ada')",
                [(i, self.workspace_id, e, hash_identifier(HASH_KEY, e)) for i, e in rows],
            )
        return [i for i, _ in rows]

    def suppress(self, email: str, reason: str = "unsubscribe") -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO suppression_entries (workspace_id, email_hash, reason) "
                "VALUES (%s, %s, %s)",
                [self.workspace_id, hash_identifier(HASH_KEY, email), reason],
            )

    def enqueue(
        self,
        mailbox_id: UUID,
        lead_ids: Iterable[UUID],
        *,
        subject: str = "Hello {{first_name}}",
        body: str = "A short note.\n.\nA line that starts with a dot, above.\n",
    ) -> list[jobs_db.Enqueued]:
        jobs = [
            jobs_db.NewJob(
                mailbox_id=mailbox_id,
                lead_id=lead,
                idempotency_key=f"job-{next(self._seq)}",
                subject=subject,
                body=body,
            )
            for lead in lead_ids
        ]
        with psycopg.connect(self.worker_dsn) as conn:
            return jobs_db.enqueue(conn, self.workspace_id, jobs)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """As the superuser, outside row-level security: what the tests check against."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            return conn.execute(sql.encode(), list(params)).fetchall()

    def states(self) -> collections.Counter[str]:
        rows = self.query(
            "SELECT state, count(*) FROM send_jobs WHERE workspace_id = %s GROUP BY 1",
            [self.workspace_id],
        )
        return collections.Counter({str(s): int(n) for s, n in rows})

    def job(self, job_id: UUID) -> dict[str, Any]:
        rows = self.query("SELECT to_jsonb(j) FROM send_jobs j WHERE id = %s", [job_id])
        return dict(rows[0][0])

    def attempts(self, job_id: UUID) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT to_jsonb(a) FROM send_attempts a WHERE send_job_id = %s ORDER BY attempt",
            [job_id],
        )
        return [dict(r[0]) for r in rows]

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.output()[-3000:]}" for w in self.workers)
                raise AssertionError(
                    f"timed out waiting for {what}; states {self.states()}\n{logs}"
                )
            time.sleep(interval)

    def wait_for_states(
        self, expected: Mapping[str, int], timeout: float = 30
    ) -> collections.Counter[str]:
        self.wait_until(
            lambda: +self.states() == +collections.Counter(expected),
            timeout,
            f"job states {dict(expected)}",
        )
        return self.states()

    def worker_env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("NUMAIL_") and k not in ("KUBECONFIG",)
        }
        env.update(
            NUMAIL_WORKSPACE=self.workspace,
            NUMAIL_WORKSPACE_UID=str(self.workspace_id),
            NUMAIL_DATABASE_URL=self.worker_dsn,
            NUMAIL_KEY_SOURCE="local",
            NUMAIL_LOCAL_KEYRING_FILE=str(self.keyring),
            NUMAIL_CREDENTIAL_SOURCE=f"directory:{self.credentials_dir}",
            NUMAIL_SEND_LEASE_SECONDS="3",
            NUMAIL_SEND_HEARTBEAT_SECONDS="0.5",
            NUMAIL_SEND_SETTLE_DELAY_SECONDS="1",
            NUMAIL_SEND_POLL_SECONDS="0.5",
            NUMAIL_SEND_BACKOFF_SECONDS="0.2",
            NUMAIL_SEND_BACKOFF_MAX_SECONDS="1",
            NUMAIL_SEND_DEPTH_SECONDS="1",
            NUMAIL_PROVIDER_TIMEOUT="5",
            NUMAIL_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def start_worker(self, name: str | None = None, **env: str) -> WorkerProcess:
        name = name or f"worker-{len(self.workers)}"
        port = free_port()
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "numail_workers.send"],
                env=self.worker_env(NUMAIL_METRICS_PORT=str(port), **env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(name, process, log, port)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.alive():
                try:
                    worker.terminate(15)
                except subprocess.TimeoutExpired:
                    worker.kill()

    def all_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*.log")))


# --- the reply detector's harness -------------------------------------------------------------


def mark_sent(world: SendWorld, enqueued: Iterable[jobs_db.Enqueued]) -> None:
    """Record jobs as sent the way the engine's finish does (state sent, a sent_messages row),
    without a provider: the reply detector's tests start from mail that went out."""
    ids = [e.job_id for e in enqueued]
    world.query(
        "UPDATE send_jobs SET state = 'sent', sent_at = now(), lease_owner = NULL "
        "WHERE id = ANY(%s) RETURNING id",
        [ids],
    )
    world.query(
        "INSERT INTO sent_messages (workspace_id, send_job_id, mailbox_id, lead_id, message_id, "
        "sent_at) SELECT workspace_id, id, mailbox_id, lead_id, message_id, sent_at "
        "FROM send_jobs WHERE id = ANY(%s) RETURNING id",
        [ids],
    )


def reply_detector(
    world: SendWorld,
    *,
    mail_ca_file: str | None = None,
    https_ca_file: str | None = None,
    google_token_uri: str | None = None,
    gmail_api_url: str | None = None,
    microsoft_authority_host: str | None = None,
    graph_url: str | None = None,
    max_message_bytes: int | None = None,
) -> Any:
    """An in-process ReplyDetector for `world`, with its own metrics registry, reading the
    world's sealed credentials with the local KEK, as `python -m numail_workers.reply` would."""
    from functools import partial

    from numail_workers.credentials import DirectoryCredentialSource, LocalKeySource
    from numail_workers.inbound_detector import DetectorSettings, ReplyDetector
    from numail_workers.inbound_readers import ReaderSettings, open_reader
    from numail_workers.metrics import ReplyMetrics
    from numail_workers.senders import SenderEndpoints
    from prometheus_client import CollectorRegistry

    from numail.providers.base import ProviderEndpoints

    default = ProviderEndpoints()
    endpoints = SenderEndpoints(
        providers=ProviderEndpoints(
            google_token_uri=google_token_uri or default.google_token_uri,
            microsoft_authority_host=microsoft_authority_host or default.microsoft_authority_host,
            graph_url=graph_url or default.graph_url,
            https_ca_file=https_ca_file,
            mail_ca_file=mail_ca_file,
            timeout=5.0,
        ),
        gmail_api_url=gmail_api_url or SenderEndpoints.gmail_api_url,
    )
    reader = (
        ReaderSettings()
        if max_message_bytes is None
        else ReaderSettings(max_message_bytes=max_message_bytes)
    )
    settings = DetectorSettings(poll_seconds=0.5, backoff_max_seconds=2.0, reader=reader)
    uid = str(world.workspace_id)
    return ReplyDetector(
        dsn=world.worker_dsn,
        workspace_id=world.workspace_id,
        settings=settings,
        credentials=DirectoryCredentialSource(world.credentials_dir, world.namespace, uid),
        keys=LocalKeySource(LocalKeyProvider.from_file(world.keyring), world.workspace, uid),
        open_reader=partial(open_reader, endpoints, settings.reader),
        metrics=ReplyMetrics(world.workspace, registry=CollectorRegistry()),
    )


def inbound_reply(
    answers: str,
    *,
    sender: str = "ada@example.com",
    to: str = "sales@client1.test",
    references: Iterable[str] = (),
    message_id: str | None = None,
    headers: str = "",
) -> bytes:
    refs = " ".join([*references, answers])
    text = (
        f"From: Ada <{sender}>\nTo: {to}\nSubject: Re: Hello Ada\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\n"
        f"Message-ID: {message_id or f'<{uuid.uuid4()}@example.com>'}\n"
        f"In-Reply-To: {answers}\nReferences: {refs}\n{headers}"
        "Content-Type: text/plain; charset=utf-8\n\nThanks, let's talk.\n\n> A short note.\n"
    )
    return text.replace("\n", "\r\n").encode()


def inbound_dsn(
    original: str,
    *,
    recipient: str,
    action: str = "failed",
    status: str = "5.1.1",
    to: str = "sales@client1.test",
) -> bytes:
    text = (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\n"
        f"To: {to}\nSubject: Undelivered Mail Returned to Sender\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\n"
        f"Message-ID: <{uuid.uuid4()}@mx.example.com>\nAuto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\n\n'
        "--b1\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
        "--b1\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
        f"Final-Recipient: rfc822; {recipient}\nAction: {action}\nStatus: {status}\n\n"
        "--b1\nContent-Type: text/rfc822-headers\n\n"
        f"Message-ID: {original}\nSubject: Hello Ada\n\n--b1--\n"
    )
    return text.replace("\n", "\r\n").encode()


@dataclass
class ApiProviders:
    """The local Google and Microsoft identity servers and the Gmail and Graph APIs that accept
    the access tokens those servers issued, all under one test CA."""

    cert: ServingCert
    google: GoogleOAuthServer
    microsoft: MicrosoftIdentityServer
    gmail: GmailApi
    graph: GraphApi


@contextlib.contextmanager
def api_providers(
    cert: ServingCert,
    *,
    gmail_grant: tuple[str, str, str],
    graph_grant: tuple[str, str, str],
    tenant: str = "contoso",
) -> Iterator[ApiProviders]:
    """Grants are (refresh token, client id, client secret)."""
    google = GoogleOAuthServer(cert).start()
    google.add_grant(*gmail_grant)
    microsoft = MicrosoftIdentityServer(cert).start()
    microsoft.add_grant(*graph_grant, tenant=tenant)
    gmail = GmailApi(cert, lambda token: token in google.issued_tokens()).start()
    graph = GraphApi(cert, lambda token: token in microsoft.issued_tokens()).start()
    try:
        yield ApiProviders(cert, google, microsoft, gmail, graph)
    finally:
        for server in (gmail, graph, google, microsoft):
            server.stop()
