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
    for key in ("mailboxes", "oauth_client_secrets", "egress_cidrs"):
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
