"""The Helm chart as rendered by `helm template`: values, schema, CRDs, RBAC, Pods and docs."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from numail_operator.build.roles import build_member_cluster_roles
from numail_operator.settings import Settings

from tests.support import helm as H

ALL_FEATURES = H.ALL_FEATURES


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return H.render()


@pytest.fixture(scope="module")
def full_docs() -> list[dict[str, Any]]:
    return H.render(ALL_FEATURES)


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment"
    }


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- lint, schema --------------------------------------------------------------------------


def test_helm_lint_passes_in_strict_mode() -> None:
    result = H.helm("lint", "--strict", str(H.CHART)).check()
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_helm_lint_passes_with_every_feature_on(tmp_path: Path) -> None:
    values = tmp_path / "all.yaml"
    values.write_text(yaml.safe_dump(ALL_FEATURES))
    H.helm("lint", "--strict", str(H.CHART), "-f", str(values)).check()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("operator.replcas=3",), "at '/operator': additional properties 'replcas' not allowed"),
        (("bogus=1",), "additional properties 'bogus' not allowed"),
        (("operator.replicas=two",), "at '/operator/replicas': got string, want integer"),
        (("crds.keep=maybe",), "at '/crds/keep': got string, want boolean"),
        (("keyservice.port=70000",), "at '/keyservice/port'"),
        (("image.pullPolicy=Sometimes",), "at '/image/pullPolicy'"),
        (("keyservice.tls.certManager.isuerRef.name=x",), "'isuerRef' not allowed"),
    ],
    ids=[
        "a typo in a key",
        "an unknown top-level key",
        "a string for an integer",
        "a string for a boolean",
        "a port out of range",
        "a pull policy that does not exist",
        "a typo in a nested key",
    ],
)
def test_values_that_break_the_schema_fail_naming_the_key(
    sets: tuple[str, ...], message: str
) -> None:
    result = H.helm("template", "x", str(H.CHART), *H.values_args(sets=sets))
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_cert_manager_without_an_issuer_fails_with_what_to_set() -> None:
    result = H.helm(
        "template",
        "x",
        str(H.CHART),
        *H.values_args(sets=("keyservice.tls.certManager.enabled=true",)),
    )
    assert result.returncode != 0
    assert "keyservice.tls.certManager.issuerRef.name is required" in result.stderr


# --- what renders --------------------------------------------------------------------------


def test_defaults_render_the_operator_the_key_service_and_their_guards(
    default_docs: list[dict[str, Any]],
) -> None:
    assert kinds(default_docs) >= {
        "CustomResourceDefinition",
        "ClusterKopfPeering",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Secret",
    }
    # Optional features are off by default.
    assert not kinds(default_docs) & {
        "ServiceMonitor",
        "PrometheusRule",
        "Certificate",
        "Namespace",
    }
    assert not [d for d in default_docs if d["kind"] == "ConfigMap"]
    assert set(pod_specs(default_docs)) == {"numail-operator", "numail-operator-keyservice"}


def test_every_feature_on_renders_monitoring_cert_manager_and_the_namespace(
    full_docs: list[dict[str, Any]],
) -> None:
    assert kinds(full_docs) >= {"ServiceMonitor", "PrometheusRule", "Certificate", "Namespace"}
    dashboard = H.find(full_docs, "ConfigMap", "numail-operator-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["numail-operator.json"])["uid"] == "numail-operator"
    namespace = H.find(full_docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_operator_runs_with_at_least_two_replicas_by_default(
    default_docs: list[dict[str, Any]],
) -> None:
    for name in ("numail-operator", "numail-operator-keyservice"):
        assert H.find(default_docs, "Deployment", name)["spec"]["replicas"] >= 2
    assert H.find(default_docs, "ClusterKopfPeering", "numail-operator")


# --- CRDs ----------------------------------------------------------------------------------


def test_the_charts_crd_copies_are_byte_identical_to_crds() -> None:
    """`make chart-crds` copies them; this fails when someone edits crds/ and forgets it."""
    source = {p.name: p.read_bytes() for p in (H.REPO / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in H.CHART_CRDS.glob("*.yaml")}
    assert sorted(copies) == sorted(source), "run `make chart-crds`"
    for name, data in source.items():
        assert copies[name] == data, f"charts/.../files/crds/{name} differs: run `make chart-crds`"


def test_rendered_crds_are_the_source_crds_plus_the_keep_annotation(
    default_docs: list[dict[str, Any]],
) -> None:
    rendered = {
        d["metadata"]["name"]: d for d in default_docs if d["kind"] == "CustomResourceDefinition"
    }
    for path in sorted((H.REPO / "crds").glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        crd = rendered.pop(source["metadata"]["name"])
        assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert crd == source
    assert rendered == {}, "the chart renders a CRD that crds/ does not have"


def test_crds_keep_false_drops_the_annotation_and_install_false_drops_the_crds() -> None:
    unkept = H.render(sets=("crds.keep=false",))
    crds = [d for d in unkept if d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == len(list((H.REPO / "crds").glob("*.yaml")))
    assert all("annotations" not in d["metadata"] for d in crds)
    assert not [
        d for d in H.render(sets=("crds.install=false",)) if d["kind"] == "CustomResourceDefinition"
    ]


def test_kopfs_peering_crd_is_in_helms_crds_folder() -> None:
    crd = yaml.safe_load((H.CHART / "crds" / "clusterkopfpeerings.kopf.dev.yaml").read_text())
    assert crd["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"
    assert crd["spec"]["scope"] == "Cluster"
    with_crds = H.render(extra=("--include-crds",))
    assert H.find(with_crds, "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")


# --- RBAC ----------------------------------------------------------------------------------


def test_member_cluster_roles_are_exactly_what_the_operator_applies(
    default_docs: list[dict[str, Any]],
) -> None:
    """Compared object by object, so the chart and build/roles.py can't drift apart."""
    built = {m["metadata"]["name"]: m for m in build_member_cluster_roles()}
    rendered = {
        d["metadata"]["name"]: d
        for d in default_docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].startswith("numail-workspace-")
    }
    for role in rendered.values():
        # Kept on uninstall: bindings in kept workspace namespaces refer to them.
        assert role["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert rendered == built
    assert H.MEMBER_ROLES_TEMPLATE.read_text() == H.member_roles_template_text(), (
        "run `make chart-crds`"
    )


def test_operator_clusterrole_names_exactly_the_member_roles(
    default_docs: list[dict[str, Any]],
) -> None:
    role = H.find(default_docs, "ClusterRole", "numail-operator")
    built = {m["metadata"]["name"] for m in build_member_cluster_roles()}
    on_clusterroles = [r for r in role["rules"] if r["resources"] == ["clusterroles"]]
    writes = next(r for r in on_clusterroles if "escalate" in r["verbs"])
    binds = next(r for r in on_clusterroles if r["verbs"] == ["bind"])
    assert set(writes["resourceNames"]) == built
    # Parent access binds the analyst (read) and operator (manage) roles; nothing else is bound.
    assert set(binds["resourceNames"]) == {"numail-workspace-analyst", "numail-workspace-operator"}
    # Every rule that touches clusterroles is narrowed to names.
    assert all(r.get("resourceNames") for r in on_clusterroles)


def test_no_clusterrole_grants_wildcards_pods_or_tokens(
    default_docs: list[dict[str, Any]],
) -> None:
    for name in ("numail-operator", "numail-operator-keyservice"):
        for rule in H.find(default_docs, "ClusterRole", name)["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert "deletecollection" not in rule["verbs"], rule
            forbidden = {
                "pods",
                "pods/exec",
                "nodes",
                "serviceaccounts/token",
                "clusterrolebindings",
            }
            assert not forbidden & set(rule["resources"]), rule
    keyservice = H.find(default_docs, "ClusterRole", "numail-operator-keyservice")
    assert not [r for r in keyservice["rules"] if "secrets" in r["resources"]]


def test_every_rule_of_the_operator_clusterrole_carries_a_justifying_comment() -> None:
    text = (H.CHART / "templates" / "operator" / "clusterrole.yaml").read_text()
    rules = text.split("rules:", 1)[1].split("---", 1)[0]
    lines = rules.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            above = lines[i - 1].strip()
            # Either a comment, or a rule continuing the group the comment above introduced.
            assert above.startswith("#") or above.startswith("verbs:"), (
                f"rule without a reason: {line}"
            )


def test_the_key_service_creates_secrets_only_to_make_its_certificate(
    default_docs: list[dict[str, Any]],
) -> None:
    role = H.find(default_docs, "Role", "numail-operator-keyservice")
    assert role["metadata"]["namespace"] == "numail-system"
    assert {v for r in role["rules"] for v in r["verbs"]} == {"get", "create"}
    existing = H.render(sets=("keyservice.tls.existingSecret=my-tls",))
    role = H.find(existing, "Role", "numail-operator-keyservice")
    assert {v for r in role["rules"] for v in r["verbs"]} == {"get"}


# --- Pods ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default_docs", "full_docs"])
def test_every_container_is_restricted(which: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(which)
    for name, spec in pod_specs(docs).items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert "add" not in sc["capabilities"], (name, container["name"])
            assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}
            assert container["resources"]["limits"], (name, container["name"])
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name


def test_scheduling_values_pass_through(full_docs: list[dict[str, Any]]) -> None:
    spec = pod_specs(full_docs)["numail-operator"]
    assert spec["priorityClassName"] == "numail-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"] == ALL_FEATURES["operator"]["tolerations"]
    assert spec["affinity"] == ALL_FEATURES["operator"]["affinity"]
    assert (
        spec["topologySpreadConstraints"] == ALL_FEATURES["operator"]["topologySpreadConstraints"]
    )
    ks = pod_specs(full_docs)["numail-operator-keyservice"]
    assert ks["tolerations"] == ALL_FEATURES["keyservice"]["tolerations"]
    # An empty affinity value means: spread replicas across nodes.
    assert "podAntiAffinity" in ks["affinity"]


def test_pod_disruption_budgets_select_the_pods_they_protect(
    default_docs: list[dict[str, Any]],
) -> None:
    for name in ("numail-operator", "numail-operator-keyservice"):
        pdb = H.find(default_docs, "PodDisruptionBudget", name)
        labels = H.find(default_docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not [
        d
        for d in H.render(sets=("operator.pdb.enabled=false", "keyservice.pdb.enabled=false"))
        if d["kind"] == "PodDisruptionBudget"
    ]


def test_operator_env_is_what_settings_reads(default_docs: list[dict[str, Any]]) -> None:
    container = pod_specs(default_docs)["numail-operator"]["containers"][0]
    env = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
    settings = Settings.from_env(env)
    assert settings.system_namespace == "numail-system"
    assert settings.key_provider == "local"
    assert settings.local_keyring_file == "/etc/numail/keyring/keyring"
    assert settings.keyservice_url == "https://numail-operator-keyservice.numail-system.svc:8443"
    assert settings.keyservice_port == 8443
    assert settings.metrics_port == 9090 and settings.liveness_port == 8080
    assert settings.worker_image == "ghcr.io/numail/numail-operator:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-metrics": 9090, "http-health": 8080}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/etc/numail/keyring" in mounts


def test_keyservice_env_is_what_settings_reads(default_docs: list[dict[str, Any]]) -> None:
    spec = pod_specs(default_docs)["numail-operator-keyservice"]
    container = spec["containers"][0]
    settings = Settings.from_env({k: v for k, v in env_of(container).items() if isinstance(v, str)})
    assert settings.keyservice_tls_cert == "/run/numail/tls/tls.crt"
    assert settings.keyservice_tls_key == "/run/numail/tls/tls.key"
    assert settings.keyservice_port == 8443 and settings.keyservice_host == "0.0.0.0"
    assert container["args"] == ["python", "-m", "numail_operator.keyservice"]


def test_database_url_comes_from_a_secret(full_docs: list[dict[str, Any]]) -> None:
    env = env_of(pod_specs(full_docs)["numail-operator"]["containers"][0])
    assert env["NUMAIL_DATABASE_URL"] == {"secretKeyRef": {"name": "numail-db", "key": "url"}}


def test_the_workers_database_secret_is_passed_by_name_and_absent_by_default(
    default_docs: list[dict[str, Any]],
) -> None:
    default = env_of(pod_specs(default_docs)["numail-operator"]["containers"][0])
    assert "NUMAIL_WORKER_DATABASE_SECRET" not in default
    assert Settings.from_env(
        {k: v for k, v in default.items() if isinstance(v, str)}
    ).worker_api_server_ports == (443, 6443)
    docs = H.render(
        sets=(
            "workers.database.existingSecret=numail-worker-db",
            "workers.database.key=dsn",
            "networkPolicy.apiServerCIDRs={10.0.0.1/32}",
            "networkPolicy.apiServerPorts={6443}",
        )
    )
    env = env_of(pod_specs(docs)["numail-operator"]["containers"][0])
    # Only the name goes to the operator: it copies the Secret, and never holds the DSN in env.
    settings = Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.worker_database_secret == "numail-worker-db"
    assert settings.worker_database_secret_key == "dsn"
    assert settings.worker_api_server_cidrs == ("10.0.0.1/32",)
    assert settings.worker_api_server_ports == (6443,)


def test_the_operator_publishes_the_ca_of_the_key_services_certificate_in_every_tls_mode(
    default_docs: list[dict[str, Any]],
) -> None:
    """The operator is told the key service's TLS Secret (the one the key service mounts or
    its init container creates), by name only: it publishes that Secret's ca.crt, and nothing
    else of it, to the workers. It may write ConfigMaps, and the admission policy confines those
    writes to workspace namespaces like every other."""

    def ca_secret(docs: list[dict[str, Any]]) -> str | None:
        env = env_of(pod_specs(docs)["numail-operator"]["containers"][0])
        strings = {k: v for k, v in env.items() if isinstance(v, str)}
        return Settings.from_env(strings).keyservice_ca_secret

    def keyservice_secret(docs: list[dict[str, Any]]) -> str:
        spec = pod_specs(docs)["numail-operator-keyservice"]
        if spec.get("initContainers"):
            (arg,) = [a for a in spec["initContainers"][0]["args"] if a.startswith("--secret=")]
            return arg.removeprefix("--secret=")
        tls = next(v for v in spec["volumes"] if v["name"] == "tls")
        return str(tls["secret"]["secretName"])

    cert_manager = H.render(
        sets=(
            "keyservice.tls.certManager.enabled=true",
            "keyservice.tls.certManager.issuerRef.name=ca",
        )
    )
    existing = H.render(sets=("keyservice.tls.existingSecret=my-keyservice-tls",))
    for docs, expected in (
        (default_docs, "numail-operator-keyservice-tls"),
        (cert_manager, "numail-operator-keyservice-tls"),
        (existing, "my-keyservice-tls"),
    ):
        assert ca_secret(docs) == expected == keyservice_secret(docs)
    rules = H.find(default_docs, "ClusterRole", "numail-operator")["rules"]
    configmaps = [r for r in rules if "configmaps" in r["resources"]]
    verbs = ["list", "watch", "create", "patch"]  # no get, update or delete
    assert configmaps == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs}]
    policy = next(d for d in default_docs if d["kind"] == "ValidatingAdmissionPolicy")
    core = policy["spec"]["matchConstraints"]["resourceRules"][0]
    assert core["apiGroups"] == [""] and "configmaps" in core["resources"]


def test_tls_modes_mount_the_right_certificate() -> None:
    def keyservice(docs: list[dict[str, Any]]) -> dict[str, Any]:
        return pod_specs(docs)["numail-operator-keyservice"]

    def tls_volume(spec: dict[str, Any]) -> dict[str, Any]:
        return next(v for v in spec["volumes"] if v["name"] == "tls")

    self_signed = keyservice(H.render())
    init = self_signed["initContainers"][0]
    assert init["args"][:3] == ["python", "-m", "numail_operator.tls"]
    assert "--secret=numail-operator-keyservice-tls" in init["args"]
    assert "--dns-name=numail-operator-keyservice.numail-system.svc" in init["args"]
    assert tls_volume(self_signed) == {
        "name": "tls",
        "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
    }

    existing = keyservice(H.render(sets=("keyservice.tls.existingSecret=my-tls",)))
    assert "initContainers" not in existing
    assert tls_volume(existing)["secret"]["secretName"] == "my-tls"

    docs = H.render(
        sets=(
            "keyservice.tls.certManager.enabled=true",
            "keyservice.tls.certManager.issuerRef.name=ca",
        )
    )
    cert = H.find(docs, "Certificate")
    assert cert["spec"]["secretName"] == "numail-operator-keyservice-tls"
    assert cert["spec"]["issuerRef"] == {
        "name": "ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert "numail-operator-keyservice.numail-system.svc" in cert["spec"]["dnsNames"]
    assert tls_volume(keyservice(docs))["secret"]["secretName"] == "numail-operator-keyservice-tls"
    assert "initContainers" not in keyservice(docs)


# --- the keyring ---------------------------------------------------------------------------


def test_a_new_install_generates_a_valid_keyring_that_is_kept_on_uninstall(
    default_docs: list[dict[str, Any]],
) -> None:
    from numail.keys.local import parse_keyring

    secret = H.find(default_docs, "Secret", "numail-operator-local-keyring")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    keys = parse_keyring(base64.b64decode(secret["data"]["keyring"]).decode(), "chart")
    assert list(keys) == ["k1"] and len(keys["k1"]) == 32
    again = H.find(H.render(), "Secret", "numail-operator-local-keyring")
    assert again["data"] != secret["data"], "each fresh install must get its own master key"


def test_an_existing_keyring_secret_is_mounted_and_none_is_generated() -> None:
    docs = H.render(sets=("localKeyring.existingSecret=my-keyring", "localKeyring.key=ring"))
    assert not [d for d in docs if d["kind"] == "Secret"]
    for spec in pod_specs(docs).values():
        volume = next(v for v in spec["volumes"] if v["name"] == "keyring")
        assert volume["secret"]["secretName"] == "my-keyring"
        assert volume["secret"]["items"] == [{"key": "ring", "path": "ring"}]


# --- networking ----------------------------------------------------------------------------


def test_network_policies_admit_workers_to_the_key_service_only(
    default_docs: list[dict[str, Any]],
) -> None:
    policy = H.find(default_docs, "NetworkPolicy", "numail-operator-keyservice")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchExpressions"][0]["key"] == "numail.ai/workspace"
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    operator = H.find(default_docs, "NetworkPolicy", "numail-operator")
    assert set(operator["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {p["port"] for r in operator["spec"]["egress"] for p in r["ports"]}
    assert egress_ports == {53, 443, 6443}


def test_admission_policy_names_the_operators_service_account(
    default_docs: list[dict[str, Any]],
) -> None:
    policy = H.find(default_docs, "ValidatingAdmissionPolicy")
    (condition,) = policy["spec"]["matchConditions"]
    assert "system:serviceaccount:numail-system:numail-operator" in condition["expression"]
    binding = H.find(default_docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]


# --- monitoring ----------------------------------------------------------------------------

KNOWN_METRICS = {
    # operator/numail_operator/metrics.py
    "numail_reconciles_total",
    "numail_reconcile_seconds",
    "numail_workspaces",
    "numail_drift_repairs_total",
    # operator/numail_operator/keyservice.py
    "numail_keyservice_refusals_total",
    "numail_keyservice_unwraps_total",
    "numail_keyservice_unwrap_seconds",
    # the send engine (workers), named ahead of it
    "numail_send_unknown_total",
}


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(numail_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_the_code_defines_the_metrics_the_chart_refers_to() -> None:
    import numail_operator.keyservice
    import numail_operator.metrics  # noqa: F401
    from prometheus_client import REGISTRY

    defined = {m.name + ("_total" if m.type == "counter" else "") for m in REGISTRY.collect()}
    assert KNOWN_METRICS - {"numail_send_unknown_total"} <= defined


def test_alerts_cover_the_four_failure_modes_and_use_known_metrics(
    full_docs: list[dict[str, Any]],
) -> None:
    rule = H.find(full_docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "NumailReconcileErrors",
        "NumailKeyProviderUnhealthy",
        "NumailSendUnknownOutcomesGrowing",
        "NumailKeyServiceRefusalsSpiking",
    } <= set(alerts)
    for name, alert in alerts.items():
        used = metric_names(alert["expr"])
        assert used and used <= KNOWN_METRICS, (name, used)
        assert alert["annotations"]["description"], name
    assert "> 0.2" in alerts["NumailKeyServiceRefusalsSpiking"]["expr"]


def test_dashboard_queries_use_known_metrics_and_cover_every_one() -> None:
    dashboard = json.loads((H.CHART / "files" / "dashboards" / "numail-operator.json").read_text())
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names <= KNOWN_METRICS, (panel["title"], names)
            used |= names
    assert used == KNOWN_METRICS


def test_service_monitor_scrapes_both_services_and_verifies_the_key_service(
    full_docs: list[dict[str, Any]],
) -> None:
    monitor = H.find(full_docs, "ServiceMonitor")
    ports = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert set(ports) == {"http-metrics", "https"}
    tls = ports["https"]["tlsConfig"]
    assert tls["ca"]["secret"] == {"name": "numail-operator-keyservice-tls", "key": "ca.crt"}
    assert "insecureSkipVerify" not in tls
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [d for d in full_docs if d["kind"] == "Service"]
    assert len(services) == 2
    assert all(selector.items() <= s["metadata"]["labels"].items() for s in services)
    assert {p["name"] for s in services for p in s["spec"]["ports"]} == set(ports)


# --- values documentation ------------------------------------------------------------------


def test_every_value_has_a_comment() -> None:
    missing = [d.path for d in H.values_docs() if not d.description]
    assert not missing, f"values without a comment: {missing}"


def test_a_value_without_a_comment_is_caught() -> None:
    docs = H.values_docs("a:\n  # documented\n  b: 1\n  c: 2\n")
    assert [(d.path, d.description) for d in docs] == [("a.b", "documented"), ("a.c", "")]


def schema_leaves(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        if sub.get("type") == "object" and sub.get("additionalProperties") is False:
            out |= schema_leaves(sub, path)
        else:
            out.add(path)
    return out


def test_the_schema_closes_every_group_and_covers_exactly_values_yaml() -> None:
    schema = json.loads((H.CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    leaves = schema_leaves(schema) - {"global"}  # Helm passes `global` to subcharts
    values = {d.path for d in H.values_docs()}
    # A value written inline (issuerRef: {name, kind, group}) may be closed in the schema.
    covered = {
        leaf for leaf in leaves if leaf in values or any(leaf.startswith(v + ".") for v in values)
    }
    assert covered == leaves, f"schema keys not in values.yaml: {sorted(leaves - covered)}"
    in_schema = {v for v in values if v in leaves or any(x.startswith(v + ".") for x in leaves)}
    assert in_schema == values, f"values.yaml keys not in the schema: {sorted(values - in_schema)}"


def test_default_values_match_the_schema_types() -> None:
    defaults = yaml.safe_load((H.CHART / "values.yaml").read_text())
    schema = json.loads((H.CHART / "values.schema.json").read_text())

    def check(value: Any, sub: dict[str, Any], path: str) -> None:
        types = {
            "string": str,
            "boolean": bool,
            "integer": int,
            "number": (int, float),
            "object": dict,
            "array": list,
        }
        if "type" in sub:
            assert isinstance(value, types[sub["type"]]), path
        for key, child in sub.get("properties", {}).items():
            if isinstance(value, dict) and key in value:
                check(value[key], child, f"{path}.{key}")

    check(defaults, schema, "")


def test_readme_value_table_matches_values_yaml() -> None:
    assert H.readme_values_table() == H.values_table(), (
        "README.md's value table is stale: paste `python -m tests.support.helm values-table`"
    )


# --- the kubectl manifests -----------------------------------------------------------------


def test_the_kubectl_manifests_in_deploy_are_current() -> None:
    for path, text in H.deploy_manifests().items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(H.REPO)} is stale: run `make deploy-manifest`"
        )


def test_the_kubectl_manifests_carry_no_master_key() -> None:
    text = H.DEPLOY_MANIFEST.read_text()
    assert "kind: Secret" not in text
    kinds_in_crds = {d["kind"] for d in yaml.safe_load_all(H.DEPLOY_CRDS.read_text()) if d}
    assert kinds_in_crds == {"CustomResourceDefinition"}
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert "CustomResourceDefinition" not in {d["kind"] for d in docs}
    assert H.find(docs, "Namespace", "numail-system")
