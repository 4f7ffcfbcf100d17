"""The reply detector on IMAP: a real Dovecot INBOX, a real PostgreSQL under row-level security,
and `python -m numail_workers.reply` as a process.

Mail "went out" as the engine records it (send_jobs sent + sent_messages); replies, bounces and
auto-replies arrive in the INBOX by IMAP APPEND.
"""

from __future__ import annotations

import base64
import dataclasses
import imaplib
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from numail_workers import inbound_detector
from numail_workers.inbound import classify

from numail.audit import hash_identifier
from numail.providers.credentials import PasswordCredentials
from tests.support.mail import DovecotServer, append_to_inbox, start_dovecot
from tests.support.mail_apis import (
    HASH_KEY,
    SendWorld,
    inbound_dsn,
    inbound_reply,
    mark_sent,
    reply_detector,
)
from tests.support.postgres import free_port
from tests.support.tls import ServingCert, make_serving_cert

CANARY = "canary-imap-Pa55-" + base64.b16encode(b"reply").decode()
WRONG_CANARY = "canary-wrong-" + base64.b16encode(b"imap").decode()
USERS = {
    "effects@client1.test": "pw-effects-1",
    "tenant-a@client1.test": "pw-tenant-a-2",
    "tenant-b@client1.test": "pw-tenant-b-3",
    "validity@client1.test": "pw-validity-4",
    "process@client1.test": CANARY,
    "poison@client1.test": "pw-poison-5",
    "after-poison@client1.test": "pw-poison-6",
    "db-poison@client1.test": "pw-poison-7",
    "history@client1.test": "pw-history-8",
    "forward@client1.test": "pw-forward-9",
}


@dataclass
class Mail:
    cert: ServingCert
    dovecot: DovecotServer


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mail]:
    cert = make_serving_cert(tmp_path_factory.mktemp("reply-tls"))
    dovecot = start_dovecot(cert, USERS)
    try:
        yield Mail(cert, dovecot)
    finally:
        dovecot.stop()


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path, mail: Mail) -> Iterator[SendWorld]:
    w = SendWorld.create(pg_dsn, tmp_path)
    w.extra_env["NUMAIL_MAIL_CA_FILE"] = str(mail.cert.ca)
    yield w


def imap_settings(mail: Mail, port: int | None = None) -> dict[str, object]:
    return {
        # The detector only reads; the SMTP server is what the send worker would use.
        "smtp": {"host": "127.0.0.1", "port": 2525, "security": "starttls"},
        "imap": {"host": "127.0.0.1", "port": port or mail.dovecot.imaps_port, "security": "tls"},
    }


def add_mailbox(
    world: SendWorld, mail: Mail, user: str, password: str | None = None, **kw: Any
) -> UUID:
    return world.add_mailbox(
        user.split("@")[0],
        user,
        PasswordCredentials(password=password or USERS[user], username=user),
        settings=imap_settings(mail, **kw),
    )


def run_once(world: SendWorld, detector: Any) -> Any:
    with psycopg.connect(world.worker_dsn) as conn:
        return detector.run_once(conn, force=True)


def lead_state(world: SendWorld, lead: UUID) -> str:
    return str(world.query("SELECT state FROM leads WHERE id = %s", [lead])[0][0])


def job_states(world: SendWorld, lead: UUID) -> dict[str, str]:
    rows = world.query(
        "SELECT idempotency_key, state FROM send_jobs WHERE lead_id = %s AND state <> 'sent'",
        [lead],
    )
    return {str(k): str(s) for k, s in rows}


def pending(world: SendWorld, mailbox: UUID, lead: UUID, *states: str) -> None:
    """Jobs of `lead` in each of `states`, not due for a day, as if a sequence had them queued."""
    for state in states:
        (job,) = world.enqueue(mailbox, [lead])
        world.query(
            "UPDATE send_jobs SET state = %s, idempotency_key = %s, "
            "due_at = now() + interval '1 day', "
            "lease_owner = CASE WHEN %s IN ('claimed', 'sending') THEN 'another-worker' END, "
            "lease_until = CASE WHEN %s IN ('claimed', 'sending') "
            "THEN now() + interval '1 hour' END WHERE id = %s RETURNING id",
            [state, f"{lead}-{state}", state, state, job.job_id],
        )


def unseen(mail: Mail, user: str) -> int:
    context = ssl.create_default_context(cafile=str(mail.cert.ca))
    client = imaplib.IMAP4_SSL("127.0.0.1", mail.dovecot.imaps_port, ssl_context=context)
    try:
        client.login(user, USERS[user])
        client.select("INBOX", readonly=True)
        _, data = client.search(None, "UNSEEN")
        return len(data[0].split())
    finally:
        client.logout()


def test_replies_bounces_and_auto_replies_have_their_effects_once(
    world: SendWorld, mail: Mail
) -> None:
    user = "effects@client1.test"
    mailbox = add_mailbox(world, mail, user)
    emails = ["replier@example.com", "bouncer@example.com", "away@example.com", "slow@example.com"]
    replier, bouncer, away, slow = world.add_leads(emails)
    sent = world.enqueue(mailbox, [replier, bouncer, away, slow])
    mark_sent(world, sent)
    to_replier, to_bouncer, to_away, to_slow = (s.message_id for s in sent)
    pending(world, mailbox, replier, "scheduled", "claimed", "sending", "unknown")
    pending(world, mailbox, bouncer, "scheduled", "claimed")
    pending(world, mailbox, away, "scheduled")
    pending(world, mailbox, slow, "scheduled")

    reply = inbound_reply(to_replier, sender="replier@example.com", to=user, references=["<x@y>"])
    vacation = inbound_reply(
        to_away,
        sender="away@example.com",
        to=user,
        headers="Auto-Submitted: auto-replied\nX-Auto-Response-Suppress: All\n",
    )
    for raw in (
        reply,
        inbound_dsn(to_bouncer, recipient="bouncer@example.com", to=user),
        vacation,
        inbound_dsn(to_slow, recipient="slow@example.com", action="delayed", status="4.4.1"),
        b"From: friend@example.org\r\nSubject: lunch?\r\nMessage-ID: <l@o>\r\n\r\nFriday?\r\n",
        inbound_reply("<never-sent@client1.test>", to=user),
    ):
        append_to_inbox(mail.dovecot, mail.cert.ca, user, raw)

    detector = reply_detector(world, mail_ca_file=str(mail.cert.ca))
    (result,) = run_once(world, detector)
    assert result.error is None
    assert dict(result.counts) == {
        "reply": 1,
        "hard_bounce": 1,
        "auto_reply": 1,
        "soft_bounce": 1,
        "ignored": 1,
        "unmatched": 1,
    }
    rows = world.query(
        "SELECT r.kind, r.bounce_type, r.lead_id, r.in_reply_to, s.message_id, r.received_at "
        "FROM replies r JOIN sent_messages s ON s.id = r.sent_message_id "
        "WHERE r.workspace_id = %s ORDER BY r.kind, r.bounce_type",
        [world.workspace_id],
    )
    assert [(k, b, lead, irt) for k, b, lead, irt, _, _ in rows] == [
        ("auto_reply", None, away, to_away),
        ("bounce", "hard", bouncer, to_bouncer),
        ("bounce", "soft", slow, to_slow),
        ("reply", None, replier, to_replier),
    ]
    assert all(irt == mid and received for _, _, _, irt, mid, received in rows)

    assert [lead_state(world, x) for x in (replier, bouncer, away, slow)] == [
        "replied",
        "bounced",
        "active",
        "active",
    ]
    suppressed = world.query(
        "SELECT email_hash, reason FROM suppression_entries WHERE workspace_id = %s",
        [world.workspace_id],
    )
    assert suppressed == [(hash_identifier(HASH_KEY, "bouncer@example.com"), "hard_bounce")]

    # A reply and a hard bounce cancel the lead's scheduled jobs only. A claimed job is leased
    # to a send worker: locking it after the lead could deadlock with the engine, which refuses
    # to start an attempt for a lead no longer active. Sending and unknown ones may already be
    # with the provider.
    assert job_states(world, replier) == {
        f"{replier}-scheduled": "cancelled",
        f"{replier}-claimed": "claimed",
        f"{replier}-sending": "sending",
        f"{replier}-unknown": "unknown",
    }
    assert job_states(world, bouncer) == {
        f"{bouncer}-scheduled": "cancelled",
        f"{bouncer}-claimed": "claimed",
    }
    assert job_states(world, away) == {f"{away}-scheduled": "scheduled"}
    assert job_states(world, slow) == {f"{slow}-scheduled": "scheduled"}
    (why, owner) = world.query(
        "SELECT last_error, lease_owner FROM send_jobs WHERE idempotency_key = %s",
        [f"{replier}-scheduled"],
    )[0]
    assert "stops the lead's sequence" in why and owner is None
    assert world.query(
        "SELECT lease_owner FROM send_jobs WHERE idempotency_key = %s", [f"{replier}-claimed"]
    ) == [("another-worker",)]
    assert detector.metrics.cancelled_jobs._value.get() == 2

    # Reading never marks anything seen: the mailbox's owner still finds them unread.
    assert unseen(mail, user) == 6

    # The cursor: a second run reads nothing; the same reply delivered again is a duplicate.
    (validity, last_uid) = world.query(
        "SELECT uidvalidity, last_uid FROM inbound_cursors WHERE mailbox_id = %s", [mailbox]
    )[0]
    assert validity and last_uid == 6
    (again,) = run_once(world, detector)
    assert again.error is None and not again.counts
    append_to_inbox(mail.dovecot, mail.cert.ca, user, reply)
    (third,) = run_once(world, detector)
    assert dict(third.counts) == {"duplicate": 1}
    assert world.query(
        "SELECT count(*) FROM replies WHERE workspace_id = %s", [world.workspace_id]
    ) == [(4,)]


def test_a_new_uidvalidity_reads_the_lookback_again_without_new_effects(
    world: SendWorld, mail: Mail
) -> None:
    user = "validity@client1.test"
    mailbox = add_mailbox(world, mail, user)
    (lead,) = world.add_leads(["v@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    mark_sent(world, [job])
    append_to_inbox(mail.dovecot, mail.cert.ca, user, inbound_reply(job.message_id, to=user))
    detector = reply_detector(world, mail_ca_file=str(mail.cert.ca))
    (first,) = run_once(world, detector)
    assert dict(first.counts) == {"reply": 1}
    world.query(
        "UPDATE inbound_cursors SET uidvalidity = 1 WHERE mailbox_id = %s RETURNING 1", [mailbox]
    )
    (reread,) = run_once(world, detector)
    assert dict(reread.counts) == {"duplicate": 1}
    (validity,) = world.query(
        "SELECT uidvalidity FROM inbound_cursors WHERE mailbox_id = %s", [mailbox]
    )[0]
    assert validity != 1


def test_a_reply_in_workspace_b_to_a_message_of_workspace_a_is_not_matched(
    pg_dsn: str, tmp_path: Path, mail: Mail
) -> None:
    a = SendWorld.create(pg_dsn, tmp_path / "a")
    b = SendWorld.create(pg_dsn, tmp_path / "b")
    mailbox_a = add_mailbox(a, mail, "tenant-a@client1.test")
    add_mailbox(b, mail, "tenant-b@client1.test")
    (lead_a,) = a.add_leads(["shared-lead@example.com"])
    (job_a,) = a.enqueue(mailbox_a, [lead_a])
    mark_sent(a, [job_a])
    pending(a, mailbox_a, lead_a, "scheduled")
    # The lead answers, but the message lands in workspace B's mailbox.
    append_to_inbox(
        mail.dovecot,
        mail.cert.ca,
        "tenant-b@client1.test",
        inbound_reply(job_a.message_id, to="tenant-b@client1.test"),
    )
    (result,) = run_once(b, reply_detector(b, mail_ca_file=str(mail.cert.ca)))
    assert dict(result.counts) == {"unmatched": 1}
    assert a.query(
        "SELECT count(*) FROM replies WHERE workspace_id = ANY(%s)",
        [[a.workspace_id, b.workspace_id]],
    ) == [(0,)]
    assert lead_state(a, lead_a) == "active"
    assert job_states(a, lead_a) == {f"{lead_a}-scheduled": "scheduled"}


def test_an_unreachable_or_refusing_imap_server_keeps_the_cursor_and_counts_errors(
    world: SendWorld, mail: Mail, caplog: pytest.LogCaptureFixture
) -> None:
    closed = add_mailbox(world, mail, "effects@client1.test", port=free_port())
    refused = world.add_mailbox(
        "wrong",
        "tenant-a@client1.test",
        PasswordCredentials(password=WRONG_CANARY, username="tenant-a@client1.test"),
        settings=imap_settings(mail),
    )
    detector = reply_detector(world, mail_ca_file=str(mail.cert.ca))
    with caplog.at_level("DEBUG"):
        results = run_once(world, detector)
    assert {r.mailbox_id for r in results} == {closed, refused}
    assert all(r.error for r in results)
    assert detector.metrics.poll_errors.labels("imap")._value.get() == 2
    assert world.query(
        "SELECT count(*) FROM inbound_cursors WHERE workspace_id = %s", [world.workspace_id]
    ) == [(0,)]
    assert "could not read inbound mail" in caplog.text
    assert WRONG_CANARY not in caplog.text
    # Backed off: not due again right away.
    with psycopg.connect(world.worker_dsn) as conn:
        assert detector.run_once(conn) == []


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_the_process_detects_a_reply_serves_metrics_stops_on_sigterm_and_logs_no_secret(
    world: SendWorld, mail: Mail
) -> None:
    user = "process@client1.test"
    mailbox = add_mailbox(world, mail, user)
    world.add_mailbox(
        "wrong",
        "tenant-b@client1.test",
        PasswordCredentials(password=WRONG_CANARY, username="tenant-b@client1.test"),
        settings=imap_settings(mail),
    )
    (lead,) = world.add_leads(["proc@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    mark_sent(world, [job])
    append_to_inbox(mail.dovecot, mail.cert.ca, user, inbound_reply(job.message_id, to=user))
    port = free_port()
    log = world.root / "reply.log"
    env = world.worker_env(
        NUMAIL_METRICS_PORT=str(port),
        NUMAIL_REPLY_POLL_SECONDS="0.5",
        NUMAIL_REPLY_BACKOFF_MAX_SECONDS="1",
        NUMAIL_LOG_LEVEL="DEBUG",
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "numail_workers.reply"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        world.wait_until(
            lambda: (
                world.query(
                    "SELECT count(*) FROM replies WHERE workspace_id = %s", [world.workspace_id]
                )
                == [(1,)]
            ),
            30,
            "the reply",
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                samples = _metrics(port)
                if samples.get('numail_reply_poll_errors_total{provider="imap"}', 0) >= 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert samples['numail_reply_inbound_total{kind="reply"}'] == 1
        assert samples['numail_reply_polls_total{provider="imap"}'] >= 2
        assert "numail_reply_detection_implemented" not in "".join(samples)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert lead_state(world, lead) == "replied"
    output = log.read_text(errors="replace")
    assert "SIGTERM received" in output and "reply for lead" in output, output[-3000:]
    for secret in (CANARY, WRONG_CANARY):
        for form in (secret, base64.b64encode(secret.encode()).decode(), secret[4:-4]):
            assert form not in output
    assert base64.b64encode(world.dek.key).decode() not in output
    assert "proc@example.com" not in output


def append_old(mail: Mail, user: str, raw: bytes, days: int) -> None:
    """APPEND with an INTERNALDATE `days` ago, as mail that was in the INBOX long before."""
    context = ssl.create_default_context(cafile=str(mail.cert.ca))
    client = imaplib.IMAP4_SSL("127.0.0.1", mail.dovecot.imaps_port, ssl_context=context)
    try:
        client.login(user, USERS[user])
        stamp = imaplib.Time2Internaldate(time.time() - days * 86400)
        status, _ = client.append("INBOX", None, stamp, raw)
        assert status == "OK", status
    finally:
        client.logout()


def cursor_of(world: SendWorld, mailbox: UUID) -> tuple[Any, ...] | None:
    rows = world.query(
        "SELECT uidvalidity, last_uid FROM inbound_cursors WHERE mailbox_id = %s", [mailbox]
    )
    return rows[0] if rows else None


def test_hostile_messages_do_not_stall_the_mailbox_or_the_others(
    world: SendWorld, mail: Mail
) -> None:
    first, second = "poison@client1.test", "after-poison@client1.test"
    # Mailboxes are polled in (namespace, name) order: "after-poison" comes first, so make the
    # poisoned one sort first by its name.
    poisoned = world.add_mailbox(
        "a-poison",
        first,
        PasswordCredentials(password=USERS[first], username=first),
        settings=imap_settings(mail),
    )
    other = add_mailbox(world, mail, second)
    real, long_id, later = world.add_leads(
        ["real@example.com", "long@example.com", "later@example.com"]
    )
    sent = world.enqueue(poisoned, [real, long_id])
    (to_later,) = world.enqueue(other, [later])
    mark_sent(world, [*sent, to_later])
    to_real, to_long = (s.message_id for s in sent)

    nul = inbound_reply("<a\x00b@client1.test>", to=first)
    huge = inbound_reply(to_long, to=first, message_id=f"<{secrets.token_hex(10000)}@e.test>")
    for raw in (nul, huge, inbound_reply(to_real, to=first)):
        append_to_inbox(mail.dovecot, mail.cert.ca, first, raw)
    append_to_inbox(mail.dovecot, mail.cert.ca, second, inbound_reply(to_later.message_id))

    detector = reply_detector(world, mail_ca_file=str(mail.cert.ca))
    results = {r.mailbox_id: r for r in run_once(world, detector)}
    assert set(results) == {poisoned, other}
    assert all(r.error is None for r in results.values())
    # Dovecot stores the NUL as 0x80 (a literal can't hold NUL), an id that matches nothing;
    # the huge-id one is a reply under an id made from its bytes, its own being too long.
    assert dict(results[poisoned].counts) == {"unmatched": 1, "reply": 2}
    assert dict(results[other].counts) == {"reply": 1}
    assert [lead_state(world, x) for x in (real, long_id, later)] == ["replied"] * 3
    ids = world.query(
        "SELECT message_id FROM replies WHERE mailbox_id = %s AND lead_id = %s",
        [poisoned, long_id],
    )
    assert ids[0][0].endswith("@no-message-id.numail.invalid>")
    assert cursor_of(world, poisoned)[1] == 3  # type: ignore[index]

    again = run_once(world, detector)
    assert [(r.error, dict(r.counts)) for r in again] == [(None, {}), (None, {})]


def test_a_message_the_database_refuses_is_unreadable_and_the_cursor_moves_past_it(
    world: SendWorld, mail: Mail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: should an id the database can't take get past the classifier, the
    message is counted unreadable and skipped, and the next one is still recorded."""
    user = "db-poison@client1.test"
    mailbox = add_mailbox(world, mail, user)
    (lead,) = world.add_leads(["db@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    mark_sent(world, [job])

    def hostile(raw: bytes) -> Any:
        c = classify(raw)
        if c is not None and b"X-Poison: nul" in raw:
            return dataclasses.replace(c, message_id="<a\x00b@x>")
        if c is not None and b"X-Poison: long" in raw:
            return dataclasses.replace(c, message_id=f"<{secrets.token_hex(10000)}@x>")
        return c

    monkeypatch.setattr(inbound_detector, "classify", hostile)
    for header in ("X-Poison: nul\r\n", "X-Poison: long\r\n", ""):
        append_to_inbox(
            mail.dovecot, mail.cert.ca, user, inbound_reply(job.message_id, headers=header)
        )
    detector = reply_detector(world, mail_ca_file=str(mail.cert.ca))
    (result,) = run_once(world, detector)
    assert result.error is None
    assert dict(result.counts) == {"unreadable": 2, "reply": 1}
    assert detector.metrics.inbound.labels("unreadable")._value.get() == 2
    assert lead_state(world, lead) == "replied"
    assert cursor_of(world, mailbox)[1] == 3  # type: ignore[index]
    (again,) = run_once(world, detector)
    assert again.error is None and not again.counts


def test_an_unexpected_failure_of_one_mailbox_is_its_error_and_the_others_are_polled(
    world: SendWorld, mail: Mail
) -> None:
    broken = add_mailbox(world, mail, "tenant-a@client1.test")
    fine = add_mailbox(world, mail, "tenant-b@client1.test")
    (lead,) = world.add_leads(["fine@example.com"])
    (job,) = world.enqueue(fine, [lead])
    mark_sent(world, [job])
    append_to_inbox(
        mail.dovecot, mail.cert.ca, "tenant-b@client1.test", inbound_reply(job.message_id)
    )
    detector = reply_detector(world, mail_ca_file=str(mail.cert.ca))
    opener = detector.open_reader

    def open_reader(profile: Any, *args: Any) -> Any:
        if profile.id == broken:
            raise RuntimeError("a bug nobody expected")
        return opener(profile, *args)

    detector.open_reader = open_reader
    results = {r.mailbox_id: r for r in run_once(world, detector)}
    assert results[broken].error == "unexpected RuntimeError"
    # (tenant-b's INBOX is shared with another test: only the reply is this one's.)
    assert results[fine].error is None and results[fine].counts["reply"] == 1
    assert detector.metrics.poll_errors.labels("imap")._value.get() == 1
    # Backed off: only the healthy mailbox is due again right away.
    with psycopg.connect(world.worker_dsn) as conn:
        detector._due[fine] = 0.0
        assert [r.mailbox_id for r in detector.run_once(conn)] == [fine]


def test_a_first_poll_never_reads_mail_older_than_the_lookback(
    world: SendWorld, mail: Mail
) -> None:
    user = "history@client1.test"
    mailbox = add_mailbox(world, mail, user)
    (old_lead, new_lead) = world.add_leads(["old@example.com", "new@example.com"])
    old_job, new_job = world.enqueue(mailbox, [old_lead, new_lead])
    mark_sent(world, [old_job, new_job])
    for _ in range(3):
        append_old(mail, user, inbound_reply(old_job.message_id, to=user), days=60)

    detector = reply_detector(world, mail_ca_file=str(mail.cert.ca))
    (first,) = run_once(world, detector)
    assert first.error is None and not first.counts
    assert cursor_of(world, mailbox)[1] == 3  # type: ignore[index]
    (second,) = run_once(world, detector)
    assert second.error is None and not second.counts
    append_to_inbox(mail.dovecot, mail.cert.ca, user, inbound_reply(new_job.message_id, to=user))
    (third,) = run_once(world, detector)
    assert dict(third.counts) == {"reply": 1}
    assert [lead_state(world, x) for x in (old_lead, new_lead)] == ["active", "replied"]


def test_a_hard_bounce_that_does_not_name_the_lead_is_soft_and_suppresses_no_one(
    world: SendWorld, mail: Mail
) -> None:
    user = "forward@client1.test"
    mailbox = add_mailbox(world, mail, user)
    named, forwarded, policy = world.add_leads(
        ["Named@Example.com", "fwd@example.com", "policy@example.com"]
    )
    sent = world.enqueue(mailbox, [named, forwarded, policy])
    mark_sent(world, sent)
    to_named, to_forwarded, to_policy = (s.message_id for s in sent)
    for lead in (named, forwarded, policy):
        pending(world, mailbox, lead, "scheduled")
    for raw in (
        inbound_dsn(to_named, recipient="named@EXAMPLE.com", to=user),  # case-insensitive
        inbound_dsn(to_forwarded, recipient="someone-else@forwarded.test", to=user),
        inbound_dsn(to_policy, recipient="policy@example.com", status="5.7.1", to=user),
    ):
        append_to_inbox(mail.dovecot, mail.cert.ca, user, raw)
    (result,) = run_once(world, reply_detector(world, mail_ca_file=str(mail.cert.ca)))
    assert dict(result.counts) == {"hard_bounce": 1, "soft_bounce": 2}
    assert [lead_state(world, x) for x in (named, forwarded, policy)] == [
        "bounced",
        "active",
        "active",
    ]
    assert world.query(
        "SELECT email_hash FROM suppression_entries WHERE workspace_id = %s", [world.workspace_id]
    ) == [(hash_identifier(HASH_KEY, "Named@Example.com"),)]
    assert job_states(world, forwarded) == {f"{forwarded}-scheduled": "scheduled"}
    assert world.query(
        "SELECT count(*) FROM replies WHERE workspace_id = %s AND bounce_type = 'soft'",
        [world.workspace_id],
    ) == [(2,)]
