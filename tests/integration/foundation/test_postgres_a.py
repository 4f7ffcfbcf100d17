"""PostgreSQL fixture, module A: a real server and a database of this module's own."""

import psycopg


def test_each_module_gets_its_own_database(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # CREATE TABLE (not IF NOT EXISTS) fails if module B's database were shared.
        conn.execute("CREATE TABLE isolation_probe (owner text)")
        conn.execute("INSERT INTO isolation_probe VALUES ('a')")
        rows = conn.execute("SELECT owner FROM isolation_probe").fetchall()
        name = conn.execute("SELECT current_database()").fetchone()
    assert rows == [("a",)]
    assert name is not None and name[0].endswith("test_postgres_a")
