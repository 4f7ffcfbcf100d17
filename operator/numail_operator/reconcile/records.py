"""What the operator writes to PostgreSQL: the workspace and mailbox registry, audit events.

The database is evidence, not a dependency of provisioning: when it is down, a Workspace still
reconciles, the registry catches up on the next pass, and audit events wait in the durable
spool (numail.audit) until they can be appended in order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg

from numail import audit
from numail.db.mailboxes import MailboxRecord, disconnect_absent, register_mailbox, set_state
from numail.db.workspaces import register_workspace
from numail_operator.settings import Settings

log = logging.getLogger("numail.operator.records")
ACTOR = "system:numail-operator"


def register(
    settings: Settings,
    uid: str,
    name: str,
    parent_uid: str | None,
    access: str,
    mailboxes: tuple[str, list[str]] | None = None,
) -> bool:
    """Upsert the workspace's row; with `mailboxes` (namespace, names of the Mailboxes that
    exist), also mark the rows of Mailboxes that are gone `disconnected`: that catches up a
    disconnect the Mailbox's finalizer could not write while the database was down."""
    if not settings.database_url:
        return False
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            register_workspace(conn, uid, name, parent_uid, access)
            if mailboxes is not None:
                disconnect_absent(conn, uid, mailboxes[0], mailboxes[1])
    except psycopg.Error as err:
        log.warning("workspace %s not registered in the database yet: %s", name, err)
        return False
    return True


def register_mailbox_row(settings: Settings, record: MailboxRecord) -> bool | None:
    """Upsert a Mailbox's row. None when no database is configured; False when the write
    failed (the next pass writes it: the caller comes back soon)."""
    if not settings.database_url:
        return None
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            register_mailbox(conn, record)
    except psycopg.Error as err:
        where = f"{record.namespace}/{record.name}"
        log.warning("mailbox %s not registered in the database yet: %s", where, err)
        return False
    return True


def disconnect_mailbox(
    settings: Settings, workspace_uid: str, mailbox_uid: str, ref: str
) -> bool | None:
    """Mark a deleted Mailbox's row `disconnected` (kept: send jobs reference it). None when no
    database is configured; False when it failed (the Workspace's next pass catches up)."""
    if not settings.database_url:
        return None
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            set_state(conn, workspace_uid, mailbox_uid, "disconnected")
    except psycopg.Error as err:
        log.warning("mailbox %s not marked disconnected in the database yet: %s", ref, err)
        return False
    return True


def record(
    settings: Settings,
    action: str,
    workspace_uid: str,
    target: str,
    details: Mapping[str, Any] | None = None,
) -> str | None:
    """Append an audit event, or spool it; None when no database is configured."""
    if not settings.database_url:
        return None
    try:
        return audit.record(
            actor=ACTOR,
            action=action,
            workspace_id=workspace_uid,
            target=target,
            source="numail-operator",
            details=details,
            dsn=settings.database_url,
            spool_dir=settings.audit_spool_dir,
        )
    except audit.AuditError as err:
        log.warning("audit event %s for %s kept in the spool: %s", action, target, err)
        return "spooled"
