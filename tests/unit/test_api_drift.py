"""The CRDs in crds/ and the pydantic models in numail.api.models describe the same API."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from numail.api import API_VERSION, GROUP, LABEL_PART_OF, RESOURCE_MODELS, VERSION

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
SAMPLE_DIR = CRD_DIR / "samples"

# Keywords whose values must agree wherever both sides give them; `type` is compared only when
# both sides name a single type (the pydantic side says anyOf for int-or-string).
COMPARED_KEYWORDS = (
    "enum",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
)

Schema = dict[str, Any]


def load_crds() -> dict[str, Schema]:
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        crds[doc["spec"]["names"]["kind"]] = doc | {"_path": path}
    return crds


CRDS = load_crds()


def served_schema(crd: Schema) -> Schema:
    (version,) = crd["spec"]["versions"]
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def model_schema(kind: str) -> Schema:
    return RESOURCE_MODELS[kind].model_json_schema(by_alias=True, mode="validation")


def resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Follow $ref and drop the `| None` branch, keeping the field-level keys such as default."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        if len(branches) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**resolve(branches[0], defs), **rest}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", ...) is None:
        del node["default"]  # `= None` means optional, not a default value
    return node


def schema_drift(crd: Schema, model: Schema, defs: dict[str, Schema], path: str) -> list[str]:
    """Every difference between a CRD schema node and a model schema node, recursively."""
    model = resolve(model, defs)
    problems = []
    crd_props = crd.get("properties", {})
    model_props = model.get("properties", {})
    for name in sorted(crd_props.keys() - model_props.keys()):
        problems.append(f"{path}.{name}: in the CRD, missing from the model")
    for name in sorted(model_props.keys() - crd_props.keys()):
        problems.append(f"{path}.{name}: in the model, missing from the CRD")
    crd_required = set(crd.get("required", []))
    model_required = set(model.get("required", []))
    if crd_required != model_required:
        problems.append(
            f"{path}: required differs: CRD {sorted(crd_required)}, model {sorted(model_required)}"
        )
    for keyword in COMPARED_KEYWORDS:
        ours, theirs = crd.get(keyword), model.get(keyword)
        if keyword == "enum" and ours is not None and theirs is not None:
            ours, theirs = sorted(ours), sorted(theirs)
        if ours != theirs:
            problems.append(f"{path}: {keyword} differs: CRD {ours!r}, model {theirs!r}")
    crd_type, model_type = crd.get("type"), model.get("type")
    if isinstance(crd_type, str) and isinstance(model_type, str) and crd_type != model_type:
        problems.append(f"{path}: type differs: CRD {crd['type']}, model {model['type']}")
    for name in sorted(crd_props.keys() & model_props.keys()):
        problems += schema_drift(crd_props[name], model_props[name], defs, f"{path}.{name}")
    if "items" in crd or "items" in model:
        problems += schema_drift(crd.get("items", {}), model.get("items", {}), defs, f"{path}[]")
    crd_extra, model_extra = crd.get("additionalProperties"), model.get("additionalProperties")
    if isinstance(crd_extra, dict) or isinstance(model_extra, dict):
        if not (isinstance(crd_extra, dict) and isinstance(model_extra, dict)):
            problems.append(f"{path}: a map on one side only")
        else:
            problems += schema_drift(crd_extra, model_extra, defs, f"{path}{{}}")
    return problems


def kind_drift(crd: Schema, kind: str) -> list[str]:
    """Drift of spec and status; the envelope's own defaults (spec: {}) are not compared."""
    root = served_schema(crd)
    model = model_schema(kind)
    defs = model.get("$defs", {})
    problems = []
    for part in ("spec", "status"):
        ours = {k: v for k, v in root["properties"][part].items() if k != "default"}
        problems += schema_drift(ours, model["properties"][part], defs, part)
    return problems


def walk_properties(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from walk_properties(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk_properties(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk_properties(node["additionalProperties"], f"{path}{{}}")


def sample_documents() -> Iterator[tuple[str, Schema]]:
    for path in sorted(SAMPLE_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield f"{path.name}:{doc['metadata']['name']}", doc


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_the_crd_and_the_model_have_the_same_fields_defaults_enums_and_bounds(kind: str) -> None:
    assert kind_drift(CRDS[kind], kind) == []


def test_every_crd_has_a_model_and_every_model_a_crd() -> None:
    assert set(CRDS) == set(RESOURCE_MODELS)


def node_at(schema: Schema, path: str) -> Schema:
    """The schema node at a dotted path such as spec.workers.sendWorker; [] steps into items."""
    node = schema
    for step in path.split("."):
        node = node["items"] if step == "[]" else node["properties"][step]
    return node


# (sentence, node path in the Workspace CRD, change to that node, the problem expected)
DRIFT_CASES = [
    (
        "a field added to the CRD only is reported",
        "spec",
        lambda n: n["properties"].update(colour={"type": "string"}),
        "spec.colour: in the CRD, missing from the model",
    ),
    (
        "a field removed from the CRD is reported as the model's extra",
        "spec",
        lambda n: n["properties"].pop("parentAccess"),
        "spec.parentAccess: in the model, missing from the CRD",
    ),
    (
        "a nested field added to the CRD only is reported with its path",
        "spec.workers.sendWorker",
        lambda n: n["properties"].update(command={"type": "string"}),
        "spec.workers.sendWorker.command: in the CRD, missing from the model",
    ),
    (
        "a status field removed from the CRD is reported",
        "status",
        lambda n: n["properties"].pop("keyVersion"),
        "status.keyVersion: in the model, missing from the CRD",
    ),
    (
        "a field inside list items removed from the CRD is reported",
        "status.conditions.[]",
        lambda n: n["properties"].pop("observedGeneration"),
        "status.conditions[].observedGeneration: in the model, missing from the CRD",
    ),
    (
        "a field the CRD makes required and the model does not is reported",
        "spec.egress.ports.[]",
        lambda n: n.update(required=["port", "protocol"]),
        "spec.egress.ports[]: required differs",
    ),
    (
        "a changed default is reported",
        "spec.tier",
        lambda n: n.update(default="agency"),
        "spec.tier: default differs",
    ),
    (
        "an extra enum value is reported",
        "spec.deletionPolicy",
        lambda n: n["enum"].append("Orphan"),
        "spec.deletionPolicy: enum differs",
    ),
    (
        "a changed bound is reported",
        "spec.workers.sendWorker.replicas",
        lambda n: n.update(maximum=100),
        "spec.workers.sendWorker.replicas: maximum differs",
    ),
    (
        "a changed type is reported",
        "status.mailboxes",
        lambda n: n.update(type="string"),
        "status.mailboxes: type differs",
    ),
]


@pytest.mark.parametrize(
    ("path", "change", "expected"),
    [case[1:] for case in DRIFT_CASES],
    ids=[case[0] for case in DRIFT_CASES],
)
def test_the_drift_check_catches(path: str, change: Any, expected: str) -> None:
    crd = copy.deepcopy(CRDS["Workspace"])
    assert not [p for p in kind_drift(crd, "Workspace") if expected in p]
    change(node_at(served_schema(crd), path))
    problems = kind_drift(crd, "Workspace")
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_property_has_a_description_for_kubectl_explain(kind: str) -> None:
    root = served_schema(CRDS[kind])
    assert root.get("description", "").strip()
    # The API server forbids anything but `type` on metadata, a description included.
    missing = [
        path
        for path, node in walk_properties(root, kind)
        if path != f"{kind}.metadata" and not str(node.get("description", "")).strip()
    ]
    assert missing == []


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_crd_is_labelled_named_and_categorised_for_tooling(kind: str) -> None:
    crd = CRDS[kind]
    names = crd["spec"]["names"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["labels"][LABEL_PART_OF] == "numail"
    assert crd["metadata"]["name"] == f"{names['plural']}.{GROUP}"
    assert crd["_path"].name == f"{GROUP}_{names['plural']}.yaml"
    assert names["shortNames"] and names["categories"] == ["numail"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns[-1] == "Age"
    status = served_schema(crd)["properties"]["status"]["properties"]
    conditions = status["conditions"]
    assert {"observedGeneration", "conditions"} <= status.keys()
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize(("where", "doc"), list(sample_documents()), ids=lambda v: str(v)[:40])
def test_every_sample_validates_against_the_models(where: str, doc: Schema) -> None:
    assert doc["apiVersion"] == API_VERSION
    RESOURCE_MODELS[doc["kind"]].model_validate(doc)


def test_there_is_a_sample_for_every_kind_named_after_it() -> None:
    by_file = {
        path.name: {doc["kind"] for doc in yaml.safe_load_all(path.read_text()) if doc}
        for path in SAMPLE_DIR.glob("*.yaml")
    }
    expected = {f"{GROUP}_{VERSION}_{kind.lower()}.yaml": {kind} for kind in CRDS}
    assert by_file == expected


def test_the_samples_declare_the_tenancy_the_docs_walk_through() -> None:
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in sample_documents()}
    assert docs["Workspace", "acme-agency"]["spec"]["tier"] == "agency"
    client = docs["Workspace", "acme-client-1"]["spec"]
    assert (client["parent"], client["parentAccess"]) == ("acme-agency", "read")
    local = docs["KeyProvider", "default"]["spec"]
    assert local["type"] == "local"
    assert local["local"]["secretRef"] == {
        "name": "numail-local-keyring",
        "namespace": "numail-system",
    }
    mailbox = docs["Mailbox", "sales"]
    assert mailbox["metadata"]["namespace"] == "ws-acme-client-1"
    assert mailbox["spec"]["provider"] == "smtp"
    assert mailbox["spec"]["credentials"]["sealed"].startswith("nm1.")
