"""An unhealthy KeyProvider makes its workspaces KeyReady=False, across a restart, until fixed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from numail.keys.local import generate_keyring
from tests.conftest import K8s
from tests.support.controlplane import ControlPlane
from tests.support.operator import start_operator
from tests.support.waiting import condition, wait_for

G, V = "numail.ai", "v1alpha1"


def get(k8s: K8s, plural: str, name: str) -> dict[str, Any]:
    return dict(k8s.custom.get_cluster_custom_object(G, V, plural, name))


def test_key_ready_false_with_a_reason_then_recovers(
    controlplane: ControlPlane, k8s: K8s, numail_crds: list[str], tmp_path: Path
) -> None:
    try:
        k8s.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name="numail-system"))
        )
    except client.exceptions.ApiException as err:
        if err.status != 409:
            raise
    k8s.custom.create_cluster_custom_object(
        G,
        V,
        "keyproviders",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "KeyProvider",
            "metadata": {"name": "flaky"},
            "spec": {
                "type": "local",
                "local": {"secretRef": {"name": "flaky-keyring", "namespace": "numail-system"}},
            },
        },
    )
    k8s.custom.create_cluster_custom_object(
        G,
        V,
        "workspaces",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "Workspace",
            "metadata": {"name": "kp-tenant"},
            "spec": {"keyProvider": "flaky"},
        },
    )
    op = start_operator(controlplane.kubeconfig, tmp_path / "op1")

    def key_not_ready() -> dict[str, Any] | None:
        c = condition(get(k8s, "workspaces", "kp-tenant"), "KeyReady")
        return c if c and c["status"] == "False" else None

    try:
        c = wait_for(key_not_ready, 60, "KeyReady=False")
        assert c["reason"] == "KeyProviderMisconfigured"
        assert (
            "numail-system/flaky-keyring" in c["message"]
            and "numail keys generate-local" in c["message"]
        )
        kp = wait_for(
            lambda: get(k8s, "keyproviders", "flaky").get("status"), 60, "KeyProvider status"
        )
        assert kp["healthy"] is False
    finally:
        op.stop()

    # A restart reports the same, rather than forgetting or papering over it.
    k8s.custom.patch_cluster_custom_object_status(
        G, V, "workspaces", "kp-tenant", {"status": {"conditions": []}}
    )
    op = start_operator(controlplane.kubeconfig, tmp_path / "op2")
    try:
        c = wait_for(key_not_ready, 60, "KeyReady=False after restart")
        assert c["reason"] == "KeyProviderMisconfigured"
        k8s.core.create_namespaced_secret(
            "numail-system",
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="flaky-keyring"),
                string_data={"keyring": generate_keyring()},
            ),
        )

        def recovered() -> bool:
            ws = get(k8s, "workspaces", "kp-tenant")
            ready = condition(ws, "Ready")
            return bool(ready and ready["status"] == "True")

        wait_for(recovered, 90, "workspace Ready once the keyring exists", interval=1)
        wait_for(
            lambda: get(k8s, "keyproviders", "flaky").get("status", {}).get("healthy") is True,
            60,
            "KeyProvider healthy",
            interval=1,
        )
        assert get(k8s, "keyproviders", "flaky")["status"]["keyId"] == "local:k1"
        k8s.custom.delete_cluster_custom_object(G, V, "workspaces", "kp-tenant")
        wait_for(
            lambda: (
                not [
                    w
                    for w in k8s.custom.list_cluster_custom_object(G, V, "workspaces")["items"]
                    if w["metadata"]["name"] == "kp-tenant"
                ]
            ),
            60,
            "workspace deleted",
        )
    finally:
        op.stop()
