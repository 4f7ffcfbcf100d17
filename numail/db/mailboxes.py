"""The mailbox registry the operator keeps in PostgreSQL: one row per Mailbox object.

The row holds what the workers need and is not secret (numail_workers.mailboxes parses it):
provider, address, servers and OAuth client in `settings` (camelCase, as in the Mailbox spec),
the daily cap and the state. Rows are never deleted: send jobs reference them. A deleted
Mailbox's row becomes `disconnected`, and the claim never takes jobs of such a mailbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from numail.db.session import workspace_session

MailboxState = Literal["pending", "connected", "verified", "disconnected"]


@dataclass(frozen=True)
class MailboxRecord:
    """One row, as the operator derives it from a Mailbox."""

    id: str  # the Mailbox's metadata.uid
    workspace_id: str  # the owning Workspace's metadata.uid
    namespace: str
    name: str
    provider: str
    state: MailboxState
    daily_cap: int
    address: str
    settings: Mapping[str, Any] = field(default_factory=dict)


def register_mailbox(conn: psycopg.Connection[Any], record: MailboxRecord) -> None:
    """Upsert the row to match the Mailbox. Idempotent, and writes nothing when nothing
    changed. Another live row of the same name (a Mailbox deleted while the database was down,
    then created again) is a Mailbox that no longer exists: it is marked disconnected first.
    The workspace must be registered first (a foreign key)."""
    with workspace_session(conn, record.workspace_id):
        conn.execute(
            "UPDATE mailboxes SET state = 'disconnected' "
            "WHERE workspace_id = %s AND namespace = %s AND name = %s AND id <> %s "
            "AND state <> 'disconnected'",
            [record.workspace_id, record.namespace, record.name, record.id],
        )
        conn.execute(
            "INSERT INTO mailboxes "
            "(id, workspace_id, namespace, name, provider, state, daily_cap, address, settings) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET namespace = EXCLUDED.namespace, "
            "name = EXCLUDED.name, provider = EXCLUDED.provider, state = EXCLUDED.state, "
            "daily_cap = EXCLUDED.daily_cap, address = EXCLUDED.address, "
            "settings = EXCLUDED.settings "
            "WHERE (mailboxes.namespace, mailboxes.name, mailboxes.provider, mailboxes.state, "
            "mailboxes.daily_cap, mailboxes.address, mailboxes.settings) IS DISTINCT FROM "
            "(EXCLUDED.namespace, EXCLUDED.name, EXCLUDED.provider, EXCLUDED.state, "
            "EXCLUDED.daily_cap, EXCLUDED.address, EXCLUDED.settings)",
            [
                record.id,
                record.workspace_id,
                record.namespace,
                record.name,
                record.provider,
                record.state,
                record.daily_cap,
                record.address,
                Jsonb(dict(record.settings)),
            ],
        )


def set_state(
    conn: psycopg.Connection[Any],
    workspace_id: UUID | str,
    mailbox_id: UUID | str,
    state: MailboxState,
) -> bool:
    """Set one row's state; False if there is no such row."""
    with workspace_session(conn, workspace_id):
        cur = conn.execute(
            "UPDATE mailboxes SET state = %s WHERE workspace_id = %s AND id = %s",
            [state, str(workspace_id), str(mailbox_id)],
        )
        return cur.rowcount > 0


def disconnect_absent(
    conn: psycopg.Connection[Any], workspace_id: UUID | str, namespace: str, names: Sequence[str]
) -> int:
    """Mark `disconnected` every live row of `namespace` whose Mailbox is not among `names`
    (the Mailboxes that exist). Returns how many rows changed."""
    with workspace_session(conn, workspace_id):
        cur = conn.execute(
            "UPDATE mailboxes SET state = 'disconnected' "
            "WHERE workspace_id = %s AND namespace = %s AND state <> 'disconnected' "
            "AND NOT name = ANY(%s)",
            [str(workspace_id), namespace, list(names)],
        )
        return cur.rowcount
