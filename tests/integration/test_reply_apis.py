"""The reply detector on the Gmail API (history, then messages.list when history expired) and
Microsoft Graph (inbox delta, a new round when the delta link expired), against the local
stand-ins in their wire formats, with access tokens refreshed at the local OAuth servers."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from numail_workers.inbound_readers import GraphInbox

from numail.providers.credentials import RefreshTokenCredentials
from tests.support.mail_apis import (
    ApiProviders,
    SendWorld,
    api_providers,
    inbound_dsn,
    inbound_reply,
    mark_sent,
    reply_detector,
)
from tests.support.tls import make_serving_cert

GOOGLE_CLIENT = ("gmail-client.apps.googleusercontent.com", "google-client-secret-canary-r")
MS_CLIENT = ("9b0c2f4e-ms-client", "ms-client-secret-canary-r")
GMAIL_REFRESH = "1//gmail-refresh-token-canary-reply-0123456789"
GRAPH_REFRESH = "M.R3_BAY.graph-refresh-token-canary-reply"


@pytest.fixture(scope="module")
def providers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProviders]:
    with api_providers(
        make_serving_cert(tmp_path_factory.mktemp("reply-api-tls")),
        gmail_grant=(GMAIL_REFRESH, *GOOGLE_CLIENT),
        graph_grant=(GRAPH_REFRESH, *MS_CLIENT),
    ) as providers:
        yield providers


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path) -> SendWorld:
    return SendWorld.create(pg_dsn, tmp_path)


def detector_for(world: SendWorld, p: ApiProviders, **kw: Any) -> Any:
    return reply_detector(
        world,
        **kw,
        https_ca_file=str(p.cert.ca),
        google_token_uri=p.google.token_uri,
        gmail_api_url=p.gmail.url,
        microsoft_authority_host=p.microsoft.authority_host,
        graph_url=p.graph.url,
    )


def run_once(world: SendWorld, detector: Any) -> Any:
    with psycopg.connect(world.worker_dsn) as conn:
        (result,) = detector.run_once(conn, force=True)
    return result


def outbound(world: SendWorld, mailbox: UUID, emails: list[str]) -> list[Any]:
    leads = world.add_leads(emails)
    sent = world.enqueue(mailbox, leads)
    mark_sent(world, sent)
    return sent


def kinds(world: SendWorld) -> list[tuple[str, str | None]]:
    rows = world.query(
        "SELECT kind, bounce_type FROM replies WHERE workspace_id = %s ORDER BY 1, 2",
        [world.workspace_id],
    )
    return [(str(k), b) for k, b in rows]


def test_gmail_history_then_an_expired_history_id_falls_back_to_messages_list(
    world: SendWorld, providers: ApiProviders, caplog: pytest.LogCaptureFixture
) -> None:
    gmail = providers.gmail
    mailbox = world.add_mailbox(
        "gmail",
        "founder@gmail-client.test",
        RefreshTokenCredentials(GMAIL_REFRESH),
        provider="gmail",
        settings={"oauth": {"clientId": GOOGLE_CLIENT[0]}},
        client_secret=GOOGLE_CLIENT[1],
    )
    replied, bounced, away = outbound(world, mailbox, ["gr@x.test", "gb@x.test", "ga@x.test"])
    detector = detector_for(world, providers)
    gmail.page_size = 2  # every listing takes more than one page

    # First poll: no cursor, so the lookback listing (messages.list); nothing there yet.
    with caplog.at_level("DEBUG"):
        first = run_once(world, detector)
        assert first.error is None and not first.counts
        gmail.deliver(inbound_reply(replied.message_id))
        gmail.deliver(inbound_dsn(bounced.message_id, recipient="gb@x.test"))
        gmail.deliver(inbound_reply("<x@y>", headers=""))  # answers nothing we sent
        gmail.deliver(b"Subject: sent by us\r\nMessage-ID: <s@x>\r\n\r\nhi\r\n", labels=("SENT",))
        # Second poll: users.history.list from the stored historyId, two pages.
        second = run_once(world, detector)
        assert dict(second.counts) == {"reply": 1, "hard_bounce": 1, "unmatched": 1}
        assert "history" in gmail.calls and "profile" in gmail.calls
        assert run_once(world, detector).counts == {}

        # Gmail forgets the history: 404, then messages.list over the lookback window.
        gmail.expire_history()
        gmail.deliver(inbound_reply(away.message_id, headers="Auto-Submitted: auto-replied\r\n"))
        third = run_once(world, detector)
    assert dict(third.counts) == {"auto_reply": 1, "duplicate": 2, "unmatched": 1}
    assert kinds(world) == [("auto_reply", None), ("bounce", "hard"), ("reply", None)]
    (history_id,) = world.query(
        "SELECT history_id FROM inbound_cursors WHERE mailbox_id = %s", [mailbox]
    )[0]
    assert int(history_id) == gmail.history_id
    for secret in (GMAIL_REFRESH, GOOGLE_CLIENT[1], *providers.google.issued_tokens()):
        assert secret not in caplog.text

    # A 5xx: a poll error, and the cursor stays where it was.
    gmail.inbox_failures.append(503)
    failed = run_once(world, detector)
    assert failed.error and "503" in failed.error
    assert detector.metrics.poll_errors.labels("gmail")._value.get() == 1
    assert world.query(
        "SELECT history_id FROM inbound_cursors WHERE mailbox_id = %s", [mailbox]
    ) == [(history_id,)]


def test_graph_delta_pages_then_an_expired_delta_link_starts_a_new_round(
    world: SendWorld,
    providers: ApiProviders,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    graph = providers.graph
    monkeypatch.setattr(GraphInbox, "page_size", 2)  # every round takes several pages
    mailbox = world.add_mailbox(
        "outlook",
        "founder@contoso.test",
        RefreshTokenCredentials(GRAPH_REFRESH),
        provider="microsoft365",
        settings={"oauth": {"clientId": MS_CLIENT[0], "tenant": "contoso"}},
        client_secret=MS_CLIENT[1],
    )
    replied, bounced, slow, away = outbound(
        world, mailbox, ["mr@x.test", "mb@x.test", "ms@x.test", "ma@x.test"]
    )
    (lead_replied, lead_bounced) = (
        world.query("SELECT lead_id FROM send_jobs WHERE id = %s", [j.job_id])[0][0]
        for j in (replied, bounced)
    )
    graph.deliver(inbound_reply(replied.message_id, references=["<older@x.test>"]))
    graph.deliver(inbound_dsn(bounced.message_id, recipient="mb@x.test"))
    graph.deliver(
        inbound_dsn(slow.message_id, recipient="ms@x.test", action="delayed", status="4.4.7")
    )
    detector = detector_for(world, providers)
    with caplog.at_level("DEBUG"):
        first = run_once(world, detector)
        assert first.error is None
        assert dict(first.counts) == {"reply": 1, "hard_bounce": 1, "soft_bounce": 1}
        assert run_once(world, detector).counts == {}  # the delta link: nothing new

        graph.expire_delta_links()
        graph.deliver(inbound_reply(away.message_id, headers="X-Autoreply: yes\r\n"))
        again = run_once(world, detector)
    assert dict(again.counts) == {"auto_reply": 1, "duplicate": 3}
    assert kinds(world) == [
        ("auto_reply", None),
        ("bounce", "hard"),
        ("bounce", "soft"),
        ("reply", None),
    ]
    states = dict(
        world.query(
            "SELECT id, state FROM leads WHERE id = ANY(%s)", [[lead_replied, lead_bounced]]
        )
    )
    assert states == {lead_replied: "replied", lead_bounced: "bounced"}
    (link,) = world.query(
        "SELECT delta_link FROM inbound_cursors WHERE mailbox_id = %s", [mailbox]
    )[0]
    assert link.startswith(graph.url) and "$deltatoken=" in link
    for secret in (GRAPH_REFRESH, MS_CLIENT[1], *providers.microsoft.issued_tokens()):
        assert secret not in caplog.text


def test_a_delta_link_to_another_host_is_never_followed(
    world: SendWorld, providers: ApiProviders
) -> None:
    mailbox = world.add_mailbox(
        "outlook",
        "founder@contoso.test",
        RefreshTokenCredentials(GRAPH_REFRESH),
        provider="microsoft365",
        settings={"oauth": {"clientId": MS_CLIENT[0], "tenant": "contoso"}},
        client_secret=MS_CLIENT[1],
    )
    world.query(
        "INSERT INTO inbound_cursors (workspace_id, mailbox_id, delta_link) VALUES (%s, %s, %s) "
        "RETURNING 1",
        [world.workspace_id, mailbox, "https://attacker.invalid/v1.0/me/delta?$deltatoken=x"],
    )
    result = run_once(world, detector_for(world, providers))
    # A stored link for another host is dropped: a new round on the configured Graph.
    assert result.error is None
    (link,) = world.query(
        "SELECT delta_link FROM inbound_cursors WHERE mailbox_id = %s", [mailbox]
    )[0]
    assert link.startswith(providers.graph.url)


def big_reply(answers: str) -> bytes:
    """A reply with a large attachment: well over the test's 64 KiB limit."""
    body = base64.encodebytes(os.urandom(300 * 1024)).replace(b"\n", b"\r\n")
    head = inbound_reply(answers).split(b"Content-Type:")[0]
    return (
        head + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=big\r\n\r\n"
        b"--big\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b"--big\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--big--\r\n"
    )


def test_gmail_reads_an_oversized_message_by_its_header_only(
    world: SendWorld, providers: ApiProviders
) -> None:
    gmail = providers.gmail
    mailbox = world.add_mailbox(
        "gmail-big",
        "big@gmail-client.test",
        RefreshTokenCredentials(GMAIL_REFRESH),
        provider="gmail",
        settings={"oauth": {"clientId": GOOGLE_CLIENT[0]}},
        client_secret=GOOGLE_CLIENT[1],
    )
    big, small = outbound(world, mailbox, ["big@x.test", "small@x.test"])
    detector = detector_for(world, providers, max_message_bytes=64 * 1024)
    assert run_once(world, detector).error is None  # the cursor: nothing yet
    big_id = gmail.deliver(big_reply(big.message_id))
    gmail.deliver(inbound_reply(small.message_id))
    gmail.deliver(
        b"From: x@y.test\r\nIn-Reply-To: <a\x00b@x>\r\nMessage-ID: <n\x00@x>\r\n\r\n.\r\n"
    )
    del gmail.get_formats[:]
    result = run_once(world, detector)
    assert result.error is None
    assert dict(result.counts) == {"reply": 2, "ignored": 1}
    # metadata for each; raw only for the two under the limit.
    assert sorted(gmail.get_formats) == ["metadata"] * 3 + ["raw"] * 2
    assert len(gmail.inbox[big_id].raw) > 64 * 1024
    assert kinds(world) == [("reply", None), ("reply", None)]


def test_graph_reads_an_oversized_message_by_its_header_only(
    world: SendWorld, providers: ApiProviders
) -> None:
    graph = providers.graph
    mailbox = world.add_mailbox(
        "outlook-big",
        "big@contoso.test",
        RefreshTokenCredentials(GRAPH_REFRESH),
        provider="microsoft365",
        settings={"oauth": {"clientId": MS_CLIENT[0], "tenant": "contoso"}},
        client_secret=MS_CLIENT[1],
    )
    big, small = outbound(world, mailbox, ["gbig@x.test", "gsmall@x.test"])
    detector = detector_for(world, providers, max_message_bytes=64 * 1024)
    assert run_once(world, detector).error is None
    graph.deliver(big_reply(big.message_id))
    graph.deliver(inbound_reply(small.message_id))
    del graph.calls[:]
    result = run_once(world, detector)
    assert result.error is None
    assert dict(result.counts) == {"reply": 2}
    # $value for both; the message's internetMessageHeaders only for the one over the limit.
    assert graph.calls.count("value") == 2 and graph.calls.count("message") == 1
    assert kinds(world) == [("reply", None), ("reply", None)]
