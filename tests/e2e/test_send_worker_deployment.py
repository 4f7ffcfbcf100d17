"""The send worker the operator builds can send: the operator registers the Mailbox's row in
PostgreSQL, copies the workers' database Secret, publishes the key service's CA, and writes a
Deployment whose container, run with exactly that Deployment's environment, sends one job
through the real key service, which it verifies with that CA and nothing else.

There is no kubelet, so the test does the kubelet's part and nothing more, and says where:
- each `secretKeyRef` is resolved from the Secret the operator made in the namespace;
- each projected volume is written to a temporary directory: ServiceAccount tokens from the
  TokenRequest API with the audiences and lifetimes in the Deployment, the CA from the
  `kube-root-ca.crt` ConfigMap (created from the admin kubeconfig's CA when absent: the local
  control plane does not run kube-controller-manager's root-ca-cert-publisher); a
  `configMap` volume's items from that ConfigMap in the namespace (the key service's CA, as the
  operator published it);
- file paths under the volume mounts are translated to that directory, and
  KUBERNETES_SERVICE_HOST/PORT (which the kubelet injects) point at the local API server;
- the mail servers' test CA is given as NUMAIL_MAIL_CA_FILE (real mail providers have public
  certificates); the metrics port (a Pod has its own network namespace) is a free port.
Nothing else is added: no kubeconfig, no keyring, no local key or credential source.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from numail.db import jobs as jobs_db
from numail.db.mailboxes import MailboxRecord, register_mailbox
from numail.keys.local import generate_keyring
from tests.conftest import K8s
from tests.e2e.mailbox_fixtures import (
    GOOGLE_CLIENT_SECRET_NAME,
    ProviderStubs,
    create_intake,
    create_mailbox,
    create_workspaces,
    delete_workspaces,
    ensure_namespace,
    oauth_spec,
    wait_condition,
)
from tests.support.controlplane import ControlPlane
from tests.support.keyservice import KeyServiceProcess, start_keyservice
from tests.support.mail_apis import SmtpSink
from tests.support.operator import OperatorProcess, start_operator
from tests.support.postgres import PostgresServer, free_port
from tests.support.tls import make_serving_cert
from tests.support.waiting import condition, wait_for

G, V = "numail.ai", "v1alpha1"
WS, OTHER = "sendable", "sendable-other"
NS, OTHER_NS = f"ws-{WS}", f"ws-{OTHER}"
SYSTEM_NS = "numail-sendable-system"
DB_SECRET = "numail-worker-db"
# The key service's TLS Secret, as the chart's self-signed init container or cert-manager
# leaves it: tls.crt, tls.key and ca.crt. Only ca.crt may leave the operator's namespace.
TLS_SECRET = "numail-keyservice-tls"
CA_CONFIGMAP = "numail-keyservice-ca"
ADDRESS = "sales@client.example"  # create_mailbox makes <name>@client.example
PASSWORD = "canary-send-worker-password-7c1f"


@dataclass
class Env:
    operator: OperatorProcess
    keyservice: KeyServiceProcess
    sink: SmtpSink
    stubs: ProviderStubs
    admin_dsn: str
    worker_dsn: str
    operator_role_dsn: str
    workdir: Path

    def tls_files(self) -> dict[str, str]:
        """The key service's serving certificate, key and CA, as its TLS Secret holds them."""
        tls = self.keyservice.ca.parent
        return {n: (tls / n).read_text() for n in ("tls.crt", "tls.key", "ca.crt")}


def _login(postgres: PostgresServer, admin_dsn: str, group: str) -> str:
    """A LOGIN member of one of the application roles, as a deployment creates it."""
    user = f"e2e_{group}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {user} LOGIN IN ROLE {group}")
    dbname = dict(p.split("=", 1) for p in admin_dsn.split())["dbname"]
    return postgres.dsn(dbname, user=user)


@pytest.fixture(scope="module")
def env(
    controlplane: ControlPlane,
    k8s: K8s,
    numail_crds: list[str],
    provider_stubs: ProviderStubs,
    postgres: PostgresServer,
    pg_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("send-worker-deployment")
    opdir = tmp / "operator"
    opdir.mkdir()
    (opdir / "keyring").write_text(generate_keyring())  # shared by the operator and key service
    (opdir / "keyring").chmod(0o600)
    keyservice = start_keyservice(controlplane.kubeconfig, tmp / "keyservice", opdir / "keyring")
    provider_stubs.set_mail_passwords({ADDRESS: PASSWORD})  # Dovecot: IMAP login, Sent copies
    sink = SmtpSink(provider_stubs.cert, passwords={ADDRESS: PASSWORD}).start()
    started: list[Any] = [keyservice, sink]
    try:
        # The operator migrates the schema at startup; then the application logins exist.
        from numail.db.migrate import migrate

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            migrate(conn)
        worker_dsn = _login(postgres, pg_dsn, "numail_worker")
        operator_role_dsn = _login(postgres, pg_dsn, "numail_operator")
        ensure_namespace(k8s, SYSTEM_NS)
        k8s.core.create_namespaced_secret(
            SYSTEM_NS,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=DB_SECRET), string_data={"url": worker_dsn}
            ),
        )
        tls = keyservice.ca.parent
        k8s.core.create_namespaced_secret(
            SYSTEM_NS,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=TLS_SECRET),
                type="kubernetes.io/tls",
                string_data={n: (tls / n).read_text() for n in ("tls.crt", "tls.key", "ca.crt")},
            ),
        )
        operator = start_operator(
            controlplane.kubeconfig,
            opdir,
            {
                **provider_stubs.operator_env(),
                "NUMAIL_DATABASE_URL": pg_dsn,
                "NUMAIL_SYSTEM_NAMESPACE": SYSTEM_NS,
                "NUMAIL_WORKER_DATABASE_SECRET": DB_SECRET,
                "NUMAIL_KEYSERVICE_CA_SECRET": TLS_SECRET,
                "NUMAIL_KEYSERVICE_URL": keyservice.url,
            },
        )
        started.append(operator)
        create_workspaces(k8s, [WS, OTHER], provider_stubs)
        yield Env(
            operator,
            keyservice,
            sink,
            provider_stubs,
            pg_dsn,
            worker_dsn,
            operator_role_dsn,
            tmp,
        )
    finally:
        with contextlib.suppress(Exception):
            delete_workspaces(k8s, [WS, OTHER])
        for thing in reversed(started):
            with contextlib.suppress(Exception):
                thing.stop()
        with contextlib.suppress(ApiException):
            k8s.core.delete_namespace(SYSTEM_NS)


def rows(dsn: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params or []).fetchall()


def mailbox_row(env: Env, uid: str) -> dict[str, Any] | None:
    found = rows(
        env.admin_dsn,
        "SELECT workspace_id::text, namespace, name, provider, state, daily_cap, address, "
        "settings FROM mailboxes WHERE id = %s",
        [uid],
    )
    if not found:
        return None
    keys = ("workspace_id", "namespace", "name", "provider", "state", "daily_cap", "address")
    return {**dict(zip(keys, found[0][:7], strict=True)), "settings": found[0][7]}


def workspace(k8s: K8s, name: str) -> dict[str, Any]:
    return dict(k8s.custom.get_cluster_custom_object(G, V, "workspaces", name))


# --- the kubelet's part ---------------------------------------------------------------------


def kube_root_ca(k8s: K8s, namespace: str) -> str:
    """The `kube-root-ca.crt` ConfigMap's CA; created as root-ca-cert-publisher would."""
    try:
        found = k8s.core.read_namespaced_config_map("kube-root-ca.crt", namespace)
    except ApiException as err:
        if err.status != 404:
            raise
        admin = yaml.safe_load(Path(k8s.kubeconfig).read_text())
        ca = base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"])
        found = k8s.core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="kube-root-ca.crt"),
                data={"ca.crt": ca.decode()},
            ),
        )
    return str(found.data["ca.crt"])


def project(k8s: K8s, namespace: str, sa: str, source: dict[str, Any]) -> dict[str, str]:
    """One projected volume source as the kubelet writes it: {path: content}."""
    if "serviceAccountToken" in source:
        spec = source["serviceAccountToken"]
        audience = spec.get("audience")
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience] if audience else [],  # [] is the API server's audience
                expiration_seconds=spec.get("expirationSeconds", 3600),
            )
        )
        token = k8s.core.create_namespaced_service_account_token(sa, namespace, request)
        return {spec["path"]: str(token.status.token)}
    if "configMap" in source:
        spec = source["configMap"]
        assert spec["name"] == "kube-root-ca.crt", f"unexpected ConfigMap {spec['name']}"
        ca = kube_root_ca(k8s, namespace)
        return {item["path"]: ca for item in spec["items"] if item["key"] == "ca.crt"}
    raise AssertionError(f"a projected source the test does not know: {source}")


def container_env(
    k8s: K8s, controlplane: ControlPlane, deployment: Any, root: Path
) -> dict[str, str]:
    """The worker container's environment, resolved as the kubelet would, plus the few
    translations the module docstring lists."""
    namespace = deployment.metadata.namespace
    pod = k8s.api.sanitize_for_serialization(deployment.spec.template.spec)
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        local = root / mount["mountPath"].strip("/")
        local.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = local
        volume = volumes[mount["name"]]
        if "configMap" in volume:  # not optional: the kubelet would hold the Pod without it
            spec = volume["configMap"]
            data = k8s.core.read_namespaced_config_map(spec["name"], namespace).data
            for item in spec["items"]:
                (local / item["path"]).write_text(data[item["key"]])
        for source in (volume.get("projected") or {}).get("sources", []):
            for path, content in project(k8s, namespace, pod["serviceAccountName"], source).items():
                (local / path).write_text(content)
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            value = entry["value"]
            for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
                if value.startswith(mount_path + "/"):  # once, by the longest mount path
                    value = str(local) + value.removeprefix(mount_path)
                    break
            env[entry["name"]] = value
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        secret = k8s.core.read_namespaced_secret(ref["name"], namespace)
        env[entry["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
    host, port = controlplane.server.removeprefix("https://").rsplit(":", 1)
    return {**env, "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}


def start_send_worker(env: Env, worker_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m numail_workers.send` with the container's environment and the translations
    the module docstring lists."""
    process_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(env.workdir),
        **worker_env,
        # The mail servers' test CA (see the module docstring), where production has public
        # certificates; the key service's CA is the Deployment's own.
        "NUMAIL_MAIL_CA_FILE": str(env.stubs.cert.ca),
        "NUMAIL_METRICS_PORT": str(free_port()),
    }
    for name in (
        "NUMAIL_KUBE_TOKEN_FILE",
        "NUMAIL_KUBE_CA_FILE",
        "NUMAIL_KEYSERVICE_TOKEN",
        "NUMAIL_KEYSERVICE_CA_FILE",
    ):
        assert Path(process_env[name]).is_file(), (name, process_env[name])
    if os.environ.get("PYTHONPATH"):
        process_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "numail_workers.send"],
            env=process_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def published_ca(k8s: K8s, namespace: str) -> str | None:
    try:
        found = k8s.core.read_namespaced_config_map(CA_CONFIGMAP, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return str((found.data or {}).get("ca.crt"))


# --- the tests ------------------------------------------------------------------------------


def test_the_operator_publishes_only_the_key_services_ca_and_keeps_it_in_place(
    env: Env, k8s: K8s
) -> None:
    ws_uid = workspace(k8s, WS)["metadata"]["uid"]
    ca = env.keyservice.ca.read_text()

    def published() -> dict[str, Any] | None:
        c = condition(workspace(k8s, WS), "KeyServiceCA")
        return c if c and c["status"] == "True" else None

    found = wait_for(published, 60, "KeyServiceCA=True")
    assert found is not None
    assert found["reason"] == "Published" and f"{SYSTEM_NS}/{TLS_SECRET}" in found["message"]
    for namespace in (NS, OTHER_NS):
        copy = k8s.core.read_namespaced_config_map(CA_CONFIGMAP, namespace)
        assert copy.data == {"ca.crt": ca}  # exactly the CA certificate
        assert not copy.binary_data
    copy = k8s.core.read_namespaced_config_map(CA_CONFIGMAP, NS)
    text = json.dumps(k8s.api.sanitize_for_serialization(copy))
    for secret in ("tls.key", "tls.crt"):  # neither the key nor the leaf leaves SYSTEM_NS
        assert env.tls_files()[secret].strip().splitlines()[1] not in text, secret
    assert "PRIVATE KEY" not in text
    assert [o.uid for o in copy.metadata.owner_references] == [ws_uid]
    assert copy.metadata.labels["app.kubernetes.io/managed-by"] == "numail-operator"
    assert copy.metadata.labels["app.kubernetes.io/component"] == "keyservice-ca"
    assert copy.metadata.labels["numail.ai/workspace"] == WS
    # The workers can't read Secrets of the operator's namespace, and need not.
    assert can_get_secret(k8s, NS, "numail-send-worker", SYSTEM_NS, TLS_SECRET) is False

    # Both worker Deployments mount it read-only, and Pod Security "restricted" admits the Pod.
    for name in ("numail-send-worker", "numail-reply-worker"):
        deployment = k8s.apps.read_namespaced_deployment(name, NS)
        pod = k8s.api.sanitize_for_serialization(deployment.spec.template)
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "keyservice-ca")
        assert volume["configMap"]["name"] == CA_CONFIGMAP
        (container,) = pod["spec"]["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "keyservice-ca")
        assert mount["readOnly"] is True
        k8s.core.create_namespaced_pod(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{name}-psa", "labels": pod["metadata"]["labels"]},
                "spec": pod["spec"],
            },
            dry_run="All",
        )

    # A hand edit is put back, and a deleted copy is made again.
    k8s.core.patch_namespaced_config_map(CA_CONFIGMAP, NS, {"data": {"ca.crt": "not a CA"}})
    wait_for(lambda: published_ca(k8s, NS) == ca, 30, "the edited CA ConfigMap to be put back")
    k8s.core.delete_namespaced_config_map(CA_CONFIGMAP, NS)
    wait_for(lambda: published_ca(k8s, NS) == ca, 30, "the deleted CA ConfigMap to be made again")

    # Without the source Secret, the Workspace says which Secret and what to do, with a Warning;
    # the last published copy stays, and the Deployments still render.
    k8s.core.delete_namespaced_secret(TLS_SECRET, SYSTEM_NS)
    try:

        def missing() -> dict[str, Any] | None:
            c = condition(workspace(k8s, WS), "KeyServiceCA")
            return c if c and c["status"] == "False" else None

        found = wait_for(missing, 30, "KeyServiceCA=False")
        assert found is not None
        assert found["reason"] == "KeyServiceCASecretMissing"
        assert f"{SYSTEM_NS}/{TLS_SECRET} does not exist" in found["message"]
        warned = [
            e
            for e in k8s.core.list_namespaced_event("default").items
            if e.involved_object.name == WS and e.reason == "KeyServiceCASecretMissing"
        ]
        assert warned and warned[0].type == "Warning"
        assert published_ca(k8s, NS) == ca
        k8s.apps.read_namespaced_deployment("numail-send-worker", NS)
    finally:
        k8s.core.create_namespaced_secret(
            SYSTEM_NS,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=TLS_SECRET),
                type="kubernetes.io/tls",
                string_data=env.tls_files(),
            ),
        )
    wait_for(published, 30, "KeyServiceCA=True again")


def test_the_operators_send_worker_deployment_sends_a_job_and_a_deleted_mailbox_disconnects(
    env: Env, k8s: K8s, controlplane: ControlPlane
) -> None:
    ws, other = workspace(k8s, WS), workspace(k8s, OTHER)
    ws_uid = ws["metadata"]["uid"]

    # Workers' database: copied into the namespace, owned by the Workspace; the condition says so.
    def database_copied() -> dict[str, Any] | None:
        c = condition(workspace(k8s, WS), "WorkerDatabase")
        return c if c and c["status"] == "True" else None

    wait_for(database_copied, 60, "WorkerDatabase=True")
    copy = k8s.core.read_namespaced_secret("numail-database", NS)
    assert base64.b64decode(copy.data["url"]).decode() == env.worker_dsn
    assert [o.uid for o in copy.metadata.owner_references] == [ws_uid]
    assert copy.metadata.labels["app.kubernetes.io/managed-by"] == "numail-operator"

    # A hand edit of the copy is put back, and a deleted copy is made again.
    def restored() -> bool:
        try:
            found = k8s.core.read_namespaced_secret("numail-database", NS)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return base64.b64decode(found.data["url"]).decode() == env.worker_dsn

    k8s.core.patch_namespaced_secret(
        "numail-database", NS, {"stringData": {"url": "host=elsewhere dbname=x"}}
    )
    wait_for(restored, 30, "the edited database Secret to be put back")
    k8s.core.delete_namespaced_secret("numail-database", NS)
    wait_for(restored, 30, "the deleted database Secret to be made again")

    # A Mailbox that sends over SMTP, and one whose OAuth client secret the workers must read.
    create_intake(k8s, NS, "sales-intake", json.dumps({"password": PASSWORD}))
    sales = create_mailbox(
        k8s,
        NS,
        "sales",
        {
            "displayName": "Sales",
            "provider": "smtp",
            "smtp": {"host": "127.0.0.1", "port": env.sink.port, "security": "starttls"},
            "imap": {"host": "127.0.0.1", "port": env.stubs.dovecot.imaps_port},
            "dailyLimit": 25,
        },
        {"secretRef": {"name": "sales-intake"}},
    )
    create_intake(k8s, NS, "outreach-intake", json.dumps({"refresh_token": "not-granted"}))
    create_mailbox(
        k8s, NS, "outreach", oauth_spec("gmail"), {"secretRef": {"name": "outreach-intake"}}
    )
    wait_condition(k8s, NS, "sales", "Ready", "True", timeout=90)
    uid = sales["metadata"]["uid"]

    # The row the worker reads, written by the operator.
    def verified_row() -> dict[str, Any] | None:
        row = mailbox_row(env, uid)
        return row if row and row["state"] == "verified" else None

    row = wait_for(verified_row, 30, "the sales row, verified")
    assert row == {
        "workspace_id": ws_uid,
        "namespace": NS,
        "name": "sales",
        "provider": "smtp",
        "state": "verified",
        "daily_cap": 25,
        "address": ADDRESS,
        "settings": {
            "displayName": "Sales",
            "smtp": {"host": "127.0.0.1", "port": env.sink.port, "security": "starttls"},
            "imap": {"host": "127.0.0.1", "port": env.stubs.dovecot.imaps_port, "security": "tls"},
        },
    }

    # The worker Roles grant exactly the named Secrets: proved by the apiserver's authorizer.
    def role_names_client_secret() -> bool:
        role = k8s.rbac.read_namespaced_role("numail-send-worker", NS)
        return GOOGLE_CLIENT_SECRET_NAME in role.rules[0].resource_names

    wait_for(role_names_client_secret, 30, "the Role to name the OAuth client secret")
    for sa in ("numail-send-worker", "numail-reply-worker"):
        allowed = {
            (NS, "numail-dek"): True,
            (NS, "numail-mailbox-sales"): True,
            (NS, "numail-mailbox-outreach"): True,
            (NS, GOOGLE_CLIENT_SECRET_NAME): True,
            (NS, "numail-database"): False,
            (NS, "numail-sealing-key"): False,
            (NS, "sales-intake"): False,
            (NS, "outreach-intake"): False,
            (NS, "some-other-secret"): False,
            (OTHER_NS, "numail-dek"): False,
            (OTHER_NS, GOOGLE_CLIENT_SECRET_NAME): False,
            (OTHER_NS, "numail-database"): False,
        }
        for (namespace, name), expected in allowed.items():
            assert can_get_secret(k8s, NS, sa, namespace, name) is expected, (
                sa,
                namespace,
                name,
            )
        assert can_get_secret(k8s, NS, sa, NS, "") is False  # no list, no unnamed get
    assert other["metadata"]["uid"] != ws_uid

    # The Deployment, run as its container would run.
    deployment = k8s.apps.read_namespaced_deployment("numail-send-worker", NS)
    root = env.workdir / "pod"
    worker_env = container_env(k8s, controlplane, deployment, root)
    assert set(worker_env) == {
        "NUMAIL_WORKSPACE",
        "NUMAIL_WORKSPACE_UID",
        "NUMAIL_KEYSERVICE_URL",
        "NUMAIL_KEYSERVICE_TOKEN",
        "NUMAIL_KUBE_TOKEN_FILE",
        "NUMAIL_KUBE_CA_FILE",
        "NUMAIL_KEYSERVICE_CA_FILE",
        "NUMAIL_DATABASE_URL",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
    }
    assert worker_env["NUMAIL_KEYSERVICE_URL"] == env.keyservice.url
    # The key service's CA comes from the ConfigMap the operator published, and only from it.
    ca_file = Path(worker_env["NUMAIL_KEYSERVICE_CA_FILE"])
    assert ca_file == root / "var/run/secrets/numail/keyservice-ca/ca.crt"
    assert ca_file.read_text() == env.keyservice.ca.read_text()
    (container,) = deployment.spec.template.spec.containers
    assert container.args == ["python", "-m", "numail_workers.send"]

    with psycopg.connect(env.admin_dsn, autocommit=True) as conn:
        found = conn.execute(
            "INSERT INTO leads (workspace_id, email, email_hash, first_name) "
            "VALUES (%s, 'lead@example.com', %s, 'Ada') RETURNING id",
            [ws_uid, hashlib.sha256(b"lead@example.com").hexdigest()],
        ).fetchone()
    assert found is not None
    lead = uuid.UUID(str(found[0]))
    with psycopg.connect(env.worker_dsn) as conn:
        (job,) = jobs_db.enqueue(
            conn,
            ws_uid,
            [
                jobs_db.NewJob(
                    mailbox_id=uuid.UUID(uid),
                    lead_id=lead,
                    idempotency_key="e2e-deployment-1",
                    subject="Hello {{first_name}}",
                    body="One message, from the Deployment the operator built.\n",
                )
            ],
        )
    log = env.workdir / "worker.log"
    worker = start_send_worker(env, worker_env, log)
    try:

        def job_state() -> str | None:
            state = rows(env.admin_dsn, "SELECT state FROM send_jobs WHERE id = %s", [job.job_id])
            if worker.poll() is not None:
                raise AssertionError(f"the worker exited:\n{log.read_text()[-4000:]}")
            return str(state[0][0]) if state and state[0][0] in ("sent", "failed") else None

        try:
            final = wait_for(job_state, 90, "the job to be sent", interval=0.5)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{log.read_text()[-4000:]}") from None
        assert final == "sent", log.read_text()[-4000:]
        assert env.sink.log.count(job.message_id) == 1
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
    text = log.read_text()
    assert PASSWORD not in text and env.worker_dsn not in text
    unwrapped = f"unwrapped DEK v1 for {NS}/numail-send-worker"
    assert unwrapped in env.keyservice.log.read_text()

    # A wrong CA fails closed: the key service's TLS Secret now names another CA; the operator
    # publishes it, and the worker, run as the Deployment says, refuses the key service's
    # certificate: no DEK, no send.
    wrong = make_serving_cert(env.workdir / "wrong-ca").ca.read_text()
    k8s.core.patch_namespaced_secret(TLS_SECRET, SYSTEM_NS, {"stringData": {"ca.crt": wrong}})
    try:
        wait_for(lambda: published_ca(k8s, NS) == wrong, 30, "the wrong CA to be published")
        unwraps = env.keyservice.log.read_text().count(unwrapped)
        with psycopg.connect(env.worker_dsn) as conn:
            (refused,) = jobs_db.enqueue(
                conn,
                ws_uid,
                [
                    jobs_db.NewJob(
                        mailbox_id=uuid.UUID(uid),
                        lead_id=lead,
                        idempotency_key="e2e-deployment-wrong-ca",
                        subject="Never sent",
                        body="The key service could not be verified.\n",
                    )
                ],
            )
        deployment = k8s.apps.read_namespaced_deployment("numail-send-worker", NS)
        wrong_env = container_env(k8s, controlplane, deployment, env.workdir / "pod-wrong-ca")
        assert Path(wrong_env["NUMAIL_KEYSERVICE_CA_FILE"]).read_text() == wrong
        wrong_log = env.workdir / "worker-wrong-ca.log"
        worker = start_send_worker(env, wrong_env, wrong_log)
        try:

            def attempted() -> tuple[Any, ...] | None:
                found = rows(
                    env.admin_dsn,
                    "SELECT state, attempts, last_error FROM send_jobs WHERE id = %s",
                    [refused.job_id],
                )
                # The failure is recorded on the job, which waits for another try.
                return found[0] if found and found[0][2] else None

            tried = wait_for(attempted, 60, "the wrong-CA attempt", interval=0.5)
            assert tried is not None
            state, attempts, error = tried
        finally:
            worker.terminate()
            assert worker.wait(30) == 0
        assert state not in ("sent", "claimed") and attempts == 0, (state, attempts, error)
        assert "CERTIFICATE_VERIFY_FAILED" in str(error), (error, wrong_log.read_text()[-4000:])
        assert env.sink.log.count(refused.message_id) == 0
        assert env.keyservice.log.read_text().count(unwrapped) == unwraps
    finally:
        k8s.core.patch_namespaced_secret(
            TLS_SECRET, SYSTEM_NS, {"stringData": {"ca.crt": env.keyservice.ca.read_text()}}
        )
    wait_for(
        lambda: published_ca(k8s, NS) == env.keyservice.ca.read_text(),
        30,
        "the right CA to be published again",
    )

    # The operator's own database role may keep the registry (grants and row-level security).
    with psycopg.connect(env.operator_role_dsn) as conn:
        register_mailbox(
            conn,
            MailboxRecord(
                id=uid,
                workspace_id=ws_uid,
                namespace=NS,
                name="sales",
                provider="smtp",
                state="verified",
                daily_cap=25,
                address=ADDRESS,
                settings=row["settings"],
            ),
        )

    # Deleting the Mailbox keeps its row (its job references it) and marks it disconnected.
    k8s.custom.delete_namespaced_custom_object(G, V, NS, "mailboxes", "sales")

    def disconnected() -> bool:
        found = mailbox_row(env, uid)
        return bool(found and found["state"] == "disconnected")

    wait_for(disconnected, 60, "the sales row, disconnected")
    assert rows(env.admin_dsn, "SELECT state FROM send_jobs WHERE id = %s", [job.job_id]) == [
        ("sent",)
    ]


def can_get_secret(k8s: K8s, sa_namespace: str, sa: str, namespace: str, name: str) -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{sa_namespace}:{sa}",
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{sa_namespace}",
                "system:authenticated",
            ],
            resource_attributes=client.V1ResourceAttributes(
                verb="get", resource="secrets", namespace=namespace, name=name or None
            ),
        )
    )
    return bool(k8s.authz.create_subject_access_review(review).status.allowed)
