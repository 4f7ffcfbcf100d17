"""The schema migrator: applies numail/db/migrations/NNNN_name.sql in order, each exactly once.

Each file runs in its own transaction together with its schema_migrations row, so a failing
file leaves nothing behind. The transaction first takes a fixed advisory lock, so migrators
started together (one per replica) apply each file once and in order. The SHA-256 of every
applied file is recorded and compared on each run: a file edited after it was applied is
refused, because the databases that already ran the old text would silently differ from new
ones. Fix forward with a new file instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# pg_advisory_xact_lock key: the first 8 bytes of SHA-256("numail.db.migrate"), as a signed int.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"numail.db.migrate").digest()[:8], "big", signed=True)


class MigrationError(RuntimeError):
    """The migrations on disk and those recorded in the database disagree, or one failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"{path}: migration files are named NNNN_lowercase_name.sql; rename it"
            )
        data = path.read_bytes()
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sql=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migration files share a version number")
    return migrations


def _applied(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {int(v): (str(n), str(c)) for v, n, c in rows}


def _check_history(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    known = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{name}.sql, which this code does "
                "not have: it was migrated by a newer release; run that release or newer"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.file_name} was edited after it was applied (recorded "
                f"sha256 {checksum}, file now {migration.checksum}); restore the applied text "
                "and put the change in a new migration file"
            )


def migrate(conn: psycopg.Connection[Any], directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Applies the pending migrations and returns them; [] when the schema is current.

    `conn` must be idle and connect as the role that owns the schema: it needs CREATEROLE the
    first time, to create the application roles.
    """
    migrations = load_migrations(directory)
    done: list[Migration] = []
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
            applied = _applied(conn)
            _check_history(migrations, applied)
            pending = [m for m in migrations if m.version not in applied]
            if not pending:
                return done
            migration = pending[0]
            try:
                conn.execute(migration.sql.encode("utf-8"))
            except psycopg.Error as err:
                raise MigrationError(f"migration {migration.file_name} failed: {err}") from err
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                [migration.version, migration.name, migration.checksum],
            )
        done.append(migration)
