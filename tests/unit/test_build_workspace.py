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
