"""The only module that calls the Kubernetes API: clients, server-side apply, reviews and reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from numail.api import GROUP, LABEL_WORKSPACE, VERSION


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
    try:
        ns = clients.core.read_namespace(namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    labels = ns.metadata.labels or {}
    value = labels.get(LABEL_WORKSPACE)
    return str(value) if value else None


def get_workspace(clients: Clients, name: str) -> dict[str, Any] | None:
    try:
        obj = clients.custom.get_cluster_custom_object(GROUP, VERSION, "workspaces", name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return dict(obj)
