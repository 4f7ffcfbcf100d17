"""The only module that calls the Kubernetes API: clients, server-side apply, reviews and reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from numail.api import FIELD_MANAGER, GROUP, LABEL_WORKSPACE, VERSION


class _Missing:
    """Swallows the apiserver's 404 and nothing else: `with _missing(): return ...` then
    `return <absent value>` after the block. A context manager, not a wrapper taking the
    method, so every API call stays a plain call (tests/unit/test_chart_rbac.py reads them)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return isinstance(err, ApiException) and err.status == 404


_missing = _Missing()


@dataclass
class Clients:
    api: client.ApiClient
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    authn: client.AuthenticationV1Api


def load_clients(kubeconfig: str | None = None) -> Clients:
    """In-cluster config when running in a Pod, else the given or default kubeconfig."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        api = client.ApiClient()
    else:
        api = config.new_client_from_config(config_file=kubeconfig)
    # The key service and the operator run calls from a thread pool; size the pool to match.
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
    return Clients(
        api=api,
        core=client.CoreV1Api(api),
        custom=client.CustomObjectsApi(api),
        authn=client.AuthenticationV1Api(api),
    )


@dataclass(frozen=True)
class ReviewedToken:
    username: str
    namespace: str
    service_account: str


def review_token(clients: Clients, token: str, audience: str) -> ReviewedToken | None:
    """TokenReview with the required audience; None unless it authenticates a ServiceAccount."""
    review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[audience]))
    status = clients.authn.create_token_review(review).status
    if not status or not status.authenticated or audience not in (status.audiences or []):
        return None
    username = str(status.user.username or "")
    parts = username.split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        return None
    return ReviewedToken(username=username, namespace=parts[2], service_account=parts[3])


def namespace_workspace(clients: Clients, namespace: str) -> str | None:
    """The Workspace a namespace belongs to, from the label only the operator sets."""
    return (namespace_labels(clients, namespace) or {}).get(LABEL_WORKSPACE) or None


def get_workspace(clients: Clients, name: str) -> dict[str, Any] | None:
    with _missing:
        return dict(clients.custom.get_cluster_custom_object(GROUP, VERSION, "workspaces", name))
    return None


def list_workspace_names(clients: Clients) -> list[str]:
    items = clients.custom.list_cluster_custom_object(GROUP, VERSION, "workspaces")
    return sorted(str(w["metadata"]["name"]) for w in items.get("items", []))


# --- server-side apply and the objects a Workspace owns ------------------------------------


class Applier:
    """Server-side apply through the dynamic client, as the `numail-operator` field manager.

    Forcing conflicts is deliberate: the operator is the authority for the fields it applies,
    and a hand edit of them (say, `list` added to a worker Role) must be reverted."""

    def __init__(self, api: client.ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        from kubernetes.dynamic import DynamicClient

        self._dyn = DynamicClient(api)
        self._field_manager = field_manager
        self._resources: dict[tuple[str, str], Any] = {}

    def _resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key not in self._resources:
            self._resources[key] = self._dyn.resources.get(api_version=api_version, kind=kind)
        return self._resources[key]

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        result = self._dyn.server_side_apply(
            resource,
            body=manifest,
            namespace=manifest["metadata"].get("namespace"),
            field_manager=self._field_manager,
            force_conflicts=True,
        )
        return dict(result.to_dict())

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            obj = self._resource(api_version, kind).get(name=name, namespace=namespace)
        except NotFoundError:
            return None
        return dict(obj.to_dict())


def read_secret(clients: Clients, namespace: str, name: str) -> client.V1Secret | None:
    with _missing:
        return clients.core.read_namespaced_secret(name, namespace)
    return None


def create_secret_once(clients: Clients, manifest: dict[str, Any]) -> bool:
    """Create a Secret only if absent. True if this call created it; False if one existed.

    Key material is never applied or replaced: a POST is atomic in the apiserver, so of two
    racing operators exactly one creates, and the other reads what the first wrote."""
    try:
        clients.core.create_namespaced_secret(manifest["metadata"]["namespace"], manifest)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


def delete_secret(clients: Clients, namespace: str, name: str) -> bool:
    with _missing:
        clients.core.delete_namespaced_secret(name, namespace)
        return True
    return False


def delete_namespace(clients: Clients, name: str) -> bool:
    with _missing:
        clients.core.delete_namespace(name, propagation_policy="Background")
        return True
    return False


def list_mailbox_names(clients: Clients, namespace: str) -> list[str]:
    return sorted(str(m["metadata"]["name"]) for m in list_mailboxes(clients, namespace))


def get_key_provider(clients: Clients, name: str) -> dict[str, Any] | None:
    with _missing:
        return dict(clients.custom.get_cluster_custom_object(GROUP, VERSION, "keyproviders", name))
    return None


def read_secret_value(clients: Clients, namespace: str, name: str, key: str) -> bytes | None:
    import base64

    secret = read_secret(clients, namespace, name)
    if secret is None or not secret.data or key not in secret.data:
        return None
    return base64.b64decode(secret.data[key])


def patch_status(
    clients: Clients, plural: str, name: str, status: dict[str, Any], namespace: str | None = None
) -> None:
    """Merge-patch the status subresource. Conditions are sent whole, as a list is replaced."""
    body = {"status": status}
    with _missing:  # deleted meanwhile: nothing to report on
        if namespace is None:
            clients.custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, body)
        else:
            clients.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body
            )


# --- Mailboxes: intake and sealed credential Secrets, and the reads the reconciler needs -------


def get_mailbox(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    with _missing:
        return dict(
            clients.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "mailboxes", name
            )
        )
    return None


def list_mailboxes(clients: Clients, namespace: str) -> list[dict[str, Any]]:
    with _missing:
        items = clients.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "mailboxes")
        return [dict(i) for i in items.get("items", [])]
    return []


def namespace_labels(clients: Clients, namespace: str) -> dict[str, str] | None:
    """The namespace's labels, or None if it does not exist."""
    with _missing:
        ns = clients.core.read_namespace(namespace)
        return {str(k): str(v) for k, v in (ns.metadata.labels or {}).items()}
    return None


def write_secret(clients: Clients, manifest: dict[str, Any]) -> bool:
    """Create the Secret, or replace the one of that name whole. True if this call created it.

    The replace carries the resourceVersion just read, so two writers can't silently overwrite
    each other: the loser gets a 409 and reconciles again."""
    namespace = manifest["metadata"]["namespace"]
    name = manifest["metadata"]["name"]
    try:
        clients.core.create_namespaced_secret(namespace, manifest)
        return True
    except ApiException as err:
        if err.status != 409:
            raise
    current = clients.core.read_namespaced_secret(name, namespace)
    body = {
        **manifest,
        "metadata": {**manifest["metadata"], "resourceVersion": current.metadata.resource_version},
    }
    clients.core.replace_namespaced_secret(name, namespace, body)
    return False


def annotate_secret(
    clients: Clients, namespace: str, name: str, annotations: dict[str, str | None]
) -> bool:
    """Merge annotations (None removes one); False if the Secret is gone."""
    with _missing:
        clients.core.patch_namespaced_secret(
            name, namespace, {"metadata": {"annotations": annotations}}
        )
        return True
    return False


def delete_secret_if_unchanged(
    clients: Clients, namespace: str, name: str, uid: str, resource_version: str
) -> str:
    """Delete only the version that was read: "deleted", "gone", or "changed" when someone
    wrote a newer one meanwhile (a rotation that must not be lost)."""
    options = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=uid, resource_version=resource_version)
    )
    try:
        clients.core.delete_namespaced_secret(name, namespace, body=options)
    except ApiException as err:
        if err.status == 404:
            return "gone"
        if err.status == 409:
            return "changed"
        raise
    return "deleted"


def annotate_mailbox(
    clients: Clients, namespace: str, name: str, annotations: dict[str, str | None]
) -> bool:
    """Merge annotations into a Mailbox (None removes one); False if it is gone."""
    with _missing:
        clients.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "mailboxes", name, {"metadata": {"annotations": annotations}}
        )
        return True
    return False


def delete_mailbox(clients: Clients, namespace: str, name: str) -> None:
    with _missing:
        clients.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "mailboxes", name)
