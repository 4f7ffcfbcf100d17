"""`make dev`: the local control plane, PostgreSQL and the operator, with the samples applied."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from numail.db.migrate import migrate  # noqa: E402
from numail.keys.local import generate_keyring  # noqa: E402
from tests.support.controlplane import start_controlplane  # noqa: E402
from tests.support.postgres import start_postgres  # noqa: E402


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> None:
    subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args], check=check, capture_output=not check
    )


def main() -> int:
    dev_dir = Path(os.environ.get("DEV_DIR", REPO / ".dev")).resolve()
    print(f"starting the control plane in {dev_dir / 'controlplane'} ...", flush=True)
    cp = start_controlplane(dev_dir / "controlplane")
    print(f"control plane ready in {cp.started_in:.1f}s at {cp.server}", flush=True)
    pg = start_postgres()
    print(f"postgresql ready: {pg.dsn()}", flush=True)
    operator: subprocess.Popen[bytes] | None = None
    try:
        kube = cp.kubeconfig
        kubectl(kube, "apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl(
            kube,
            "wait",
            "--for=condition=Established",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=numail",
            "--timeout=60s",
        )
        keyring = dev_dir / "keyring"
        if not keyring.exists():
            keyring.write_text(generate_keyring())
            keyring.chmod(0o600)
        # The sample KeyProvider `default` reads its keyring from this Secret.
        kubectl(kube, "create", "namespace", "numail-system", check=False)
        kubectl(
            kube,
            "-n",
            "numail-system",
            "create",
            "secret",
            "generic",
            "numail-local-keyring",
            f"--from-file=keyring={keyring}",
            check=False,
        )
        # The workspace Deployments get their database from this Secret (a numail_worker
        # login), as a chart install gets it from workers.database.existingSecret. There is
        # no kubelet here to run them, but their configuration is the real one.
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            migrate(conn)
            if not conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = 'numail_dev_worker'"
            ).fetchone():
                conn.execute("CREATE ROLE numail_dev_worker LOGIN IN ROLE numail_worker")
        kubectl(
            kube,
            "-n",
            "numail-system",
            "create",
            "secret",
            "generic",
            "numail-worker-database",
            f"--from-literal=url={pg.dsn().replace('user=postgres', 'user=numail_dev_worker')}",
            check=False,
        )
        env = dict(
            os.environ,
            KUBECONFIG=str(kube),
            NUMAIL_DATABASE_URL=pg.dsn(),
            NUMAIL_WORKER_DATABASE_SECRET="numail-worker-database",
            NUMAIL_LOCAL_KEYRING_FILE=str(keyring),
            NUMAIL_METRICS_PORT=os.environ.get("NUMAIL_METRICS_PORT", "9090"),
            NUMAIL_LIVENESS_PORT=os.environ.get("NUMAIL_LIVENESS_PORT", "8080"),
        )
        with (dev_dir / "operator.log").open("ab") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "numail_operator"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        print(f"operator started; log: {dev_dir / 'operator.log'}", flush=True)
        samples = str(REPO / "crds" / "samples")
        kubectl(kube, "apply", "--server-side", "-f", samples, check=False)
        # Namespaced samples land once the operator has made their workspace's namespace.
        kubectl(kube, "wait", "--for=condition=Ready", "workspaces", "--all", "--timeout=90s")
        kubectl(kube, "apply", "--server-side", "-f", samples)
        print(
            "\nready. try:\n"
            f"  export KUBECONFIG={kube}\n"
            "  kubectl get workspaces\n"
            "  kubectl get numail -A\n"
            "press Ctrl-C to stop.",
            flush=True,
        )
        stop = False

        def on_signal(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop and cp.process.poll() is None:
            time.sleep(0.5)
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        pg.stop()
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
