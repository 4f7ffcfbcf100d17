"""The CRDs served by a real API server: samples, defaults, columns, explain and refusals."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from numail.api import API_VERSION, GROUP, RESOURCE_MODELS, VERSION
from numail.api.conditions import set_condition
from numail.api.models import Condition, ConditionStatus
from tests.conftest import K8s

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "crds" / "samples"
NAMESPACE = "numail-api-crds"
SAMPLE_NAMESPACE = "ws-acme-client-1"
SEALED = "nm1.AAAAAAAAAAA.c2VhbGVkLWNyZWRlbnRpYWxzLXBsYWNlaG9sZGVy"
DROP = object()  # in a patch: remove this key

Body = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    plural: str
    namespaced: bool


KINDS = {
    "Workspace": Kind("workspaces", namespaced=False),
    "KeyProvider": Kind("keyproviders", namespaced=False),
    "Mailbox": Kind("mailboxes", namespaced=True),
    "WorkspaceMember": Kind("workspacemembers", namespaced=True),
    "DataSubjectRequest": Kind("datasubjectrequests", namespaced=True),
    "ApiKey": Kind("apikeys", namespaced=True),
}

# A valid object of each kind; the bad inputs below are each one change away from these.
BASE_SPECS: dict[str, Body] = {
    "Workspace": {},
    "KeyProvider": {"type": "local", "local": {"keyFile": "/etc/numail/keyring"}},
    "Mailbox": {
        "address": "sales@client.example",
        "provider": "smtp",
        "smtp": {"host": "smtp.client.example"},
        "imap": {"host": "imap.client.example"},
        "credentials": {"sealed": SEALED},
    },
    "WorkspaceMember": {
        "subject": {"kind": "User", "name": "alice@example.com"},
        "role": "Analyst",
    },
    "DataSubjectRequest": {"type": "erase", "subject": {"email": "jane@prospect.example"}},
    "ApiKey": {"scopes": ["leads:read"]},
}


def merged(base: Body, patch: Body) -> Body:
    """base with patch applied: dicts merge, other values replace, DROP removes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_object(kind: str, name: str) -> Body:
    metadata: Body = {"name": name}
    if KINDS[kind].namespaced:
        metadata["namespace"] = NAMESPACE
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": BASE_SPECS[kind]}


@dataclass(frozen=True)
class BadInput:
    """One input the API must refuse; `before` makes it an update of an object made from it."""

    kind: str
    patch: Body
    phrase: str
    before: Body | None = None
    status: int = 422
    strict: bool = False

    @property
    def is_update(self) -> bool:
        return self.before is not None


def ws(**spec: Any) -> Body:
    return {"spec": spec}


BAD_INPUTS: dict[str, BadInput] = {
    # Workspace: tenancy shape
    "an agency Workspace can't name a parent": BadInput(
        "Workspace",
        ws(tier="agency", parent="acme-agency"),
        "spec.parent is forbidden when spec.tier is agency",
    ),
    "parentAccess other than none needs a parent": BadInput(
        "Workspace", ws(parentAccess="read"), "spec.parentAccess requires spec.parent"
    ),
    "a Workspace name of 61 characters leaves no room for the ws- prefix": BadInput(
        "Workspace",
        {"metadata": {"name": "a" * 61}},
        "metadata.name must be at most 60 characters",
    ),
    "an uppercase Workspace name is refused by the API server's own name rules": BadInput(
        "Workspace", {"metadata": {"name": "Acme"}}, "metadata.name"
    ),
    "a Workspace name with a dot can't name a namespace": BadInput(
        "Workspace", {"metadata": {"name": "acme.client"}}, "metadata.name must be a DNS label"
    ),
    "an unknown tier is refused": BadInput("Workspace", ws(tier="gold"), "spec.tier"),
    "51 worker replicas are refused": BadInput(
        "Workspace",
        ws(workers={"sendWorker": {"replicas": 51}}),
        "spec.workers.sendWorker.replicas",
    ),
    "an egress destination without a prefix length is not a CIDR": BadInput(
        "Workspace",
        ws(egress={"allowCIDRs": ["10.0.0.1"]}),
        "spec.egress.allowCIDRs entries must be CIDRs",
    ),
    "an egress port of 70000 is refused": BadInput(
        "Workspace", ws(egress={"ports": [{"port": 70000}]}), "spec.egress.ports"
    ),
    "a cpu quota that is not a quantity is refused": BadInput(
        "Workspace", ws(quota={"cpu": "lots"}), "spec.quota.cpu"
    ),
    "an unknown field in a spec is refused under strict field validation": BadInput(
        "Workspace", ws(colour="blue"), "spec.colour", status=400, strict=True
    ),
    # Workspace: immutability (update-only, so the API server alone can check it)
    "the tier can't change after creation": BadInput(
        "Workspace", ws(tier="agency"), "spec.tier is immutable", before={}
    ),
    "the parent can't change after creation": BadInput(
        "Workspace",
        ws(parent="other-agency"),
        "spec.parent is immutable once set",
        before=ws(parent="acme-agency"),
    ),
    "the parent can't be removed after creation": BadInput(
        "Workspace",
        ws(parent=DROP, parentAccess="none"),
        "spec.parent is immutable once set",
        before=ws(parent="acme-agency"),
    ),
    "a parent can't be added to an existing Workspace": BadInput(
        "Workspace", ws(parent="acme-agency"), "spec.parent can't be added", before={}
    ),
    # Mailbox
    "credentials with both secretRef and sealed are refused": BadInput(
        "Mailbox",
        ws(credentials={"secretRef": {"name": "sales-intake"}}),
        "spec.credentials needs exactly one of secretRef and sealed",
    ),
    "credentials with neither secretRef nor sealed are refused": BadInput(
        "Mailbox",
        ws(credentials={"sealed": DROP}),
        "spec.credentials needs exactly one of secretRef and sealed",
    ),
    "provider smtp without an imap block is refused": BadInput(
        "Mailbox", ws(imap=DROP), "spec.provider smtp requires spec.smtp and spec.imap"
    ),
    "provider gmail with an smtp block is refused": BadInput(
        "Mailbox",
        ws(provider="gmail", imap=DROP),
        "spec.smtp and spec.imap are only for provider smtp",
    ),
    "an SMTP port of 0 is refused": BadInput("Mailbox", ws(smtp={"port": 0}), "spec.smtp.port"),
    "an IMAP port of 70000 is refused": BadInput(
        "Mailbox", ws(imap={"port": 70000}), "spec.imap.port"
    ),
    "an address that is not an email address is refused": BadInput(
        "Mailbox", ws(address="sales at client.example"), "spec.address"
    ),
    "an address with a display name is refused": BadInput(
        "Mailbox", ws(address="Sales <sales@client.example>"), "spec.address"
    ),
    "a sealed blob that `numail seal` did not make is refused": BadInput(
        "Mailbox", ws(credentials={"sealed": "hpke.abc.def"}), "spec.credentials.sealed"
    ),
    "a daily limit of 0 is refused": BadInput("Mailbox", ws(dailyLimit=0), "spec.dailyLimit"),
    "an unknown provider is refused": BadInput("Mailbox", ws(provider="yahoo"), "spec.provider"),
    "the address can't change": BadInput(
        "Mailbox", ws(address="sales@other.example"), "spec.address is immutable", before={}
    ),
    "the provider can't change": BadInput(
        "Mailbox",
        ws(provider="gmail", smtp=DROP, imap=DROP),
        "spec.provider is immutable",
        before={},
    ),
    # KeyProvider
    "type awsKms without an awsKms block is refused": BadInput(
        "KeyProvider",
        ws(type="awsKms", local=DROP),
        "spec.awsKms must be set when spec.type is awsKms",
    ),
    "type local with an awsKms block as well is refused": BadInput(
        "KeyProvider",
        ws(awsKms={"keyId": "alias/numail"}),
        "spec.awsKms must be set when spec.type is awsKms, and only then",
    ),
    "a local provider with both secretRef and keyFile is refused": BadInput(
        "KeyProvider",
        ws(local={"secretRef": {"name": "keyring", "namespace": "numail-system"}}),
        "spec.local needs exactly one of secretRef and keyFile",
    ),
    "a local provider with neither secretRef nor keyFile is refused": BadInput(
        "KeyProvider",
        ws(local={"keyFile": DROP}),
        "spec.local needs exactly one of secretRef and keyFile",
    ),
    "an unknown provider type is refused": BadInput("KeyProvider", ws(type="hsm"), "spec.type"),
    # WorkspaceMember
    "an unknown role is refused": BadInput("WorkspaceMember", ws(role="Root"), "spec.role"),
    "the subject can't change": BadInput(
        "WorkspaceMember",
        ws(subject={"name": "mallory@example.com"}),
        "spec.subject is immutable",
        before={},
    ),
    # DataSubjectRequest
    "an unknown request type is refused": BadInput(
        "DataSubjectRequest", ws(type="rectify"), "spec.type"
    ),
    "a request's spec can't change": BadInput(
        "DataSubjectRequest",
        ws(reason="changed my mind"),
        "spec is immutable: a DataSubjectRequest records one request",
        before={},
    ),
    # ApiKey
    "an ApiKey without scopes is refused": BadInput("ApiKey", ws(scopes=[]), "spec.scopes"),
    "an unknown scope is refused": BadInput("ApiKey", ws(scopes=["admin"]), "spec.scopes"),
    "a repeated scope is refused": BadInput(
        "ApiKey", ws(scopes=["leads:read", "leads:read"]), "spec.scopes"
    ),
    "an expiry that is not a date-time is refused": BadInput(
        "ApiKey", ws(expiresAt="next week"), "spec.expiresAt"
    ),
}


def object_name(sentence: str) -> str:
    return "bad-" + hashlib.sha256(sentence.encode()).hexdigest()[:10]


def bad_bodies(sentence: str, case: BadInput) -> tuple[Body | None, Body]:
    """(the object to create first or None, the object the API must refuse)."""
    base = base_object(case.kind, object_name(sentence))
    before = None if case.before is None else merged(base, case.before)
    return before, merged(before or base, case.patch)


class Objects:
    """Create, read, replace and delete any numail.ai kind through one set of calls."""

    def __init__(self, custom: client.CustomObjectsApi) -> None:
        self.custom = custom

    def _args(self, body: Body) -> tuple[Kind, list[str]]:
        kind = KINDS[body["kind"]]
        where = [body["metadata"]["namespace"]] if kind.namespaced else []
        return kind, where

    def create(self, body: Body, **kwargs: Any) -> Body:
        kind, where = self._args(body)
        call = (
            self.custom.create_namespaced_custom_object
            if kind.namespaced
            else self.custom.create_cluster_custom_object
        )
        result: Body = call(GROUP, VERSION, *where, kind.plural, body, **kwargs)
        return result

    def get(self, body: Body) -> Body:
        kind, where = self._args(body)
        name = body["metadata"]["name"]
        call = (
            self.custom.get_namespaced_custom_object
            if kind.namespaced
            else self.custom.get_cluster_custom_object
        )
        result: Body = call(GROUP, VERSION, *where, kind.plural, name)
        return result

    def replace(self, body: Body, status: bool = False) -> Body:
        kind, where = self._args(body)
        name = body["metadata"]["name"]
        if kind.namespaced:
            call = (
                self.custom.replace_namespaced_custom_object_status
                if status
                else self.custom.replace_namespaced_custom_object
            )
        else:
            call = (
                self.custom.replace_cluster_custom_object_status
                if status
                else self.custom.replace_cluster_custom_object
            )
        result: Body = call(GROUP, VERSION, *where, kind.plural, name, body)
        return result

    def delete(self, body: Body) -> None:
        kind, where = self._args(body)
        name = body["metadata"]["name"]
        call = (
            self.custom.delete_namespaced_custom_object
            if kind.namespaced
            else self.custom.delete_cluster_custom_object
        )
        try:
            call(GROUP, VERSION, *where, kind.plural, name)
        except ApiException as err:
            if err.status != 404:
                raise


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def listable(k8s: K8s, plural: str) -> bool:
    try:
        k8s.custom.list_cluster_custom_object(GROUP, VERSION, plural)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


@pytest.fixture(scope="module")
def objects(k8s: K8s, numail_crds: list[str]) -> Iterator[Objects]:
    """The CRDs served and both test namespaces present; namespaces made here are removed."""
    assert sorted(numail_crds) == sorted(f"{kind.plural}.{GROUP}" for kind in KINDS.values())
    for kind in KINDS.values():
        wait_for(partial(listable, k8s, kind.plural), f"{kind.plural} served")
    created = []
    for namespace in (NAMESPACE, SAMPLE_NAMESPACE):
        try:
            k8s.core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            )
            created.append(namespace)
        except ApiException as err:
            if err.status != 409:
                raise
    yield Objects(k8s.custom)
    for namespace in created:
        k8s.core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def kubectl(
    k8s: K8s, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    cache = tmp_path_factory.mktemp("kubectl-cache")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(k8s.kubeconfig), "--cache-dir", str(cache), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def rejection(call: Callable[[], object]) -> tuple[int, str]:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value.status, str(json.loads(caught.value.body)["message"])


# The bad-input table, against the API server and against the models


@pytest.mark.parametrize(("sentence", "case"), BAD_INPUTS.items(), ids=list(BAD_INPUTS))
def test_the_api_server_refuses(objects: Objects, sentence: str, case: BadInput) -> None:
    before, body = bad_bodies(sentence, case)
    if before is None:
        options = {"field_validation": "Strict"} if case.strict else {}
        status, message = rejection(lambda: objects.create(body, dry_run="All", **options))
    else:
        objects.create(before)
        try:
            current = objects.get(before)
            body = merged(current, case.patch)
            status, message = rejection(lambda: objects.replace(body))
        finally:
            objects.delete(before)
    assert status == case.status, message
    assert case.phrase in message


@pytest.mark.parametrize(
    ("sentence", "case"),
    [(s, c) for s, c in BAD_INPUTS.items() if not c.is_update],
    ids=[s for s, c in BAD_INPUTS.items() if not c.is_update],
)
def test_the_models_refuse(sentence: str, case: BadInput) -> None:
    _, body = bad_bodies(sentence, case)
    with pytest.raises(ValidationError) as caught:
        RESOURCE_MODELS[case.kind].model_validate(body)
    assert case.phrase in str(caught.value)


@pytest.mark.parametrize(("sentence", "case"), BAD_INPUTS.items(), ids=list(BAD_INPUTS))
def test_each_bad_input_starts_from_objects_both_accept(
    objects: Objects, sentence: str, case: BadInput
) -> None:
    """Without this, a refusal could come from a broken base object rather than the change."""
    base = base_object(case.kind, object_name(sentence))
    start = base if case.before is None else merged(base, case.before)
    RESOURCE_MODELS[case.kind].model_validate(start)
    objects.create(start, dry_run="All", field_validation="Strict")


def test_the_table_has_at_least_fifteen_refusals_for_the_api_server() -> None:
    assert len(BAD_INPUTS) >= 15
    assert {case.kind for case in BAD_INPUTS.values()} == set(KINDS)


# Samples


def sample_documents() -> list[Body]:
    return [
        doc
        for path in sorted(SAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.mark.parametrize(
    "sample",
    sample_documents(),
    ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}",
)
def test_every_sample_is_accepted_and_defaulted_as_the_models_default_it(
    objects: Objects, sample: Body
) -> None:
    served = objects.create(sample, dry_run="All", field_validation="Strict")
    model = RESOURCE_MODELS[sample["kind"]]
    expected = model.model_validate(sample).model_dump(mode="json", exclude_none=True)
    assert served["spec"] == expected["spec"]
    assert (
        model.model_validate(served).model_dump(mode="json", exclude_none=True)["spec"]
        == (served["spec"])
    )


# Status subresource and printer columns

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class Printed:
    """An object with a status, and what `kubectl get` must print for it."""

    body: Body
    status: Body
    columns: dict[str, str]


def conditions(*pairs: tuple[str, ConditionStatus]) -> list[Body]:
    result: list[Condition] = []
    for type_, status in pairs:
        result, _ = set_condition(result, type_, status, "Tested", "set by the test", 1, NOW)
    return [c.model_dump(mode="json") for c in result]


PRINTED: dict[str, Printed] = {
    "ws": Printed(
        merged(base_object("Workspace", "api-columns"), ws(parent="acme-agency")),
        {
            "observedGeneration": 1,
            "conditions": conditions(("Ready", "True")),
            "namespace": "ws-api-columns",
            "keyVersion": 3,
            "sealingPublicKey": "c2VhbGluZy1wdWJsaWMta2V5LXBsYWNlaG9sZGVyLTMyYg",
            "keyId": "local-1",
            "mailboxes": 2,
        },
        {
            "READY": "True",
            "TIER": "standard",
            "PARENT": "acme-agency",
            "KEY VERSION": "3",
            "MAILBOXES": "2",
        },
    ),
    "kp": Printed(
        base_object("KeyProvider", "api-columns"),
        {
            "conditions": conditions(("Ready", "True")),
            "healthy": True,
            "keyId": "local-1",
            "lastChecked": "2026-03-01T12:00:00Z",
        },
        {"TYPE": "local", "HEALTHY": "true", "KEY ID": "local-1"},
    ),
    "mbx": Printed(
        base_object("Mailbox", "api-columns"),
        {
            "observedGeneration": 1,
            "conditions": conditions(("Ready", "False"), ("Verified", "True")),
            "sealedSecretName": "api-columns-sealed",
            "keyVersion": 2,
            "verifiedAt": "2026-03-01T12:00:00Z",
            "lastError": "AuthenticationFailed",
        },
        {
            "ADDRESS": "sales@client.example",
            "PROVIDER": "smtp",
            "READY": "False",
            "VERIFIED": "True",
            "KEY VERSION": "2",
        },
    ),
    "wsm": Printed(
        base_object("WorkspaceMember", "api-columns"),
        {"conditions": conditions(("Ready", "True")), "roleBinding": "numail-member-api-columns"},
        {"SUBJECT": "alice@example.com", "ROLE": "Analyst", "READY": "True"},
    ),
    "dsr": Printed(
        merged(base_object("DataSubjectRequest", "api-columns"), ws(type="export")),
        {
            "conditions": conditions(("Ready", "True")),
            "phase": "Completed",
            "completedAt": "2026-03-01T12:00:00Z",
            "exportSecretName": "api-columns-export",
            "rowsAffected": 12,
        },
        {"TYPE": "export", "PHASE": "Completed"},
    ),
    "ak": Printed(
        merged(
            base_object("ApiKey", "api-columns"),
            ws(scopes=["leads:read", "reports:read"], expiresAt="2030-01-01T00:00:00Z"),
        ),
        {
            "conditions": conditions(("Ready", "True")),
            "keyId": "nmk_abc123",
            "secretName": "api-columns-key",
            "hash": hashlib.sha256(b"a key").hexdigest(),
            "revoked": False,
        },
        {
            "SCOPES": '["leads:read","reports:read"]',
            "EXPIRES": "2030-01-01T00:00:00Z",
            "READY": "True",
        },
    ),
}


@pytest.fixture(scope="module")
def printed(objects: Objects) -> Iterator[dict[str, Body]]:
    """One object of each kind with its status written through the status subresource."""
    served = {}
    for short_name, item in PRINTED.items():
        objects.delete(item.body)
        wait_for(partial(_gone, objects, item.body), f"{short_name} leftover deleted")
        created = objects.create(item.body)
        created["status"] = item.status
        served[short_name] = objects.replace(created, status=True)
    yield served
    for item in PRINTED.values():
        objects.delete(item.body)


def _gone(objects: Objects, body: Body) -> bool:
    try:
        objects.get(body)
    except ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


@pytest.mark.parametrize("short_name", PRINTED)
def test_a_status_the_models_write_round_trips_through_the_status_subresource(
    objects: Objects, printed: dict[str, Body], short_name: str
) -> None:
    item = PRINTED[short_name]
    stored = objects.get(item.body)
    assert stored["status"] == item.status
    model = RESOURCE_MODELS[stored["kind"]].model_validate(stored)
    assert model.model_dump(mode="json", exclude_none=True)["status"] == item.status


def columns_of(output: str) -> list[dict[str, str]]:
    """Rows of `kubectl get` output keyed by header; cells are cut at the header offsets."""
    header, *rows = output.rstrip("\n").split("\n")
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    names = [m.group() for m in re.finditer(r"\S+(?: \S+)*", header)]
    bounds = [*starts[1:], None]
    return [
        {
            name: row[start:end].strip()
            for name, start, end in zip(names, starts, bounds, strict=True)
        }
        for row in rows
    ]


@pytest.mark.parametrize("short_name", PRINTED)
def test_kubectl_get_prints_the_printer_columns(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    printed: dict[str, Body],
    short_name: str,
) -> None:
    item = PRINTED[short_name]
    where = ["-n", NAMESPACE] if "namespace" in item.body["metadata"] else []
    result = kubectl("get", short_name, "api-columns", *where)
    assert result.returncode == 0, result.stderr
    (row,) = columns_of(result.stdout)
    assert row["NAME"] == "api-columns"
    assert "AGE" in row
    assert {name: row.get(name) for name in item.columns} == item.columns


def test_kubectl_get_ws_prints_the_workspace_columns_in_order(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], printed: dict[str, Body]
) -> None:
    result = kubectl("get", "ws")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert re.split(r"\s{2,}", header.strip()) == [
        "NAME",
        "READY",
        "TIER",
        "PARENT",
        "KEY VERSION",
        "MAILBOXES",
        "AGE",
    ]


def test_the_numail_category_lists_every_kind(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], printed: dict[str, Body]
) -> None:
    result = kubectl("get", "numail", "-A", "-o", "name")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert {f"{kind.lower()}.{GROUP}/api-columns" for kind in KINDS} <= listed


# kubectl explain


@pytest.mark.parametrize(
    ("field_path", "phrase"),
    [
        ("workspace.spec.parent", "The name of the agency Workspace"),
        ("workspace.status.sealingPublicKey", "numail seal"),
        ("mailbox.spec.credentials.sealed", "numail seal"),
        ("keyprovider.spec.type", "planned"),
        ("datasubjectrequest.spec", "Immutable"),
        ("apikey.status.hash", "SHA-256"),
    ],
)
def test_kubectl_explain_reads_the_descriptions(
    objects: Objects,
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    field_path: str,
    phrase: str,
) -> None:
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    results: list[subprocess.CompletedProcess[str]] = []

    def explained() -> bool:
        results.append(kubectl("explain", field_path))
        return results[-1].returncode == 0

    wait_for(explained, f"kubectl explain {field_path}", timeout=30)
    text = " ".join(results[-1].stdout.split())
    assert phrase in text
