"""A Workspace's whole life against the operator process: provision, isolate, repair, shred."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from numail_operator.reconcile.drift import drifted

from tests.conftest import K8s
from tests.support.operator import OperatorProcess
from tests.support.waiting import absent, condition, wait_for

DATA = Path(__file__).parents[1] / "data"
G, V = "numail.ai", "v1alpha1"


def apply_cr(k8s: K8s, path: Path) -> dict[str, Any]:
    body = yaml.safe_load(path.read_text())
    return dict(k8s.custom.create_cluster_custom_object(G, V, "workspaces", body))


def get_ws(k8s: K8s, name: str) -> dict[str, Any] | None:
    try:
        return dict(k8s.custom.get_cluster_custom_object(G, V, "workspaces", name))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def wait_ready(k8s: K8s, name: str, timeout: float = 90) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        ws = get_ws(k8s, name)
        c = condition(ws, "Ready")
        return ws if c and c["status"] == "True" else None

    return wait_for(ready, timeout, f"workspace {name} Ready")


def mailbox(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Mailbox",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "address": f"{name}@client1.example",
            "provider": "smtp",
            "smtp": {
                "host": "smtp.client1.example",
                "port": 587,
                "security": "starttls",
                "username": name,
            },
            "imap": {
                "host": "imap.client1.example",
                "port": 993,
                "security": "tls",
                "username": name,
            },
            "credentials": {"sealed": "nm1.AAAAAAAAAAA." + "A" * 72},
        },
    }


def create_mailbox(k8s: K8s, name: str) -> bool:
    """The quota controller computes usage a moment after the quota appears; until then the
    apiserver refuses counted objects, as it would for a user."""
    try:
        k8s.custom.create_namespaced_custom_object(
            G, V, "ws-acme-client-1", "mailboxes", mailbox(name, "ws-acme-client-1")
        )
    except ApiException as err:
        if err.status == 403 and "status unknown for quota" in err.body:
            return False
        raise
    return True


@pytest.fixture(scope="module")
def tenants(operator: OperatorProcess, k8s: K8s) -> dict[str, dict[str, Any]]:
    """acme-agency with acme-client-1, and a sibling agency with its own child."""
    apply_cr(k8s, DATA / "input" / "cr-workspace-agency.yaml")
    apply_cr(k8s, DATA / "input" / "cr-workspace-with-mailboxes.yaml")
    for name, spec in (
        ("other-agency", {"tier": "agency"}),
        ("other-client", {"parent": "other-agency", "parentAccess": "read"}),
    ):
        k8s.custom.create_cluster_custom_object(
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
    out = {
        name: wait_ready(k8s, name)
        for name in ("acme-agency", "acme-client-1", "other-agency", "other-client")
    }
    for mbx in ("sales", "support"):
        wait_for(lambda m=mbx: create_mailbox(k8s, m), 120, f"mailbox {mbx} admitted", interval=2)

    def role_names_mailboxes() -> bool:
        role = k8s.rbac.read_namespaced_role("numail-send-worker", "ws-acme-client-1")
        return "numail-mailbox-support" in (role.rules[0].resource_names or [])

    wait_for(role_names_mailboxes, 60, "worker Role to name the mailbox Secrets")
    return out


def live(k8s: K8s, manifest: dict[str, Any]) -> dict[str, Any]:
    from kubernetes.dynamic import DynamicClient

    dyn = DynamicClient(k8s.api)
    res = dyn.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    return dict(
        res.get(
            name=manifest["metadata"]["name"], namespace=manifest["metadata"].get("namespace")
        ).to_dict()
    )


@pytest.mark.parametrize("case", ["workspace-agency", "workspace-with-mailboxes"])
def test_every_child_exists_with_the_expected_fields(
    tenants: dict[str, dict[str, Any]], k8s: K8s, case: str
) -> None:
    expected = list(yaml.safe_load_all((DATA / "output" / f"{case}.yaml").read_text()))
    name = expected[0]["metadata"]["labels"]["numail.ai/workspace"]
    uid = tenants[name]["metadata"]["uid"]
    golden_uid = expected[0]["metadata"]["labels"]["numail.ai/workspace-uid"]
    for manifest in expected:
        want = json.loads(json.dumps(manifest).replace(golden_uid, uid))
        got = live(k8s, want)
        # Every field the golden file sets is on the live object, with the same value.
        assert not drifted(want, got), f"{want['kind']} {want['metadata']['name']} differs"
    ws = get_ws(k8s, name)
    assert ws is not None
    status = ws["status"]
    assert status["namespace"] == f"ws-{name}" and status["keyVersion"] == 1
    assert status["observedGeneration"] == ws["metadata"]["generation"]
    assert len(status["sealingPublicKey"]) == 43
    for type_ in ("NamespaceReady", "KeyReady", "NetworkIsolated", "WorkersProvisioned", "Ready"):
        assert condition(ws, type_)["status"] == "True", type_  # type: ignore[index]


def test_the_dek_is_stored_only_wrapped(tenants: dict[str, dict[str, Any]], k8s: K8s) -> None:
    secret = k8s.core.read_namespaced_secret("numail-dek", "ws-acme-agency")
    assert set(secret.data) == {"v1"}
    assert (
        secret.metadata.annotations["numail.ai/workspace-uid"]
        == tenants["acme-agency"]["metadata"]["uid"]
    )
    import base64

    wrapped = base64.b64decode(secret.data["v1"])
    assert wrapped.startswith(b"NMLK") and len(wrapped) > 32 + 16


def test_creating_the_key_is_reported_as_an_event(
    tenants: dict[str, dict[str, Any]], k8s: K8s
) -> None:
    def posted() -> list[Any]:
        return [
            e
            for e in k8s.core.list_event_for_all_namespaces(
                field_selector="involvedObject.name=acme-agency,involvedObject.kind=Workspace"
            ).items
            if e.reason == "DataKeyCreated"
        ]

    events = wait_for(posted, 30, "a DataKeyCreated Event")
    assert events[0].type == "Normal" and "wrapped by local:k1" in events[0].message


def sar(
    k8s: K8s,
    user: str,
    groups: list[str],
    verb: str,
    resource: str,
    namespace: str,
    name: str | None = None,
    group: str = "",
) -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=groups,
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, namespace=namespace, name=name, group=group
            ),
        )
    )
    return bool(k8s.authz.create_subject_access_review(review).status.allowed)


def sa(ns: str, name: str = "numail-send-worker") -> tuple[str, list[str]]:
    return f"system:serviceaccount:{ns}:{name}", [
        "system:serviceaccounts",
        f"system:serviceaccounts:{ns}",
        "system:authenticated",
    ]


C1, D1, AG = "ws-acme-client-1", "ws-other-client", "ws-acme-agency"
AGENCY = ("alice@acme.example", ["numail.ai:workspace:acme-agency", "system:authenticated"])
SIBLING = ("bob@other.example", ["numail.ai:workspace:other-agency", "system:authenticated"])
RBAC = "rbac.authorization.k8s.io"

# (sentence, subject, verb, resource, namespace, name, api group, allowed)
MATRIX = [
    (
        "send worker gets its own mailbox Secret",
        sa(C1),
        "get",
        "secrets",
        C1,
        "numail-mailbox-sales",
        "",
        True,
    ),
    (
        "send worker gets its other mailbox Secret",
        sa(C1),
        "get",
        "secrets",
        C1,
        "numail-mailbox-support",
        "",
        True,
    ),
    ("send worker gets the wrapped DEK", sa(C1), "get", "secrets", C1, "numail-dek", "", True),
    (
        "reply worker gets a mailbox Secret",
        sa(C1, "numail-reply-worker"),
        "get",
        "secrets",
        C1,
        "numail-mailbox-sales",
        "",
        True,
    ),
    (
        "send worker may not get the sealing key",
        sa(C1),
        "get",
        "secrets",
        C1,
        "numail-sealing-key",
        "",
        False,
    ),
    ("send worker may not get an unnamed Secret", sa(C1), "get", "secrets", C1, "other", "", False),
    (
        "send worker may not get a Secret of a mailbox that doesn't exist",
        sa(C1),
        "get",
        "secrets",
        C1,
        "numail-mailbox-ghost",
        "",
        False,
    ),
    ("send worker may not list Secrets", sa(C1), "list", "secrets", C1, None, "", False),
    ("send worker may not watch Secrets", sa(C1), "watch", "secrets", C1, None, "", False),
    (
        "send worker may not update its Secret",
        sa(C1),
        "update",
        "secrets",
        C1,
        "numail-mailbox-sales",
        "",
        False,
    ),
    (
        "send worker may not delete its Secret",
        sa(C1),
        "delete",
        "secrets",
        C1,
        "numail-mailbox-sales",
        "",
        False,
    ),
    ("send worker may not create Secrets", sa(C1), "create", "secrets", C1, None, "", False),
    (
        "send worker may not read another workspace's DEK",
        sa(C1),
        "get",
        "secrets",
        D1,
        "numail-dek",
        "",
        False,
    ),
    (
        "send worker may not read its parent's DEK",
        sa(C1),
        "get",
        "secrets",
        "ws-acme-agency",
        "numail-dek",
        "",
        False,
    ),
    (
        "send worker may not get Roles",
        sa(C1),
        "get",
        "roles",
        C1,
        "numail-send-worker",
        RBAC,
        False,
    ),
    (
        "send worker may not patch its Role",
        sa(C1),
        "patch",
        "roles",
        C1,
        "numail-send-worker",
        RBAC,
        False,
    ),
    (
        "send worker may not create RoleBindings",
        sa(C1),
        "create",
        "rolebindings",
        C1,
        None,
        RBAC,
        False,
    ),
    (
        "send worker may not bind ClusterRoles",
        sa(C1),
        "bind",
        "clusterroles",
        "",
        "admin",
        RBAC,
        False,
    ),
    ("send worker may not escalate Roles", sa(C1), "escalate", "roles", C1, None, RBAC, False),
    ("send worker may not read ConfigMaps", sa(C1), "get", "configmaps", C1, "x", "", False),
    ("send worker may not create Pods", sa(C1), "create", "pods", C1, None, "", False),
    ("send worker may not read Mailboxes", sa(C1), "get", "mailboxes", C1, "sales", G, False),
    (
        "send worker may not impersonate",
        sa(C1),
        "impersonate",
        "serviceaccounts",
        C1,
        "default",
        "",
        False,
    ),
    (
        "other workspace's worker may not read this mailbox",
        sa(D1),
        "get",
        "secrets",
        C1,
        "numail-mailbox-sales",
        "",
        False,
    ),
    (
        "the default SA may not read a mailbox Secret",
        sa(C1, "default"),
        "get",
        "secrets",
        C1,
        "numail-mailbox-sales",
        "",
        False,
    ),
    (
        "the parent agency reads its child's mailboxes",
        AGENCY,
        "get",
        "mailboxes",
        C1,
        "sales",
        G,
        True,
    ),
    (
        "the parent agency lists its child's mailboxes",
        AGENCY,
        "list",
        "mailboxes",
        C1,
        None,
        G,
        True,
    ),
    (
        "the parent agency reads its child's members",
        AGENCY,
        "list",
        "workspacemembers",
        C1,
        None,
        G,
        True,
    ),
    (
        "read access does not let the parent create mailboxes",
        AGENCY,
        "create",
        "mailboxes",
        C1,
        None,
        G,
        False,
    ),
    (
        "read access does not let the parent delete mailboxes",
        AGENCY,
        "delete",
        "mailboxes",
        C1,
        "sales",
        G,
        False,
    ),
    (
        "the parent agency never reads Secrets",
        AGENCY,
        "get",
        "secrets",
        C1,
        "numail-mailbox-sales",
        "",
        False,
    ),
    (
        "the parent agency can't see a sibling agency's child",
        AGENCY,
        "get",
        "mailboxes",
        D1,
        "x",
        G,
        False,
    ),
    ("a sibling agency can't see this child", SIBLING, "list", "mailboxes", C1, None, G, False),
    ("a sibling agency reads its own child", SIBLING, "list", "mailboxes", D1, None, G, True),
    (
        "the parent agency can't change RBAC in the child",
        AGENCY,
        "create",
        "rolebindings",
        C1,
        None,
        RBAC,
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "subject", "verb", "resource", "ns", "name", "group", "allowed"),
    MATRIX,
    ids=[m[0] for m in MATRIX],
)
def test_rbac_matrix(
    tenants: dict[str, dict[str, Any]],
    k8s: K8s,
    case: str,
    subject: tuple[str, list[str]],
    verb: str,
    resource: str,
    ns: str,
    name: str | None,
    group: str,
    allowed: bool,
) -> None:
    assert len(MATRIX) >= 30
    user, groups = subject
    assert sar(k8s, user, groups, verb, resource, ns, name, group) is allowed, case


def test_a_worker_pod_is_admitted_under_restricted(
    tenants: dict[str, dict[str, Any]], k8s: K8s
) -> None:
    # In the agency's namespace: it has no cpu quota, which the client's running replicas use up.
    for worker in ("numail-send-worker", "numail-reply-worker"):
        dep = k8s.apps.read_namespaced_deployment(worker, AG)
        pod = k8s.api.sanitize_for_serialization(dep.spec.template)
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": f"{worker}-", "labels": pod["metadata"]["labels"]},
            "spec": pod["spec"],
        }
        created = k8s.core.create_namespaced_pod(AG, body, dry_run="All")
        assert created.spec.service_account_name == worker
        # The same Pod with one relaxation is refused, so the admission above was a real check.
        bad = copy.deepcopy(body)
        bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        with pytest.raises(ApiException) as err:
            k8s.core.create_namespaced_pod(AG, bad, dry_run="All")
        assert err.value.status == 403 and "allowPrivilegeEscalation" in err.value.body


def test_a_deleted_default_deny_policy_comes_back(
    tenants: dict[str, dict[str, Any]], k8s: K8s
) -> None:
    before = k8s.networking.read_namespaced_network_policy("numail-default-deny", C1).metadata.uid
    k8s.networking.delete_namespaced_network_policy("numail-default-deny", C1)

    def back() -> bool:
        try:
            np = k8s.networking.read_namespaced_network_policy("numail-default-deny", C1)
        except ApiException:
            return False
        return bool(np.metadata.uid != before and np.spec.policy_types == ["Ingress", "Egress"])

    wait_for(back, 30, "default-deny NetworkPolicy recreated")


def test_a_widened_worker_role_is_reverted(tenants: dict[str, dict[str, Any]], k8s: K8s) -> None:
    role = k8s.rbac.read_namespaced_role("numail-send-worker", C1)
    role.rules[0].verbs = ["get", "list", "watch"]
    k8s.rbac.replace_namespaced_role("numail-send-worker", C1, role)

    def reverted() -> bool:
        r = k8s.rbac.read_namespaced_role("numail-send-worker", C1)
        return bool(len(r.rules) == 1 and r.rules[0].verbs == ["get"])

    wait_for(reverted, 30, "worker Role reverted to get only")
    assert not sar(k8s, *sa(C1), "list", "secrets", C1)


def test_operator_metrics_count_reconciles(
    tenants: dict[str, dict[str, Any]], operator: OperatorProcess
) -> None:
    text = operator.metrics()
    assert 'numail_reconciles_total{kind="Workspace",outcome="ok"}' in text
    assert "numail_reconcile_seconds_bucket" in text
    assert 'numail_workspaces{ready="True"}' in text


LABELLED_KINDS = [
    ("serviceaccounts", lambda k: k.core.list_service_account_for_all_namespaces),
    ("secrets", lambda k: k.core.list_secret_for_all_namespaces),
    ("roles", lambda k: k.rbac.list_role_for_all_namespaces),
    ("rolebindings", lambda k: k.rbac.list_role_binding_for_all_namespaces),
    ("networkpolicies", lambda k: k.networking.list_network_policy_for_all_namespaces),
    ("deployments", lambda k: k.apps.list_deployment_for_all_namespaces),
    ("resourcequotas", lambda k: k.core.list_resource_quota_for_all_namespaces),
    ("limitranges", lambda k: k.core.list_limit_range_for_all_namespaces),
]


def test_deleting_shreds_keys_and_orphans_nothing(
    tenants: dict[str, dict[str, Any]], k8s: K8s
) -> None:
    # Last in the module: it removes the workspaces the other tests use.
    for name in ("acme-client-1", "other-client", "acme-agency", "other-agency"):
        k8s.custom.delete_cluster_custom_object(G, V, "workspaces", name)
    for name in ("acme-client-1", "other-client", "acme-agency", "other-agency"):
        wait_for(lambda n=name: get_ws(k8s, n) is None, 60, f"workspace {name} gone")
        wait_for(
            lambda n=name: absent(lambda: k8s.core.read_namespace(f"ws-{n}")),
            120,
            f"namespace ws-{name} gone",
        )
        for kind, lister in LABELLED_KINDS:
            left = lister(k8s)(label_selector=f"numail.ai/workspace={name}").items
            assert not left, f"orphaned {kind}: {[i.metadata.name for i in left]}"
