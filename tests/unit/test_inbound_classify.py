"""The inbound classifier on real-shaped samples: DSNs as Postfix, Exchange and Gmail write
them, a delayed DSN, an RFC 3834 vacation reply, a real reply in a thread, unrelated mail,
and arbitrary bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from numail_workers.bounces import is_bad_address_status, is_hard_bounce
from numail_workers.inbound import MAX_MESSAGE_ID_LENGTH, classify, message_ids
from numail_workers.senders.smtp import is_hard_bounce as smtp_is_hard_bounce

SENT = "<0b7c6a4e-5f1d-4c2a-9d8e-111111111111@client1.test>"
EARLIER = "<0b7c6a4e-5f1d-4c2a-9d8e-000000000000@client1.test>"


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


POSTFIX_DSN = crlf(f"""Return-Path: <>
Received: by mx.example.com (Postfix) id 4F2C81E0; Tue,  2 Apr 2024 10:00:01 +0000 (UTC)
Date: Tue,  2 Apr 2024 10:00:01 +0000 (UTC)
From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: sales@client1.test
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="4F2C81E0.1712052001/mx.example.com"
Message-Id: <20240402100001.4F2C81E0@mx.example.com>

This is a MIME-encapsulated message.

--4F2C81E0.1712052001/mx.example.com
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.com.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<nobody@example.com>: host mx.example.com[192.0.2.1] said: 550 5.1.1
    <nobody@example.com>: Recipient address rejected: User unknown

--4F2C81E0.1712052001/mx.example.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
X-Postfix-Queue-ID: 4F2C81E0
X-Postfix-Sender: rfc822; sales@client1.test
Arrival-Date: Tue,  2 Apr 2024 10:00:00 +0000 (UTC)

Final-Recipient: rfc822; nobody@example.com
Original-Recipient: rfc822;nobody@example.com
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.com>: Recipient address
    rejected: User unknown

--4F2C81E0.1712052001/mx.example.com
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <sales@client1.test>
From: Sales at Client 1 <sales@client1.test>
To: nobody@example.com
Subject: Hello Ada
Message-ID: {SENT}
Date: Tue, 02 Apr 2024 09:59:59 +0000

--4F2C81E0.1712052001/mx.example.com--
""")

EXCHANGE_NDR = crlf(f"""From: postmaster@contoso.onmicrosoft.com
To: <sales@client1.test>
Date: Tue, 2 Apr 2024 10:05:00 +0000
Content-Type: multipart/report; report-type=delivery-status;
	boundary="ndr-boundary-1"
X-MS-Exchange-Message-Is-Ndr:
Content-Language: en-US
Message-ID: <a1b2c3d4-ndr@DM6PR01MB1234.namprd01.prod.outlook.com>
In-Reply-To: {SENT}
References: {SENT}
Subject: Undeliverable: Hello Ada
Auto-Submitted: auto-replied
MIME-Version: 1.0

--ndr-boundary-1
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

Your message to gone@contoso.test couldn't be delivered.
gone wasn't found at contoso.test.
Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipien=
t not found by SMTP address lookup'

--ndr-boundary-1
Content-Type: message/delivery-status

Reporting-MTA: dns;DM6PR01MB1234.namprd01.prod.outlook.com
Received-From-MTA: dns;mail.client1.test
Arrival-Date: Tue, 2 Apr 2024 10:04:59 +0000

Final-Recipient: rfc822;gone@contoso.test
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found

--ndr-boundary-1
Content-Type: message/rfc822

From: Sales at Client 1 <sales@client1.test>
To: <gone@contoso.test>
Subject: Hello Ada
Date: Tue, 2 Apr 2024 10:04:58 +0000
Message-ID: {SENT}
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"

A short note.

--ndr-boundary-1--
""")

GMAIL_DSN = crlf(f"""Delivered-To: sales@client1.test
Return-Path: <>
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: sales@client1.test
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
References: {SENT}
In-Reply-To: {SENT}
X-Failed-Recipients: typo@gmial.com
Message-ID: <660bd7a1.050a0220.aa11b.0000.GMR@mx.google.com>
Date: Tue, 02 Apr 2024 03:10:09 -0700 (PDT)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000aa11bb"; report-type=delivery-status

--000000000000aa11bb
Content-Type: multipart/related; boundary="000000000000cc22dd"

--000000000000cc22dd
Content-Type: multipart/alternative; boundary="000000000000ee33ff"

--000000000000ee33ff
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to typo@gmial.com because the domain gmial.com couldn't be found.

--000000000000ee33ff--

--000000000000cc22dd--

--000000000000aa11bb
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; sales@client1.test
Arrival-Date: Tue, 02 Apr 2024 03:10:08 -0700 (PDT)
X-Original-Message-ID: {SENT}

Final-Recipient: rfc822; typo@gmial.com
Action: failed
Status: 5.1.2
Diagnostic-Code: smtp; DNS Error: DNS type 'mx' lookup of gmial.com responded with code NXDOMAIN
Last-Attempt-Date: Tue, 02 Apr 2024 03:10:09 -0700 (PDT)

--000000000000aa11bb
Content-Type: message/rfc822

From: sales@client1.test
To: typo@gmial.com
Subject: Hello Ada
Message-ID: {SENT}
Date: Tue, 02 Apr 2024 10:10:07 +0000

A short note.

--000000000000aa11bb--
""")

DELAYED_DSN = crlf(f"""From: MAILER-DAEMON@relay.example.net (Mail Delivery System)
To: sales@client1.test
Subject: Delayed Mail (still being retried)
Date: Tue,  2 Apr 2024 14:00:00 +0000 (UTC)
Auto-Submitted: auto-replied
Message-Id: <20240402140000.AA11@relay.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message has been delayed and is still awaiting delivery.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Final-Recipient: rfc822; slow@example.org
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.example.org[198.51.100.7]:25: Connection timed out
Will-Retry-Until: Sat, 6 Apr 2024 10:00:00 +0000 (UTC)

--B
Content-Type: text/rfc822-headers

Message-ID: {SENT}
Subject: Hello Ada

--B--
""")

VACATION = crlf(f"""From: Ada Lovelace <ada@example.com>
To: sales@client1.test
Subject: Out of office: Hello Ada
Date: Tue, 2 Apr 2024 11:00:00 +0200
Message-ID: <oof-1234@example.com>
In-Reply-To: {SENT}
References: {SENT}
Auto-Submitted: auto-replied
X-Auto-Response-Suppress: All
Content-Type: text/plain; charset=utf-8

I am away until Monday and will read your message when I am back.
""")

REPLY = crlf(f"""From: Ada Lovelace <ada@example.com>
To: Sales at Client 1 <sales@client1.test>
Subject: Re: Hello Ada
Date: Tue, 2 Apr 2024 12:00:00 +0200
Message-ID: <CAF=reply-5678@mail.example.com>
In-Reply-To: {SENT}
References: {EARLIER}
 {SENT}
Content-Type: text/plain; charset=utf-8

Sounds good, let's talk on Thursday.

> A short note.
""")

UNRELATED = crlf("""From: A Friend <friend@example.org>
To: sales@client1.test
Subject: Lunch?
Date: Tue, 2 Apr 2024 12:30:00 +0200
Message-ID: <lunch-1@example.org>
Content-Type: text/plain

Lunch on Friday?
""")


def test_a_postfix_dsn_is_a_hard_bounce_of_the_message_in_its_rfc822_headers() -> None:
    c = classify(POSTFIX_DSN)
    assert c is not None
    assert (c.kind, c.bounce_type) == ("bounce", "hard")
    assert c.candidates[0] == SENT
    assert c.message_id == "<20240402100001.4F2C81E0@mx.example.com>"
    assert [(r.recipient, r.action, r.status) for r in c.recipients] == [
        ("nobody@example.com", "failed", "5.1.1")
    ]


def test_an_exchange_ndr_is_a_hard_bounce_of_the_attached_message() -> None:
    c = classify(EXCHANGE_NDR)
    assert c is not None and (c.kind, c.bounce_type) == ("bounce", "hard")
    assert c.candidates == (SENT,)
    assert c.recipients[0].status == "5.1.10"


def test_a_gmail_dsn_is_a_hard_bounce_not_an_auto_reply() -> None:
    # It carries Auto-Submitted: auto-replied, like every DSN: the DSN check comes first.
    c = classify(GMAIL_DSN)
    assert c is not None and (c.kind, c.bounce_type) == ("bounce", "hard")
    assert c.candidates[0] == SENT
    assert "5.1.2" in c.reason


def test_a_delayed_dsn_is_a_soft_bounce() -> None:
    c = classify(DELAYED_DSN)
    assert c is not None and (c.kind, c.bounce_type) == ("bounce", "soft")
    assert c.candidates == (SENT,)


def test_failed_with_a_4xx_status_is_soft_and_a_success_dsn_is_no_bounce() -> None:
    failed_4xx = POSTFIX_DSN.replace(b"Status: 5.1.1", b"Status: 4.2.2")
    c = classify(failed_4xx)
    assert c is not None and c.bounce_type == "soft"
    delivered = POSTFIX_DSN.replace(b"Action: failed", b"Action: delivered").replace(
        b"Status: 5.1.1", b"Status: 2.0.0"
    )
    assert classify(delivered) is None


def test_one_failed_recipient_among_delayed_ones_makes_it_hard() -> None:
    two = DELAYED_DSN.replace(
        b"Will-Retry-Until",
        b"X-Other: 1\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\n"
        b"Status: 5.2.1\r\nX-End",
    )
    c = classify(two)
    assert c is not None and c.bounce_type == "hard"
    assert {r.action for r in c.recipients} == {"delayed", "failed"}


def test_a_dsn_without_the_original_falls_back_to_in_reply_to() -> None:
    stripped = EXCHANGE_NDR.replace(f"Message-ID: {SENT}\r\nMIME".encode(), b"MIME")
    c = classify(stripped)
    assert c is not None and c.candidates == (SENT,)


def test_an_rfc3834_vacation_reply_is_an_auto_reply() -> None:
    c = classify(VACATION)
    assert c is not None and c.kind == "auto_reply" and c.bounce_type is None
    assert c.candidates == (SENT,)
    assert c.reason == "Auto-Submitted: auto-replied"


def test_other_auto_reply_headers_and_what_is_not_one() -> None:
    base = REPLY
    for header in (b"X-Autoreply: yes", b"X-Autorespond: on", b"Precedence: bulk"):
        c = classify(base.replace(b"Content-Type", header + b"\r\nContent-Type", 1))
        assert c is not None and c.kind == "auto_reply", header
    for header in (
        b"Auto-Submitted: no",
        b"Precedence: list",
        b"X-Auto-Response-Suppress: All",
    ):
        c = classify(base.replace(b"Content-Type", header + b"\r\nContent-Type", 1))
        assert c is not None and c.kind == "reply", header
    # An "out of office" subject alone is no evidence.
    oof_subject = base.replace(b"Subject: Re: Hello Ada", b"Subject: Out of Office: Re: Hello")
    assert classify(oof_subject).kind == "reply"  # type: ignore[union-attr]


def test_sender_text_in_auto_submitted_never_reaches_the_reason() -> None:
    odd = VACATION.replace(b"auto-replied", b"auto replied by ada@example.com")
    c = classify(odd)
    assert c is not None and c.kind == "auto_reply" and c.reason == "Auto-Submitted: other"


def test_a_real_reply_matches_in_reply_to_first_then_references_newest_first() -> None:
    c = classify(REPLY)
    assert c is not None and c.kind == "reply"
    assert c.candidates == (SENT, EARLIER)
    assert c.message_id == "<CAF=reply-5678@mail.example.com>"
    assert c.date is not None and c.date.utcoffset() is not None


def test_a_reply_with_references_only_still_matches() -> None:
    no_irt = REPLY.replace(f"In-Reply-To: {SENT}\r\n".encode(), b"")
    c = classify(no_irt)
    assert c is not None and c.candidates == (SENT, EARLIER)


def test_an_unrelated_message_is_ignored() -> None:
    assert classify(UNRELATED) is None


def test_a_non_dsn_bounce_from_mailer_daemon_with_a_5xx_status_and_the_original_id() -> None:
    exim = crlf(f"""From: Mail Delivery System <Mailer-Daemon@mx.old.example>
To: sales@client1.test
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1abc-0001@mx.old.example>
Date: Tue, 02 Apr 2024 10:00:00 +0000

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  nobody@old.example
    SMTP error from remote mail server after RCPT TO:<nobody@old.example>:
    550 5.1.1 No such user

------ This is a copy of the message, including all the headers. ------

From: sales@client1.test
Message-ID: {SENT}
Subject: Hello Ada
""")
    c = classify(exim)
    assert c is not None and (c.kind, c.bounce_type) == ("bounce", "hard")
    assert c.candidates == (SENT,)
    # The same text from a person, or without a status code, is not a bounce.
    from_person = exim.replace(b"Mailer-Daemon@mx.old.example", b"ada@example.com")
    assert classify(from_person) is None
    no_status = exim.replace(b"550 5.1.1 No such user", b"No such user")
    assert classify(no_status) is None


def test_a_message_without_message_id_gets_a_stable_one() -> None:
    bare = REPLY.replace(b"Message-ID: <CAF=reply-5678@mail.example.com>\r\n", b"")
    first, second = classify(bare), classify(bare)
    assert first is not None and second is not None
    assert first.message_id == second.message_id
    assert first.message_id.endswith("@no-message-id.numail.invalid>")


def test_message_ids_are_found_in_folded_and_commented_headers() -> None:
    assert message_ids("<a@b> (comment)\r\n <c.d@e>") == ["<a@b>", "<c.d@e>"]
    assert message_ids("no ids here") == []


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    classify(raw)


_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n",
        b"Content-Type: message/delivery-status\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/rfc822-headers\r\n",
        b'Content-Type: text/plain; charset="no-such-charset"\r\n',
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"From: MAILER-DAEMON@x\r\n",
        b"In-Reply-To: <a@b>\r\n",
        b"References: <a@b> <c@d\r\n",
        b"Auto-Submitted: auto-replied\r\n",
        b"Date: Mon, 99 Foo 99999999 99:99:99 +9999\r\n",
        b"Message-ID: <\xff@x>\r\n",
        b"Subject: =?utf-8?b?invalid?=\r\n",
        b"Action: failed\r\nStatus: 5.1.1\r\n",
        b"--x\r\n",
        b"--x--\r\n",
        b"\r\n",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.binary(max_size=40)), max_size=40))
def test_mail_shaped_garbage_never_raises(pieces: list[bytes]) -> None:
    classify(b"".join(pieces))


def test_real_samples_cut_anywhere_never_raise() -> None:
    for sample in (POSTFIX_DSN, EXCHANGE_NDR, GMAIL_DSN, DELAYED_DSN, VACATION, REPLY):
        for cut in range(0, len(sample), 37):
            classify(sample[:cut])


# --- hostile ids, the shared bounce rule, read receipts ---------------------------------------


def test_ids_with_control_characters_whitespace_or_over_the_cap_are_no_ids() -> None:
    long_local = "a" * 300
    value = f"<a\x00b@x> <a\x07b@x> <a\x85b@x> <\udcff@x> <{long_local}@x> <ok@x.test>"
    assert message_ids(value) == ["<ok@x.test>"]
    at_cap = "<" + "b" * (MAX_MESSAGE_ID_LENGTH - 4) + "@x>"
    assert message_ids(at_cap) == [at_cap] and len(at_cap) == MAX_MESSAGE_ID_LENGTH
    assert message_ids("<b" + at_cap[1:]) == []
    # A reply whose only In-Reply-To holds a NUL answers nothing it could name.
    poisoned = REPLY.replace(SENT.encode(), b"<a\x00b@client1.test>")
    poisoned = poisoned.replace(EARLIER.encode(), b"<c\x00d@client1.test>")
    assert classify(poisoned) is None
    # A 20,000-character Message-ID of its own: the id derived from its bytes is used instead.
    huge = REPLY.replace(b"<CAF=reply-5678@mail.example.com>", f"<{'x' * 20000}@e>".encode())
    c = classify(huge)
    assert c is not None and c.kind == "reply" and c.candidates[0] == SENT
    assert c.message_id.endswith("@no-message-id.numail.invalid>")


def test_the_send_path_and_the_dsn_path_share_the_bad_address_rule() -> None:
    for status in ("5.1.1", "5.1.10", "5.1.2 bad domain", "5.2.1"):
        assert is_bad_address_status(status), status
        assert is_hard_bounce(550, status)
    for status in ("5.7.1", "5.2.2", "5.4.4", "4.1.1", "2.1.5", "5.1.1234", "", "mailbox 5.1.1"):
        assert not is_bad_address_status(status), status
    assert not is_hard_bounce(450, "5.1.1")
    assert smtp_is_hard_bounce is is_hard_bounce


def test_a_permanent_failure_that_is_not_a_bad_address_is_a_soft_bounce() -> None:
    for status in ("5.7.1", "5.2.2", "5.4.4", "5.0.0"):
        c = classify(POSTFIX_DSN.replace(b"Status: 5.1.1", f"Status: {status}".encode()))
        assert c is not None and (c.kind, c.bounce_type) == ("bounce", "soft"), status
        assert c.failed_recipients == ()
    c = classify(POSTFIX_DSN.replace(b"Status: 5.1.1", b"Status: 5.2.1"))
    assert c is not None and c.bounce_type == "hard"


def test_a_hard_bounce_lists_its_failed_final_and_original_recipients() -> None:
    c = classify(POSTFIX_DSN)
    assert c is not None and c.failed_recipients == ("nobody@example.com",)
    forwarded = POSTFIX_DSN.replace(
        b"Final-Recipient: rfc822; nobody@example.com", b"Final-Recipient: rfc822; <Fwd@Other.test>"
    ).replace(
        b"Original-Recipient: rfc822;nobody@example.com",
        b"Original-Recipient: rfc822;Ada+2BTag@Example.com",
    )
    c = classify(forwarded)
    assert c is not None and c.bounce_type == "hard"
    assert c.failed_recipients == ("fwd@other.test", "ada+tag@example.com")
    # Only recipients that failed as bad addresses are listed.
    two = DELAYED_DSN.replace(
        b"Will-Retry-Until",
        b"X-Other: 1\r\n\r\nFinal-Recipient: rfc822; gone@example.org\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\nX-End",
    )
    c = classify(two)
    assert c is not None and c.bounce_type == "hard"
    assert c.failed_recipients == ("gone@example.org",)


def test_a_non_dsn_bounce_is_hard_only_for_a_bad_address_and_names_its_failed_address() -> None:
    exim = crlf(f"""From: Mail Delivery System <Mailer-Daemon@mx.old.example>
To: sales@client1.test
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1abc-0002@mx.old.example>

The following address(es) failed:

  Nobody@old.example
    SMTP error from remote mail server after RCPT TO:<nobody@old.example>:
    550 5.1.1 No such user

------ This is a copy of the message, including all the headers. ------

From: sales@client1.test
To: nobody@old.example
Message-ID: {SENT}
""")
    c = classify(exim)
    assert c is not None and c.bounce_type == "hard" and c.reason == "non-DSN bounce (5.1.1)"
    assert c.failed_recipients == ("nobody@old.example",)
    listed = exim.replace(b"Subject:", b"X-Failed-Recipients: other@old.example\r\nSubject:")
    assert classify(listed).failed_recipients == ("other@old.example",)  # type: ignore[union-attr]
    policy = classify(exim.replace(b"550 5.1.1", b"550 5.7.1"))
    assert policy is not None and policy.bounce_type == "soft"
    assert policy.reason == "non-DSN bounce (5.7.1)" and policy.failed_recipients == ()


READ_RECEIPT = crlf(f"""From: Ada Lovelace <ada@example.com>
To: sales@client1.test
Subject: Read: Hello Ada
Date: Tue, 2 Apr 2024 12:10:00 +0200
Message-ID: <mdn-42@mail.example.com>
In-Reply-To: {SENT}
References: {SENT}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification;
	boundary="mdn-b"

--mdn-b
Content-Type: text/plain; charset=utf-8

Your message was displayed on Tue, 2 Apr 2024 12:10:00 +0200.

--mdn-b
Content-Type: message/disposition-notification

Reporting-UA: mail.example.com; Thunderbird
Final-Recipient: rfc822;ada@example.com
Original-Message-ID: {SENT}
Disposition: manual-action/MDN-sent-manually; displayed

--mdn-b--
""")


def test_an_rfc8098_read_receipt_is_an_auto_reply_never_a_reply() -> None:
    c = classify(READ_RECEIPT)
    assert c is not None and c.kind == "auto_reply" and c.reason == "RFC 8098 read receipt"
    assert c.candidates == (SENT,)
    # Named by its Original-Message-ID alone, it still matches; with no id at all, ignored.
    bare = READ_RECEIPT.replace(f"In-Reply-To: {SENT}\r\nReferences: {SENT}\r\n".encode(), b"")
    c = classify(bare)
    assert c is not None and c.kind == "auto_reply" and c.candidates == (SENT,)
    assert classify(bare.replace(f"Original-Message-ID: {SENT}\r\n".encode(), b"")) is None
