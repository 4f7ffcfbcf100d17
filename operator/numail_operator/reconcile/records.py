"""What the operator writes to PostgreSQL: the workspace registry and audit events.

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
from numail.db.workspaces import register_workspace
from numail_operator.settings import Settings

log = logging.getLogger("numail.operator.records")
ACTOR = "system:numail-operator"


def register(settings: Settings, uid: str, name: str, parent_uid: str | None, access: str) -> bool:
    if not settings.database_url:
        return False
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            register_workspace(conn, uid, name, parent_uid, access)
    except psycopg.Error as err:
        log.warning("workspace %s not registered in the database yet: %s", name, err)
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
