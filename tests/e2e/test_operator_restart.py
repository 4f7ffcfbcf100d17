"""Kill the operator mid-reconcile of 20 workspaces: all converge, and no DEK is ever replaced."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import K8s
from tests.support.controlplane import ControlPlane
from tests.support.operator import start_operator
from tests.support.waiting import absent, condition, wait_for

G, V = "numail.ai", "v1alpha1"
N = 20


@pytest.fixture
def names(k8s: K8s) -> Iterator[list[str]]:
    names = [f"restart-{i:02d}" for i in range(N)]
    yield names
    for name in names:
        with contextlib.suppress(Exception):
            k8s.custom.delete_cluster_custom_object(G, V, "workspaces", name)


def dek_secrets(k8s: K8s, names: list[str]) -> dict[str, tuple[str, dict[str, str]]]:
    out = {}
    for name in names:
        items = k8s.core.list_namespaced_secret(
            f"ws-{name}", field_selector="metadata.name=numail-dek"
        ).items
        if items:
            assert len(items) == 1
            out[name] = (items[0].metadata.uid, dict(items[0].data))
    return out


def test_killed_mid_reconcile_every_workspace_converges_with_its_original_dek(
    controlplane: ControlPlane, k8s: K8s, numail_crds: list[str], tmp_path: Path, names: list[str]
) -> None:
    workdir = tmp_path / "op"
    first = start_operator(controlplane.kubeconfig, workdir)
    try:
        for name in names:
            k8s.custom.create_cluster_custom_object(
                G,
                V,
                "workspaces",
                {
                    "apiVersion": f"{G}/{V}",
                    "kind": "Workspace",
                    "metadata": {"name": name},
                    "spec": {},
                },
            )
        # Kill once some, but not all, workspaces have their keys.
        wait_for(lambda: len(dek_secrets(k8s, names)) >= 3, 60, "a few DEKs created")
    finally:
        first.kill()
    before = dek_secrets(k8s, names)
    assert len(before) > 0, "the kill should land mid-way"

    second = start_operator(controlplane.kubeconfig, workdir)  # same keyring, as a restarted Pod
    try:

        def all_ready() -> bool:
            for name in names:
                ws = k8s.custom.get_cluster_custom_object(G, V, "workspaces", name)
                c = condition(ws, "Ready")
                if not c or c["status"] != "True":
                    return False
            return True

        wait_for(all_ready, 180, "all 20 workspaces Ready after restart", interval=1)
        after = dek_secrets(k8s, names)
        assert set(after) == set(names)
        for name, (uid, data) in before.items():
            assert after[name] == (uid, data), f"the DEK of {name} was replaced"
        for name in names:
            sealing = k8s.core.list_namespaced_secret(
                f"ws-{name}", label_selector="numail.ai/workspace"
            ).items
            assert sorted(s.metadata.name for s in sealing) == ["numail-dek", "numail-sealing-key"]
            ws: dict[str, Any] = k8s.custom.get_cluster_custom_object(G, V, "workspaces", name)
            assert ws["status"]["keyVersion"] == 1
        for name in names:
            k8s.custom.delete_cluster_custom_object(G, V, "workspaces", name)
        for name in names:
            wait_for(
                lambda n=name: absent(
                    lambda: k8s.custom.get_cluster_custom_object(G, V, "workspaces", n)
                ),
                60,
                f"{name} deleted",
            )
    finally:
        second.stop()
    time.sleep(0)
