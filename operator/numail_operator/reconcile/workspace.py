"""Workspace reconciler: gather, build, apply; then conditions that say what is wrong and why.

Order matters: the namespace first (everything lives in it), then keys (create-only), then the
workers' RBAC and network policy, and the Deployments last, so a worker never starts in a
namespace whose isolation isn't in place yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from numail.api import REPLY_WORKER_SA, SEND_WORKER_SA
from numail.api.conditions import set_condition
from numail.api.models import Condition, Workspace
from numail.api.models import WorkerSpec as ModelWorkerSpec
from numail_operator import k8s
from numail_operator.build.workspace import (
    PlatformEndpoints,
    WorkerSpec,
    WorkspaceInputs,
    build_namespace,
    build_workspace_children,
)
from numail_operator.reconcile import records
from numail_operator.reconcile.keys import (
    KeyNotReady,
    ProviderDirectory,
    WorkspaceKeys,
    ensure_keys,
)
from numail_operator.settings import Settings

Manifest = dict[str, Any]


class MailboxesRemain(Exception):
    """Deletion waits until every Mailbox has revoked its grant and gone."""


@dataclass(frozen=True)
class Gathered:
    """Inputs already known from the operator's watches; None means ask the apiserver."""

    mailboxes: list[str] | None = None
    key_providers: dict[str, dict[str, Any] | None] | None = None


@dataclass
class Outcome:
    """What a reconcile did: the status to write (None if unchanged) and Events to post."""

    status: dict[str, Any] | None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    retry_after: float | None = None
    keys: WorkspaceKeys | None = None


def _worker(spec: ModelWorkerSpec | None, settings: Settings) -> WorkerSpec:
    if spec is None:
        return WorkerSpec(settings.worker_image, 1, dict(settings.worker_resources))
    resources = (
        spec.resources.model_dump(mode="json", exclude_none=True)
        if spec.resources is not None
        else dict(settings.worker_resources)
    )
    return WorkerSpec(spec.image or settings.worker_image, spec.replicas, resources)


def parse_workspace(body: dict[str, Any]) -> Workspace:
    """Validate metadata and spec strictly. Status is ours and read field by field, so an
    unexpected status field (another controller's, or an old version's) never blocks a reconcile."""
    return Workspace.model_validate(
        {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    )


def _conditions(status: dict[str, Any]) -> list[Condition]:
    out = []
    for raw in status.get("conditions") or []:
        try:
            out.append(Condition.model_validate(raw))
        except ValueError:
            continue  # a malformed condition is replaced by the next set_condition
    return out


def inputs_for(ws: Workspace, settings: Settings, mailboxes: list[str]) -> WorkspaceInputs:
    spec = ws.spec
    workers = spec.workers
    quota = spec.quota
    egress = spec.egress
    return WorkspaceInputs(
        name=ws.metadata["name"],
        uid=ws.metadata["uid"],
        tier=spec.tier,
        parent=spec.parent,
        parent_access=spec.parent_access,
        retain=spec.deletion_policy == "Retain",
        send_worker=_worker(workers.send_worker if workers else None, settings),
        reply_worker=_worker(workers.reply_worker if workers else None, settings),
        mailboxes=tuple(mailboxes),
        max_mailboxes=quota.max_mailboxes if quota else None,
        quota_cpu=quota.cpu if quota else None,
        quota_memory=quota.memory if quota else None,
        egress_cidrs=tuple(egress.allow_cidrs or ()) if egress else (),
        egress_ports=tuple((p.port, p.protocol) for p in (egress.ports or ())) if egress else (),
        endpoints=PlatformEndpoints(
            system_namespace=settings.system_namespace,
            keyservice_url=settings.keyservice_url,
            keyservice_port=settings.keyservice_port,
        ),
    )


def desired_children(ws: Workspace, settings: Settings, mailboxes: list[str]) -> list[Manifest]:
    return build_workspace_children(inputs_for(ws, settings, mailboxes))


def reconcile_workspace(
    body: dict[str, Any],
    clients: k8s.Clients,
    applier: k8s.Applier,
    providers: ProviderDirectory,
    settings: Settings,
    now: dt.datetime | None = None,
    cache: Gathered | None = None,
) -> Outcome:
    """`cache` carries what the handlers already hold from their watches (mailbox names,
    KeyProvider objects), so a reconcile doesn't ask the apiserver again."""
    ws = parse_workspace(body)
    now = now or dt.datetime.now(dt.UTC)
    generation = int(ws.metadata.get("generation", 1))
    status = dict(body.get("status") or {})
    conditions = _conditions(status)
    events: list[tuple[str, str, str]] = []
    changed = False

    def condition(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions, changed
        conditions, did = set_condition(
            conditions, type_, "True" if ok else "False", reason, message, generation, now
        )
        changed = changed or did

    inputs = inputs_for(ws, settings, [])
    parent_problem, parent_uid = _parent(clients, ws)
    if parent_problem:
        condition("Ready", False, "ParentNotReady", parent_problem)
        return _outcome(status, conditions, changed or True, generation, events, retry_after=15)

    applier.apply(build_namespace(inputs))
    mailboxes = (
        cache.mailboxes
        if cache is not None and cache.mailboxes is not None
        else k8s.list_mailbox_names(clients, inputs.namespace)
    )
    inputs = inputs_for(ws, settings, mailboxes)
    condition(
        "NamespaceReady", True, "Applied", f"namespace {inputs.namespace} is labelled restricted"
    )

    keys: WorkspaceKeys | None = None
    try:
        if cache is not None and cache.key_providers is not None:
            provider = providers.get(
                ws.spec.key_provider, cache.key_providers.get(ws.spec.key_provider)
            )
        else:
            provider = providers.get(ws.spec.key_provider)
        # A workspace that never reported a key version is new: try to create its keys first.
        keys = ensure_keys(clients, provider, inputs, likely_new=status.get("keyVersion") is None)
    except KeyNotReady as err:
        condition("KeyReady", False, err.reason, err.message)
        condition("Ready", False, "KeyNotReady", err.message)
        events.append(("Warning", err.reason, err.message))
        new_status = _outcome(status, conditions, True, generation, events, retry_after=10)
        return new_status
    registered = records.register(
        settings, inputs.uid, inputs.name, parent_uid, ws.spec.parent_access
    )
    if keys.created:
        target = f"workspace/{inputs.name}"
        records.record(
            settings,
            "workspace.created",
            inputs.uid,
            target,
            {"tier": ws.spec.tier, "parent": ws.spec.parent or ""},
        )
        records.record(
            settings,
            "key.created",
            inputs.uid,
            target,
            {"keyVersion": keys.dek.version, "keyId": keys.key_id},
        )
        events.append(
            (
                "Normal",
                "DataKeyCreated",
                f"created DEK version {keys.dek.version} wrapped by {keys.key_id}",
            )
        )
    condition(
        "KeyReady", True, "DataKeyAvailable", f"DEK v{keys.dek.version} wrapped by {keys.key_id}"
    )

    try:
        for manifest in build_workspace_children(inputs):
            applier.apply(manifest)
    except ApiException as err:
        message = f"applying workspace objects failed: {err.status} {err.reason}"
        condition("WorkersProvisioned", False, "ApplyFailed", message)
        condition("Ready", False, "ApplyFailed", message)
        return _outcome(status, conditions, True, generation, events, retry_after=10)
    condition(
        "NetworkIsolated",
        True,
        "PoliciesApplied",
        "default-deny ingress and egress, narrow worker egress",
    )
    condition(
        "WorkersProvisioned", True, "Applied", "send and reply workers with least-privilege RBAC"
    )
    condition("Ready", True, "Reconciled", "workspace is provisioned")

    desired = {
        "namespace": inputs.namespace,
        "keyVersion": keys.dek.version,
        "keyId": keys.key_id,
        "sealingPublicKey": keys.public_key,
        "mailboxes": len(mailboxes),
    }
    for key, value in desired.items():
        if status.get(key) != value:
            status[key] = value
            changed = True
    # A child can reach the database before its parent is registered (a foreign key): come
    # back soon rather than at the next periodic resync.
    retry = 15.0 if settings.database_url and not registered else None
    outcome = _outcome(status, conditions, changed, generation, events, retry_after=retry)
    outcome.keys = keys
    return outcome


def _parent(clients: k8s.Clients, ws: Workspace) -> tuple[str | None, str | None]:
    """(problem, parent UID): a sub-workspace waits until its parent exists and is an agency."""
    parent = ws.spec.parent
    if not parent:
        return None, None
    found = k8s.get_workspace(clients, parent)
    if found is None:
        return f"parent Workspace {parent!r} does not exist; create it or fix spec.parent", None
    if (found.get("spec") or {}).get("tier") != "agency":
        return f"parent Workspace {parent!r} is not an agency (spec.tier: agency)", None
    return None, str(found["metadata"]["uid"])


def _outcome(
    status: dict[str, Any],
    conditions: list[Condition],
    changed: bool,
    generation: int,
    events: list[tuple[str, str, str]],
    retry_after: float | None = None,
) -> Outcome:
    if status.get("observedGeneration") != generation:
        changed = True
    if not changed:
        return Outcome(status=None, events=events, retry_after=retry_after)
    dumped = [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions]
    new = {**status, "conditions": dumped, "observedGeneration": generation}
    return Outcome(status=new, events=events, retry_after=retry_after)


# --- deletion ------------------------------------------------------------------------------


def finalize_workspace(
    body: dict[str, Any], clients: k8s.Clients, settings: Settings | None = None
) -> list[tuple[str, str, str]]:
    """Shred: destroy the wrapped DEK first (crypto-shredding every credential sealed under
    it, and every backup of them), then delete the namespace. Retain: touch nothing."""
    ws = parse_workspace(body)
    name = ws.metadata["name"]
    namespace = f"ws-{name}"
    if ws.spec.deletion_policy == "Retain":
        if settings is not None:
            records.record(
                settings,
                "workspace.deleted",
                ws.metadata["uid"],
                f"workspace/{name}",
                {"deletionPolicy": "Retain", "dataKeyDestroyed": False},
            )
        return [
            (
                "Normal",
                "Retained",
                f"namespace {namespace} and its keys are kept (deletionPolicy: Retain)",
            )
        ]
    from numail.api import DEK_SECRET
    from numail_operator.build.workspace import SEALING_KEY_SECRET

    # Mailboxes go first: their finalizers revoke each grant at the provider, which needs the
    # credentials, which need the DEK. Shredding first would strand live grants.
    remaining = k8s.list_mailboxes(clients, namespace)
    if remaining:
        for mbx in remaining:
            if not mbx["metadata"].get("deletionTimestamp"):
                k8s.delete_mailbox(clients, namespace, mbx["metadata"]["name"])
        raise MailboxesRemain(
            f"waiting for {len(remaining)} Mailbox(es) in {namespace} to revoke their grants"
        )

    shredded = k8s.delete_secret(clients, namespace, DEK_SECRET)
    if settings is not None:
        records.record(
            settings,
            "workspace.deleted",
            ws.metadata["uid"],
            f"workspace/{name}",
            {"deletionPolicy": "Shred", "dataKeyDestroyed": shredded},
        )
    k8s.delete_secret(clients, namespace, SEALING_KEY_SECRET)
    k8s.delete_namespace(clients, namespace)
    return [
        (
            "Normal",
            "DataKeyDestroyed" if shredded else "DataKeyAbsent",
            f"wrapped DEK in {namespace} destroyed",
        ),
        ("Normal", "NamespaceDeleted", f"namespace {namespace} deletion started"),
    ]


WORKER_NAMES = (SEND_WORKER_SA, REPLY_WORKER_SA)
