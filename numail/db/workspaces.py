"""The workspace registry the operator keeps in PostgreSQL: one row per Workspace CR, and parents.

Row-level security applies here too: a workspace's row is written inside its own workspace
session, and the agency relation (workspace_parents) is what lets a parent read its children.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

from numail.db.session import workspace_session


def register_workspace(
    conn: psycopg.Connection[Any],
    workspace_id: UUID | str,
    name: str,
    parent_id: UUID | str | None,
    parent_access: str,
) -> None:
    """Upsert the row and the parent relation to match the CR. Idempotent: every reconcile may
    call it. The parent must be registered first (a foreign key), as its reconcile does."""
    with workspace_session(conn, workspace_id):
        conn.execute(
            "INSERT INTO workspaces (id, name, parent_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, parent_id = EXCLUDED.parent_id "
            "WHERE (workspaces.name, workspaces.parent_id) "
            "IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.parent_id)",
            [str(workspace_id), name, str(parent_id) if parent_id else None],
        )
        if parent_id and parent_access in ("read", "manage"):
            conn.execute(
                "INSERT INTO workspace_parents (workspace_id, parent_id, access) "
                "VALUES (%s, %s, %s) "
                "ON CONFLICT (workspace_id) DO UPDATE SET parent_id = EXCLUDED.parent_id, "
                "access = EXCLUDED.access",
                [str(workspace_id), str(parent_id), parent_access],
            )
        else:
            conn.execute(
                "DELETE FROM workspace_parents WHERE workspace_id = %s", [str(workspace_id)]
            )


def is_registered(conn: psycopg.Connection[Any], workspace_id: UUID | str) -> bool:
    with workspace_session(conn, workspace_id):
        row = conn.execute("SELECT 1 FROM workspaces WHERE id = %s", [str(workspace_id)]).fetchone()
    return row is not None
