"""Crash windows: a worker process dies (os._exit(137) at a failpoint, as SIGKILL would leave it)
at each point where a send could be lost or doubled, and a second worker picks up after it.

The SMTP sink `provider_copy` files every message it accepts in the sender's Sent folder before
it answers 250, as Gmail and Microsoft 365 do; `plain` keeps no copy, so the worker APPENDs one
(mailbox setting appendToSent) and settlement relies on that.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from numail.providers.credentials import PasswordCredentials
from tests.support.mail import DovecotServer, start_dovecot
from tests.support.mail_apis import MaildirSent, SendWorld, SmtpSink, TcpGate
from tests.support.tls import ServingCert, make_serving_cert

SALES = "sales@client2.test"
PASSWORD = "app-password-crash-1"


@dataclass
class Mail:
    cert: ServingCert
    dovecot: DovecotServer
    provider_copy: SmtpSink
    plain: SmtpSink
    imap_gate: TcpGate


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mail]:
    cert = make_serving_cert(tmp_path_factory.mktemp("crash-tls"))
    dovecot = start_dovecot(cert, {SALES: PASSWORD})
    sent = MaildirSent(dovecot.root)
    sent.prepare(SALES)
    provider_copy = SmtpSink(cert, passwords={SALES: PASSWORD}, sent_copy=sent).start()
    plain = SmtpSink(cert, passwords={SALES: PASSWORD}).start()
    gate = TcpGate(dovecot.imaps_port)
    try:
        yield Mail(cert, dovecot, provider_copy, plain, gate)
    finally:
        gate.shut()
        provider_copy.stop()
        plain.stop()
        dovecot.stop()


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path, mail: Mail) -> Iterator[SendWorld]:
    w = SendWorld.create(pg_dsn, tmp_path)
    w.extra_env["NUMAIL_MAIL_CA_FILE"] = str(mail.cert.ca)
    try:
        yield w
    finally:
        w.stop_workers()


def add_sales(world: SendWorld, mail: Mail, *, copy: str, imap_port: int | None = None) -> object:
    sink = mail.provider_copy if copy == "provider" else mail.plain
    return world.add_mailbox(
        "sales",
        SALES,
        PasswordCredentials(password=PASSWORD),
        settings={
            "smtp": {"host": "127.0.0.1", "port": sink.port, "security": "starttls"},
            "imap": {
                "host": "127.0.0.1",
                "port": imap_port or mail.dovecot.imaps_port,
                "security": "tls",
            },
            "appendToSent": copy == "worker",
        },
    )


def test_killed_after_claiming_and_before_sending_the_job_is_sent_once(
    world: SendWorld, mail: Mail
) -> None:
    mailbox = add_sales(world, mail, copy="provider")
    (lead,) = world.add_leads(["claimed@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    crashed = world.start_worker("crashed", NUMAIL_FAILPOINT="send.after-claim")
    assert crashed.wait(30) == 137
    assert "failpoint send.after-claim reached" in crashed.output()
    row = world.job(job.job_id)
    assert row["state"] == "claimed" and row["lease_owner"]
    assert mail.provider_copy.log.count(job.message_id) == 0

    world.start_worker("successor")
    world.wait_for_states({"sent": 1})
    assert mail.provider_copy.log.count(job.message_id) == 1
    assert [a["outcome"] for a in world.attempts(job.job_id)] == ["sent"]


@pytest.mark.parametrize(
    ("copy", "failpoint"),
    [("provider", "send.after-data"), ("worker", "send.after-append")],
    ids=["the provider files the copy", "the worker appends the copy"],
)
def test_killed_after_the_server_accepted_the_message_it_is_settled_and_not_resent(
    world: SendWorld, mail: Mail, copy: str, failpoint: str
) -> None:
    sink = mail.provider_copy if copy == "provider" else mail.plain
    mailbox = add_sales(world, mail, copy=copy)
    (lead,) = world.add_leads([f"accepted-{copy}@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    crashed = world.start_worker("crashed", NUMAIL_FAILPOINT=failpoint)
    assert crashed.wait(30) == 137
    assert sink.log.count(job.message_id) == 1
    assert world.job(job.job_id)["state"] == "sending"  # accepted, but never recorded

    successor = world.start_worker("successor")
    world.wait_for_states({"sent": 1})
    assert sink.log.count(job.message_id) == 1, "the message was sent twice"
    (attempt,) = world.attempts(job.job_id)
    assert attempt["outcome"] == "unknown" and attempt["settled"] == "found"
    metrics = successor.metrics()
    assert metrics['numail_send_settled_total{outcome="found"}'] == 1
    assert metrics["numail_send_sent_total"] == 0
    assert "the provider has it, not sending again" in successor.output()


def test_an_unknown_outcome_the_provider_has_no_record_of_is_sent_again(
    world: SendWorld, mail: Mail
) -> None:
    mailbox = add_sales(world, mail, copy="provider")
    (lead,) = world.add_leads(["stalled@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    mail.provider_copy.stall.set()  # DATA arrives and is never answered
    try:
        worker = world.start_worker(NUMAIL_PROVIDER_TIMEOUT="1")
        world.wait_until(
            lambda: (
                world.attempts(job.job_id)[:1] != []
                and world.attempts(job.job_id)[0]["outcome"] == "unknown"
            ),
            30,
            "the attempt to time out as unknown",
        )
    finally:
        mail.provider_copy.stall.clear()
    world.wait_for_states({"sent": 1})
    assert mail.provider_copy.log.count(job.message_id) == 1
    first, second = world.attempts(job.job_id)
    assert (first["outcome"], first["settled"]) == ("unknown", "not_found")
    assert second["outcome"] == "sent"
    assert worker.metrics()['numail_send_settled_total{outcome="not_found"}'] == 1


def test_killed_while_the_provider_is_unreachable_it_stays_unknown_then_settles(
    world: SendWorld, mail: Mail
) -> None:
    mailbox = add_sales(world, mail, copy="provider", imap_port=mail.imap_gate.port)
    (lead,) = world.add_leads(["unreachable@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    crashed = world.start_worker("crashed", NUMAIL_FAILPOINT="send.after-data")
    assert crashed.wait(30) == 137
    mail.imap_gate.shut()
    try:
        waiting = world.start_worker("while-unreachable")
        world.wait_until(
            lambda: waiting.metric('numail_send_settled_total{outcome="unreachable"}') >= 2,
            30,
            "two failed attempts to settle",
        )
        assert world.states() == {"unknown": 1}
        assert "could not be searched" in (world.job(job.job_id)["last_error"] or "")
        world.wait_until(
            lambda: (
                waiting.metric(f'numail_send_unknown_jobs{{workspace="{world.workspace}"}}') == 1
            ),
            15,
            "the unknown job to show in the gauge",
        )
        assert mail.provider_copy.log.count(job.message_id) == 1
    finally:
        mail.imap_gate.open()
    world.wait_for_states({"sent": 1})
    assert mail.provider_copy.log.count(job.message_id) == 1
    (attempt,) = world.attempts(job.job_id)
    assert attempt["settled"] == "found"
    assert world.job(job.job_id)["settle_checks"] >= 3
