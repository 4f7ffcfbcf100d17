"""The audit trail's public API: record() for the operator, its durable spool, keys, verify.

record() writes an event to PostgreSQL (numail.db.audit). When the database can't be reached
it writes the event to a local spool instead, and the next record() or flush_spool() replays
the spool, in order, before anything newer. Nothing is lost and nothing is reordered.

Why a spool directory and not the custom resource's status: status shares the object's size
limit in etcd (about 1.5 MiB), so a long outage would overflow it; status writes are
optimistic, so concurrent handlers race and a conflict drops or duplicates an event; and status
is readable by anyone who can read the resource. A directory of one file per event needs no
lock or file format for appends: each file is written under a temporary name, fsync'd, renamed
into place and the directory fsync'd, so a file is either complete or absent, and a crash
never leaves half an event to replay. A file is deleted only after the transaction that
appended it committed; if the process dies between the two, the replay finds the event's
event_id already in the chain and skips it. File names are zero-padded counters, max(wall
clock in ns, previous name + 1), so name order is record order even if the clock steps back.

The spool must live on a volume that outlives the process (NUMAIL_AUDIT_SPOOL_DIR); on a
container's own filesystem it is lost with the container.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from numail.db.audit import (
    Digest,
    ExportedEvent,
    Problem,
    VerifyReport,
    export_events,
    record_many,
    sign_digest,
    verify,
)
from numail.db.chain import ACTIONS, GENESIS_HASH, AuditError, Event, key_id, row_hash

__all__ = [
    "ACTIONS",
    "GENESIS_HASH",
    "AuditError",
    "Digest",
    "Event",
    "ExportedEvent",
    "Problem",
    "VerifyReport",
    "export_events",
    "flush_spool",
    "hash_identifier",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "public_key_pem",
    "record",
    "record_many",
    "row_hash",
    "sign_digest",
    "spool_event",
    "verify",
]

DEFAULT_SPOOL_DIR = Path("/var/lib/numail/audit-spool")
MIN_WORKSPACE_KEY_BYTES = 16

log = logging.getLogger(__name__)
# Serialises record() and spool writes in this process, so a direct write can't overtake
# events still waiting in the spool, and two spool writes can't pick the same name.
_lock = threading.RLock()


def hash_identifier(workspace_key: bytes, email: str) -> str:
    """HMAC-SHA256 of the address (trimmed, lowercased) under the workspace's key, as hex.

    Keyed, so the value can't be reversed by hashing a list of known addresses; per workspace,
    so the same person is not linkable across tenants.
    """
    if len(workspace_key) < MIN_WORKSPACE_KEY_BYTES:
        raise ValueError(
            f"workspace_key must be at least {MIN_WORKSPACE_KEY_BYTES} bytes of secret key material"
        )
    normalized = email.strip().lower().encode("utf-8")
    return hmac.new(workspace_key, normalized, hashlib.sha256).hexdigest()


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """The digest signing key from an unencrypted PEM file (openssl genpkey -algorithm ed25519)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise AuditError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(
            f"{path} holds a {type(key).__name__}; audit digests are signed with Ed25519: "
            "create one with openssl genpkey -algorithm ed25519"
        )
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, TypeError) as err:
        raise AuditError(f"{path}: not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The PEM (SubjectPublicKeyInfo) to publish for `numail audit verify --public-key`."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode("ascii")


def _spool_dir(spool_dir: str | Path | None) -> Path:
    if spool_dir is not None:
        return Path(spool_dir)
    return Path(os.environ.get("NUMAIL_AUDIT_SPOOL_DIR") or DEFAULT_SPOOL_DIR)


def _spool_files(directory: Path) -> list[Path]:
    """Complete spool files in record order; temporary files start with a dot and are skipped."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".json" and p.name[0] != ".")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_event(event: Event, spool_dir: str | Path | None = None) -> Path:
    """Writes the event durably to the spool and returns its file."""
    directory = _spool_dir(spool_dir)
    body = {
        "v": 1,
        "event_id": str(event.event_id),
        "workspace_id": str(event.workspace_id),
        "actor": event.actor,
        "action": event.action,
        "source": event.source,
        "target": event.target,
        "details": event.details,
    }
    data = json.dumps(body, sort_keys=True).encode("utf-8")
    with _lock:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = _spool_files(directory)
        last = int(files[-1].name.split("-", 1)[0]) if files else 0
        path = directory / f"{max(time.time_ns(), last + 1):020d}-{event.event_id}.json"
        temporary = directory / f".{path.name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        temporary.rename(path)
        _fsync_dir(directory)
    return path


def _read_spooled(path: Path) -> Event:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return Event.create(
            workspace_id=body["workspace_id"],
            actor=body["actor"],
            action=body["action"],
            source=body["source"],
            target=body["target"],
            details=body["details"],
            event_id=body["event_id"],
        )
    except (ValueError, KeyError, TypeError) as err:
        raise AuditError(
            f"{path}: unreadable spooled audit event ({err}); flushing stops here to keep the "
            "order: inspect the file, move it out of the spool, then flush again"
        ) from err


def flush_spool(conn: psycopg.Connection[Any], spool_dir: str | Path | None = None) -> int:
    """Replays the spool in order, deleting each file after its commit; returns events appended.

    Stops at the first failure, leaving that file and every later one in place.
    """
    directory = _spool_dir(spool_dir)
    appended = 0
    with _lock:
        for path in _spool_files(directory):
            try:
                event = _read_spooled(path)
            except FileNotFoundError:  # another process flushed it meanwhile
                continue
            appended += record_many(conn, [event])
            path.unlink(missing_ok=True)
            _fsync_dir(directory)
    return appended


def record(
    *,
    actor: str,
    action: str,
    workspace_id: UUID | str,
    target: str,
    source: str,
    details: Mapping[str, Any] | None = None,
    dsn: str | None = None,
    spool_dir: str | Path | None = None,
    connect_timeout: int = 5,
) -> Literal["written", "spooled"]:
    """Records one audit event; returns "spooled" if the database was unreachable.

    The event is validated first (known action, no email address anywhere, encodable details)
    and refused with AuditError before anything is written. `dsn` defaults to
    NUMAIL_DATABASE_URL and `spool_dir` to NUMAIL_AUDIT_SPOOL_DIR. If the database answers
    but refuses the event, the event is still spooled and AuditError says so.
    """
    event = Event.create(
        workspace_id=workspace_id,
        actor=actor,
        action=action,
        source=source,
        target=target,
        details=details,
    )
    url = dsn or os.environ.get("NUMAIL_DATABASE_URL")
    if not url:
        raise AuditError("no audit database: pass dsn= or set NUMAIL_DATABASE_URL")
    directory = _spool_dir(spool_dir)
    with _lock:
        try:
            with psycopg.connect(url, connect_timeout=connect_timeout) as conn:
                flush_spool(conn, directory)
                record_many(conn, [event])
        except psycopg.OperationalError as err:
            path = spool_event(event, directory)
            log.warning("audit database unreachable (%s); event spooled to %s", err, path)
            return "spooled"
        except (psycopg.Error, AuditError) as err:
            path = spool_event(event, directory)
            raise AuditError(
                f"the audit trail refused an append ({err}); this event is kept in {path} and "
                "is replayed, in order, by the next successful record() or flush_spool()"
            ) from err
    return "written"
