"""Convergence: N Workspaces to Ready through the operator, against a bare server-side-apply script.

Both run in one process tree, on one fresh control plane, one after the other:

1. baseline: a script applies, for N workspaces, the same objects the operator would (namespace,
   DEK and sealing Secrets, RBAC, policies, Deployments) with the same Applier, sequentially;
2. operator: N Workspace CRs are created and the clock stops when all are Ready=True.

Run: python bench/converge.py [N]   (default 200). Prints both times, the ratio (goal <= 1.5x)
and the operator's peak RSS.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from numail_operator import k8s  # noqa: E402
from numail_operator.build.workspace import (  # noqa: E402
    WorkerSpec,
    WorkspaceInputs,
    build_dek_secret,
    build_namespace,
    build_sealing_key_secret,
    build_workspace_children,
)

from numail import crypto  # noqa: E402
from numail.keys import KeyContext  # noqa: E402
from numail.keys.local import LocalKeyProvider, generate_keyring  # noqa: E402
from tests.conftest import make_k8s  # noqa: E402
from tests.support.controlplane import start_controlplane  # noqa: E402
from tests.support.crds import apply_crds  # noqa: E402
from tests.support.operator import start_operator  # noqa: E402

G, V = "numail.ai", "v1alpha1"


def baseline(
    clients: k8s.Clients, applier: k8s.Applier, provider: LocalKeyProvider, n: int
) -> float:
    worker = WorkerSpec("ghcr.io/numail/numail-operator:0.1.0", 1, {})
    started = time.perf_counter()
    for i in range(n):
        inputs = WorkspaceInputs(
            name=f"bare-{i:04d}",
            uid=str(uuid.uuid4()),
            tier="standard",
            parent=None,
            parent_access="none",
            retain=True,
            send_worker=worker,
            reply_worker=worker,
        )
        applier.apply(build_namespace(inputs))
        dek = crypto.generate_dek()
        wrapped = provider.wrap(dek.key, KeyContext(inputs.uid, inputs.name, 1))
        k8s.create_secret_once(
            clients,
            build_dek_secret(inputs, 1, base64.b64encode(wrapped).decode(), "local:k1", "local"),
        )
        key = crypto.generate_sealing_key()
        k8s.create_secret_once(
            clients,
            build_sealing_key_secret(
                inputs,
                base64.b64encode(
                    crypto.seal(
                        dek, b"x" * 32, crypto.SealContext(inputs.uid, "workspace", "sealing")
                    )
                ).decode(),
                crypto.public_key_text(key.public_key()),
                1,
            ),
        )
        for manifest in build_workspace_children(inputs):
            applier.apply(manifest)
    return time.perf_counter() - started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    tmp = Path(tempfile.mkdtemp(prefix="numail-bench-"))
    cp = start_controlplane(tmp / "cp")
    try:
        clients_k8s = make_k8s(cp.kubeconfig)
        apply_crds(clients_k8s)
        clients = k8s.load_clients(str(cp.kubeconfig))
        applier = k8s.Applier(clients.api)
        keyring = tmp / "keyring"
        keyring.write_text(generate_keyring())
        bare = baseline(clients, applier, LocalKeyProvider.from_file(keyring), n)
        print(
            f"baseline: {n} workspaces applied by a bare script in {bare:.1f}s ({n / bare:.1f}/s)"
        )

        op = start_operator(cp.kubeconfig, tmp / "op")
        profiler = None
        if os.environ.get("NUMAIL_BENCH_PROFILE"):  # where the operator's time goes
            profiler = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(op.process.pid),
                    "--format",
                    "raw",
                    "-o",
                    os.environ["NUMAIL_BENCH_PROFILE"],
                    "--threads",
                    "--idle",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            started = time.perf_counter()
            for i in range(n):
                clients.custom.create_cluster_custom_object(
                    G,
                    V,
                    "workspaces",
                    {
                        "apiVersion": f"{G}/{V}",
                        "kind": "Workspace",
                        "metadata": {"name": f"bench-{i:04d}"},
                        "spec": {},
                    },
                )
            while True:
                items = clients.custom.list_cluster_custom_object(G, V, "workspaces")["items"]
                ready = sum(
                    1
                    for w in items
                    if w["metadata"]["name"].startswith("bench-")
                    and any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in (w.get("status") or {}).get("conditions", [])
                    )
                )
                if ready == n:
                    break
                time.sleep(0.5)
            converged = time.perf_counter() - started
            rss = peak_rss_mib(op.process.pid)
            cpu = cpu_seconds(op.process.pid)
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
            op.stop()
        print(f"operator: {n} workspaces Ready in {converged:.1f}s ({n / converged:.1f}/s)")
        print(f"ratio operator/baseline: {converged / bare:.2f}x (goal <= 1.5x)")
        print(
            f"operator peak RSS: {rss:.0f} MiB; operator CPU {cpu:.1f}s over {converged:.1f}s wall"
        )
    finally:
        cp.stop()


if __name__ == "__main__":
    main()
