"""Schema migrations, workspace-scoped connections (row-level security) and the audit trail."""

from numail.db.migrate import MigrationError, migrate
from numail.db.session import workspace_session

__all__ = ["MigrationError", "migrate", "workspace_session"]
