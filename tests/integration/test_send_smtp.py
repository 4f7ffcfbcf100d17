"""Send workers as processes against a real PostgreSQL, an SMTP sink with AUTH and a real Dovecot.

Each test gets its own workspace, so jobs of one never reach the workers of another.
"""

from __future__ import annotations

import base64
import imaplib
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from numail.audit import hash_identifier
from numail.providers.credentials import PasswordCredentials
from tests.support.mail import DovecotServer, start_dovecot
from tests.support.mail_apis import HASH_KEY, MaildirSent, SendWorld, SmtpSink
from tests.support.tls import ServingCert, make_serving_cert

SALES = "sales@client1.test"
SUPPORT = "support@client1.test"
# aiosmtpd warns for implicit TLS, where AUTH is inside TLS from the first byte.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

PASSWORDS = {SALES: "app-password-sales-1", SUPPORT: "app-password-support-2"}


@dataclass
class Mail:
    cert: ServingCert
    dovecot: DovecotServer
    starttls: SmtpSink
    tls: SmtpSink


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mail]:
    cert = make_serving_cert(tmp_path_factory.mktemp("mail-tls"))
    dovecot = start_dovecot(cert, PASSWORDS)
    starttls = SmtpSink(cert, security="starttls", passwords=PASSWORDS).start()
    tls = SmtpSink(cert, security="tls", passwords=PASSWORDS).start()
    for user in PASSWORDS:
        MaildirSent(dovecot.root).prepare(user)
    try:
        yield Mail(cert, dovecot, starttls, tls)
    finally:
        starttls.stop()
        tls.stop()
        dovecot.stop()


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path, mail: Mail) -> Iterator[SendWorld]:
    w = SendWorld.create(pg_dsn, tmp_path)
    w.extra_env["NUMAIL_MAIL_CA_FILE"] = str(mail.cert.ca)
    try:
        yield w
    finally:
        w.stop_workers()


def smtp_settings(mail: Mail, security: str = "starttls", append: bool = True) -> dict[str, object]:
    sink = mail.starttls if security == "starttls" else mail.tls
    imap_port, imap_security = (
        (mail.dovecot.imaps_port, "tls")
        if security == "starttls"
        else (mail.dovecot.imap_port, "starttls")
    )
    return {
        "displayName": "Sales at Client 1",
        "smtp": {"host": "127.0.0.1", "port": sink.port, "security": security},
        "imap": {"host": "127.0.0.1", "port": imap_port, "security": imap_security},
        "appendToSent": append,
    }


def sent_folder_has(mail: Mail, user: str, message_id: str) -> bool:
    context = ssl.create_default_context(cafile=str(mail.cert.ca))
    client = imaplib.IMAP4_SSL("127.0.0.1", mail.dovecot.imaps_port, ssl_context=context)
    try:
        client.login(user, PASSWORDS[user])
        assert client.select('"Sent"', readonly=True)[0] == "OK"
        _, data = client.search(None, "HEADER", "Message-ID", f'"{message_id}"')
        return bool(data[0].split())
    finally:
        client.logout()


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_each_message_arrives_once_with_its_fixed_message_id_and_the_job_is_sent(
    world: SendWorld, mail: Mail, security: str
) -> None:
    sink = mail.starttls if security == "starttls" else mail.tls
    mailbox = world.add_mailbox(
        "sales",
        SALES,
        PasswordCredentials(password=PASSWORDS[SALES], username=SALES),
        settings=smtp_settings(mail, security),
    )
    leads = world.add_leads([f"lead{i}-{security}@example.com" for i in range(3)])
    enqueued = world.enqueue(mailbox, leads)
    world.start_worker()
    world.wait_for_states({"sent": 3})

    for job in enqueued:
        assert sink.log.count(job.message_id) == 1
        (raw,) = sink.log.find(job.message_id)
        msg = message_from_bytes(raw, policy=policy.default)
        assert msg["Message-ID"] == job.message_id
        assert job.message_id.endswith("@client1.test>")
        assert msg["From"] == f"Sales at Client 1 <{SALES}>"
        assert msg["Subject"] == "Hello Ada"
        assert msg["List-Unsubscribe"].startswith(f"<mailto:{SALES}?subject=unsubscribe")
        # Dot-stuffing went both ways: the line that is a lone dot survived.
        assert msg.get_content().splitlines()[1:3] == [".", "A line that starts with a dot, above."]
        assert sent_folder_has(mail, SALES, job.message_id), "the worker filed no copy in Sent"
        (attempt,) = world.attempts(job.job_id)
        assert attempt["outcome"] == "sent" and attempt["attempt"] == 1
        row = world.job(job.job_id)
        assert row["state"] == "sent" and row["lease_owner"] is None and row["sent_at"]
    sent = world.query(
        "SELECT message_id FROM sent_messages WHERE workspace_id = %s", [world.workspace_id]
    )
    assert sorted(r[0] for r in sent) == sorted(j.message_id for j in enqueued)


def test_enqueueing_the_same_idempotency_key_twice_makes_one_job(
    world: SendWorld, mail: Mail
) -> None:
    import psycopg

    from numail.db import jobs as jobs_db

    mailbox = world.add_mailbox(
        "sales", SALES, PasswordCredentials(password=PASSWORDS[SALES]), settings=smtp_settings(mail)
    )
    (lead,) = world.add_leads(["once@example.com"])
    job = jobs_db.NewJob(mailbox, lead, "welcome-once", subject="s", body="b")
    with psycopg.connect(world.worker_dsn) as conn:
        first = jobs_db.enqueue(conn, world.workspace_id, [job, job])
        again = jobs_db.enqueue(conn, world.workspace_id, [job])
    assert [e.created for e in first] == [True, False]
    assert not again[0].created
    assert {e.job_id for e in first + again} == {first[0].job_id}
    assert {e.message_id for e in first + again} == {first[0].message_id}
    assert world.states() == {"scheduled": 1}


def test_a_suppressed_recipient_is_never_sent(world: SendWorld, mail: Mail) -> None:
    mailbox = world.add_mailbox(
        "sales", SALES, PasswordCredentials(password=PASSWORDS[SALES]), settings=smtp_settings(mail)
    )
    gone, kept = world.add_leads(["gone@example.com", "kept@example.com"])
    world.suppress("gone@example.com")
    suppressed, sent = world.enqueue(mailbox, [gone, kept])
    world.start_worker()
    world.wait_for_states({"sent": 1, "suppressed": 1})
    assert world.job(suppressed.job_id)["state"] == "suppressed"
    assert world.attempts(suppressed.job_id) == []
    assert mail.starttls.log.count(suppressed.message_id) == 0
    assert mail.starttls.log.count(sent.message_id) == 1


def test_a_daily_cap_holds_across_three_concurrent_workers(world: SendWorld, mail: Mail) -> None:
    mailbox = world.add_mailbox(
        "sales",
        SALES,
        PasswordCredentials(password=PASSWORDS[SALES]),
        settings=smtp_settings(mail, append=False),
        daily_cap=7,
    )
    leads = world.add_leads([f"cap{i}@example.com" for i in range(30)])
    enqueued = world.enqueue(mailbox, leads)
    for _ in range(3):
        world.start_worker(NUMAIL_SEND_BATCH="4")
    world.wait_for_states({"sent": 7, "scheduled": 23})
    time.sleep(2.0)  # several more polls by every worker: still 7
    assert world.states() == {"sent": 7, "scheduled": 23}
    assert sum(mail.starttls.log.count(j.message_id) for j in enqueued) == 7
    (reserved,) = world.query(
        "SELECT reserved FROM mailbox_daily_sends WHERE mailbox_id = %s", [mailbox]
    )
    assert reserved == (7,)
    senders = {
        w.name for w in world.workers if "sent 0," not in w.output() and "sent " in w.output()
    }
    assert senders, "no worker logged a send"


def test_a_4xx_is_retried_with_backoff_and_then_sent(world: SendWorld, mail: Mail) -> None:
    mailbox = world.add_mailbox(
        "sales", SALES, PasswordCredentials(password=PASSWORDS[SALES]), settings=smtp_settings(mail)
    )
    (lead,) = world.add_leads(["busy@example.com"])
    mail.starttls.script("rcpt", "451 4.7.1 Try again later", recipient="busy@example.com", times=2)
    (job,) = world.enqueue(mailbox, [lead])
    world.start_worker()
    world.wait_for_states({"sent": 1})
    attempts = world.attempts(job.job_id)
    assert [a["outcome"] for a in attempts] == ["transient", "transient", "sent"]
    assert attempts[0]["reply_code"] == 451 and "4.7.1" in attempts[0]["detail"]
    assert mail.starttls.log.count(job.message_id) == 1


def test_a_5xx_fails_the_job_with_the_reply_and_a_hard_bounce_suppresses_the_recipient(
    world: SendWorld, mail: Mail
) -> None:
    mailbox = world.add_mailbox(
        "sales", SALES, PasswordCredentials(password=PASSWORDS[SALES]), settings=smtp_settings(mail)
    )
    nobody, spammy = world.add_leads(["nobody@example.com", "spammy@example.com"])
    mail.starttls.script(
        "rcpt", "550 5.1.1 <nobody@example.com>: user unknown", recipient="nobody@example.com"
    )
    mail.starttls.script(
        "data", "554 5.7.1 Message rejected as spam", recipient="spammy@example.com"
    )
    bounced, rejected = world.enqueue(mailbox, [nobody, spammy])
    world.start_worker()
    world.wait_for_states({"failed": 2})

    row = world.job(bounced.job_id)
    assert row["last_reply"].startswith("RCPT TO: 550 5.1.1")
    assert world.attempts(bounced.job_id)[0]["outcome"] == "permanent"
    entries = world.query(
        "SELECT reason FROM suppression_entries WHERE workspace_id = %s AND email_hash = %s",
        [world.workspace_id, hash_identifier(HASH_KEY, "nobody@example.com")],
    )
    assert entries == [("hard_bounce",)]
    assert world.query("SELECT state FROM leads WHERE id = %s", [nobody]) == [("bounced",)]

    assert "554 5.7.1" in world.job(rejected.job_id)["last_reply"]
    assert world.query("SELECT state FROM leads WHERE id = %s", [spammy]) == [("active",)]
    assert world.query(
        "SELECT count(*) FROM suppression_entries WHERE workspace_id = %s", [world.workspace_id]
    ) == [(1,)]


def test_no_credential_byte_reaches_the_logs(world: SendWorld, mail: Mail) -> None:
    canary = "canary-Pa55word-" + base64.b16encode(b"numail").decode()
    mail.starttls.passwords[SUPPORT] = canary
    good = world.add_mailbox(
        "support",
        SUPPORT,
        PasswordCredentials(password=canary, imap_password=PASSWORDS[SUPPORT]),
        settings=smtp_settings(mail),
    )
    wrong_canary = "canary-wrong-" + base64.b16encode(b"secret").decode()
    bad = world.add_mailbox(
        "sales", SALES, PasswordCredentials(password=wrong_canary), settings=smtp_settings(mail)
    )
    good_lead, bad_lead = world.add_leads(["canary1@example.com", "canary2@example.com"])
    (sent,) = world.enqueue(good, [good_lead])
    (refused,) = world.enqueue(bad, [bad_lead])
    worker = world.start_worker(NUMAIL_LOG_LEVEL="DEBUG", NUMAIL_SEND_MAX_ATTEMPTS="2")
    world.wait_for_states({"sent": 1, "failed": 1})
    worker.terminate()
    assert mail.starttls.log.count(sent.message_id) == 1
    assert "gave up after 2 attempts: AUTH refused (535)" in world.job(refused.job_id)["last_error"]

    logs = world.all_logs()
    assert "sent 1, retry 0" in logs and "AUTH refused" in logs, logs[-2000:]
    for secret in (canary, wrong_canary, PASSWORDS[SUPPORT]):
        for form in (secret, base64.b64encode(secret.encode()).decode(), secret[4:-4]):
            assert form not in logs
    plain = base64.b64encode(f"\0{SUPPORT}\0{canary}".encode()).decode()
    assert plain not in logs
    assert base64.b64encode(world.dek.key).decode() not in logs


def test_credentials_that_fail_to_open_are_reported_without_their_bytes(
    world: SendWorld, mail: Mail
) -> None:
    """The worker logs why a mailbox's credentials would not open (the engine's 'could not open
    its credentials' line): a malformed document and a tampered frame, each holding a canary."""
    canary = "canary-Malformed-" + base64.b16encode(b"doc").decode()
    stray = "canary-Stray-" + base64.b16encode(b"field").decode()
    malformed = world.add_mailbox(
        "sales",
        SALES,
        json.dumps({"password": canary, "colour": stray}).encode(),
        settings=smtp_settings(mail),
    )
    tampered_canary = "canary-Tampered-" + base64.b16encode(b"frame").decode()
    tampered = world.add_mailbox(
        "support",
        SUPPORT,
        PasswordCredentials(password=tampered_canary),
        settings=smtp_settings(mail),
    )
    sealed = world.credentials_dir / "numail-mailbox-support" / "sealed"
    frame = bytearray(sealed.read_bytes())
    frame[-1] ^= 0x01
    sealed.write_bytes(bytes(frame))
    leads = world.add_leads(["opening1@example.com", "opening2@example.com"])
    jobs = [*world.enqueue(malformed, leads[:1]), *world.enqueue(tampered, leads[1:])]
    worker = world.start_worker(NUMAIL_LOG_LEVEL="DEBUG")
    world.wait_until(
        lambda: world.all_logs().count("could not open its credentials") >= 2,
        30,
        "both mailboxes to fail to open",
    )
    worker.terminate()
    for job in jobs:
        assert world.job(job.job_id)["state"] == "scheduled"  # retried later, never sent
    logs = world.all_logs()
    assert "could not open its credentials: unknown field(s)" in logs
    assert "could not open its credentials: sealed frame failed authentication" in logs
    for secret in (canary, stray, tampered_canary):
        for form in (secret, base64.b64encode(secret.encode()).decode(), secret[4:-4]):
            assert form not in logs


def test_sigterm_finishes_the_message_in_hand_and_releases_the_rest(
    world: SendWorld, mail: Mail
) -> None:
    mailbox = world.add_mailbox(
        "sales",
        SALES,
        PasswordCredentials(password=PASSWORDS[SALES]),
        settings=smtp_settings(mail, append=False),
    )
    leads = world.add_leads([f"term{i}@example.com" for i in range(400)])
    enqueued = world.enqueue(mailbox, leads)
    first = world.start_worker(NUMAIL_SEND_BATCH="100")
    world.wait_until(lambda: world.states()["sent"] >= 20, 30, "some sends")
    assert first.terminate(timeout=15) == 0
    states = world.states()
    assert set(states) <= {"sent", "scheduled"}, states  # nothing left claimed or in flight
    assert "SIGTERM received" in first.output()
    world.start_worker()
    world.wait_for_states({"sent": 400}, timeout=60)
    counts = mail.starttls.log.snapshot()
    assert all(counts[j.message_id] == 1 for j in enqueued)
