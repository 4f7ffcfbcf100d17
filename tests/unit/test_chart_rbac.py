"""The chart's RBAC against the operator's code: every API call it can make is granted, and
nothing else is.

What the code needs is read from the code, not from a list kept by hand: the Kubernetes calls
in k8s.py (by AST), which modules use which of them, the handlers Kopf has registered, and the
kinds the pure builders produce for server-side apply. So a new call in k8s.py, a new Kopf
handler or a new child kind fails here until the ClusterRole says why it may do it, and a
permission the code stopped using fails here until it is removed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.support import helm as H

PACKAGE = H.REPO / "operator" / "numail_operator"
K8S = PACKAGE / "k8s.py"

# (apiGroup, resource, verb, name or "*")
Need = tuple[str, str, str, str]

VERBS = {
    "read": "get",
    "get": "get",
    "list": "list",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
}
# Typed-client method stems -> (apiGroup, resource). A stem missing here fails the test with
# the name to add, rather than being skipped.
TYPED_RESOURCES = {
    "secret": ("", "secrets"),
    "namespace": ("", "namespaces"),
    "token_review": ("authentication.k8s.io", "tokenreviews"),
    "service_account_token": ("", "serviceaccounts/token"),
}
# Kinds the builders produce for server-side apply -> (apiGroup, resource).
KINDS = {
    ("v1", "Namespace"): ("", "namespaces"),
    ("v1", "ConfigMap"): ("", "configmaps"),
    ("v1", "ServiceAccount"): ("", "serviceaccounts"),
    ("v1", "ResourceQuota"): ("", "resourcequotas"),
    ("v1", "LimitRange"): ("", "limitranges"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rbac.authorization.k8s.io", "rolebindings"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("rbac.authorization.k8s.io", "clusterroles"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networking.k8s.io", "networkpolicies"),
    ("apps/v1", "Deployment"): ("apps", "deployments"),
}
NAMESPACED = {
    "secrets",
    "configmaps",
    "serviceaccounts",
    "mailboxes",
    "workspacemembers",
    "apikeys",
    "datasubjectrequests",
    "roles",
    "rolebindings",
    "networkpolicies",
    "resourcequotas",
    "limitranges",
    "deployments",
}


# --- what the code calls -------------------------------------------------------------------


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _literal_plural_args(function: str, position: int) -> set[str]:
    """String literals passed at `position` to k8s.<function> anywhere in the package."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == function
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "k8s"
                and len(node.args) > position
            ):
                arg = node.args[position]
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    raise AssertionError(f"{path}: k8s.{function} is called with a computed kind")
                found.add(arg.value)
    return found


def _api_calls(name: str, fn: ast.FunctionDef) -> set[Need]:
    needs: set[Need] = set()
    params = [a.arg for a in fn.args.args]
    for node in ast.walk(fn):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (
            isinstance(owner, ast.Attribute)
            and isinstance(owner.value, ast.Name)
            and owner.value.id == "clients"
        ):
            continue
        method = node.func.attr
        custom = re.fullmatch(
            r"(get|list|patch|create|delete|replace)_(cluster|namespaced)_custom_object(_status)?",
            method,
        )
        if custom:
            verb = VERBS[custom[1]]
            index = 2 if custom[2] == "cluster" else 3
            arg = node.args[index]
            if isinstance(arg, ast.Constant):
                plurals = {str(arg.value)}
            else:
                assert isinstance(arg, ast.Name) and arg.id in params, f"k8s.{name}: {method}"
                plurals = _literal_plural_args(name, params.index(arg.id))
            suffix = "/status" if custom[3] else ""
            needs |= {("numail.ai", p + suffix, verb, "*") for p in plurals}
            continue
        typed = re.fullmatch(
            r"(read|create|replace|patch|delete|list)_(namespaced_)?(\w+?)", method
        )
        assert typed, f"k8s.{name} calls clients.{owner.attr}.{method}: teach this test about it"
        stem = typed[3]
        assert stem in TYPED_RESOURCES, f"k8s.{name}: add {stem!r} to TYPED_RESOURCES"
        group, resource = TYPED_RESOURCES[stem]
        needs.add((group, resource, VERBS[typed[1]], "*"))
    return needs


def k8s_function_needs() -> dict[str, set[Need]]:
    """Per function of k8s.py, the API calls it makes, following calls within k8s.py."""
    functions = _functions(ast.parse(K8S.read_text()))
    direct = {name: _api_calls(name, fn) for name, fn in functions.items()}
    calls = {
        name: {
            n.func.id
            for n in ast.walk(fn)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions
        }
        for name, fn in functions.items()
    }

    def closure(name: str, seen: frozenset[str] = frozenset()) -> set[Need]:
        out = set(direct[name])
        for callee in calls[name] - seen - {name}:
            out |= closure(callee, seen | {name})
        return out

    return {name: closure(name) for name in functions}


def k8s_functions_used_by(paths: Iterable[Path]) -> set[str]:
    used: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "k8s"
            ):
                used.add(node.attr)
    return used


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def k8s_functions_reachable_from(entry: Path) -> set[str]:
    """k8s.<function>s that code in `entry` can reach, following what it calls across the
    package: functions by name, and every method of a class it uses (coarse, but safe)."""
    modules = {_module_name(p): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}

    def definitions(module: str) -> dict[str, ast.AST]:
        tree = modules[module]
        return {
            n.name: n
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }

    def imports(module: str) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for node in ast.walk(modules[module]):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                for alias in node.names:
                    out[alias.asname or alias.name] = (node.module, alias.name)
        return out

    used: set[str] = set()
    seen: set[tuple[str, str]] = set()
    entry_module = _module_name(entry)
    pending = [(entry_module, name) for name in definitions(entry_module)]
    while pending:
        module, name = pending.pop()
        if (module, name) in seen or name not in definitions(module):
            continue
        seen.add((module, name))
        local, imported = definitions(module), imports(module)
        for node in ast.walk(local[name]):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "k8s"
            ):
                used.add(node.attr)
            if isinstance(node, ast.Name):
                if node.id in local:
                    pending.append((module, node.id))
                elif node.id in imported:
                    pending.append(imported[node.id])
    return used


def operator_modules() -> list[Path]:
    own = {K8S, PACKAGE / "keyservice.py", PACKAGE / "tls.py"}
    return [p for p in PACKAGE.rglob("*.py") if p not in own]


def applied_kinds() -> set[Need]:
    """Server-side apply (create or patch) of every kind the builders produce, and `bind` on
    every ClusterRole a built RoleBinding refers to."""
    from numail_operator.build.roles import build_member_cluster_roles
    from numail_operator.build.workspace import (
        WorkerSpec,
        WorkspaceInputs,
        build_keyservice_ca_config_map,
        build_namespace,
        build_workspace_children,
    )

    worker = WorkerSpec("image", 1, {})
    everything = WorkspaceInputs(
        name="w",
        uid="u",
        tier="standard",
        parent="agency",
        parent_access="manage",
        retain=False,
        send_worker=worker,
        reply_worker=worker,
        mailboxes=("m",),
        max_mailboxes=3,
        quota_cpu="1",
        quota_memory="1Gi",
        egress_cidrs=("203.0.113.0/24",),
        egress_ports=((2525, "TCP"),),
    )
    manifests = [
        build_namespace(everything),
        *build_workspace_children(everything),
        # Applied beside the children, by reconcile.workspace (the database copy is a Secret,
        # written with the Secret rights k8s.py's calls need anyway).
        build_keyservice_ca_config_map(everything, "-----BEGIN CERTIFICATE-----"),
    ]
    for access in ("read", "manage"):
        manifests += build_workspace_children(
            WorkspaceInputs(
                name="w",
                uid="u",
                tier="standard",
                parent="agency",
                parent_access=access,
                retain=False,
                send_worker=worker,
                reply_worker=worker,
            )
        )
    needs: set[Need] = set()
    for m in manifests:
        group, resource = KINDS[(m["apiVersion"], m["kind"])]
        needs |= {(group, resource, "create", "*"), (group, resource, "patch", "*")}
        ref = m.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            needs.add(("rbac.authorization.k8s.io", "clusterroles", "bind", ref["name"]))
    # The member ClusterRoles, by name; `escalate` because they carry an aggregationRule and
    # grant what the operator does not hold.
    for m in build_member_cluster_roles():
        for verb in ("create", "patch", "escalate"):
            needs.add(("rbac.authorization.k8s.io", "clusterroles", verb, m["metadata"]["name"]))
    return needs


def kopf_needs() -> tuple[set[Need], bool]:
    """What Kopf does for the registered handlers, and whether any is on a namespaced kind
    (then Kopf posts Events in that kind's namespaces, not only in "default")."""
    import kopf
    import numail_operator  # noqa: F401 - registers the handlers

    registry = kopf.get_default_registry()
    needs: set[Need] = set()
    namespaced_events = False
    # Kopf's own registries (kopf/_core/reactor/observation.py reads them the same way).
    for attr, patches in (
        ("_changing", True),
        ("_spawning", True),
        ("_watching", False),
        ("_indexing", False),
        ("_webhooks", False),
    ):
        for handler in getattr(registry, attr).get_all_handlers():
            selector = handler.selector
            plural = selector.plural or selector.any_name
            assert plural, f"{handler.id}: a handler Kopf selects by kind; name its plural"
            needs |= {(selector.group, plural, "list", "*"), (selector.group, plural, "watch", "*")}
            if patches:
                needs.add((selector.group, plural, "patch", "*"))
                namespaced_events |= plural in NAMESPACED
    # Kopf itself: the CRD observer, and peering in ClusterKopfPeering numail-operator.
    needs |= {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list", "*"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch", "*"),
        ("kopf.dev", "clusterkopfpeerings", "list", "*"),
        ("kopf.dev", "clusterkopfpeerings", "watch", "*"),
        ("kopf.dev", "clusterkopfpeerings", "get", "numail-operator"),
        ("kopf.dev", "clusterkopfpeerings", "patch", "numail-operator"),
    }
    return needs, namespaced_events


def operator_needs() -> tuple[set[Need], bool]:
    # Applier.get reads any kind by name; nothing uses it now. If something does, this test
    # must learn which kinds, as it does for apply.
    for path in operator_modules():
        assert not re.search(r"applier\.get\(", path.read_text()), f"{path}: applier.get"
    by_function = k8s_function_needs()
    used = k8s_functions_used_by(operator_modules())
    unknown = used - set(by_function) - {"Applier", "Clients", "load_clients", "ReviewedToken"}
    assert not unknown, f"the operator uses k8s.{unknown}, which this test can't see into"
    needs = set().union(*(by_function[f] for f in used if f in by_function))
    kopf, namespaced_events = kopf_needs()
    return needs | kopf | applied_kinds(), namespaced_events


# --- what the chart grants -----------------------------------------------------------------


def grants(rules: list[dict[str, Any]]) -> set[Need]:
    out: set[Need] = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or ["*"]:
                        out.add((group, resource, verb, name))
    return out


def allowed(granted: set[Need], need: Need) -> bool:
    group, resource, verb, name = need
    return (group, resource, verb, "*") in granted or (
        name != "*" and (group, resource, verb, name) in granted
    )


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return H.render()


def role_grants(docs: list[dict[str, Any]], kind: str, name: str) -> set[Need]:
    return grants(H.find(docs, kind, name)["rules"])


def operator_grants(docs: list[dict[str, Any]]) -> set[Need]:
    granted = role_grants(docs, "ClusterRole", "numail-operator")
    events_role = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "numail-operator-events"
    ]
    for role in events_role:  # a Role in "default": counted as "events create" there only
        granted |= {
            (g, r, v, f"namespace:{role['metadata']['namespace']}")
            for g, r, v, _ in grants(role["rules"])
        }
    return granted


def test_the_operator_clusterrole_grants_every_call_the_operator_makes(
    docs: list[dict[str, Any]],
) -> None:
    needs, namespaced_events = operator_needs()
    granted = operator_grants(docs)
    missing = sorted(n for n in needs if not allowed(granted, n))
    assert not missing, f"the operator's code needs, and the chart does not grant: {missing}"
    if namespaced_events:
        assert ("", "events", "create", "*") in granted, "Kopf posts Events in workspace namespaces"
    else:
        assert ("", "events", "create", "namespace:default") in granted


def test_the_operator_clusterrole_grants_nothing_the_code_does_not_use(
    docs: list[dict[str, Any]],
) -> None:
    needs, namespaced_events = operator_needs()
    needs.add(("", "events", "create", "*" if namespaced_events else "namespace:default"))
    excess = sorted(g for g in operator_grants(docs) if g not in needs)
    assert not excess, f"granted but used by no code path (remove, or use it): {excess}"


def keyservice_grants(docs: list[dict[str, Any]]) -> tuple[set[Need], set[Need]]:
    """(its ClusterRole, its Role in the release namespace)."""
    return (
        role_grants(docs, "ClusterRole", "numail-operator-keyservice"),
        role_grants(docs, "Role", "numail-operator-keyservice"),
    )


def test_the_key_service_is_granted_exactly_what_its_code_calls(
    docs: list[dict[str, Any]],
) -> None:
    """Cluster-wide: the token review, the namespace and Workspace lookups and the KeyProvider
    it resolves. Secrets (a KeyProvider's keyring or PIN) only in the release namespace."""
    by_function = k8s_function_needs()
    used = k8s_functions_reachable_from(PACKAGE / "keyservice.py") - {"Clients", "load_clients"}
    needs = set().union(*(by_function[f] for f in used))
    cluster, namespaced = keyservice_grants(docs)
    secrets = {n for n in needs if n[1] == "secrets"}
    assert cluster == needs - secrets
    assert {(g, r, v) for g, r, v, _ in secrets} <= {(g, r, v) for g, r, v, _ in namespaced}
    assert needs - secrets == {
        ("authentication.k8s.io", "tokenreviews", "create", "*"),
        ("", "namespaces", "get", "*"),
        ("numail.ai", "workspaces", "get", "*"),
        ("numail.ai", "keyproviders", "get", "*"),
    }


def test_the_key_services_role_is_its_secret_reads_and_the_tls_init(
    docs: list[dict[str, Any]],
) -> None:
    by_function = k8s_function_needs()
    service = k8s_functions_reachable_from(PACKAGE / "keyservice.py")
    init = k8s_functions_reachable_from(PACKAGE / "tls.py")
    needs = set().union(*(by_function[f] for f in (service | init) if f in by_function))
    _, namespaced = keyservice_grants(docs)
    assert namespaced == {n for n in needs if n[1] == "secrets"}
    assert namespaced == {("", "secrets", "get", "*"), ("", "secrets", "create", "*")}
    # Without the self-signed certificate to make, there is nothing to create.
    _, without_tls = keyservice_grants(H.render(sets=("keyservice.tls.existingSecret=x",)))
    assert without_tls == {("", "secrets", "get", "*")}


def test_this_test_sees_the_calls_it_must(docs: list[dict[str, Any]]) -> None:
    """The extraction itself: known calls are found, so an empty result can't pass silently."""
    by_function = k8s_function_needs()
    assert by_function["create_secret_once"] == {("", "secrets", "create", "*")}
    assert ("numail.ai", "workspaces/status", "patch", "*") in by_function["patch_status"]
    assert by_function["read_secret_value"] == by_function["read_secret"]
    # Through reconcile.keys.ProviderDirectory, which keyservice.py imports inside a function.
    assert "get_key_provider" in k8s_functions_reachable_from(PACKAGE / "keyservice.py")
    needs, _ = operator_needs()
    assert (
        "rbac.authorization.k8s.io",
        "clusterroles",
        "escalate",
        "numail-workspace-owner",
    ) in needs
    assert (
        "rbac.authorization.k8s.io",
        "clusterroles",
        "bind",
        "numail-workspace-analyst",
    ) in needs
    assert ("", "resourcequotas", "patch", "*") in needs
    assert ("", "serviceaccounts", "watch", "*") in needs
    assert ("", "configmaps", "watch", "*") in needs  # the CA copy's drift watch
    assert ("", "configmaps", "create", "*") in needs
    # And a ClusterRole with one rule fewer is caught.
    role = H.find(docs, "ClusterRole", "numail-operator")
    fewer = grants(role["rules"][1:])
    assert any(not allowed(fewer, n) for n in needs)
