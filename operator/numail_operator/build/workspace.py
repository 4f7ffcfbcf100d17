"""Pure builders of every object a Workspace owns: manifests in, no I/O, no Kubernetes client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from numail.api import (
    API_VERSION,
    DEK_SECRET,
    KEYSERVICE_AUDIENCE,
    LABEL_MANAGED_BY,
    LABEL_PARENT,
    LABEL_PART_OF,
    LABEL_WORKSPACE,
    LABEL_WORKSPACE_UID,
    REPLY_WORKER_SA,
    SEND_WORKER_SA,
)

Manifest = dict[str, Any]

SEALING_KEY_SECRET = "numail-sealing-key"  # noqa: S105 - a Secret name
PARENT_ACCESS_BINDING = "numail-parent-access"
# Mail and provider APIs; anything else leaves the namespace only when the spec allows it.
MAIL_EGRESS_PORTS = (25, 465, 587, 143, 993, 443)
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8")
PARENT_ACCESS_ROLES = {"read": "numail-workspace-analyst", "manage": "numail-workspace-operator"}
# The workers' PostgreSQL DSN, copied from the operator's namespace; read by the kubelet through
# secretKeyRef, never by the workers' ServiceAccounts.
DATABASE_SECRET = "numail-database"  # noqa: S105 - a Secret name
DATABASE_SECRET_KEY = "url"  # noqa: S105 - a data key name
# Names of the objects the operator writes start with this; a Mailbox's clientSecretRef that
# starts with it is never granted to the workers (it could name numail-database or the sealing
# key, and the Role would hand them out).
RESERVED_SECRET_PREFIX = "numail-"  # noqa: S105 - a name prefix
# The public CA of the key service's serving certificate, published from the operator's
# namespace (NUMAIL_KEYSERVICE_CA_SECRET's ca.crt) so workers can verify the key service. A
# ConfigMap, not a Secret: it holds a certificate only, never a key.
KEYSERVICE_CA_CONFIGMAP = "numail-keyservice-ca"
KEYSERVICE_CA_KEY = "ca.crt"
# Where the worker container finds its tokens and CAs.
KEYSERVICE_TOKEN_DIR = "/var/run/secrets/numail/keyservice"  # noqa: S105 - a path
KEYSERVICE_CA_DIR = "/var/run/secrets/numail/keyservice-ca"
KUBE_API_DIR = "/var/run/secrets/numail/kubernetes"
# Projected token lifetimes: the kubelet renews each at 80% of it; 600 s is the API's minimum.
KEYSERVICE_TOKEN_SECONDS = 3600
KUBE_API_TOKEN_SECONDS = 600


def namespace_name(workspace: str) -> str:
    return f"ws-{workspace}"


def mailbox_secret_name(mailbox: str) -> str:
    """Predictable, so worker Roles can name it in resourceNames before it exists."""
    return f"numail-mailbox-{mailbox}"


def parent_group(workspace: str) -> str:
    """The identity-provider group whose members act for an agency workspace."""
    return f"numail.ai:workspace:{workspace}"


@dataclass(frozen=True)
class WorkerSpec:
    image: str
    replicas: int
    resources: dict[str, Any]


@dataclass(frozen=True)
class PlatformEndpoints:
    """Where workers may connect inside the cluster; from operator settings."""

    system_namespace: str = "numail-system"
    keyservice_port: int = 8443
    keyservice_url: str = "https://numail-keyservice.numail-system.svc:8443"
    postgres_port: int = 5432
    # The Kubernetes API server, which workers call to read their Secrets. Its address differs
    # per cluster (and NetworkPolicies see it after the Service's DNAT), so it comes from
    # settings; the default is any address, on the API server's ports only.
    api_server_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    api_server_ports: tuple[int, ...] = (443, 6443)


@dataclass(frozen=True)
class WorkspaceInputs:
    name: str
    uid: str
    tier: str
    parent: str | None
    parent_access: str
    retain: bool
    send_worker: WorkerSpec
    reply_worker: WorkerSpec
    mailboxes: tuple[str, ...] = ()
    # Secrets named by the Mailboxes' spec.oauth.clientSecretRef, in this namespace.
    oauth_client_secrets: tuple[str, ...] = ()
    # True when the workers get NUMAIL_DATABASE_URL from the numail-database Secret.
    database: bool = False
    # True when the workers verify the key service with the CA in the numail-keyservice-ca
    # ConfigMap (NUMAIL_KEYSERVICE_CA_FILE); False: with the image's system trust store only.
    keyservice_ca: bool = False
    max_mailboxes: int | None = None
    quota_cpu: str | None = None
    quota_memory: str | None = None
    egress_cidrs: tuple[str, ...] = ()
    egress_ports: tuple[tuple[int, str], ...] = ()
    endpoints: PlatformEndpoints = field(default_factory=PlatformEndpoints)

    @property
    def namespace(self) -> str:
        return namespace_name(self.name)


def owner_reference(inputs: WorkspaceInputs) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Workspace",
        "name": inputs.name,
        "uid": inputs.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(inputs: WorkspaceInputs, component: str | None = None) -> dict[str, str]:
    labels = {
        LABEL_WORKSPACE: inputs.name,
        LABEL_PART_OF: "numail",
        LABEL_MANAGED_BY: "numail-operator",
    }
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def _meta(inputs: WorkspaceInputs, name: str, component: str | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": inputs.namespace, "labels": _labels(inputs, component)}


def build_namespace(inputs: WorkspaceInputs) -> Manifest:
    labels = {
        **_labels(inputs),
        LABEL_WORKSPACE_UID: inputs.uid,
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
    }
    if inputs.parent:
        labels[LABEL_PARENT] = inputs.parent
    metadata: dict[str, Any] = {"name": inputs.namespace, "labels": labels}
    # Retain keeps the namespace when the Workspace goes, so it must not be owned by it.
    if not inputs.retain:
        metadata["ownerReferences"] = [owner_reference(inputs)]
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def build_service_account(inputs: WorkspaceInputs, name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(inputs, name, name.removeprefix("numail-")),
        # Workers get only the key-service token, projected with its audience; never the API token.
        "automountServiceAccountToken": False,
    }


def granted_client_secrets(names: tuple[str, ...] | list[str]) -> list[str]:
    """The OAuth client secret names a worker Role may name: never a reserved one."""
    return sorted({n for n in names if n and not n.startswith(RESERVED_SECRET_PREFIX)})


def worker_secret_names(inputs: WorkspaceInputs) -> list[str]:
    """The DEK, each Mailbox's sealed Secret and each OAuth client secret the Mailboxes name;
    never numail-database (env from secretKeyRef is resolved by the kubelet, not the Pod)."""
    return [
        DEK_SECRET,
        *sorted(mailbox_secret_name(m) for m in inputs.mailboxes),
        *granted_client_secrets(inputs.oauth_client_secrets),
    ]


def build_worker_role(inputs: WorkspaceInputs, name: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(inputs, name, name.removeprefix("numail-")),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get"],
                "resourceNames": worker_secret_names(inputs),
            }
        ],
    }


def build_worker_role_binding(inputs: WorkspaceInputs, name: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(inputs, name, name.removeprefix("numail-")),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": inputs.namespace}],
    }


def build_parent_access_binding(inputs: WorkspaceInputs) -> Manifest | None:
    role = PARENT_ACCESS_ROLES.get(inputs.parent_access)
    if not inputs.parent or role is None:
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(inputs, PARENT_ACCESS_BINDING, "parent-access"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Group",
                "name": parent_group(inputs.parent),
            }
        ],
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _worker_env(inputs: WorkspaceInputs) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "NUMAIL_WORKSPACE", "value": inputs.name},
        {"name": "NUMAIL_WORKSPACE_UID", "value": inputs.uid},
        {"name": "NUMAIL_KEYSERVICE_URL", "value": inputs.endpoints.keyservice_url},
        {"name": "NUMAIL_KEYSERVICE_TOKEN", "value": f"{KEYSERVICE_TOKEN_DIR}/token"},
        # The Kubernetes credential source: an API-audience token and the cluster's CA.
        {"name": "NUMAIL_KUBE_TOKEN_FILE", "value": f"{KUBE_API_DIR}/token"},
        {"name": "NUMAIL_KUBE_CA_FILE", "value": f"{KUBE_API_DIR}/ca.crt"},
    ]
    if inputs.keyservice_ca:
        env.append(
            {
                "name": "NUMAIL_KEYSERVICE_CA_FILE",
                "value": f"{KEYSERVICE_CA_DIR}/{KEYSERVICE_CA_KEY}",
            }
        )
    if inputs.database:
        env.append(
            {
                "name": "NUMAIL_DATABASE_URL",
                "valueFrom": {
                    "secretKeyRef": {"name": DATABASE_SECRET, "key": DATABASE_SECRET_KEY}
                },
            }
        )
    return env


def _worker_volumes(inputs: WorkspaceInputs) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "keyservice-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": KEYSERVICE_AUDIENCE,
                            "expirationSeconds": KEYSERVICE_TOKEN_SECONDS,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {
            # What automountServiceAccountToken would give, but short-lived and only to the
            # worker container: a token for the API server's own audience and its CA.
            "name": "kube-api-access",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "expirationSeconds": KUBE_API_TOKEN_SECONDS,
                            "path": "token",
                        }
                    },
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                ]
            },
        },
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    if inputs.keyservice_ca:
        # Not optional: until the operator has published the CA, the kubelet holds the Pod
        # (FailedMount) rather than start a worker that can't verify the key service.
        volumes.append(
            {
                "name": "keyservice-ca",
                "configMap": {
                    "name": KEYSERVICE_CA_CONFIGMAP,
                    "items": [{"key": KEYSERVICE_CA_KEY, "path": KEYSERVICE_CA_KEY}],
                    "defaultMode": 0o444,
                },
            }
        )
    return volumes


def _worker_mounts(inputs: WorkspaceInputs) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "keyservice-token", "mountPath": KEYSERVICE_TOKEN_DIR, "readOnly": True},
        {"name": "kube-api-access", "mountPath": KUBE_API_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir
    ]
    if inputs.keyservice_ca:
        mounts.append({"name": "keyservice-ca", "mountPath": KEYSERVICE_CA_DIR, "readOnly": True})
    return mounts


def build_worker_deployment(
    inputs: WorkspaceInputs, name: str, worker: WorkerSpec, module: str
) -> Manifest:
    selector = {"app.kubernetes.io/name": name, LABEL_WORKSPACE: inputs.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(inputs, name, name.removeprefix("numail-")),
        "spec": {
            "replicas": worker.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**_labels(inputs, name.removeprefix("numail-")), **selector}
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "worker",
                            "image": worker.image,
                            "args": ["python", "-m", module],
                            "env": _worker_env(inputs),
                            "resources": worker.resources,
                            "securityContext": _container_security(),
                            "volumeMounts": _worker_mounts(inputs),
                        }
                    ],
                    "volumes": _worker_volumes(inputs),
                },
            },
        },
    }


def build_default_deny_policy(inputs: WorkspaceInputs) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(inputs, "numail-default-deny", "network"),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def build_worker_egress_policy(inputs: WorkspaceInputs) -> Manifest:
    system = {"kubernetes.io/metadata.name": inputs.endpoints.system_namespace}
    egress: list[dict[str, Any]] = [
        {  # DNS
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    }
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        {  # the key service and PostgreSQL, in the platform's namespace only
            "to": [{"namespaceSelector": {"matchLabels": system}}],
            "ports": [
                {"protocol": "TCP", "port": inputs.endpoints.keyservice_port},
                {"protocol": "TCP", "port": inputs.endpoints.postgres_port},
            ],
        },
        {  # the Kubernetes API server, for the workers' own Secrets (by name, see their Role)
            "to": [{"ipBlock": {"cidr": c}} for c in inputs.endpoints.api_server_cidrs],
            "ports": [{"protocol": "TCP", "port": p} for p in inputs.endpoints.api_server_ports],
        },
        {  # mail servers and provider APIs on the internet, never the cluster's private ranges
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}],
            "ports": [{"protocol": "TCP", "port": p} for p in MAIL_EGRESS_PORTS],
        },
    ]
    if inputs.egress_cidrs or inputs.egress_ports:
        rule: dict[str, Any] = {}
        if inputs.egress_cidrs:
            rule["to"] = [{"ipBlock": {"cidr": c}} for c in inputs.egress_cidrs]
        if inputs.egress_ports:
            rule["ports"] = [
                {"protocol": proto, "port": port} for port, proto in inputs.egress_ports
            ]
        egress.append(rule)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(inputs, "numail-worker-egress", "network"),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_WORKSPACE: inputs.name}},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }


def build_resource_quota(inputs: WorkspaceInputs) -> Manifest | None:
    hard: dict[str, str] = {}
    if inputs.max_mailboxes is not None:
        hard["count/mailboxes.numail.ai"] = str(inputs.max_mailboxes)
    if inputs.quota_cpu:
        hard["limits.cpu"] = inputs.quota_cpu
    if inputs.quota_memory:
        hard["limits.memory"] = inputs.quota_memory
    if not hard:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(inputs, "numail-quota", "quota"),
        "spec": {"hard": hard},
    }


def build_limit_range(inputs: WorkspaceInputs) -> Manifest | None:
    """With a cpu or memory quota every container must declare limits; defaults keep a
    worker whose spec gives none from being refused by the quota."""
    if not (inputs.quota_cpu or inputs.quota_memory):
        return None
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(inputs, "numail-defaults", "quota"),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": {"cpu": "500m", "memory": "256Mi"},
                    "defaultRequest": {"cpu": "50m", "memory": "128Mi"},
                }
            ]
        },
    }


def build_workspace_children(inputs: WorkspaceInputs) -> list[Manifest]:
    """Everything applied on each reconcile, in apply order. Secrets are created elsewhere,
    once: they hold key material and must never be rewritten by an apply."""
    children: list[Manifest] = []
    workers = (
        (SEND_WORKER_SA, inputs.send_worker, "numail_workers.send"),
        (REPLY_WORKER_SA, inputs.reply_worker, "numail_workers.reply"),
    )
    for name, _, _ in workers:
        children.append(build_service_account(inputs, name))
        children.append(build_worker_role(inputs, name))
        children.append(build_worker_role_binding(inputs, name))
    children.append(build_default_deny_policy(inputs))
    children.append(build_worker_egress_policy(inputs))
    optionals = (
        build_parent_access_binding(inputs),
        build_limit_range(inputs),
        build_resource_quota(inputs),
    )
    for optional in optionals:
        if optional is not None:
            children.append(optional)
    for name, worker, module in workers:
        children.append(build_worker_deployment(inputs, name, worker, module))
    return children


def build_database_secret(inputs: WorkspaceInputs, url_b64: str) -> Manifest:
    """The workers' DSN, copied from the operator's Secret. Owned by the Workspace, so the
    garbage collector removes it with it; applied on every reconcile, so a changed source or a
    hand edit is put back. `url_b64` stays base64: the operator never needs the DSN itself."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            **_meta(inputs, DATABASE_SECRET, "database"),
            "ownerReferences": [owner_reference(inputs)],
        },
        "data": {DATABASE_SECRET_KEY: url_b64},
    }


def certificates_only(pem: bytes) -> str | None:
    """The X.509 certificates in `pem`, re-encoded, and nothing else: a private key or any other
    block that shares the file is dropped. None if there is no certificate to parse."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return None
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs) or None


def build_keyservice_ca_config_map(inputs: WorkspaceInputs, ca_pem: str) -> Manifest:
    """The public CA of the key service's certificate, for the workers' NUMAIL_KEYSERVICE_CA_FILE.
    `ca_pem` holds certificates only (certificates_only). Owned by the Workspace and applied on
    every reconcile, like the database copy."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            **_meta(inputs, KEYSERVICE_CA_CONFIGMAP, "keyservice-ca"),
            "ownerReferences": [owner_reference(inputs)],
        },
        "data": {KEYSERVICE_CA_KEY: ca_pem},
    }


def build_dek_secret(
    inputs: WorkspaceInputs, version: int, wrapped_b64: str, key_id: str, provider: str
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            **_meta(inputs, DEK_SECRET, "keys"),
            "annotations": {
                "numail.ai/current-key-version": str(version),
                "numail.ai/key-id": key_id,
                "numail.ai/key-provider": provider,
                "numail.ai/workspace-uid": inputs.uid,
            },
        },
        # One entry per key version: a rotation adds v2 beside v1 until re-sealing finishes.
        "data": {f"v{version}": wrapped_b64},
        "immutable": False,
    }


def build_sealing_key_secret(
    inputs: WorkspaceInputs, sealed_b64: str, public_key: str, version: int
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            **_meta(inputs, SEALING_KEY_SECRET, "keys"),
            "annotations": {
                "numail.ai/public-key": public_key,
                "numail.ai/key-version": str(version),
            },
        },
        "data": {"private.sealed": sealed_b64},
    }
