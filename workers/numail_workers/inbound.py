"""What an inbound message is: a bounce (RFC 3464), an auto-reply (RFC 3834) or a reply.

Pure functions over the raw bytes, so the rules can be tested on real-shaped samples and
fuzzed. Parsing uses the stdlib `email` package with the compat32 policy: it never rejects a
message for malformed headers, and it already splits `message/delivery-status` into its
per-message and per-recipient blocks. Which sent message an inbound one answers is decided by
the database (numail_record_inbound, migration 0006) from the `candidates` listed here, so a
workspace can only ever match its own sent messages.

The order of the checks matters. Bounces come first because MTAs mark DSNs
`Auto-Submitted: auto-replied` (RFC 3834 section 5 tells them to), which would otherwise make
every bounce an auto-reply. Auto-replies come before replies because a vacation message carries
In-Reply-To like a reply does, and must not stop a sequence.
"""

from __future__ import annotations

import email
import email.utils
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Literal

Kind = Literal["reply", "auto_reply", "bounce"]
BounceType = Literal["hard", "soft"]

# A Message-ID as it appears in Message-ID, In-Reply-To and References: <local@domain>.
_MSG_ID = re.compile(r"<([^<>\s@]+@[^<>\s@]+)>")
# An RFC 3463 enhanced status code: class.subject.detail.
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_STATUS_IN_TEXT = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_MESSAGE_ID_LINE = re.compile(r"(?im)^\s*message-id:\s*(<[^<>\s@]+@[^<>\s@]+>)")
_REPORT_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_ORIGINAL_TYPES = frozenset({"message/rfc822", "message/global"})
_ORIGINAL_HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
# Senders whose mail is a delivery report whatever its shape (RFC 5321 section 4.5.1 makes
# postmaster mandatory; MAILER-DAEMON is the traditional bounce sender of sendmail, Postfix,
# Exim and Exchange).
_BOUNCE_SENDERS = frozenset({"mailer-daemon", "postmaster"})
_TOKEN = re.compile(r"^[a-z0-9_-]{1,32}$")
_PRECEDENCE_AUTO = frozenset({"auto_reply", "bulk", "junk"})
# Enough of a message to classify it; a longer text part is not scanned further.
_TEXT_SCAN_LIMIT = 64 * 1024


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a DSN. `recipient` is only kept in memory, never stored."""

    recipient: str
    action: str
    status: str


@dataclass(frozen=True)
class Classified:
    """An inbound message as the detector records it. `candidates` are the Message-IDs it may
    answer, best first; `message_id` is its own (made up from its bytes when it has none, so
    reading it twice still finds the same replies row)."""

    kind: Kind
    bounce_type: BounceType | None
    message_id: str
    candidates: tuple[str, ...]
    date: datetime | None
    reason: str
    recipients: tuple[RecipientStatus, ...] = ()


def message_ids(value: str) -> list[str]:
    """The Message-IDs in a header value, in order, each as `<local@domain>`."""
    return [f"<{m}>" for m in _MSG_ID.findall(value)]


def _header(msg: Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    try:
        return str(value)
    except (UnicodeError, LookupError):
        return ""


def _content_type(msg: Message) -> str:
    try:
        return msg.get_content_type()
    except (ValueError, LookupError, TypeError):  # pragma: no cover - compat32 is lenient
        return "text/plain"


def _parts(msg: Message) -> Iterable[Message]:
    try:
        yield from msg.walk()
    except (TypeError, AttributeError, RecursionError):  # pragma: no cover - defensive
        return


def _own_message_id(msg: Message, raw: bytes) -> str:
    found = message_ids(_header(msg, "Message-ID"))
    if found:
        return found[0]
    # No Message-ID (some bounce generators omit it): one derived from the bytes keeps
    # recording idempotent, and can never collide with a real one.
    return f"<{hashlib.sha256(raw).hexdigest()[:40]}@no-message-id.numail.invalid>"


def _reply_candidates(msg: Message) -> list[str]:
    """In-Reply-To first (the message answered), then References newest first (RFC 5322
    section 3.6.4: each reply appends the parent's id, so the last is the closest)."""
    ordered = message_ids(_header(msg, "In-Reply-To"))
    ordered += reversed(message_ids(_header(msg, "References")))
    return list(dict.fromkeys(ordered))


def _date(msg: Message) -> datetime | None:
    raw = _header(msg, "Date")
    if not raw:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _sender_local_part(msg: Message) -> str:
    try:
        _, address = email.utils.parseaddr(_header(msg, "From"))
    except (TypeError, ValueError, IndexError):  # pragma: no cover - parseaddr is lenient
        return ""
    return address.rpartition("@")[0].lower() if "@" in address else address.lower()


def _payload_text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, LookupError, TypeError, AssertionError):
        return ""
    if not isinstance(payload, bytes):
        return ""
    charset = "utf-8"
    try:
        charset = part.get_content_charset() or "utf-8"
        return payload[:_TEXT_SCAN_LIMIT].decode(charset, errors="replace")
    except (LookupError, ValueError):
        return payload[:_TEXT_SCAN_LIMIT].decode("utf-8", errors="replace")


def _original_ids(parts: list[Message]) -> list[str]:
    """The Message-ID of the returned message: the `message/rfc822` part (the whole message)
    or the `text/rfc822-headers` part (only its header), RFC 3462 and RFC 6522."""
    found: list[str] = []
    for part in parts:
        ctype = _content_type(part)
        if ctype in _ORIGINAL_TYPES:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                found += message_ids(_header(inner, "Message-ID"))[:1]
        elif ctype in _ORIGINAL_HEADER_TYPES:
            text = _payload_text(part)
            headers = BytesHeaderParser().parsebytes(text.encode("utf-8", errors="replace"))
            found += message_ids(_header(headers, "Message-ID"))[:1]
    return found


def _dsn_recipients(parts: list[Message]) -> list[RecipientStatus]:
    """The per-recipient blocks of every delivery-status part (the first block of each is the
    per-message one, which has no Action)."""
    out: list[RecipientStatus] = []
    for part in parts:
        if _content_type(part) not in _REPORT_TYPES:
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            if not isinstance(block, Message):
                continue
            action = _header(block, "Action").strip().lower()
            if not action:
                continue
            recipient = _header(block, "Final-Recipient") or _header(block, "Original-Recipient")
            status = _header(block, "Status").strip()
            out.append(RecipientStatus(recipient.partition(";")[2].strip(), action, status))
    return out


def _dsn_bounce_type(recipients: list[RecipientStatus]) -> BounceType | None:
    """RFC 3464 section 2.3.3 and RFC 3463: `failed` with a 5.x.x status is permanent (hard);
    `delayed`, or `failed` with a 4.x.x or missing status, is temporary (soft). `delivered`,
    `relayed` and `expanded` report success: not a bounce at all."""
    kinds: set[BounceType] = set()
    for r in recipients:
        match = _STATUS.match(r.status)
        klass = match.group(1) if match else None
        if r.action == "failed":
            kinds.add("hard" if klass == "5" else "soft")
        elif r.action == "delayed":
            kinds.add("soft")
    if "hard" in kinds:
        return "hard"
    return "soft" if kinds else None


def _is_dsn(msg: Message) -> bool:
    if _content_type(msg) != "multipart/report":
        return False
    try:
        report_type = msg.get_param("report-type")
    except (ValueError, LookupError, TypeError):  # pragma: no cover - compat32 is lenient
        return False
    return isinstance(report_type, str) and report_type.strip().lower() == "delivery-status"


def _classify_dsn(msg: Message, raw: bytes, parts: list[Message]) -> Classified | None:
    recipients = _dsn_recipients(parts)
    bounce = _dsn_bounce_type(recipients)
    if bounce is None:
        return None
    candidates = list(dict.fromkeys(_original_ids(parts) + _reply_candidates(msg)))
    statuses = ",".join(sorted({r.status or "-" for r in recipients}))
    return Classified(
        "bounce",
        bounce,
        _own_message_id(msg, raw),
        tuple(candidates),
        _date(msg),
        f"RFC 3464 DSN ({statuses})",
        tuple(recipients),
    )


def _classify_legacy_bounce(msg: Message, raw: bytes, parts: list[Message]) -> Classified | None:
    """A bounce without a DSN part (older Exim and qmail, some appliances). Recognised only
    when all three hold: it comes from MAILER-DAEMON or postmaster; a text part states an
    RFC 3463 status code (4.x.x or 5.x.x); and the returned message's Message-ID is found,
    either in an attached message or as a `Message-ID:` line of the quoted header. A mailer
    daemon's note without a status code is not taken as a bounce: nothing says it is final."""
    if _sender_local_part(msg) not in _BOUNCE_SENDERS:
        return None
    texts = [_payload_text(p) for p in parts if _content_type(p) == "text/plain"]
    codes = [m for text in texts for m in _STATUS_IN_TEXT.findall(text)]
    if not codes:
        return None
    originals = _original_ids(parts)
    for text in texts:
        originals += _MESSAGE_ID_LINE.findall(text)
    own = _own_message_id(msg, raw)
    originals = [m for m in dict.fromkeys(originals) if m != own]
    if not originals:
        return None
    bounce: BounceType = "hard" if any(c[0] == "5" for c in codes) else "soft"
    status = ".".join(next(c for c in codes if c[0] == ("5" if bounce == "hard" else "4")))
    return Classified(
        "bounce", bounce, own, tuple(originals), _date(msg), f"non-DSN bounce ({status})"
    )


def auto_reply_reason(msg: Message) -> str | None:
    """Why `msg` is an automatic response, or None. Each test is one header:

    * `Auto-Submitted` with any value but `no` (RFC 3834 section 5.1; `auto-replied`,
      `auto-generated`, `auto-notified`);
    * `X-Autoreply` or `X-Autorespond` present (set by common vacation responders that
      predate RFC 3834);
    * `Precedence: auto_reply`, `bulk` or `junk` (RFC 3834 section 2 tells responders to set
      or honour these; `list` is left out, since people reply through mailing lists).

    `X-Auto-Response-Suppress` is not one: Outlook puts it on ordinary messages a person
    wrote, and a subject such as "Out of office" is not evidence either.
    """
    auto_submitted = _header(msg, "Auto-Submitted").split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        # The value goes into logs: keep a token, never free text from the sender.
        token = auto_submitted if _TOKEN.match(auto_submitted) else "other"
        return f"Auto-Submitted: {token}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if msg.get(name) is not None:
            return f"{name} present"
    precedence = _header(msg, "Precedence").strip().lower()
    if precedence in _PRECEDENCE_AUTO:
        return f"Precedence: {precedence}"
    return None


def classify(raw: bytes) -> Classified | None:
    """The message's kind, or None when it can't concern a sent message: no Message-ID to
    match, or a DSN that reports a delivery. Never raises on malformed input."""
    msg = email.message_from_bytes(raw)
    parts = list(_parts(msg))
    if _is_dsn(msg):
        dsn = _classify_dsn(msg, raw, parts)
        return dsn if dsn is not None and dsn.candidates else None
    legacy = _classify_legacy_bounce(msg, raw, parts)
    if legacy is not None:
        return legacy
    candidates = tuple(_reply_candidates(msg))
    if not candidates:
        return None
    own = _own_message_id(msg, raw)
    why = auto_reply_reason(msg)
    if why is not None:
        return Classified("auto_reply", None, own, candidates, _date(msg), why)
    return Classified("reply", None, own, candidates, _date(msg), "In-Reply-To/References")
