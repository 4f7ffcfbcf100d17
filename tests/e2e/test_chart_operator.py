"""The operator and the key service running with exactly the identities the chart installs.

The chart is installed into its own control plane; then each process runs locally (there is no
kubelet) with a token minted by TokenRequest for the chart's ServiceAccount, so every API call
it makes is authorised by the chart's RBAC and admitted by the chart's admission policy, and by
nothing else. SubjectAccessReview then shows what those identities can't do.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from numail.keys import KeyContext
from numail.keys.client import KeyServiceClient
from numail.keys.local import LocalKeyProvider
from tests.conftest import K8s, make_k8s
from tests.support import helm as H
from tests.support.controlplane import ControlPlane, start_controlplane
from tests.support.operator import OperatorProcess, start_operator
from tests.support.postgres import free_port
from tests.support.waiting import absent, condition, wait_for

NS = "numail-system"
RELEASE = "numail-operator"
OPERATOR_SA = "numail-operator"
KEYSERVICE_SA = "numail-operator-keyservice"
TLS_SECRET = "numail-operator-keyservice-tls"
G, V = "numail.ai", "v1alpha1"
AGENCY, CLIENT = "acme-agency", "acme-client"


@dataclass
class Installed:
    cp: ControlPlane
    admin: K8s
    workdir: Path
    keyring: Path

    def kubeconfig_for(self, service_account: str) -> Path:
        return H.service_account_kubeconfig(
            self.cp.kubeconfig,
            self.admin.core,
            NS,
            service_account,
            self.workdir / f"{service_account}.kubeconfig",
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Its own control plane: Helm must own the CRDs it installs (see test_chart_install.py)."""
    cp = start_controlplane(tmp_path_factory.mktemp("chart-operator-cp"))
    admin = make_k8s(cp.kubeconfig)
    try:
        admin.core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=NS, labels={"pod-security.kubernetes.io/enforce": "restricted"}
                )
            )
        )
        H.helm("install", RELEASE, str(H.CHART), "-n", NS, kubeconfig=cp.kubeconfig).check()
        # The apiserver's RBAC authorizer learns of new bindings through an informer; a process
        # started before it has would log refusals that say nothing about the chart.
        wait_for(
            lambda: (
                can(admin, OPERATOR_SA, "list", "workspaces", group=G)
                and can(
                    admin, KEYSERVICE_SA, "create", "tokenreviews", group="authentication.k8s.io"
                )
                and can(admin, KEYSERVICE_SA, "get", "secrets", namespace=NS)
            ),
            30,
            "the chart's bindings to take effect",
        )
        workdir = tmp_path_factory.mktemp("chart-operator")
        # The keyring the chart generated, as the Pods would mount it.
        secret = admin.core.read_namespaced_secret("numail-operator-local-keyring", NS)
        keyring = workdir / "keyring"
        keyring.write_bytes(base64.b64decode(secret.data["keyring"]))
        keyring.chmod(0o600)
        yield Installed(cp, admin, workdir, keyring)
    finally:
        admin.api.close()
        cp.stop()


def run_operator(installed: Installed, name: str) -> OperatorProcess:
    workdir = installed.workdir / name
    workdir.mkdir(exist_ok=True)
    (workdir / "keyring").write_bytes(installed.keyring.read_bytes())
    return start_operator(
        installed.kubeconfig_for(OPERATOR_SA),
        workdir,
        {
            "NUMAIL_SYSTEM_NAMESPACE": NS,
            "NUMAIL_KEYSERVICE_URL": f"https://numail-operator-keyservice.{NS}.svc:8443",
            "POD_ID": name,
        },
    )


@pytest.fixture(scope="module")
def operator(installed: Installed) -> Iterator[OperatorProcess]:
    op = run_operator(installed, "operator")
    try:
        yield op
    finally:
        op.stop()


def get_ws(k8s: K8s, name: str) -> dict[str, Any] | None:
    try:
        return dict(k8s.custom.get_cluster_custom_object(G, V, "workspaces", name))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def wait_ready(k8s: K8s, name: str, timeout: float = 120) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        ws = get_ws(k8s, name)
        c = condition(ws, "Ready")
        return ws if c and c["status"] == "True" else None

    return wait_for(ready, timeout, f"workspace {name} Ready")


def refusals(log: Path) -> list[str]:
    pattern = re.compile(r"forbidden|\b403\b|not enough permissions", re.IGNORECASE)
    return [line for line in log.read_text().splitlines() if pattern.search(line)]


@pytest.fixture(scope="module")
def workspaces(installed: Installed, operator: OperatorProcess) -> dict[str, dict[str, Any]]:
    admin = installed.admin
    admin.custom.create_cluster_custom_object(
        G,
        V,
        "keyproviders",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "KeyProvider",
            "metadata": {"name": "default"},
            "spec": {
                "type": "local",
                "local": {"secretRef": {"name": "numail-operator-local-keyring", "namespace": NS}},
            },
        },
    )
    for name, spec in (
        (AGENCY, {"tier": "agency", "quota": {"maxMailboxes": 5, "cpu": "2", "memory": "2Gi"}}),
        (CLIENT, {"parent": AGENCY, "parentAccess": "manage"}),
    ):
        admin.custom.create_cluster_custom_object(
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
    return {name: wait_ready(admin, name) for name in (AGENCY, CLIENT)}


# --- the ClusterRole is enough ------------------------------------------------------------


def test_workspaces_reconcile_to_ready_with_only_the_charts_rbac(
    installed: Installed, operator: OperatorProcess, workspaces: dict[str, dict[str, Any]]
) -> None:
    admin = installed.admin
    client_ns = workspaces[CLIENT]["status"]["namespace"]
    assert client_ns == f"ws-{CLIENT}"
    assert workspaces[AGENCY]["status"]["keyVersion"] == 1
    # Everything a Workspace owns is there: keys, workers, policies, quota, parent access.
    assert admin.core.read_namespaced_secret("numail-dek", client_ns)
    assert admin.apps.read_namespaced_deployment("numail-send-worker", client_ns)
    assert admin.networking.read_namespaced_network_policy("numail-default-deny", client_ns)
    assert admin.core.read_namespaced_resource_quota("numail-quota", f"ws-{AGENCY}")
    binding = admin.rbac.read_namespaced_role_binding("numail-parent-access", client_ns)
    assert binding.role_ref.name == "numail-workspace-operator"  # needed `bind` on it
    # The member ClusterRoles were applied at startup (needed `escalate` on them).
    assert admin.rbac.read_cluster_role("numail-workspace-owner").aggregation_rule

    def healthy() -> bool:
        kp = admin.custom.get_cluster_custom_object(G, V, "keyproviders", "default")
        return bool((kp.get("status") or {}).get("healthy"))

    wait_for(healthy, 60, "KeyProvider default healthy")  # read the keyring Secret by name
    wait_for(
        lambda: any(
            e.reason == "DataKeyCreated" for e in admin.core.list_namespaced_event("default").items
        ),
        20,
        "Kopf to post the DataKeyCreated Event",
    )
    assert refusals(operator.log) == []


def test_a_hand_deleted_child_is_repaired(
    installed: Installed, operator: OperatorProcess, workspaces: dict[str, dict[str, Any]]
) -> None:
    admin = installed.admin
    admin.rbac.delete_namespaced_role("numail-send-worker", f"ws-{CLIENT}")

    def restored() -> bool:
        try:
            admin.rbac.read_namespaced_role("numail-send-worker", f"ws-{CLIENT}")
        except ApiException:
            return False
        return True

    wait_for(restored, 60, "the worker Role to be re-created")


def test_operator_metrics_expose_the_documented_series(
    operator: OperatorProcess, workspaces: dict[str, dict[str, Any]]
) -> None:
    def scraped() -> str | None:
        text = operator.metrics()
        return text if 'numail_drift_repairs_total{kind="Role"}' in text else None

    text = wait_for(scraped, 60, "the drift repair to be counted")
    assert re.search(r'numail_reconciles_total\{kind="Workspace",outcome="ok"\} [1-9]', text)
    assert re.search(r'numail_reconciles_total\{kind="KeyProvider",outcome="ok"\} [1-9]', text)
    assert 'numail_reconcile_seconds_bucket{kind="Workspace",le="+Inf"}' in text
    assert 'numail_workspaces{ready="True"} 2.0' in text
    assert re.search(r'numail_drift_repairs_total\{kind="Role"\} [1-9]', text)


# --- and it is minimal --------------------------------------------------------------------


def can(
    admin: K8s,
    service_account: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{NS}:{service_account}",
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{NS}",
                "system:authenticated",
            ],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                group=group,
                resource=resource,
                namespace=namespace,
                name=name,
                subresource=subresource,
            ),
        )
    )
    return bool(admin.authz.create_subject_access_review(review).status.allowed)


RBAC = "rbac.authorization.k8s.io"
OPERATOR_DENIED: list[tuple[str, dict[str, Any]]] = [
    ("read a ConfigMap", {"verb": "get", "resource": "configmaps", "namespace": "kube-system"}),
    # ConfigMaps: only the key service's CA copy, applied and watched; never replaced or deleted.
    ("replace a ConfigMap", {"verb": "update", "resource": "configmaps", "namespace": "ws-x"}),
    ("delete a ConfigMap", {"verb": "delete", "resource": "configmaps", "namespace": "ws-x"}),
    ("read Pods", {"verb": "get", "resource": "pods", "namespace": "ws-acme-client"}),
    ("create Pods", {"verb": "create", "resource": "pods", "namespace": "ws-acme-client"}),
    (
        "exec into a Pod",
        {"verb": "create", "resource": "pods", "subresource": "exec", "namespace": "kube-system"},
    ),
    (
        "read a Pod's log",
        {"verb": "get", "resource": "pods", "subresource": "log", "namespace": "x"},
    ),
    (
        "mint a worker's token",
        {
            "verb": "create",
            "resource": "serviceaccounts",
            "subresource": "token",
            "namespace": "ws-acme-client",
            "name": "numail-send-worker",
        },
    ),
    ("read nodes", {"verb": "get", "resource": "nodes"}),
    ("list namespaces", {"verb": "list", "resource": "namespaces"}),
    (
        "delete all Secrets at once",
        {"verb": "deletecollection", "resource": "secrets", "namespace": "ws-x"},
    ),
    (
        "delete a CRD",
        {
            "verb": "delete",
            "group": "apiextensions.k8s.io",
            "resource": "customresourcedefinitions",
            "name": "workspaces.numail.ai",
        },
    ),
    (
        "create a CRD",
        {
            "verb": "create",
            "group": "apiextensions.k8s.io",
            "resource": "customresourcedefinitions",
        },
    ),
    ("create any ClusterRole", {"verb": "create", "group": RBAC, "resource": "clusterroles"}),
    (
        "edit cluster-admin",
        {"verb": "patch", "group": RBAC, "resource": "clusterroles", "name": "cluster-admin"},
    ),
    (
        "escalate through cluster-admin",
        {"verb": "escalate", "group": RBAC, "resource": "clusterroles", "name": "cluster-admin"},
    ),
    (
        "bind cluster-admin",
        {"verb": "bind", "group": RBAC, "resource": "clusterroles", "name": "cluster-admin"},
    ),
    (
        "bind the owner role",
        {
            "verb": "bind",
            "group": RBAC,
            "resource": "clusterroles",
            "name": "numail-workspace-owner",
        },
    ),
    (
        "create a ClusterRoleBinding",
        {"verb": "create", "group": RBAC, "resource": "clusterrolebindings"},
    ),
    ("impersonate a user", {"verb": "impersonate", "resource": "users", "name": "admin"}),
    (
        "impersonate a ServiceAccount",
        {
            "verb": "impersonate",
            "resource": "serviceaccounts",
            "namespace": "ws-x",
            "name": "numail-send-worker",
        },
    ),
    (
        "delete a Workspace",
        {"verb": "delete", "group": G, "resource": "workspaces", "name": AGENCY},
    ),
    (
        "create a Mailbox",
        {"verb": "create", "group": G, "resource": "mailboxes", "namespace": "ws-x"},
    ),
    ("read ApiKeys", {"verb": "get", "group": G, "resource": "apikeys", "namespace": "ws-x"}),
    (
        "delete a worker Deployment",
        {"verb": "delete", "group": "apps", "resource": "deployments", "namespace": "ws-x"},
    ),
    (
        "remove its admission policy",
        {
            "verb": "delete",
            "group": "admissionregistration.k8s.io",
            "resource": "validatingadmissionpolicies",
        },
    ),
    (
        "write another Kopf peering",
        {"verb": "patch", "group": "kopf.dev", "resource": "clusterkopfpeerings", "name": "other"},
    ),
]
OPERATOR_ALLOWED: list[tuple[str, dict[str, Any]]] = [
    (
        "create a Secret in a workspace",
        {"verb": "create", "resource": "secrets", "namespace": "ws-x"},
    ),
    ("delete a workspace namespace", {"verb": "delete", "resource": "namespaces", "name": "ws-x"}),
    (
        "escalate through a member role",
        {
            "verb": "escalate",
            "group": RBAC,
            "resource": "clusterroles",
            "name": "numail-workspace-owner",
        },
    ),
    (
        "bind the analyst role",
        {
            "verb": "bind",
            "group": RBAC,
            "resource": "clusterroles",
            "name": "numail-workspace-analyst",
        },
    ),
    (
        "write Workspace status",
        {
            "verb": "patch",
            "group": G,
            "resource": "workspaces",
            "subresource": "status",
            "name": AGENCY,
        },
    ),
]


@pytest.mark.parametrize(("what", "attrs"), OPERATOR_DENIED, ids=[w for w, _ in OPERATOR_DENIED])
def test_the_operator_may_not(installed: Installed, what: str, attrs: dict[str, Any]) -> None:
    assert not can(installed.admin, OPERATOR_SA, **attrs), f"the operator may {what}"


@pytest.mark.parametrize(("what", "attrs"), OPERATOR_ALLOWED, ids=[w for w, _ in OPERATOR_ALLOWED])
def test_the_operator_may(installed: Installed, what: str, attrs: dict[str, Any]) -> None:
    """The other side, so that a review that always says no can't pass the tests above."""
    assert can(installed.admin, OPERATOR_SA, **attrs), f"the operator may not {what}"


def refused_by_policy(call: Any) -> str:
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status in (403, 422), caught.value.body
    return str(caught.value.body)


def test_the_admission_policy_confines_what_rbac_allows(
    installed: Installed, workspaces: dict[str, dict[str, Any]]
) -> None:
    """RBAC lets the operator delete any namespace and write any Secret; the policy does not."""
    op = make_k8s(installed.kubeconfig_for(OPERATOR_SA))
    try:
        # (default and kube-system are immortal anyway; the operator's own namespace is not.)
        assert can(installed.admin, OPERATOR_SA, "delete", "namespaces", name=NS)
        message = refused_by_policy(lambda: op.core.delete_namespace(NS, dry_run="All"))
        assert "may write only workspace namespaces" in message
        refused_by_policy(
            lambda: op.core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name="not-a-workspace")),
                dry_run="All",
            )
        )
        secret = client.V1Secret(metadata=client.V1ObjectMeta(name="x"), string_data={"a": "b"})
        refused_by_policy(
            lambda: op.core.create_namespaced_secret("kube-system", secret, dry_run="All")
        )
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="numail-"),
            involved_object=client.V1ObjectReference(kind="Namespace", name="kube-system"),
            reason="Test",
            message="test",
        )
        refused_by_policy(
            lambda: op.core.create_namespaced_event("kube-system", event, dry_run="All")
        )
        # What the operator does do is still admitted.
        op.core.create_namespaced_event("default", event, dry_run="All")
        restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
        op.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name="ws-dry-run", labels=restricted)),
            dry_run="All",
        )
        # A workspace namespace must keep Pod Security "restricted", even from the operator.
        message = refused_by_policy(
            lambda: op.core.patch_namespace(
                f"ws-{AGENCY}",
                {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}},
                dry_run="All",
            )
        )
        assert "must keep pod-security.kubernetes.io/enforce: restricted" in message
        op.core.create_namespaced_secret(f"ws-{AGENCY}", secret, dry_run="All")
        # ConfigMaps (the key service's CA copy) likewise: in ws-* only.
        config_map = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"), data={"a": "b"})
        refused_by_policy(
            lambda: op.core.create_namespaced_config_map("kube-system", config_map, dry_run="All")
        )
        op.core.create_namespaced_config_map(f"ws-{AGENCY}", config_map, dry_run="All")

        # A wrapped DEK version can be added, never rewritten in place.
        dek = op.core.read_namespaced_secret("numail-dek", f"ws-{AGENCY}")
        rotated = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="numail-dek", resource_version=dek.metadata.resource_version
            ),
            data={**dek.data, "v2": base64.b64encode(b"another wrapped key").decode()},
        )
        op.core.replace_namespaced_secret("numail-dek", f"ws-{AGENCY}", rotated, dry_run="All")
        rotated.data = {"v1": base64.b64encode(b"a replacement").decode()}
        message = refused_by_policy(
            lambda: op.core.replace_namespaced_secret(
                "numail-dek", f"ws-{AGENCY}", rotated, dry_run="All"
            )
        )
        assert "rewrite a wrapped DEK version" in message
    finally:
        op.api.close()


# --- the key service, with its own identity ------------------------------------------------

KEYSERVICE_DENIED: list[tuple[str, dict[str, Any]]] = [
    (
        "read a workspace's Secrets",
        {"verb": "get", "resource": "secrets", "namespace": f"ws-{AGENCY}", "name": "numail-dek"},
    ),
    (
        "read a Secret outside its namespace",
        {"verb": "get", "resource": "secrets", "namespace": "kube-system", "name": "any"},
    ),
    ("list Secrets", {"verb": "list", "resource": "secrets", "namespace": NS}),
    ("list namespaces", {"verb": "list", "resource": "namespaces"}),
    ("list Workspaces", {"verb": "list", "group": G, "resource": "workspaces"}),
    ("change a Workspace", {"verb": "patch", "group": G, "resource": "workspaces", "name": AGENCY}),
    (
        "mint tokens",
        {
            "verb": "create",
            "resource": "serviceaccounts",
            "subresource": "token",
            "namespace": f"ws-{AGENCY}",
        },
    ),
]


@pytest.mark.parametrize(
    ("what", "attrs"), KEYSERVICE_DENIED, ids=[w for w, _ in KEYSERVICE_DENIED]
)
def test_the_key_service_may_not(installed: Installed, what: str, attrs: dict[str, Any]) -> None:
    assert not can(installed.admin, KEYSERVICE_SA, **attrs), f"the key service may {what}"


def https_get(url: str, ca: Path) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def run_tls_init(installed: Installed, kubeconfig: Path, out: Path) -> str:
    """What the key service's init container runs, as its ServiceAccount."""
    result = subprocess.run(
        [
            sys.executable, "-m", "numail_operator.tls", "--namespace", NS,
            f"--secret={TLS_SECRET}", "--dns-name=localhost", f"--out={out}",
        ],
        env=dict(os.environ, KUBECONFIG=str(kubeconfig)),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def keyservice(installed: Installed) -> Iterator[tuple[str, Path, Path]]:
    kubeconfig = installed.kubeconfig_for(KEYSERVICE_SA)
    tls = installed.workdir / "tls"
    assert "created Secret" in run_tls_init(installed, kubeconfig, tls)
    port = free_port()
    log = installed.workdir / "keyservice.log"
    env = dict(
        os.environ,
        KUBECONFIG=str(kubeconfig),
        NUMAIL_KEYSERVICE_HOST="127.0.0.1",
        NUMAIL_KEYSERVICE_PORT=str(port),
        NUMAIL_KEYSERVICE_TLS_CERT=str(tls / "tls.crt"),
        NUMAIL_KEYSERVICE_TLS_KEY=str(tls / "tls.key"),
        NUMAIL_LOCAL_KEYRING_FILE=str(installed.keyring),
        NUMAIL_SYSTEM_NAMESPACE=NS,
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "numail_operator.keyservice"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"https://localhost:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"key service exited:\n{log.read_text()[-3000:]}")
            try:
                return https_get(url + "/healthz", tls / "ca.crt")[0] == 200
            except OSError:
                return False

        wait_for(up, 30, "the key service to answer")
        yield url, tls / "ca.crt", log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_tls_init_is_create_only(
    installed: Installed, keyservice: tuple[str, Path, Path]
) -> None:
    _, ca, _ = keyservice
    again = installed.workdir / "tls-again"
    out = run_tls_init(installed, installed.kubeconfig_for(KEYSERVICE_SA), again)
    assert "found Secret" in out
    assert (again / "ca.crt").read_bytes() == ca.read_bytes()
    assert (again / "tls.key").stat().st_mode & 0o777 == 0o600


def test_a_worker_unwraps_its_dek_from_the_key_service(
    installed: Installed,
    workspaces: dict[str, dict[str, Any]],
    keyservice: tuple[str, Path, Path],
) -> None:
    url, ca, log = keyservice
    admin = installed.admin
    ns = f"ws-{AGENCY}"
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=["numail-keyservice"], expiration_seconds=600)
    )
    token = admin.core.create_namespaced_service_account_token("numail-send-worker", ns, request)
    wrapped = base64.b64decode(admin.core.read_namespaced_secret("numail-dek", ns).data["v1"])

    worker = KeyServiceClient(url, token=lambda: str(token.status.token), ca_file=str(ca))
    dek = worker.dek(wrapped, 1)
    uid = workspaces[AGENCY]["metadata"]["uid"]
    expected = LocalKeyProvider.from_file(installed.keyring).unwrap(
        wrapped, KeyContext(workspace_uid=uid, workspace=AGENCY, key_version=1)
    )
    assert dek.key == expected and dek.version == 1

    # No token: refused, and counted.
    req = urllib.request.Request(
        url + "/v1/unwrap",
        data=json.dumps({"wrappedKey": "AAAA", "keyVersion": 1}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(ca)), timeout=5)
    assert refused.value.code == 401
    assert refusals(log) == []


def test_key_service_metrics_expose_the_documented_series(
    keyservice: tuple[str, Path, Path],
) -> None:
    url, ca, _ = keyservice
    status, text = https_get(url + "/metrics", ca)
    assert status == 200
    assert f'numail_keyservice_unwraps_total{{workspace="{AGENCY}"}} 1.0' in text
    assert 'numail_keyservice_refusals_total{reason="missing_token"} 1.0' in text
    assert re.search(r"numail_keyservice_unwrap_seconds_count [1-9]", text)


# --- deletion, and replicas ----------------------------------------------------------------


def test_deleting_a_workspace_shreds_its_keys_under_the_policy(
    installed: Installed, operator: OperatorProcess, workspaces: dict[str, dict[str, Any]]
) -> None:
    admin = installed.admin
    admin.custom.delete_cluster_custom_object(G, V, "workspaces", CLIENT)
    wait_for(lambda: get_ws(admin, CLIENT) is None, 90, "the Workspace's finalizer to finish")
    assert absent(lambda: admin.core.read_namespaced_secret("numail-dek", f"ws-{CLIENT}"))

    def terminating() -> bool:
        try:
            ns = admin.core.read_namespace(f"ws-{CLIENT}")
        except ApiException as err:
            return err.status == 404
        return ns.status.phase == "Terminating"

    wait_for(terminating, 60, "the workspace namespace to be deleted")
    assert refusals(operator.log) == []


def test_two_replicas_elect_one_active_operator(
    installed: Installed, operator: OperatorProcess
) -> None:
    operator.stop()
    first, second = run_operator(installed, "replica-a"), run_operator(installed, "replica-b")
    try:
        installed.admin.custom.create_cluster_custom_object(
            G,
            V,
            "workspaces",
            {
                "apiVersion": f"{G}/{V}",
                "kind": "Workspace",
                "metadata": {"name": "two-replicas"},
                "spec": {"tier": "standard"},
            },
        )

        def settled() -> str | None:
            if condition(get_ws(installed.admin, "two-replicas"), "Ready"):
                return "reconciled"
            logs = [p.log.read_text() for p in (first, second)]
            if all("Pausing all operators" in text for text in logs):
                return "both paused"
            return None

        # Generous: two operator processes start and join peering on a machine the rest of
        # the suite keeps busy; a passing run takes a few seconds.
        try:
            outcome = wait_for(settled, 120, "one replica to reconcile, or both to pause")
        except AssertionError as err:
            tails = "\n".join(
                f"--- {p.log.name}:\n{p.log.read_text()[-2000:]}" for p in (first, second)
            )
            raise AssertionError(f"{err}\n{tails}") from None
        assert outcome == "reconciled", "both replicas paused: equal Kopf peering priorities"
    finally:
        first.stop()
        second.stop()
