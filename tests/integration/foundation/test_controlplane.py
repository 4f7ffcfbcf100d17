"""The local control plane is a real Kubernetes: schemas, RBAC, GC, namespaces, PSA and tokens."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import K8s


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


@pytest.fixture
def namespace(k8s: K8s) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    k8s.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def test_readyz_answers(controlplane) -> None:  # type: ignore[no-untyped-def]
    status, body = controlplane.get("/readyz")
    assert status == 200 and body.strip() == "ok"


def test_a_crd_is_served_and_its_structural_schema_rejects_bad_objects(k8s: K8s) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.probe.numail.ai"},
        "spec": {
            "group": "probe.numail.ai",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    k8s.ext.create_custom_resource_definition(crd)

    def established() -> bool:
        got = k8s.ext.read_custom_resource_definition("widgets.probe.numail.ai")
        return any(
            c.type == "Established" and c.status == "True" for c in (got.status.conditions or [])
        )

    wait_for(established, what="CRD Established")
    ok = {
        "apiVersion": "probe.numail.ai/v1",
        "kind": "Widget",
        "metadata": {"name": "good"},
        "spec": {"size": 3},
    }
    wait_for(lambda: _try_create(k8s, ok), what="CRD served")
    got = k8s.custom.get_namespaced_custom_object(
        "probe.numail.ai", "v1", "default", "widgets", "good"
    )
    assert got["spec"]["size"] == 3

    bad = {
        "apiVersion": "probe.numail.ai/v1",
        "kind": "Widget",
        "metadata": {"name": "bad"},
        "spec": {"size": 0},
    }
    with pytest.raises(ApiException) as err:
        k8s.custom.create_namespaced_custom_object(
            "probe.numail.ai", "v1", "default", "widgets", bad
        )
    assert err.value.status == 422
    assert "spec.size" in err.value.body and "greater than or equal to 1" in err.value.body


def _try_create(k8s: K8s, obj: dict[str, object]) -> bool:
    try:
        k8s.custom.create_namespaced_custom_object(
            "probe.numail.ai", "v1", "default", "widgets", obj
        )
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def _can(k8s: K8s, user: str, verb: str, resource: str, namespace: str, name: str = "") -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, namespace=namespace, name=name or None
            ),
        )
    )
    return bool(k8s.authz.create_subject_access_review(review).status.allowed)


def test_rbac_denies_an_unbound_service_account_and_honours_resource_names(
    k8s: K8s,
    namespace: str,
) -> None:
    k8s.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="probe"))
    )
    user = f"system:serviceaccount:{namespace}:probe"
    assert not _can(k8s, user, "get", "secrets", namespace, "mine")

    k8s.rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-mine"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""], resources=["secrets"], verbs=["get"], resource_names=["mine"]
                )
            ],
        ),
    )
    k8s.rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="read-mine"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-mine"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="probe", namespace=namespace)
            ],
        ),
    )
    wait_for(lambda: _can(k8s, user, "get", "secrets", namespace, "mine"), what="binding effective")
    assert not _can(k8s, user, "get", "secrets", namespace, "theirs")
    assert not _can(k8s, user, "list", "secrets", namespace)
    assert not _can(k8s, user, "get", "secrets", "default", "mine")


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(k8s: K8s, namespace: str) -> None:
    owner = k8s.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    k8s.core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="dependent",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
                    )
                ],
            )
        ),
    )
    k8s.core.delete_namespaced_config_map("owner", namespace)
    wait_for(
        lambda: gone(lambda: k8s.core.read_namespaced_config_map("dependent", namespace)),
        what="dependent collected",
    )


def test_namespace_deletion_is_finalised(k8s: K8s, namespace: str) -> None:
    k8s.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"))
    )
    k8s.core.delete_namespace(namespace)
    wait_for(lambda: gone(lambda: k8s.core.read_namespace(namespace)), what="namespace finalised")


def _pod(name: str, *, privileged: bool) -> client.V1Pod:
    if privileged:
        ctx = client.V1SecurityContext(privileged=True)
        pod_ctx = None
    else:
        ctx = client.V1SecurityContext(
            allow_privilege_escalation=False,
            run_as_non_root=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        )
        pod_ctx = client.V1PodSecurityContext(run_as_non_root=True, run_as_user=65532)
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            security_context=pod_ctx,
            containers=[
                client.V1Container(name="c", image="registry.example/app:1", security_context=ctx)
            ],
        ),
    )


def test_pod_security_restricted_rejects_privileged_and_admits_compliant(k8s: K8s) -> None:
    ns = f"psa-{uuid.uuid4().hex[:8]}"
    k8s.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=ns, labels={"pod-security.kubernetes.io/enforce": "restricted"}
            )
        )
    )
    with pytest.raises(ApiException) as err:
        k8s.core.create_namespaced_pod(ns, _pod("bad", privileged=True))
    assert err.value.status == 403
    message = json.loads(err.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "privileged" in message
    created = k8s.core.create_namespaced_pod(ns, _pod("good", privileged=False))
    assert created.metadata.name == "good"


def _token(k8s: K8s, namespace: str, sa: str, audience: str, seconds: int = 600) -> str:
    req = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=seconds)
    )
    return str(k8s.core.create_namespaced_service_account_token(sa, namespace, req).status.token)


def _review(k8s: K8s, token: str, audience: str) -> client.V1TokenReviewStatus:
    review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[audience]))
    return k8s.authn.create_token_review(review).status


def test_token_request_audience_is_enforced_by_token_review(k8s: K8s, namespace: str) -> None:
    k8s.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="worker"))
    )
    good = _token(k8s, namespace, "worker", "numail-keyservice")
    status = _review(k8s, good, "numail-keyservice")
    assert status.authenticated is True
    assert status.user.username == f"system:serviceaccount:{namespace}:worker"
    assert status.audiences == ["numail-keyservice"]

    other = _token(k8s, namespace, "worker", "someone-else")
    assert not _review(k8s, other, "numail-keyservice").authenticated
    assert not _review(k8s, good[:-4] + "AAAA", "numail-keyservice").authenticated
