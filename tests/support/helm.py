"""The chart's tooling: the helm binary, rendering, the files generated into the chart, values docs.

Also a small CLI for the Makefile: `python -m tests.support.helm sync-crds | deploy-manifest |
values-table`.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "numail-operator"
CHART_CRDS = CHART / "files" / "crds"
MEMBER_ROLES_TEMPLATE = CHART / "templates" / "member-clusterroles.yaml"
DEPLOY_CRDS = REPO / "deploy" / "crds.yaml"
DEPLOY_MANIFEST = REPO / "deploy" / "numail-operator.yaml"
README = REPO / "README.md"

# The kubectl manifest: the chart's defaults, but for the two things a kubectl install needs.
DEPLOY_RELEASE = "numail-operator"
DEPLOY_NAMESPACE = "numail-system"
DEPLOY_OVERRIDES = (
    # kubectl can't create the namespace for you, so the manifest holds it.
    "namespace.create=true",
    # A file kept in Git must never carry a master key: the user creates the keyring Secret.
    "localKeyring.create=false",
)


# Every optional feature on, with a value for every passthrough: rendered, linted and dry-run.
ALL_FEATURES: dict[str, Any] = {
    "namespace": {"create": True},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "NuMail"}},
    },
    "keyservice": {
        "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "internal-ca"}}},
        "priorityClassName": "numail-critical",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "numail"}],
    },
    "operator": {
        "priorityClassName": "numail-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "numail"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
            }
        ],
        "extraEnv": [{"name": "NUMAIL_KEYSERVICE_DEK_TTL", "value": "120"}],
        "podAnnotations": {"example.com/team": "platform"},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
    },
    "database": {"existingSecret": "numail-db"},
    "networkPolicy": {
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 5432}]}],
    },
}


@functools.cache
def helm_binary() -> Path:
    """The helm that `make helm` built from the Go module proxy (`make -s helm-path`)."""
    explicit = os.environ.get("NUMAIL_HELM_BIN")
    if explicit:
        return Path(explicit)
    out = subprocess.run(
        ["make", "-s", "-C", str(REPO), "helm-path"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(out)


@dataclass
class HelmResult:
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> HelmResult:
        if self.returncode != 0:
            raise AssertionError(f"helm failed ({self.returncode}):\n{self.stderr}\n{self.stdout}")
        return self


def helm(*args: str, kubeconfig: Path | None = None, timeout: float = 120) -> HelmResult:
    """Run helm with its caches in a throwaway place and no repositories configured."""
    binary = helm_binary()
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make helm` first")
    home = Path(os.environ.get("NUMAIL_HELM_HOME", "/tmp/numail-helm-home"))
    env = dict(
        os.environ,
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run(
        [str(binary), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


def values_args(values: dict[str, Any] | None = None, sets: tuple[str, ...] = ()) -> list[str]:
    """`-f` with `values` written to a temporary file, then `--set` for each of `sets`."""
    args: list[str] = []
    if values:
        fd, name = tempfile.mkstemp(prefix="numail-values-", suffix=".yaml")
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(values, out)
        args += ["-f", name]
    for item in sets:
        args += ["--set", item]
    return args


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = "numail-operator",
    namespace: str = "numail-system",
    sets: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """`helm template` of the chart, parsed into its documents."""
    result = helm(
        "template", release, str(CHART), "--namespace", namespace,
        *values_args(values, sets), *extra,
    ).check()  # fmt: skip
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    if len(matches) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(matches)}")
    return matches[0]


# --- files generated into the chart --------------------------------------------------------


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a list used twice (the READ verbs) twice, not as a YAML anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


KEEP = {"helm.sh/resource-policy": "keep"}


def member_roles_template_text() -> str:
    """build_member_cluster_roles(), each object kept on uninstall and rendered only where
    Helm may own it (see the template's header)."""
    from numail_operator.build.roles import build_member_cluster_roles

    header = """\
{{- /*
Generated by `make chart-crds` from operator/numail_operator/build/roles.py
(build_member_cluster_roles); tests/unit/test_chart_render.py fails on drift.

The operator applies the same objects at startup; the chart ships them so they exist, and can
be bound, from the moment of install. Two owners need two rules:
- keep on uninstall: RoleBindings in the kept workspace namespaces refer to them, and deleting
  an aggregated ClusterRole races the clusterrole-aggregation controller, whose force-apply
  re-creates it, unlabelled, a moment later;
- render one only while Helm may own it (absent, or marked as this release's): once the
  operator has applied it, its managed-by label is the operator's, and Helm leaves it to the
  operator instead of failing its ownership check; `keep` stops Helm deleting it then.
*/ -}}
"""
    blocks = []
    for manifest in build_member_cluster_roles():
        name = manifest["metadata"]["name"]
        kept = {**manifest, "metadata": {**manifest["metadata"], "annotations": KEEP}}
        body = yaml.dump(kept, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False)
        guard = f'include "numail.helmMayOwnClusterRole" (dict "root" $ "name" "{name}")'
        blocks.append(f"{{{{- if {guard} }}}}\n---\n{body}{{{{- end }}}}\n")
    return header + "".join(blocks)


def sync_chart_files() -> list[str]:
    """Copy crds/*.yaml into the chart byte for byte, drop stale copies, regenerate the
    member ClusterRoles. Returns what changed."""
    changed: list[str] = []
    CHART_CRDS.mkdir(parents=True, exist_ok=True)
    sources = {p.name: p for p in sorted((REPO / "crds").glob("*.yaml"))}
    for name, src in sources.items():
        dst = CHART_CRDS / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
            changed.append(str(dst.relative_to(REPO)))
    for stale in CHART_CRDS.glob("*.yaml"):
        if stale.name not in sources:
            stale.unlink()
            changed.append(f"removed {stale.relative_to(REPO)}")
    text = member_roles_template_text()
    if not MEMBER_ROLES_TEMPLATE.exists() or MEMBER_ROLES_TEMPLATE.read_text() != text:
        MEMBER_ROLES_TEMPLATE.write_text(text)
        changed.append(str(MEMBER_ROLES_TEMPLATE.relative_to(REPO)))
    return changed


def deploy_manifests() -> dict[Path, str]:
    """deploy/crds.yaml (every CRD) and deploy/numail-operator.yaml (the rest): two files,
    because kubectl can't map the ClusterKopfPeering object before its CRD is established."""
    result = helm(
        "template", DEPLOY_RELEASE, str(CHART), "--namespace", DEPLOY_NAMESPACE,
        "--include-crds", *values_args(sets=DEPLOY_OVERRIDES),
    ).check()  # fmt: skip
    crds: list[str] = []
    rest: list[str] = []
    for doc in re.split(r"^---\n", result.stdout, flags=re.MULTILINE):
        parsed = yaml.safe_load(doc)
        if not parsed:
            continue
        (crds if parsed["kind"] == "CustomResourceDefinition" else rest).append(doc.rstrip())
    origin = (
        "# Rendered by `make deploy-manifest` from charts/numail-operator with its default values\n"
        f"# and: {', '.join(DEPLOY_OVERRIDES)}. Do not edit: change the chart and re-render;\n"
        "# tests/e2e/test_chart_install.py fails when this file is stale.\n"
    )
    return {
        DEPLOY_CRDS: "# numail-operator's CRDs: apply first, then deploy/numail-operator.yaml.\n"
        + origin
        + "".join(f"---\n{d}\n" for d in crds),
        DEPLOY_MANIFEST: "# numail-operator for `kubectl apply --server-side`, after crds.yaml;\n"
        "# first create the local keyring Secret (README, Install with kubectl).\n"
        + origin
        + "".join(f"---\n{d}\n" for d in rest),
    }


# --- running against a control plane ------------------------------------------------------


def service_account_kubeconfig(
    admin_kubeconfig: Path,
    core: Any,
    namespace: str,
    service_account: str,
    out: Path,
    expiration_seconds: int = 3600,
) -> Path:
    """A kubeconfig that authenticates as namespace/service_account with a token minted by
    TokenRequest, trusting the control plane's CA as the admin kubeconfig does. Its context's
    namespace is the ServiceAccount's, as in a Pod."""
    from kubernetes import client

    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
    )
    token = core.create_namespaced_service_account_token(service_account, namespace, request)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "numail",
                "cluster": {
                    "server": cluster["server"],
                    "certificate-authority-data": cluster["certificate-authority-data"],
                },
            }
        ],
        "users": [{"name": service_account, "user": {"token": token.status.token}}],
        "contexts": [
            {
                "name": service_account,
                "context": {"cluster": "numail", "user": service_account, "namespace": namespace},
            }
        ],
        "current-context": service_account,
    }
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


def stand_in_crd(group: str, kind: str, plural: str, version: str) -> dict[str, Any]:
    """A schemaless CRD for a kind the chart can render but the local control plane lacks
    (Prometheus Operator's and cert-manager's), so that dry-run can admit the chart's objects."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


STAND_IN_CRDS = (
    stand_in_crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", "v1"),
    stand_in_crd("monitoring.coreos.com", "PrometheusRule", "prometheusrules", "v1"),
    stand_in_crd("cert-manager.io", "Certificate", "certificates", "v1"),
)


def kubectl(*args: str, kubeconfig: Path, stdin: str | None = None) -> HelmResult:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


def server_dry_run(manifests: str, kubeconfig: Path) -> HelmResult:
    """`kubectl apply --server-side --dry-run=server`: the apiserver validates every object
    (schema, strict fields, admission) and stores nothing."""
    return kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=numail-chart-test",
        "-f", "-", kubeconfig=kubeconfig, stdin=manifests,
    )  # fmt: skip


# --- values.yaml comments and the README table ----------------------------------------------


@dataclass(frozen=True)
class ValueDoc:
    path: str
    default: str
    description: str


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


def values_docs(text: str | None = None) -> list[ValueDoc]:
    """Every leaf of values.yaml with the comment lines just above it.

    A leaf is a key with a value on its own line (structured groups are blocks; free-form
    values such as resources are written inline). A key without a comment has an empty
    description, which the tests refuse."""
    lines = (text if text is not None else (CHART / "values.yaml").read_text()).splitlines()
    docs: list[ValueDoc] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            comment = []
            continue
        m = _KEY.match(line)
        if not m:
            raise ValueError(f"values.yaml: can't document line {line!r}")
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m["key"]])
        rest = m["rest"].strip()
        if rest:
            docs.append(ValueDoc(path, rest, " ".join(comment)))
        else:
            stack.append((indent, m["key"]))
        comment = []
    return docs


def values_table(docs: list[ValueDoc] | None = None) -> str:
    rows = ["| Value | Default | What it does |", "|---|---|---|"]
    for doc in docs if docs is not None else values_docs():
        default = doc.default.replace("|", "\\|")
        rows.append(f"| `{doc.path}` | `{default}` | {doc.description.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


TABLE_START = "<!-- values-table:start -->"
TABLE_END = "<!-- values-table:end -->"


def readme_values_table(readme: str | None = None) -> str:
    text = readme if readme is not None else README.read_text()
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < 0:
        raise AssertionError(f"README.md has no {TABLE_START} ... {TABLE_END} block")
    return text[start + len(TABLE_START) : end].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.helm")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync-crds", help="copy crds/ and the member ClusterRoles into the chart")
    deploy = sub.add_parser(
        "deploy-manifest", help="render deploy/crds.yaml and deploy/numail-operator.yaml"
    )
    deploy.add_argument("--helm", help="helm binary (default: make -s helm-path)")
    sub.add_parser("values-table", help="print the README's value table")
    args = parser.parse_args(argv)
    if args.command == "sync-crds":
        for line in sync_chart_files() or ["chart files are current"]:
            print(line)
    elif args.command == "deploy-manifest":
        if args.helm:
            os.environ["NUMAIL_HELM_BIN"] = args.helm
        for path, text in deploy_manifests().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    else:
        sys.stdout.write(values_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
