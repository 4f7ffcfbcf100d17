"""The production path end to end: a send worker reads its mailbox's sealed Secret from the real
control plane with its own ServiceAccount token, trades a projected-audience token for its DEK
at the real key service, opens the credential in memory and sends.

The key service is started as tests/integration/test_keyservice.py starts it; the Workspace,
namespace, Secrets and Role are made by hand here as the operator makes them, so this test
needs only the key service and the worker.
"""

from __future__ import annotations

import base64
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from numail.keys.local import generate_keyring
from numail.providers.credentials import PasswordCredentials
from tests.conftest import K8s
from tests.support.controlplane import ControlPlane
from tests.support.keyservice import start_keyservice
from tests.support.mail_apis import SendWorld, SmtpSink
from tests.support.tls import ServingCert, make_serving_cert

AUDIENCE = "numail-keyservice"
SALES = "sales@tenant.test"
PASSWORD = "app-password-tenant-canary"


@dataclass
class Cluster:
    controlplane: ControlPlane
    k8s: K8s
    keyservice_url: str
    keyservice_ca: Path
    keyservice_log: Path
    keyring: Path
    mail_cert: ServingCert
    sink: SmtpSink

    def metrics(self) -> str:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.keyservice_ca))
        with urllib.request.urlopen(self.keyservice_url + "/metrics", context=ctx) as r:
            return r.read().decode()


@pytest.fixture(scope="module")
def cluster(
    controlplane: ControlPlane,
    k8s: K8s,
    numail_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("send-keyservice")
    keyring = tmp / "keyring"
    keyring.write_text(generate_keyring())
    started = start_keyservice(controlplane.kubeconfig, tmp, keyring)
    mail_cert = make_serving_cert(tmp / "mail-tls")
    sink = SmtpSink(mail_cert, passwords={SALES: PASSWORD}).start()
    found = Cluster(
        controlplane, k8s, started.url, started.ca, started.log, keyring, mail_cert, sink
    )
    try:
        yield found
    finally:
        sink.stop()
        started.stop()


def make_workspace(k8s: K8s) -> tuple[str, str]:
    """A Workspace and its namespace and worker ServiceAccounts, as the operator makes them."""
    name = f"send-ks-{uuid.uuid4().hex[:6]}"
    ws = k8s.custom.create_cluster_custom_object(
        "numail.ai",
        "v1alpha1",
        "workspaces",
        {
            "apiVersion": "numail.ai/v1alpha1",
            "kind": "Workspace",
            "metadata": {"name": name},
            "spec": {"tier": "standard"},
        },
    )
    ns = f"ws-{name}"
    k8s.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=ns, labels={"numail.ai/workspace": name})
        )
    )
    for sa in ("numail-send-worker", "intruder"):
        k8s.core.create_namespaced_service_account(
            ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa))
        )
    return name, str(ws["metadata"]["uid"])


def publish_secrets(k8s: K8s, world: SendWorld, mailbox: str) -> None:
    """The DEK Secret, the sealed mailbox Secret and the worker Role that may `get` them."""
    ns = world.namespace
    for name in ("numail-dek", f"numail-mailbox-{mailbox}"):
        files = world.credentials_dir / name
        data = {p.name: base64.b64encode(p.read_bytes()).decode() for p in files.iterdir()}
        k8s.core.create_namespaced_secret(
            ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=data)
        )
    k8s.rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": "numail-send-worker"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "verbs": ["get"],
                    "resourceNames": ["numail-dek", f"numail-mailbox-{mailbox}"],
                }
            ],
        },
    )
    k8s.rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "numail-send-worker"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "numail-send-worker",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "numail-send-worker", "namespace": ns}],
        },
    )


def token(k8s: K8s, ns: str, sa: str, audiences: list[str]) -> str:
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences, expiration_seconds=3600)
    )
    return str(k8s.core.create_namespaced_service_account_token(sa, ns, request).status.token)


def sa_kubeconfig(cluster: Cluster, ns: str, sa: str, out: Path) -> Path:
    """What a Pod of that ServiceAccount gets: the API server's CA and a bound token."""
    admin = yaml.safe_load(cluster.controlplane.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "numail", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": sa, "user": {"token": token(cluster.k8s, ns, sa, [])}}],
        "contexts": [{"name": sa, "context": {"cluster": "numail", "user": sa, "namespace": ns}}],
        "current-context": sa,
    }
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path, cluster: Cluster) -> Iterator[SendWorld]:
    name, uid = make_workspace(cluster.k8s)
    w = SendWorld.create(
        pg_dsn, tmp_path, workspace=name, workspace_id=uuid.UUID(uid), keyring=cluster.keyring
    )
    try:
        yield w
    finally:
        w.stop_workers()


def worker_env(cluster: Cluster, world: SendWorld, sa: str, tmp: Path) -> dict[str, str]:
    keyservice_token = tmp / f"{sa}.keyservice-token"
    keyservice_token.write_text(token(cluster.k8s, world.namespace, sa, [AUDIENCE]))
    return {
        "NUMAIL_KEY_SOURCE": "keyservice",
        "NUMAIL_KEYSERVICE_URL": cluster.keyservice_url,
        "NUMAIL_KEYSERVICE_TOKEN": str(keyservice_token),
        "NUMAIL_KEYSERVICE_CA_FILE": str(cluster.keyservice_ca),
        "NUMAIL_CREDENTIAL_SOURCE": "kubernetes",
        "NUMAIL_KUBECONFIG": str(sa_kubeconfig(cluster, world.namespace, sa, tmp / f"{sa}.kc")),
        "NUMAIL_MAIL_CA_FILE": str(cluster.mail_cert.ca),
        "NUMAIL_LOCAL_KEYRING_FILE": "",
    }


def add_sales(world: SendWorld, cluster: Cluster) -> uuid.UUID:
    mailbox = world.add_mailbox(
        "sales",
        SALES,
        PasswordCredentials(password=PASSWORD),
        settings={
            "smtp": {"host": "127.0.0.1", "port": cluster.sink.port, "security": "starttls"},
            "imap": {"host": "127.0.0.1", "port": 993},
            "appendToSent": False,
        },
    )
    publish_secrets(cluster.k8s, world, "sales")
    return mailbox


def test_a_worker_opens_its_credential_through_the_key_service_and_its_own_secret(
    world: SendWorld, cluster: Cluster, tmp_path: Path
) -> None:
    mailbox = add_sales(world, cluster)
    leads = world.add_leads([f"ks{i}@example.com" for i in range(3)])
    enqueued = world.enqueue(mailbox, leads)
    worker = world.start_worker(**worker_env(cluster, world, "numail-send-worker", tmp_path))
    world.wait_for_states({"sent": 3}, timeout=60)
    for job in enqueued:
        assert cluster.sink.log.count(job.message_id) == 1
    assert f"unwrapped DEK v1 for {world.namespace}/numail-send-worker" in (
        cluster.keyservice_log.read_text()
    )
    unwraps = [
        line
        for line in cluster.metrics().splitlines()
        if line.startswith(f'numail_keyservice_unwraps_total{{workspace="{world.workspace}"}}')
    ]
    assert unwraps and float(unwraps[0].rsplit(" ", 1)[1]) >= 1
    worker.terminate()
    assert PASSWORD not in world.all_logs()


def test_a_service_account_without_the_role_reads_no_secret_and_sends_nothing(
    world: SendWorld, cluster: Cluster, tmp_path: Path
) -> None:
    mailbox = add_sales(world, cluster)
    (lead,) = world.add_leads(["intruded@example.com"])
    (job,) = world.enqueue(mailbox, [lead])
    world.start_worker(**worker_env(cluster, world, "intruder", tmp_path))
    world.wait_until(
        lambda: "may not read Secret" in (world.job(job.job_id)["last_error"] or ""),
        30,
        "the worker to be refused the Secret",
    )
    assert world.job(job.job_id)["state"] == "scheduled"
    assert cluster.sink.log.count(job.message_id) == 0
    assert world.attempts(job.job_id) == []
