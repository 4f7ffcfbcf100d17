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

from tests.support.controlplane import start_controlplane  # noqa: E402
from tests.support.postgres import start_postgres  # noqa: E402


def kubectl(kubeconfig: Path, *args: str) -> None:
    subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], check=True)


def main() -> int:
    dev_dir = Path(os.environ.get("DEV_DIR", REPO / ".dev")).resolve()
    print(f"starting the control plane in {dev_dir / 'controlplane'} ...", flush=True)
    cp = start_controlplane(dev_dir / "controlplane")
    print(f"control plane ready in {cp.started_in:.1f}s at {cp.server}", flush=True)
    pg = start_postgres()
    print(f"postgresql ready: {pg.dsn()}", flush=True)
    operator: subprocess.Popen[bytes] | None = None
    try:
        crds = REPO / "crds"
        if any(crds.glob("*.yaml")):
            kubectl(cp.kubeconfig, "apply", "--server-side", "-f", str(crds))
            kubectl(
                cp.kubeconfig,
                "wait",
                "--for=condition=Established",
                "crd",
                "-l",
                "app.kubernetes.io/part-of=numail",
                "--timeout=60s",
            )
        if (REPO / "operator" / "numail_operator" / "__main__.py").exists():
            env = dict(
                os.environ,
                KUBECONFIG=str(cp.kubeconfig),
                NUMAIL_DATABASE_URL=pg.dsn(),
                NUMAIL_DEV="1",
            )
            operator = subprocess.Popen([sys.executable, "-m", "numail_operator"], env=env)
        samples = crds / "samples"
        if any(samples.glob("*.yaml")):
            kubectl(cp.kubeconfig, "apply", "--server-side", "-f", str(samples))
        print(
            "\nready. try:\n"
            f"  export KUBECONFIG={cp.kubeconfig}\n"
            "  kubectl get ns\n"
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
