"""The reply detector's SQL: read and move a mailbox's inbound cursor, record one message.

Each call is one workspace-scoped transaction (numail.db.workspace_session). What an inbound
message does (match it to a sent message, stop or keep the lead's sequence, suppress a hard
bounce) is decided by numail_record_inbound in migration 0006, in the same transaction as the
replies row, so a crash can't leave a reply recorded without its effects or the other way
round; and since the replies row is unique per (workspace, mailbox, Message-ID), reading the
same message again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import psycopg

from numail.db.session import workspace_session

InboundKind = Literal["reply", "auto_reply", "bounce"]
BounceType = Literal["hard", "soft"]
# What recording did: the kind recorded (bounces as hard_bounce or soft_bounce), or why not.
RecordOutcome = Literal[
    "reply", "auto_reply", "hard_bounce", "soft_bounce", "unmatched", "duplicate"
]


@dataclass(frozen=True)
class Cursor:
    """Where reading a mailbox stopped. IMAP uses uidvalidity and last_uid, Gmail history_id,
    Graph delta_link; a provider leaves the others None."""

    uidvalidity: int | None = None
    last_uid: int | None = None
    history_id: str | None = None
    delta_link: str | None = None


@dataclass(frozen=True)
class Recorded:
    outcome: RecordOutcome
    reply_id: UUID | None
    sent_message_id: UUID | None
    lead_id: UUID | None
    cancelled_jobs: int


def readable_mailboxes(conn: psycopg.Connection[Any], workspace_id: UUID | str) -> list[UUID]:
    """Mailboxes to read: every one of the workspace but those the operator disconnected, the
    same rule the send engine applies before sending."""
    with workspace_session(conn, workspace_id):
        rows = conn.execute(
            "SELECT id FROM mailboxes WHERE workspace_id = %s AND state <> 'disconnected' "
            "ORDER BY namespace, name",
            [UUID(str(workspace_id))],
        ).fetchall()
    return [UUID(str(r[0])) for r in rows]


def load_cursor(
    conn: psycopg.Connection[Any], workspace_id: UUID | str, mailbox_id: UUID
) -> Cursor | None:
    with workspace_session(conn, workspace_id):
        row = conn.execute(
            "SELECT uidvalidity, last_uid, history_id, delta_link FROM inbound_cursors "
            "WHERE workspace_id = %s AND mailbox_id = %s",
            [UUID(str(workspace_id)), mailbox_id],
        ).fetchone()
    if row is None:
        return None
    return Cursor(
        None if row[0] is None else int(row[0]),
        None if row[1] is None else int(row[1]),
        row[2],
        row[3],
    )


def _save_cursor(
    conn: psycopg.Connection[Any], workspace_id: UUID, mailbox_id: UUID, cursor: Cursor
) -> None:
    conn.execute(
        """
        INSERT INTO inbound_cursors (workspace_id, mailbox_id, uidvalidity, last_uid,
                                     history_id, delta_link)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT (workspace_id, mailbox_id) DO UPDATE
           SET uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid,
               history_id = excluded.history_id, delta_link = excluded.delta_link,
               updated_at = now()
        """,
        [
            workspace_id,
            mailbox_id,
            cursor.uidvalidity,
            cursor.last_uid,
            cursor.history_id,
            cursor.delta_link,
        ],
    )


def save_cursor(
    conn: psycopg.Connection[Any], workspace_id: UUID | str, mailbox_id: UUID, cursor: Cursor
) -> None:
    with workspace_session(conn, workspace_id):
        _save_cursor(conn, UUID(str(workspace_id)), mailbox_id, cursor)


def record(
    conn: psycopg.Connection[Any],
    workspace_id: UUID | str,
    mailbox_id: UUID,
    *,
    message_id: str,
    kind: InboundKind,
    bounce_type: BounceType | None,
    candidates: list[str],
    received_at: datetime | None,
    failed_recipients: list[str] | None = None,
    cursor: Cursor | None = None,
) -> Recorded:
    """Record one inbound message and apply its effects; with `cursor`, move the mailbox's
    cursor in the same transaction, so a message is never both skipped and unrecorded.

    A hard bounce suppresses the lead only when `failed_recipients` (the addresses the bounce
    says failed) holds the lead's email; otherwise it is recorded as a soft bounce."""
    workspace = UUID(str(workspace_id))
    with workspace_session(conn, workspace):
        row = conn.execute(
            "SELECT * FROM numail_record_inbound(%s, %s, %s, %s, %s::text[], %s, %s::text[])",
            [
                mailbox_id,
                message_id,
                kind,
                bounce_type,
                candidates,
                received_at,
                list(failed_recipients or []),
            ],
        ).fetchone()
        if cursor is not None:
            _save_cursor(conn, workspace, mailbox_id, cursor)
    assert row is not None  # the function always returns one row
    return Recorded(
        outcome=row[0],
        reply_id=None if row[1] is None else UUID(str(row[1])),
        sent_message_id=None if row[2] is None else UUID(str(row[2])),
        lead_id=None if row[3] is None else UUID(str(row[3])),
        cancelled_jobs=int(row[4]),
    )
