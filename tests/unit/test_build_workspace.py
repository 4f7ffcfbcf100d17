"""Workspace builders against golden YAML: tests/data/input/*.yaml in, tests/data/output/*.yaml out.

Regenerate after an intended change with NUMAIL_REGEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from numail_operator.build.roles import build_member_cluster_roles
from numail_operator.build.workspace import (
    WorkerSpec,
    WorkspaceInputs,
    build_namespace,
    build_workspace_children,
)

DATA = Path(__file__).parents[1] / "data"
CASES = sorted(p.stem for p in (DATA / "input").glob("workspace-*.yaml"))


def load_inputs(name: str) -> WorkspaceInputs:
    raw = yaml.safe_load((DATA / "input" / f"{name}.yaml").read_text())
    workers = {k: WorkerSpec(**raw.pop(k)) for k in ("send_worker", "reply_worker")}
    for key in ("mailboxes", "egress_cidrs"):
        raw[key] = tuple(raw.get(key, ()))
    raw["egress_ports"] = tuple(tuple(p) for p in raw.get("egress_ports", ()))
    return WorkspaceInputs(**raw, **workers)


@pytest.mark.parametrize("case", CASES)
def test_children_match_the_golden_output(case: str) -> None:
    inputs = load_inputs(case)
    built = [build_namespace(inputs), *build_workspace_children(inputs)]
    out = DATA / "output" / f"{case}.yaml"
    text = yaml.safe_dump_all(built, sort_keys=True)
    if os.environ.get("NUMAIL_REGEN"):
        out.write_text(text)
    assert yaml.safe_load_all(out.read_text()) is not None
    assert list(yaml.safe_load_all(out.read_text())) == built


def test_cases_exist() -> None:
    assert len(CASES) >= 3


def test_worker_roles_get_named_secrets_only() -> None:
    inputs = load_inputs("workspace-with-mailboxes")
    for manifest in build_workspace_children(inputs):
        if manifest["kind"] != "Role":
            continue
        for rule in manifest["rules"]:
            assert rule["verbs"] == ["get"]
            assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert rule["resourceNames"], "a worker rule must name its Secrets"


def test_retain_leaves_the_namespace_unowned() -> None:
    inputs = load_inputs("workspace-retain")
    assert "ownerReferences" not in build_namespace(inputs)["metadata"]


def test_member_roles_never_grant_secrets_and_aggregate_upwards() -> None:
    roles = {r["metadata"]["name"]: r for r in build_member_cluster_roles()}
    for role in roles.values():
        for rule in role.get("rules", []):
            assert "secrets" not in rule["resources"] and "*" not in rule["verbs"]
    analyst_rules = roles["numail-workspace-analyst-rules"]["metadata"]["labels"]
    for upper in ("analyst", "operator", "admin", "owner"):
        assert analyst_rules[f"rbac.numail.ai/aggregate-to-{upper}"] == "true"
    assert "rbac.numail.ai/aggregate-to-billing" not in analyst_rules


def test_workers_get_the_database_by_secret_ref_and_an_api_token_but_no_role_on_it() -> None:
    import dataclasses

    from numail_operator.build.workspace import DATABASE_SECRET, build_database_secret

    inputs = dataclasses.replace(
        load_inputs("workspace-with-mailboxes"),
        database=True,
        oauth_client_secrets=("google-oauth-client", DATABASE_SECRET),
    )
    children = build_workspace_children(inputs)
    for role in (c for c in children if c["kind"] == "Role"):
        names = role["rules"][0]["resourceNames"]
        assert "google-oauth-client" in names and DATABASE_SECRET not in names
    for deployment in (c for c in children if c["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env["NUMAIL_DATABASE_URL"] == {
            "secretKeyRef": {"name": DATABASE_SECRET, "key": "url"}
        }
        assert env["NUMAIL_KUBE_TOKEN_FILE"] == "/var/run/secrets/numail/kubernetes/token"
        assert env["NUMAIL_KUBE_CA_FILE"] == "/var/run/secrets/numail/kubernetes/ca.crt"
        assert pod["automountServiceAccountToken"] is False
        api = next(v for v in pod["volumes"] if v["name"] == "kube-api-access")
        token, ca = api["projected"]["sources"]
        assert "audience" not in token["serviceAccountToken"]  # the API server's own
        assert token["serviceAccountToken"]["expirationSeconds"] == 600
        assert ca["configMap"]["name"] == "kube-root-ca.crt"
    secret = build_database_secret(inputs, "ZHNu")
    assert secret["data"] == {"url": "ZHNu"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == inputs.uid
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "database"


def test_without_a_database_the_workers_have_no_database_url() -> None:
    for deployment in build_workspace_children(load_inputs("workspace-agency")):
        if deployment["kind"] == "Deployment":
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            assert "NUMAIL_DATABASE_URL" not in {e["name"] for e in container["env"]}


def test_workers_verify_the_key_service_with_the_published_ca_mounted_read_only() -> None:
    from numail_operator.build.workspace import (
        KEYSERVICE_CA_CONFIGMAP,
        build_keyservice_ca_config_map,
    )

    inputs = load_inputs("workspace-with-keyservice-ca")
    deployments = [c for c in build_workspace_children(inputs) if c["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NUMAIL_KEYSERVICE_CA_FILE"] == "/var/run/secrets/numail/keyservice-ca/ca.crt"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "keyservice-ca")
        assert mount == {
            "name": "keyservice-ca",
            "mountPath": "/var/run/secrets/numail/keyservice-ca",
            "readOnly": True,
        }
        volume = next(v for v in pod["volumes"] if v["name"] == "keyservice-ca")
        # Only the certificate, from the ConfigMap; not optional, so a Pod never starts without
        # it; the volume type is one Pod Security "restricted" admits.
        assert volume["configMap"] == {
            "name": KEYSERVICE_CA_CONFIGMAP,
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
            "defaultMode": 0o444,
        }
        assert set(volume) == {"name", "configMap"}
        # Unchanged: the pod and container security contexts.
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    ca = build_keyservice_ca_config_map(inputs, "-----BEGIN CERTIFICATE-----\nAA==\n")
    assert ca["kind"] == "ConfigMap" and ca["metadata"]["name"] == KEYSERVICE_CA_CONFIGMAP
    assert ca["metadata"]["namespace"] == "ws-acme-client-2"
    assert ca["data"] == {"ca.crt": "-----BEGIN CERTIFICATE-----\nAA==\n"}
    assert "binaryData" not in ca
    assert ca["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "numail.ai/v1alpha1",
            "kind": "Workspace",
            "name": "acme-client-2",
            "uid": inputs.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    labels = ca["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "keyservice-ca"
    assert labels["app.kubernetes.io/managed-by"] == "numail-operator"
    assert labels["numail.ai/workspace"] == "acme-client-2"


def test_without_a_ca_secret_the_workers_use_the_system_trust_store() -> None:
    for deployment in build_workspace_children(load_inputs("workspace-agency")):
        if deployment["kind"] == "Deployment":
            pod = deployment["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            assert "NUMAIL_KEYSERVICE_CA_FILE" not in {e["name"] for e in container["env"]}
            assert "keyservice-ca" not in {v["name"] for v in pod["volumes"]}


def test_only_certificates_are_published_never_a_key(tmp_path: Path) -> None:
    from numail_operator.build.workspace import certificates_only

    from tests.support.tls import make_serving_cert

    certs = make_serving_cert(tmp_path)
    ca = certs.ca.read_bytes()
    assert certificates_only(ca) == ca.decode()
    # A file that also holds a key (or anything else) gives its certificates only.
    mixed = certs.key.read_bytes() + ca + b"not pem\n" + certs.cert.read_bytes()
    published = certificates_only(mixed)
    assert published == ca.decode() + certs.cert.read_text()
    assert "PRIVATE KEY" not in published
    for nothing in (b"", certs.key.read_bytes(), b"-----BEGIN CERTIFICATE-----\nAA==\n"):
        assert certificates_only(nothing) is None
