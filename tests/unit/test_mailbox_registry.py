"""The Mailbox row the operator writes is the row the send worker reads: built from a spec,
parsed by numail_workers.mailboxes.profile_from_row, compared field by field."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from numail_operator.build.mailbox import build_mailbox_record
from numail_operator.build.workspace import (
    DATABASE_SECRET,
    WorkerSpec,
    WorkspaceInputs,
    build_worker_role,
    worker_secret_names,
)
from numail_operator.settings import Settings, SettingsError
from numail_workers.mailboxes import MailboxProfile, profile_from_row

from numail.api.models import Mailbox
from numail.db.jobs import MailboxRow

WORKSPACE_UID = "33333333-3333-4333-8333-333333333333"


def mailbox(spec: dict[str, Any], name: str = "sales") -> Mailbox:
    return Mailbox.model_validate(
        {
            "apiVersion": "numail.ai/v1alpha1",
            "kind": "Mailbox",
            "metadata": {"name": name, "namespace": "ws-acme", "uid": str(uuid.uuid4())},
            "spec": {"credentials": {"secretRef": {"name": "intake"}}, **spec},
        }
    )


def written_then_read(mbx: Mailbox, state: str = "verified") -> MailboxProfile:
    """Through JSON, as jsonb stores it, and back into the row the worker's query returns."""
    record = build_mailbox_record(mbx, WORKSPACE_UID, state)  # type: ignore[arg-type]
    row = MailboxRow(
        uuid.UUID(record.id),
        record.namespace,
        record.name,
        record.provider,
        record.address,
        json.loads(json.dumps(dict(record.settings))),
        record.daily_cap,
        record.state,
    )
    return profile_from_row(row)


SMTP = {
    "address": "sales@client1.example",
    "displayName": "Sales at Client 1",
    "provider": "smtp",
    "smtp": {"host": "smtp.client1.example", "port": 465, "security": "tls", "username": "u1"},
    "imap": {"host": "imap.client1.example", "port": 143, "security": "starttls"},
    "dailyLimit": 120,
}
GMAIL = {
    "address": "sales@gmail.example",
    "provider": "gmail",
    "oauth": {"clientId": "c1.apps", "clientSecretRef": {"name": "google-oauth-client"}},
}
MICROSOFT = {
    "address": "sales@m365.example",
    "provider": "microsoft365",
    "oauth": {
        "clientId": "6731de76",
        "tenant": "contoso",
        "clientSecretRef": {"name": "ms-oauth", "key": "secret"},
    },
}


def test_an_smtp_mailbox_reads_back_with_its_servers_logins_and_display_name() -> None:
    mbx = mailbox(SMTP)
    profile = written_then_read(mbx)
    assert (profile.id, profile.namespace, profile.name) == (
        uuid.UUID(mbx.uid or ""),
        "ws-acme",
        "sales",
    )
    assert (profile.provider, profile.address, profile.transport) == (
        "smtp",
        "sales@client1.example",
        "smtp",
    )
    assert profile.display_name == "Sales at Client 1"
    assert profile.smtp is not None and profile.imap is not None
    assert (profile.smtp.host, profile.smtp.port, profile.smtp.security) == (
        "smtp.client1.example",
        465,
        "tls",
    )
    assert profile.smtp.username == "u1"
    assert (profile.imap.host, profile.imap.port, profile.imap.security) == (
        "imap.client1.example",
        143,
        "starttls",
    )
    assert profile.imap.username == "sales@client1.example"  # the spec's default: the address
    assert profile.sent_folder == "Sent" and profile.append_to_sent
    assert profile.oauth_client_id is None and profile.client_secret_ref is None


def test_defaults_the_spec_fills_in_are_the_ones_the_worker_reads() -> None:
    profile = written_then_read(
        mailbox({**SMTP, "smtp": {"host": "s.example"}, "imap": {"host": "i.example"}})
    )
    assert profile.smtp is not None and profile.imap is not None
    assert (profile.smtp.port, profile.smtp.security, profile.smtp.username) == (
        587,
        "starttls",
        "sales@client1.example",
    )
    assert (profile.imap.port, profile.imap.security) == (993, "tls")


@pytest.mark.parametrize(
    ("spec", "client_id", "tenant", "secret"),
    [
        (GMAIL, "c1.apps", None, ("google-oauth-client", "clientSecret")),
        (MICROSOFT, "6731de76", "contoso", ("ms-oauth", "secret")),
    ],
    ids=["gmail", "microsoft365"],
)
def test_an_oauth_mailbox_reads_back_with_its_client_and_client_secret_ref(
    spec: dict[str, Any], client_id: str, tenant: str | None, secret: tuple[str, str]
) -> None:
    profile = written_then_read(mailbox(spec))
    assert profile.transport == "api" and profile.smtp is None and profile.imap is None
    assert (profile.oauth_client_id, profile.oauth_tenant) == (client_id, tenant)
    assert profile.client_secret_ref is not None
    assert (profile.client_secret_ref.name, profile.client_secret_ref.key) == secret
    assert not profile.append_to_sent


def test_the_row_carries_the_daily_limit_and_a_paused_mailbox_gets_a_cap_of_zero() -> None:
    assert build_mailbox_record(mailbox(SMTP), WORKSPACE_UID, "verified").daily_cap == 120
    assert build_mailbox_record(mailbox(GMAIL), WORKSPACE_UID, "pending").daily_cap == 200
    paused = build_mailbox_record(mailbox({**SMTP, "paused": True}), WORKSPACE_UID, "verified")
    assert paused.daily_cap == 0


def test_the_row_holds_no_credential_reference_but_the_oauth_client_secret_name() -> None:
    record = build_mailbox_record(mailbox(GMAIL), WORKSPACE_UID, "verified")
    text = json.dumps(dict(record.settings))
    assert "intake" not in text and "credentials" not in text
    assert record.workspace_id == WORKSPACE_UID


def inputs(**extra: Any) -> WorkspaceInputs:
    worker = WorkerSpec("img", 1, {})
    return WorkspaceInputs(
        name="acme",
        uid=WORKSPACE_UID,
        tier="standard",
        parent=None,
        parent_access="none",
        retain=False,
        send_worker=worker,
        reply_worker=worker,
        **extra,
    )


def test_worker_roles_name_the_oauth_client_secrets_but_never_a_reserved_name() -> None:
    built = inputs(
        mailboxes=("a", "b"),
        oauth_client_secrets=("google", DATABASE_SECRET, "numail-sealing-key", "google", ""),
    )
    assert worker_secret_names(built) == [
        "numail-dek",
        "numail-mailbox-a",
        "numail-mailbox-b",
        "google",
    ]
    role = build_worker_role(built, "numail-send-worker")
    assert DATABASE_SECRET not in role["rules"][0]["resourceNames"]


def test_settings_read_the_worker_database_secret_and_api_server_egress() -> None:
    settings = Settings.from_env(
        {
            "NUMAIL_WORKER_DATABASE_SECRET": "numail-worker-db",
            "NUMAIL_WORKER_API_SERVER_CIDRS": "10.0.0.1/32, 10.0.0.2/32",
            "NUMAIL_WORKER_API_SERVER_PORTS": "6443",
        }
    )
    assert settings.worker_database_secret == "numail-worker-db"
    assert settings.worker_database_secret_key == "url"
    assert settings.worker_api_server_cidrs == ("10.0.0.1/32", "10.0.0.2/32")
    assert settings.worker_api_server_ports == (6443,)
    default = Settings.from_env({})
    assert default.worker_database_secret is None
    assert default.worker_api_server_ports == (443, 6443)
    with pytest.raises(SettingsError, match="NUMAIL_WORKER_API_SERVER_PORTS"):
        Settings.from_env({"NUMAIL_WORKER_API_SERVER_PORTS": "https"})
