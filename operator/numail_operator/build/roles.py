"""Pure builders of the member ClusterRoles (Owner, Admin, Operator, Analyst, Billing).

Each role is an aggregated ClusterRole, so a platform team can extend one by labelling its own
ClusterRole `rbac.numail.ai/aggregate-to-<role>: "true"`. The roles are bound per namespace
(by WorkspaceMember and parent access), so they never reach beyond one workspace. None of them
grants Secrets: credentials are read only by the workers, by name.
"""

from __future__ import annotations

from typing import Any

from numail.api import GROUP, LABEL_MANAGED_BY, LABEL_PART_OF

ROLES = ("owner", "admin", "operator", "analyst", "billing")
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]

# Which lower roles each role includes, so rules are written once.
INCLUDES = {
    "owner": ("admin",),
    "admin": ("operator",),
    "operator": ("analyst",),
    "analyst": (),
    "billing": (),
}

# The rules each role adds on top of what it includes.
OWN_RULES: dict[str, list[dict[str, Any]]] = {
    "analyst": [
        {"apiGroups": [GROUP], "resources": ["mailboxes", "workspacemembers"], "verbs": READ},
        {"apiGroups": [GROUP], "resources": ["mailboxes/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": READ},
    ],
    "operator": [
        {"apiGroups": [GROUP], "resources": ["mailboxes"], "verbs": WRITE},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": READ},
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
    ],
    "admin": [
        {
            "apiGroups": [GROUP],
            "resources": ["workspacemembers", "apikeys", "datasubjectrequests"],
            "verbs": READ + WRITE,
        },
    ],
    "owner": [],
    "billing": [
        {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": READ},
        {"apiGroups": [GROUP], "resources": ["mailboxes"], "verbs": ["list"]},
    ],
}


def role_name(role: str) -> str:
    return f"numail-workspace-{role}"


def _aggregation_label(role: str) -> str:
    return f"rbac.numail.ai/aggregate-to-{role}"


def build_member_cluster_roles() -> list[dict[str, Any]]:
    """Per role: an aggregating ClusterRole, and a `-rules` ClusterRole feeding it (and the
    roles above it) through labels."""
    manifests: list[dict[str, Any]] = []
    included_by: dict[str, list[str]] = {r: [] for r in ROLES}
    for upper, lowers in INCLUDES.items():
        for lower in lowers:
            included_by[lower].append(upper)

    def ancestors(role: str) -> list[str]:
        out: list[str] = []
        for upper in included_by[role]:
            out += [upper, *ancestors(upper)]
        return out

    base_labels = {LABEL_PART_OF: "numail", LABEL_MANAGED_BY: "numail-operator"}
    for role in ROLES:
        manifests.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role_name(role), "labels": base_labels},
                "aggregationRule": {
                    "clusterRoleSelectors": [{"matchLabels": {_aggregation_label(role): "true"}}]
                },
            }
        )
        labels = {
            **base_labels,
            **{_aggregation_label(r): "true" for r in [role, *ancestors(role)]},
        }
        manifests.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": f"{role_name(role)}-rules", "labels": labels},
                "rules": OWN_RULES[role],
            }
        )
    return manifests
