"""Operator evidence: the workspace registry, audit events and signed digests in PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import K8s
from tests.support.controlplane import ControlPlane
from tests.support.operator import OperatorProcess, start_operator
from tests.support.waiting import condition, wait_for

G, V = "numail.ai", "v1alpha1"


@pytest.fixture(scope="module")
def audited_operator(
    controlplane: ControlPlane,
    k8s: K8s,
    numail_crds: list[str],
    pg_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OperatorProcess, str, Path]]:
    tmp = tmp_path_factory.mktemp("audited")
    key = Ed25519PrivateKey.generate()
    (tmp / "signing.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp / "signing.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    op = start_operator(
        controlplane.kubeconfig,
        tmp / "op",
        {
            "NUMAIL_DATABASE_URL": pg_dsn,
            "NUMAIL_AUDIT_SIGNING_KEY_FILE": str(tmp / "signing.pem"),
            "NUMAIL_AUDIT_SPOOL_DIR": str(tmp / "spool"),
            "NUMAIL_AUDIT_INTERVAL": "1",
        },
    )
    try:
        yield op, pg_dsn, tmp / "signing.pub"
    finally:
        op.stop()


def rows(dsn: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params or []).fetchall()


def ready(k8s: K8s, name: str) -> dict[str, Any] | None:
    ws = k8s.custom.get_cluster_custom_object(G, V, "workspaces", name)
    c = condition(ws, "Ready")
    return dict(ws) if c and c["status"] == "True" else None


def test_workspace_lifecycle_is_registered_audited_and_signed(
    audited_operator: tuple[OperatorProcess, str, Path], k8s: K8s
) -> None:
    _, dsn, public_key = audited_operator
    for name, spec in (
        ("audit-agency", {"tier": "agency"}),
        ("audit-child", {"parent": "audit-agency", "parentAccess": "read"}),
    ):
        k8s.custom.create_cluster_custom_object(
            G,
            V,
            "workspaces",
            {
                "apiVersion": f"{G}/{V}",
                "kind": "Workspace",
                "metadata": {"name": name},
                "spec": spec,
            },
        )
    agency = wait_for(lambda: ready(k8s, "audit-agency"), 60, "agency Ready")
    child = wait_for(lambda: ready(k8s, "audit-child"), 60, "child Ready")
    a_uid, c_uid = agency["metadata"]["uid"], child["metadata"]["uid"]

    def registered() -> bool:
        found = rows(dsn, "SELECT id::text, name, parent_id::text FROM workspaces ORDER BY name")
        return (a_uid, "audit-agency", None) in found and (c_uid, "audit-child", a_uid) in found

    wait_for(registered, 60, "both workspaces registered")
    assert rows(
        dsn,
        "SELECT parent_id::text, access FROM workspace_parents WHERE workspace_id = %s",
        [c_uid],
    ) == [(a_uid, "read")]
    for uid in (a_uid, c_uid):
        actions = [
            r[0]
            for r in rows(
                dsn,
                "SELECT action::text FROM audit_events WHERE workspace_id = %s ORDER BY seq",
                [uid],
            )
        ]
        assert actions[:2] == ["workspace.created", "key.created"], actions

    wait_for(
        lambda: rows(dsn, "SELECT count(*) FROM audit_digests")[0][0] >= 2, 30, "signed digests"
    )

    for name in ("audit-child", "audit-agency"):
        k8s.custom.delete_cluster_custom_object(G, V, "workspaces", name)

    def deleted_recorded() -> bool:
        got = rows(
            dsn, "SELECT workspace_id::text FROM audit_events WHERE action = 'workspace.deleted'"
        )
        return {(a_uid,), (c_uid,)} <= set(got)

    wait_for(deleted_recorded, 60, "workspace.deleted events")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "numail.cli",
            "audit",
            "verify",
            "--dsn",
            dsn,
            "--public-key",
            str(public_key),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # And the check is real: alter one event as a superuser and verification fails.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            'UPDATE audit_events SET details = \'{"tier": "standard"}\' '
            "WHERE workspace_id = %s AND action = 'workspace.created'",
            [a_uid],
        )
    tampered = subprocess.run(
        [
            sys.executable,
            "-m",
            "numail.cli",
            "audit",
            "verify",
            "--dsn",
            dsn,
            "--public-key",
            str(public_key),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert tampered.returncode == 1 and "seq 1" in tampered.stdout + tampered.stderr
