"""The migrator against a real PostgreSQL: order, idempotence, edited files, failures, races."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from numail.audit import Event, record_many, verify
from numail.db import MigrationError, migrate, workspace_session
from numail.db.migrate import MIGRATIONS_DIR, load_migrations
from tests.support.postgres import PostgresServer

# The version a new migration file would take; the tests add files after the shipped ones.
NEXT = len(load_migrations()) + 1


@pytest.fixture
def fresh_dsn(postgres: PostgresServer) -> Iterator[str]:
    name = f"mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres.dsn(name)
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


def schema_snapshot(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    with conn.transaction():
        return conn.execute(
            """
            SELECT 'column', table_name, column_name || ' ' || data_type
              FROM information_schema.columns WHERE table_schema = 'public'
            UNION ALL SELECT 'policy', tablename, policyname FROM pg_policies
             WHERE schemaname = 'public'
            UNION ALL SELECT 'trigger', event_object_table,
                   trigger_name || ' ' || event_manipulation
              FROM information_schema.triggers WHERE trigger_schema = 'public'
            UNION ALL SELECT 'migration', version::text, checksum || ' ' || applied_at::text
              FROM schema_migrations
            ORDER BY 1, 2, 3
            """
        ).fetchall()


def test_a_fresh_database_gets_every_migration_in_order_with_its_checksum(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn) as conn:
        applied = migrate(conn)
        with conn.transaction():
            rows = conn.execute(
                "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
            ).fetchall()
    expected = load_migrations()
    assert [m.version for m in applied] == [m.version for m in expected]
    assert [m.version for m in expected] == list(range(1, len(expected) + 1))
    assert rows == [(m.version, m.name, m.checksum) for m in expected]


def test_running_the_migrator_again_changes_nothing(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn) as conn:
        migrate(conn)
        before = schema_snapshot(conn)
        assert migrate(conn) == []
        assert migrate(conn) == []
        assert schema_snapshot(conn) == before


def test_an_applied_migration_that_was_edited_is_refused_and_nothing_else_runs(
    fresh_dsn: str, migrations_copy: Path
) -> None:
    with psycopg.connect(fresh_dsn) as conn:
        migrate(conn, migrations_copy)
        edited = migrations_copy / "0002_tenancy.sql"
        edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
        (migrations_copy / f"{NEXT:04d}_later.sql").write_text("CREATE TABLE later (id int);")
        with pytest.raises(
            MigrationError, match=r"0002_tenancy\.sql was edited after it was applied"
        ):
            migrate(conn, migrations_copy)
        with conn.transaction():
            assert conn.execute("SELECT to_regclass('later')").fetchone() == (None,)


def test_a_database_migrated_by_a_newer_release_is_refused(
    fresh_dsn: str, migrations_copy: Path
) -> None:
    (migrations_copy / f"{NEXT:04d}_newer.sql").write_text("CREATE TABLE newer (id int);")
    with psycopg.connect(fresh_dsn) as conn:
        migrate(conn, migrations_copy)
        with pytest.raises(
            MigrationError, match=rf"{NEXT:04d}_newer\.sql, which this code does not have"
        ):
            migrate(conn)


def test_a_failing_migration_leaves_no_trace_and_can_be_fixed(
    fresh_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first (id int);")
    bad = tmp_path / "0002_second.sql"
    bad.write_text("CREATE TABLE second (id int);\nSELECT 1 / 0;")
    with psycopg.connect(fresh_dsn) as conn:
        with pytest.raises(MigrationError, match=r"0002_second\.sql failed: division by zero"):
            migrate(conn, tmp_path)
        with conn.transaction():
            assert conn.execute("SELECT to_regclass('first') IS NOT NULL").fetchone() == (True,)
            assert conn.execute("SELECT to_regclass('second')").fetchone() == (None,)
            assert conn.execute("SELECT array_agg(version) FROM schema_migrations").fetchone() == (
                [1],
            )
        bad.write_text("CREATE TABLE second (id int);")
        assert [m.version for m in migrate(conn, tmp_path)] == [2]


def test_a_badly_named_migration_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "2_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_lowercase_name\.sql"):
        load_migrations(tmp_path)


def test_concurrent_migrators_apply_each_migration_exactly_once(fresh_dsn: str) -> None:
    workers = 6
    barrier = threading.Barrier(workers)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(fresh_dsn) as conn:
                barrier.wait()
                results.append([m.version for m in migrate(conn)])
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(v for r in results for v in r) == [m.version for m in load_migrations()]
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (NEXT - 1,)


def test_a_non_superuser_owner_can_migrate_and_the_audit_trail_works_under_it(
    postgres: PostgresServer,
) -> None:
    """Production runs migrations as an ordinary owner role, where FORCE RLS binds the owner too."""
    suffix = uuid.uuid4().hex[:8]
    owner, worker, db = f"owner_{suffix}", f"worker_{suffix}", f"owned_{suffix}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{owner}" LOGIN CREATEROLE')
        conn.execute(f'CREATE DATABASE "{db}" OWNER "{owner}"')
    try:
        with psycopg.connect(postgres.dsn(db, owner)) as conn:
            assert len(migrate(conn)) == NEXT - 1
            with conn.transaction():
                conn.execute(f'CREATE ROLE "{worker}" LOGIN IN ROLE numail_worker')
                owners = conn.execute(
                    "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
                ).fetchall()
            assert owners == [(owner,)]
        workspace = uuid.uuid4()
        events = [
            Event.create(
                workspace_id=workspace,
                actor="system:serviceaccount:numail-system:numail-operator",
                action="key.created",
                source="numail-operator",
                target=f"key/{i}",
            )
            for i in range(5)
        ]
        with psycopg.connect(postgres.dsn(db, worker)) as conn:
            assert record_many(conn, events) == 5
            report = verify(conn, workspace)
            assert report.ok and report.rows == 5
            with workspace_session(conn, workspace):
                head = conn.execute(
                    "SELECT seq, hash FROM audit_heads WHERE workspace_id = %s", [workspace]
                ).fetchone()
                last = conn.execute(
                    "SELECT seq, hash FROM audit_events WHERE workspace_id = %s "
                    "ORDER BY seq DESC LIMIT 1",
                    [workspace],
                ).fetchone()
            assert head == last and head is not None and head[0] == 5
        with (
            psycopg.connect(postgres.dsn(db, owner)) as conn,
            pytest.raises(psycopg.errors.RaiseException, match="append-only"),
            workspace_session(conn, workspace),
        ):
            conn.execute("DELETE FROM audit_events WHERE workspace_id = %s", [workspace])
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{worker}"')
            conn.execute(f'DROP ROLE IF EXISTS "{owner}"')


def test_0005_carries_waiting_and_leased_jobs_over_under_a_non_superuser_owner(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """FORCE RLS hides every row from an owner with no workspace in its session; the queue and
    the worker leases must still be filled from the jobs 0004 left, or nothing is sent again."""
    suffix = uuid.uuid4().hex[:8]
    owner, db = f"owner_{suffix}", f"carry_{suffix}"
    older = tmp_path / "upto-0004"
    older.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) <= 4:
            shutil.copy(path, older / path.name)
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{owner}" LOGIN CREATEROLE')
        conn.execute(f'CREATE DATABASE "{db}" OWNER "{owner}"')
    ws, mailbox = uuid.uuid4(), uuid.uuid4()
    leads = [uuid.uuid4() for _ in range(3)]
    jobs = [uuid.uuid4() for _ in range(3)]
    try:
        with psycopg.connect(postgres.dsn(db, owner)) as conn:
            migrate(conn, older)
            with workspace_session(conn, ws):
                conn.execute("INSERT INTO workspaces (id, name) VALUES (%s, 'carry')", [ws])
                conn.execute(
                    "INSERT INTO mailboxes (id, workspace_id, namespace, name, provider, address) "
                    "VALUES (%s, %s, 'ws-carry', 'm', 'smtp', 'm@carry.test')",
                    [mailbox, ws],
                )
                for i, (lead, job) in enumerate(zip(leads, jobs, strict=True)):
                    conn.execute(
                        "INSERT INTO leads (id, workspace_id, email, email_hash) "
                        "VALUES (%s, %s, %s, %s)",
                        [lead, ws, f"l{i}@carry.test", f"{i:064x}"],
                    )
                    state, owner_, lease = [
                        ("scheduled", None, None),
                        ("claimed", "w1", "now() + interval '1 minute'"),
                        ("unknown", None, None),
                    ][i]
                    conn.execute(
                        "INSERT INTO send_jobs (id, workspace_id, mailbox_id, lead_id, "
                        "scheduled_at, state, message_id, lease_owner, lease_until) "
                        f"VALUES (%s, %s, %s, %s, now(), %s, %s, %s, {lease or 'NULL'})",
                        [job, ws, mailbox, lead, state, f"<{job}@carry.test>", owner_],
                    )
            applied = migrate(conn)
            assert applied[0].version == 5
            with workspace_session(conn, ws):
                queued = {r[0] for r in conn.execute("SELECT job_id FROM send_queue")}
                workers = conn.execute("SELECT owner, jobs FROM send_workers").fetchall()
                forced = conn.execute(
                    "SELECT relname FROM pg_class WHERE relforcerowsecurity AND relname = "
                    "ANY(ARRAY['send_jobs', 'send_attempts', 'send_queue', 'send_workers'])"
                ).fetchall()
        assert queued == {jobs[0], jobs[2]}
        assert workers == [("w1", [jobs[1]])]
        assert len(forced) == 4
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{owner}"')
