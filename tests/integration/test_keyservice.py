"""The key service against the real control plane, with tokens minted by TokenRequest."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from numail.crypto import generate_dek
from numail.keys import KeyContext, UnwrapRefused
from numail.keys.client import KeyServiceClient, KeyServiceError
from numail.keys.local import LocalKeyProvider, generate_keyring
from tests.conftest import K8s
from tests.support.controlplane import ControlPlane
from tests.support.keyservice import start_keyservice

AUDIENCE = "numail-keyservice"


@dataclass
class Tenant:
    name: str
    uid: str
    namespace: str
    dek: bytes
    wrapped: bytes


@dataclass
class KeyService:
    url: str
    ca: Path
    log: Path
    tenants: dict[str, Tenant]
    k8s: K8s

    def token(self, tenant: str, sa: str = "numail-send-worker", audience: str = AUDIENCE) -> str:
        ns = self.tenants[tenant].namespace
        req = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
        )
        return str(self.k8s.core.create_namespaced_service_account_token(sa, ns, req).status.token)

    def post(self, body: object, token: str | None) -> tuple[int, dict[str, object]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            self.url + "/v1/unwrap", data=data, headers=headers, method="POST"
        )
        ctx = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def body(self, tenant: str, version: int = 1) -> dict[str, object]:
        return {
            "wrappedKey": base64.b64encode(self.tenants[tenant].wrapped).decode(),
            "keyVersion": version,
        }

    def metrics(self) -> str:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(self.url + "/metrics", context=ctx, timeout=10) as resp:
            return resp.read().decode()


def _make_tenant(
    k8s: K8s, provider: LocalKeyProvider, name: str, key_provider: str = "default"
) -> Tenant:
    ws = k8s.custom.create_cluster_custom_object(
        "numail.ai",
        "v1alpha1",
        "workspaces",
        {
            "apiVersion": "numail.ai/v1alpha1",
            "kind": "Workspace",
            "metadata": {"name": name},
            "spec": {"tier": "standard", "keyProvider": key_provider},
        },
    )
    ns = f"ws-{name}"
    # What the workspace operator does; done by hand so this test needs only the key service.
    k8s.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=ns, labels={"numail.ai/workspace": name})
        )
    )
    for sa in ("numail-send-worker", "numail-reply-worker", "intruder"):
        k8s.core.create_namespaced_service_account(
            ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa))
        )
    dek = generate_dek(1)
    uid = ws["metadata"]["uid"]
    wrapped = provider.wrap(dek.key, KeyContext(workspace_uid=uid, workspace=name, key_version=1))
    return Tenant(name=name, uid=uid, namespace=ns, dek=dek.key, wrapped=wrapped)


def ensure_ns(k8s: K8s, name: str) -> None:
    try:
        k8s.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except client.exceptions.ApiException as err:
        if err.status != 409:
            raise


@pytest.fixture(scope="module")
def keyservice(
    controlplane: ControlPlane,
    k8s: K8s,
    numail_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KeyService]:
    tmp = tmp_path_factory.mktemp("keyservice")
    keyring = tmp / "keyring"
    keyring.write_text(generate_keyring())
    provider = LocalKeyProvider.from_file(keyring)
    suffix = uuid.uuid4().hex[:6]
    tenants = {t: _make_tenant(k8s, provider, f"ks-{t}-{suffix}") for t in ("a", "b")}
    # Tenant "c" names its own KeyProvider CR, whose keyring lives in a Secret: the key service
    # must resolve it as the operator does, not fall back to its default keyring.
    own_ring = generate_keyring()
    ensure_ns(k8s, "numail-system")
    k8s.core.create_namespaced_secret(
        "numail-system",
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"ks-ring-{suffix}"),
            string_data={"keyring": own_ring},
        ),
    )
    k8s.custom.create_cluster_custom_object(
        "numail.ai",
        "v1alpha1",
        "keyproviders",
        {
            "apiVersion": "numail.ai/v1alpha1",
            "kind": "KeyProvider",
            "metadata": {"name": f"ks-kp-{suffix}"},
            "spec": {
                "type": "local",
                "local": {"secretRef": {"name": f"ks-ring-{suffix}", "namespace": "numail-system"}},
            },
        },
    )
    from numail.keys.local import parse_keyring

    tenants["c"] = _make_tenant(
        k8s,
        LocalKeyProvider(parse_keyring(own_ring, "t")),
        f"ks-c-{suffix}",
        key_provider=f"ks-kp-{suffix}",
    )
    started = start_keyservice(controlplane.kubeconfig, tmp, keyring)
    try:
        yield KeyService(started.url, started.ca, started.log, tenants, k8s)
    finally:
        started.stop()


def test_a_workspace_worker_unwraps_its_own_dek(keyservice: KeyService) -> None:
    for sa in ("numail-send-worker", "numail-reply-worker"):
        status, body = keyservice.post(keyservice.body("a"), keyservice.token("a", sa))
        assert status == 200, body
        assert base64.b64decode(str(body["dek"])) == keyservice.tenants["a"].dek
        assert body["keyVersion"] == 1


def test_a_workspace_with_its_own_key_provider_unwraps_through_it(keyservice: KeyService) -> None:
    status, body = keyservice.post(keyservice.body("c"), keyservice.token("c"))
    assert status == 200, body
    assert base64.b64decode(str(body["dek"])) == keyservice.tenants["c"].dek
    # ...and the default keyring can't stand in for it.
    status, _ = keyservice.post(keyservice.body("a"), keyservice.token("c"))
    assert status == 403


def test_another_workspaces_dek_is_refused_with_403(keyservice: KeyService) -> None:
    status, body = keyservice.post(keyservice.body("b"), keyservice.token("a"))
    assert status == 403 and body["error"] == "wrong_workspace"
    assert "dek" not in body


def test_a_non_worker_service_account_is_refused_with_403(keyservice: KeyService) -> None:
    status, body = keyservice.post(keyservice.body("a"), keyservice.token("a", "intruder"))
    assert status == 403 and body["error"] == "not_a_worker"


def test_a_key_version_that_does_not_match_the_wrapping_is_refused(keyservice: KeyService) -> None:
    status, _ = keyservice.post(keyservice.body("a", version=2), keyservice.token("a"))
    assert status == 403


def _expired_token(controlplane: ControlPlane, ks: KeyService) -> str:
    """Signed with the control plane's real service-account key, but expired an hour ago."""
    key = serialization.load_pem_private_key(
        (controlplane.data_dir / "pki" / "sa.key").read_bytes(), None
    )
    ns = ks.tenants["a"].namespace
    sa = ks.k8s.core.read_namespaced_service_account("numail-send-worker", ns)
    now = int(time.time())
    claims = {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{ns}:numail-send-worker",
        "aud": [AUDIENCE],
        "iat": now - 7200,
        "nbf": now - 7200,
        "exp": now - 3600,
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": {"name": "numail-send-worker", "uid": sa.metadata.uid},
        },
    }
    return jwt.encode(claims, key, algorithm="ES256")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "case", ["missing", "not bearer", "wrong audience", "expired", "garbage", "forged"]
)
def test_bad_tokens_get_401(keyservice: KeyService, controlplane: ControlPlane, case: str) -> None:
    headers_token: str | None
    if case == "missing":
        headers_token = None
    elif case == "not bearer":
        status, _ = _post_raw(keyservice, {"Authorization": "Basic dXNlcjpwYXNz"})
        assert status == 401
        return
    elif case == "wrong audience":
        headers_token = keyservice.token(
            "a", audience="https://kubernetes.default.svc.cluster.local"
        )
    elif case == "expired":
        headers_token = _expired_token(controlplane, keyservice)
    elif case == "garbage":
        headers_token = "not-a-token"
    else:
        good = keyservice.token("a")
        head, payload, sig = good.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["sub"] = claims["sub"].replace(
            keyservice.tenants["a"].namespace, keyservice.tenants["b"].namespace
        )
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        headers_token = f"{head}.{forged}.{sig}"
    status, body = keyservice.post(keyservice.body("a"), headers_token)
    assert status == 401, body
    assert "dek" not in body


def _post_raw(ks: KeyService, headers: dict[str, str]) -> tuple[int, object]:
    req = urllib.request.Request(
        ks.url + "/v1/unwrap",
        data=json.dumps(ks.body("a")).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(
            req, context=ssl.create_default_context(cafile=str(ks.ca))
        ) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        {"keyVersion": 1},
        {"wrappedKey": "%%%", "keyVersion": 1},
        {"wrappedKey": "AAAA", "keyVersion": True},
        {"wrappedKey": "AAAA", "keyVersion": 0},
        [1, 2],
    ],
    ids=["not json", "no wrappedKey", "bad base64", "boolean version", "zero version", "a list"],
)
def test_malformed_bodies_get_400(keyservice: KeyService, body: object) -> None:
    status, answer = keyservice.post(body, keyservice.token("a"))
    assert status == 400
    assert answer["error"] == "malformed" and answer["message"]


def test_100_concurrent_requests_are_served_correctly(keyservice: KeyService) -> None:
    tokens = {t: keyservice.token(t) for t in ("a", "b")}

    def one(i: int) -> tuple[str, int, bytes]:
        t = "a" if i % 2 else "b"
        status, body = keyservice.post(keyservice.body(t), tokens[t])
        return t, status, base64.b64decode(str(body.get("dek", "")))

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, range(100)))
    assert [s for _, s, _ in results] == [200] * 100
    assert all(dek == keyservice.tenants[t].dek for t, _, dek in results)


def test_refusals_are_counted_and_no_token_is_logged(keyservice: KeyService) -> None:
    token = keyservice.token("a")
    keyservice.post(keyservice.body("b"), token)
    keyservice.post(keyservice.body("a"), "garbage-token-canary")
    metrics = keyservice.metrics()
    counts = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("numail_keyservice_refusals_total{")
    }
    assert counts['reason="wrong_workspace"'] >= 1
    assert counts['reason="invalid_token"'] >= 1
    log = keyservice.log.read_text()
    assert "unwrap refused: wrong_workspace" in log
    assert token not in log and token.split(".")[1] not in log
    assert "garbage-token-canary" not in log
    assert base64.b64encode(keyservice.tenants["a"].dek).decode() not in log


def test_the_client_makes_one_call_per_key_and_ttl(keyservice: KeyService) -> None:
    now = [0.0]
    token = keyservice.token("a")
    kc = KeyServiceClient(
        keyservice.url,
        token=lambda: token,
        ca_file=str(keyservice.ca),
        ttl=300,
        clock=lambda: now[0],
    )
    wrapped = keyservice.tenants["a"].wrapped
    with ThreadPoolExecutor(max_workers=32) as pool:
        deks = list(pool.map(lambda _: kc.dek(wrapped, 1), range(200)))
    assert kc.calls == 1
    assert {d.key for d in deks} == {keyservice.tenants["a"].dek}
    now[0] = 301.0
    kc.dek(wrapped, 1)
    assert kc.calls == 2
    with pytest.raises(UnwrapRefused):
        kc.dek(keyservice.tenants["b"].wrapped, 1)
    bad = KeyServiceClient(keyservice.url, token=lambda: "garbage", ca_file=str(keyservice.ca))
    with pytest.raises(KeyServiceError) as err:
        bad.dek(wrapped, 1)
    assert err.value.status == 401
