"""Row-level security on a real PostgreSQL: tenants never see or write each other's rows.

The tenant tables are read from the catalog (every relation with a workspace_id column), so a
table added without policies, or without sample rows here, fails these tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.types.json import Jsonb

from numail.audit import Event, hash_identifier, record_many, sign_digest
from numail.db import migrate, workspace_session

APP_ROLES = ("numail_operator", "numail_worker", "numail_readonly")
# Every table that has sample rows below; the catalog must list exactly these.
SEEDED_TABLES = {
    "workspace_parents",
    "mailboxes",
    "leads",
    "sequences",
    "sequence_steps",
    "send_jobs",
    "send_attempts",
    "mailbox_daily_sends",
    "send_queue",
    "send_workers",
    "inbound_cursors",
    "sent_messages",
    "replies",
    "suppression_entries",
    "audit_events",
    "audit_heads",
    "audit_digests",
}
WORKSPACE_KEY = b"k" * 32


@dataclass(frozen=True)
class Tenants:
    a: UUID
    b: UUID
    agency1: UUID
    agency2: UUID
    child1: UUID  # of agency1, grants read
    child2: UUID  # of agency2, grants manage
    child3: UUID  # of agency1, grants nothing
    users: dict[str, str]  # app role -> a LOGIN user that is a member of it
    dsn: str
    tables: list[str]

    def connect(self, role: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn.replace("user=postgres", f"user={self.users[role]}"))


def seed(conn: psycopg.Connection[Any], ws: UUID, name: str, parent: UUID | None) -> None:
    """One row in every tenant table for `ws`, inserted as the superuser (RLS does not apply)."""
    mailbox, lead, sequence, job, sent = (uuid.uuid4() for _ in range(5))
    email = f"lead-{name}@example.com"
    statements: list[tuple[str, list[Any]]] = [
        ("INSERT INTO workspaces (id, name, parent_id) VALUES (%s, %s, %s)", [ws, name, parent]),
        (
            "INSERT INTO mailboxes (id, workspace_id, namespace, name, provider) "
            "VALUES (%s, %s, %s, 'sales', 'gmail')",
            [mailbox, ws, f"ws-{name}"],
        ),
        (
            "INSERT INTO leads (id, workspace_id, email, email_hash, first_name) "
            "VALUES (%s, %s, %s, %s, 'Ada')",
            [lead, ws, email, hash_identifier(WORKSPACE_KEY, email)],
        ),
        (
            "INSERT INTO sequences (id, workspace_id, name) VALUES (%s, %s, 'intro')",
            [sequence, ws],
        ),
        (
            "INSERT INTO sequence_steps (workspace_id, sequence_id, position, subject_template, "
            "body_template) VALUES (%s, %s, 1, 'Hi', 'Hello')",
            [ws, sequence],
        ),
        (
            "INSERT INTO send_jobs (id, workspace_id, mailbox_id, lead_id, sequence_id, step, "
            "scheduled_at, due_at, state, message_id, idempotency_key) "
            "VALUES (%s, %s, %s, %s, %s, 1, now(), now(), 'sent', %s, %s)",
            [job, ws, mailbox, lead, sequence, f"<{job}@numail.invalid>", f"seed-{job}"],
        ),
        (
            "INSERT INTO send_attempts (workspace_id, send_job_id, attempt, worker, outcome) "
            "VALUES (%s, %s, 1, 'seed', 'sent')",
            [ws, job],
        ),
        (
            "INSERT INTO send_queue (job_id, workspace_id, due_at) VALUES (%s, %s, now())",
            [job, ws],
        ),
        (
            "INSERT INTO send_workers (workspace_id, owner, lease_until, jobs) "
            "VALUES (%s, 'seed', now(), ARRAY[%s]::uuid[])",
            [ws, job],
        ),
        (
            "INSERT INTO inbound_cursors (workspace_id, mailbox_id, uidvalidity, last_uid) "
            "VALUES (%s, %s, 1, 1)",
            [ws, mailbox],
        ),
        (
            "INSERT INTO mailbox_daily_sends (workspace_id, mailbox_id, day, reserved) "
            "VALUES (%s, %s, current_date, 1)",
            [ws, mailbox],
        ),
        (
            "INSERT INTO sent_messages (id, workspace_id, send_job_id, mailbox_id, lead_id, "
            "message_id) VALUES (%s, %s, %s, %s, %s, %s)",
            [sent, ws, job, mailbox, lead, f"<{job}@numail.invalid>"],
        ),
        (
            "INSERT INTO replies (workspace_id, mailbox_id, sent_message_id, lead_id, message_id, "
            "in_reply_to, kind, received_at) VALUES (%s, %s, %s, %s, %s, %s, 'reply', now())",
            [ws, mailbox, sent, lead, f"<r-{job}@example.com>", f"<{job}@numail.invalid>"],
        ),
        (
            "INSERT INTO suppression_entries (workspace_id, email_hash, reason) "
            "VALUES (%s, %s, 'unsubscribe')",
            [ws, hash_identifier(WORKSPACE_KEY, "gone@example.com")],
        ),
    ]
    with conn.transaction():
        for sql, params in statements:
            conn.execute(sql.encode(), params)
    record_many(
        conn,
        [
            Event.create(
                workspace_id=ws,
                actor="system:serviceaccount:numail-system:numail-operator",
                action="workspace.created",
                source="numail-operator",
                target=f"workspace/{name}",
            )
        ],
    )


def grant_parent_access(
    conn: psycopg.Connection[Any], child: UUID, parent: UUID, access: str
) -> None:
    with conn.transaction():
        conn.execute(
            "INSERT INTO workspace_parents (workspace_id, parent_id, access) VALUES (%s, %s, %s)",
            [child, parent, access],
        )


def ensure_login(conn: psycopg.Connection[Any], user: str, member_of: str) -> None:
    """Roles are cluster-wide and outlive this module's database, so create them only once."""
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user]).fetchone()
        if not exists:
            conn.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE {member_of}'.encode())


def tenant_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, bool, bool]]:
    """(name, relkind, relrowsecurity, relforcerowsecurity) of every relation with workspace_id."""
    with conn.transaction():
        rows = conn.execute(
            """
            SELECT c.relname, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity
              FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_attribute a ON a.attrelid = c.oid
             WHERE n.nspname = 'public' AND a.attname = 'workspace_id' AND NOT a.attisdropped
               AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
             ORDER BY 1
            """
        ).fetchall()
    return [(str(r[0]), str(r[1]), bool(r[2]), bool(r[3])) for r in rows]


@pytest.fixture(scope="module")
def tenants(pg_dsn: str) -> Iterator[Tenants]:
    ids = [uuid.uuid4() for _ in range(7)]
    a, b, agency1, agency2, child1, child2, child3 = ids
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
        users = {role: f"rls_{role.removeprefix('numail_')}" for role in APP_ROLES}
        for role, user in users.items():
            ensure_login(conn, user, role)
        seed(conn, a, "a", None)
        seed(conn, b, "b", None)
        seed(conn, agency1, "agency1", None)
        seed(conn, agency2, "agency2", None)
        seed(conn, child1, "child1", agency1)
        seed(conn, child2, "child2", agency2)
        seed(conn, child3, "child3", agency1)
        grant_parent_access(conn, child1, agency1, "read")
        grant_parent_access(conn, child2, agency2, "manage")
        sign_digest(conn, Ed25519PrivateKey.generate())
        tables = [t[0] for t in tenant_tables(conn)]
    yield Tenants(a, b, agency1, agency2, child1, child2, child3, users, pg_dsn, tables)


def visible_workspaces(conn: psycopg.Connection[Any], table: str) -> dict[UUID, int]:
    rows = conn.execute(f"SELECT workspace_id, count(*) FROM {table} GROUP BY 1".encode())
    return {UUID(str(ws)): int(n) for ws, n in rows}


def test_every_tenant_table_is_a_table_that_forces_row_level_security(tenants: Tenants) -> None:
    with psycopg.connect(tenants.dsn) as conn:
        found = tenant_tables(conn)
        with conn.transaction():
            registry = conn.execute(
                "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE oid = 'workspaces'::regclass"
            ).fetchone()
    assert found, "the catalog query found no tenant tables at all"
    for name, kind, enabled, forced in found:
        # A view or materialized view would run as its owner and bypass the policies.
        assert kind == "r", f"{name} has a workspace_id column but is relkind {kind}, not a table"
        assert enabled, f"{name} has a workspace_id column but row-level security is off"
        assert forced, f"{name} does not FORCE row-level security, so its owner bypasses it"
    assert registry == (True, True)


def test_every_tenant_table_has_sample_rows_in_these_tests(tenants: Tenants) -> None:
    assert set(tenants.tables) == SEEDED_TABLES, (
        "a tenant table was added or removed: give it a row per workspace in seed() and add it "
        "to SEEDED_TABLES, so the isolation tests cover it"
    )


def test_the_application_roles_cannot_bypass_row_level_security(tenants: Tenants) -> None:
    with psycopg.connect(tenants.dsn) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolbypassrls, rolsuper FROM pg_roles "
            "WHERE rolname = ANY(%s) ORDER BY 1",
            [list(APP_ROLES)],
        ).fetchall()
    assert rows == [(role, False, False, False) for role in sorted(APP_ROLES)]


@pytest.mark.parametrize("role", APP_ROLES)
def test_a_workspace_sees_only_its_own_rows_in_every_tenant_table(
    tenants: Tenants, role: str
) -> None:
    t = tenants
    with t.connect(role) as conn:
        for table in t.tables:
            for mine, other in ((t.a, t.b), (t.b, t.a), (t.child1, t.child2)):
                with workspace_session(conn, mine):
                    seen = set(visible_workspaces(conn, table))
                assert other not in seen, f"{role} in {mine} sees {table} rows of {other}"
                assert seen <= {mine}, f"{role} in {mine} sees {table} rows of {seen}"
            # child1 has a row in every tenant table, workspace_parents included.
            assert seen == {t.child1}, f"{role} in child1 doesn't see its own {table} rows"


@pytest.mark.parametrize("role", APP_ROLES)
def test_without_a_workspace_session_no_tenant_row_is_visible(tenants: Tenants, role: str) -> None:
    with tenants.connect(role) as conn:
        for table in tenants.tables:
            with conn.transaction():
                assert visible_workspaces(conn, table) == {}, f"{role} sees {table} unscoped"


def row_of(dsn: str, table: str, workspace: UUID) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT to_jsonb(t) FROM {table} t WHERE workspace_id = %s LIMIT 1".encode(),
            [workspace],
        ).fetchone()
    assert row is not None, f"no sample row of {table} for {workspace}"
    return dict(row[0])


def other_than_a(tenants: Tenants, table: str) -> UUID:
    """B, or for workspace_parents (B is nobody's child) child2, whose row names agency2."""
    return tenants.child2 if table == "workspace_parents" else tenants.b


@pytest.mark.parametrize("role", APP_ROLES)
def test_a_workspace_cannot_insert_rows_for_another_workspace(tenants: Tenants, role: str) -> None:
    """Every tenant table, every role: either no INSERT privilege, or the policy refuses it."""
    insert = (
        "INSERT INTO {t} OVERRIDING SYSTEM VALUE SELECT * FROM jsonb_populate_record(NULL::{t}, %s)"
    )
    with tenants.connect(role) as conn:
        for table in tenants.tables:
            b_row = row_of(tenants.dsn, table, other_than_a(tenants, table))
            with conn.transaction():
                may_insert = conn.execute(
                    "SELECT has_table_privilege(%s, 'INSERT')", [table]
                ).fetchone() == (True,)
            with (
                pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
                workspace_session(conn, tenants.a),
            ):
                conn.execute(insert.format(t=table).encode(), [Jsonb(b_row)])
            expected = "row-level security" if may_insert else "permission denied"
            assert expected in str(refused.value), f"{role} inserting into {table}: {refused.value}"


def test_a_role_with_every_privilege_is_still_held_to_its_workspace(tenants: Tenants) -> None:
    """The policies, not just the grants, refuse writes for another workspace in every table."""
    probe = "rls_probe"
    with psycopg.connect(tenants.dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [probe]).fetchone():
            conn.execute(f"CREATE ROLE {probe} LOGIN".encode())
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
            f"TO {probe}".encode()
        )
    insert = (
        "INSERT INTO {t} OVERRIDING SYSTEM VALUE SELECT * FROM jsonb_populate_record(NULL::{t}, %s)"
    )
    with psycopg.connect(tenants.dsn.replace("user=postgres", f"user={probe}")) as conn:
        for table in tenants.tables:
            b_row = row_of(tenants.dsn, table, other_than_a(tenants, table))
            with (
                pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
                workspace_session(conn, tenants.a),
            ):
                conn.execute(insert.format(t=table).encode(), [Jsonb(b_row)])
            with workspace_session(conn, tenants.a):
                moved = conn.execute(
                    f"UPDATE {table} SET workspace_id = workspace_id "
                    "WHERE workspace_id = %s".encode(),
                    [other_than_a(tenants, table)],
                )
                assert moved.rowcount == 0, f"workspace A updated B's {table} rows"
                gone = conn.execute(
                    f"DELETE FROM {table} WHERE workspace_id = %s".encode(),
                    [other_than_a(tenants, table)],
                )
                assert gone.rowcount == 0, f"workspace A deleted B's {table} rows"


@pytest.mark.parametrize("role", APP_ROLES)
def test_an_agency_reads_the_children_that_granted_access_and_no_sibling_agency(
    tenants: Tenants, role: str
) -> None:
    t = tenants
    with t.connect(role) as conn:
        for table in t.tables:
            with workspace_session(conn, t.agency1):
                seen = set(visible_workspaces(conn, table))
            expected = {t.child1} if table == "workspace_parents" else {t.agency1, t.child1}
            assert seen == expected, f"{role} as agency1 sees {table} rows of {seen}"
            with workspace_session(conn, t.agency2):
                seen = set(visible_workspaces(conn, table))
            expected = {t.child2} if table == "workspace_parents" else {t.agency2, t.child2}
            assert seen == expected, f"{role} as agency2 sees {table} rows of {seen}"


@pytest.mark.parametrize("role", APP_ROLES)
def test_a_child_workspace_cannot_read_its_parent(tenants: Tenants, role: str) -> None:
    with tenants.connect(role) as conn:
        for table in tenants.tables:
            with workspace_session(conn, tenants.child1):
                seen = set(visible_workspaces(conn, table))
            assert seen == {tenants.child1}, f"{role} as child1 sees {table} rows of {seen}"


def test_an_agency_cannot_change_its_childrens_rows(tenants: Tenants) -> None:
    t = tenants
    with t.connect("numail_worker") as conn:
        with workspace_session(conn, t.agency1):
            assert (
                conn.execute(
                    "UPDATE leads SET first_name = 'Mallory' WHERE workspace_id = %s", [t.child1]
                ).rowcount
                == 0
            )
            assert (
                conn.execute(
                    "DELETE FROM suppression_entries WHERE workspace_id = %s", [t.child1]
                ).rowcount
                == 0
            )
        lead = row_of(t.dsn, "leads", t.child1)
        lead.update(id=str(uuid.uuid4()), email_hash="0" * 64)
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
            workspace_session(conn, t.agency1),
        ):
            conn.execute(
                "INSERT INTO leads SELECT * FROM jsonb_populate_record(NULL::leads, %s)",
                [Jsonb(lead)],
            )


def test_the_registry_shows_a_workspace_itself_and_its_granting_children(tenants: Tenants) -> None:
    t = tenants
    with t.connect("numail_worker") as conn:
        with workspace_session(conn, t.agency1):
            names = {r[0] for r in conn.execute("SELECT name FROM workspaces")}
        assert names == {"agency1", "child1"}
        with workspace_session(conn, t.a):
            names = {r[0] for r in conn.execute("SELECT name FROM workspaces")}
        assert names == {"a"}
    with t.connect("numail_operator") as conn:
        with conn.transaction():
            names = {r[0] for r in conn.execute("SELECT name FROM workspaces")}
        assert names >= {"a", "b", "agency1", "agency2", "child1", "child2", "child3"}
        with workspace_session(conn, t.a):
            renamed = conn.execute(
                "UPDATE workspaces SET name = 'stolen' WHERE id = %s", [t.b]
            ).rowcount
        assert renamed == 0


def test_the_operator_grants_and_revokes_an_agencys_access_in_the_childs_scope(
    tenants: Tenants,
) -> None:
    t = tenants
    with t.connect("numail_operator") as operator, t.connect("numail_readonly") as reader:
        with workspace_session(reader, t.agency1):
            assert t.child3 not in visible_workspaces(reader, "leads")
        with workspace_session(operator, t.child3):
            operator.execute(
                "INSERT INTO workspace_parents (workspace_id, parent_id, access) "
                "VALUES (%s, %s, 'read')",
                [t.child3, t.agency1],
            )
        with workspace_session(reader, t.agency1):
            assert t.child3 in visible_workspaces(reader, "leads")
        with workspace_session(operator, t.child3):
            operator.execute("DELETE FROM workspace_parents WHERE workspace_id = %s", [t.child3])
        with workspace_session(reader, t.agency1):
            assert t.child3 not in visible_workspaces(reader, "leads")


def test_a_child_can_grant_access_only_to_its_own_parent(tenants: Tenants) -> None:
    with psycopg.connect(tenants.dsn) as conn, pytest.raises(psycopg.errors.ForeignKeyViolation):
        grant_parent_access(conn, tenants.child3, tenants.agency2, "read")


def test_the_workspace_scope_ends_with_its_transaction(tenants: Tenants) -> None:
    with tenants.connect("numail_worker") as conn:
        with workspace_session(conn, tenants.a):
            assert conn.execute("SELECT numail_current_workspace()").fetchone() == (tenants.a,)
        with conn.transaction():
            assert conn.execute("SELECT numail_current_workspace()").fetchone() == (None,)
            assert visible_workspaces(conn, "leads") == {}
        with pytest.raises(ZeroDivisionError), workspace_session(conn, tenants.a):
            conn.execute(
                "UPDATE leads SET first_name = 'Rolled back' WHERE workspace_id = %s", [tenants.a]
            )
            raise ZeroDivisionError
        with workspace_session(conn, tenants.a):
            names = {r[0] for r in conn.execute("SELECT first_name FROM leads")}
        assert names == {"Ada"}


def test_a_workspace_session_refuses_a_connection_inside_a_transaction(tenants: Tenants) -> None:
    with tenants.connect("numail_worker") as conn:
        conn.execute("SELECT 1")  # opens a transaction (autocommit is off)
        with (
            pytest.raises(RuntimeError, match="idle connection"),
            workspace_session(conn, tenants.a),
        ):
            pass
