"""Gmail API and Microsoft Graph senders against local stand-ins with real wire formats, with
access tokens refreshed at the local OAuth servers; plus XOAUTH2 over SMTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from numail.providers.credentials import RefreshTokenCredentials
from tests.support.mail_apis import ApiProviders, SendWorld, SmtpSink, api_providers
from tests.support.tls import make_serving_cert

GOOGLE_CLIENT = ("gmail-client.apps.googleusercontent.com", "google-client-secret-canary")
MS_CLIENT = ("9b0c2f4e-ms-client", "ms-client-secret-canary")
GMAIL_REFRESH = "1//gmail-refresh-token-canary-0123456789"
GRAPH_REFRESH = "M.R3_BAY.graph-refresh-token-canary"


@dataclass
class Providers(ApiProviders):
    xoauth_smtp: SmtpSink


@pytest.fixture(scope="module")
def providers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    with api_providers(
        make_serving_cert(tmp_path_factory.mktemp("api-tls")),
        gmail_grant=(GMAIL_REFRESH, *GOOGLE_CLIENT),
        graph_grant=(GRAPH_REFRESH, *MS_CLIENT),
    ) as apis:
        google = apis.google
        smtp = SmtpSink(apis.cert, oauth_tokens=lambda token: token in google.issued_tokens())
        smtp.start()
        try:
            yield Providers(**vars(apis), xoauth_smtp=smtp)
        finally:
            smtp.stop()


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path, providers: Providers) -> Iterator[SendWorld]:
    w = SendWorld.create(pg_dsn, tmp_path)
    w.extra_env.update(
        NUMAIL_PROVIDER_CA_FILE=str(providers.cert.ca),
        NUMAIL_MAIL_CA_FILE=str(providers.cert.ca),
        NUMAIL_GOOGLE_TOKEN_URI=providers.google.token_uri,
        NUMAIL_GMAIL_API_URL=providers.gmail.url,
        NUMAIL_MICROSOFT_AUTHORITY_HOST=providers.microsoft.authority_host,
        NUMAIL_GRAPH_URL=providers.graph.url,
    )
    try:
        yield w
    finally:
        w.stop_workers()


def add_gmail(world: SendWorld, **settings: object) -> object:
    return world.add_mailbox(
        "gmail",
        "founder@gmail-client.test",
        RefreshTokenCredentials(GMAIL_REFRESH),
        provider="gmail",
        settings={"oauth": {"clientId": GOOGLE_CLIENT[0]}, **settings},
        client_secret=GOOGLE_CLIENT[1],
    )


def add_graph(world: SendWorld) -> object:
    return world.add_mailbox(
        "outlook",
        "founder@contoso.test",
        RefreshTokenCredentials(GRAPH_REFRESH),
        provider="microsoft365",
        settings={"oauth": {"clientId": MS_CLIENT[0], "tenant": "contoso"}},
        client_secret=MS_CLIENT[1],
    )


def test_gmail_api_sends_each_message_once_with_its_message_id(
    world: SendWorld, providers: Providers
) -> None:
    mailbox = add_gmail(world)
    leads = world.add_leads(["g1@example.com", "g2@example.com"])
    enqueued = world.enqueue(mailbox, leads)
    world.start_worker()
    world.wait_for_states({"sent": 2})
    for job in enqueued:
        assert providers.gmail.log.count(job.message_id) == 1
        (raw,) = providers.gmail.log.find(job.message_id)
        msg = message_from_bytes(raw, policy=policy.default)
        assert msg["Message-ID"] == job.message_id
        assert msg["List-Unsubscribe"].startswith("<mailto:founder@gmail-client.test?")
        row = world.job(job.job_id)
        assert row["provider_message_id"] in providers.gmail.sent
    # One refresh for the batch, not one per message.
    assert providers.google.requests_for(GMAIL_REFRESH) == 1


def test_graph_creates_a_draft_then_sends_it_once_with_its_message_id(
    world: SendWorld, providers: Providers
) -> None:
    mailbox = add_graph(world)
    (lead,) = world.add_leads(["m1@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    world.start_worker()
    world.wait_for_states({"sent": 1})
    assert providers.graph.log.count(job.message_id) == 1
    (sent,) = [
        m for m in providers.graph.in_folder("sentitems") if m.internet_message_id == job.message_id
    ]
    msg = message_from_bytes(sent.raw, policy=policy.default)
    assert msg["List-Unsubscribe"].startswith("<mailto:founder@contoso.test?")
    assert world.job(job.job_id)["provider_message_id"] == sent.id
    assert not [
        m for m in providers.graph.in_folder("drafts") if m.internet_message_id == job.message_id
    ]


def test_a_graph_send_that_failed_sends_the_same_draft_again_not_a_second_one(
    world: SendWorld, providers: Providers
) -> None:
    mailbox = add_graph(world)
    (lead,) = world.add_leads(["m2@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    providers.graph.send_failures.append(503)
    world.start_worker()
    world.wait_for_states({"sent": 1})
    attempts = world.attempts(job.job_id)
    # A 5xx after the draft was handed over is unknown: settled (not in Sent Items), then sent.
    assert [(a["outcome"], a["settled"]) for a in attempts] == [
        ("unknown", "not_found"),
        ("sent", None),
    ]
    ours = [m for m in providers.graph.messages.values() if m.internet_message_id == job.message_id]
    assert len(ours) == 1 and ours[0].folder == "sentitems"
    assert providers.graph.log.count(job.message_id) == 1


def test_gmail_killed_after_the_api_accepted_is_settled_by_rfc822msgid_and_not_resent(
    world: SendWorld, providers: Providers
) -> None:
    mailbox = add_gmail(world)
    (lead,) = world.add_leads(["g3@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    crashed = world.start_worker("crashed", NUMAIL_FAILPOINT="send.after-data")
    assert crashed.wait(30) == 137
    successor = world.start_worker("successor")
    world.wait_for_states({"sent": 1})
    assert providers.gmail.log.count(job.message_id) == 1
    assert successor.metric('numail_send_settled_total{outcome="found"}') == 1
    (attempt,) = world.attempts(job.job_id)
    assert attempt["settled"] == "found"


def test_a_dropped_gmail_answer_is_unknown_and_settles_as_sent(
    world: SendWorld, providers: Providers
) -> None:
    mailbox = add_gmail(world)
    (lead,) = world.add_leads(["g4@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    providers.gmail.drop_after_accept = 1
    world.start_worker()
    world.wait_for_states({"sent": 1})
    assert providers.gmail.log.count(job.message_id) == 1
    (attempt,) = world.attempts(job.job_id)
    assert (attempt["outcome"], attempt["settled"]) == ("unknown", "found")


def test_gmail_over_smtp_signs_in_with_xoauth2_and_settles_through_the_api(
    world: SendWorld, providers: Providers
) -> None:
    mailbox = add_gmail(
        world,
        transport="smtp",
        smtp={"host": "127.0.0.1", "port": providers.xoauth_smtp.port, "security": "starttls"},
    )
    (lead,) = world.add_leads(["x1@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    world.start_worker()
    world.wait_for_states({"sent": 1})
    assert providers.xoauth_smtp.log.count(job.message_id) == 1
    assert ("founder@gmail-client.test", True, "XOAUTH2") in providers.xoauth_smtp.auths


def test_no_token_or_client_secret_reaches_the_logs(world: SendWorld, providers: Providers) -> None:
    gmail, graph = add_gmail(world), add_graph(world)
    a, b = world.add_leads(["h1@example.com", "h2@example.com"])
    world.enqueue(gmail, [a])
    world.enqueue(graph, [b])
    worker = world.start_worker(NUMAIL_LOG_LEVEL="DEBUG")
    world.wait_for_states({"sent": 2})
    worker.terminate()
    logs = world.all_logs()
    assert "sent 1, retry 0" in logs
    secrets = [GMAIL_REFRESH, GRAPH_REFRESH, GOOGLE_CLIENT[1], MS_CLIENT[1]]
    secrets += providers.google.issued_tokens() + providers.microsoft.issued_tokens()
    for secret in secrets:
        assert secret not in logs
