"""Schema migrations, workspace-scoped connections (row-level security) and the audit trail."""
