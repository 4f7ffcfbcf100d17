"""Kopf handlers that watch a Workspace's children and mailboxes, to repair drift at once."""

from __future__ import annotations

from typing import Any

import kopf

from numail.api import GROUP, LABEL_MANAGED_BY, VERSION
from numail_operator import k8s, metrics
from numail_operator.build.workspace import DATABASE_SECRET, KEYSERVICE_CA_CONFIGMAP
from numail_operator.handlers.runtime import runtime
from numail_operator.reconcile.drift import repair_child

MANAGED = {LABEL_MANAGED_BY: "numail-operator"}
CHILDREN = (
    ("", "v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("", "v1", "resourcequotas"),
    ("", "v1", "limitranges"),
    ("apps", "v1", "deployments"),
)


# uid -> generation last checked. A MODIFIED event that leaves the generation alone (a
# Deployment's status, a ReplicaSet rollout) can't be drift in what the operator applies.
_checked: dict[str, int] = {}


def child_event(event: kopf.RawEvent, logger: kopf.Logger, **_: Any) -> None:
    if event["type"] not in ("MODIFIED", "DELETED"):
        return  # ADDED and the initial listing are the operator's own applies
    meta = event["object"].get("metadata") or {}
    uid, generation = meta.get("uid", ""), meta.get("generation")
    if event["type"] == "DELETED":
        _checked.pop(uid, None)
    elif generation is not None:
        if _checked.get(uid) == generation:
            return
        _checked[uid] = int(str(generation))
    rt = runtime()
    done = repair_child(
        dict(event["object"]), event["type"] == "DELETED", rt.clients, rt.applier, rt.settings
    )
    if done:
        metrics.DRIFT_REPAIRS.labels(event["object"].get("kind", "")).inc()
        logger.info(done)


for _group, _version, _plural in CHILDREN:
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"drift-{_plural}")(child_event)


# The workers' DSN copy is the one Secret that is applied, and so repaired, like the children.
kopf.on.event(
    "",
    "v1",
    "secrets",
    labels={**MANAGED, "app.kubernetes.io/component": "database"},
    field="metadata.name",
    value=DATABASE_SECRET,
    id="drift-database-secret",
)(child_event)


# So is the key service's CA copy, the one ConfigMap the operator writes.
kopf.on.event(
    "",
    "v1",
    "configmaps",
    labels={**MANAGED, "app.kubernetes.io/component": "keyservice-ca"},
    field="metadata.name",
    value=KEYSERVICE_CA_CONFIGMAP,
    id="drift-keyservice-ca",
)(child_event)


# The ca.crt of the key service's TLS Secret as last seen ("" when absent), to re-publish it
# at once when it appears, changes (a re-issued certificate) or goes; None: not seen yet.
_keyservice_ca: list[str | None] = [None]


def _is_keyservice_ca_source(namespace: str | None, name: str | None, **_: Any) -> bool:
    settings = runtime().settings
    source = settings.keyservice_ca_secret
    return source is not None and namespace == settings.system_namespace and name == source


@kopf.on.event("", "v1", "secrets", when=_is_keyservice_ca_source)
def keyservice_ca_source_event(event: kopf.RawEvent, logger: kopf.Logger, **_: Any) -> None:
    """Re-reconcile every Workspace when the CA the workers trust changes. The initial listing
    only records it: the operator's startup reconciles publish it anyway."""
    obj: dict[str, Any] = dict(event["object"])
    data = obj.get("data") or {}
    value = "" if event["type"] == "DELETED" else str(data.get("ca.crt") or "")
    previous, _keyservice_ca[0] = _keyservice_ca[0], value
    if event["type"] is None or previous == value:
        return
    rt = runtime()
    from numail_operator.reconcile.workspace import reconcile_workspace

    for name in k8s.list_workspace_names(rt.clients):
        body = k8s.get_workspace(rt.clients, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            continue
        result = reconcile_workspace(body, rt.clients, rt.applier, rt.providers, rt.settings)
        for kind, reason, message in result.events:
            kopf.event(kopf.Body(body), type=kind, reason=reason, message=message)  # type: ignore[arg-type]
        if result.status is not None:
            k8s.patch_status(rt.clients, "workspaces", name, result.status)
    logger.info("the key service's CA changed: re-published it to every workspace")


# Mailbox uid -> the OAuth client secret it names ("" for none), as last seen.
_client_secrets: dict[str, str] = {}


def _client_secret(mailbox: dict[str, Any]) -> str:
    oauth = (mailbox.get("spec") or {}).get("oauth") or {}
    return str((oauth.get("clientSecretRef") or {}).get("name") or "")


@kopf.on.event(GROUP, VERSION, "mailboxes")
def mailbox_event(event: kopf.RawEvent, **_: Any) -> None:
    """A mailbox added or removed, or one naming another OAuth client secret, changes which
    Secrets the worker Roles may name."""
    uid = str(event["object"]["metadata"].get("uid", ""))
    secret = _client_secret(dict(event["object"]))
    previous = _client_secrets.get(uid)
    if event["type"] == "DELETED":
        _client_secrets.pop(uid, None)
    else:
        _client_secrets[uid] = secret
    if event["type"] not in ("ADDED", "DELETED") and previous in (None, secret):
        return
    rt = runtime()
    namespace = event["object"]["metadata"].get("namespace", "")
    workspace = k8s.namespace_workspace(rt.clients, namespace)
    if workspace is None:
        return
    body = k8s.get_workspace(rt.clients, workspace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    from numail_operator.reconcile.workspace import reconcile_workspace

    result = reconcile_workspace(body, rt.clients, rt.applier, rt.providers, rt.settings)
    if result.status is not None:
        k8s.patch_status(rt.clients, "workspaces", workspace, result.status)
