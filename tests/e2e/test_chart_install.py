"""The chart against a real apiserver: server-side dry-run, then install, upgrade and uninstall.

This module runs its own control plane. The session one holds CRDs that `numail_crds` applied
without Helm's ownership labels (Helm refuses to adopt them), and an uninstall without
crds.keep deletes CRDs, and every object of their kinds, which other modules rely on.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import K8s, make_k8s
from tests.support import helm as H
from tests.support.controlplane import ControlPlane, start_controlplane
from tests.support.crds import apply_crds
from tests.support.waiting import absent, wait_for

NAMESPACE = "numail-system"
RELEASE = "numail-operator"
KEYRING = "numail-operator-local-keyring"


@dataclass
class Cluster:
    cp: ControlPlane
    k8s: K8s

    @property
    def kubeconfig(self) -> Path:
        return self.cp.kubeconfig

    def helm(self, *args: str) -> H.HelmResult:
        return H.helm(*args, "--namespace", NAMESPACE, kubeconfig=self.kubeconfig)

    def numail_crds(self) -> set[str]:
        return {
            c.metadata.name
            for c in self.k8s.ext.list_custom_resource_definition().items
            if c.metadata.name.endswith(".numail.ai")
        }

    def keyring(self) -> bytes:
        return base64.b64decode(
            self.k8s.core.read_namespaced_secret(KEYRING, NAMESPACE).data["keyring"]
        )


def restricted_namespace(k8s: K8s, name: str) -> None:
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        # Warnings too, so that a dry-run of a Deployment reports a non-compliant template.
        "pod-security.kubernetes.io/warn": "restricted",
    }
    k8s.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cp = start_controlplane(tmp_path_factory.mktemp("chart-install-cp"))
    k8s = make_k8s(cp.kubeconfig)
    try:
        # What the dry-runs need to exist for real: the namespace, Kopf's CRD (the chart's
        # crds/; Helm skips it on install when it exists) and stand-ins for the kinds of
        # Prometheus Operator and cert-manager, which this cluster does not have.
        restricted_namespace(k8s, NAMESPACE)
        stand_ins = tmp_path_factory.mktemp("stand-in-crds")
        for crd in H.STAND_IN_CRDS:
            (stand_ins / f"{crd['metadata']['name']}.yaml").write_text(yaml.safe_dump(crd))
        apply_crds(k8s, stand_ins)
        apply_crds(k8s, H.CHART / "crds")
        yield Cluster(cp, k8s)
    finally:
        k8s.api.close()
        cp.stop()


def rendered(values: dict[str, object] | None = None) -> str:
    return (
        H.helm("template", RELEASE, str(H.CHART), "--namespace", NAMESPACE, *H.values_args(values))
        .check()
        .stdout
    )


def applied_count(result: H.HelmResult) -> int:
    return sum(1 for line in result.stdout.splitlines() if "(server dry run)" in line)


# --- server-side dry-run -------------------------------------------------------------------


def test_the_default_rendering_is_admitted_by_the_apiserver(cluster: Cluster) -> None:
    manifests = rendered()
    result = H.server_dry_run(manifests, cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    assert applied_count(result) == len([d for d in yaml.safe_load_all(manifests) if d])
    assert "Warning" not in result.stderr, result.stderr  # e.g. a Pod Security warning


def test_every_feature_on_is_admitted_by_the_apiserver(cluster: Cluster) -> None:
    manifests = rendered(H.ALL_FEATURES)
    kinds = {d["kind"] for d in yaml.safe_load_all(manifests) if d}
    assert {"ServiceMonitor", "PrometheusRule", "Certificate", "ConfigMap", "Namespace"} <= kinds
    result = H.server_dry_run(manifests, cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    assert applied_count(result) == len([d for d in yaml.safe_load_all(manifests) if d])


def test_a_privileged_template_is_reported_by_the_dry_run(cluster: Cluster) -> None:
    """The Pod Security check above can fail: a template that may run as root is reported."""
    loosened = rendered().replace("runAsNonRoot: true", "runAsNonRoot: false")
    result = H.server_dry_run(loosened, cluster.kubeconfig)
    assert 'violate PodSecurity "restricted:latest"' in result.stderr


def test_a_broken_template_is_refused_by_the_dry_run(cluster: Cluster) -> None:
    """The check above can fail: a misspelt field in a Deployment is refused."""
    broken = rendered().replace("revisionHistoryLimit:", "revisionHistoryLimt:", 1)
    result = H.server_dry_run(broken, cluster.kubeconfig)
    assert result.returncode != 0
    assert "revisionHistoryLimt" in result.stderr


def test_the_kubectl_manifests_are_admitted_in_order(cluster: Cluster) -> None:
    crds = H.server_dry_run(H.DEPLOY_CRDS.read_text(), cluster.kubeconfig)
    assert crds.returncode == 0, crds.stderr
    rest = H.server_dry_run(H.DEPLOY_MANIFEST.read_text(), cluster.kubeconfig)
    assert rest.returncode == 0, rest.stderr
    assert "clusterkopfpeering.kopf.dev/numail-operator serverside-applied" in rest.stdout


def test_a_value_the_schema_refuses_fails_the_install_and_creates_nothing(
    cluster: Cluster,
) -> None:
    result = cluster.helm("install", RELEASE, str(H.CHART), "--set", "keyservice.replicaz=3")
    assert result.returncode != 0
    assert "at '/keyservice': additional properties 'replicaz' not allowed" in result.stderr
    assert cluster.helm("list", "-q").check().stdout.strip() == ""
    assert cluster.numail_crds() == set()


# --- install, upgrade, uninstall -----------------------------------------------------------


def expected_crds() -> set[str]:
    return {
        yaml.safe_load(p.read_text())["metadata"]["name"] for p in (H.REPO / "crds").glob("*.yaml")
    }


def deployment_replicas(k8s: K8s) -> dict[str, int]:
    return {
        d.metadata.name: d.spec.replicas
        for d in k8s.apps.list_namespaced_deployment(NAMESPACE).items
    }


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    result = cluster.helm("install", RELEASE, str(H.CHART), "--wait=false").check()
    assert "numail seal" in result.stdout  # NOTES.txt: the next steps
    return cluster


def test_install_creates_the_crds_rbac_and_restricted_pods(installed: Cluster) -> None:
    k8s = installed.k8s
    assert installed.numail_crds() == expected_crds()
    assert k8s.rbac.read_cluster_role("numail-workspace-owner").aggregation_rule
    assert deployment_replicas(k8s) == {"numail-operator": 2, "numail-operator-keyservice": 2}

    # The namespace enforces Pod Security "restricted": the ReplicaSets can create these Pods
    # only because every Pod template complies (there is no kubelet, so they stay Pending).
    def pods() -> int:
        items = k8s.core.list_namespaced_pod(NAMESPACE).items
        return len(items) if len(items) == 4 else 0

    wait_for(pods, 30, "4 Pods created by the ReplicaSets in a restricted namespace")
    refused = [
        e.message
        for e in k8s.core.list_namespaced_event(NAMESPACE).items
        if e.reason == "FailedCreate"
    ]
    assert not refused, refused


def test_upgrade_changes_the_release_and_never_the_master_key(installed: Cluster) -> None:
    before = installed.keyring()
    assert before.startswith(b"k1 ")
    installed.helm("upgrade", RELEASE, str(H.CHART), "--set", "operator.replicas=3").check()
    assert deployment_replicas(installed.k8s)["numail-operator"] == 3
    assert installed.keyring() == before


def test_the_operator_takes_over_the_member_roles_and_upgrades_still_work(
    installed: Cluster,
) -> None:
    """What the operator does at startup: server-side apply of the member ClusterRoles, which
    relabels them as its own. Helm must then leave them alone, not fail or delete them."""
    from numail_operator.build.roles import build_member_cluster_roles
    from numail_operator.k8s import Applier

    applier = Applier(installed.k8s.api)
    for manifest in build_member_cluster_roles():
        applier.apply(manifest)
    owner = installed.k8s.rbac.read_cluster_role("numail-workspace-owner")
    assert owner.metadata.labels["app.kubernetes.io/managed-by"] == "numail-operator"
    installed.helm("upgrade", RELEASE, str(H.CHART), "--set", "operator.replicas=2").check()
    assert installed.k8s.rbac.read_cluster_role("numail-workspace-owner").aggregation_rule


def member_roles(k8s: K8s) -> set[str]:
    return {
        r.metadata.name
        for r in k8s.rbac.list_cluster_role().items
        if r.metadata.name.startswith("numail-workspace-")
    }


def test_uninstall_with_keep_leaves_the_crds_keyring_and_member_roles(installed: Cluster) -> None:
    before = installed.keyring()
    installed.helm("uninstall", RELEASE, "--wait", "--timeout=60s").check()
    k8s = installed.k8s
    assert installed.numail_crds() == expected_crds()
    assert installed.keyring() == before
    # Workspace RoleBindings refer to the member roles, so they stay, aggregation intact.
    assert len(member_roles(k8s)) == 10
    assert k8s.rbac.read_cluster_role("numail-workspace-owner").aggregation_rule
    assert absent(lambda: k8s.rbac.read_cluster_role("numail-operator"))
    assert deployment_replicas(k8s) == {}


def test_reinstall_adopts_the_kept_crds_and_keyring(installed: Cluster) -> None:
    before = installed.keyring()
    installed.helm("install", RELEASE, str(H.CHART)).check()
    assert installed.keyring() == before
    assert installed.numail_crds() == expected_crds()
    assert len(member_roles(installed.k8s)) == 10


def wait_until_served(k8s: K8s) -> None:
    """Until every numail.ai kind can be listed. Deleting a CRD whose storage is still
    initialising (seconds after it was created or changed) leaves its finalizer retrying
    "storage is (re)initializing" with backoff, for minutes on a busy machine."""
    for crd in k8s.ext.list_custom_resource_definition().items:
        if not crd.metadata.name.endswith(".numail.ai"):
            continue

        def listable(plural: str = crd.spec.names.plural) -> bool:
            try:
                k8s.custom.list_cluster_custom_object("numail.ai", "v1alpha1", plural, limit=1)
            except ApiException as err:
                if err.status == 429:
                    return False
                raise
            return True

        wait_for(listable, 30, f"{crd.metadata.name} to be served")


def test_uninstall_without_keep_removes_the_crds(installed: Cluster) -> None:
    installed.helm("upgrade", RELEASE, str(H.CHART), "--set", "crds.keep=false").check()
    for name in expected_crds():
        crd = installed.k8s.ext.read_custom_resource_definition(name)
        assert "helm.sh/resource-policy" not in (crd.metadata.annotations or {})
    wait_until_served(installed.k8s)
    installed.helm("uninstall", RELEASE, "--wait", "--timeout=60s").check()
    wait_for(lambda: installed.numail_crds() == set(), 60, "the numail.ai CRDs to be deleted")
    # The master key is never deleted by Helm, whatever crds.keep says.
    assert installed.keyring().startswith(b"k1 ")


def test_a_keyring_secret_without_the_key_stops_the_install(installed: Cluster) -> None:
    """If the Secret exists but lacks the keyring, the chart refuses to write a new key over it."""
    k8s = installed.k8s
    k8s.core.delete_namespaced_secret(KEYRING, NAMESPACE)
    wait_for(lambda: absent(lambda: k8s.core.read_namespaced_secret(KEYRING, NAMESPACE)), 10)
    k8s.core.create_namespaced_secret(
        NAMESPACE,
        client.V1Secret(metadata=client.V1ObjectMeta(name=KEYRING), string_data={"other": "x"}),
    )
    result = installed.helm("install", RELEASE, str(H.CHART))
    assert result.returncode != 0
    assert "refusing to generate a master key over it" in result.stderr
    assert set(k8s.core.read_namespaced_secret(KEYRING, NAMESPACE).data) == {"other"}
