"""The `numail audit` commands: verify the hash chains and signed digests, export a trail.

`numail audit verify` exits 0 when every chain is intact, 1 when one was tampered with (each
chain's first bad row is printed), and 2 when it could not check (no database, bad key file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from numail.audit import AuditError, export_events, load_public_key, verify

EXIT_INTACT, EXIT_TAMPERED, EXIT_UNCHECKED = 0, 1, 2


class _UsageError(Exception):
    """Something to tell the user before anything was checked; exit code 2."""


def _dsn(args: argparse.Namespace) -> str:
    dsn = args.dsn or os.environ.get("NUMAIL_DATABASE_URL")
    if not dsn:
        raise _UsageError("no database: pass --dsn or set NUMAIL_DATABASE_URL")
    return str(dsn)


def _workspace_id(conn: psycopg.Connection[Any], workspace: str) -> UUID:
    """A Workspace's UID given either the UID or the name (looked up in the registry)."""
    try:
        return UUID(workspace)
    except ValueError:
        pass
    with conn.transaction():
        row = conn.execute("SELECT id FROM workspaces WHERE name = %s", [workspace]).fetchone()
    if row is None:
        raise _UsageError(
            f"no workspace named {workspace!r} is visible to this database user; "
            "pass the Workspace's UID (kubectl get workspace NAME -o jsonpath={.metadata.uid})"
        )
    return UUID(str(row[0]))


def cmd_verify(args: argparse.Namespace) -> int:
    keys = [load_public_key(path) for path in args.public_key or []]
    with psycopg.connect(_dsn(args)) as conn:
        workspace = _workspace_id(conn, args.workspace) if args.workspace else None
        report = verify(conn, workspace, keys or None)
    if not report.ok:
        for problem in report.problems:
            print(f"TAMPERED {problem}")
        print(
            f"numail audit verify: {len(report.problems)} problem(s) in "
            f"{report.workspaces} workspace(s); each line names the first bad row of its chain",
            file=sys.stderr,
        )
        return EXIT_TAMPERED
    signatures = (
        "digest signatures valid"
        if report.signatures_checked
        else "digest signatures NOT checked (pass --public-key)"
    )
    print(
        f"audit trail intact: {report.workspaces} workspace(s), {report.rows} rows, "
        f"{report.digests} digests, {signatures}"
    )
    return EXIT_INTACT


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _UsageError(
            f"--since {text!r} is not an ISO 8601 time such as 2025-01-31T00:00:00Z"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def cmd_export(args: argparse.Namespace) -> int:
    since = _since(args.since)
    with psycopg.connect(_dsn(args)) as conn:
        workspace = _workspace_id(conn, args.workspace)
        for event in export_events(
            conn, workspace, since=since, include_children=args.include_children
        ):
            sys.stdout.write(json.dumps(event.to_json(), sort_keys=True) + "\n")
    return EXIT_INTACT


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return int(func(args))
    except (_UsageError, AuditError, psycopg.OperationalError) as err:
        print(f"numail audit {args.audit_command}: {err}", file=sys.stderr)
        return EXIT_UNCHECKED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `audit verify` and `audit export` to a `numail` command parser."""
    audit = subparsers.add_parser("audit", help="verify or export the audit trail")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    verify_parser = commands.add_parser(
        "verify",
        help="recompute the hash chains and check the signed digests",
        description="Exit 0: intact. Exit 1: tampered; the first bad row of each chain is "
        "printed. Exit 2: nothing was checked.",
    )
    verify_parser.add_argument("--dsn", help="PostgreSQL URL (default: $NUMAIL_DATABASE_URL)")
    verify_parser.add_argument("--workspace", help="only this workspace (UID or name)")
    verify_parser.add_argument(
        "--public-key",
        action="append",
        metavar="PEM",
        help="digest signing public key (PEM file); repeat for keys used before a rotation",
    )
    verify_parser.set_defaults(func=lambda args: _run(cmd_verify, args))

    export_parser = commands.add_parser(
        "export", help="print a workspace's audit rows as JSON lines, in chain order"
    )
    export_parser.add_argument("--workspace", required=True, help="workspace UID or name")
    export_parser.add_argument("--since", help="only rows at or after this ISO 8601 time")
    export_parser.add_argument("--dsn", help="PostgreSQL URL (default: $NUMAIL_DATABASE_URL)")
    export_parser.add_argument(
        "--include-children",
        action="store_true",
        help="for an agency: also the sub-workspaces that granted it access",
    )
    export_parser.set_defaults(func=lambda args: _run(cmd_export, args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="numail", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
