"""The send worker's pure parts (classification, parsing, backoff, message bytes) and its process
edges (configuration errors); no database or mail server needed."""

from __future__ import annotations

import email.policy
import os
import subprocess
import sys
import uuid
from email import message_from_bytes
from typing import Any

import pytest
import requests
import urllib3.exceptions
from numail_workers.engine import EngineSettings, SendEngine
from numail_workers.mailboxes import MailboxSettingsError, profile_from_row
from numail_workers.message import OutgoingMessage, render
from numail_workers.senders.smtp import dot_stuffed, is_hard_bounce
from numail_workers.senders.web import failure_kind

from numail.db.jobs import MailboxRow


def row(provider: str = "smtp", **settings: Any) -> MailboxRow:
    return MailboxRow(
        uuid.uuid4(), "ws-a", "sales", provider, "sales@a.test", settings, 50, "verified"
    )


@pytest.mark.parametrize(
    ("code", "reply", "hard"),
    [
        (550, "5.1.1 <x@y.test>: user unknown", True),
        (553, "5.1.3 bad address syntax", True),
        (550, "5.7.1 message rejected as spam", False),
        (550, "mailbox unavailable", False),  # no enhanced code: not sure enough to suppress
        (450, "4.1.1 try later", False),
    ],
)
def test_only_a_permanent_bad_address_reply_counts_as_a_hard_bounce(
    code: int, reply: str, hard: bool
) -> None:
    assert is_hard_bounce(code, reply) is hard


def test_data_doubles_leading_dots_normalises_line_ends_and_ends_with_a_lone_dot() -> None:
    assert dot_stuffed(b"a\n.\n..b\rc") == b"a\r\n..\r\n...b\r\nc\r\n.\r\n"
    assert dot_stuffed(b"done\r\n") == b"done\r\n.\r\n"


def test_a_connection_never_made_is_transient_and_a_lost_answer_is_unknown() -> None:
    refused = requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(
            None,  # type: ignore[arg-type]
            "/",
            urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
        )
    )
    dropped = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
    )
    assert failure_kind(refused) == "transient"
    assert failure_kind(requests.exceptions.ConnectTimeout()) == "transient"
    assert failure_kind(requests.exceptions.ReadTimeout()) == "unknown"
    assert failure_kind(dropped) == "unknown"


def test_a_mailbox_profile_takes_defaults_from_the_provider() -> None:
    smtp = profile_from_row(row(smtp={"host": "smtp.a.test"}, imap={"host": "imap.a.test"}))
    assert (smtp.smtp and smtp.smtp.port, smtp.smtp and smtp.smtp.security) == (587, "starttls")
    assert (smtp.imap and smtp.imap.port, smtp.imap and smtp.imap.security) == (993, "tls")
    assert smtp.append_to_sent and smtp.sent_folder == "Sent" and smtp.ref == "ws-a/sales"
    gmail = profile_from_row(
        row("gmail", oauth={"clientId": "c", "clientSecretRef": {"name": "oauth"}})
    )
    assert gmail.transport == "api" and not gmail.append_to_sent
    assert gmail.client_secret_ref is not None and gmail.client_secret_ref.key == "clientSecret"


@pytest.mark.parametrize(
    ("provider", "settings", "message"),
    [
        ("smtp", {"imap": {"host": "i"}}, "settings.smtp.host"),
        ("smtp", {"smtp": {"host": "s", "port": 0}, "imap": {"host": "i"}}, "port"),
        ("smtp", {"smtp": {"host": "s", "security": "none"}, "imap": {"host": "i"}}, "security"),
        ("gmail", {"oauth": {"clientId": "c"}}, "clientSecretRef"),
        ("microsoft365", {"transport": "carrier-pigeon"}, "transport"),
    ],
)
def test_a_malformed_mailbox_is_refused_with_the_field_named(
    provider: str, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(MailboxSettingsError, match=message):
        profile_from_row(row(provider, **settings))


def test_the_message_carries_the_fixed_message_id_and_one_click_unsubscribe() -> None:
    job = uuid.uuid4()
    msg = OutgoingMessage(
        job_id=job,
        message_id="<fixed@a.test>",
        sender="sales@a.test",
        recipient="lead@b.test",
        subject=render("Hi {{first_name}}", {"first_name": "Ada"}),
        body=render("{{unknown}} stays; {{company}} goes", {"company": None}),
        unsubscribe_url="https://u.a.test/{token}",
    )
    parsed = message_from_bytes(msg.raw, policy=email.policy.default)
    assert parsed["Message-ID"] == "<fixed@a.test>"
    assert parsed["Subject"] == "Hi Ada"
    assert parsed["List-Unsubscribe"] == (
        f"<mailto:sales@a.test?subject=unsubscribe%20{job.hex}>, <https://u.a.test/{job.hex}>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed.get_content().strip() == "{{unknown}} stays;  goes"
    assert msg.raw is msg.raw  # built once


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    settings = EngineSettings(backoff_seconds=10, backoff_max_seconds=100)
    engine = SendEngine.__new__(SendEngine)
    engine.settings = settings
    import random

    engine._random = random.Random(7)
    for attempt, step in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (30, 100)):
        delays = [engine.backoff(attempt) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays), (attempt, delays)
        assert len(set(delays)) > 1


def test_settings_refuse_a_heartbeat_too_slow_for_the_lease() -> None:
    with pytest.raises(ValueError, match="twice per lease"):
        EngineSettings(lease_seconds=10, heartbeat_seconds=6)


def _run(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NUMAIL_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_workers_name_what_is_missing_from_their_configuration() -> None:
    done = _run("numail_workers.send", {})
    assert done.returncode == 2 and "--workspace (or NUMAIL_WORKSPACE) is required" in done.stderr
    base = {
        "NUMAIL_WORKSPACE": "a",
        "NUMAIL_WORKSPACE_UID": str(uuid.uuid4()),
        "NUMAIL_DATABASE_URL": "postgresql://worker:hunter2-canary@db.invalid/numail",
        "NUMAIL_METRICS_PORT": "0",
    }
    done = _run("numail_workers.send", {**base, "NUMAIL_SEND_BATCH": "lots"})
    assert done.returncode == 2 and "NUMAIL_SEND_BATCH must be a number" in done.stderr
    done = _run("numail_workers.send", base)  # no key service configured
    assert done.returncode == 2 and "NUMAIL_KEYSERVICE_URL is not set" in done.stderr
    assert "hunter2-canary" not in done.stderr
    for module in ("numail_workers.send", "numail_workers.reply"):
        done = _run(module, {**base, "NUMAIL_METRICS_PORT": "ninety"})
        assert done.returncode == 2 and "NUMAIL_METRICS_PORT must be a number" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_bearer_session_drops_its_token_when_closed() -> None:
    """Gmail and Graph sessions, senders and inbox readers alike, close through this."""
    from numail_workers.senders.web import BearerSession

    http = BearerSession(None, 5.0, "tok-canary")
    assert http.headers["Authorization"] == "Bearer tok-canary"
    http.close()
    assert "Authorization" not in http.headers
