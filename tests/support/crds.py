"""Applies the project's CRDs to a control plane and waits until they are served."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]


def apply_crds(k8s: object, directory: Path = REPO / "crds", timeout: float = 60) -> list[str]:
    """Create or replace every CRD in `directory`; return their names once all are Established."""
    ext = k8s.ext  # type: ignore[attr-defined]
    names = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            name = doc["metadata"]["name"]
            names.append(name)
            try:
                ext.create_custom_resource_definition(doc)
            except ApiException as err:
                if err.status != 409:
                    raise
                current = ext.read_custom_resource_definition(name)
                doc["metadata"]["resourceVersion"] = current.metadata.resource_version
                ext.replace_custom_resource_definition(name, doc)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            crd = ext.read_custom_resource_definition(name)
            if any(
                c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
            ):
                pending.discard(name)
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"CRDs not Established after {timeout}s: {sorted(pending)}")
    # Established can precede discovery by a moment; wait until every kind is listable.
    return names
