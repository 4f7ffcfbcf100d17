"""What an inbound message is: a bounce (RFC 3464), an auto-reply (RFC 3834) or a reply.

Pure functions over the raw bytes, so the rules can be tested on real-shaped samples and
fuzzed. Parsing uses the stdlib `email` package with the compat32 policy: it never rejects a
message for malformed headers, and it already splits `message/delivery-status` into its
per-message and per-recipient blocks. Which sent message an inbound one answers is decided by
the database (numail_record_inbound, migration 0006) from the `candidates` listed here, so a
workspace can only ever match its own sent messages.

The order of the checks matters. Bounces come first because MTAs mark DSNs
`Auto-Submitted: auto-replied` (RFC 3834 section 5 tells them to), which would otherwise make
every bounce an auto-reply. Read receipts (RFC 8098) come next: they carry In-Reply-To but
nobody wrote them, so they are auto-replies whatever their other headers say. Auto-replies
come before replies because a vacation message carries In-Reply-To like a reply does, and
must not stop a sequence.
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

from numail_workers.bounces import is_bad_address_status

Kind = Literal["reply", "auto_reply", "bounce"]
BounceType = Literal["hard", "soft"]

# A Message-ID as it appears in Message-ID, In-Reply-To and References: <local@domain>.
# Whitespace and control characters (C0, DEL, C1) are never part of one, nor are lone
# surrogates (what compat32 makes of undecodable bytes): an id with any of them is no id, so
# a NUL can never reach the database, which can't store it.
_ID_CHAR = r"[^<>@\s\x00-\x1f\x7f-\x9f\ud800-\udfff]"
_MSG_ID = re.compile(rf"<({_ID_CHAR}+@{_ID_CHAR}+)>")
# The longest Message-ID kept, brackets included. RFC 5322 sets no limit, but real ones are
# well under 100 characters; a longer one is ignored, so no index entry can grow past what
# PostgreSQL accepts (a btree row holds about 2.7 kB).
MAX_MESSAGE_ID_LENGTH = 250
# An RFC 3463 enhanced status code: class.subject.detail.
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_STATUS_IN_TEXT = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_MESSAGE_ID_LINE = re.compile(rf"(?im)^\s*message-id:\s*(<{_ID_CHAR}+@{_ID_CHAR}+>)")
# A line of a header (`Name: value`), as quoted in a bounce's copy of the original.
_HEADER_LINE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9-]*:\s")
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}[A-Za-z0-9]")
_XTEXT = re.compile(r"\+([0-9A-F]{2})")
_REPORT_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_MDN_TYPES = frozenset(
    {"message/disposition-notification", "message/global-disposition-notification"}
)
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
    """One per-recipient block of a DSN: `recipient` is its Final-Recipient (else its
    Original-Recipient), `original` its Original-Recipient. Addresses are only kept in memory
    and compared with the lead's by numail_record_inbound, never stored."""

    recipient: str
    action: str
    status: str
    original: str = ""

    @property
    def bad_address(self) -> bool:
        """The delivery failed because the address is bad (numail_workers.bounces)."""
        return self.action == "failed" and is_bad_address_status(self.status)


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
    # For a hard bounce, the addresses (lowercased) that failed as bad: the bounce suppresses
    # the lead only if one of them is the lead's address.
    failed_recipients: tuple[str, ...] = ()


def message_ids(value: str) -> list[str]:
    """The Message-IDs in a header value, in order, each as `<local@domain>`; ids longer than
    MAX_MESSAGE_ID_LENGTH are left out."""
    return [f"<{m}>" for m in _MSG_ID.findall(value) if len(m) + 2 <= MAX_MESSAGE_ID_LENGTH]


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
            final = _dsn_address(_header(block, "Final-Recipient"), xtext=False)
            original = _dsn_address(_header(block, "Original-Recipient"), xtext=True)
            status = _header(block, "Status").strip()
            out.append(RecipientStatus(final or original, action, status, original))
    return out


def _dsn_address(value: str, *, xtext: bool) -> str:
    """The address of a `Final-Recipient` or `Original-Recipient` field: `type; address`
    (RFC 3464 section 2.3.1). Original-Recipient carries the ORCPT parameter, which is xtext
    (RFC 3461 section 4.2: `+` and two upper-case hex digits stand for one character)."""
    address = value.partition(";")[2].strip().strip("<>").strip()
    if xtext:
        address = _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), address)
    return address


def _failed_addresses(recipients: Iterable[RecipientStatus]) -> tuple[str, ...]:
    found = [a.lower() for r in recipients if r.bad_address for a in (r.recipient, r.original)]
    return tuple(dict.fromkeys(a for a in found if a))


def _dsn_bounce_type(recipients: list[RecipientStatus]) -> BounceType | None:
    """RFC 3464 section 2.3.3 and RFC 3463: `failed` with a status saying the address is bad
    (5.1.x, 5.2.1: numail_workers.bounces, the send path's rule) is hard; any other `failed`
    (a 5.x.x policy or content rejection, a 4.x.x or missing status) and `delayed` are soft:
    recorded, nobody suppressed. `delivered`, `relayed` and `expanded` report success: not a
    bounce at all."""
    kinds: set[BounceType] = set()
    for r in recipients:
        if r.action == "failed":
            kinds.add("hard" if r.bad_address else "soft")
        elif r.action == "delayed":
            kinds.add("soft")
    if "hard" in kinds:
        return "hard"
    return "soft" if kinds else None


def _report_type(msg: Message) -> str | None:
    """The report-type of a `multipart/report` (RFC 6522), lowercased; None for anything else."""
    if _content_type(msg) != "multipart/report":
        return None
    try:
        report_type = msg.get_param("report-type")
    except (ValueError, LookupError, TypeError):  # pragma: no cover - compat32 is lenient
        return None
    return report_type.strip().lower() if isinstance(report_type, str) else None


def _classify_read_receipt(msg: Message, raw: bytes, parts: list[Message]) -> Classified | None:
    """An RFC 8098 message disposition notification (a read receipt) is sent by the reader's
    mail client, not written by the lead: an auto-reply, never a reply. It names the message it
    is about in the `Original-Message-ID` field of its `message/disposition-notification`
    part, and usually in In-Reply-To/References too."""
    originals: list[str] = []
    for part in parts:
        if _content_type(part) not in _MDN_TYPES:
            continue
        payload = part.get_payload()
        blocks: list[Message] = []
        if isinstance(payload, list):
            blocks = [b for b in payload if isinstance(b, Message)]
        elif isinstance(payload, str):
            parsed = BytesHeaderParser().parsebytes(payload.encode("utf-8", errors="replace"))
            blocks = [parsed]
        for block in blocks:
            originals += message_ids(_header(block, "Original-Message-ID"))[:1]
    candidates = list(dict.fromkeys(originals + _reply_candidates(msg)))
    if not candidates:
        return None
    return Classified(
        "auto_reply",
        None,
        _own_message_id(msg, raw),
        tuple(candidates),
        _date(msg),
        "RFC 8098 read receipt",
    )


def _classify_dsn(msg: Message, raw: bytes, parts: list[Message]) -> Classified | None:
    recipients = _dsn_recipients(parts)
    bounce = _dsn_bounce_type(recipients)
    if bounce is None:
        return None
    candidates = list(dict.fromkeys(_original_ids(parts) + _reply_candidates(msg)))
    # Statuses go into logs: keep the codes, never the free text after them.
    statuses = ",".join(sorted({_status_code(r.status) for r in recipients}))
    return Classified(
        "bounce",
        bounce,
        _own_message_id(msg, raw),
        tuple(candidates),
        _date(msg),
        f"RFC 3464 DSN ({statuses})",
        tuple(recipients),
        _failed_addresses(recipients) if bounce == "hard" else (),
    )


def _status_code(status: str) -> str:
    match = _STATUS.match(status)
    return ".".join(match.groups()) if match else "-"


def _notice_addresses(msg: Message, texts: list[str]) -> tuple[str, ...]:
    """The addresses a non-DSN bounce says failed: its `X-Failed-Recipients` header (Exim,
    Gmail), else the addresses in its text parts outside quoted header lines (so the copy of
    the original's own From and To are not taken)."""
    listed = _ADDRESS.findall(_header(msg, "X-Failed-Recipients"))
    if not listed:
        listed = [
            a
            for text in texts
            for line in text.splitlines()
            if not _HEADER_LINE.match(line)
            for a in _ADDRESS.findall(line)
        ]
    return tuple(dict.fromkeys(a.lower() for a in listed))


def _classify_legacy_bounce(msg: Message, raw: bytes, parts: list[Message]) -> Classified | None:
    """A bounce without a DSN part (older Exim and qmail, some appliances). Recognised only
    when all three hold: it comes from MAILER-DAEMON or postmaster; a text part states an
    RFC 3463 status code (4.x.x or 5.x.x); and the returned message's Message-ID is found,
    either in an attached message or as a `Message-ID:` line of the quoted header. A mailer
    daemon's note without a status code is not taken as a bounce: nothing says it is final.
    It is hard only when a code says the address is bad (numail_workers.bounces)."""
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
    statuses = [".".join(c) for c in codes]
    bad = [s for s in statuses if is_bad_address_status(s)]
    bounce: BounceType = "hard" if bad else "soft"
    return Classified(
        "bounce",
        bounce,
        own,
        tuple(originals),
        _date(msg),
        f"non-DSN bounce ({(bad or statuses)[0]})",
        failed_recipients=_notice_addresses(msg, texts) if bounce == "hard" else (),
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
    report_type = _report_type(msg)
    if report_type == "delivery-status":
        dsn = _classify_dsn(msg, raw, parts)
        return dsn if dsn is not None and dsn.candidates else None
    if report_type == "disposition-notification":
        return _classify_read_receipt(msg, raw, parts)
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
