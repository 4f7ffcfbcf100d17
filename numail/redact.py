"""Redaction of secrets in every log record: registered values and known token shapes.

Two hooks, because neither alone sees everything:

* a LogRecord factory redacts the message, its arguments, the exception text and the stack text
  at the moment a record is created, whichever logger or library created it;
* a `logging.Filter` on every handler redacts `extra` fields, which `Logger.makeRecord` adds
  after the factory has run, and catches records built by hand.

The formatted message replaces `msg` and `args` is cleared, so a handler can't re-format the
raw arguments; `exc_info` is replaced by the redacted traceback text for the same reason.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Iterable
from typing import Any

MASK = "[REDACTED]"
MIN_SECRET_LENGTH = 4

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # PEM private keys, whole block.
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        "-----BEGIN \\1PRIVATE KEY-----" + MASK + "-----END \\1PRIVATE KEY-----",
    ),
    # Authorization headers of any scheme, and bare bearer tokens.
    (
        re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)([A-Za-z]+\s+)?[^\s\"',;}]+"),
        r"\1\2" + MASK,
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + MASK),
    # Google OAuth access tokens and refresh tokens.
    (re.compile(r"\bya29\.[0-9A-Za-z_.-]+"), MASK),
    (re.compile(r"(?<![0-9A-Za-z])1//[0-9A-Za-z_-]{8,}"), MASK),
    # JWTs (Kubernetes SA tokens, Microsoft access tokens, ID tokens).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # key=value and "key": "value" pairs for secret-looking keys.
    (
        re.compile(
            r"(?i)([\"']?\b(?:pass(?:word|wd|phrase)?|pwd|secret|client_secret|api[_-]?key|"
            r"access_token|refresh_token|id_token|token|private_key|pin)[\"']?\s*[:=]\s*[\"']?)"
            r"([^\s\"'&,;}]+)"
        ),
        r"\1" + MASK,
    ),
    # Passwords in URLs: scheme://user:password@host
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)"), r"\1" + MASK + r"\3"),
    # Base64 of a sealed frame (magic "NMSF"), standard or URL-safe alphabet.
    (re.compile(r"Tk1TR[A-Za-z0-9+/_-]{16,}={0,2}"), MASK),
]

_lock = threading.Lock()
_registered: set[str] = set()
_registered_re: re.Pattern[str] | None = None


def register(*values: str | bytes | None) -> None:
    """Mask these exact values from now on. Call it as soon as a secret enters the process."""
    global _registered_re
    added = False
    with _lock:
        for value in values:
            if value is None:
                continue
            text = value.decode(errors="ignore") if isinstance(value, bytes) else value
            for candidate in {text, text.strip()}:
                if len(candidate) >= MIN_SECRET_LENGTH and candidate not in _registered:
                    _registered.add(candidate)
                    added = True
        if added:
            ordered = sorted(_registered, key=len, reverse=True)
            _registered_re = re.compile("|".join(re.escape(v) for v in ordered))


def forget(*values: str) -> None:
    """Stop masking values that are no longer in memory (bounded growth for long workers)."""
    global _registered_re
    with _lock:
        for v in values:
            _registered.discard(v)
        ordered = sorted(_registered, key=len, reverse=True)
        _registered_re = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None


def redact(text: str) -> str:
    pattern = _registered_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return text


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode(errors="replace"))
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return type(value)(redact_value(v) for v in value) if not isinstance(value, set) else value
    if isinstance(value, int | float | bool) or value is None:
        return value
    text = repr(value)
    cleaned = redact(text)
    return cleaned if cleaned != text else value


_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_MARK = "_numail_redacted"


def _scrub(record: logging.LogRecord) -> None:
    if not getattr(record, _MARK, False):
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not leak the raw args either
            message = f"{record.msg!s} (unformattable log arguments dropped)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact(text.rstrip("\n"))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        setattr(record, _MARK, True)
    for key, value in list(record.__dict__.items()):
        if key not in _STANDARD_ATTRS and key != _MARK:
            record.__dict__[key] = redact_value(value)


class RedactingFilter(logging.Filter):
    """Handler filter: never drops a record, only rewrites it."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True


_FILTER = RedactingFilter()
_installed_factory = False
DEFAULT_LOGGERS = (
    "",
    "kopf",
    "aiohttp",
    "aiohttp.access",
    "urllib3",
    "kubernetes",
    "botocore",
    "msal",
)


def install_redaction(loggers: Iterable[str] = DEFAULT_LOGGERS) -> None:
    """Install both hooks. Idempotent: call again after anything (kopf) adds handlers."""
    global _installed_factory
    with _lock:
        if not _installed_factory:
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                _scrub(record)
                return record

            logging.setLogRecordFactory(factory)
            _installed_factory = True
    names = set(loggers) | set(logging.Logger.manager.loggerDict)
    for name in names:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
