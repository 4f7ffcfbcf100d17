"""Drift on a Workspace's children: a deleted or hand-edited object is put back as built.

Only the fields the operator sets are compared, so server defaults never count as drift, but
an extra rule in a worker Role or a missing NetworkPolicy does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from numail.api import LABEL_WORKSPACE
from numail_operator import k8s
from numail_operator.build.workspace import (
    DATABASE_SECRET,
    KEYSERVICE_CA_CONFIGMAP,
    Manifest,
    WorkspaceInputs,
)
from numail_operator.reconcile.workspace import (
    desired_children,
    desired_database_secret,
    desired_keyservice_ca,
    inputs_for,
    mailbox_inventory,
    parse_workspace,
)
from numail_operator.settings import Settings


def drifted(desired: Any, actual: Any) -> bool:
    """True if `actual` lacks or changes anything `desired` sets. Lists must match in full:
    an added rule or subject is drift, not a default."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return True
        return any(drifted(v, actual.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return True
        return any(drifted(d, a) for d, a in zip(desired, actual, strict=True))
    if isinstance(desired, int | float) and isinstance(actual, str):
        return str(desired) != actual
    return bool(desired != actual)


def repair_child(
    child: dict[str, Any],
    deleted: bool,
    clients: k8s.Clients,
    applier: k8s.Applier,
    settings: Settings,
) -> str | None:
    """Re-apply the desired form of `child` if it was deleted or drifted; return what was done."""
    meta = child.get("metadata") or {}
    workspace = (meta.get("labels") or {}).get(LABEL_WORKSPACE)
    if not workspace:
        return None
    body = k8s.get_workspace(clients, workspace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    ws = parse_workspace(body)
    mailboxes = mailbox_inventory(clients, meta.get("namespace", ""))
    if child.get("kind") in ("Secret", "ConfigMap"):
        copy = _COPIES.get((str(child["kind"]), str(meta.get("name"))))
        if copy is None:
            return None
        desired = copy(clients, settings, inputs_for(ws, settings, mailboxes))
        return _repair_copy(child, deleted, applier, desired.manifest)
    for manifest in desired_children(ws, settings, mailboxes):
        if manifest["kind"] != child.get("kind") or manifest["metadata"]["name"] != meta.get(
            "name"
        ):
            continue
        if deleted:
            applier.apply(manifest)
            return f"recreated {child.get('kind')} {meta.get('namespace')}/{meta.get('name')}"
        current = {k: v for k, v in child.items() if k not in ("metadata", "status")}
        wanted = {k: v for k, v in manifest.items() if k not in ("metadata", "apiVersion", "kind")}
        if drifted(wanted, current) or drifted(
            manifest["metadata"].get("labels", {}), meta.get("labels") or {}
        ):
            applier.apply(manifest)
            where = f"{meta.get('namespace')}/{meta.get('name')}"
            return f"reverted a change to {child.get('kind')} {where}"
    return None


class _Copy(Protocol):
    @property
    def manifest(self) -> Manifest | None: ...


# Children copied from a source in the operator's namespace, built by reading that source.
_COPIES: dict[tuple[str, str], Callable[[k8s.Clients, Settings, WorkspaceInputs], _Copy]] = {
    ("Secret", DATABASE_SECRET): desired_database_secret,
    ("ConfigMap", KEYSERVICE_CA_CONFIGMAP): desired_keyservice_ca,
}


def _repair_copy(
    child: dict[str, Any], deleted: bool, applier: k8s.Applier, manifest: Manifest | None
) -> str | None:
    """A copy (the workers' DSN Secret, the key service's CA ConfigMap): put back when deleted
    or when its data or labels differ from the source's. With no source (manifest None) the last
    copy stays, and the Workspace's condition says so at its next reconcile. Nothing from the
    data is returned or logged, only the name."""
    if manifest is None:
        return None
    meta = child.get("metadata") or {}
    where = f"{child.get('kind')} {meta.get('namespace')}/{meta.get('name')}"
    if deleted:
        applier.apply(manifest)
        return f"recreated {where}"
    if (child.get("data") or {}) != manifest["data"] or drifted(
        manifest["metadata"]["labels"], meta.get("labels") or {}
    ):
        applier.apply(manifest)
        return f"reverted a change to {where}"
    return None
