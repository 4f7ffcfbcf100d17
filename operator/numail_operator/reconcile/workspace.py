"""Workspace reconciler: gather, build, apply; then conditions that say what is wrong and why.

Order matters: the namespace first (everything lives in it), then keys (create-only), then the
workers' RBAC and network policy, and the Deployments last, so a worker never starts in a
namespace whose isolation isn't in place yet.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from numail import redact
from numail.api import REPLY_WORKER_SA, SEND_WORKER_SA
from numail.api.conditions import set_condition
from numail.api.models import Condition, Workspace
from numail.api.models import WorkerSpec as ModelWorkerSpec
from numail_operator import k8s
from numail_operator.build.workspace import (
    DATABASE_SECRET,
    KEYSERVICE_CA_CONFIGMAP,
    KEYSERVICE_CA_KEY,
    PlatformEndpoints,
    WorkerSpec,
    WorkspaceInputs,
    build_database_secret,
    build_keyservice_ca_config_map,
    build_namespace,
    build_workspace_children,
    certificates_only,
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
    # Secrets the Mailboxes name in spec.oauth.clientSecretRef; None means ask the apiserver.
    client_secrets: list[str] | None = None
    key_providers: dict[str, dict[str, Any] | None] | None = None


@dataclass(frozen=True)
class MailboxInventory:
    """What a Workspace's children depend on from its Mailboxes: their names (the sealed
    Secrets) and the OAuth client secrets they name (the worker Roles grant both)."""

    names: list[str] = field(default_factory=list)
    client_secrets: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, mailboxes: list[dict[str, Any]]) -> MailboxInventory:
        names = sorted(str(m["metadata"]["name"]) for m in mailboxes)
        secrets = set()
        for m in mailboxes:
            oauth = (m.get("spec") or {}).get("oauth") or {}
            ref = oauth.get("clientSecretRef") or {}
            if ref.get("name"):
                secrets.add(str(ref["name"]))
        return cls(names, sorted(secrets))


def mailbox_inventory(clients: k8s.Clients, namespace: str) -> MailboxInventory:
    return MailboxInventory.of(k8s.list_mailboxes(clients, namespace))


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


def inputs_for(
    ws: Workspace, settings: Settings, mailboxes: MailboxInventory | None = None
) -> WorkspaceInputs:
    mailboxes = mailboxes or MailboxInventory()
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
        mailboxes=tuple(mailboxes.names),
        oauth_client_secrets=tuple(mailboxes.client_secrets),
        database=settings.worker_database_secret is not None,
        keyservice_ca=settings.keyservice_ca_secret is not None,
        max_mailboxes=quota.max_mailboxes if quota else None,
        quota_cpu=quota.cpu if quota else None,
        quota_memory=quota.memory if quota else None,
        egress_cidrs=tuple(egress.allow_cidrs or ()) if egress else (),
        egress_ports=tuple((p.port, p.protocol) for p in (egress.ports or ())) if egress else (),
        endpoints=PlatformEndpoints(
            system_namespace=settings.system_namespace,
            keyservice_url=settings.keyservice_url,
            keyservice_port=settings.keyservice_port,
            api_server_cidrs=settings.worker_api_server_cidrs,
            api_server_ports=settings.worker_api_server_ports,
        ),
    )


def desired_children(
    ws: Workspace, settings: Settings, mailboxes: MailboxInventory
) -> list[Manifest]:
    return build_workspace_children(inputs_for(ws, settings, mailboxes))


@dataclass(frozen=True)
class DatabaseSecret:
    """Whether the workers' DSN Secret is in place: the WorkerDatabase condition's content, and
    the copy to apply (None when there is nothing to copy)."""

    ok: bool
    reason: str
    message: str
    manifest: Manifest | None = None


def desired_database_secret(
    clients: k8s.Clients, settings: Settings, inputs: WorkspaceInputs
) -> DatabaseSecret:
    """Read the operator's worker-DSN Secret and build its copy for the workspace namespace.
    The value is registered with the redactor and never put into a message."""
    source = settings.worker_database_secret
    if source is None:
        return DatabaseSecret(
            False,
            "WorkerDatabaseNotConfigured",
            "the operator has no worker database Secret (NUMAIL_WORKER_DATABASE_SECRET, chart "
            "value workers.database.existingSecret), so the send and reply workers get no "
            "NUMAIL_DATABASE_URL and can't run: set it to a Secret in "
            f"{settings.system_namespace} holding a numail_worker DSN",
        )
    key = settings.worker_database_secret_key
    secret = k8s.read_secret(clients, settings.system_namespace, source)
    value = (secret.data or {}).get(key) if secret is not None else None
    if not value:
        what = "does not exist" if secret is None else f"has no key {key!r}"
        return DatabaseSecret(
            False,
            "WorkerDatabaseSecretMissing",
            f"the worker database Secret {settings.system_namespace}/{source} {what}; the "
            f"workers wait for Secret {inputs.namespace}/{DATABASE_SECRET}: create it",
        )
    redact.register(value)
    redact.register(base64.b64decode(value))
    return DatabaseSecret(
        True,
        "Copied",
        f"workers read NUMAIL_DATABASE_URL from Secret {DATABASE_SECRET}, a copy of "
        f"{settings.system_namespace}/{source}",
        build_database_secret(inputs, value),
    )


@dataclass(frozen=True)
class KeyServiceCA:
    """Whether the key service's CA is published for the workers: the KeyServiceCA condition's
    content, and the ConfigMap to apply (None when there is nothing to publish)."""

    ok: bool
    reason: str
    message: str
    manifest: Manifest | None = None


def desired_keyservice_ca(
    clients: k8s.Clients, settings: Settings, inputs: WorkspaceInputs
) -> KeyServiceCA:
    """Read `ca.crt`, and only it, of the key service's TLS Secret in the operator's namespace,
    and build its public copy for the workspace namespace."""
    source = settings.keyservice_ca_secret
    if source is None:
        return KeyServiceCA(
            False,
            "KeyServiceCANotConfigured",
            "the operator has no key-service CA Secret (NUMAIL_KEYSERVICE_CA_SECRET; the chart "
            "sets it to the key service's TLS Secret), so the workers verify the key service "
            "with their image's trust store only: set it to the Secret in "
            f"{settings.system_namespace} whose {KEYSERVICE_CA_KEY} signed the key service's "
            "certificate",
        )
    where = f"{settings.system_namespace}/{source}"
    secret = k8s.read_secret(clients, settings.system_namespace, source)
    value = (secret.data or {}).get(KEYSERVICE_CA_KEY) if secret is not None else None
    if not value:
        what = "does not exist" if secret is None else f"has no key {KEYSERVICE_CA_KEY!r}"
        fix = (
            "start the key service (its init container creates it) or install cert-manager's "
            "Certificate"
            if secret is None
            else f"add the issuing CA as {KEYSERVICE_CA_KEY} (keyservice.tls.existingSecret)"
        )
        return KeyServiceCA(
            False,
            "KeyServiceCASecretMissing",
            f"the key service's TLS Secret {where} {what}, so the workers' Pods wait for "
            f"ConfigMap {inputs.namespace}/{KEYSERVICE_CA_CONFIGMAP}: {fix}",
        )
    pem = certificates_only(base64.b64decode(value))
    if pem is None:
        return KeyServiceCA(
            False,
            "KeyServiceCAInvalid",
            f"{KEYSERVICE_CA_KEY} of the key service's TLS Secret {where} holds no PEM "
            f"certificate, so the workers' Pods wait for ConfigMap {inputs.namespace}/"
            f"{KEYSERVICE_CA_CONFIGMAP}: put the issuing CA's certificate there",
        )
    return KeyServiceCA(
        True,
        "Published",
        f"workers verify the key service with ConfigMap {KEYSERVICE_CA_CONFIGMAP}, the "
        f"{KEYSERVICE_CA_KEY} of {where}",
        build_keyservice_ca_config_map(inputs, pem),
    )


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

    inputs = inputs_for(ws, settings)
    parent_problem, parent_uid = _parent(clients, ws)
    if parent_problem:
        condition("Ready", False, "ParentNotReady", parent_problem)
        return _outcome(status, conditions, changed or True, generation, events, retry_after=15)

    applier.apply(build_namespace(inputs))
    if cache is not None and cache.mailboxes is not None and cache.client_secrets is not None:
        inventory = MailboxInventory(list(cache.mailboxes), list(cache.client_secrets))
    else:
        inventory = mailbox_inventory(clients, inputs.namespace)
    mailboxes = inventory.names
    inputs = inputs_for(ws, settings, inventory)
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
        settings,
        inputs.uid,
        inputs.name,
        parent_uid,
        ws.spec.parent_access,
        mailboxes=(inputs.namespace, mailboxes),
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

    database = desired_database_secret(clients, settings, inputs)
    keyservice_ca = desired_keyservice_ca(clients, settings, inputs)
    try:
        # Both before the Deployments whose Pods read them.
        if database.manifest is not None:
            applier.apply(database.manifest)
        if keyservice_ca.manifest is not None:
            applier.apply(keyservice_ca.manifest)
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
    before = next((c for c in conditions if c.type == "WorkerDatabase"), None)
    condition("WorkerDatabase", database.ok, database.reason, database.message)
    if not database.ok and (before is None or before.reason != database.reason):
        events.append(("Warning", database.reason, database.message))
    before = next((c for c in conditions if c.type == "KeyServiceCA"), None)
    condition("KeyServiceCA", keyservice_ca.ok, keyservice_ca.reason, keyservice_ca.message)
    if not keyservice_ca.ok and (before is None or before.reason != keyservice_ca.reason):
        events.append(("Warning", keyservice_ca.reason, keyservice_ca.message))
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
