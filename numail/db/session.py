"""Workspace-scoped transactions: the only code that sets app.workspace_id (row-level security)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus


@contextmanager
def workspace_session(
    conn: psycopg.Connection[Any], workspace_id: UUID | str
) -> Iterator[psycopg.Connection[Any]]:
    """One transaction in which every policy sees `workspace_id` as the current workspace.

    The setting is transaction-local (set_config(..., true)), so it can't leak to the next user
    of a pooled connection. For the same reason the connection must be idle: inside an open
    transaction the setting would outlive this block until that transaction ends. The block
    commits on success and rolls back on an exception.
    """
    workspace = UUID(str(workspace_id))
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError(
            "workspace_session needs an idle connection: commit or roll back the open "
            "transaction first, so the workspace scope ends with this block"
        )
    with conn.transaction():
        conn.execute("SELECT set_config('app.workspace_id', %s, true)", [str(workspace)])
        yield conn
