"""Which permanent delivery failures mean the address itself is bad: one rule for the send path
(an SMTP reply at send time, senders/smtp.py) and the reply detector (a DSN's Status field,
inbound.py), so a lead is suppressed for the same reasons whichever way the failure arrives.

RFC 3463: subject 1 (`5.1.x`) is an addressing status (no such user, bad domain, bad syntax);
`5.2.1` is "mailbox disabled, not accepting messages". Other permanent statuses (`5.7.x`
policy and spam rejections, `5.2.2` mailbox full, `5.3.x` and `5.4.x` system and routing
problems, `5.6.x` content) say something about this message or this moment, not that the
address is gone: they fail the message but suppress no one.
"""

from __future__ import annotations

import re

# An RFC 3463 enhanced status code at the start of the text: class.subject.detail.
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")


def is_bad_address_status(status: str) -> bool:
    """True when `status` starts with `5.1.x` or `5.2.1`: the address is bad."""
    match = _ENHANCED.match(status)
    if match is None or match.group(1) != "5":
        return False
    subject, detail = int(match.group(2)), int(match.group(3))
    return subject == 1 or (subject, detail) == (2, 1)


def is_hard_bounce(code: int, reply: str) -> bool:
    """An SMTP reply that suppresses the recipient: a 5xx whose enhanced status code (RFC 2034)
    says the address is bad. A 5xx without an enhanced code is not sure enough to suppress."""
    return code >= 500 and is_bad_address_status(reply)
